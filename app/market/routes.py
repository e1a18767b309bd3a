"""REST endpoints under /api/markets (bearer token required, see the auth domain)."""

from __future__ import annotations

import base64
import binascii
import re
import time
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from litestar import Router, get
from litestar.params import Parameter

from app.auth.guards import admin_only
from app.cache import CacheUnavailable
from app.context import AppContext
from app.db import Database, sql_file
from app.errors import AppError, NotFound
from app.market.assets_meta import BENCHMARK
from app.market.prices import normalize_symbols
from app.market.schemas import (Asset, AssetDetail, AssetPage, Bar, Breadth, BreadthDay, History, Overview,
                                QuoteOut)
from app.market.snapshot import decode_snapshot, snapshot_key

UTC = timezone.utc
_SYMBOL = re.compile(r"[A-Z0-9.:-]{1,24}")
INTERVALS: dict[str, timedelta] = {
    "1m": timedelta(minutes=1), "5m": timedelta(minutes=5), "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1), "1d": timedelta(days=1), "1w": timedelta(weeks=1),
}
MAX_POINTS = 10_000
MAX_QUOTE_SYMBOLS = 200
DEFAULT_BARS = 500


def _q() -> dict[str, str]:
    return sql_file("market")


def _encode_cursor(symbol: str) -> str:
    return base64.urlsafe_b64encode(symbol.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        symbol = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        symbol = ""
    if not _SYMBOL.fullmatch(symbol) or _encode_cursor(symbol) != cursor:
        raise AppError("cursor is not one this API returned", field="cursor")
    return symbol


@get("/assets", summary="Search assets")
async def list_assets(db: Database, search: str | None = None, type: str | None = None,
                      limit: int = Parameter(default=50, ge=1, le=500), cursor: str | None = None) -> AssetPage:
    if type is not None and type not in ("stock", "etf", "index", "fund", "other"):
        raise AppError("type must be one of stock, etf, index, fund, other", field="type")
    search = search.strip() if search else None
    after = _decode_cursor(cursor) if cursor else None
    rows = await db.fetch(_q()["list_assets"], search or None, type, after, limit + 1)
    items = [Asset(**dict(r)) for r in rows[:limit]]
    return AssetPage(items=items, next_cursor=_encode_cursor(items[-1].symbol) if len(rows) > limit else None)


async def quotes_for(ctx: AppContext, symbols: list[str]) -> dict[str, QuoteOut]:
    """Quotes from the cache; symbols without a cached entry from the last stored bar (stale)."""
    out: dict[str, QuoteOut] = {}
    if not symbols:
        return out
    try:
        raws = await ctx.cache.get_many([snapshot_key(s) for s in symbols])
    except CacheUnavailable:
        raws = [None] * len(symbols)
    now_ms = time.time() * 1000
    stale_ms = ctx.settings.quote_stale_after * 1000
    for sym, raw in zip(symbols, raws):
        s = decode_snapshot(raw)
        if s is None or s.price is None:
            continue
        out[sym] = QuoteOut(symbol=sym, price=s.price, bid=s.bid, ask=s.ask, change=s.change,
                            change_pct=s.change_pct, volume=s.volume, open=s.open, high=s.high, low=s.low,
                            previous_close=s.prev_close, timestamp=s.as_of, stale=(now_ms - s.updated) > stale_ms)
    missing = [s for s in symbols if s not in out]
    if missing:
        for r in await ctx.db.fetch(_q()["last_stored_prices"], missing):
            price, prev = r["close"], r["prev_close"]
            change = price - prev if prev is not None else None
            pct = (change / prev * 100).quantize(Decimal("0.0001")) if change is not None and prev else None
            out[r["symbol"]] = QuoteOut(symbol=r["symbol"], price=price, bid=None, ask=None, change=change,
                                        change_pct=pct, volume=0, open=None, high=None, low=None,
                                        previous_close=prev, timestamp=r["as_of"], stale=True)
    return out


@get("/assets/{symbol:str}", summary="One asset with its latest quote")
async def get_asset(ctx: AppContext, symbol: str) -> AssetDetail:
    sym = symbol.strip().upper()
    row = await ctx.db.fetchrow(_q()["get_asset"], sym)
    if row is None:
        raise NotFound(f"unknown symbol {sym!r}", field="symbol")
    quote = (await quotes_for(ctx, [sym])).get(sym)
    d = dict(row)
    for k in ("history_start", "history_end"):
        d[k] = d[k].astimezone(UTC).date() if d[k] else None
    return AssetDetail(**d, quote=quote)


@get("/quotes", summary="Latest quotes for symbols")
async def get_quotes(ctx: AppContext, symbols: str) -> dict[str, Any]:
    wanted = normalize_symbols(symbols.split(","))
    if not wanted:
        raise AppError("symbols must name at least one symbol, e.g. ?symbols=AAPL,MSFT", field="symbols")
    if len(wanted) > MAX_QUOTE_SYMBOLS:
        raise AppError(f"at most {MAX_QUOTE_SYMBOLS} symbols per request", field="symbols")
    quotes = await quotes_for(ctx, wanted)
    return {"quotes": [quotes[s] for s in wanted if s in quotes], "unknown": [s for s in wanted if s not in quotes]}


def _parse_time(value: str | None, name: str, *, end: bool = False) -> datetime | None:
    if value is None or not value.strip():
        return None
    v = value.strip()
    try:
        if len(v) == 10:
            d = date.fromisoformat(v)
            dt = datetime(d.year, d.month, d.day, tzinfo=UTC)
            return dt + timedelta(days=1) if end else dt  # a date as `end` includes that day
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    except ValueError:
        raise AppError(f"{name} must be a date (YYYY-MM-DD) or an ISO 8601 time", field=name) from None
    except OverflowError:  # e.g. end=9999-12-31 (the day after does not exist) or year 1 shifted to UTC
        raise AppError(f"{name} is outside the supported range of years 1–9999", field=name) from None


@get("/history/{symbol:str}", summary="OHLCV bars")
async def get_history(db: Database, symbol: str, interval: str = "1d", start: str | None = None,
                      end: str | None = None, limit: int = Parameter(default=DEFAULT_BARS, ge=1, le=MAX_POINTS)
                      ) -> History:
    sym = symbol.strip().upper()
    step = INTERVALS.get(interval)
    if step is None:
        raise AppError(f"interval must be one of {', '.join(INTERVALS)}", field="interval")
    hi = _parse_time(end, "end", end=True) or datetime.now(UTC) + timedelta(minutes=1)
    lo = _parse_time(start, "start")
    if lo is None:
        lo = hi - step * limit * (7 / 5 if interval == "1d" else 1)
    if lo >= hi:
        raise AppError("start must be before end", field="start")
    points = (hi - lo) / step
    if points > MAX_POINTS:
        raise AppError(
            f"the range {lo.isoformat()} .. {hi.isoformat()} at interval {interval} spans about {int(points):,} bars; "
            f"at most {MAX_POINTS:,} per request: narrow the range or use a coarser interval",
            field="interval", max_points=MAX_POINTS, requested_points=int(points))
    if not await db.fetchval(_q()["known_symbols"], [sym]):
        raise NotFound(f"unknown symbol {sym!r}", field="symbol")
    q = _q()
    if interval == "1m":
        rows = await db.fetch(q["history_minute"], sym, lo, hi, limit)
    elif interval in ("5m", "15m", "1h"):
        rows = await db.fetch(q["history_minute_bucketed"], sym, lo, hi, limit, step)
    elif interval == "1d":
        rows = await db.fetch(q["history_daily"], sym, lo, hi, limit)
    else:
        rows = await db.fetch(q["history_daily_bucketed"], sym, lo, hi, limit, step)
    bars = [Bar(r["ts"], r["open"], r["high"], r["low"], r["close"], r["volume"]) for r in reversed(rows)]
    return History(symbol=sym, interval=interval, start=lo, end=hi, count=len(bars), bars=bars)


async def compute_breadth(db: Database, days: int) -> Breadth:
    start = datetime.now(UTC) - timedelta(days=days)
    last = await db.fetchval("SELECT max(ts) FROM daily_bars")
    if last is not None and last < start:  # history ends before the window (feed off): use its last days
        start = last - timedelta(days=days)
    rows = await db.fetch(_q()["breadth"], start)
    total = await db.fetchval("SELECT count(*) FROM assets WHERE active")
    line: list[BreadthDay] = []
    cum = 0
    for r in rows:
        net = r["advancers"] - r["decliners"]
        cum += net
        line.append(BreadthDay(r["ts"].astimezone(UTC).date(), r["advancers"], r["decliners"], r["unchanged"], net,
                               cum))
    if not rows:
        return Breadth(None, total, 0, 0, 0, 0, 0, None, None, [])
    r = rows[-1]
    pct = lambda a, n: round(100.0 * a / n, 2) if n else None  # noqa: E731
    return Breadth(as_of=line[-1].date, symbols=total, advancers=r["advancers"], decliners=r["decliners"],
                   unchanged=r["unchanged"], new_highs=r["new_highs"], new_lows=r["new_lows"],
                   pct_above_ma50=pct(r["above_ma50"], r["with_ma50"]),
                   pct_above_ma200=pct(r["above_ma200"], r["with_ma200"]), ad_line=line)


@get("/breadth", summary="Market breadth and the advance/decline line")
async def get_breadth(db: Database, days: int = Parameter(default=250, ge=1, le=3650)) -> Breadth:
    return await compute_breadth(db, days)


@get("/overview", summary="Benchmark, movers and breadth")
async def get_overview(ctx: AppContext, top: int = Parameter(default=5, ge=1, le=50)) -> Overview:
    symbols = [r["symbol"] for r in await ctx.db.fetch(_q()["active_symbols"])]
    quotes = await quotes_for(ctx, symbols)
    ranked = [q for q in quotes.values() if q.change_pct is not None and q.symbol != BENCHMARK]
    gainers = sorted((q for q in ranked if q.change_pct > 0), key=lambda q: q.change_pct, reverse=True)[:top]
    losers = sorted((q for q in ranked if q.change_pct < 0), key=lambda q: q.change_pct)[:top]
    active = sorted((q for q in quotes.values() if q.volume and q.symbol != BENCHMARK),
                    key=lambda q: q.volume * (q.price or 0), reverse=True)[:top]
    breadth = await compute_breadth(ctx.db, 30)
    return Overview(benchmark=quotes.get(BENCHMARK), gainers=gainers, losers=losers, most_active=active,
                    breadth=breadth)


@get("/status", guards=[admin_only], summary="Market service status (admins)")
async def get_status(ctx: AppContext) -> dict[str, Any]:
    service = ctx.services.get("market")
    if service is None:
        raise AppError("the market service is not running", status_code=503)
    return service.status()


market_router = Router(path="/api/markets", route_handlers=[list_assets, get_asset, get_quotes, get_history,
                                                            get_breadth, get_overview, get_status], tags=["markets"])
route_handlers: list = [market_router]
