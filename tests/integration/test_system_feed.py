"""The `system` channel on /market-feed, and the market service as the status page shows it."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect

from tests.support.system import ServeProcess, register_sync, wait_for


@pytest.fixture(scope="module")
def feed_app(test_env, pg_cluster, tmp_path_factory):
    # A database of its own: the simulator's leader lock and trades must not meet other tests'.
    pg_cluster.create_database("wt_sys_feed")
    proc = ServeProcess({**test_env, "DATABASE_URL": pg_cluster.url("wt_sys_feed"), "MARKET_FEED": "simulator",
                         "SIMULATOR_RATE": "200", "SYSTEM_PUSH_INTERVAL": "1", "SYSTEM_SAMPLE_INTERVAL": "0.5",
                         "DATA_DIR": str(tmp_path_factory.mktemp("feed"))})
    proc.start(wait=90)
    yield proc
    proc.kill()


async def _events(ws, seconds: float) -> list[dict]:
    """Every event received within `seconds` (server frames are JSON arrays of events)."""
    out: list[dict] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            frame = await asyncio.wait_for(ws.recv(), left)
        except asyncio.TimeoutError:
            break
        data = json.loads(frame)
        out.extend(data if isinstance(data, list) else [data])
    return out


async def test_system_channel_pushes_the_summary_every_few_seconds(feed_app):
    headers = register_sync(feed_app.base_url)
    token = headers["Authorization"].split()[1]
    async with ws_connect(f"ws://127.0.0.1:{feed_app.port}/market-feed?token={token}") as ws:
        await ws.send(json.dumps({"action": "system.subscribe", "id": 7}))
        events = await _events(ws, 3.6)
        acks = [e for e in events if e.get("type") == "ack" and e.get("action") == "system.subscribe"]
        assert acks and acks[0]["subscribed"] is True and acks[0]["interval_s"] == 1.0 and acks[0]["id"] == 7
        pushes = [e for e in events if e.get("type") == "system"]
        assert 3 <= len(pushes) <= 5, [e.get("type") for e in events]
        summary = pushes[-1]["data"]
        assert summary["database"]["ok"] is True and summary["redis"]["ok"] is True
        assert 0 <= summary["cpu_percent"] <= 100 and summary["memory_percent"] > 0
        market = summary["services"]["market"]
        assert market["feed"] == "simulator" and market["ws_clients"] >= 1
        assert "detail" not in summary  # the channel carries the summary only
        # Only prices were asked for by nobody: no trades or quotes arrive on this socket.
        assert not [e for e in events if e.get("type") in ("trade", "quote")]

        await ws.send(json.dumps({"action": "system.unsubscribe"}))
        await _events(ws, 0.5)  # the ack and anything already queued
        later = await _events(ws, 2.5)
        assert not [e for e in later if e.get("type") == "system"]


def test_status_page_reports_the_market_feed(feed_app, database_url):
    headers = register_sync(feed_app.base_url)

    def ingesting() -> bool:
        body = httpx.get(f"{feed_app.base_url}/api/system/status", headers=headers).json()
        market = body["services"].get("market", {})
        return market.get("ingesting") is True and (market.get("events_per_second") or 0) > 0

    wait_for(ingesting, 20, what="the market feed ingesting with events/s > 0")
    body = httpx.get(f"{feed_app.base_url}/api/system/status", headers=headers).json()
    market = body["services"]["market"]
    assert market["state"] == "running" and market["queue_depth"] >= 0 and market["dropped"] == 0
    # ok once the start-up (history load, a busy shared machine) is out of the 10 s lag window
    wait_for(lambda: httpx.get(f"{feed_app.base_url}/api/system/status", headers=headers).json()["status"] == "ok",
             25, what="status ok")
    metrics = httpx.get(f"{feed_app.base_url}/metrics").text
    assert 'wt_service_value{field="events_per_second",service="market"}' in metrics
    assert 'wt_service_state{service="market",state="running"} 1.0' in metrics
