"""From current holdings, cash, prices and target weights to the trades that get there. Pure, Decimal.

The model is PyPortfolioOpt's greedy discrete allocation, made to start from a real portfolio:

1. Value the portfolio: V = cash + Σ quantity × price. The cash buffer (a fraction of V) stays in
   cash; the target weights apply to the rest, I = V × (1 − cash_buffer). Target weights may sum to
   less than 1 (the remainder stays in cash); held symbols missing from the target are sold.
2. Every position is first set to its target quantity rounded *down* (whole shares, or the
   fractional quantum), so the cost never exceeds I and the buffer holds.
3. A position already within one share above its target is kept as it is when the cash allows
   (no churn for a fraction of a share).
4. Greedy top-up (whole shares): while the cash above the buffer buys a share of a position still
   below its target, buy one share of the one furthest below it (by value). No position goes past
   its target by a share or more.
5. Trades worth less than `min_trade_value` are dropped (the position stays as it is); if that
   leaves too little cash for the buys, buys are cut back, smallest shortfall first.

Guarantees (property-tested): cash after the trades is never negative when it was not to begin
with, and never below the buffer unless the buffer was already breached by the starting position;
with no minimum trade value every position ends within one share (or one quantum) of its target.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal

ZERO = Decimal(0)
ONE = Decimal(1)
FRACTIONAL_QUANTUM = Decimal("0.000001")
MONEY = Decimal("0.01")
WEIGHT = Decimal("0.00000001")


class RebalanceError(ValueError):
    def __init__(self, detail: str, field: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


@dataclass(frozen=True)
class Trade:
    symbol: str
    side: str  # "buy" | "sell"
    quantity: Decimal
    price: Decimal
    value: Decimal  # quantity × price, unrounded


@dataclass(frozen=True)
class Position:
    symbol: str
    quantity_before: Decimal
    quantity_after: Decimal
    target_quantity: Decimal  # exact (unrounded) quantity the target weight asks for
    price: Decimal
    weight_before: Decimal
    weight_after: Decimal
    target_weight: Decimal  # of the whole portfolio value (cash included), after the buffer


@dataclass(frozen=True)
class RebalancePlan:
    trades: list[Trade]
    positions: list[Position]
    total_value: Decimal
    cash_before: Decimal
    cash_after: Decimal
    cash_buffer_value: Decimal
    turnover: Decimal  # Σ|trade value| / (2 V): the one-way share of the portfolio that changes hands
    drift_before: Decimal  # Σ|weight − target| / 2 over symbols and cash
    drift_after: Decimal
    weights_after: dict[str, Decimal]
    cash_weight_after: Decimal


def _floor(q: Decimal, quantum: Decimal) -> Decimal:
    return q.quantize(quantum, rounding=ROUND_DOWN) if quantum != ONE else q.to_integral_value(rounding=ROUND_DOWN)


def plan_rebalance(
    *,
    holdings: dict[str, Decimal],
    cash: Decimal,
    prices: dict[str, Decimal],
    target_weights: dict[str, Decimal],
    cash_buffer: Decimal = ZERO,
    min_trade_value: Decimal = ZERO,
    fractional: bool = False,
) -> RebalancePlan:
    """Trades that move `holdings` (symbol → quantity) and `cash` to `target_weights`."""
    for s, w in target_weights.items():
        if w < 0:
            raise RebalanceError(f"target weight for {s} is negative ({w}); rebalancing is long-only",
                                 f"target.{s}")
    total_w = sum(target_weights.values(), ZERO)
    if total_w > ONE + Decimal("1e-9"):
        raise RebalanceError(f"target weights sum to {total_w}, more than 1", "target")
    if not ZERO <= cash_buffer < ONE:
        raise RebalanceError("cash_buffer must be a fraction in [0, 1)", "cash_buffer")
    if min_trade_value < 0:
        raise RebalanceError("min_trade_value must not be negative", "min_trade_value")
    for s, q in holdings.items():
        if q < 0:
            raise RebalanceError(f"the position in {s} is short ({q}); rebalancing is long-only", "portfolio_id")
    symbols = sorted(set(holdings) | {s for s, w in target_weights.items() if w > 0})
    for s in symbols:
        p = prices.get(s)
        if p is None or not p.is_finite() or p <= 0:
            raise RebalanceError(f"no usable price for {s}", f"prices.{s}")
    quantum = FRACTIONAL_QUANTUM if fractional else ONE

    current = {s: holdings.get(s, ZERO) for s in symbols}
    total = cash + sum((current[s] * prices[s] for s in symbols), ZERO)
    if total <= 0:
        raise RebalanceError("the portfolio has no value to rebalance", "portfolio_id")
    buffer_value = total * cash_buffer
    investable = total - buffer_value
    target_value = {s: investable * target_weights.get(s, ZERO) for s in symbols}
    target_qty = {s: target_value[s] / prices[s] for s in symbols}

    # 2. round every target down
    final = {s: _floor(target_qty[s], quantum) for s in symbols}

    def cash_after() -> Decimal:
        return total - sum((final[s] * prices[s] for s in symbols), ZERO)

    # 3. keep positions that are already within one share above their target
    spare = cash_after() - buffer_value
    for s in sorted(symbols, key=lambda s: -(current[s] * prices[s])):
        if final[s] < current[s] < target_qty[s] + quantum:
            extra = (current[s] - final[s]) * prices[s]
            if extra <= spare:
                final[s] = current[s]
                spare -= extra

    # 4. greedy top-up, one share at a time, furthest below target first
    if not fractional:
        while True:
            spare = cash_after() - buffer_value
            best, best_gap = None, ZERO
            for s in symbols:
                if final[s] < target_qty[s] and prices[s] <= spare:
                    gap = (target_qty[s] - final[s]) * prices[s]
                    if best is None or gap > best_gap:
                        best, best_gap = s, gap
            if best is None:
                break
            final[best] += ONE

    # 5. drop trades too small to bother with, then make sure the buys are paid for
    if min_trade_value > 0:
        for s in symbols:
            if final[s] != current[s] and abs(final[s] - current[s]) * prices[s] < min_trade_value:
                final[s] = current[s]
    # the buys may spend down to the buffer, or to what the sells alone leave if that is less
    floor_cash = min(buffer_value, max(_cash_without_buys(total, final, current, prices, symbols), ZERO))
    while cash_after() < floor_cash:
        buys = [s for s in symbols if final[s] > current[s]]
        if not buys:
            break
        # cut the buy with the smallest shortfall against its target first
        s = min(buys, key=lambda s: ((target_qty[s] - current[s]) * prices[s], s))
        need = floor_cash - cash_after()
        cut = (need / prices[s]).quantize(quantum, rounding=ROUND_DOWN)
        if cut * prices[s] < need:
            cut += quantum
        new_q = max(final[s] - cut, current[s])
        if new_q > current[s] and (new_q - current[s]) * prices[s] < min_trade_value:
            new_q = current[s]
        final[s] = new_q

    trades: list[Trade] = []
    for s in symbols:
        d = final[s] - current[s]
        if d != 0:
            trades.append(Trade(symbol=s, side="buy" if d > 0 else "sell", quantity=abs(d), price=prices[s],
                                value=abs(d) * prices[s]))
    trades.sort(key=lambda t: (t.side != "sell", t.symbol))  # sells first: they fund the buys
    end_cash = cash_after()
    w_before = {s: current[s] * prices[s] / total for s in symbols}
    w_after = {s: final[s] * prices[s] / total for s in symbols}
    w_target = {s: target_value[s] / total for s in symbols}
    cash_target = ONE - sum(w_target.values(), ZERO)

    def drift(weights: dict[str, Decimal], cash_w: Decimal) -> Decimal:
        d = sum((abs(weights[s] - w_target[s]) for s in symbols), ZERO) + abs(cash_w - cash_target)
        return (d / 2).quantize(WEIGHT, rounding=ROUND_HALF_EVEN)

    positions = [Position(symbol=s, quantity_before=current[s], quantity_after=final[s],
                          target_quantity=target_qty[s], price=prices[s],
                          weight_before=w_before[s].quantize(WEIGHT), weight_after=w_after[s].quantize(WEIGHT),
                          target_weight=w_target[s].quantize(WEIGHT)) for s in symbols]
    turnover = sum((t.value for t in trades), ZERO) / (2 * total)
    return RebalancePlan(
        trades=trades,
        positions=positions,
        total_value=total,
        cash_before=cash,
        cash_after=end_cash,
        cash_buffer_value=buffer_value,
        turnover=turnover.quantize(WEIGHT),
        drift_before=drift(w_before, cash / total),
        drift_after=drift(w_after, end_cash / total),
        weights_after={s: w_after[s].quantize(WEIGHT) for s in symbols},
        cash_weight_after=(end_cash / total).quantize(WEIGHT),
    )


def _cash_without_buys(total: Decimal, final: dict[str, Decimal], current: dict[str, Decimal],
                       prices: dict[str, Decimal], symbols: list[str]) -> Decimal:
    """Cash if only the planned sells happened."""
    return total - sum((min(final[s], current[s]) * prices[s] for s in symbols), ZERO)
