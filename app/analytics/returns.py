"""Turning daily closes into aligned return series. Pure (no I/O).

* A symbol's daily return on date d is ``close(d) / close(previous date with a close) - 1``.
* Holdings are aligned by date with an inner join: the covariance and correlation matrix use only
  the dates on which *every* current holding has a return (a holding listed later shortens the window).
* Non-positive or non-finite closes are dropped before returns are taken (bad ticks, not prices).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from decimal import Decimal
from typing import NamedTuple

import numpy as np


class Closes(NamedTuple):
    """One symbol's daily closes as arrays: ``date.toordinal()`` values and prices (ascending)."""

    ords: np.ndarray  # int64
    px: np.ndarray    # float64

    @classmethod
    def from_pairs(cls, pairs: Sequence[tuple[date, Decimal | float]]) -> Closes:
        n = len(pairs)
        return cls(np.fromiter((d.toordinal() for d, _ in pairs), dtype=np.int64, count=n),
                   np.fromiter((c for _, c in pairs), dtype=np.float64, count=n))


EMPTY = Closes(np.empty(0, dtype=np.int64), np.empty(0))


def _as_closes(closes: Closes | Sequence[tuple[date, Decimal | float]]) -> Closes:
    return closes if isinstance(closes, Closes) else Closes.from_pairs(closes)


def _ordinal_returns(closes: Closes | Sequence[tuple[date, Decimal | float]]) -> tuple[np.ndarray, np.ndarray]:
    """(date ordinals, returns) — the vectorized core of :func:`close_returns`."""
    ords, px = _as_closes(closes)
    if ords.size < 2:
        return np.empty(0, dtype=np.int64), np.empty(0)
    ok = np.isfinite(px) & (px > 0)
    if not ok.all():
        ords, px = ords[ok], px[ok]
    if ords.size > 1 and (np.diff(ords) <= 0).any():
        order = np.argsort(ords, kind="stable")
        ords, px = ords[order], px[order]
        last = np.append(ords[1:] != ords[:-1], True)  # a repeated day: keep the later close
        ords, px = ords[last], px[last]
    if px.size < 2:
        return np.empty(0, dtype=np.int64), np.empty(0)
    return ords[1:], px[1:] / px[:-1] - 1.0


def close_returns(closes: Closes | Sequence[tuple[date, Decimal | float]]) -> tuple[list[date], np.ndarray]:
    """(dates, simple returns) from ascending (date, close) pairs; the first close gives no return."""
    ords, r = _ordinal_returns(closes)
    return [date.fromordinal(int(o)) for o in ords], r


def aligned_matrix(closes_by_symbol: Mapping[str, Closes | Sequence[tuple[date, Decimal | float]]],
                   symbols: Sequence[str], start: date | None = None) -> tuple[list[date], np.ndarray]:
    """Dates × symbols matrix of daily returns on the dates every symbol has a return (from ``start``).

    Returns are taken on each symbol's own consecutive closes *before* the join, so a missing day of
    one symbol does not turn the next day into a two-day return for it alone; the joined rows are the
    days on which all symbols traded."""
    if not symbols:
        return [], np.empty((0, 0))
    series = []
    common: np.ndarray | None = None
    for s in symbols:
        ords, r = _ordinal_returns(closes_by_symbol.get(s, EMPTY))
        series.append((ords, r))
        common = ords if common is None else np.intersect1d(common, ords, assume_unique=True)
    assert common is not None
    if start is not None:
        common = common[common >= start.toordinal()]
    mat = np.empty((common.size, len(symbols)))
    for j, (ords, r) in enumerate(series):
        mat[:, j] = r[np.searchsorted(ords, common)]
    return [date.fromordinal(int(o)) for o in common], mat
