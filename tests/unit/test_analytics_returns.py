from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.analytics.returns import aligned_matrix, close_returns

D = [date(2024, 1, 1) + timedelta(days=i) for i in range(10)]


def test_close_returns_skips_bad_ticks_and_keeps_the_later_duplicate() -> None:
    closes = [(D[0], Decimal("10")), (D[1], Decimal("0")), (D[1], Decimal("11")), (D[2], Decimal("12.1")),
              (D[2], Decimal("13.2")), (D[3], float("nan")), (D[4], Decimal("6.6"))]
    ds, r = close_returns(closes)
    assert ds == [D[1], D[2], D[4]]
    assert r == pytest.approx([0.1, 0.2, -0.5])
    assert close_returns([(D[0], 1)]) == ([], pytest.approx(np.empty(0)))


def test_unsorted_input_is_sorted_first() -> None:
    ds, r = close_returns([(D[2], 12), (D[0], 10), (D[1], 11)])
    assert ds == [D[1], D[2]] and r == pytest.approx([0.1, 12 / 11 - 1])


def test_aligned_matrix_inner_joins_after_taking_each_symbols_returns() -> None:
    a = [(D[i], 100 + i) for i in range(6)]
    b = [(D[i], 50 * 1.01 ** i) for i in (0, 1, 3, 4, 5)]  # no close on D[2]
    days, mat = aligned_matrix({"A": a, "B": b}, ["A", "B"])
    assert days == [D[1], D[3], D[4], D[5]]
    # B's return on D[3] spans its own previous close (D[1]): two days of 1 %
    assert mat[1, 1] == pytest.approx(1.01 ** 2 - 1)
    assert mat[1, 0] == pytest.approx(103 / 102 - 1)
    days, mat = aligned_matrix({"A": a, "B": b}, ["A", "B"], start=D[4])
    assert days == [D[4], D[5]] and mat.shape == (2, 2)
    days, mat = aligned_matrix({"A": a}, ["A", "MISSING"])
    assert days == [] and mat.shape == (0, 2)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(1, 1000), min_size=2, max_size=60))
def test_compounding_the_returns_gives_back_the_price_ratio(prices: list[float]) -> None:
    closes = [(D[0] + timedelta(days=i), p) for i, p in enumerate(prices)]
    _, r = close_returns(closes)
    assert float(np.prod(1 + r)) == pytest.approx(prices[-1] / prices[0], rel=1e-9)
