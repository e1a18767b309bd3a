"""The fan-out hub and a connection's frames, conflation and slow-client rule, with stub sockets."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import msgspec

from app.market.quotes import FeedQuote, FeedTrade
from app.market.stream import CLOSE_SLOW, MAX_BACKLOG, FeedConnection, FeedHub, Published, register_action

enc = msgspec.json.Encoder()


class StubSocket:
    def __init__(self, blocked: bool = False) -> None:
        self.frames: list[list] = []
        self.closed: tuple[int, str] | None = None
        self.gate = asyncio.Event()
        if not blocked:
            self.gate.set()

    async def send_data(self, data: str, mode: str = "text") -> None:
        await self.gate.wait()
        self.frames.append(json.loads(data))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)


def batch(seq: int, symbols=("AAPL", "MSFT")) -> bytes:
    events = {s: {"trades": [FeedTrade(s, f"{100 + seq}.0{k}", 10, seq * 10 + k) for k in range(3)],
                  "quotes": [FeedQuote(s, f"{seq}.1", f"{seq}.2", 1, 1, seq)]} for s in symbols}
    return enc.encode(Published(t=int(time.time() * 1000), e=events))


def make_hub(timeout: float = 0.3) -> FeedHub:
    return FeedHub(SimpleNamespace(settings=SimpleNamespace(ws_slow_client_timeout=timeout)))  # type: ignore[arg-type]


def connect(hub: FeedHub, socket: StubSocket, subs: dict[str, set[str]]) -> FeedConnection:
    conn = FeedConnection(hub, socket, SimpleNamespace(id="u"))  # type: ignore[arg-type]
    conn.subs = subs
    conn._resign()
    hub.connections.add(conn)
    return conn


async def test_frames_follow_subscriptions_and_are_shared_between_equal_subscribers():
    hub = make_hub()
    a, b, c = StubSocket(), StubSocket(), StubSocket()
    ca = connect(hub, a, {"AAPL": {"trades"}})
    cb = connect(hub, b, {"AAPL": {"trades"}})
    cc = connect(hub, c, {"MSFT": {"quotes"}, "AAPL": {"quotes"}})
    tasks = [asyncio.create_task(x.writer()) for x in (ca, cb, cc)]
    hub.dispatch(batch(1))
    await asyncio.sleep(0.05)
    assert a.frames == b.frames and len(a.frames) == 1
    assert [e["type"] for e in a.frames[0]] == ["trade"] * 3 and {e["symbol"] for e in a.frames[0]} == {"AAPL"}
    assert sorted((e["symbol"], e["type"]) for e in c.frames[0]) == [("AAPL", "quote"), ("MSFT", "quote")]
    hub.dispatch(b"not json")  # a bad batch is ignored
    hub.dispatch(batch(2, symbols=("XOM",)))  # nothing for anyone: no frame
    await asyncio.sleep(0.05)
    assert len(a.frames) == 1 and len(c.frames) == 1
    for t in tasks:
        t.cancel()


async def test_lagging_client_gets_conflated_frames_then_is_closed_while_others_flow():
    hub = make_hub(timeout=0.3)
    slow_sock, fast_sock = StubSocket(blocked=True), StubSocket()
    slow = connect(hub, slow_sock, {"AAPL": {"trades", "quotes"}})
    fast = connect(hub, fast_sock, {"AAPL": {"trades", "quotes"}})
    ts = asyncio.create_task(slow.writer())
    tf = asyncio.create_task(fast.writer())
    hub.dispatch(batch(0))
    await asyncio.sleep(0.01)  # the slow writer is now stuck sending batch 0
    for i in range(1, MAX_BACKLOG + 5):
        hub.dispatch(batch(i))
        await asyncio.sleep(0.005)
    assert slow.conflated > 0  # its backlog was folded instead of growing
    assert len(fast_sock.frames) == MAX_BACKLOG + 5  # the other connection got every batch
    await asyncio.wait_for(ts, 2)  # the timeout hits: closed with a reason
    assert slow_sock.closed is not None and slow_sock.closed[0] == CLOSE_SLOW
    assert "slow consumer" in slow_sock.closed[1]
    assert slow not in hub.connections and hub.slow_disconnects == 1
    tf.cancel()


async def test_conflated_frame_keeps_the_latest_trade_and_quote_per_symbol():
    hub = make_hub(timeout=5)
    sock = StubSocket(blocked=True)
    conn = connect(hub, sock, {"AAPL": {"trades", "quotes"}, "MSFT": {"trades"}})
    task = asyncio.create_task(conn.writer())
    hub.dispatch(batch(0))
    await asyncio.sleep(0.01)
    last = MAX_BACKLOG + 3
    for i in range(1, last + 1):
        hub.dispatch(batch(i))
    conn.send({"type": "custom", "n": 1})  # from an action handler: delivered with the next frame
    sock.gate.set()
    await asyncio.sleep(0.05)
    assert len(sock.frames) == 2
    merged = sock.frames[1]
    assert merged[0] == {"type": "custom", "n": 1}
    by = {(e["symbol"], e["type"]): e for e in merged[1:]}
    assert len(merged) == 4  # custom + AAPL trade + AAPL quote + MSFT trade
    assert by[("AAPL", "trade")]["ts"] == last * 10 + 2 and by[("AAPL", "quote")]["ts"] == last
    assert by[("MSFT", "trade")]["price"] == f"{100 + last}.02"
    task.cancel()


def test_register_action_refuses_builtins_and_duplicates():
    async def handler(conn, message):
        return {}

    async def other(conn, message):
        return {}

    for name in ("subscribe", "auth"):
        try:
            register_action(name, handler)
        except ValueError:
            pass
        else:
            raise AssertionError("built-in action replaced")
    register_action("test_echo", handler)
    register_action("test_echo", handler)  # idempotent for the same handler
    try:
        register_action("test_echo", other)
    except ValueError:
        pass
    else:
        raise AssertionError("duplicate action accepted")


class SlowSocket(StubSocket):
    """Takes every frame, but each one keeps the server waiting (a reader slower than the feed)."""

    async def send_data(self, data: str, mode: str = "text") -> None:
        await asyncio.sleep(0.05)
        self.frames.append(json.loads(data))


async def test_a_client_that_stays_behind_is_closed_even_if_every_send_completes():
    hub = make_hub(timeout=0.4)
    sock = SlowSocket()
    conn = connect(hub, sock, {"AAPL": {"trades", "quotes"}})
    task = asyncio.create_task(conn.writer())
    deadline = time.monotonic() + 3
    k = 0
    while not task.done() and time.monotonic() < deadline:
        hub.dispatch(batch(k))
        k += 1
        await asyncio.sleep(0.01)
    assert task.done() and sock.closed is not None and sock.closed[0] == CLOSE_SLOW
    assert "behind" in sock.closed[1] and conn.conflated > 0 and len(sock.frames) > 3


async def test_a_healthy_client_is_never_closed():
    hub = make_hub(timeout=0.2)
    sock = StubSocket()
    conn = connect(hub, sock, {"AAPL": {"trades"}})
    task = asyncio.create_task(conn.writer())
    for k in range(60):
        hub.dispatch(batch(k))
        await asyncio.sleep(0.01)
    assert not task.done() and sock.closed is None and conn.conflated == 0 and len(sock.frames) == 60
    task.cancel()
