"""Daily values, net flows, time-weighted return (flows removed) and XIRR."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.portfolio.ledger import Tx, TxType
from app.portfolio.performance import (align, annualize, chain, cumulative_index, daily_values,
                                       fold_to_market_days, rebase, twr_daily_returns, xirr, xirr_cashflows)

D0 = date(2024, 1, 1)


def at(day: int, hour: int = 15) -> datetime:
    return datetime.combine(D0 + timedelta(days=day), datetime.min.time(), UTC) + timedelta(hours=hour)


def test_daily_values_and_flows_example() -> None:
    txs = [
        Tx(type=TxType.DEPOSIT, executed_at=at(0), seq=1, amount=Decimal(1000)),
        Tx(type=TxType.BUY, executed_at=at(0), seq=2, symbol="X", quantity=Decimal(5), price=Decimal(100)),
        Tx(type=TxType.DEPOSIT, executed_at=at(5), seq=3, amount=Decimal(500)),  # a Saturday-like gap day
        Tx(type=TxType.SPLIT, executed_at=at(6), seq=4, symbol="X", ratio=Decimal(2)),
        # back-dated (seq 5, executed on day 1): counts on day 1
        Tx(type=TxType.WITHDRAWAL, executed_at=at(1), seq=5, amount=Decimal(100)),
    ]
    closes = {"X": [(D0, Decimal(100)), (D0 + timedelta(days=1), Decimal(110)), (D0 + timedelta(days=6), Decimal(60))]}
    days = [D0, D0 + timedelta(days=1), D0 + timedelta(days=6)]
    s = daily_values(txs, "fifo", closes, days, with_weights=True)
    assert s.values == [Decimal(1000), Decimal(5 * 110 + 400), Decimal(10 * 60 + 900)]
    assert s.net_flows == [Decimal(0), Decimal(-100), Decimal(500)]  # day-5 deposit lands on the next date
    assert s.contributions == [Decimal(1000), Decimal(900), Decimal(1400)]
    assert len(s.returns) == 2
    assert s.returns[0] == pytest.approx((950 - 1000 + 100) / (1000 - 50))
    assert s.returns[1] == pytest.approx((1500 - 950 - 500) / (950 + 250))
    assert s.weights_by_symbol["X"] == pytest.approx([0.5, 550 / 950, 600 / 1500])


def test_symbol_without_closes_is_valued_at_its_last_trade_price() -> None:
    txs = [Tx(type=TxType.BUY, executed_at=at(0), symbol="NEW", quantity=Decimal(2), price=Decimal(7))]
    s = daily_values(txs, "average", {}, [D0, D0 + timedelta(days=1)])
    assert s.values == [Decimal(14), Decimal(14)]
    assert s.net_flows == [Decimal(0), Decimal(0)]  # the auto-funding happened on the first day


prices_st = st.lists(st.decimals(min_value=Decimal("1"), max_value=Decimal("500"), places=2), min_size=2, max_size=30)


@settings(max_examples=100, deadline=None)
@given(prices=prices_st, qty=st.decimals(min_value=Decimal("1"), max_value=Decimal("100"), places=0))
def test_without_flows_twr_is_the_value_ratio(prices: list[Decimal], qty: Decimal) -> None:
    days = [D0 + timedelta(days=k) for k in range(len(prices))]
    txs = [Tx(type=TxType.DEPOSIT, executed_at=at(0, 1), seq=1, amount=qty * prices[0]),
           Tx(type=TxType.BUY, executed_at=at(0, 2), seq=2, symbol="X", quantity=qty, price=prices[0])]
    s = daily_values(txs, "fifo", {"X": list(zip(days, prices, strict=True))}, days)
    assert chain(s.returns) == pytest.approx(float(prices[-1] / prices[0]) - 1, rel=1e-9, abs=1e-12)
    rate = xirr(xirr_cashflows(s.dates, s.values, s.net_flows))
    years = (days[-1] - days[0]).days / 365
    if rate is not None and years > 0:
        assert (1 + rate) ** years == pytest.approx(float(prices[-1] / prices[0]), rel=1e-6)


@settings(max_examples=100, deadline=None)
@given(flows=st.lists(st.decimals(min_value=Decimal("-200"), max_value=Decimal("1000"), places=2),
                      min_size=2, max_size=25))
def test_flows_are_not_returns(flows: list[Decimal]) -> None:
    """With prices that never move, deposits and withdrawals produce a zero return every day."""
    days = [D0 + timedelta(days=k) for k in range(len(flows))]
    txs = [Tx(type=TxType.DEPOSIT, executed_at=at(0, 1), seq=0, amount=Decimal(2000)),
           Tx(type=TxType.BUY, executed_at=at(0, 2), seq=1, symbol="X", quantity=Decimal(10), price=Decimal(50))]
    for k, f in enumerate(flows[1:], start=1):
        if f > 0:
            txs.append(Tx(type=TxType.DEPOSIT, executed_at=at(k), seq=k + 1, amount=f))
        elif f < 0:
            txs.append(Tx(type=TxType.WITHDRAWAL, executed_at=at(k), seq=k + 1, amount=-f))
    s = daily_values(txs, "fifo", {"X": [(D0, Decimal(50))]}, days)
    assert all(r == 0 for r in s.returns)
    assert sum(s.net_flows) == sum(f for f in flows[1:])


def test_modified_dietz_direct() -> None:
    assert twr_daily_returns([Decimal(100), Decimal(110)], [Decimal(0), Decimal(0)]) == [pytest.approx(0.1)]
    assert twr_daily_returns([Decimal(0), Decimal(100)], [Decimal(0), Decimal(100)]) == [0.0]
    # everything withdrawn: no capital left, no return invented
    assert twr_daily_returns([Decimal(100), Decimal(0), Decimal(0)], [Decimal(0), Decimal(-100), Decimal(0)]) == [0, 0]


def test_xirr_known_values() -> None:
    assert xirr([(date(2020, 1, 1), -100.0), (date(2020, 12, 31), 110.0)]) == pytest.approx(0.1, abs=1e-9)
    assert xirr([(date(2020, 1, 1), -100.0), (date(2021, 12, 31), 81.0)]) == pytest.approx(-0.1, abs=1e-3)
    assert xirr([(date(2020, 1, 1), -100.0), (date(2020, 1, 1), 110.0)]) is None  # no time passes
    assert xirr([(date(2020, 1, 1), 100.0), (date(2021, 1, 1), 110.0)]) is None  # no sign change
    # the textbook example (Excel's XIRR documentation): 0.373362535
    cfs = [(date(2008, 1, 1), -10000.0), (date(2008, 3, 1), 2750.0), (date(2008, 10, 30), 4250.0),
           (date(2009, 2, 15), 3250.0), (date(2009, 4, 1), 2750.0)]
    assert xirr(cfs) == pytest.approx(0.373362535, abs=1e-6)


@settings(max_examples=100, deadline=None)
@given(cfs=st.lists(st.tuples(st.integers(0, 3000), st.floats(-1e5, 1e5, allow_nan=False)), min_size=2, max_size=12))
def test_xirr_zeroes_the_npv(cfs: list[tuple[int, float]]) -> None:
    flows = [(D0 + timedelta(days=d), a) for d, a in cfs]
    rate = xirr(flows)
    if rate is None:
        return
    t0 = min(d for d, _ in flows)
    npv = sum(a / (1 + rate) ** ((d - t0).days / 365) for d, a in flows)
    scale = sum(abs(a) / (1 + rate) ** ((d - t0).days / 365) for d, a in flows)
    assert abs(npv) <= 1e-6 * max(scale, 1.0)


def test_helpers() -> None:
    assert chain([0.1, -0.1]) == pytest.approx(-0.01)
    assert cumulative_index([0.1, 0.1]) == pytest.approx([100, 110, 121])
    assert rebase([Decimal(50), Decimal(75)]) == [100.0, 150.0]
    assert annualize(0.21, 730) == pytest.approx(0.1, abs=1e-3)
    assert annualize(-1.0, 10) is None
    series = [(D0, Decimal(1)), (D0 + timedelta(days=2), Decimal(2))]
    assert align(series, [D0 - timedelta(days=1), D0, D0 + timedelta(days=1), D0 + timedelta(days=3)]) == \
        [None, Decimal(1), Decimal(1), Decimal(2)]
    assert not math.isnan(xirr([(D0, -1.0), (D0 + timedelta(days=3650), 1e6)]) or 0)
    # 126 years of flows (the earliest date allowed is 1900) with a total loss: no overflow, no 500
    long = [(date(1900, 1, 1), -1e13), (date(1960, 1, 1), -1e13), (date(2026, 1, 1), 1.0)]
    rate = xirr(long)
    assert rate is None or -1 < rate < 0


def test_market_days_are_the_days_with_closes() -> None:
    txs = [Tx(type=TxType.DEPOSIT, executed_at=at(0), seq=1, amount=Decimal(1000)),
           Tx(type=TxType.BUY, executed_at=at(0), seq=2, symbol="X", quantity=Decimal(5), price=Decimal(100)),
           Tx(type=TxType.DEPOSIT, executed_at=at(5), seq=3, amount=Decimal(500))]
    closes = {"X": [(D0, Decimal(100)), (D0 + timedelta(days=1), Decimal(110)), (D0 + timedelta(days=6), Decimal(60))]}
    days = [D0, D0 + timedelta(days=1), D0 + timedelta(days=5), D0 + timedelta(days=6)]
    s = daily_values(txs, "fifo", closes, days)
    assert s.market_days == [True, True, False, True]


def test_a_weekend_deposit_is_not_a_period_of_its_own() -> None:
    """Fri close → Sat deposit (no closes) → Mon close: one period Fri→Mon, same TWR as before."""
    fri, sat, mon = date(2026, 12, 4), date(2026, 12, 5), date(2026, 12, 7)
    txs = [Tx(type=TxType.DEPOSIT, executed_at=at(-30), seq=1, amount=Decimal(1000)),
           Tx(type=TxType.BUY, executed_at=at(-30), seq=2, symbol="X", quantity=Decimal(5), price=Decimal(100)),
           Tx(type=TxType.DEPOSIT, executed_at=datetime(2026, 12, 5, 10, tzinfo=UTC), seq=3, amount=Decimal(500))]
    closes = {"X": [(fri, Decimal(100)), (mon, Decimal(104))]}
    s = daily_values(txs, "fifo", closes, [fri, sat, mon])
    assert s.returns[0] == 0.0 and len(s.returns) == 2  # the zero-return weekend period that is folded away
    dates, values, returns = fold_to_market_days(s.dates, s.values, s.returns, s.market_days)
    assert dates == [fri, mon] and values == [s.values[0], s.values[2]]
    assert returns == [pytest.approx(chain(s.returns))]
    # trailing: until Monday's close exists, Saturday is left out
    s = daily_values(txs, "fifo", {"X": [(fri, Decimal(100))]}, [fri, sat])
    assert fold_to_market_days(s.dates, s.values, s.returns, s.market_days) == ([fri], [s.values[0]], [])


def test_without_any_market_day_the_series_stays() -> None:
    dates = [D0, D0 + timedelta(days=1)]
    assert fold_to_market_days(dates, [Decimal(1), Decimal(2)], [1.0], [False, False]) == (
        dates, [Decimal(1), Decimal(2)], [1.0])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(-0.5, 0.5), st.booleans()), min_size=1, max_size=40))
def test_folding_keeps_the_time_weighted_return(steps: list[tuple[float, bool]]) -> None:
    returns = [r for r, _ in steps]
    market = [True] + [m for _, m in steps]
    dates = [D0 + timedelta(days=i) for i in range(len(market))]
    values = [Decimal(i) for i in range(len(market))]
    f_dates, f_values, f_returns = fold_to_market_days(dates, values, returns, market)
    last = max(i for i, m in enumerate(market) if m)
    assert f_dates == [d for i, d in enumerate(dates) if i == 0 or (market[i] and i <= last)]
    assert len(f_returns) == len(f_dates) - 1 and len(f_values) == len(f_dates)
    assert chain(f_returns) == pytest.approx(chain(returns[:last]), rel=1e-9, abs=1e-12)
