"""The /market-feed WebSocket and the REST endpoints against a real server process (uvicorn) running
the simulator feed, with `websockets` clients. The process has its own database and Redis db."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid

import httpx
import pytest
import websockets

from tests.support.services import AppProcess


@pytest.fixture(scope="module")
async def feed_app(pg_cluster, redis_server, test_env):
    name = "wt_market_feed_" + uuid.uuid4().hex[:6]
    pg_cluster.create_database(name)
    env = {**test_env, "DATABASE_URL": pg_cluster.url(name), "REDIS_URL": redis_server.url.rsplit("/", 1)[0] + "/5",
           "MARKET_FEED": "simulator", "SIMULATOR_RATE": "8000", "FEED_FLUSH_INTERVAL": "0.02",
           "WS_MAX_SYMBOLS": "20", "WS_MAX_CONNECTIONS_PER_USER": "3", "WS_SLOW_CLIENT_TIMEOUT": "1",
           "LOG_LEVEL": "INFO"}
    app = AppProcess(env)
    await asyncio.to_thread(app.start, 60)
    try:
        yield app
    finally:
        started = time.monotonic()
        await asyncio.to_thread(app.stop)  # SIGTERM: sockets (even a stalled one) must not hold the shutdown
        assert time.monotonic() - started < 15
        assert "token=ey" not in app.logs()  # access tokens in query strings are never logged


async def register(app: AppProcess) -> tuple[str, dict]:
    async with httpx.AsyncClient(base_url=app.base_url) as c:
        r = await c.post("/api/auth/register", json={"email": f"m-{uuid.uuid4().hex[:10]}@example.com",
                                                     "password": f"pw-{uuid.uuid4().hex}"})
        assert r.status_code == 201, r.text
        token = r.json()["access_token"]
    return token, {"Authorization": f"Bearer {token}"}


def ws_url(app: AppProcess, token: str | None = None) -> str:
    return f"ws://127.0.0.1:{app.port}/market-feed" + (f"?token={token}" if token else "")


async def recv_json(ws, timeout: float = 5.0) -> list:
    frame = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    assert isinstance(frame, list)
    return frame


async def recv_until(ws, pred, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ev in await recv_json(ws, deadline - time.monotonic()):
            if pred(ev):
                return ev
    raise AssertionError("expected message not received")


async def test_rest_endpoints_serve_live_and_stored_data(feed_app):
    _, h = await register(feed_app)
    async with httpx.AsyncClient(base_url=feed_app.base_url, headers=h) as c:
        assert (await c.get("/api/markets/quotes?symbols=AAPL", headers={"Authorization": ""})).status_code == 401
        deadline = time.monotonic() + 15
        while True:  # the ingesting replica is elected and the simulator has traded
            r = await c.get("/api/markets/quotes", params={"symbols": "AAPL,SPY,NOPE"})
            assert r.status_code == 200
            body = r.json()
            if len(body["quotes"]) == 2 and not any(q["stale"] for q in body["quotes"]) and \
                    all(q["bid"] for q in body["quotes"]):
                break
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.2)
        assert body["unknown"] == ["NOPE"]
        q = body["quotes"][0]
        assert q["symbol"] == "AAPL" and float(q["price"]) > 0 and float(q["bid"]) < float(q["ask"])
        assert q["previous_close"] is not None and q["change"] is not None and q["volume"] > 0
        r = await c.get("/api/markets/assets", params={"search": "apple"})
        assert [a["symbol"] for a in r.json()["items"]] == ["AAPL"]
        page1 = (await c.get("/api/markets/assets", params={"limit": 15})).json()
        page2 = (await c.get("/api/markets/assets", params={"limit": 15, "cursor": page1["next_cursor"]})).json()
        syms = [a["symbol"] for a in page1["items"] + page2["items"]]
        assert len(syms) == 20 == len(set(syms)) and page2["next_cursor"] is None
        assert (await c.get("/api/markets/assets", params={"cursor": "%%%"})).status_code == 400
        assert (await c.get("/api/markets/assets", params={"type": "etf"})).json()["items"][0]["symbol"] == "SPY"
        r = await c.get("/api/markets/assets/spy")
        assert r.status_code == 200 and r.json()["type"] == "etf" and r.json()["quote"]["price"]
        assert (await c.get("/api/markets/assets/NOPE")).status_code == 404
        # history: stored daily bars (the bundled real data, then the simulated gap) and time_bucket weeks
        r = await c.get("/api/markets/history/AAPL", params={"interval": "1d", "start": "2024-11-25",
                                                            "end": "2024-11-29"})
        bars = r.json()["bars"]
        assert [b["ts"][:10] for b in bars] == ["2024-11-25", "2024-11-26", "2024-11-27", "2024-11-29"]
        assert bars[-1]["close"] == "237.330002"
        r = await c.get("/api/markets/history/AAPL", params={"interval": "1w", "start": "2024-11-01",
                                                            "end": "2024-11-29"})
        weeks = r.json()["bars"]
        assert len(weeks) == 5 and weeks[-1]["close"] == "237.330002"
        yesterday = (await c.get("/api/markets/history/AAPL", params={"interval": "1d", "limit": 3})).json()["bars"]
        assert len(yesterday) == 3
        for params in ({"interval": "2m"}, {"interval": "1m", "start": "2020-01-01"}, {"start": "yesterday"},
                       {"start": "2024-01-02", "end": "2024-01-01"}):
            r = await c.get("/api/markets/history/AAPL", params=params)
            assert r.status_code == 400, (params, r.text)
            assert r.json()["errors"][0]["field"] in ("interval", "start", "end")
        assert "narrow the range" in (await c.get("/api/markets/history/AAPL",
                                                  params={"interval": "1m", "start": "2020-01-01"})).json()["detail"]
        assert (await c.get("/api/markets/history/NOPE", params={"interval": "1d"})).status_code == 404
        b = (await c.get("/api/markets/breadth", params={"days": 30})).json()
        assert b["symbols"] == 20 and b["advancers"] + b["decliners"] + b["unchanged"] <= 20
        assert b["ad_line"] and b["ad_line"][-1]["ad_line"] == sum(d["net"] for d in b["ad_line"])
        assert 0 <= b["pct_above_ma200"] <= 100
        o = (await c.get("/api/markets/overview")).json()
        assert o["benchmark"]["symbol"] == "SPY" and o["breadth"]["symbols"] == 20
        assert all(float(g["change_pct"]) > 0 for g in o["gainers"])
        assert all(float(g["change_pct"]) < 0 for g in o["losers"])
        r = await c.get("/api/markets/quotes", params={"symbols": ",".join(f"S{i}" for i in range(201))})
        assert r.status_code == 400


async def test_feed_authentication(feed_app):
    token, _ = await register(feed_app)
    # no token and a first message that is not auth
    async with websockets.connect(ws_url(feed_app)) as ws:
        await ws.send(json.dumps({"action": "subscribe", "symbols": ["AAPL"]}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd.code == 4401 and "authentication required" in closed.value.rcvd.reason
    # a bad token in the query
    async with websockets.connect(ws_url(feed_app, "not-a-token")) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd.code == 4401 and closed.value.rcvd.reason.startswith("unauthorized")
    # a good token as the first message
    async with websockets.connect(ws_url(feed_app)) as ws:
        await ws.send(json.dumps({"action": "auth", "token": token}))
        ack = (await recv_json(ws))[0]
        assert ack["type"] == "ack" and ack["action"] == "auth" and ack["max_symbols"] == 20


async def test_logout_closes_the_sessions_sockets(feed_app):
    token, h = await register(feed_app)
    async with websockets.connect(ws_url(feed_app, token)) as ws:
        await recv_json(ws)
        async with httpx.AsyncClient(base_url=feed_app.base_url, headers=h) as c:
            assert (await c.post("/api/auth/logout")).status_code == 204
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd.code == 4401 and "session ended" in closed.value.rcvd.reason
    async with websockets.connect(ws_url(feed_app, token)) as ws:  # and the token no longer opens one
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd.code == 4401


async def test_subscribe_batches_and_unsubscribe(feed_app):
    token, _ = await register(feed_app)
    async with websockets.connect(ws_url(feed_app, token)) as ws:
        await recv_json(ws)  # auth ack
        await ws.send(json.dumps({"action": "subscribe", "symbols": ["aapl", "MSFT"], "channels": ["trades", "quotes"],
                                  "id": "s1"}))
        ack = await recv_until(ws, lambda e: e["type"] == "ack")
        assert ack == {"type": "ack", "action": "subscribe", "id": "s1", "symbols": ["AAPL"],
                       "channels": ["trades", "quotes"], "unknown": ["MSFT"],
                       "subscriptions": {"AAPL": ["quotes", "trades"]}}
        seen: dict[str, int] = {}
        frames = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            frame = await recv_json(ws)
            frames += 1
            for ev in frame:
                assert ev["symbol"] == "AAPL" and ev["type"] in ("trade", "quote"), ev
                seen[ev["type"]] = seen.get(ev["type"], 0) + 1
            quotes = [e for e in frame if e["type"] == "quote"]
            assert len(quotes) <= 1  # conflated per symbol within a batch
        assert seen.get("trade", 0) > 5 and seen.get("quote", 0) > 5 and frames > 10
        assert seen["trade"] > frames  # batches: several trades per frame on average
        # add bars for AAPL, SPY quotes, then unsubscribe AAPL entirely
        await ws.send(json.dumps({"action": "subscribe", "symbols": ["SPY"], "channels": ["quotes"], "id": 2}))
        ack = await recv_until(ws, lambda e: e["type"] == "ack")
        assert ack["subscriptions"] == {"AAPL": ["quotes", "trades"], "SPY": ["quotes"]}
        await recv_until(ws, lambda e: e["symbol"] == "SPY" and e["type"] == "quote")
        await ws.send(json.dumps({"action": "unsubscribe", "symbols": ["AAPL"], "id": 3}))
        ack = await recv_until(ws, lambda e: e["type"] == "ack")
        assert ack["action"] == "unsubscribe" and ack["subscriptions"] == {"SPY": ["quotes"]}
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            for ev in await recv_json(ws):
                assert ev["symbol"] == "SPY" and ev["type"] == "quote", ev


async def test_bad_messages_get_errors_and_never_drop_the_connection(feed_app):
    token, _ = await register(feed_app)
    async with websockets.connect(ws_url(feed_app, token)) as ws:
        await recv_json(ws)
        cases = [
            ("not json", "bad_json"),
            (json.dumps([1, 2]), "bad_message"),
            (json.dumps({"action": "fly", "id": 7}), "unknown_action"),
            (json.dumps({"action": "subscribe", "symbols": ["AAPL"], "channels": ["news"]}), "bad_request"),
            (json.dumps({"action": "subscribe", "symbols": "AAPL", "channels": 5}), "bad_request"),
            (json.dumps({"action": "subscribe", "symbols": []}), "bad_request"),
            (json.dumps({"action": "subscribe", "symbols": [f"S{i}" for i in range(21)]}), "bad_request"),
            (json.dumps({"action": "subscribe", "symbols": [{"x": 1}]}), "bad_request"),
            ("x" * 20_000, "too_large"),
        ]
        for raw, code in cases:
            await ws.send(raw)
            err = await recv_until(ws, lambda e: e["type"] in ("error", "ack"))
            assert err["type"] == "error" and err["code"] == code, (raw[:50], err)
        await ws.send(json.dumps({"action": "ping", "id": 9}))
        pong = await recv_until(ws, lambda e: e["type"] == "ack")
        assert pong["action"] == "ping" and pong["id"] == 9


async def test_connections_per_user_are_limited(feed_app):
    token, _ = await register(feed_app)
    open_ = []
    try:
        for _ in range(3):
            ws = await websockets.connect(ws_url(feed_app, token))
            await recv_json(ws)
            open_.append(ws)
        async with websockets.connect(ws_url(feed_app, token)) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd.code == 4429 and "too many connections" in closed.value.rcvd.reason
    finally:
        for ws in open_:
            await ws.close()
    await asyncio.sleep(0.2)
    async with websockets.connect(ws_url(feed_app, token)) as ws:  # slots are freed on close
        assert (await recv_json(ws))[0]["action"] == "auth"


async def test_a_client_that_stops_reading_never_slows_the_others(feed_app):
    """A short stall: the kernel's socket buffers absorb it, the client is kept and gets its backlog.
    (A stall long enough to fill them ends in 4008: the next test.)"""
    token, _ = await register(feed_app)
    everything = {"action": "subscribe", "symbols": ["AAPL", "AMD", "AMZN", "BABA", "BAC", "BBY", "GE", "GM", "GOOG",
                                                     "JPM", "MA", "META", "PFE", "RRC", "SBUX", "T", "UAA", "WMT",
                                                     "XOM", "SPY"]}
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", feed_app.port))
    slow = await websockets.connect(ws_url(feed_app, token), sock=sock, max_queue=1, max_size=2**24)
    fast = await websockets.connect(ws_url(feed_app, token))
    try:
        await slow.send(json.dumps(everything))
        await fast.send(json.dumps(everything))
        await recv_json(fast)
        lags = []
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            for ev in await recv_json(fast):
                if ev["type"] == "trade":
                    lags.append(time.time() * 1000 - ev["ts"])
        lags.sort()
        assert len(lags) > 1000 and lags[len(lags) // 2] < 200 and lags[int(len(lags) * 0.99)] < 1000
        # the stalled client still gets its backlog when it reads again
        first = await asyncio.wait_for(slow.recv(), 5)
        assert json.loads(first)
    finally:
        await slow.close()
        await fast.close()


async def test_a_client_that_stops_reading_for_good_is_closed_with_4008(pg_cluster, redis_server, test_env):
    """End to end, a real socket: the client stops reading; once the kernel's buffers on both sides are
    full (a few MB on loopback: ~15 s at this feed rate), the server's sends block for
    WS_SLOW_CLIENT_TIMEOUT and it closes the connection with 4008, which the client reads when it
    resumes. (The rule itself, with stub sockets: tests/unit/test_market_stream.py.)"""
    name = "wt_market_slow_" + uuid.uuid4().hex[:6]
    pg_cluster.create_database(name)
    env = {**test_env, "DATABASE_URL": pg_cluster.url(name), "REDIS_URL": redis_server.url.rsplit("/", 1)[0] + "/8",
           "MARKET_FEED": "simulator", "SIMULATOR_RATE": "20000", "FEED_FLUSH_INTERVAL": "0.005",
           "WS_SLOW_CLIENT_TIMEOUT": "1", "LOG_LEVEL": "INFO"}
    app = AppProcess(env)
    await asyncio.to_thread(app.start, 60)
    try:
        token, _ = await register(app)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", app.port))
        ws = await websockets.connect(ws_url(app, token), sock=sock, max_queue=1, max_size=2**24)
        symbols = ["AAPL", "AMD", "AMZN", "BABA", "BAC", "BBY", "GE", "GM", "GOOG", "JPM", "MA", "META", "PFE",
                   "RRC", "SBUX", "T", "UAA", "WMT", "XOM", "SPY"]
        await ws.send(json.dumps({"action": "subscribe", "symbols": symbols}))
        ws.transport.pause_reading()  # the client stops reading from its socket altogether
        started = time.monotonic()
        while "slow feed client disconnected" not in app.logs():
            assert time.monotonic() - started < 60, "the stalled client was never dropped"
            await asyncio.sleep(0.5)
        dropped_after = time.monotonic() - started
        ws.transport.resume_reading()
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:  # the backlog first, then the close frame
                await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4008, closed.value
        assert "slow consumer" in closed.value.rcvd.reason
        assert dropped_after > 1  # not before its sends had blocked for WS_SLOW_CLIENT_TIMEOUT
    finally:
        await asyncio.to_thread(app.stop)
