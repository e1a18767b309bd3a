"""Risk and performance metrics on arrays of simple periodic returns. Pure numpy: no I/O, no app imports.

Every function states its convention; docs/analytics.md repeats them for API users. In short:

* Input: simple returns ``r_t = P_t / P_{t-1} - 1`` (not log returns), one per period, oldest first.
  Every value must be finite and ``>= -1`` (a loss cannot exceed 100 %); anything else raises
  :class:`InvalidSeries` naming the first bad index. NaN is *rejected*, never silently dropped.
* Too little data raises :class:`InsufficientData` with ``needed`` and ``got`` (routes turn both into
  a 422 that says how much is needed).
* ``periods_per_year`` (``ppy``) annualizes: 252 for daily data, 52 weekly, 12 monthly.
* The annual risk-free rate becomes a per-period rate geometrically: ``(1 + rf) ** (1 / ppy) - 1``.
* Standard deviations use ``ddof = 1`` (sample), except the downside deviation, a lower partial
  moment that averages over *all* periods (denominator ``n``), as empyrical and quantstats do.
* Arithmetic annualization for means (``mean * ppy``) and ``sqrt(ppy)`` for dispersion; CAGR is
  geometric: ``prod(1 + r) ** (ppy / n) - 1``.
* Drawdowns start from a wealth of 1 *before* the first return, so a first-day loss is a drawdown.
  Max drawdown is reported as a negative fraction (-0.25 = 25 % below the peak), like empyrical.
* VaR and CVaR are *positive loss fractions* of current value over one period at ``confidence``
  (0.95 → the 5 % tail). Historical quantiles use linear interpolation between order statistics
  (numpy's default, Hyndman–Fan type 7); historical CVaR is the mean of all returns at or below that
  quantile. A VaR may be negative when even the tail is a gain. Horizons of ``h`` periods: parametric
  and Cornish-Fisher scale the mean by ``h`` and the deviation by ``sqrt(h)`` (i.i.d. returns; skew
  scales by ``1/sqrt(h)``, excess kurtosis by ``1/h``); historical VaR/CVaR use the square-root-of-time
  rule on the one-period figure.
* Skewness and excess kurtosis are the bias-corrected sample statistics (G1, G2 — as pandas, Excel
  and quantstats); Cornish-Fisher uses the same.
* A ratio whose denominator is zero (constant returns, no losses, a flat benchmark …) is ``None``;
  no NaN or infinity is ever returned.
* Benchmark-relative metrics use the periods present in both series (inner join by date, see
  :func:`align_by_date`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date
from typing import Any

import msgspec
import numpy as np
from scipy.special import ndtri
from scipy.stats import norm

DEFAULT_PERIODS_PER_YEAR = 252
#: fewest returns for a full report: below this, tail statistics and moments are noise.
MIN_PERIODS = 20
#: a dispersion below this is treated as exactly zero (constant series)
_ZERO_DISPERSION = 1e-14


# --- errors -----------------------------------------------------------------------------------------

class MetricsError(ValueError):
    """The input cannot produce the metric. Routes map every subclass to 422."""

    def __init__(self, message: str, *, field: str = "returns") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InsufficientData(MetricsError):
    """Fewer observations than the metric needs; ``needed`` and ``got`` say how many."""

    def __init__(self, needed: int, got: int, what: str = "returns", *, field: str = "returns",
                 why: str | None = None) -> None:
        detail = f"need at least {needed} {what}, got {got}"
        if why:
            detail += f" ({why})"
        super().__init__(detail, field=field)
        self.needed = needed
        self.got = got


class InvalidSeries(MetricsError):
    """A non-finite value, a return below -100 %, or series that do not line up."""


# --- input checks -----------------------------------------------------------------------------------

def as_returns(values: Any, name: str = "returns", *, min_len: int = 1) -> np.ndarray:
    """A float64 1-D copy of ``values``; rejects NaN/inf, values < -1 and too-short input."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise InvalidSeries(f"{name} must be a flat list of numbers", field=name)
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.argmax(bad))
        raise InvalidSeries(f"{name}[{i}] is not a finite number; remove or fill missing periods first",
                            field=name)
    below = arr < -1.0
    if below.any():
        i = int(np.argmax(below))
        raise InvalidSeries(f"{name}[{i}] = {arr[i]!r} is a loss of more than 100 %; returns are simple "
                            "fractions (0.01 = +1 %)", field=name)
    if arr.size < min_len:
        raise InsufficientData(min_len, int(arr.size), name, field=name)
    return arr


def _need(r: np.ndarray, n: int, what: str = "returns") -> None:
    if r.size < n:
        raise InsufficientData(n, int(r.size), what)


def per_period_rate(annual_rate: float, periods_per_year: float = DEFAULT_PERIODS_PER_YEAR) -> float:
    """Geometric de-annualization: ``(1 + annual) ** (1 / ppy) - 1``."""
    if not math.isfinite(annual_rate) or annual_rate <= -1:
        raise InvalidSeries("risk_free_rate must be a finite annual rate above -100 %", field="risk_free_rate")
    return (1.0 + annual_rate) ** (1.0 / periods_per_year) - 1.0


def _check_confidence(confidence: float) -> float:
    if not (0.5 <= confidence < 1.0) or not math.isfinite(confidence):
        raise InvalidSeries("confidence must be in [0.5, 1), e.g. 0.95", field="confidence")
    return confidence


def _ratio(num: float, den: float) -> float | None:
    if not math.isfinite(num) or not math.isfinite(den) or abs(den) <= _ZERO_DISPERSION:
        return None
    return float(num / den)


def _std(r: np.ndarray) -> float:
    """Sample standard deviation (ddof=1), snapped to 0 for a constant series."""
    s = float(np.std(r, ddof=1))
    return 0.0 if s <= _ZERO_DISPERSION * max(1.0, float(np.abs(r).max(initial=0.0))) else s


# --- returns and dispersion ------------------------------------------------------------------------

def total_return(r: np.ndarray) -> float:
    """Compounded return over the whole series: ``prod(1 + r) - 1``."""
    return float(np.prod(1.0 + r) - 1.0)


def cagr(r: np.ndarray, periods_per_year: float = DEFAULT_PERIODS_PER_YEAR) -> float:
    """Compound annual growth rate ``prod(1 + r) ** (ppy / n) - 1``; years = n / ppy (trading
    periods, not calendar days). Same as empyrical ``annual_return`` and quantstats ``cagr``."""
    _need(r, 1)
    wealth = float(np.prod(1.0 + r))
    return wealth ** (periods_per_year / r.size) - 1.0


def annual_volatility(r: np.ndarray, periods_per_year: float = DEFAULT_PERIODS_PER_YEAR) -> float:
    """``std(r, ddof=1) * sqrt(ppy)``."""
    _need(r, 2)
    return _std(r) * math.sqrt(periods_per_year)


def sharpe(r: np.ndarray, rf_per_period: float = 0.0,
           periods_per_year: float = DEFAULT_PERIODS_PER_YEAR) -> float | None:
    """``mean(r - rf) / std(r - rf, ddof=1) * sqrt(ppy)``; None for a constant series."""
    _need(r, 2)
    ex = r - rf_per_period
    ratio = _ratio(float(ex.mean()), _std(ex))
    return None if ratio is None else ratio * math.sqrt(periods_per_year)


def downside_deviation(r: np.ndarray, mar_per_period: float = 0.0,
                       periods_per_year: float = DEFAULT_PERIODS_PER_YEAR) -> float:
    """Annualized lower partial moment of order 2 below the target ``mar`` (the per-period risk-free
    rate in reports): ``sqrt(mean(min(r - mar, 0) ** 2)) * sqrt(ppy)``, averaged over *all* periods."""
    _need(r, 1)
    d = np.minimum(r - mar_per_period, 0.0)
    return math.sqrt(float(np.mean(d * d))) * math.sqrt(periods_per_year)


def sortino(r: np.ndarray, mar_per_period: float = 0.0,
            periods_per_year: float = DEFAULT_PERIODS_PER_YEAR) -> float | None:
    """``mean(r - mar) * ppy / downside_deviation``; None when no period falls below the target."""
    _need(r, 2)
    return _ratio(float(np.mean(r - mar_per_period)) * periods_per_year,
                  downside_deviation(r, mar_per_period, periods_per_year))


# --- drawdowns ------------------------------------------------------------------------------------

class Drawdown(msgspec.Struct, frozen=True):
    """Indices are into the *wealth* path of length n + 1: 0 is the start (wealth 1, before the first
    return), i is the close after return i - 1."""

    max_drawdown: float           # <= 0
    peak_index: int
    trough_index: int
    recovery_index: int | None    # first point at or above the peak after the trough; None if not yet
    current_drawdown: float       # <= 0, at the last point
    duration_periods: int | None  # peak → recovery; None while unrecovered
    current_peak_index: int = 0   # the latest all-time high, from which current_drawdown is measured


def wealth_path(r: np.ndarray) -> np.ndarray:
    """``[1, (1+r0), (1+r0)(1+r1), …]`` — length n + 1."""
    w = np.empty(r.size + 1)
    w[0] = 1.0
    np.cumprod(1.0 + r, out=w[1:])
    return w


def drawdown_series(r: np.ndarray) -> np.ndarray:
    """Drawdown at each point of the wealth path (length n + 1, first value 0)."""
    w = wealth_path(r)
    peak = np.maximum.accumulate(w)
    with np.errstate(invalid="ignore", divide="ignore"):
        dd = np.where(peak > 0, w / peak - 1.0, 0.0)
    return dd


def max_drawdown(r: np.ndarray) -> Drawdown:
    """The deepest fall from a running peak, with where it started, bottomed and recovered."""
    _need(r, 1)
    w = wealth_path(r)
    peak = np.maximum.accumulate(w)
    dd = w / peak - 1.0
    trough = int(np.argmin(dd))
    mdd = float(dd[trough])
    current_peak = int(w.size - 1 - np.argmax(w[::-1]))
    if mdd >= 0.0:
        return Drawdown(0.0, 0, 0, 0, 0.0, 0, current_peak)
    peak_i = int(np.argmax(w[: trough + 1]))  # first occurrence of the running max
    after = np.nonzero(w[trough:] >= w[peak_i])[0]
    recovery = int(trough + after[0]) if after.size else None
    return Drawdown(max_drawdown=mdd, peak_index=peak_i, trough_index=trough, recovery_index=recovery,
                    current_drawdown=float(dd[-1]),
                    duration_periods=None if recovery is None else recovery - peak_i,
                    current_peak_index=current_peak)


def calmar(r: np.ndarray, periods_per_year: float = DEFAULT_PERIODS_PER_YEAR) -> float | None:
    """``CAGR / |max drawdown|``; None without a drawdown."""
    return _ratio(cagr(r, periods_per_year), abs(max_drawdown(r).max_drawdown))


# --- benchmark-relative -----------------------------------------------------------------------------

def align_by_date(dates_a: Sequence[date], a: np.ndarray, dates_b: Sequence[date],
                  b: np.ndarray) -> tuple[list[date], np.ndarray, np.ndarray]:
    """Inner join of two dated series: only dates present in both, ascending. Duplicate dates are
    refused (a series has one return per date)."""
    if len(dates_a) != a.size or len(dates_b) != b.size:
        raise InvalidSeries("each series needs exactly one date per return", field="dates")
    ia = {d: i for i, d in enumerate(dates_a)}
    ib = {d: i for i, d in enumerate(dates_b)}
    if len(ia) != len(dates_a) or len(ib) != len(dates_b):
        raise InvalidSeries("dates must not repeat", field="dates")
    common = sorted(ia.keys() & ib.keys())
    return common, a[[ia[d] for d in common]], b[[ib[d] for d in common]]


def _paired(r: np.ndarray, b: np.ndarray, n: int = 2) -> None:
    if r.size != b.size:
        raise InvalidSeries("returns and benchmark_returns must be aligned (same length)",
                            field="benchmark_returns")
    if r.size < n:
        raise InsufficientData(n, int(r.size), "periods shared with the benchmark", field="benchmark_returns")


def beta(r: np.ndarray, b: np.ndarray) -> float | None:
    """``cov(r, b) / var(b)`` (the ddof cancels); None for a flat benchmark."""
    _paired(r, b)
    bc = b - b.mean()
    var_b = float(np.dot(bc, bc))
    if var_b <= _ZERO_DISPERSION ** 2 * b.size:
        return None
    return float(np.dot(r - r.mean(), bc) / var_b)


def alpha(r: np.ndarray, b: np.ndarray, rf_per_period: float = 0.0,
          periods_per_year: float = DEFAULT_PERIODS_PER_YEAR) -> float | None:
    """Jensen's alpha, arithmetically annualized: ``ppy * mean((r - rf) - beta * (b - rf))``.

    (empyrical compounds instead — ``(1 + mean) ** ppy - 1``; quantstats ``greeks`` multiplies by ppy
    like we do. Arithmetic keeps alpha additive with beta × benchmark excess return.)"""
    bt = beta(r, b)
    if bt is None:
        return None
    return float(np.mean((r - rf_per_period) - bt * (b - rf_per_period))) * periods_per_year


def correlation(r: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation; None when either series is constant."""
    _paired(r, b)
    rs, bs = _std(r), _std(b)
    if rs == 0.0 or bs == 0.0:
        return None
    c = float(np.dot(r - r.mean(), b - b.mean()) / ((r.size - 1) * rs * bs))
    return max(-1.0, min(1.0, c))


def tracking_error(r: np.ndarray, b: np.ndarray,
                   periods_per_year: float = DEFAULT_PERIODS_PER_YEAR) -> float:
    """``std(r - b, ddof=1) * sqrt(ppy)`` (annualized)."""
    _paired(r, b)
    return _std(r - b) * math.sqrt(periods_per_year)


def information_ratio(r: np.ndarray, b: np.ndarray,
                      periods_per_year: float = DEFAULT_PERIODS_PER_YEAR) -> float | None:
    """``mean(r - b) * ppy / tracking_error`` (annualized; quantstats and empyrical's ``excess_sharpe``
    report the per-period ratio, ours is theirs × sqrt(ppy)). None when r - b is constant."""
    te = tracking_error(r, b, periods_per_year)
    return _ratio(float(np.mean(r - b)) * periods_per_year, te)


# --- tail risk ---------------------------------------------------------------------------------------

def _tail_quantile(r: np.ndarray, confidence: float) -> float:
    return float(np.quantile(r, 1.0 - confidence))  # method="linear" (type 7)


def historical_var(r: np.ndarray, confidence: float = 0.95, horizon: int = 1) -> float:
    """``-quantile(r, 1 - confidence)`` with linear interpolation; × sqrt(horizon)."""
    _check_confidence(confidence)
    _need(r, 1)
    return -_tail_quantile(r, confidence) * math.sqrt(horizon)


def historical_cvar(r: np.ndarray, confidence: float = 0.95, horizon: int = 1) -> float:
    """Expected shortfall: ``-mean(r[r <= quantile(r, 1 - confidence)])``; × sqrt(horizon).
    Always >= the historical VaR. With distinct values the tail holds ``floor((n-1)(1-c)) + 1``
    returns — the same set empyrical's ``conditional_value_at_risk`` averages."""
    _check_confidence(confidence)
    _need(r, 1)
    q = _tail_quantile(r, confidence)
    return -float(r[r <= q].mean()) * math.sqrt(horizon)


def parametric_var(r: np.ndarray, confidence: float = 0.95, horizon: int = 1) -> float:
    """Gaussian VaR: ``-(mean * h) + z_c * std * sqrt(h)``, ``z_c = Phi^-1(confidence)``, ddof = 1."""
    _check_confidence(confidence)
    _need(r, 2)
    z = float(ndtri(confidence))
    return -float(r.mean()) * horizon + z * _std(r) * math.sqrt(horizon)


def parametric_cvar(r: np.ndarray, confidence: float = 0.95, horizon: int = 1) -> float:
    """Gaussian expected shortfall: ``-(mean * h) + std * sqrt(h) * phi(z_c) / (1 - c)``."""
    _check_confidence(confidence)
    _need(r, 2)
    z = float(ndtri(confidence))
    return -float(r.mean()) * horizon + _std(r) * math.sqrt(horizon) * float(norm.pdf(z)) / (1.0 - confidence)


def cornish_fisher_var(r: np.ndarray, confidence: float = 0.95, horizon: int = 1) -> float:
    """Modified VaR: the Gaussian quantile adjusted for skew S and excess kurtosis K,
    ``z_cf = z + (z²-1)S/6 + (z³-3z)K/24 - (2z³-5z)S²/36`` with ``z = Phi^-1(1 - c)``;
    VaR = ``-(mean * h + z_cf * std * sqrt(h))`` with S/sqrt(h), K/h for h > 1."""
    _check_confidence(confidence)
    _need(r, 4)
    s = skew(r)
    k = kurtosis(r)
    sd = _std(r)
    if s is None or k is None:  # constant series: no dispersion, VaR is minus the (certain) return
        return -float(r.mean()) * horizon
    s /= math.sqrt(horizon)
    k /= horizon
    z = float(ndtri(1.0 - confidence))
    zcf = z + (z * z - 1) * s / 6 + (z ** 3 - 3 * z) * k / 24 - (2 * z ** 3 - 5 * z) * s * s / 36
    return -(float(r.mean()) * horizon + zcf * sd * math.sqrt(horizon))


# --- moments and period statistics --------------------------------------------------------------------

def skew(r: np.ndarray) -> float | None:
    """Bias-corrected sample skewness G1 = ``sqrt(n(n-1))/(n-2) * m3 / m2^1.5`` (pandas ``skew``)."""
    _need(r, 3)
    n = r.size
    d = r - r.mean()
    m2 = float(np.mean(d * d))
    if m2 <= _ZERO_DISPERSION ** 2:
        return None
    g1 = float(np.mean(d ** 3)) / m2 ** 1.5
    return g1 * math.sqrt(n * (n - 1)) / (n - 2)


def kurtosis(r: np.ndarray) -> float | None:
    """Bias-corrected sample *excess* kurtosis G2 (pandas ``kurt``; 0 for a normal distribution)."""
    _need(r, 4)
    n = r.size
    d = r - r.mean()
    d2 = d * d
    m2 = float(np.mean(d2))
    if m2 <= _ZERO_DISPERSION ** 2:
        return None
    g2 = float(np.mean(d2 * d2)) / (m2 * m2) - 3.0
    return ((n + 1) * g2 + 6.0) * (n - 1) / ((n - 2) * (n - 3))


def best_period(r: np.ndarray) -> tuple[float, int]:
    """Largest single-period return and its index (first on ties)."""
    _need(r, 1)
    i = int(np.argmax(r))
    return float(r[i]), i


def worst_period(r: np.ndarray) -> tuple[float, int]:
    """Smallest single-period return and its index (first on ties)."""
    _need(r, 1)
    i = int(np.argmin(r))
    return float(r[i]), i


def positive_share(r: np.ndarray) -> float:
    """Share of *all* periods with a return > 0 (zero returns count as not positive; quantstats'
    ``win_rate`` leaves zero-return periods out of the denominator)."""
    _need(r, 1)
    return float(np.count_nonzero(r > 0.0)) / r.size


# --- holdings: covariance, contributions ---------------------------------------------------------------

def correlation_matrix(returns_matrix: np.ndarray) -> list[list[float | None]]:
    """Pearson correlations between columns (periods × assets); None where a column is constant."""
    m = np.asarray(returns_matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 2:
        raise InsufficientData(2, int(m.shape[0]) if m.ndim == 2 else 0, "periods for a correlation matrix")
    c = m - m.mean(axis=0)
    cov = c.T @ c
    sd = np.sqrt(np.diag(cov))
    flat = sd <= _ZERO_DISPERSION * math.sqrt(m.shape[0])
    sd_safe = np.where(flat, 1.0, sd)
    corr = np.clip(cov / np.outer(sd_safe, sd_safe), -1.0, 1.0)
    np.fill_diagonal(corr, 1.0)
    out: list[list[float | None]] = corr.tolist()
    for i in np.nonzero(flat)[0]:
        for j in range(len(out)):
            out[i][j] = None
            out[j][i] = None
    return out


class Contributions(msgspec.Struct, frozen=True):
    """Euler decompositions for a portfolio of current weights over a window of asset returns.

    Per-asset arrays are in the order of the input columns. ``component_*`` sum exactly (to rounding)
    to the matching ``total_*``; ``pct_*`` sum to 1 whenever the total is non-zero.

    * volatility (annualized): ``marginal_i = (Σw)_i / σ_p``, ``component_i = w_i · marginal_i``.
    * parametric VaR (one period, Gaussian): ``marginal_i = -μ_i + z_c (Σw)_i / σ_p``.
    * historical CVaR (one period): ``component_i = -mean over tail periods of w_i r_i,t``, the tail
      being the periods where the portfolio return is at or below its ``1 - c`` quantile.
    """

    weights: list[float]
    total_volatility: float
    marginal_volatility: list[float]
    component_volatility: list[float]
    pct_volatility: list[float | None]
    total_var: float
    marginal_var: list[float]
    component_var: list[float]
    pct_var: list[float | None]
    total_cvar: float
    component_cvar: list[float]
    pct_cvar: list[float | None]


def _pct(parts: np.ndarray, total: float) -> list[float | None]:
    if abs(total) <= _ZERO_DISPERSION:
        return [None] * parts.size
    return (parts / total).tolist()


def contributions(weights: Sequence[float] | np.ndarray, returns_matrix: np.ndarray,
                  confidence: float = 0.95,
                  periods_per_year: float = DEFAULT_PERIODS_PER_YEAR) -> Contributions:
    """Marginal and component contributions of each asset to volatility, parametric VaR and
    historical CVaR. ``weights`` are fractions of total portfolio value (cash is the remainder and
    contributes nothing); ``returns_matrix`` is periods × assets."""
    _check_confidence(confidence)
    w = np.asarray(weights, dtype=np.float64)
    m = np.asarray(returns_matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[1] != w.size:
        raise InvalidSeries("one column of returns per weight is needed", field="weights")
    if not np.isfinite(m).all() or not np.isfinite(w).all():
        raise InvalidSeries("weights and returns must be finite numbers", field="weights")
    _need(m[:, 0] if m.shape[1] else np.empty(m.shape[0]), 2, "periods")
    mu = m.mean(axis=0)
    c = m - mu
    cov = (c.T @ c) / (m.shape[0] - 1)
    sw = cov @ w
    var_p = float(w @ sw)
    sigma = math.sqrt(var_p) if var_p > _ZERO_DISPERSION ** 2 else 0.0
    ann = math.sqrt(periods_per_year)
    z = float(ndtri(confidence))
    if sigma > 0.0:
        mvol = sw / sigma
    else:
        mvol = np.zeros_like(w)
    cvol = w * mvol
    mvar = -mu + z * mvol
    cvar_ = w * mvar
    total_var = float(-(w @ mu) + z * sigma)
    # historical CVaR, Euler-decomposed over the tail scenarios
    port = m @ w
    q = float(np.quantile(port, 1.0 - confidence))
    tail = port <= q
    ccvar = -(m[tail] * w).mean(axis=0)
    total_cvar = float(-port[tail].mean())
    return Contributions(
        weights=w.tolist(),
        total_volatility=sigma * ann,
        marginal_volatility=(mvol * ann).tolist(),
        component_volatility=(cvol * ann).tolist(),
        pct_volatility=_pct(cvol, sigma),
        total_var=total_var,
        marginal_var=mvar.tolist(),
        component_var=cvar_.tolist(),
        pct_var=_pct(cvar_, total_var),
        total_cvar=total_cvar,
        component_cvar=ccvar.tolist(),
        pct_cvar=_pct(ccvar, total_cvar),
    )


# --- the full set for one series ---------------------------------------------------------------------

class PeriodStat(msgspec.Struct, frozen=True):
    value: float
    date: date | None = None


class DrawdownReport(msgspec.Struct, frozen=True):
    max_drawdown: float
    peak_date: date | None
    trough_date: date | None
    recovery_date: date | None
    duration_periods: int | None
    current_drawdown: float
    current_peak_date: date | None = None  # latest all-time high (None while at a high)


class BenchmarkMetrics(msgspec.Struct, frozen=True):
    periods: int
    beta: float | None
    alpha: float | None
    correlation: float | None
    tracking_error: float
    information_ratio: float | None
    benchmark_cagr: float
    benchmark_volatility: float
    benchmark_max_drawdown: float


class Metrics(msgspec.Struct, frozen=True):
    periods: int
    periods_per_year: float
    confidence: float
    horizon: int
    risk_free_rate: float
    start_date: date | None
    end_date: date | None
    total_return: float
    cagr: float
    volatility: float
    sharpe: float | None
    sortino: float | None
    downside_deviation: float
    drawdown: DrawdownReport
    calmar: float | None
    var_historical: float
    cvar_historical: float
    var_parametric: float
    cvar_parametric: float
    var_cornish_fisher: float
    skew: float | None
    kurtosis: float | None
    best_period: PeriodStat
    worst_period: PeriodStat
    positive_share: float
    benchmark: BenchmarkMetrics | None = None


def required_periods(confidence: float) -> int:
    """Fewest returns for :func:`compute_metrics`: ``MIN_PERIODS``, and enough that the VaR tail holds at
    least one observation beyond interpolation (``1 / (1 - confidence)``)."""
    return max(MIN_PERIODS, math.ceil(1.0 / (1.0 - confidence) - 1e-9))


def _point_dates(dates: Sequence[date] | None, n: int) -> list[date | None] | None:
    """Dates of the wealth path (n + 1 points). ``dates`` holds one date per return (the day each return
    ends; the start point then has no date) or one more (the first is the start, wealth 1)."""
    if dates is None:
        return None
    for i in range(1, len(dates)):  # a series is in time order, one return per period
        if not dates[i] > dates[i - 1]:
            raise InvalidSeries(f"dates must increase strictly (entry {i}: {dates[i]} after {dates[i - 1]})",
                                field="dates")
    if len(dates) == n:
        return [None, *dates]
    if len(dates) == n + 1:
        return list(dates)
    raise InvalidSeries(f"dates must have one entry per return ({n}) or one more ({n + 1}), got {len(dates)}",
                        field="dates")


def compute_metrics(returns: Any, *, dates: Sequence[date] | None = None,
                    benchmark_returns: Any = None, benchmark_dates: Sequence[date] | None = None,
                    periods_per_year: float = DEFAULT_PERIODS_PER_YEAR, risk_free_rate: float = 0.0,
                    confidence: float = 0.95, horizon: int = 1) -> Metrics:
    """Every metric for one return series (and optionally a benchmark).

    The benchmark lines up by date (inner join) when both ``dates`` and ``benchmark_dates`` are given,
    by position otherwise (then it must have the same length). ``risk_free_rate`` is annual.
    """
    if not (0 < periods_per_year <= 100_000) or not math.isfinite(periods_per_year):
        raise InvalidSeries("periods_per_year must be positive (252 for daily data)", field="periods_per_year")
    if not isinstance(horizon, int) or not 1 <= horizon <= 10 * periods_per_year:
        raise InvalidSeries("horizon must be a whole number of periods >= 1", field="horizon")
    _check_confidence(confidence)
    r = as_returns(returns)
    need = required_periods(confidence)
    if r.size < need:
        raise InsufficientData(need, int(r.size), "returns",
                               why=f"{MIN_PERIODS} periods minimum, and 1/(1-confidence) for the VaR tail")
    points = _point_dates(dates, r.size)
    ret_dates = None if points is None else points[1:]
    rf = per_period_rate(risk_free_rate, periods_per_year)
    dd = max_drawdown(r)
    had_dd = dd.max_drawdown < 0.0
    best_v, best_i = best_period(r)
    worst_v, worst_i = worst_period(r)

    bench: BenchmarkMetrics | None = None
    if benchmark_returns is not None:
        b = as_returns(benchmark_returns, "benchmark_returns")
        if benchmark_dates is not None:
            if ret_dates is None:
                raise InvalidSeries("benchmark_dates need dates for the returns too", field="dates")
            _, ra, ba = align_by_date(ret_dates, r, benchmark_dates, b)  # type: ignore[arg-type]
        else:
            if b.size != r.size:
                raise InvalidSeries(f"benchmark_returns has {b.size} values, returns {r.size}; send "
                                    "benchmark_dates to align them by date", field="benchmark_returns")
            ra, ba = r, b
        if ra.size < MIN_PERIODS:
            raise InsufficientData(MIN_PERIODS, int(ra.size), "periods shared with the benchmark",
                                   field="benchmark_returns")
        bench = BenchmarkMetrics(
            periods=int(ra.size), beta=beta(ra, ba), alpha=alpha(ra, ba, rf, periods_per_year),
            correlation=correlation(ra, ba), tracking_error=tracking_error(ra, ba, periods_per_year),
            information_ratio=information_ratio(ra, ba, periods_per_year),
            benchmark_cagr=cagr(ba, periods_per_year), benchmark_volatility=annual_volatility(ba, periods_per_year),
            benchmark_max_drawdown=max_drawdown(ba).max_drawdown)

    def at(i: int | None) -> date | None:
        return None if points is None or i is None else points[i]

    return Metrics(
        periods=int(r.size), periods_per_year=float(periods_per_year), confidence=confidence, horizon=horizon,
        risk_free_rate=risk_free_rate,
        start_date=None if points is None else (points[0] if points[0] is not None else points[1]),
        end_date=ret_dates[-1] if ret_dates else None,
        total_return=total_return(r), cagr=cagr(r, periods_per_year),
        volatility=annual_volatility(r, periods_per_year),
        sharpe=sharpe(r, rf, periods_per_year), sortino=sortino(r, rf, periods_per_year),
        downside_deviation=downside_deviation(r, rf, periods_per_year),
        drawdown=DrawdownReport(max_drawdown=dd.max_drawdown, peak_date=at(dd.peak_index) if had_dd else None,
                                trough_date=at(dd.trough_index) if had_dd else None,
                                recovery_date=at(dd.recovery_index) if had_dd else None,
                                duration_periods=dd.duration_periods, current_drawdown=dd.current_drawdown,
                                current_peak_date=at(dd.current_peak_index) if dd.current_drawdown < 0 else None),
        calmar=calmar(r, periods_per_year),
        var_historical=historical_var(r, confidence, horizon), cvar_historical=historical_cvar(r, confidence, horizon),
        var_parametric=parametric_var(r, confidence, horizon), cvar_parametric=parametric_cvar(r, confidence, horizon),
        var_cornish_fisher=cornish_fisher_var(r, confidence, horizon),
        skew=skew(r), kurtosis=kurtosis(r),
        best_period=PeriodStat(best_v, None if ret_dates is None else ret_dates[best_i]),
        worst_period=PeriodStat(worst_v, None if ret_dates is None else ret_dates[worst_i]),
        positive_share=positive_share(r),
        benchmark=bench,
    )
