"""Pure valuation: holdings at current prices, P&L today, summary figures. No I/O.

P&L today (per symbol, and in total) compares with the previous close and counts today's entries at
their own price:
    change_s = quantity_now · price − quantity_at_start_of_day · previous_close
               + proceeds of today's sales − cost of today's purchases + today's dividends
The total adds today's interest and subtracts today's standalone fees, so that it equals
value now − value at the previous close − today's external flows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, localcontext
from typing import Protocol

from app.portfolio.ledger import LEDGER_CONTEXT, ZERO, LedgerState, Tx, TxType

HUNDRED = Decimal(100)


class PriceLike(Protocol):
    price: Decimal
    previous_close: Decimal | None
    as_of: datetime
    stale: bool


@dataclass(slots=True)
class HoldingValue:
    symbol: str
    quantity: Decimal
    average_cost: Decimal
    cost_basis: Decimal
    last_price: Decimal
    previous_close: Decimal | None
    market_value: Decimal
    weight: Decimal  # of total value (cash included)
    unrealized_pnl: Decimal
    unrealized_pnl_pct: Decimal | None
    day_change: Decimal
    day_change_pct: Decimal | None
    realized_pnl: Decimal
    income: Decimal
    price_as_of: datetime | None
    stale: bool


@dataclass(slots=True)
class Valuation:
    holdings: list[HoldingValue] = field(default_factory=list)  # open positions, largest first
    cash: Decimal = ZERO
    market_value: Decimal = ZERO
    total_value: Decimal = ZERO
    cost_basis: Decimal = ZERO
    unrealized_pnl: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    income: Decimal = ZERO
    fees: Decimal = ZERO
    net_contributions: Decimal = ZERO
    gross_contributions: Decimal = ZERO
    pnl_today: Decimal = ZERO
    pnl_today_pct: Decimal | None = None
    total_return: Decimal = ZERO
    total_return_pct: Decimal | None = None
    as_of: datetime | None = None
    stale_symbols: list[str] = field(default_factory=list)
    missing_symbols: list[str] = field(default_factory=list)  # held, but no price at all: valued at last trade


@dataclass(slots=True, frozen=True)
class PositionSnap:
    """A position's aggregates, computed once per ledger version (lots summed once)."""

    symbol: str
    quantity: Decimal
    cost_basis: Decimal
    average_cost: Decimal
    realized_pnl: Decimal
    income: Decimal
    last_price: Decimal | None


def snapshot(state: LedgerState) -> list[PositionSnap]:
    with localcontext(LEDGER_CONTEXT):
        out = []
        for pos in state.positions.values():
            qty, cost = pos.quantity, pos.cost_basis
            out.append(PositionSnap(symbol=pos.symbol, quantity=qty, cost_basis=cost,
                                    average_cost=cost / qty if qty else ZERO, realized_pnl=pos.realized_pnl,
                                    income=pos.income, last_price=pos.last_price))
        return out


def pct(part: Decimal, whole: Decimal) -> Decimal | None:
    with localcontext(LEDGER_CONTEXT):
        return part / whole * HUNDRED if whole > 0 else None


def value(state: LedgerState, prices: Mapping[str, PriceLike], today: Sequence[Tx],
          snaps: Sequence[PositionSnap] | None = None) -> Valuation:
    """`today`: the entries executed since the start of the current UTC day (any order). `snaps`:
    `snapshot(state)` when the caller keeps it."""
    out = Valuation()
    if snaps is None:
        snaps = snapshot(state)
    today_sorted = sorted(today, key=Tx.sort_key)
    with localcontext(LEDGER_CONTEXT):
        by_symbol: dict[str, list[Tx]] = {}
        other_today = ZERO  # interest, standalone fees, fees on flows and splits
        for tx in today_sorted:
            t = TxType(tx.type)
            if t in (TxType.BUY, TxType.SELL, TxType.SPLIT, TxType.DIVIDEND):
                by_symbol.setdefault(tx.symbol or "", []).append(tx)
                if t is TxType.SPLIT:
                    other_today -= tx.fee
            elif t is TxType.INTEREST:
                other_today += tx.amount - tx.fee  # type: ignore[operator]
            elif t is TxType.FEE:
                other_today -= tx.amount + tx.fee  # type: ignore[operator]
            else:  # deposit / withdrawal: external; only their fees are a loss
                other_today -= tx.fee

        day_total = ZERO
        as_of: datetime | None = None
        for pos in snaps:
            qty = pos.quantity
            entries = by_symbol.get(pos.symbol, [])
            if not qty and not entries:
                out.realized_pnl += pos.realized_pnl
                out.income += pos.income
                continue
            quote = prices.get(pos.symbol)
            if quote is not None:
                price, prev, stale, when = quote.price, quote.previous_close, quote.stale, quote.as_of
            else:
                price, prev, stale, when = (pos.last_price if pos.last_price is not None else pos.average_cost), \
                    None, True, None
                if qty:
                    out.missing_symbols.append(pos.symbol)
            if prev is None:
                prev = price
            start_qty = qty
            flows = ZERO
            bought_today = ZERO
            for tx in reversed(entries):
                t = TxType(tx.type)
                if t is TxType.BUY:
                    start_qty -= tx.quantity  # type: ignore[operator]
                    cost = tx.quantity * tx.price + tx.fee  # type: ignore[operator]
                    flows -= cost
                    bought_today += cost
                elif t is TxType.SELL:
                    start_qty += tx.quantity  # type: ignore[operator]
                    flows += tx.quantity * tx.price - tx.fee  # type: ignore[operator]
                elif t is TxType.DIVIDEND:
                    flows += tx.amount - tx.fee  # type: ignore[operator]
                elif t is TxType.SPLIT:
                    start_qty /= tx.ratio  # type: ignore[operator]
            mv = qty * price
            start_mv = start_qty * prev
            change = mv - start_mv + flows
            day_total += change
            out.realized_pnl += pos.realized_pnl
            out.income += pos.income
            if not qty:
                continue
            cost = pos.cost_basis
            if stale:
                out.stale_symbols.append(pos.symbol)
            if when is not None and (as_of is None or when > as_of):
                as_of = when
            out.holdings.append(HoldingValue(
                symbol=pos.symbol, quantity=qty, average_cost=pos.average_cost, cost_basis=cost, last_price=price,
                previous_close=quote.previous_close if quote is not None else None, market_value=mv, weight=ZERO,
                unrealized_pnl=mv - cost, unrealized_pnl_pct=pct(mv - cost, cost), day_change=change,
                day_change_pct=pct(change, start_mv + bought_today), realized_pnl=pos.realized_pnl,
                income=pos.income, price_as_of=when, stale=stale))
            out.market_value += mv
            out.cost_basis += cost

        out.cash = state.cash
        out.total_value = out.market_value + state.cash
        for h in out.holdings:
            h.weight = h.market_value / out.total_value if out.total_value > 0 else ZERO
        out.holdings.sort(key=lambda h: (-h.market_value, h.symbol))
        out.unrealized_pnl = out.market_value - out.cost_basis
        out.income += state.interest
        out.fees = state.fees
        out.net_contributions = state.net_contributions
        out.gross_contributions = state.deposits + state.auto_funded
        out.pnl_today = day_total + other_today
        # the base: the value at the previous close plus today's external flows (= value now − P&L today)
        out.pnl_today_pct = pct(out.pnl_today, out.total_value - out.pnl_today)
        out.total_return = out.total_value - out.net_contributions
        out.total_return_pct = pct(out.total_return, out.gross_contributions)
        out.as_of = as_of
        out.stale_symbols.sort()
    return out
