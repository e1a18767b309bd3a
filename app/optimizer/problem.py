"""The optimisation problem as it crosses the process boundary, and the error a worker raises.

Pure: imports numpy only, never Riskfolio. The service builds a `Problem` (validated inputs in the
returns' own period units plus annual figures), a worker process solves it (`solve.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

MODELS = ("mean_variance", "black_litterman", "hrp", "risk_parity")
OBJECTIVES = ("max_sharpe", "min_risk", "max_return", "utility")
RISK_MEASURES = ("variance", "cvar", "cdar", "mad", "max_drawdown")
COVARIANCES = ("sample", "ledoit_wolf", "oas")
EXPECTED_RETURNS = ("historical", "ewma")

# Our names → Riskfolio-Lib's codes.
RISK_CODES = {"variance": "MV", "cvar": "CVaR", "cdar": "CDaR", "mad": "MAD", "max_drawdown": "MDD"}
OBJECTIVE_CODES = {"max_sharpe": "Sharpe", "min_risk": "MinRisk", "max_return": "MaxRet", "utility": "Utility"}
COVARIANCE_CODES = {"sample": "hist", "ledoit_wolf": "ledoit", "oas": "oas"}
# Risk parity (risk budgeting) needs a homogeneous risk measure: Riskfolio offers no max drawdown there.
RISK_PARITY_MEASURES = ("variance", "cvar", "cdar", "mad")


@dataclass(frozen=True)
class View:
    """Black-Litterman view: `symbol` returns `annual_return` a year (absolute), or beats `versus`
    by `annual_return` a year (relative)."""

    symbol: str
    annual_return: float
    versus: str | None = None


@dataclass
class Problem:
    symbols: list[str]
    returns: np.ndarray  # T × N simple returns, one column per symbol, finite
    periods_per_year: int = 252
    model: str = "mean_variance"
    objective: str = "max_sharpe"
    risk_measure: str = "variance"
    risk_aversion: float = 2.0
    covariance: str = "sample"
    expected_returns: str = "historical"
    ewma_halflife: float = 63.0  # in periods
    risk_free_rate: float = 0.0  # annual
    alpha: float = 0.05  # tail for CVaR / CDaR
    long_only: bool = True
    max_short: float = 0.2  # total short weight allowed when not long-only
    min_weight: np.ndarray | None = None  # per symbol; None → 0 (long-only) / -1
    max_weight: np.ndarray | None = None  # per symbol; None → 1
    target_return: float | None = None  # annual
    target_risk: float | None = None  # annual volatility (variance) or the measure's own units
    views: list[View] = field(default_factory=list)
    prior_weights: np.ndarray | None = None  # Black-Litterman market portfolio; None → equal weights
    bl_delta: float | None = None  # Black-Litterman risk aversion; None → implied by the prior
    time_limit: float | None = None  # seconds, handed to the solver


class SolveError(Exception):
    """A problem that cannot be solved as posed. `field` names the input to change; `status` is the
    HTTP status the API answers with (422 for an input that cannot work, 502 for a solver failure)."""

    def __init__(self, detail: str, field: str | None = None, status: int = 422, **extra: Any) -> None:
        super().__init__(detail, field, status, extra)
        self.detail = detail
        self.field = field
        self.status = status
        self.extra = extra

    def __reduce__(self) -> Any:  # picklable across the process boundary, keyword arguments included
        return (_rebuild_solve_error, (self.detail, self.field, self.status, self.extra))


def _rebuild_solve_error(detail: str, field: str | None, status: int, extra: dict[str, Any]) -> SolveError:
    return SolveError(detail, field, status, **extra)


def weight_bounds(p: Problem) -> tuple[np.ndarray, np.ndarray]:
    n = len(p.symbols)
    lo = p.min_weight if p.min_weight is not None else np.full(n, 0.0 if p.long_only else -1.0)
    hi = p.max_weight if p.max_weight is not None else np.ones(n)
    return np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)


def max_return_under_bounds(mu: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """max μ·w subject to lo ≤ w ≤ hi and Σw = 1 (a greedy LP: fill the best assets first)."""
    w = lo.astype(float).copy()
    room = 1.0 - w.sum()
    for i in np.argsort(-mu):
        if room <= 0:
            break
        add = min(hi[i] - w[i], room)
        w[i] += add
        room -= add
    return float(mu @ w)
