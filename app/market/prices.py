"""Prices for other domains (portfolio valuation, analytics, optimizer): the contract in CONTRACT.md.

- `latest_prices(ctx, symbols)`: from the quote cache; when a symbol has no live entry, from the last
  stored bar with `stale=True`. Unknown symbols are absent from the result.
- `daily_closes(db, symbols, start, end)`: ascending (date, close) per symbol, today's live close
  included (the writer keeps today's daily bar up to date from the minute bars).
- `known_symbols(db, symbols)`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import msgspec

from app.cache import CacheUnavailable
from app.context import AppContext
from app.db import Database, sql_file
from app.market.snapshot import decode_snapshot, snapshot_key

DEFAULT_STALE_AFTER = 120.0  # seconds without an update before a cached price is called stale


class LatestPrice(msgspec.Struct):
    symbol: str
    price: Decimal
    previous_close: Decimal | None
    as_of: datetime
    stale: bool


def normalize_symbols(symbols: Sequence[str]) -> list[str]:
    seen: dict[str, None] = {}
    for s in symbols:
        # A NUL cannot be stored in PostgreSQL text, so no asset has one: such a name is simply unknown.
        if isinstance(s, str) and s.strip() and "\x00" not in s:
            seen[s.strip().upper()] = None
    return list(seen)


def _utc_midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=timezone.utc)


async def latest_prices(ctx: AppContext, symbols: Sequence[str]) -> dict[str, LatestPrice]:
    wanted = normalize_symbols(symbols)
    if not wanted:
        return {}
    out: dict[str, LatestPrice] = {}
    stale_after = float(getattr(ctx.settings, "quote_stale_after", DEFAULT_STALE_AFTER))
    now_ms = time.time() * 1000
    try:
        raws = await ctx.cache.get_many([snapshot_key(s) for s in wanted])
    except CacheUnavailable:
        raws = [None] * len(wanted)
    for symbol, raw in zip(wanted, raws):
        snap = decode_snapshot(raw)
        if snap is None or snap.price is None:
            continue
        out[symbol] = LatestPrice(symbol=symbol, price=snap.price, previous_close=snap.prev_close,
                                  as_of=snap.as_of, stale=(now_ms - snap.updated) > stale_after * 1000)
    missing = [s for s in wanted if s not in out]
    if missing:
        for row in await ctx.db.fetch(sql_file("market")["last_stored_prices"], missing):
            out[row["symbol"]] = LatestPrice(symbol=row["symbol"], price=row["close"],
                                             previous_close=row["prev_close"], as_of=row["as_of"], stale=True)
    return out


async def daily_closes(db: Database, symbols: Sequence[str], start: date | None = None,
                       end: date | None = None) -> dict[str, list[tuple[date, Decimal]]]:
    wanted = normalize_symbols(symbols)
    result: dict[str, list[tuple[date, Decimal]]] = {}
    if not wanted:
        return result
    lo = _utc_midnight(start) if start else None
    hi = _utc_midnight(end) + timedelta(days=1) if end else None
    rows = await db.fetch(sql_file("market")["daily_closes"], wanted, lo, hi)
    for row in rows:
        result.setdefault(row["symbol"], []).append((row["ts"].astimezone(timezone.utc).date(), row["close"]))
    return result


async def known_symbols(db: Database, symbols: Sequence[str]) -> set[str]:
    wanted = normalize_symbols(symbols)
    if not wanted:
        return set()
    return {r["symbol"] for r in await db.fetch(sql_file("market")["known_symbols"], wanted)}
