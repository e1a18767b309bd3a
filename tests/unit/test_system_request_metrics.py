"""RequestMetricsMiddleware (app/system/metrics.py) against Litestar's own PrometheusMiddleware: the same
requests through both give the same series and values (durations aside, which only have to be there)."""

from __future__ import annotations

import re

from litestar import get, post
from litestar.exceptions import NotFoundException
from litestar.plugins.prometheus import PrometheusConfig
from litestar.testing import create_test_client
from prometheus_client import REGISTRY, generate_latest

from app.system.metrics import RequestMetricsMiddleware


@get("/items/{item_id:int}")
async def item(item_id: int) -> dict:
    if item_id == 0:
        raise NotFoundException("no item 0")
    if item_id < 0:
        raise RuntimeError("boom")
    return {"id": item_id}


@post("/items")
async def create() -> dict:
    return {"ok": True}


def _series(prefix: str) -> dict[str, float]:
    """Every sample of the prefix's metrics but the duration sums, by name and labels."""
    out: dict[str, float] = {}
    for line in generate_latest(REGISTRY).decode().splitlines():
        if line.startswith(prefix) and "_sum{" not in line and "_created" not in line:
            name, value = line.rsplit(" ", 1)
            out[name.replace(prefix, "P", 1)] = float(value)
    return out


def _run(prefix: str, middleware_class: type | None) -> dict[str, float]:
    extra = {} if middleware_class is None else {"middleware_class": middleware_class}
    config = PrometheusConfig(app_name="t", prefix=prefix, group_path=True, scopes={"http"}, **extra)
    with create_test_client([item, create], middleware=[config.middleware]) as client:
        for path in ("/items/1", "/items/2", "/items/0", "/items/-1", "/items/3"):
            client.get(path)
        client.post("/items")
        client.post("/items")
    return _series(prefix)


def test_the_same_series_and_counts_as_the_plugin() -> None:
    ours = _run("lean_t", RequestMetricsMiddleware)
    plugin = _run("plugin_t", None)
    assert ours == plugin
    assert ours['P_requests_total{app_name="t",method="GET",path="/items/{item_id}",status_code="200"}'] == 3
    assert ours['P_requests_total{app_name="t",method="POST",path="/items",status_code="201"}'] == 2
    assert ours['P_requests_error_total{app_name="t",method="GET",path="/items/{item_id}",status_code="500"}'] == 1
    assert ours['P_requests_in_progress{app_name="t",method="GET",path="/items/{item_id}",status_code="200"}'] == 0
    assert ours['P_request_duration_seconds_count{app_name="t",method="GET",path="/items/{item_id}",status_code="404"}'] == 1
    assert any(re.match(r'P_request_duration_seconds_bucket\{.*status_code="404"', k) for k in ours)
