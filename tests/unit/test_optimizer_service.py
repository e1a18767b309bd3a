"""Pure parts of the optimizer service: the closes memo, observation needs, period inference."""

from __future__ import annotations

import time
from datetime import date, timedelta

from app.optimizer.service import _ClosesMemo, _periods_per_year, needed_observations


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
