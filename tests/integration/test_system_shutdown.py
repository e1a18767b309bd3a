"""Graceful shutdown on SIGTERM, on a real `python -m app serve` subprocess.

An in-flight request is held open by a table lock that /health/ready has to wait for; WebSockets
are a test echo route (the market feed's own sockets go through the same middleware).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from tests.support.system import ServeProcess


@pytest.fixture
def app_env(test_env, tmp_path):
    return {**test_env, "DATA_DIR": str(tmp_path), "SHUTDOWN_TIMEOUT": "5", "LOG_LEVEL": "INFO"}


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


async def test_sigterm_finishes_in_flight_requests_closes_websockets_with_1001_and_stops_accepting(
        app_env, database_url):
    proc = ServeProcess(app_env, extra_domains=("tests.support.system_routes",))
    proc.start()
    lock_conn = await asyncpg.connect(database_url)
    try:
        ws = await ws_connect(f"ws://127.0.0.1:{proc.port}/_test/ws-echo")
        await ws.send("hello")
        assert await ws.recv() == "hello"
        async with httpx.AsyncClient(base_url=proc.base_url, timeout=10) as http:
            # Hold a lock that /health/ready must wait for: the request is in flight at SIGTERM.
            tx = lock_conn.transaction()
            await tx.start()
            await lock_conn.execute("LOCK TABLE schema_migrations IN ACCESS EXCLUSIVE MODE")
            in_flight = asyncio.create_task(http.get("/health/ready"))
            await asyncio.sleep(0.5)
            assert not in_flight.done()
            sent_at = time.monotonic()
            proc.proc.send_signal(signal.SIGTERM)

            # The WebSocket is closed with 1001 "going away", promptly.
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 3)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            assert time.monotonic() - sent_at < 2.5

            # New connections are refused while the in-flight request still runs.
            await asyncio.sleep(0.3)
            assert await asyncio.to_thread(_refused, proc.port)
            assert proc.alive() and not in_flight.done()

            await tx.rollback()  # release: the in-flight request completes with a real answer
            response = await asyncio.wait_for(in_flight, 5)
            # It saw the drain: readiness is 503 "draining" so a balancer sends nothing new here.
            assert response.status_code == 503
            assert response.json()["checks"]["shutdown"] == {"ok": False, "error": "draining"}
        proc.proc.wait(10)
        assert time.monotonic() - sent_at < 5 + 3
        logs = proc.logs()
        assert '"msg":"draining"' in logs and '"websockets_closed":1' in logs
        assert "Application shutdown complete" in logs
    finally:
        await lock_conn.close()
        proc.kill()


async def test_sigterm_gives_up_on_a_stuck_request_after_shutdown_timeout(app_env, database_url):
    """A trade stuck behind a row lock (held by the test) outlives SHUTDOWN_TIMEOUT: it is cancelled
    and the process still exits, promptly."""
    from tests.support.system import register_sync

    proc = ServeProcess({**app_env, "SHUTDOWN_TIMEOUT": "1"})
    proc.start(wait=90)
    lock_conn = await asyncpg.connect(database_url)
    tx = lock_conn.transaction()
    try:
        headers = register_sync(proc.base_url)
        async with httpx.AsyncClient(base_url=proc.base_url, headers=headers, timeout=20) as http:
            r = await http.post("/api/portfolio", json={"name": "stuck"})
            assert r.status_code == 201, r.text
            pid = r.json()["id"]
            await tx.start()
            await lock_conn.execute("SELECT 1 FROM portfolios WHERE id = $1 FOR UPDATE", __import__("uuid").UUID(pid))
            stuck = asyncio.create_task(http.post(f"/api/portfolio/{pid}/transactions",
                                                  json={"type": "deposit", "amount": "100"}))
            await asyncio.sleep(0.5)
            assert not stuck.done()
            sent_at = time.monotonic()
            proc.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.proc.wait, 20)
            took = time.monotonic() - sent_at
            # uvicorn cancels the stuck request after SHUTDOWN_TIMEOUT and the lifespan still runs.
            assert 0.9 < took < 10, took
            # The cancelled request is answered (uvicorn's plain 500), not left hanging.
            response = await stuck
            assert response.status_code == 500
        assert "timeout graceful shutdown exceeded" in proc.logs()
        assert "Application shutdown complete" in proc.logs()
    finally:
        with contextlib.suppress(Exception):  # not started when the test failed before the lock
            await tx.rollback()
        await lock_conn.close()
        proc.kill()


async def test_sigterm_closes_the_market_feed_with_1001_and_flushes_the_ingestion_buffer(
        test_env, pg_cluster, tmp_path):
    """The simulator ingests with a long flush interval, so most of the time events wait in the
    buffer. After SIGTERM, the newest stored trade must be from the moment of shutdown: the market's
    lifespan flushed the buffer while the pool was still open (app/asgi.py exits the domains first)."""
    from datetime import datetime

    from tests.support.system import register_sync, wait_for

    pg_cluster.create_database("wt_sys_flush")
    db_url = pg_cluster.url("wt_sys_flush")
    proc = ServeProcess({**test_env, "DATABASE_URL": db_url, "DATA_DIR": str(tmp_path), "LOG_LEVEL": "INFO",
                         "MARKET_FEED": "simulator", "SIMULATOR_RATE": "500", "INGEST_FLUSH_INTERVAL": "5",
                         "INGEST_BATCH_SIZE": "1000000", "INGEST_QUEUE_SIZE": "2000000", "SHUTDOWN_TIMEOUT": "5"})
    proc.start(wait=90)
    conn = await asyncpg.connect(db_url)
    try:
        headers = register_sync(proc.base_url)
        token = headers["Authorization"].split()[1]
        await asyncio.to_thread(wait_for, lambda: httpx.get(f"{proc.base_url}/api/system/status", headers=headers)
                                .json()["services"].get("market", {}).get("ingesting") is True, 30,
                                what="the simulator ingesting")
        ws = await ws_connect(f"ws://127.0.0.1:{proc.port}/market-feed?token={token}")
        await ws.send('{"action":"subscribe","symbols":["AAPL","MSFT"],"channels":["trades"]}')
        # Catch a periodic write as it happens (the newest stored trade changes); the next one is
        # INGEST_FLUSH_INTERVAL (5 s) later. Buffer for 1.5 s, then SIGTERM.
        await asyncio.to_thread(wait_for, lambda: asyncio.run(_count(db_url)) > 0, 30, what="first stored trades")
        seen = await conn.fetchval("SELECT max(ts) FROM trades")
        deadline = time.monotonic() + 15
        while (newest_before := await conn.fetchval("SELECT max(ts) FROM trades")) == seen:
            assert time.monotonic() < deadline, "no periodic write seen"
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)
        proc.proc.send_signal(signal.SIGTERM)
        code = None
        try:
            while True:  # the feed keeps sending until the close frame
                await asyncio.wait_for(ws.recv(), 5)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
        assert code == 1001
        await asyncio.to_thread(proc.proc.wait, 20)
        logs = [json.loads(line) for line in proc.logs().splitlines() if line.startswith("{")]
        stopping = next(rec for rec in logs if rec["msg"] == "stopping")
        stopping_at = datetime.fromisoformat(stopping["ts"].replace("Z", "+00:00"))
        newest = await conn.fetchval("SELECT max(ts) FROM trades")
        # Events up to the shutdown are stored: without the flush, nothing after the periodic write
        # seen 1.5 s before SIGTERM would be (the next one was due 3.5 s after it).
        assert (newest - newest_before).total_seconds() > 1.0, (newest_before, newest)
        assert (stopping_at - newest).total_seconds() < 1.0, (stopping_at, newest)
        assert "market write failed" not in proc.logs()
    finally:
        await conn.close()
        proc.kill()


async def _count(db_url: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM trades")
    finally:
        await conn.close()
