"""POST /api/analytics/metrics and the threshold endpoints through the whole app."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pytest

from app.analytics import metrics as m
from tests.support.auth import register_user


def _returns(n: int = 300, seed: int = 1) -> tuple[list[float], list[float]]:
    rng = np.random.default_rng(seed)
    r = rng.normal(0.0005, 0.01, n)
    b = 0.8 * r + rng.normal(0, 0.005, n)
    return r.tolist(), b.tolist()


async def test_metrics_require_a_token(client) -> None:
    r = await client.post("/api/analytics/metrics", json={"returns": [0.01] * 30})
    assert r.status_code == 401


async def test_metrics_for_a_series_match_the_pure_core(client) -> None:
    user = await register_user(client)
    r, b = _returns()
    resp = await client.post("/api/analytics/metrics", headers=user.headers,
                             json={"returns": r, "benchmark_returns": b, "risk_free_rate": 0.03, "confidence": 0.99})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    ref = m.compute_metrics(r, benchmark_returns=b, risk_free_rate=0.03, confidence=0.99)
    assert body["sharpe"] == pytest.approx(ref.sharpe)
    assert body["var_historical"] == pytest.approx(ref.var_historical)
    assert body["benchmark"]["beta"] == pytest.approx(ref.benchmark.beta)
    assert body["drawdown"]["max_drawdown"] == pytest.approx(ref.drawdown.max_drawdown)
    assert body["periods"] == 300 and body["confidence"] == 0.99


async def test_metrics_align_benchmark_by_date(client) -> None:
    user = await register_user(client)
    r, b = _returns(60)
    days = [date(2024, 1, 1) + timedelta(days=i) for i in range(60)]
    resp = await client.post("/api/analytics/metrics", headers=user.headers, json={
        "returns": r, "dates": [d.isoformat() for d in days],
        "benchmark_returns": b[10:], "benchmark_dates": [d.isoformat() for d in days[10:]]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["benchmark"]["periods"] == 50
    assert body["start_date"] == "2024-01-01" and body["end_date"] == days[-1].isoformat()
    assert body["worst_period"]["date"] == days[int(np.argmin(r))].isoformat()


async def test_too_short_is_422_saying_how_much_is_needed(client) -> None:
    user = await register_user(client)
    resp = await client.post("/api/analytics/metrics", headers=user.headers, json={"returns": [0.01, 0.02, -0.01]})
    assert resp.status_code == 422
    body = resp.json()
    assert body["required_periods"] == 20 and body["available_periods"] == 3
    assert "need at least 20 returns, got 3" in body["detail"]
    assert body["errors"][0]["field"] == "returns"


async def test_bad_input_is_4xx_never_500(client) -> None:
    user = await register_user(client)
    h = user.headers
    cases = [
        ({"returns": [0.01] * 30, "extra": 1}, 400),
        ({"returns": "x"}, 400),
        ({"returns": [0.01] * 30, "confidence": 1.5}, 400),
        ({"returns": [-2.0] + [0.01] * 30}, 422),
        ({"returns": [0.01] * 30, "benchmark_returns": [0.01] * 29}, 422),
        ({"returns": [0.01] * 30, "dates": ["2024-01-01"]}, 422),
        ({"returns": [0.01] * 30, "dates": ["2024-01-01"] * 30}, 422),  # dates must increase: they date drawdowns
        ({"returns": [0.01] * 30, "dates": ["2024-01-01"] * 30, "benchmark_returns": [0.01] * 30,
          "benchmark_dates": ["2024-01-01"] * 30}, 422),  # repeated dates cannot be joined
    ]
    for payload, status in cases:
        resp = await client.post("/api/analytics/metrics", headers=h, json=payload)
        assert resp.status_code == status, (payload, resp.text)
    resp = await client.post("/api/analytics/metrics", headers={**h, "Content-Type": "application/json"},
                             content=b'{"returns": [NaN, 0.1]}')
    assert resp.status_code == 400


async def test_thresholds_get_put_roundtrip(client) -> None:
    user = await register_user(client)
    r = await client.get("/api/analytics/insights/thresholds", headers=user.headers)
    assert r.status_code == 200
    assert r.json()["effective"]["single_position"]["warning"] == 0.2 and r.json()["overrides"] == {}
    r = await client.put("/api/analytics/insights/thresholds", headers=user.headers,
                         json={"single_position": {"warning": 0.3}, "disabled": ["idle_cash"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["effective"]["single_position"] == {"warning": 0.3, "critical": 0.35}
    assert body["effective"]["disabled"] == ["idle_cash"]
    r = await client.get("/api/analytics/insights/thresholds", headers=user.headers)
    assert r.json()["overrides"] == {"single_position": {"warning": 0.3}, "disabled": ["idle_cash"]}
    # invalid: named field, nothing stored
    r = await client.put("/api/analytics/insights/thresholds", headers=user.headers,
                         json={"single_position": {"warning": 0.5}})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "single_position"
    r = await client.put("/api/analytics/insights/thresholds", headers=user.headers, json={"bogus": {}})
    assert r.status_code == 400 and "bogus" in r.json()["detail"]
    r = await client.get("/api/analytics/insights/thresholds", headers=user.headers)
    assert r.json()["effective"]["single_position"]["warning"] == 0.3
    # another user is unaffected
    other = await register_user(client)
    r = await client.get("/api/analytics/insights/thresholds", headers=other.headers)
    assert r.json()["overrides"] == {}


async def test_payload_size_is_bounded(client) -> None:
    user = await register_user(client)
    r = np.random.default_rng(3).normal(0, 0.01, 100_000).round(6).tolist()
    ok = await client.post("/api/analytics/metrics", headers=user.headers, json={"returns": r})
    assert ok.status_code == 200 and ok.json()["periods"] == 100_000
    too_many = await client.post("/api/analytics/metrics", headers=user.headers, json={"returns": r + [0.0]})
    assert too_many.status_code in (400, 413)
