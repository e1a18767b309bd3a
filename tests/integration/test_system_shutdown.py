"""Graceful shutdown on SIGTERM, on a real `python -m app serve` subprocess.

An in-flight request is held open by a table lock that /health/ready has to wait for; WebSockets
are a test echo route (the market feed's own sockets go through the same middleware).
"""

from __future__ import annotations

import asyncio
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
    # /health/ready gives up on its own after 2 s; SHUTDOWN_TIMEOUT must cut it off well before.
    proc = ServeProcess({**app_env, "SHUTDOWN_TIMEOUT": "0.5"})
    proc.start()
    lock_conn = await asyncpg.connect(database_url)
    try:
        tx = lock_conn.transaction()
        await tx.start()
        await lock_conn.execute("LOCK TABLE schema_migrations IN ACCESS EXCLUSIVE MODE")
        async with httpx.AsyncClient(base_url=proc.base_url, timeout=10) as http:
            stuck = asyncio.create_task(http.get("/health/ready"))
            await asyncio.sleep(0.3)
            sent_at = time.monotonic()
            proc.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.proc.wait, 10)
            took = time.monotonic() - sent_at
            # uvicorn cancels the stuck request after SHUTDOWN_TIMEOUT and the lifespan still runs.
            assert 0.4 < took < 3, took
            # The cancelled request is answered (uvicorn's plain 500), not left hanging.
            response = await stuck
            assert response.status_code == 500
        assert "timeout graceful shutdown exceeded" in proc.logs()
        assert "Application shutdown complete" in proc.logs()
    finally:
        await tx.rollback()
        await lock_conn.close()
        proc.kill()
