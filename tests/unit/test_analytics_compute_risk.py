"""compute_risk (the pure part of the risk report) on hand-made data: degraded cases keep the answer useful."""

from __future__ import annotations

import uuid
from datetime import date, timedelta

import numpy as np
import pytest

from app.analytics import metrics as mt
from app.analytics.returns import Closes
from app.analytics.service import HoldingIn, PortfolioData, compute_risk

DAYS = [date(2023, 1, 2) + timedelta(days=i) for i in range(120)]


def _closes(seed: int, days: list[date]) -> Closes:
    r = np.random.default_rng(seed).normal(0.0003, 0.01, len(days))
    p = 100 * np.cumprod(1 + r)
    return Closes.from_pairs(list(zip(days, p.tolist(), strict=True)))


def _data(**over) -> PortfolioData:
    closes = {"A": _closes(1, DAYS), "B": _closes(2, DAYS), "SPY": _closes(3, DAYS)}
    rets = np.random.default_rng(4).normal(0.0004, 0.009, len(DAYS) - 1)
    base = dict(series_dates=DAYS, series_returns=rets.tolist(), series_values=[1.0] * len(DAYS),
                holdings=[HoldingIn("A", 0.5, 500.0, "Tech", "stock"), HoldingIn("B", 0.3, 300.0, "Energy", "stock")],
                cash_weight=0.2, total_value=1000.0, closes=closes, benchmark="SPY")
    base.update(over)
    return PortfolioData(**base)


def _run(data: PortfolioData):
    return compute_risk(data, confidence=0.95, window="max", portfolio_id=uuid.uuid4())


def test_full_report() -> None:
    rep = _run(_data())
    assert rep.metrics.periods == len(DAYS) - 1 and rep.metrics.benchmark is not None
    assert rep.contributions is not None and rep.contributions.periods == len(DAYS) - 1
    assert sum(h.component_volatility for h in rep.contributions.holdings) == pytest.approx(
        rep.contributions.total_volatility)
    assert rep.correlation is not None and rep.correlation.symbols == ["A", "B"]
    assert rep.notes == ["annualized figures extrapolate 119 daily returns (less than a year)"]
    assert rep.as_of == DAYS[-1]


def test_short_benchmark_overlap_leaves_out_only_benchmark_figures() -> None:
    d = _data()
    d.closes["SPY"] = _closes(3, DAYS[-10:])
    rep = _run(d)
    assert rep.metrics.benchmark is None and rep.metrics.sharpe is not None
    assert any("benchmark SPY" in n for n in rep.notes)


def test_holding_without_price_or_short_history_is_noted() -> None:
    d = _data(holdings=[HoldingIn("A", 0.5, 500.0), HoldingIn("C", 0.0, None)])
    rep = _run(d)
    assert any("no current price for C" in n for n in rep.notes)
    assert rep.contributions is not None and [h.symbol for h in rep.contributions.holdings] == ["A"]
    d = _data()
    d.closes["B"] = _closes(2, DAYS[-8:])
    rep = _run(d)
    assert rep.contributions is None and rep.correlation is None
    assert any("contributions need 20 days" in n for n in rep.notes)


def test_too_short_series_raises_with_counts() -> None:
    with pytest.raises(mt.InsufficientData) as exc:
        _run(_data(series_dates=DAYS[:6], series_returns=[0.01] * 5))
    assert (exc.value.needed, exc.value.got) == (20, 5)
