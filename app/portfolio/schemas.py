"""Request and response shapes. Money, quantities and percentages leave as decimal strings (`dec`);
request bodies reject unknown fields."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal, localcontext
from typing import Literal

import msgspec

from app.portfolio.ledger import LEDGER_CONTEXT, TxType

DISPLAY_PLACES = 10  # derived values (averages, ratios) are rounded here; stored inputs are exact anyway
PCT_PLACES = 4


def dec(value: Decimal | None, places: int | None = DISPLAY_PLACES) -> str | None:
    """The one place that formats a Decimal for JSON: plain notation, trailing zeros trimmed.

    Values that are exact by construction (inputs, cash, quantities, market values) stay exact up to
    `places`; only derived divisions ever need the rounding."""
    if value is None:
        return None
    with localcontext(LEDGER_CONTEXT):
        if places is not None:
            value = value.quantize(Decimal(1).scaleb(-places))
        text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return text


def pct(value: Decimal | None) -> str | None:
    return dec(value, PCT_PLACES)


# --- portfolios ----------------------------------------------------------------------------------------

class PortfolioIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    base_currency: str = "USD"
    cost_basis_method: Literal["fifo", "average"] = "fifo"


class PortfolioPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str | None = None
    cost_basis_method: Literal["fifo", "average"] | None = None


class PortfolioOut(msgspec.Struct):
    id: uuid.UUID
    name: str
    base_currency: str
    cost_basis_method: str
    ledger_version: int
    created_at: datetime
    updated_at: datetime


# --- transactions ----------------------------------------------------------------------------------------

class TransactionIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One ledger entry. buy/sell: symbol, quantity, price (fee); deposit/withdrawal/interest/fee: amount;
    dividend: symbol, amount; split: symbol, ratio (new shares per old share). executed_at defaults
    to now and may not be in the future; currency defaults to the portfolio's."""

    type: TxType
    symbol: str | None = None
    quantity: Decimal | None = None
    price: Decimal | None = None
    amount: Decimal | None = None
    fee: Decimal | None = None
    ratio: Decimal | None = None
    currency: str | None = None
    note: str | None = None
    executed_at: datetime | None = None


class TransactionOut(msgspec.Struct):
    id: uuid.UUID
    type: str
    symbol: str | None
    quantity: str | None
    price: str | None
    amount: str | None
    fee: str
    ratio: str | None
    currency: str
    note: str | None
    executed_at: datetime
    created_at: datetime


class TransactionPage(msgspec.Struct):
    items: list[TransactionOut]
    next_cursor: str | None


# --- holdings and summary -----------------------------------------------------------------------------------

class HoldingOut(msgspec.Struct):
    symbol: str
    quantity: str
    average_cost: str
    cost_basis: str
    last_price: str
    previous_close: str | None
    market_value: str
    weight: str  # percent of total value
    unrealized_pnl: str
    unrealized_pnl_pct: str | None
    day_change: str
    day_change_pct: str | None
    realized_pnl: str
    income: str
    price_as_of: datetime | None
    stale: bool


class HoldingsOut(msgspec.Struct):
    portfolio_id: uuid.UUID
    cash: str
    market_value: str
    total_value: str
    holdings: list[HoldingOut]
    as_of: datetime | None
    stale_prices: list[str]
    ledger_version: int


class TopPosition(msgspec.Struct):
    symbol: str
    quantity: str
    market_value: str
    weight: str
    last_price: str
    day_change: str
    day_change_pct: str | None
    unrealized_pnl_pct: str | None


class AmountPct(msgspec.Struct):
    amount: str
    pct: str | None


class SummaryOut(msgspec.Struct):
    portfolio_id: uuid.UUID
    currency: str
    total_value: str
    cash: str
    market_value: str
    cost_basis: str
    unrealized_pnl: AmountPct
    realized_pnl: str
    income: str
    fees: str
    net_contributions: str
    pnl_today: AmountPct
    total_return: AmountPct
    top_positions: list[TopPosition]
    holdings_count: int
    as_of: datetime | None
    stale_prices: list[str]
    ledger_version: int


# --- performance ------------------------------------------------------------------------------------------

class BenchmarkOut(msgspec.Struct):
    symbol: str
    values: list[float | None]  # rebased: 100 on the first day with a close
    total_return: str | None


class PerformanceOut(msgspec.Struct):
    portfolio_id: uuid.UUID
    range: str
    start: date | None
    end: date | None
    dates: list[date]
    values: list[str]
    net_flows: list[str]
    net_contributions: list[str]
    twr_index: list[float]  # 100 on the first day, compounded by the daily time-weighted returns
    time_weighted_return: str | None
    time_weighted_return_annualized: str | None
    money_weighted_return: str | None  # XIRR, annual
    benchmark: BenchmarkOut | None


# --- import ----------------------------------------------------------------------------------------------------

class RowError(msgspec.Struct):
    line: int
    field: str | None
    message: str


class ImportReport(msgspec.Struct):
    dry_run: bool
    rows: int
    valid: bool
    imported: int
    by_type: dict[str, int]
    errors: list[RowError]
    ledger_version: int | None = None
