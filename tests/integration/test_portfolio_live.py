"""`subscribe_portfolio` on /market-feed, against a real server process: the summary streams when the
price moves and when the ledger changes, at most every PORTFOLIO_LIVE_INTERVAL; someone else's
portfolio is refused."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from decimal import Decimal

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis
import websockets

from app.market.snapshot import Snapshot, snapshot_key
from tests.support.services import AppProcess


@pytest.fixture(scope="module")
def server(test_env: dict[str, str]) -> Iterator[AppProcess]:
    proc = AppProcess({**test_env, "PORTFOLIO_LIVE_INTERVAL": "0.25"})
    proc.start(wait=60)
    try:
        yield proc
    finally:
        proc.stop()


async def register(http: httpx.AsyncClient, n: str) -> dict[str, str]:
    r = await http.post("/api/auth/register", json={"email": f"live-{n}-{time.time_ns()}@example.com",
                                                    "password": "live portfolio pass 1"})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def set_price(redis_url: str, symbol: str, price: str, prev: str) -> None:
    now = int(time.time() * 1000)
    snap = Snapshot(symbol=symbol, price=Decimal(price), trade_ts=now, prev_close=Decimal(prev), updated=now)
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.set(snapshot_key(symbol), msgspec.json.encode(snap))
    finally:
        await client.aclose()


async def next_event(ws: websockets.ClientConnection, kind: str, timeout: float = 5.0, action: str | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {kind} event in time"
        frame = json.loads(await asyncio.wait_for(ws.recv(), left))
        for event in frame if isinstance(frame, list) else [frame]:
            if event.get("type") == kind and (action is None or event.get("action") == action):
                return event


async def test_live_portfolio_summary(server: AppProcess, test_env: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        me = await register(http, "a")
        other = await register(http, "b")
        pid = (await http.post("/api/portfolio", json={"name": "live"}, headers=me)).json()["id"]
        r = await http.post(f"/api/portfolio/{pid}/transactions", headers=me,
                            json={"type": "buy", "symbol": "XOM", "quantity": "10", "price": "100"})
        assert r.status_code == 201, r.text
        await set_price(test_env["REDIS_URL"], "XOM", "110", "105")
        token = me["Authorization"].split()[1]
        ws_url = server.base_url.replace("http", "ws") + f"/market-feed?token={token}"
        async with websockets.connect(ws_url) as ws:
            await ws.send(json.dumps({"action": "subscribe_portfolio", "portfolio_id": pid, "id": 1}))
            ack = await next_event(ws, "ack", action="subscribe_portfolio")
            assert ack["action"] == "subscribe_portfolio" and ack["portfolio_id"] == pid
            first = await next_event(ws, "portfolio")  # bought today at 100, now 110: +100 today
            assert first["portfolio_id"] == pid and Decimal(first["total_value"]) == 1100
            assert Decimal(first["pnl_today"]["amount"]) == 100 and first["top_positions"][0]["symbol"] == "XOM"
            # the price moves → a new summary within a tick or two
            await set_price(test_env["REDIS_URL"], "XOM", "120", "105")
            moved = await next_event(ws, "portfolio")
            assert Decimal(moved["total_value"]) == 1200
            # the ledger changes → a new summary with the new version
            r = await http.post(f"/api/portfolio/{pid}/transactions", headers=me,
                                json={"type": "deposit", "amount": "50"})
            assert r.status_code == 201
            changed = await next_event(ws, "portfolio")
            assert Decimal(changed["total_value"]) == 1250 and changed["ledger_version"] > moved["ledger_version"]
            # at most one summary per interval, and none while nothing changes
            await set_price(test_env["REDIS_URL"], "XOM", "121", "105")
            started = time.monotonic()
            await next_event(ws, "portfolio")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(next_event(ws, "portfolio"), 0.8)
            assert time.monotonic() - started >= 0.8
            # someone else's portfolio, or nonsense, is refused without closing the socket
            await ws.send(json.dumps({"action": "unsubscribe_portfolio", "portfolio_id": pid, "id": 2}))
            assert (await next_event(ws, "ack", action="unsubscribe_portfolio"))["subscribed"] is False
        other_token = other["Authorization"].split()[1]
        ws_url = server.base_url.replace("http", "ws") + f"/market-feed?token={other_token}"
        async with websockets.connect(ws_url) as ws:
            await ws.send(json.dumps({"action": "subscribe_portfolio", "portfolio_id": pid, "id": 3}))
            err = await next_event(ws, "error")
            assert err.get("status") == 404
            await ws.send(json.dumps({"action": "subscribe_portfolio", "portfolio_id": "nope", "id": 4}))
            err = await next_event(ws, "error")
            assert "portfolio_id" in err["message"]
            await ws.send(json.dumps({"action": "ping", "id": 5}))
            assert (await next_event(ws, "ack", action="ping"))["action"] == "ping"
