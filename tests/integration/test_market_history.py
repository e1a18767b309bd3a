"""Bundled history, assets and the cross-domain price functions (app/market/prices.py)."""

from __future__ import annotations

import time
from datetime import date
from decimal import Decimal

import pytest

from app.cache import MemoryCache
from app.context import AppContext
from app.db import Database, create_pool, migrate
from app.market.history import bundle, ensure_bundled_history
from app.market.prices import LatestPrice, daily_closes, known_symbols, latest_prices
from app.market.snapshot import Snapshot, snapshot_encoder, snapshot_key


@pytest.fixture(scope="module")
async def db(settings):
    pool = await create_pool(settings, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        await migrate(conn)
    database = Database(pool)
    await ensure_bundled_history(database)
    yield database
    await pool.close()


def test_bundle_parses_every_cell():
    data = bundle()
    assert len(data.symbols) == 20 and "SPY" in data.symbols and "AAPL" in data.symbols
    # 19 wide columns over 8,796 days minus the empty cells, plus 8,017 SPY rows
    assert 100_000 < data.rows < 19 * 8796 + 8017


async def test_history_loaded_once(db):
    assert await ensure_bundled_history(db) == 0  # already loaded by the fixture
    n = await db.fetchval("SELECT count(*) FROM daily_bars WHERE source = 'bundled' AND symbol = ANY($1)",
                          list(bundle().symbols))  # other domains' tests may add bars of their own symbols
    assert n == bundle().rows
    assets = {r["symbol"]: r for r in await db.fetch("SELECT * FROM assets")}
    assert assets["SPY"]["type"] == "etf" and assets["AAPL"]["type"] == "stock"
    assert assets["AAPL"]["name"] == "Apple Inc." and assets["AAPL"]["sector"] == "Information Technology"
    # adjusted closes only: open = high = low = close, volume 0
    odd = await db.fetchval("SELECT count(*) FROM daily_bars WHERE source = 'bundled' "
                            "AND NOT (open = close AND high = close AND low = close AND volume = 0)")
    assert odd == 0


async def test_reload_after_marker_removed_writes_no_duplicates(db):
    await db.execute("DELETE FROM market_history_loads")
    await ensure_bundled_history(db)
    dupes = await db.fetchval("SELECT count(*) FROM (SELECT symbol, ts FROM daily_bars GROUP BY 1, 2 "
                              "HAVING count(*) > 1) d")
    assert dupes == 0
    assert await db.fetchval("SELECT count(*) FROM daily_bars WHERE source = 'bundled' AND symbol = ANY($1)",
                             list(bundle().symbols)) == bundle().rows


async def test_daily_closes_match_the_csv(db):
    closes = await daily_closes(db, ["aapl", "SPY", "NOPE"], start=date(2024, 11, 25), end=date(2024, 11, 29))
    assert set(closes) == {"AAPL", "SPY"}
    days = [d for d, _ in closes["AAPL"]]
    assert days == sorted(days) and days[-1] == date(2024, 11, 29) and days[0] >= date(2024, 11, 25)
    # from stock_prices.csv, 2024-11-29 AAPL = 237.330002... (6 places)
    assert closes["AAPL"][-1][1] == Decimal("237.330002")
    assert all(isinstance(c, Decimal) for _, c in closes["SPY"])
    everything = await daily_closes(db, ["SPY"])
    assert everything["SPY"][0][0] == date(1993, 1, 29)


async def test_known_symbols(db):
    assert await known_symbols(db, ["aapl", "MSFT", "SPY", ""]) == {"AAPL", "SPY"}
    assert await known_symbols(db, []) == set()


async def test_latest_prices_cache_then_stored_fallback(db, settings):
    cache = MemoryCache()
    ctx = AppContext(settings=settings, db=db, cache=cache)
    now_ms = int(time.time() * 1000)
    await cache.set(snapshot_key("AAPL"), snapshot_encoder.encode(
        Snapshot(symbol="AAPL", price=Decimal("250.10"), trade_ts=now_ms, prev_close=Decimal("249.00"),
                 updated=now_ms)))
    prices = await latest_prices(ctx, ["AAPL", "MSFT", "GOOG"])
    assert set(prices) == {"AAPL", "GOOG"}
    live = prices["AAPL"]
    assert isinstance(live, LatestPrice)
    assert live.price == Decimal("250.10") and live.previous_close == Decimal("249.00") and not live.stale
    assert abs(live.as_of.timestamp() * 1000 - now_ms) < 2
    stored = prices["GOOG"]
    assert stored.stale and stored.price > 0 and stored.as_of.tzinfo is not None
    last = await db.fetchrow("SELECT ts, close FROM daily_bars WHERE symbol = 'GOOG' ORDER BY ts DESC LIMIT 2")
    assert stored.price == last["close"]
    assert stored.previous_close is not None and stored.previous_close > 0
