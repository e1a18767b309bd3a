"""Pure time-series maths: daily values from the ledger, net flows, time-weighted and money-weighted
(XIRR) returns, rebasing. No I/O; values are Decimal, returns are floats (they are ratios).

Conventions (docs/portfolio.md):
- A day's value is the ledger as of the end of that UTC day (every entry executed on or before it)
  valued at each symbol's last close on or before that day; a symbol without any close yet is valued
  at its last trade price. Value = market value + cash.
- A day's net flow is the change of net contributions (deposits − withdrawals + auto-funding) by the
  entries of that day and of any non-market days since the previous date of the series.
- Daily time-weighted return: modified Dietz with flows at mid-day,
  r_i = (V_i − V_{i−1} − F_i) / (V_{i−1} + F_i / 2), 0 when that denominator is not positive.
  Chained: TWR = Π(1 + r_i) − 1. Flows therefore do not count as return.
- XIRR: the start value as an investment on the first day, each later day's net flow as an investment
  that day, and the end value as a withdrawal on the last day; the annual rate r with
  Σ cf_k · (1 + r)^(−days_k / 365) = 0, or None when no rate exists.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, localcontext

from app.portfolio.ledger import LEDGER_CONTEXT, ZERO, CostMethod, LedgerState, Tx, TxType, sort_txs


@dataclass(slots=True)
class DailySeries:
    dates: list[date] = field(default_factory=list)
    values: list[Decimal] = field(default_factory=list)  # market value + cash, end of day
    net_flows: list[Decimal] = field(default_factory=list)  # external flows attributed to that day
    returns: list[float] = field(default_factory=list)  # len(dates) - 1; returns[i-1]: dates[i-1] → dates[i]
    weights_by_symbol: dict[str, list[float]] = field(default_factory=dict)
    contributions: list[Decimal] = field(default_factory=list)  # cumulative net contributions, end of day
    cash: list[Decimal] = field(default_factory=list)
    market_days: list[bool] = field(default_factory=list)  # True where some symbol in `closes` has a close


def daily_values(txs: Sequence[Tx], method: CostMethod | str, closes: dict[str, list[tuple[date, Decimal]]],
                 dates: Sequence[date], *, with_weights: bool = False,
                 close_days: set[date] | None = None) -> DailySeries:
    """Replay the ledger across `dates` (ascending). `closes[symbol]` is ascending by date.
    `close_days`: the days of `dates` on which some symbol of `closes` has a close, when the caller
    has them already (else they are collected here).

    `executed_at` is expected in UTC; its calendar date decides the day an entry counts on.
    """
    ordered = sort_txs(txs)
    state = LedgerState(method=CostMethod(method))
    out = DailySeries(dates=list(dates))
    if not dates:
        return out
    pointers: dict[str, int] = {}
    last_price: dict[str, Decimal] = {}
    i = 0
    n = len(ordered)
    weights: dict[str, list[float]] = {}
    if close_days is None:
        close_days = {d for series in closes.values() for d, _ in series}
    out.market_days = [d in close_days for d in out.dates]
    with localcontext(LEDGER_CONTEXT):
        for k, day in enumerate(dates):
            before = state.net_contributions
            while i < n and ordered[i].executed_at.date() <= day:
                tx = ordered[i]
                state.apply(tx)
                if tx.type in (TxType.BUY, TxType.SELL) and tx.symbol:
                    last_price[tx.symbol] = tx.price  # type: ignore[assignment]
                i += 1
            flow = state.net_contributions - before if k > 0 else ZERO
            market = ZERO
            per_symbol: dict[str, Decimal] = {}
            for pos in state.positions.values():
                if not pos.lots:
                    continue
                sym = pos.symbol
                series = closes.get(sym)
                price = None
                if series:
                    p = pointers.get(sym, -1)
                    while p + 1 < len(series) and series[p + 1][0] <= day:
                        p += 1
                    pointers[sym] = p
                    if p >= 0:
                        price = series[p][1]
                if price is None:
                    price = last_price.get(sym, ZERO)
                mv = pos.quantity * price
                market += mv
                if with_weights:
                    per_symbol[sym] = mv
            value = market + state.cash
            out.values.append(value)
            out.net_flows.append(flow)
            out.contributions.append(state.net_contributions)
            out.cash.append(state.cash)
            if with_weights:
                for sym in set(weights) | set(per_symbol):
                    w = weights.setdefault(sym, [0.0] * k)
                    w.append(float(per_symbol.get(sym, ZERO) / value) if value > 0 else 0.0)
    out.returns = twr_daily_returns(out.values, out.net_flows)
    out.weights_by_symbol = weights
    return out


def twr_daily_returns(values: Sequence[Decimal], flows: Sequence[Decimal]) -> list[float]:
    """Modified-Dietz daily returns with flows at mid-day; len(values) - 1 items."""
    out: list[float] = []
    for k in range(1, len(values)):
        prev, cur, flow = values[k - 1], values[k], flows[k]
        with localcontext(LEDGER_CONTEXT):
            gain = cur - prev - flow  # exact; only the ratio is a float
            denom = prev + flow / 2
        out.append(float(gain) / float(denom) if denom > 0 else 0.0)
    return out


def fold_to_market_days(dates: Sequence[date], values: Sequence[Decimal], returns: Sequence[float],
                        market_days: Sequence[bool]) -> tuple[list[date], list[Decimal], list[float]]:
    """The series on market days only, for risk statistics: a day without closes (a weekend deposit,
    a holiday fee) is not a period of its own — a zero-return period would shrink volatility and
    stretch the annualization. Its return is linked into the next market day's (TWR unchanged);
    the first day stays (the series' start); days after the last market day are left out until the
    next close. Without any market day (cash only, or no closes) the series is returned as it is."""
    if not any(market_days):
        return list(dates), list(values), list(returns)
    last_market = max(i for i, m in enumerate(market_days) if m)
    out_dates, out_values, out_returns = [dates[0]], [values[0]], []
    growth = 1.0
    for i in range(1, last_market + 1):
        growth *= 1.0 + returns[i - 1]
        if market_days[i]:
            out_dates.append(dates[i])
            out_values.append(values[i])
            out_returns.append(growth - 1.0)
            growth = 1.0
    return out_dates, out_values, out_returns


def chain(returns: Sequence[float]) -> float:
    """Π(1 + r) − 1."""
    acc = 1.0
    for r in returns:
        acc *= 1.0 + r
    return acc - 1.0


def cumulative_index(returns: Sequence[float], base: float = 100.0) -> list[float]:
    """`base` on the first day, then compounded by each return (len(returns) + 1 points)."""
    out = [base]
    for r in returns:
        out.append(out[-1] * (1.0 + r))
    return out


def annualize(total_return: float, days: int) -> float | None:
    if days <= 0 or total_return <= -1:
        return None
    return (1.0 + total_return) ** (365.0 / days) - 1.0


def rebase(prices: Sequence[Decimal | float], base: float = 100.0) -> list[float]:
    """Prices rebased so that the first is `base`."""
    if not prices:
        return []
    first = float(prices[0])
    if first == 0:
        return [base for _ in prices]
    return [float(p) / first * base for p in prices]


def align(series: Sequence[tuple[date, Decimal]], dates: Sequence[date]) -> list[Decimal | None]:
    """For each date, the last value on or before it (None before the first)."""
    out: list[Decimal | None] = []
    p = -1
    for day in dates:
        while p + 1 < len(series) and series[p + 1][0] <= day:
            p += 1
        out.append(series[p][1] if p >= 0 else None)
    return out


def xirr_cashflows(dates: Sequence[date], values: Sequence[Decimal],
                   flows: Sequence[Decimal]) -> list[tuple[date, float]]:
    """Investor's cash flows for XIRR: −start value, −each later day's net flow, +end value."""
    if not dates:
        return []
    cfs: list[tuple[date, float]] = [(dates[0], -float(values[0]))]
    for k in range(1, len(dates)):
        if flows[k]:
            cfs.append((dates[k], -float(flows[k])))
    cfs.append((dates[-1], float(values[-1])))
    return cfs


def _npv(rate: float, cfs: Sequence[tuple[date, float]]) -> float:
    t0 = cfs[0][0]
    total = 0.0
    for day, amount in cfs:
        total += amount * math.exp(-math.log1p(rate) * ((day - t0).days / 365.0))
    return total


def xirr(cfs: Sequence[tuple[date, float]], *, tol: float = 1e-10, max_iter: int = 300) -> float | None:
    """The annual rate at which the cash flows' net present value is zero, by bisection on a bracket.

    None when the flows do not change sign, span no time, or no root lies in (−99 %, ~10^6 %).
    """
    try:
        return _xirr(cfs, tol, max_iter)
    except (OverflowError, ZeroDivisionError):
        return None


def _xirr(cfs: Sequence[tuple[date, float]], tol: float, max_iter: int) -> float | None:
    cfs = sorted(((d, a) for d, a in cfs if a != 0), key=lambda x: x[0])
    if len(cfs) < 2 or not (any(a > 0 for _, a in cfs) and any(a < 0 for _, a in cfs)):
        return None
    if (cfs[-1][0] - cfs[0][0]).days == 0:
        return None
    lo, hi = -0.99, 1.0  # −99 %/year: the discount factor stays finite over any span since 1900
    f_lo = _npv(lo, cfs)
    f_hi = _npv(hi, cfs)
    while f_lo * f_hi > 0 and hi < 1e4:
        hi *= 4
        f_hi = _npv(hi, cfs)
    if math.isnan(f_lo) or math.isnan(f_hi) or f_lo * f_hi > 0:
        return None
    for _ in range(max_iter):
        mid = (lo + hi) / 2
        f_mid = _npv(mid, cfs)
        if f_mid == 0 or (hi - lo) / 2 < tol:
            return mid
        if (f_mid > 0) == (f_lo > 0):
            lo, f_lo = mid, f_mid
        else:
            hi = mid
    return (lo + hi) / 2
