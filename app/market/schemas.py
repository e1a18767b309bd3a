"""Response shapes of the market REST endpoints (prices are decimal strings in JSON)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import msgspec


class Asset(msgspec.Struct):
    symbol: str
    name: str
    type: str
    exchange: str | None
    currency: str
    sector: str | None
    active: bool


class AssetPage(msgspec.Struct):
    items: list[Asset]
    next_cursor: str | None


class QuoteOut(msgspec.Struct):
    symbol: str
    price: Decimal | None
    bid: Decimal | None
    ask: Decimal | None
    change: Decimal | None
    change_pct: Decimal | None
    volume: int
    open: Decimal | None
    high: Decimal | None
    low: Decimal | None
    previous_close: Decimal | None
    timestamp: datetime | None
    stale: bool


class AssetDetail(Asset):
    history_start: date | None
    history_end: date | None
    quote: QuoteOut | None


class Bar(msgspec.Struct):
    ts: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: int


class History(msgspec.Struct):
    symbol: str
    interval: str
    start: datetime
    end: datetime
    count: int
    bars: list[Bar]


class BreadthDay(msgspec.Struct):
    date: date
    advancers: int
    decliners: int
    unchanged: int
    net: int
    ad_line: int


class Breadth(msgspec.Struct):
    as_of: date | None
    symbols: int
    advancers: int
    decliners: int
    unchanged: int
    new_highs: int
    new_lows: int
    pct_above_ma50: float | None
    pct_above_ma200: float | None
    ad_line: list[BreadthDay]


class Overview(msgspec.Struct):
    benchmark: QuoteOut | None
    gainers: list[QuoteOut]
    losers: list[QuoteOut]
    most_active: list[QuoteOut]
    breadth: Breadth
