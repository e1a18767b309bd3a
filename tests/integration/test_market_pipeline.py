"""The ingest pipeline against TimescaleDB: COPY of trades, bar upserts and the daily roll-up, a
database outage (bounded buffer, oldest dropped and counted, resumes), trade retention."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import asyncpg
import pytest

from app.db import Database, create_pool, migrate, sql_file
from app.market.feeds.events import MinuteAgg, Trade
from app.market.ingest import Pipeline
from app.market.quotes import QuoteBook
from tests.conftest import make_settings
from tests.support.services import start_cluster

UTC = timezone.utc


@pytest.fixture(scope="module")
async def db(settings):
    pool = await create_pool(settings, min_size=1, max_size=6)
    async with pool.acquire() as conn:
        await migrate(conn)
    yield Database(pool)
    await pool.close()


def bar(sym, t, o, h, l, c, v=100):
    return MinuteAgg(sym=sym, o=o, h=h, l=l, c=c, v=v, s=t, e=t + 60_000)


async def test_trades_bars_corrections_and_daily_rollup(db, unique):
    sym = "P" + unique[:5].upper()
    day = int(time.time() * 1000) // 86_400_000 * 86_400_000
    p = Pipeline(db, queue_size=10_000, batch_size=100, flush_interval=0.01, book=QuoteBook())
    p.start()
    try:
        p.submit([Trade(sym=sym, p=10.0 + k / 100, s=k + 1, t=day + 1000 + k, i=str(k), x=4, z=3, q=k)
                  for k in range(250)])
        p.submit([bar(sym, day + 60_000, 10, 11, 9, 10.5), bar(sym, day + 120_000, 10.5, 12, 10, 11.5),
                  bar(sym, day + 180_000, 11.5, 11.6, 8, 9)])
        await p.flushed()
        p.submit([bar(sym, day + 120_000, 10.5, 13, 10, 12.5, v=300)])  # a corrected bar
        await p.flushed()
        assert p.written_trades == 250 and p.dropped == 0 and p.db_ok
        rows = await db.fetch("SELECT ts, price, size, trade_id FROM trades WHERE symbol = $1 ORDER BY ts", sym)
        assert len(rows) == 250 and rows[0]["price"] == Decimal("10.0") and rows[-1]["size"] == 250
        bars = await db.fetch("SELECT high, close, volume FROM minute_bars WHERE symbol = $1 ORDER BY ts", sym)
        assert [(b["high"], b["close"], b["volume"]) for b in bars] == [
            (Decimal("11"), Decimal("10.5"), 100), (Decimal("13"), Decimal("12.5"), 300), (Decimal("11.6"), Decimal("9"), 100)]
        d = await db.fetchrow("SELECT * FROM daily_bars WHERE symbol = $1", sym)
        assert (d["open"], d["high"], d["low"], d["close"], d["volume"], d["source"]) == (
            Decimal("10"), Decimal("13"), Decimal("8"), Decimal("9"), 500, "rollup")
        assert d["ts"] == datetime.fromtimestamp(day / 1000, UTC)
        # history via time_bucket over the minute bars
        q = sql_file("market")["history_minute_bucketed"]
        five = await db.fetch(q, sym, datetime.fromtimestamp(day / 1000, UTC),
                              datetime.fromtimestamp(day / 1000, UTC) + timedelta(days=1), 10, timedelta(minutes=5))
        assert len(five) == 1 and five[0]["open"] == Decimal("10") and five[0]["close"] == Decimal("9")
        assert five[0]["volume"] == 500 and five[0]["high"] == Decimal("13")
    finally:
        await p.stop()


async def test_database_outage_fills_the_buffer_drops_oldest_and_resumes(test_env):
    cluster = start_cluster()
    try:
        cluster.create_database("outage")
        settings = make_settings(test_env, database_url=cluster.url("outage"))
        pool = await create_pool(settings, min_size=1, max_size=3)
        async with pool.acquire() as conn:
            await migrate(conn)
        db = Database(pool)
        p = Pipeline(db, queue_size=1000, batch_size=200, flush_interval=0.01)
        p.start()
        t0 = int(time.time() * 1000)
        p.submit([Trade(sym="OUT", p=1.0, s=1, t=t0 + k, i=f"a{k}") for k in range(100)])
        await p.flushed()
        await asyncio.to_thread(cluster.stop)
        started = time.monotonic()
        for k in range(30):  # 3,000 events while the database is down: the reader is never blocked
            p.submit([Trade(sym="OUT", p=2.0, s=1, t=t0 + 1000 + k * 100 + j, i=f"b{k * 100 + j}")
                      for j in range(100)])
            await asyncio.sleep(0.01)
        assert time.monotonic() - started < 2
        await asyncio.sleep(0.5)
        assert not p.db_ok and p.write_errors >= 1 and p.last_error
        assert len(p.trades) <= 1000 and p.dropped >= 3000 - 1000 - 2 * 200  # + one batch per writer in retry
        await asyncio.to_thread(cluster.start)
        await p.flushed(timeout=30)
        assert p.db_ok
        conn = await asyncpg.connect(cluster.url("outage"))
        try:
            ids = [r["trade_id"] for r in await conn.fetch("SELECT trade_id FROM trades ORDER BY ts")]
        finally:
            await conn.close()
        # everything before the outage, then the newest events; the oldest of the outage were dropped
        later = [i for i in ids if i.startswith("b")]
        assert ids[:100] == [f"a{k}" for k in range(100)]
        assert later[-1] == "b2999" and len(ids) == 100 + 3000 - p.dropped
        assert len(later) == len(set(later))
        await p.stop()
        await pool.close()
    finally:
        cluster.destroy()


async def test_trade_retention_drops_old_chunks(db, unique):
    sym = "R" + unique[:5].upper()
    old = datetime.now(UTC) - timedelta(days=45)
    await db.execute("INSERT INTO trades (ts, symbol, price, size) VALUES ($1, $2, 1, 1), (now(), $2, 1, 1)", old, sym)
    dropped = await db.fetchval(sql_file("market")["drop_old_trades"], timedelta(days=30))
    assert dropped >= 1
    assert await db.fetchval("SELECT count(*) FROM trades WHERE symbol = $1", sym) == 1
