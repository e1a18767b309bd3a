"""MARKET_FEED=polygon end to end: the app process against the fake Polygon server."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx

from tests.support.auth import make_admin
from tests.support.fake_polygon import FakePolygon
from tests.support.services import AppProcess


async def admin_headers(app: AppProcess, database_url: str) -> dict:
    async with httpx.AsyncClient(base_url=app.base_url) as c:
        r = await c.post("/api/auth/register", json={"email": f"p-{uuid.uuid4().hex[:8]}@example.com",
                                                     "password": uuid.uuid4().hex})
        body = r.json()
    await make_admin(database_url, body["user"]["id"])
    return {"Authorization": f"Bearer {body['access_token']}"}


async def test_polygon_feed_in_the_app_and_auth_failure_reported(pg_cluster, redis_server, test_env):
    fake = FakePolygon(api_key="k-good")
    await fake.start()
    name = "wt_market_poly_" + uuid.uuid4().hex[:6]
    pg_cluster.create_database(name)
    url = pg_cluster.url(name)
    env = {**test_env, "DATABASE_URL": url, "REDIS_URL": redis_server.url.rsplit("/", 1)[0] + "/7",
           "MARKET_FEED": "polygon", "POLYGON_API_KEY": "k-good", "POLYGON_WS_URL": fake.ws_url,
           "POLYGON_REST_URL": fake.rest_url, "POLYGON_SYMBOLS": "AAPL,SPY", "POLYGON_BACKFILL_DAYS": "1",
           "FEED_FLUSH_INTERVAL": "0.02", "LOG_LEVEL": "INFO"}
    app = AppProcess(env)
    try:
        await asyncio.to_thread(app.start, 60)
        await fake.wait_subscribed(20)
        assert sorted(fake.subscribed) == sorted(f"{c}.{s}" for c in ("T", "Q", "AM") for s in ("AAPL", "SPY"))
        h = await admin_headers(app, url)
        now = int(time.time() * 1000)
        await fake.send([{"ev": "T", "sym": "AAPL", "p": 321.45, "s": 10, "t": now, "i": "1", "x": 4},
                         {"ev": "Q", "sym": "AAPL", "bp": 321.4, "ap": 321.5, "bs": 1, "as": 2, "t": now}])
        async with httpx.AsyncClient(base_url=app.base_url, headers=h) as c:
            deadline = time.monotonic() + 10
            while True:
                q = (await c.get("/api/markets/quotes", params={"symbols": "AAPL"})).json()["quotes"][0]
                if q["price"] == "321.45" and q["bid"] == "321.4":
                    break
                assert time.monotonic() < deadline, q
                await asyncio.sleep(0.1)
            assert not q["stale"] and q["previous_close"] == "237.330002"  # the bundled history's last close
            st = (await c.get("/api/markets/status")).json()
            assert st["feed"] == "polygon" and st["ingesting"] and st["state"] == "streaming"
            assert st["source"]["subscription_acks"] == 6 and st["source"]["connects"] == 1
            assert (await c.get("/api/markets/status", headers={"Authorization": ""})).status_code == 401
    finally:
        await asyncio.to_thread(app.stop)
    # a wrong key: reported in status, logged once, not retried
    env["POLYGON_API_KEY"] = "k-wrong"
    bad = AppProcess(env)
    try:
        attempts = fake.auth_attempts
        await asyncio.to_thread(bad.start, 60)
        h = await admin_headers(bad, url)
        async with httpx.AsyncClient(base_url=bad.base_url, headers=h) as c:
            deadline = time.monotonic() + 15
            while (st := (await c.get("/api/markets/status")).json())["state"] != "auth_failed":
                assert time.monotonic() < deadline, st
                await asyncio.sleep(0.2)
        await asyncio.sleep(1.5)
        assert fake.auth_attempts == attempts + 1
        assert bad.logs().count("polygon authentication failed") == 1
        assert "k-wrong" not in bad.logs()
    finally:
        await asyncio.to_thread(bad.stop)
        await fake.stop()


async def test_cli_history_and_backfill(pg_cluster, test_env):
    import os
    import sys

    import asyncpg

    from app.config import PROJECT_ROOT

    fake = FakePolygon(api_key="k-cli")
    await fake.start()
    name = "wt_market_cli_" + uuid.uuid4().hex[:6]
    pg_cluster.create_database(name)
    url = pg_cluster.url(name)
    minute = (int(time.time() * 1000) // 60_000 - 30) * 60_000
    fake.minute_bars["AAPL"] = {minute + i * 60_000: {"o": 10 + i, "h": 11 + i, "l": 9 + i, "c": 10.5 + i, "v": 100,
                                                      "t": minute + i * 60_000, "n": 3} for i in range(30)}
    env = {**os.environ, **test_env, "DATABASE_URL": url, "POLYGON_API_KEY": "k-cli", "POLYGON_REST_URL": fake.rest_url,
           "POLYGON_SYMBOLS": "AAPL"}

    async def run(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "app", *args, cwd=PROJECT_ROOT, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode()

    try:
        code, out = await run("market-history")
        assert code == 0 and "rows written" in out, out
        code, out = await run("market-history")
        assert code == 0 and "already loaded" in out, out
        code, out = await run("market-backfill", "--days", "1")
        assert code == 0 and "backfill: 30 bars written" in out, out
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM minute_bars WHERE symbol = 'AAPL'") == 30
        finally:
            await conn.close()
        env["POLYGON_API_KEY"] = "k-wrong"
        code, out = await run("market-backfill")
        assert code == 1 and "backfill failed" in out and "401" in out, out
    finally:
        await fake.stop()
