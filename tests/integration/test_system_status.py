"""/api/system/status and /metrics on the whole app: who sees what, and that the numbers are measured."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.support.auth import make_admin, register_user
from tests.support.system import ServeProcess, register_sync


async def _admin(client, database_url):
    user = await register_user(client)
    await make_admin(database_url, user.id)
    r = await client.post("/api/auth/login", json={"email": user.email, "password": user.password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def test_status_needs_a_signed_in_user(client):
    r = await client.get("/api/system/status")
    assert r.status_code == 401


async def test_status_summary_for_users(client):
    user = await register_user(client)
    for _ in range(30):  # the lag probe reports after its first 100 ms tick (None until then)
        r = await client.get("/api/system/status", headers=user.headers)
        if r.status_code != 200 or r.json()["event_loop_lag_ms"] is not None:
            break
        await asyncio.sleep(0.1)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] in ("ok", "degraded") and body["version"]
    assert 0 <= body["cpu_percent"] <= 100 and body["cpu_count"] >= 1
    assert 0 < body["memory_percent"] < 100
    assert len(body["load"]) == 3
    assert body["database"]["ok"] is True and body["database"]["rtt_ms"] > 0
    assert body["redis"] == {"kind": "redis", "ok": True, "rtt_ms": body["redis"]["rtt_ms"]}
    assert body["redis"]["rtt_ms"] > 0
    assert body["event_loop_lag_ms"] is not None and body["event_loop_lag_ms"] >= 0
    assert "detail" not in body and "process" not in body


async def test_status_everything_for_admins(client, database_url):
    headers = await _admin(client, database_url)
    body = (await client.get("/api/system/status", headers=headers)).json()
    detail = body["detail"]
    host, proc = detail["host"], detail["process"]
    assert len(host["cpu"]["per_core"]) == host["cpu"]["count"]
    assert {"total", "available", "used", "percent"} <= set(host["memory"])
    assert {"total", "used", "percent"} <= set(host["swap"])
    assert host["disk"]["total"] > host["disk"]["used"] > 0
    assert {"rx_bytes_per_s", "tx_bytes_per_s"} <= set(host["network"])
    assert proc["rss_bytes"] > 10_000_000 and proc["threads"] >= 1 and proc["open_files"] > 3
    assert detail["database"]["pool"]["max"] == 10
    assert detail["database"]["pool"]["size"] >= detail["database"]["pool"]["in_use"] >= 0
    assert detail["event_loop"]["probe_interval_ms"] == 100.0
    assert detail["uptime_s"] >= 0 and detail["sampler"]["samples"] >= 1
    assert "auth" not in detail["services"] or isinstance(detail["services"]["auth"], dict)


async def test_metrics_refuses_strangers_and_serves_admins(client, database_url):
    # The test client's peer ("testclient") is in no monitoring network.
    assert (await client.get("/metrics")).status_code == 403
    user = await register_user(client)
    assert (await client.get("/metrics", headers=user.headers)).status_code == 403
    assert (await client.get("/metrics", headers={"Authorization": "Bearer not-a-token"})).status_code == 403
    headers = await _admin(client, database_url)
    r = await client.get("/metrics", headers=headers)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in ("wt_host_cpu_percent", "wt_host_cpu_core_percent", "wt_host_memory_percent", "wt_db_up 1.0",
                 "wt_db_rtt_seconds", "wt_redis_up 1.0", "wt_event_loop_lag_seconds_bucket", "wt_process_rss_bytes",
                 'wt_db_pool_connections{state="max"} 10.0', "wt_build_info", "wt_http_requests_total"):
        assert name in text, name
    # Litestar's plugin counted our earlier request by its route template.
    assert 'path="/api/system/status"' in text


@pytest.fixture(scope="module")
def metrics_app(test_env, tmp_path_factory):
    """A real process: the client address is a real IP, behind a trusted proxy on loopback."""
    proc = ServeProcess({**test_env, "DATA_DIR": str(tmp_path_factory.mktemp("metrics")),
                         "TRUSTED_PROXIES": "127.0.0.1/32", "METRICS_ALLOWED_NETWORKS": "10.9.0.0/16"})
    proc.start()
    yield proc
    proc.kill()


def test_metrics_from_the_monitoring_network_through_a_trusted_proxy(metrics_app):
    base = metrics_app.base_url
    assert httpx.get(f"{base}/metrics", headers={"X-Forwarded-For": "10.9.1.2"}).status_code == 200
    assert httpx.get(f"{base}/metrics", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 403
    # Loopback itself is not in METRICS_ALLOWED_NETWORKS here.
    assert httpx.get(f"{base}/metrics").status_code == 403
    # A forged hop in front of the real client does not help: the rightmost untrusted hop counts.
    forged = {"X-Forwarded-For": "10.9.1.2, 203.0.113.9"}
    assert httpx.get(f"{base}/metrics", headers=forged).status_code == 403


def test_metrics_for_an_admin_from_anywhere(metrics_app, database_url):
    headers = register_sync(metrics_app.base_url, admin_database_url=database_url)
    r = httpx.get(f"{metrics_app.base_url}/metrics", headers={**headers, "X-Forwarded-For": "203.0.113.9"})
    assert r.status_code == 200 and "wt_status" in r.text


async def test_while_draining_readiness_is_503(client):
    from app.system.shutdown import DRAIN

    DRAIN.draining = True
    try:
        r = await client.get("/health/ready")
        assert r.status_code == 503 and r.json()["checks"]["shutdown"] == {"ok": False, "error": "draining"}
        assert (await client.get("/health/live")).status_code == 200
    finally:
        DRAIN.draining = False
    assert (await client.get("/health/ready")).status_code == 200
