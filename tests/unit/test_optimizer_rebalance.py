"""rebalance.py: trades within one share of the targets, never spending cash that is not there."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from app.optimizer.rebalance import FRACTIONAL_QUANTUM, RebalanceError, plan_rebalance

D = Decimal
SYMBOLS = ["AAA", "BBB", "CCC", "DDD", "EEE", "FFF"]

prices_st = st.decimals(min_value=D("0.50"), max_value=D("2500"), places=2)
qty_st = st.integers(min_value=0, max_value=2000).map(D)
# negative cash (an overdrawn ledger) included: the plan must fund every buy from cash or sells
cash_st = st.decimals(min_value=D("-2000"), max_value=D("500000"), places=2)


@st.composite
def portfolios(draw: st.DrawFn) -> dict:
    symbols = draw(st.lists(st.sampled_from(SYMBOLS), min_size=1, max_size=6, unique=True))
    held = draw(st.lists(st.sampled_from(symbols), unique=True))
    targeted = draw(st.lists(st.sampled_from(symbols), min_size=1, unique=True))
    raw = [draw(st.integers(min_value=0, max_value=100)) for _ in targeted]
    invested = draw(st.sampled_from([D(1), D("0.9"), D("0.5")]))
    total = sum(raw) or 1
    weights = {s: (D(r) / D(total) * invested).quantize(D("0.0001"), rounding="ROUND_DOWN") for s, r in zip(targeted, raw)}
    return {
        "holdings": {s: draw(qty_st) for s in held},
        "cash": draw(cash_st),
        "prices": {s: draw(prices_st) for s in symbols},
        "target_weights": weights,
        "cash_buffer": draw(st.sampled_from([D(0), D("0.01"), D("0.05")])),
        "fractional": draw(st.booleans()),
    }


def total_value(case: dict) -> Decimal:
    return case["cash"] + sum(q * case["prices"][s] for s, q in case["holdings"].items())


def value(plan, prices) -> Decimal:
    return plan.cash_after + sum(p.quantity_after * prices[p.symbol] for p in plan.positions)


@settings(max_examples=300, deadline=None)
@given(portfolios())
def test_lands_within_one_share_and_never_overspends(case: dict) -> None:
    assume(total_value(case) > 0)  # a portfolio with no value is refused (tested below)
    plan = plan_rebalance(**case)
    quantum = FRACTIONAL_QUANTUM if case["fractional"] else D(1)
    assert plan.cash_after >= 0
    assert plan.cash_after >= plan.cash_buffer_value  # the buffer holds: targets are rounded down first
    assert value(plan, case["prices"]) == plan.total_value  # trades only move value between cash and shares
    for p in plan.positions:
        assert abs(p.quantity_after - p.target_quantity) < quantum, p
        assert p.quantity_after >= 0
        if not case["fractional"]:
            assert p.quantity_after == p.quantity_after.to_integral_value()
    # the trades are exactly the position changes, sells never exceed what is held
    by_symbol = {t.symbol: t for t in plan.trades}
    for p in plan.positions:
        t = by_symbol.get(p.symbol)
        delta = p.quantity_after - p.quantity_before
        if delta == 0:
            assert t is None
        else:
            assert t is not None and t.quantity == abs(delta) and t.side == ("buy" if delta > 0 else "sell")
            assert t.value == t.quantity * t.price
    spent = sum(t.value for t in plan.trades if t.side == "buy") - sum(t.value for t in plan.trades if t.side == "sell")
    assert spent <= max(case["cash"], D(0))  # overdrawn: the sells pay the buys and the overdraft back
    assert plan.cash_after == case["cash"] - spent


@settings(max_examples=300, deadline=None)
@given(portfolios(), st.decimals(min_value=D("1"), max_value=D("5000"), places=2))
def test_minimum_trade_value_is_respected_and_cash_still_holds(case: dict, minimum: Decimal) -> None:
    assume(total_value(case) > 0)
    plan = plan_rebalance(**case, min_trade_value=minimum)
    buys = sum(t.value for t in plan.trades if t.side == "buy")
    sells = sum(t.value for t in plan.trades if t.side == "sell")
    assert buys <= max(case["cash"], D(0)) + sells  # buys are paid from cash or sells, never on credit
    assert plan.cash_after >= min(case["cash"], D(0))
    for t in plan.trades:
        assert t.value >= minimum
    if any(t.side == "buy" for t in plan.trades):  # buys only spend down to the buffer
        assert plan.cash_after >= plan.cash_buffer_value
    assert value(plan, case["prices"]) == plan.total_value


def test_example_whole_shares() -> None:
    plan = plan_rebalance(
        holdings={"AAA": D(10), "ZZZ": D(5)},
        cash=D("1000"),
        prices={"AAA": D("100"), "BBB": D("30"), "ZZZ": D("40")},
        target_weights={"AAA": D("0.5"), "BBB": D("0.5")},
    )
    # V = 1000 + 1000 + 200 = 2200 → AAA 1100 (11 shares), BBB 1100 (36.67 → 36, then +1 if cash allows)
    trades = {(t.symbol, t.side): t.quantity for t in plan.trades}
    assert trades == {("ZZZ", "sell"): D(5), ("AAA", "buy"): D(1), ("BBB", "buy"): D(36)}
    assert plan.cash_after == D("2200") - D("1100") - D("1080")
    assert plan.trades[0].side == "sell"  # sells first
    assert plan.drift_after < plan.drift_before
    assert plan.turnover == ((D(200) + D(100) + D(1080)) / D(4400)).quantize(D("0.00000001"))


def test_greedy_top_up_buys_the_share_furthest_below_target() -> None:
    plan = plan_rebalance(holdings={}, cash=D("100"), prices={"AAA": D("30"), "BBB": D("45")},
                          target_weights={"AAA": D("0.5"), "BBB": D("0.5")})
    # floors: AAA 1 (30), BBB 1 (45) → 25 left: AAA is 20 below target and costs 30 > 25; nothing more
    assert {t.symbol: t.quantity for t in plan.trades} == {"AAA": D(1), "BBB": D(1)}
    plan = plan_rebalance(holdings={}, cash=D("100"), prices={"AAA": D("20"), "BBB": D("45")},
                          target_weights={"AAA": D("0.5"), "BBB": D("0.5")})
    # floors: AAA 2 (40), BBB 1 (45) → 15 left, BBB 5 below target but costs 45; AAA 10 below costs 20: none
    assert plan.cash_after == D(15)


def test_keeps_a_position_already_within_one_share() -> None:
    plan = plan_rebalance(holdings={"AAA": D(11)}, cash=D("50"), prices={"AAA": D("100")},
                          target_weights={"AAA": D("0.99")})
    # target 10.89 shares: 11 is within one share above it, and selling one would be churn
    assert plan.trades == []


def test_fractional_shares() -> None:
    plan = plan_rebalance(holdings={}, cash=D("1000"), prices={"AAA": D("333.33")},
                          target_weights={"AAA": D(1)}, fractional=True)
    (t,) = plan.trades
    assert t.quantity == D("3.000030")
    assert plan.cash_after >= 0 and plan.cash_after < D("0.001")


def test_cash_buffer_is_kept() -> None:
    plan = plan_rebalance(holdings={}, cash=D("10000"), prices={"AAA": D("10")},
                          target_weights={"AAA": D(1)}, cash_buffer=D("0.05"))
    assert plan.trades[0].quantity == D(950)
    assert plan.cash_after == D(500)


@pytest.mark.parametrize("kwargs, field", [
    ({"target_weights": {"AAA": D("0.7"), "BBB": D("0.4")}}, "target"),
    ({"target_weights": {"AAA": D("-0.1")}}, "target.AAA"),
    ({"target_weights": {"CCC": D("0.5")}}, "prices.CCC"),
    ({"target_weights": {"AAA": D("0.5")}, "cash_buffer": D(1)}, "cash_buffer"),
])
def test_bad_inputs_name_the_field(kwargs: dict, field: str) -> None:
    base = {"holdings": {"AAA": D(1)}, "cash": D(100), "prices": {"AAA": D(10), "BBB": D(5)}}
    with pytest.raises(RebalanceError) as exc:
        plan_rebalance(**{**base, **kwargs})
    assert exc.value.field == field


def test_a_portfolio_without_value_is_refused() -> None:
    with pytest.raises(RebalanceError) as exc:
        plan_rebalance(holdings={}, cash=D(0), prices={"AAA": D(1)}, target_weights={"AAA": D(1)})
    assert exc.value.field == "portfolio_id"
