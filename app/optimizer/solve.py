"""Portfolio optimisation with Riskfolio-Lib. Runs only in the optimizer's worker processes, which
import this module (and so Riskfolio, pandas and cvxpy) once; the API process never does.

Riskfolio returns None when a problem fails and never looks at the solver's status, so every cvxpy
solve is recorded here (status, solver, time) and checked; infeasible constraints are diagnosed to
name the constraint at fault. The solver is CLARABEL, named explicitly.

Units: `Problem.returns` are simple returns per period (daily by default); everything reported is
annualised with `periods_per_year` (returns ×P, volatility ×√P), and the annual risk-free rate is
divided by P for Riskfolio, which wants it in the returns' own period.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
import warnings
from typing import Any

import cvxpy as cp
import numpy as np
import pandas as pd
import riskfolio as rp

from app.optimizer.problem import (
    COVARIANCE_CODES,
    OBJECTIVE_CODES,
    RISK_CODES,
    RISK_PARITY_MEASURES,
    Problem,
    SolveError,
    max_return_under_bounds,
    weight_bounds,
)

SOLVER = "CLARABEL"
OK_STATUSES = {cp.OPTIMAL, cp.OPTIMAL_INACCURATE}
INFEASIBLE_STATUSES = {cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE}

# --- every cvxpy solve leaves a record -------------------------------------------------------------
_SOLVES: list[dict[str, Any]] = []
_original_solve = cp.Problem.solve


def _recording_solve(self: cp.Problem, *args: Any, **kwargs: Any) -> Any:
    started = time.perf_counter()
    try:
        return _original_solve(self, *args, **kwargs)
    finally:
        stats = self.solver_stats
        _SOLVES.append({
            "solver": kwargs.get("solver") or (stats.solver_name if stats else None),
            "status": self.status,
            "ms": (time.perf_counter() - started) * 1000,
            "iterations": getattr(stats, "num_iters", None) if stats else None,
        })


if not getattr(cp.Problem.solve, "_wt_recording", False):
    _recording_solve._wt_recording = True  # type: ignore[attr-defined]
    cp.Problem.solve = _recording_solve  # type: ignore[method-assign]


@contextlib.contextmanager
def _quiet() -> Any:
    """Riskfolio prints its failures and pandas warns; neither belongs in our logs."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --- estimation ------------------------------------------------------------------------------------
def _mu_method(p: Problem) -> tuple[str, dict[str, Any]]:
    if p.expected_returns == "ewma":
        return "ewma1", {"d": 0.5 ** (1.0 / p.ewma_halflife)}
    return "hist", {}


def _frame(p: Problem) -> pd.DataFrame:
    return pd.DataFrame(np.asarray(p.returns, dtype=float), columns=list(p.symbols))


def _portfolio(p: Problem, X: pd.DataFrame) -> Any:
    port = rp.Portfolio(returns=X, alpha=p.alpha)
    port.solvers = [SOLVER]
    if p.time_limit:
        port.sol_params = {SOLVER: {"time_limit": float(p.time_limit)}}
    method_mu, dict_mu = _mu_method(p)
    with _quiet():
        port.assets_stats(method_mu=method_mu, method_cov=COVARIANCE_CODES[p.covariance], dict_mu=dict_mu)
    _apply_constraints(port, p)
    return port


def _apply_constraints(port: Any, p: Problem, *, with_targets: bool = True) -> None:
    n = len(p.symbols)
    lo, hi = weight_bounds(p)
    if p.long_only:
        port.sht = False
    else:
        port.sht = True
        port.uppersht = port.budgetsht = float(p.max_short)
        port.upperlng = 1.0 + float(p.max_short)
    rows, rhs = [], []
    floor = 0.0 if p.long_only else -1.0
    for i in range(n):
        if hi[i] < 1.0:
            row = np.zeros(n)
            row[i] = 1.0
            rows.append(row)
            rhs.append(hi[i])
        if lo[i] > floor:
            row = np.zeros(n)
            row[i] = -1.0
            rows.append(row)
            rhs.append(-lo[i])
    if rows:  # Riskfolio's linear constraints read A·w ≤ B
        port.ainequality = np.vstack(rows)
        port.binequality = np.array(rhs, ndmin=2).T
    else:
        port.ainequality = port.binequality = None
    port.lowerret = None
    port.upperdev = port.upperCVaR = port.upperCDaR = port.uppermad = port.uppermdd = None
    if not with_targets:
        return
    P = p.periods_per_year
    if p.target_return is not None:
        port.lowerret = p.target_return / P
    if p.target_risk is not None:
        t = p.target_risk
        if p.risk_measure == "variance":
            port.upperdev = t / math.sqrt(P)
        elif p.risk_measure == "cvar":
            port.upperCVaR = t
        elif p.risk_measure == "cdar":
            port.upperCDaR = t
        elif p.risk_measure == "mad":
            port.uppermad = t
        elif p.risk_measure == "max_drawdown":
            port.uppermdd = t


def _bl_matrices(p: Problem) -> tuple[pd.DataFrame, pd.DataFrame]:
    index = {s: i for i, s in enumerate(p.symbols)}
    P = np.zeros((len(p.views), len(p.symbols)))
    Q = np.zeros((len(p.views), 1))
    for k, view in enumerate(p.views):
        P[k, index[view.symbol]] = 1.0
        if view.versus is not None:
            P[k, index[view.versus]] = -1.0
        Q[k, 0] = view.annual_return / p.periods_per_year
    return pd.DataFrame(P, columns=list(p.symbols)), pd.DataFrame(Q)


def _prior(p: Problem) -> np.ndarray:
    n = len(p.symbols)
    if p.prior_weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(p.prior_weights, dtype=float)
    return w / w.sum()


def black_litterman_inputs(p: Problem, port: Any) -> dict[str, Any]:
    """Compute the Black-Litterman posterior on `port` (Riskfolio's He–Litterman form: τ = 1/T,
    Ω = diag(P τΣ Pᵀ), equilibrium Π = δ Σ w_mkt). Returns the figures for the response."""
    rf = p.risk_free_rate / p.periods_per_year
    w = _prior(p)
    mu = np.asarray(port.mu, dtype=float).ravel()
    cov = np.asarray(port.cov, dtype=float)
    warnings_: list[str] = []
    delta = p.bl_delta
    if delta is None:
        implied = float((mu @ w - rf) / (w @ cov @ w))
        if implied > 0 and math.isfinite(implied):
            delta = implied
        else:
            delta = 2.5
            warnings_.append("the prior portfolio's excess return is not positive, so its implied risk "
                             "aversion is meaningless; used delta = 2.5")
    Pm, Qm = _bl_matrices(p)
    method_mu, dict_mu = _mu_method(p)
    with _quiet():
        port.blacklitterman_stats(Pm, Qm, rf=rf, w=pd.DataFrame(w, index=list(p.symbols)), delta=delta,
                                  eq=True, method_mu=method_mu, method_cov=COVARIANCE_CODES[p.covariance],
                                  dict_mu=dict_mu)
    prior = delta * cov @ w + rf
    return {"delta": delta, "prior_weights": w, "prior_returns": prior,
            "posterior_returns": np.asarray(port.mu_bl, dtype=float).ravel(), "warnings": warnings_}


# --- solving ----------------------------------------------------------------------------------------
def _checked_weights(result: Any, p: Problem, what: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Weights from a Riskfolio result, after checking that it exists and the solver said optimal."""
    solves = list(_SOLVES)
    last = solves[-1] if solves else None
    if result is None or (last is not None and last["status"] not in OK_STATUSES):
        status = last["status"] if last else "no solution"
        if last is not None and last["status"] in INFEASIBLE_STATUSES | {cp.UNBOUNDED, cp.UNBOUNDED_INACCURATE}:
            raise _diagnose(p, status)
        if last is not None and last["status"] == cp.USER_LIMIT:
            raise SolveError(f"{SOLVER} hit its time limit ({p.time_limit:g} s) before solving the {what}",
                             None, 504, solver=SOLVER, solver_status=status)
        raise SolveError(f"{SOLVER} found no solution for the {what} (status: {status})", None, 502,
                         solver=SOLVER, solver_status=status)
    w = np.asarray(result, dtype=float).ravel()
    if w.shape[0] != len(p.symbols) or not np.all(np.isfinite(w)):
        raise SolveError(f"the solver returned unusable weights for the {what}", None, 502, solver=SOLVER)
    info = {"solver": SOLVER if solves else "closed form",
            "status": last["status"] if last else "optimal",
            "solver_ms": round(sum(s["ms"] for s in solves), 3)}
    return w, info


def _clean(w: np.ndarray, p: Problem) -> np.ndarray:
    w = w.copy()
    if p.long_only:
        w[w < 0] = 0.0
    w[np.abs(w) < 1e-10] = 0.0
    s = w.sum()
    return w / s if s != 0 else w


def _diagnose(p: Problem, status: str) -> SolveError:
    """Name the constraint that makes the problem infeasible."""
    P = p.periods_per_year
    lo, hi = weight_bounds(p)
    X = _frame(p)
    method_mu, dict_mu = _mu_method(p)
    with _quiet():
        mu = np.asarray(rp.ParamsEstimation.mean_vector(X, method=method_mu, **dict_mu), dtype=float).ravel()
    if p.target_return is not None:
        best = max_return_under_bounds(mu, lo, hi) * P
        if p.target_return > best + 1e-12:
            return SolveError(f"target_return {p.target_return:.4%} a year is not achievable: the most this "
                              f"universe returns under the weight bounds is {best:.4%}",
                              "constraints.target_return", 422, solver_status=status, achievable=best)
    if p.target_risk is not None:
        q = Problem(**{**p.__dict__, "target_return": None, "target_risk": None, "objective": "min_risk",
                       "model": "mean_variance" if p.model == "black_litterman" else p.model})
        least = None
        try:
            least = _mean_variance(q)["risk"]
        except SolveError:
            pass
        if least is not None and p.target_risk < least:
            return SolveError(f"target_risk {p.target_risk:.6g} is not achievable: the least {p.risk_measure} "
                              f"risk under the weight bounds is {least:.6g}", "constraints.target_risk", 422,
                              solver_status=status, achievable=least)
        if p.target_return is not None:
            return SolveError("target_return and target_risk cannot both be met: reaching the target return "
                              "takes more risk than target_risk allows", "constraints.target_risk", 422,
                              solver_status=status)
    if p.target_return is not None:
        return SolveError("target_return cannot be met together with the other constraints",
                          "constraints.target_return", 422, solver_status=status)
    return SolveError(f"the constraints are infeasible (solver status: {status}); check min_weight and "
                      "max_weight", "constraints", 422, solver_status=status)


def _risk_value(w: np.ndarray, p: Problem, X: pd.DataFrame, cov: np.ndarray) -> float:
    """The chosen risk measure of the portfolio: annual volatility for variance; per-period CVaR and
    MAD; CDaR and max drawdown as fractions of uncompounded cumulative returns."""
    if p.risk_measure == "variance":
        return float(math.sqrt(max(w @ cov @ w, 0.0) * p.periods_per_year))
    with _quiet():
        return float(rp.RiskFunctions.Sharpe_Risk(returns=X, w=pd.DataFrame(w, index=list(p.symbols)), cov=cov,
                                                  rm=RISK_CODES[p.risk_measure], rf=0, alpha=p.alpha))


def _risk_contributions(w: np.ndarray, p: Problem, X: pd.DataFrame, cov: np.ndarray) -> np.ndarray:
    """Each asset's share of the portfolio's risk (sums to 1)."""
    if p.risk_measure == "variance":
        total = float(w @ cov @ w)
        rc = w * (cov @ w) / total if total > 0 else np.zeros_like(w)
    else:
        with _quiet():
            rc = np.asarray(rp.RiskFunctions.Risk_Contribution(
                pd.DataFrame(w, index=list(p.symbols)), X, cov=cov, rm=RISK_CODES[p.risk_measure], rf=0,
                alpha=p.alpha, solver=SOLVER), dtype=float).ravel()
        s = rc.sum()
        rc = rc / s if s != 0 else rc
    return rc


def _summary(w: np.ndarray, p: Problem, mu: np.ndarray, cov: np.ndarray, X: pd.DataFrame,
             *, contributions: bool = True) -> dict[str, Any]:
    P = p.periods_per_year
    ret = float(mu @ w) * P
    vol = float(math.sqrt(max(w @ cov @ w, 0.0) * P))
    out: dict[str, Any] = {
        "weights": {s: float(x) for s, x in zip(p.symbols, w)},
        "expected_return": ret,
        "volatility": vol,
        "sharpe": (ret - p.risk_free_rate) / vol if vol > 0 else None,
        "risk": _risk_value(w, p, X, cov),
    }
    if contributions:
        out["risk_contributions"] = {s: float(x) for s, x in zip(p.symbols, _risk_contributions(w, p, X, cov))}
    return out


def _check_sharpe_possible(p: Problem, mu: np.ndarray) -> None:
    if p.objective == "max_sharpe" and float(mu.max()) * p.periods_per_year <= p.risk_free_rate:
        raise SolveError("max_sharpe needs at least one asset whose expected return exceeds the risk-free "
                         f"rate ({p.risk_free_rate:.4%}); none does in this history — use min_risk or "
                         "utility instead", "objective", 422)


def _mean_variance(p: Problem, *, contributions: bool = True) -> dict[str, Any]:
    X = _frame(p)
    port = _portfolio(p, X)
    rf = p.risk_free_rate / p.periods_per_year
    extra: dict[str, Any] = {}
    warnings_: list[str] = []
    if p.model == "black_litterman":
        bl = black_litterman_inputs(p, port)
        warnings_ += bl.pop("warnings")
        mu, cov, model, hist = (np.asarray(port.mu_bl, dtype=float).ravel(), np.asarray(port.cov_bl, dtype=float),
                                "BL", False)
        P = p.periods_per_year
        extra["black_litterman"] = {
            "delta": bl["delta"],
            "prior_weights": {s: float(x) for s, x in zip(p.symbols, bl["prior_weights"])},
            "prior_returns": {s: float(x) * P for s, x in zip(p.symbols, bl["prior_returns"])},
            "posterior_returns": {s: float(x) * P for s, x in zip(p.symbols, bl["posterior_returns"])},
        }
    else:
        mu, cov, model, hist = (np.asarray(port.mu, dtype=float).ravel(), np.asarray(port.cov, dtype=float),
                                "Classic", True)
    _check_sharpe_possible(p, mu)
    _SOLVES.clear()
    with _quiet():
        result = port.optimization(model=model, rm=RISK_CODES[p.risk_measure], obj=OBJECTIVE_CODES[p.objective],
                                   rf=rf, l=p.risk_aversion, hist=hist)
    w, info = _checked_weights(result, p, "optimisation")
    if info["status"] == cp.OPTIMAL_INACCURATE:
        warnings_.append(f"{SOLVER} reports an inaccurate optimum; treat the weights with care")
    w = _clean(w, p)
    out = _summary(w, p, mu, cov, X, contributions=contributions)
    out.update(info)
    out.update(extra)
    out["warnings"] = warnings_
    return out


def _risk_parity(p: Problem) -> dict[str, Any]:
    if p.risk_measure not in RISK_PARITY_MEASURES:
        raise SolveError(f"risk_parity does not support risk_measure {p.risk_measure!r}; use one of "
                         f"{', '.join(RISK_PARITY_MEASURES)}", "risk_measure", 422)
    X = _frame(p)
    port = _portfolio(p, X)
    rf = p.risk_free_rate / p.periods_per_year
    _SOLVES.clear()
    with _quiet():
        result = port.rp_optimization(model="Classic", rm=RISK_CODES[p.risk_measure], rf=rf, b=None, hist=True)
    w, info = _checked_weights(result, p, "risk parity portfolio")
    w = _clean(w, p)
    out = _summary(w, p, np.asarray(port.mu, dtype=float).ravel(), np.asarray(port.cov, dtype=float), X)
    out.update(info)
    out["warnings"] = []
    return out


def _hrp(p: Problem) -> dict[str, Any]:
    X = _frame(p)
    lo, hi = weight_bounds(p)
    warnings_: list[str] = []
    if not p.long_only:
        warnings_.append("hrp is long-only by construction; long_only=false has no effect")
    if p.target_return is not None or p.target_risk is not None:
        warnings_.append("hrp ignores target_return and target_risk")
    idx = list(p.symbols)
    port = rp.HCPortfolio(returns=X, alpha=p.alpha, solvers=[SOLVER],
                          w_min=pd.Series(np.maximum(lo, 0.0), index=idx), w_max=pd.Series(hi, index=idx))
    method_mu, dict_mu = _mu_method(p)
    _SOLVES.clear()
    with _quiet():
        result = port.optimization(model="HRP", codependence="pearson", rm=RISK_CODES[p.risk_measure],
                                   rf=p.risk_free_rate / p.periods_per_year, linkage="single",
                                   method_mu=method_mu, method_cov=COVARIANCE_CODES[p.covariance],
                                   dict_mu=dict_mu, leaf_order=True)
    w, info = _checked_weights(result, p, "hierarchical risk parity portfolio")
    w = _clean(w, p)
    with _quiet():
        mu = np.asarray(rp.ParamsEstimation.mean_vector(X, method=method_mu, **dict_mu), dtype=float).ravel()
        cov = np.asarray(rp.ParamsEstimation.covar_matrix(X, method=COVARIANCE_CODES[p.covariance]), dtype=float)
    out = _summary(w, p, mu, cov, X)
    out.update(info)
    out["warnings"] = warnings_
    return out


def optimize(p: Problem) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        if p.model in ("mean_variance", "black_litterman"):
            out = _mean_variance(p)
        elif p.model == "risk_parity":
            out = _risk_parity(p)
        elif p.model == "hrp":
            out = _hrp(p)
        else:
            raise SolveError(f"unknown model {p.model!r}", "model", 422)
    except np.linalg.LinAlgError as exc:
        raise _degenerate(p, exc) from None
    out["model"] = p.model
    out["objective"] = p.objective if p.model in ("mean_variance", "black_litterman") else None
    out["risk_measure"] = p.risk_measure
    out["observations"] = int(np.asarray(p.returns).shape[0])
    out["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 3)
    return out


def _degenerate(p: Problem, exc: Exception) -> SolveError:
    where = "views" if p.model == "black_litterman" and p.views else None
    return SolveError(f"the inputs are numerically degenerate ({exc}): e.g. assets that move identically"
                      + (" or a view between them" if where else ""), where, 422)


def frontier(p: Problem, points: int) -> dict[str, Any]:
    """`points` portfolios from the least-risk one to the highest-return one, each the least risky
    portfolio for evenly spaced target returns in between."""
    started = time.perf_counter()
    if p.model not in ("mean_variance", "black_litterman"):
        raise SolveError("the efficient frontier is defined for mean_variance and black_litterman",
                         "model", 422)
    warnings_: list[str] = []
    if p.target_return is not None:
        warnings_.append("target_return is ignored: the frontier sweeps the target return itself")
    base = Problem(**{**p.__dict__, "target_return": None})
    try:
        low = _mean_variance(Problem(**{**base.__dict__, "objective": "min_risk"}), contributions=False)
        high = _mean_variance(Problem(**{**base.__dict__, "objective": "max_return"}), contributions=False)
    except np.linalg.LinAlgError as exc:
        raise _degenerate(p, exc) from None
    r_lo, r_hi = low["expected_return"], high["expected_return"]
    out_points = [low]
    if points > 2 and r_hi - r_lo > 1e-9:
        for target in np.linspace(r_lo, r_hi, points)[1:-1]:
            q = Problem(**{**base.__dict__, "objective": "min_risk", "target_return": float(target)})
            try:
                out_points.append(_mean_variance(q, contributions=False))
            except SolveError as exc:
                warnings_.append(f"point at return {target:.4%} skipped: {exc.detail}")
    if r_hi - r_lo > 1e-9:
        out_points.append(high)
    else:
        warnings_.append("every feasible portfolio has the same expected return; the frontier is one point")
    keep = ("expected_return", "volatility", "risk", "sharpe", "weights", "status")
    return {
        "model": p.model,
        "risk_measure": p.risk_measure,
        "points": [{k: pt[k] for k in keep} for pt in out_points],
        "solver": SOLVER,
        "warnings": warnings_ + [w for pt in out_points for w in pt.get("warnings", [])],
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
    }


def dispatch(op: str, payload: Any) -> Any:
    """The entry point a worker calls: ('optimize', Problem) or ('frontier', (Problem, points))."""
    if op == "optimize":
        return optimize(payload)
    if op == "frontier":
        problem, points = payload
        return frontier(problem, points)
    if op == "ping":
        return {"pong": True}
    if op == "sleep":  # for tests of the time limit: a job that outlives it
        time.sleep(float(payload))
        return {"slept": payload}
    raise SolveError(f"unknown operation {op!r}", None, 500)
