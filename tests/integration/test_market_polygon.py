"""The real Polygon client code against a local fake server that speaks the protocol."""

from __future__ import annotations

import asyncio
import time
from datetime import date
from decimal import Decimal

import pytest

from app.db import Database, create_pool, migrate
from app.market.feeds.events import FrameDecoder
from app.market.feeds.polygon import PolygonError, PolygonFeed, PolygonRest
from app.market.history import ensure_bundled_history
from app.market.ingest import Pipeline
from app.market.quotes import QuoteBook
from tests.conftest import make_settings
from tests.support.fake_polygon import FakePolygon


@pytest.fixture(scope="module")
async def db(settings):
    pool = await create_pool(settings, min_size=1, max_size=6)
    async with pool.acquire() as conn:
        await migrate(conn)
    database = Database(pool)
    await ensure_bundled_history(database)
    yield database
    await pool.close()


@pytest.fixture
async def fake():
    server = FakePolygon()
    await server.start()
    yield server
    await server.stop()


def poly_settings(test_env, fake: FakePolygon, symbols: str, key: str = "good-key"):
    return make_settings(test_env, market_feed="polygon", polygon_api_key=key, polygon_ws_url=fake.ws_url,
                         polygon_rest_url=fake.rest_url, polygon_symbols=symbols, polygon_channels="T,Q,AM",
                         polygon_backfill_days="1", ingest_flush_interval="0.01")


def make_feed(settings, db, pipeline, decoder=None):
    rest = PolygonRest(settings.polygon_rest_url, settings.polygon_api_key, backoff=0.01)
    return PolygonFeed(settings, pipeline, decoder or FrameDecoder(), db, rest=rest, base_backoff=0.05,
                       max_backoff=0.2, handshake_timeout=3)


def am(sym: str, t: int, o: float, c: float, v: int = 1000) -> dict:
    return {"ev": "AM", "sym": sym, "o": o, "h": max(o, c) + 0.1, "l": min(o, c) - 0.1, "c": c, "v": v, "s": t,
            "e": t + 60_000, "vw": round((o + c) / 2, 4), "av": v * 10, "op": 100.0, "a": 100.5, "z": 10}


def rest_bar(d: dict) -> dict:
    return {"o": d["o"], "h": d["h"], "l": d["l"], "c": d["c"], "v": d["v"], "vw": d["vw"], "t": d["s"], "n": 5}


async def wait_for(cond, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await cond() if asyncio.iscoroutinefunction(cond) else cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_stream_drop_reconnect_and_backfill_leave_no_holes_or_duplicates(db, fake, test_env, unique):
    sym = "ZT" + unique[:4].upper()  # a symbol of our own: no other test writes its bars
    settings = poly_settings(test_env, fake, sym)
    minute = (int(time.time() * 1000) // 60_000 - 60) * 60_000
    truth = {minute + i * 60_000: am(sym, minute + i * 60_000, 100 + i, 100.5 + i) for i in range(60)}
    # REST knows the first 30 minutes at start; minutes 30..39 arrive live; 40..49 are missed during
    # the drop (REST learns them); 50..59 arrive live again after the reconnect (overlapping the backfill).
    fake.minute_bars[sym] = {t: rest_bar(b) for t, b in truth.items()}
    fake.rest_until = minute + 29 * 60_000
    book = QuoteBook()
    decoder = FrameDecoder()
    pipeline = Pipeline(db, queue_size=10_000, batch_size=500, flush_interval=0.01, book=book, source="polygon")
    pipeline.start()
    feed = make_feed(settings, db, pipeline, decoder)
    task = asyncio.create_task(feed.run())
    try:
        await fake.wait_subscribed()
        assert fake.client_messages[0] == {"action": "auth", "params": "good-key"}
        assert fake.client_messages[1] == {"action": "subscribe", "params": f"T.{sym},Q.{sym},AM.{sym}"}
        await wait_for(lambda: feed.acks == 3, what="subscribe acks")
        await wait_for(lambda: feed.backfills == 1, what="first backfill")
        # live: one frame holding several events (trades, a quote, bars), and a corrected bar
        now = int(time.time() * 1000)
        frame = [{"ev": "T", "sym": sym, "x": 4, "i": str(k), "z": 3, "p": 130.5 + k / 100, "s": 100, "t": now + k,
                  "q": k, "c": [12]} for k in range(5)]
        frame.append({"ev": "Q", "sym": sym, "bx": 4, "bp": 130.4, "bs": 2, "ax": 7, "ap": 130.6, "as": 3,
                      "c": 0, "t": now + 6, "q": 7, "z": 3})
        frame += [truth[minute + i * 60_000] for i in range(30, 40)]
        wrong = dict(truth[minute + 35 * 60_000], c=999.0, h=999.1)
        await fake.send([wrong])
        await fake.send(frame)  # the corrected minute 35 comes after the wrong one
        await wait_for(lambda: book.states.get(sym) is not None and book.states[sym].bid == 130.4, what="quote")
        await pipeline.flushed()
        assert await db.fetchval("SELECT count(*) FROM trades WHERE symbol = $1", sym) == 5
        # the drop
        fake.reset_subscribed()
        await fake.drop()
        fake.rest_until = None
        fake.rate_limit_next = 2  # the backfill after the reconnect meets two 429s first
        await fake.wait_subscribed()
        await wait_for(lambda: feed.backfills == 2, what="backfill after reconnect")
        assert feed.reconnects == 1 and feed.rest.rate_limited == 2
        await fake.send([truth[minute + i * 60_000] for i in range(50, 60)])
        await asyncio.sleep(0.1)
        await pipeline.flushed()
        rows = await db.fetch("SELECT ts, open, close, volume FROM minute_bars WHERE symbol = $1 ORDER BY ts", sym)
        got = [int(r["ts"].timestamp() * 1000) for r in rows]
        assert got == sorted(truth), f"missing {sorted(set(truth) - set(got))[:5]}"
        for r in rows:
            b = truth[int(r["ts"].timestamp() * 1000)]
            assert (r["open"], r["close"], r["volume"]) == (Decimal(repr(b["o"])), Decimal(repr(b["c"])), b["v"])
        # today's daily bar rolled up from the minute bars
        day = await db.fetchrow("SELECT open, close, source FROM daily_bars WHERE symbol = $1 ORDER BY ts DESC "
                                "LIMIT 1", sym)
        assert day["source"] == "rollup"
        assert feed.status()["state"] == "streaming" and decoder.rejected == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pipeline.stop()


async def test_malformed_frames_are_rejected_counted_and_the_stream_goes_on(db, fake, test_env, unique):
    sym = "ZM" + unique[:4].upper()
    settings = poly_settings(test_env, fake, sym)
    settings = make_settings(test_env, **{**{k: str(v) for k, v in {
        "market_feed": "polygon", "polygon_api_key": "good-key", "polygon_ws_url": fake.ws_url,
        "polygon_rest_url": fake.rest_url, "polygon_symbols": sym, "polygon_backfill_days": "0"}.items()}})
    decoder = FrameDecoder()
    pipeline = Pipeline(db, queue_size=1000, batch_size=100, flush_interval=0.01, book=QuoteBook())
    pipeline.start()
    feed = make_feed(settings, db, pipeline, decoder)
    task = asyncio.create_task(feed.run())
    try:
        await fake.wait_subscribed()
        now = int(time.time() * 1000)
        good = {"ev": "T", "sym": sym, "p": 10.0, "s": 5, "t": now, "i": "1", "x": 1}
        await fake.send_raw("this is not json")
        await fake.send_raw('[{"ev":"T","sym":"' + sym + '","p":NaN,"s":1,"t":' + str(now) + '}]')
        await fake.send_raw('{"ev":"T"}')  # not an array
        await fake.send([good, {**good, "p": -1.0}, {**good, "p": 0}, {**good, "s": 10**12}, {"ev": "ZZ", "sym": sym},
                         {**good, "t": 12}, {**good, "i": "2"}])
        await wait_for(lambda: feed.frames >= 5, what="the five frames")
        await pipeline.flushed()
        assert decoder.rejected == 3 + 5, (decoder.last_error, pipeline.received, feed.decoder is decoder, feed.frames)
        assert await db.fetchval("SELECT count(*) FROM trades WHERE symbol = $1", sym) == 2
        assert feed.connects == 1 and feed.state == "streaming"  # never dropped for bad data
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pipeline.stop()


async def test_auth_failed_stops_retrying(db, fake, test_env):
    settings = poly_settings(test_env, fake, "AAPL", key="wrong-key")
    pipeline = Pipeline(db, queue_size=100, batch_size=10, flush_interval=0.05)
    feed = make_feed(settings, db, pipeline)
    states: list[str] = []
    await asyncio.wait_for(feed.run(on_state=states.append), 5)  # returns: no retry loop
    await asyncio.sleep(0.3)
    assert feed.state == "auth_failed" and states[-1] == "auth_failed"
    assert fake.auth_attempts == 1 and fake.connections == 1
    assert "auth_failed" in feed.status()["last_error"]


async def test_max_connections_is_reported_and_backed_off(db, fake, test_env):
    fake.max_connections_mode = True
    settings = poly_settings(test_env, fake, "AAPL")
    feed = make_feed(settings, db, Pipeline(db, queue_size=100, batch_size=10, flush_interval=0.05))
    feed.max_backoff = 0.1
    task = asyncio.create_task(feed.run())
    try:
        await wait_for(lambda: feed.max_connection_events >= 2, what="max_connections twice")
        assert fake.auth_attempts == 0 and feed.connects == 0 and feed.last_status == "max_connections"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_rest_endpoints_paging_and_429(fake):
    rest = PolygonRest(fake.rest_url, "good-key", backoff=0.01)
    try:
        # recorded samples
        prev = await rest.prev_close("AAPL")
        assert prev is not None and prev.c == 156.8 and prev.T == "AAPL"
        grouped = await rest.grouped_daily(date(2005, 4, 4))
        assert grouped[0].T == "GIK"
        details = await rest.ticker_details("AAPL")
        assert details is not None and details.name == "Apple Inc." and details.primary_exchange == "XNAS"
        tickers = await rest.tickers()
        assert [t.ticker for t in tickers[:2]] == ["A", "AA"] and len(tickers) == 4  # two pages via next_url
        pages = [p async for p in rest.aggregates("AAPL", 1, "day", "2005-04-01", "2005-04-04")]
        assert [b.c for b in pages[0]] == [1.4604, 1.4675]
        # generated minute bars over three pages, with 429s on the way
        t0 = 1_700_000_000_000 - 1_700_000_000_000 % 60_000
        fake.minute_bars["PAGE"] = {t0 + i * 60_000: {"o": 1, "h": 2, "l": 0.5, "c": 1.5, "v": 10, "t": t0 + i * 60_000}
                                    for i in range(60)}
        fake.rate_limit_next = 3
        got = [b.t async for page in rest.aggregates("PAGE", 1, "minute", t0, t0 + 3_600_000) for b in page]
        assert got == sorted(fake.minute_bars["PAGE"]) and rest.rate_limited == 3
        fake.rate_limit_next = 100
        rest.max_retries = 2
        with pytest.raises(PolygonError, match="429"):
            await rest.prev_close("AAPL")
        fake.rate_limit_next = 0
        assert await rest.ticker_details("NOPE") is None
    finally:
        await rest.close()
