"""Volatility and VaR forecasts from daily returns: EWMA (RiskMetrics, λ = 0.94) and GARCH(1,1).

Pure computation (numpy, and the ``arch`` package for GARCH) — CPU-bound, so callers run
:func:`forecast` in a worker thread. Conventions:

* Zero-mean returns for both models (the usual risk-model choice: over a day or a month the mean is
  small next to its estimation error). VaR/CVaR are Gaussian, positive loss fractions:
  ``VaR = z_c · σ_h``, ``CVaR = σ_h · φ(z_c) / (1 - c)``.
* A "month" is 21 trading days. EWMA has no mean reversion, so its month is ``σ_1 · sqrt(21)``; GARCH's
  month is ``sqrt(sum of the 21 daily variance forecasts)``, which bends towards the long-run level.
* EWMA: ``σ²_{t+1} = λ σ²_t + (1 - λ) r_t²``, seeded with the mean square of the first 20 returns
  (after 60 returns the seed weighs < 3 %). Its "long-run" level is the window's mean square return.
* GARCH(1,1): ``σ²_{t+1} = ω + α r_t² + β σ²_t`` by maximum likelihood (normal errors) on returns in
  percent; long-run variance ``ω / (1 - α - β)`` (None when α + β ≥ 1: no finite long-run level).
* Annualized figures multiply the daily σ by sqrt(252).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import msgspec
import numpy as np
from scipy.special import ndtri
from scipy.stats import norm

from app.analytics.metrics import InsufficientData, as_returns

EWMA_LAMBDA = 0.94
MONTH = 21
PERIODS_PER_YEAR = 252
EWMA_SEED_PERIODS = 20
#: fewest daily returns for a forecast (EWMA) and for fitting GARCH
MIN_FORECAST_PERIODS = 60
MIN_GARCH_PERIODS = 250


class ModelForecast(msgspec.Struct, frozen=True):
    model: str                          # "ewma" | "garch"
    next_day_volatility: float          # σ of tomorrow's return (fraction)
    next_month_volatility: float        # σ of the next 21 days' return
    annualized_volatility: float        # next_day × sqrt(252)
    next_day_var: float
    next_month_var: float
    next_day_cvar: float
    next_month_cvar: float
    long_run_volatility: float | None   # daily σ the model reverts to (EWMA: window mean square)
    long_run_annualized_volatility: float | None
    regime_ratio: float | None          # next_day / long_run (> 1: more turbulent than usual)
    params: dict[str, float]
    converged: bool = True


class Forecast(msgspec.Struct, frozen=True):
    periods: int
    confidence: float
    month_periods: int
    ewma: ModelForecast
    garch: ModelForecast | None
    garch_note: str | None = None


def _tail(sigma: float, confidence: float) -> tuple[float, float]:
    z = float(ndtri(confidence))
    return z * sigma, sigma * float(norm.pdf(z)) / (1.0 - confidence)


def _model(name: str, s1: float, s_month: float, long_run: float | None, confidence: float,
           params: dict[str, float], converged: bool = True) -> ModelForecast:
    v1, c1 = _tail(s1, confidence)
    vm, cm = _tail(s_month, confidence)
    return ModelForecast(
        model=name, next_day_volatility=s1, next_month_volatility=s_month,
        annualized_volatility=s1 * math.sqrt(PERIODS_PER_YEAR), next_day_var=v1, next_month_var=vm,
        next_day_cvar=c1, next_month_cvar=cm, long_run_volatility=long_run,
        long_run_annualized_volatility=None if long_run is None else long_run * math.sqrt(PERIODS_PER_YEAR),
        regime_ratio=None if not long_run else s1 / long_run, params=params, converged=converged)


def ewma_variance(r: np.ndarray, lam: float = EWMA_LAMBDA) -> float:
    """Next-period variance after the whole series (zero mean)."""
    var = float(np.mean(r[:EWMA_SEED_PERIODS] ** 2))
    # σ²_{n} = λ^n σ²_0 + (1-λ) Σ λ^(n-1-t) r_t²  — vectorized instead of a Python loop
    n = r.size
    weights = (1.0 - lam) * lam ** np.arange(n - 1, -1, -1, dtype=np.float64)
    return float(lam ** n * var + weights @ (r * r))


def ewma_forecast(r: np.ndarray, confidence: float = 0.95, lam: float = EWMA_LAMBDA) -> ModelForecast:
    s1 = math.sqrt(ewma_variance(r, lam))
    long_run = math.sqrt(float(np.mean(r * r)))
    return _model("ewma", s1, s1 * math.sqrt(MONTH), long_run, confidence, {"lambda": lam})


def garch_forecast(r: np.ndarray, confidence: float = 0.95) -> ModelForecast:
    from arch import arch_model  # imported lazily: ~0.3 s the first time

    am = arch_model(r * 100.0, mean="Zero", vol="GARCH", p=1, q=1, dist="normal", rescale=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = am.fit(disp="off", show_warning=False, options={"maxiter": 500})
    omega = float(res.params["omega"])
    a = float(res.params["alpha[1]"])
    b = float(res.params["beta[1]"])
    var_path = np.asarray(res.forecast(horizon=MONTH, reindex=False).variance.values[-1], dtype=np.float64)
    var_path = var_path / 1e4  # percent² → fraction²
    s1 = math.sqrt(float(var_path[0]))
    sm = math.sqrt(float(var_path.sum()))
    persistence = a + b
    long_run = math.sqrt(omega / (1.0 - persistence)) / 100.0 if persistence < 1.0 and omega > 0 else None
    return _model("garch", s1, sm, long_run, confidence,
                  {"omega": omega / 1e4, "alpha": a, "beta": b, "persistence": persistence},
                  converged=int(res.convergence_flag) == 0)


def forecast(returns: Any, confidence: float = 0.95) -> Forecast:
    """EWMA always (at least 60 returns); GARCH(1,1) with at least 250 returns and a successful fit."""
    r = as_returns(returns)
    if r.size < MIN_FORECAST_PERIODS:
        raise InsufficientData(MIN_FORECAST_PERIODS, int(r.size), "daily returns",
                               why="for a volatility forecast")
    if not 0.5 <= confidence < 1.0:
        from app.analytics.metrics import InvalidSeries
        raise InvalidSeries("confidence must be in [0.5, 1), e.g. 0.95", field="confidence")
    ewma = ewma_forecast(r, confidence)
    garch: ModelForecast | None = None
    note: str | None = None
    if r.size < MIN_GARCH_PERIODS:
        note = f"GARCH(1,1) needs at least {MIN_GARCH_PERIODS} daily returns, got {r.size}"
    elif float(np.mean(r * r)) == 0.0:
        note = "GARCH(1,1) cannot be fitted to a series without variation"
    else:
        try:
            garch = garch_forecast(r, confidence)
        except (ValueError, np.linalg.LinAlgError, RuntimeError) as exc:
            note = f"GARCH(1,1) fit failed: {exc}"
        else:
            if not all(math.isfinite(x) for x in (garch.next_day_volatility, garch.next_month_volatility)):
                garch, note = None, "GARCH(1,1) fit produced no finite forecast"
            elif not garch.converged:
                note = "GARCH(1,1) optimizer did not report convergence; treat with care"
    return Forecast(periods=int(r.size), confidence=confidence, month_periods=MONTH, ewma=ewma, garch=garch,
                    garch_note=note)
