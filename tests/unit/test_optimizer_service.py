"""Pure parts of the optimizer service: aligning closes, the closes memo, observation needs, period inference."""

from __future__ import annotations

import time
from datetime import date, timedelta

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from app.optimizer.service import _ClosesMemo, _periods_per_year, align_closes, needed_observations


def test_closes_memo_expires_and_evicts_least_recently_used() -> None:
    memo = _ClosesMemo(ttl=0.2, max_rows=10)
    memo.put("a", {"A": {}}, 4)
    memo.put("b", {"B": {}}, 4)
    assert memo.get("a") == {"A": {}}  # a is now the most recently used
    memo.put("c", {"C": {}}, 4)  # 12 rows > 10: b goes
    assert memo.get("b") is None and memo.get("a") is not None and memo.get("c") is not None
    time.sleep(0.25)
    assert memo.get("a") is None and memo.get("c") is None


def test_needed_observations() -> None:
    assert needed_observations(5, "sample") == 60
    assert needed_observations(300, "sample") == 301
    assert needed_observations(300, "ledoit_wolf") == 60


def test_periods_per_year_from_dates() -> None:
    def every(days: int, n: int = 30) -> list[date]:
        return [date(2020, 1, 1) + timedelta(days=days * i) for i in range(n)]
    assert _periods_per_year(every(1)) == 252
    assert _periods_per_year(every(7)) == 52
    assert _periods_per_year(every(30)) == 12
    assert _periods_per_year(every(91)) == 4


def test_align_closes_keeps_the_days_every_symbol_has() -> None:
    d = [date(2024, 1, k) for k in range(1, 6)]
    rows = [("A", d[0], 10.0), ("A", d[1], 11.0), ("A", d[2], 12.0), ("A", d[4], 14.0),
            ("B", d[1], 21.0), ("B", d[2], 22.0), ("B", d[3], 23.0), ("B", d[4], 24.0)]
    aligned = align_closes(["B", "A"], rows)
    assert aligned.dates == [d[1], d[2], d[4]]
    assert aligned.prices.tolist() == [[21.0, 11.0], [22.0, 12.0], [24.0, 14.0]]  # columns in the symbols' order
    assert aligned.first == {"A": d[0], "B": d[1]}
    empty = align_closes(["A", "C"], [("A", d[0], 1.0)])
    assert empty.dates == [] and empty.prices.shape == (0, 2) and empty.first == {"A": d[0], "C": None}


@given(st.dictionaries(st.sampled_from(["A", "B", "C"]),
                       st.dictionaries(st.integers(0, 30), st.floats(0.01, 1e6), min_size=0, max_size=20),
                       min_size=3, max_size=3))
def test_align_closes_matches_a_plain_lookup(bars: dict[str, dict[int, float]]) -> None:
    symbols = sorted(bars)
    rows = [(s, date(2024, 1, 1) + timedelta(days=k), c) for s in symbols for k, c in sorted(bars[s].items())]
    aligned = align_closes(symbols, rows)
    days = sorted(set.intersection(*(set(v) for v in bars.values())))
    assert aligned.dates == [date(2024, 1, 1) + timedelta(days=k) for k in days]
    expected = np.array([[bars[s][k] for s in symbols] for k in days], dtype=float).reshape(len(days), 3)
    assert np.array_equal(aligned.prices, expected)
