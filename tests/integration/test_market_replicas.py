"""Two app processes on one database and one Redis: exactly one ingests, both stream to their
WebSocket clients, and when the ingesting one is SIGKILLed the other takes over within 10 s."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import asyncpg
import httpx
import websockets

from tests.support.services import AppProcess


async def first_events(ws, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        events = [e for e in frame if e.get("type") in ("trade", "quote")]
        if events:
            return events
    raise AssertionError("no market events")


async def test_one_ingests_both_stream_and_the_other_takes_over(pg_cluster, redis_server, test_env):
    name = "wt_market_ha_" + uuid.uuid4().hex[:6]
    pg_cluster.create_database(name)
    url = pg_cluster.url(name)
    env = {**test_env, "DATABASE_URL": url, "REDIS_URL": redis_server.url.rsplit("/", 1)[0] + "/6",
           "MARKET_FEED": "simulator", "SIMULATOR_RATE": "300", "FEED_FLUSH_INTERVAL": "0.02", "LOG_LEVEL": "INFO"}
    a, b = AppProcess(env), AppProcess(env)
    await asyncio.to_thread(a.start, 60)
    db = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + 20
        while not await db.fetchval("SELECT count(*) FROM trades"):
            assert time.monotonic() < deadline, a.logs()[-2000:]
            await asyncio.sleep(0.2)
        await asyncio.to_thread(b.start, 60)
        async with httpx.AsyncClient() as c:
            r = await c.post(f"{a.base_url}/api/auth/register",
                             json={"email": f"ha-{uuid.uuid4().hex[:8]}@example.com", "password": uuid.uuid4().hex})
            token = r.json()["access_token"]  # valid on both replicas (same secret, same database)
        sub = json.dumps({"action": "subscribe", "symbols": ["AAPL", "SPY", "XOM"]})
        wa = await websockets.connect(f"ws://127.0.0.1:{a.port}/market-feed?token={token}")
        wb = await websockets.connect(f"ws://127.0.0.1:{b.port}/market-feed?token={token}")
        for ws in (wa, wb):
            await ws.send(sub)
        ev_a, ev_b = await first_events(wa, 10), await first_events(wb, 10)  # both replicas stream
        assert ev_a and ev_b
        leaders = await db.fetchval(  # pg_locks is cluster-wide; other tests' apps use other databases
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = $1 "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            0x4D4B_5446_4545_44 & 0xFFFFFFFF)
        assert leaders == 1
        await wa.close()
        killed_at = time.time()
        await asyncio.to_thread(a.kill)  # SIGKILL: no clean shutdown, the lock goes with its connection
        # B takes over: new trades are written and streamed within 10 s
        deadline = time.monotonic() + 10
        while True:
            newest = await db.fetchval("SELECT max(ts) FROM trades")
            if newest is not None and newest.timestamp() > killed_at + 0.5:
                break
            assert time.monotonic() < deadline, "no takeover within 10 s: " + b.logs()[-2000:]
            await asyncio.sleep(0.1)
        takeover = time.time() - killed_at
        deadline = time.monotonic() + 5  # B's client (frames buffered before the kill first) gets new prices
        while not any(e["ts"] / 1000 > killed_at for e in await first_events(wb, 5)):
            assert time.monotonic() < deadline
        await wb.close()
        assert takeover < 10
        # no duplicate rows from the two leaders
        assert await db.fetchval("SELECT count(*) - count(DISTINCT (symbol, trade_id)) FROM trades") == 0
        assert await db.fetchval("SELECT count(*) FROM (SELECT 1 FROM minute_bars GROUP BY symbol, ts "
                                 "HAVING count(*) > 1) d") == 0
        assert await db.fetchval("SELECT count(*) FROM (SELECT 1 FROM daily_bars GROUP BY symbol, ts "
                                 "HAVING count(*) > 1) d") == 0
    finally:
        await db.close()
        await asyncio.to_thread(a.kill)
        await asyncio.to_thread(b.stop)
