"""Valuation: P&L today equals (value now − value at the previous close − today's external flows),
with today's trades counted at their own price; holdings figures add up."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.portfolio.ledger import LEDGER_CONTEXT, Tx, TxType, replay
from app.portfolio.valuation import value
from tests.unit.test_portfolio_ledger import SYMBOLS, T0, timelines


@dataclass
class Quote:
    price: Decimal
    previous_close: Decimal | None
    as_of: datetime
    stale: bool = False


px = st.decimals(min_value=Decimal("0.5"), max_value=Decimal("900"), places=2)


def v(state, prices, field: str = "price") -> Decimal:  # noqa: ANN001
    with localcontext(LEDGER_CONTEXT):
        return sum((state.quantity(s) * getattr(prices[s], field) for s in SYMBOLS), Decimal(0)) + state.cash


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(txs=timelines(), method=st.sampled_from(["fifo", "average"]), day=st.integers(0, 60),
       now=st.lists(px, min_size=3, max_size=3), prev=st.lists(px, min_size=3, max_size=3))
def test_pnl_today_identity(txs: list[Tx], method: str, day: int, now: list[Decimal], prev: list[Decimal]) -> None:
    start = (T0 + timedelta(days=day)).replace(hour=0, minute=0)
    today = [t for t in txs if t.executed_at >= start]
    prices = {s: Quote(n, p, T0) for s, n, p in zip(SYMBOLS, now, prev, strict=True)}
    state_now = replay(txs, method)
    state_start = replay([t for t in txs if t.executed_at < start], method)
    result = value(state_now, prices, today)
    flows = state_now.net_contributions - state_start.net_contributions
    with localcontext(LEDGER_CONTEXT):
        expected = v(state_now, prices) - v(state_start, prices, "previous_close") - flows
    assert result.pnl_today == expected
    assert result.total_value == v(state_now, prices)
    assert result.market_value == sum((h.market_value for h in result.holdings), Decimal(0))
    assert result.unrealized_pnl == result.market_value - result.cost_basis
    assert result.total_return == result.total_value - state_now.net_contributions
    if result.total_value > 0 and result.holdings:
        with localcontext(LEDGER_CONTEXT):
            assert abs(sum(h.weight for h in result.holdings) + state_now.cash / result.total_value - 1) < Decimal("1e-30")
    assert [h.market_value for h in result.holdings] == sorted((h.market_value for h in result.holdings), reverse=True)


def test_today_trade_counts_at_its_price() -> None:
    y = datetime(2024, 3, 1, 15, tzinfo=UTC)
    t = datetime(2024, 3, 2, 15, tzinfo=UTC)
    txs = [Tx(type=TxType.DEPOSIT, executed_at=y, seq=1, amount=Decimal(10000)),
           Tx(type=TxType.BUY, executed_at=y, seq=2, symbol="X", quantity=Decimal(10), price=Decimal(100)),
           Tx(type=TxType.BUY, executed_at=t, seq=3, symbol="X", quantity=Decimal(10), price=Decimal(104),
              fee=Decimal(1))]
    state = replay(txs, "fifo")
    result = value(state, {"X": Quote(Decimal(105), Decimal(102), t)}, txs[2:])
    # held overnight: 10 × (105 − 102) = 30; bought today: 10 × (105 − 104) − 1 = 9
    assert result.pnl_today == 39
    (h,) = result.holdings
    assert h.day_change == 39 and h.quantity == 20 and h.cost_basis == 2041
    assert result.total_value == 20 * 105 + 10000 - 1000 - 1041
    assert float(result.pnl_today_pct) == pytest.approx(39 / (10059 - 39) * 100)


def test_missing_price_falls_back_to_last_trade_and_is_reported() -> None:
    txs = [Tx(type=TxType.BUY, executed_at=T0, symbol="ZZZ", quantity=Decimal(3), price=Decimal(7))]
    result = value(replay(txs, "average"), {}, [])
    assert result.market_value == 21 and result.missing_symbols == ["ZZZ"] and result.stale_symbols == ["ZZZ"]
