"""solve.py against independent solutions: PyPortfolioOpt, direct cvxpy formulations, closed forms."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
from pypfopt import EfficientFrontier
from sklearn.covariance import LedoitWolf

from app.optimizer import solve
from app.optimizer.problem import Problem, SolveError, View

P = 252


def synthetic(seed: int, t: int = 600, n: int = 12) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 0.01, (n, n))
    cov = a @ a.T / n * 0.6 + np.diag(rng.uniform(0.5e-4, 2e-4, n))
    mu = rng.normal(0.0006, 0.0004, n)
    return [f"S{i:02d}" for i in range(n)], rng.multivariate_normal(mu, cov, size=t)


def weights(result: dict) -> np.ndarray:
    return np.array(list(result["weights"].values()))


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("rf", [0.0, 0.03])
def test_max_sharpe_matches_pypfopt(seed: int, rf: float) -> None:
    symbols, R = synthetic(seed)
    ours = solve.optimize(Problem(symbols=symbols, returns=R, objective="max_sharpe", risk_free_rate=rf))
    ef = EfficientFrontier(R.mean(axis=0), np.cov(R.T), weight_bounds=(0, 1))
    theirs = np.array(list(ef.max_sharpe(risk_free_rate=rf / P).values()))
    assert np.abs(weights(ours) - theirs).max() < 1e-4
    assert ours["solver"] == "CLARABEL" and ours["status"] == "optimal"
    # the reported figures are the annualised ones of those weights
    w = weights(ours)
    assert ours["expected_return"] == pytest.approx(R.mean(axis=0) @ w * P, rel=1e-9)
    assert ours["volatility"] == pytest.approx(np.sqrt(w @ np.cov(R.T) @ w * P), rel=1e-9)
    assert ours["sharpe"] == pytest.approx((ours["expected_return"] - rf) / ours["volatility"], rel=1e-9)


def test_max_sharpe_with_weight_cap_matches_pypfopt() -> None:
    symbols, R = synthetic(7)
    ours = solve.optimize(Problem(symbols=symbols, returns=R, max_weight=np.full(len(symbols), 0.15)))
    ef = EfficientFrontier(R.mean(axis=0), np.cov(R.T), weight_bounds=(0, 0.15))
    theirs = np.array(list(ef.max_sharpe(risk_free_rate=0).values()))
    assert np.abs(weights(ours) - theirs).max() < 1e-4
    assert weights(ours).max() <= 0.15 + 1e-7


@pytest.mark.parametrize("seed", [4, 5])
def test_min_variance_matches_pypfopt(seed: int) -> None:
    symbols, R = synthetic(seed)
    ours = solve.optimize(Problem(symbols=symbols, returns=R, objective="min_risk"))
    ef = EfficientFrontier(R.mean(axis=0), np.cov(R.T), weight_bounds=(0, 1))
    theirs = np.array(list(ef.min_volatility().values()))
    assert np.abs(weights(ours) - theirs).max() < 1e-4


def test_min_variance_ledoit_wolf_matches_direct_cvxpy() -> None:
    symbols, R = synthetic(6, t=200, n=30)
    ours = solve.optimize(Problem(symbols=symbols, returns=R, objective="min_risk", covariance="ledoit_wolf"))
    S = LedoitWolf().fit(R).covariance_
    w = cp.Variable(len(symbols))
    cp.Problem(cp.Minimize(cp.quad_form(w, cp.psd_wrap(S))), [cp.sum(w) == 1, w >= 0]).solve(solver="CLARABEL")
    assert np.abs(weights(ours) - w.value).max() < 1e-4


def test_min_cvar_matches_rockafellar_uryasev_lp() -> None:
    symbols, R = synthetic(8, t=400, n=8)
    alpha = 0.05
    ours = solve.optimize(Problem(symbols=symbols, returns=R, objective="min_risk", risk_measure="cvar", alpha=alpha))
    T, n = R.shape
    w, z, u = cp.Variable(n), cp.Variable(), cp.Variable(T)
    cvar = z + cp.sum(u) / (alpha * T)
    cp.Problem(cp.Minimize(cvar), [u >= 0, u >= -R @ w - z, cp.sum(w) == 1, w >= 0]).solve(solver="CLARABEL")
    assert ours["risk"] == pytest.approx(cvar.value, rel=1e-4)
    assert sum(ours["risk_contributions"].values()) == pytest.approx(1.0)


def test_black_litterman_posterior_matches_closed_form() -> None:
    symbols, R = synthetic(9, n=6)
    prior = np.array([0.3, 0.2, 0.2, 0.1, 0.1, 0.1])
    views = [View("S00", 0.08), View("S01", 0.02, versus="S02")]
    delta, rf = 3.0, 0.02
    out = solve.optimize(Problem(symbols=symbols, returns=R, model="black_litterman", views=views,
                                 prior_weights=prior, bl_delta=delta, risk_free_rate=rf, objective="min_risk"))
    # closed form (Meucci's "alternative" algebra, so not the same expression Riskfolio evaluates)
    T = R.shape[0]
    S = np.cov(R.T)
    tau = 1 / T
    Pm = np.array([[1, 0, 0, 0, 0, 0], [0, 1, -1, 0, 0, 0]], dtype=float)
    Q = np.array([0.08, 0.02]) / P
    omega = np.diag(np.diag(Pm @ (tau * S) @ Pm.T))
    pi = delta * S @ prior
    posterior = pi + tau * S @ Pm.T @ np.linalg.solve(Pm @ (tau * S) @ Pm.T + omega, Q - Pm @ pi) + rf / P
    bl = out["black_litterman"]
    got = np.array([bl["posterior_returns"][s] for s in symbols]) / P
    np.testing.assert_allclose(got, posterior, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(np.array([bl["prior_returns"][s] for s in symbols]) / P, pi + rf / P, rtol=1e-10)
    assert bl["delta"] == delta
    # the absolute view pulls S00 towards 8 % a year
    assert abs(bl["posterior_returns"]["S00"] - 0.08) < abs(bl["prior_returns"]["S00"] - 0.08)


def test_black_litterman_equal_prior_and_implied_delta() -> None:
    symbols, R = synthetic(10, n=5)
    out = solve.optimize(Problem(symbols=symbols, returns=R, model="black_litterman", views=[View("S03", 0.1)]))
    bl = out["black_litterman"]
    assert all(w == pytest.approx(0.2) for w in bl["prior_weights"].values())
    w = np.full(5, 0.2)
    implied = (R.mean(axis=0) @ w) / (w @ np.cov(R.T) @ w)
    assert bl["delta"] == pytest.approx(implied) if implied > 0 else bl["delta"] == 2.5
    assert sum(out["weights"].values()) == pytest.approx(1.0)


@pytest.mark.parametrize("rm", ["variance", "cvar", "cdar", "mad", "max_drawdown"])
def test_hrp_weights_positive_and_sum_to_one(rm: str) -> None:
    symbols, R = synthetic(11, n=15)
    out = solve.optimize(Problem(symbols=symbols, returns=R, model="hrp", risk_measure=rm))
    w = weights(out)
    assert (w > 0).all()
    assert w.sum() == pytest.approx(1.0, abs=1e-12)


def test_hrp_respects_max_weight() -> None:
    symbols, R = synthetic(12, n=10)
    out = solve.optimize(Problem(symbols=symbols, returns=R, model="hrp", max_weight=np.full(10, 0.12)))
    assert weights(out).max() <= 0.12 + 1e-9


def test_risk_parity_equalises_variance_contributions() -> None:
    symbols, R = synthetic(13, n=10)
    out = solve.optimize(Problem(symbols=symbols, returns=R, model="risk_parity"))
    rc = np.array(list(out["risk_contributions"].values()))
    np.testing.assert_allclose(rc, np.full(10, 0.1), atol=1e-4)


def test_risk_parity_rejects_max_drawdown() -> None:
    symbols, R = synthetic(13, n=4)
    with pytest.raises(SolveError) as exc:
        solve.optimize(Problem(symbols=symbols, returns=R, model="risk_parity", risk_measure="max_drawdown"))
    assert exc.value.field == "risk_measure" and exc.value.status == 422


def test_unreachable_target_return_names_the_constraint() -> None:
    symbols, R = synthetic(14)
    with pytest.raises(SolveError) as exc:
        solve.optimize(Problem(symbols=symbols, returns=R, objective="min_risk", target_return=3.0))
    assert exc.value.field == "constraints.target_return" and exc.value.status == 422
    assert exc.value.extra["solver_status"] == "infeasible"
    assert "not achievable" in exc.value.detail


def test_unreachable_target_risk_names_the_constraint() -> None:
    symbols, R = synthetic(14)
    with pytest.raises(SolveError) as exc:
        solve.optimize(Problem(symbols=symbols, returns=R, objective="max_return", target_risk=0.001))
    assert exc.value.field == "constraints.target_risk"


def test_target_return_is_met() -> None:
    symbols, R = synthetic(15)
    out = solve.optimize(Problem(symbols=symbols, returns=R, objective="min_risk", target_return=0.2))
    assert out["expected_return"] >= 0.2 - 1e-6


def test_infeasible_bounds_detected_from_solver_status() -> None:
    symbols, R = synthetic(16)  # 12 assets × at least 10 % cannot sum to 1: Riskfolio returns None
    with pytest.raises(SolveError) as exc:
        solve.optimize(Problem(symbols=symbols, returns=R, min_weight=np.full(12, 0.1)))
    assert exc.value.field == "constraints" and exc.value.extra["solver_status"] == "infeasible"


def test_solver_time_limit_is_reported_not_silenced() -> None:
    symbols, R = synthetic(17, n=40)
    with pytest.raises(SolveError) as exc:
        solve.optimize(Problem(symbols=symbols, returns=R, risk_measure="cvar", time_limit=1e-6))
    assert exc.value.status == 504 and exc.value.extra["solver_status"] == "user_limit"


def test_max_sharpe_without_any_excess_return_is_refused() -> None:
    symbols, R = synthetic(18)
    with pytest.raises(SolveError) as exc:
        solve.optimize(Problem(symbols=symbols, returns=R - 0.01, objective="max_sharpe"))
    assert exc.value.field == "objective"


def test_utility_matches_direct_cvxpy() -> None:
    symbols, R = synthetic(19)
    lam = 3.0
    out = solve.optimize(Problem(symbols=symbols, returns=R, objective="utility", risk_aversion=lam))
    mu, S = R.mean(axis=0), np.cov(R.T)
    w = cp.Variable(len(symbols))
    # scaled ×10⁴: daily-sized numbers are below the solver's default tolerances otherwise
    utility = 1e4 * (mu @ w - lam * cp.quad_form(w, cp.psd_wrap(S)))
    cp.Problem(cp.Maximize(utility), [cp.sum(w) == 1, w >= 0]).solve(solver="CLARABEL")
    assert np.abs(weights(out) - w.value).max() < 1e-4


def test_frontier_runs_from_min_risk_to_max_return() -> None:
    symbols, R = synthetic(20)
    out = solve.frontier(Problem(symbols=symbols, returns=R), 8)
    pts = out["points"]
    assert len(pts) == 8
    rets = [p["expected_return"] for p in pts]
    vols = [p["volatility"] for p in pts]
    assert all(b >= a - 1e-9 for a, b in zip(rets, rets[1:]))
    assert all(b >= a - 1e-7 for a, b in zip(vols, vols[1:]))
    min_var = solve.optimize(Problem(symbols=symbols, returns=R, objective="min_risk"))
    assert vols[0] == pytest.approx(min_var["volatility"], rel=1e-6)
    assert rets[-1] == pytest.approx(R.mean(axis=0).max() * P, rel=1e-6)  # all in the best asset
    for p in pts:
        assert sum(p["weights"].values()) == pytest.approx(1.0)


def test_view_between_identical_assets_is_a_422_not_a_crash() -> None:
    symbols, R = synthetic(21, n=4)
    R = np.column_stack([R, R[:, 0]])  # S04 moves exactly like S00
    try:
        out = solve.optimize(Problem(symbols=symbols + ["S04"], returns=R, model="black_litterman",
                                     covariance="ledoit_wolf", views=[View("S00", 0.02, versus="S04")]))
    except SolveError as exc:
        assert exc.status == 422
    else:  # Riskfolio may regularise its way through; then the answer must still be a portfolio
        assert sum(out["weights"].values()) == pytest.approx(1.0)


def test_min_variance_oas_matches_direct_cvxpy() -> None:
    from sklearn.covariance import OAS

    symbols, R = synthetic(22, t=150, n=25)
    ours = solve.optimize(Problem(symbols=symbols, returns=R, objective="min_risk", covariance="oas"))
    S = OAS().fit(R).covariance_
    w = cp.Variable(len(symbols))
    cp.Problem(cp.Minimize(1e4 * cp.quad_form(w, cp.psd_wrap(S))), [cp.sum(w) == 1, w >= 0]).solve(solver="CLARABEL")
    assert np.abs(weights(ours) - w.value).max() < 1e-4


def test_ewma_expected_returns_are_used() -> None:
    symbols, R = synthetic(23, n=6)
    halflife = 20.0
    out = solve.optimize(Problem(symbols=symbols, returns=R, objective="max_return", expected_returns="ewma",
                                 ewma_halflife=halflife))
    d = 0.5 ** (1 / halflife)  # pandas ewm(alpha=1-d, adjust=True), last value, computed by hand
    k = np.arange(R.shape[0])[::-1]
    mu = (d ** k) @ R / (d ** k).sum()
    assert out["weights"][symbols[int(np.argmax(mu))]] == pytest.approx(1.0, abs=1e-6)  # all in the best
    assert out["expected_return"] == pytest.approx(mu.max() * P, rel=1e-6)


def test_min_mad_matches_direct_lp() -> None:
    symbols, R = synthetic(24, t=300, n=8)
    ours = solve.optimize(Problem(symbols=symbols, returns=R, objective="min_risk", risk_measure="mad"))
    w = cp.Variable(len(symbols))
    mad = cp.sum(cp.abs((R - R.mean(axis=0)) @ w)) / R.shape[0]
    cp.Problem(cp.Minimize(1e3 * mad), [cp.sum(w) == 1, w >= 0]).solve(solver="CLARABEL")
    assert ours["risk"] == pytest.approx(mad.value, rel=1e-4)


def test_min_max_drawdown_matches_direct_lp() -> None:
    symbols, R = synthetic(25, t=300, n=8)
    ours = solve.optimize(Problem(symbols=symbols, returns=R, objective="min_risk", risk_measure="max_drawdown"))
    T, n = R.shape
    w, u, z = cp.Variable(n), cp.Variable(T + 1), cp.Variable()
    c = cp.cumsum(R @ w)  # uncompounded cumulative return
    cons = [cp.sum(w) == 1, w >= 0, u[0] == 0, u[1:] >= c, u[1:] >= u[:-1], z >= u[1:] - c]
    cp.Problem(cp.Minimize(1e3 * z), cons).solve(solver="CLARABEL")
    assert ours["risk"] == pytest.approx(z.value, rel=1e-4)
