"""app.analytics.metrics against empyrical-reloaded 0.7.1 and quantstats 0.0.86 where the conventions
agree; every deliberate difference is explained where it is tested. Plus hypothesis properties."""

from __future__ import annotations

import math
import warnings
from datetime import date, timedelta

import empyrical as ep
import numpy as np
import pandas as pd
import pytest
import quantstats as qs
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats as sps

from app.analytics import metrics as m

warnings.filterwarnings("ignore", module="quantstats")

RTOL = 1e-9


def _series(seed: int, n: int = 1500, mu: float = 0.0004, sd: float = 0.012, t_df: float | None = 4.0):
    rng = np.random.default_rng(seed)
    if t_df:
        x = rng.standard_t(t_df, n) * sd / math.sqrt(t_df / (t_df - 2)) + mu
    else:
        x = rng.normal(mu, sd, n)
    bench = 0.6 * x + rng.normal(0.0002, 0.007, n)
    return np.clip(x, -0.5, None), bench


def _pd(x: np.ndarray) -> pd.Series:
    return pd.Series(x, index=pd.bdate_range("2015-01-02", periods=len(x)))


SEEDS = [1, 2, 3, 11]


@pytest.mark.parametrize("seed", SEEDS)
def test_single_series_metrics_match_empyrical(seed: int) -> None:
    r, _ = _series(seed)
    rf_annual = 0.03
    rf = m.per_period_rate(rf_annual)
    assert m.cagr(r) == pytest.approx(ep.annual_return(r), rel=RTOL)
    assert m.annual_volatility(r) == pytest.approx(ep.annual_volatility(r), rel=RTOL)
    assert m.sharpe(r, rf) == pytest.approx(ep.sharpe_ratio(r, risk_free=rf), rel=RTOL)
    # Sortino and the downside deviation use the per-period risk-free rate as the target (MAR).
    assert m.downside_deviation(r, rf) == pytest.approx(ep.downside_risk(r, required_return=rf), rel=RTOL)
    assert m.sortino(r, rf) == pytest.approx(ep.sortino_ratio(r, required_return=rf), rel=RTOL)
    assert m.max_drawdown(r).max_drawdown == pytest.approx(ep.max_drawdown(r), rel=RTOL)
    assert m.calmar(r) == pytest.approx(ep.calmar_ratio(r), rel=RTOL)
    # Historical VaR: both are the linear-interpolated 5 % quantile; we report it as a positive loss.
    assert m.historical_var(r, 0.95) == pytest.approx(-ep.value_at_risk(r, cutoff=0.05), rel=RTOL)
    # CVaR: empyrical averages the floor((n-1)*0.05)+1 smallest returns; with distinct values that is
    # exactly our "every return at or below the quantile".
    assert m.historical_cvar(r, 0.95) == pytest.approx(-ep.conditional_value_at_risk(r, cutoff=0.05), rel=RTOL)
    assert m.historical_cvar(r, 0.99) == pytest.approx(-ep.conditional_value_at_risk(r, cutoff=0.01), rel=RTOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_benchmark_metrics_match_empyrical(seed: int) -> None:
    r, b = _series(seed)
    rf = m.per_period_rate(0.02)
    assert m.beta(r, b) == pytest.approx(ep.beta(r, b, risk_free=rf), rel=1e-8)
    # Deliberate difference: empyrical compounds the daily alpha, (1 + a_d) ** 252 - 1; we annualize
    # arithmetically (a_d * 252), as quantstats does. Compare the per-period alpha.
    daily_alpha = m.alpha(r, b, rf) / 252
    assert (1 + daily_alpha) ** 252 - 1 == pytest.approx(ep.alpha(r, b, risk_free=rf), rel=1e-8)
    # empyrical's excess_sharpe is the per-period information ratio; ours is annualized.
    assert m.information_ratio(r, b) == pytest.approx(ep.excess_sharpe(r, b) * math.sqrt(252), rel=1e-8)
    assert m.correlation(r, b) == pytest.approx(np.corrcoef(r, b)[0, 1], rel=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_metrics_match_quantstats(seed: int) -> None:
    r, b = _series(seed)
    rs, bs = _pd(r), _pd(b)
    rf_annual = 0.025
    rf = m.per_period_rate(rf_annual)
    # quantstats converts an annual rf with (1 + rf) ** (1/periods) - 1 as well.
    assert m.sharpe(r, rf) == pytest.approx(qs.stats.sharpe(rs, rf=rf_annual, periods=252), rel=RTOL)
    assert m.sortino(r, rf) == pytest.approx(qs.stats.sortino(rs, rf=rf_annual, periods=252), rel=RTOL)
    assert m.cagr(r) == pytest.approx(qs.stats.cagr(rs, periods=252), rel=RTOL)
    assert m.annual_volatility(r) == pytest.approx(qs.stats.volatility(rs, periods=252), rel=RTOL)
    assert m.max_drawdown(r).max_drawdown == pytest.approx(qs.stats.max_drawdown(rs), rel=RTOL)
    assert m.calmar(r) == pytest.approx(qs.stats.calmar(rs), rel=RTOL)
    assert m.skew(r) == pytest.approx(qs.stats.skew(rs), rel=1e-8)
    assert m.kurtosis(r) == pytest.approx(qs.stats.kurtosis(rs), rel=1e-8)
    # quantstats' value_at_risk is the Gaussian quantile (mean and ddof=1 std); ours is its negative.
    assert m.parametric_var(r, 0.95) == pytest.approx(-qs.stats.value_at_risk(rs, confidence=0.95), rel=RTOL)
    assert m.parametric_var(r, 0.99) == pytest.approx(-qs.stats.value_at_risk(rs, confidence=0.99), rel=RTOL)
    assert m.parametric_cvar(r, 0.95) == pytest.approx(
        -qs.stats.conditional_value_at_risk(rs, confidence=0.95, method="parametric"), rel=RTOL)
    assert m.historical_cvar(r, 0.95) == pytest.approx(
        -qs.stats.conditional_value_at_risk(rs, confidence=0.95, method="historical"), rel=RTOL)
    assert m.best_period(r)[0] == pytest.approx(qs.stats.best(rs))
    assert m.worst_period(r)[0] == pytest.approx(qs.stats.worst(rs))
    # No zero returns in this data, so quantstats' win_rate (which drops zeros) agrees with ours.
    assert m.positive_share(r) == pytest.approx(qs.stats.win_rate(rs), rel=RTOL)
    greeks = qs.stats.greeks(rs, bs, periods=252)
    assert m.beta(r, b) == pytest.approx(greeks["beta"], rel=1e-8)
    assert m.alpha(r, b, 0.0) == pytest.approx(greeks["alpha"], rel=1e-8)
    # quantstats' information_ratio is per period; ours is annualized (× sqrt(252)).
    assert m.information_ratio(r, b) == pytest.approx(qs.stats.information_ratio(rs, bs) * math.sqrt(252), rel=1e-8)


def test_positive_share_counts_zero_returns_unlike_quantstats() -> None:
    r = np.array([0.01, 0.0, -0.01, 0.0, 0.02])
    # Deliberate difference: 2 of 5 periods were positive; quantstats says 2 of the 3 non-zero ones.
    assert m.positive_share(r) == pytest.approx(0.4)
    assert qs.stats.win_rate(_pd(r)) == pytest.approx(2 / 3)


def test_skew_kurtosis_are_bias_corrected_like_scipy() -> None:
    r, _ = _series(5, n=200)
    assert m.skew(r) == pytest.approx(sps.skew(r, bias=False), rel=1e-10)
    assert m.kurtosis(r) == pytest.approx(sps.kurtosis(r, bias=False, fisher=True), rel=1e-10)


def test_cornish_fisher_reduces_to_gaussian_for_symmetric_mesokurtic_data() -> None:
    r, _ = _series(7, n=5000, t_df=None)
    cf, g = m.cornish_fisher_var(r, 0.95), m.parametric_var(r, 0.95)
    assert cf == pytest.approx(g, rel=0.02)
    # fat left tail → Cornish-Fisher VaR at 99 % exceeds the Gaussian one
    fat, _ = _series(8, n=5000, t_df=3.0)
    fat = fat - np.where(np.arange(fat.size) % 50 == 0, 0.05, 0.0)
    assert m.cornish_fisher_var(fat, 0.99) > m.parametric_var(fat, 0.99)


def test_cornish_fisher_known_value() -> None:
    # Hand computation of the textbook formula with the same G1/G2 inputs.
    r, _ = _series(9, n=300)
    s, k = sps.skew(r, bias=False), sps.kurtosis(r, bias=False)
    z = sps.norm.ppf(0.05)
    zcf = z + (z**2 - 1) * s / 6 + (z**3 - 3 * z) * k / 24 - (2 * z**3 - 5 * z) * s**2 / 36
    assert m.cornish_fisher_var(r, 0.95) == pytest.approx(-(r.mean() + zcf * r.std(ddof=1)), rel=1e-10)


def test_drawdown_dates_and_recovery() -> None:
    # wealth: 1 → 1.1 → 0.88 → 0.968 → 1.1616 ; peak at point 1, trough at 2, recovery at 4
    r = np.array([0.10, -0.20, 0.10, 0.20])
    dd = m.max_drawdown(r)
    assert dd.max_drawdown == pytest.approx(-0.2)
    assert (dd.peak_index, dd.trough_index, dd.recovery_index, dd.duration_periods) == (1, 2, 4, 3)
    assert dd.current_drawdown == 0.0
    # a first-period loss is a drawdown from the starting wealth of 1
    dd = m.max_drawdown(np.array([-0.1, 0.05]))
    assert dd.max_drawdown == pytest.approx(-0.1)
    assert dd.peak_index == 0 and dd.recovery_index is None
    assert dd.current_drawdown == pytest.approx(0.9 * 1.05 - 1)


def test_compute_metrics_maps_drawdown_to_dates() -> None:
    rng = np.random.default_rng(3)
    r = rng.normal(0, 0.01, 30)
    r[5] = -0.2
    r[6:] = np.abs(r[6:]) + 0.01  # recovers afterwards
    start = date(2024, 1, 1)
    points = [start + timedelta(days=i) for i in range(31)]
    rep = m.compute_metrics(r, dates=points)
    dd = m.max_drawdown(r)
    assert rep.drawdown.peak_date == points[dd.peak_index]
    assert rep.drawdown.trough_date == points[6]
    assert rep.drawdown.recovery_date == points[dd.recovery_index]
    assert rep.start_date == start and rep.end_date == points[-1]
    assert rep.worst_period.date == points[6]
    # one date per return: the start point has no date
    rep2 = m.compute_metrics(r, dates=points[1:])
    assert rep2.drawdown.trough_date == points[6]


def test_benchmark_inner_join_by_date() -> None:
    rng = np.random.default_rng(4)
    days = [date(2024, 1, 1) + timedelta(days=i) for i in range(60)]
    r = rng.normal(0, 0.01, 60)
    b = rng.normal(0, 0.01, 60)
    # benchmark misses every third day and has 5 extra days before the portfolio starts
    b_days = [date(2023, 12, 27) + timedelta(days=i) for i in range(5)] + [d for i, d in enumerate(days) if i % 3]
    b_vals = np.concatenate([rng.normal(0, 0.01, 5), b[[i for i in range(60) if i % 3]]])
    rep = m.compute_metrics(r, dates=days, benchmark_returns=b_vals, benchmark_dates=b_days)
    keep = [i for i in range(60) if i % 3]
    assert rep.benchmark is not None and rep.benchmark.periods == len(keep)
    assert rep.benchmark.beta == pytest.approx(m.beta(r[keep], b[keep]))
    # the portfolio metrics still use all 60 periods
    assert rep.periods == 60


def test_nan_and_short_input_are_clear_errors() -> None:
    with pytest.raises(m.InvalidSeries, match=r"returns\[2\] is not a finite number"):
        m.compute_metrics([0.01, 0.02, float("nan")] + [0.0] * 30)
    with pytest.raises(m.InvalidSeries, match="more than 100 %"):
        m.compute_metrics([0.01, -1.5] + [0.0] * 30)
    with pytest.raises(m.InsufficientData) as exc:
        m.compute_metrics([0.01] * 10)
    assert exc.value.needed == 20 and exc.value.got == 10
    assert "need at least 20 returns, got 10" in str(exc.value)
    with pytest.raises(m.InsufficientData) as exc:  # 99 % needs 100 observations for a tail
        m.compute_metrics(list(np.linspace(-0.01, 0.01, 50)), confidence=0.99)
    assert exc.value.needed == 100
    with pytest.raises(m.InvalidSeries, match="benchmark_dates"):
        m.compute_metrics([0.01] * 25, benchmark_returns=[0.01] * 24)
    with pytest.raises(m.InvalidSeries, match="confidence"):
        m.compute_metrics([0.01] * 25, confidence=1.0)


def test_constant_series_gives_none_not_nan() -> None:
    rep = m.compute_metrics([0.001] * 30, benchmark_returns=[0.002] * 30)
    assert rep.sharpe is None and rep.sortino is None and rep.calmar is None
    assert rep.skew is None and rep.kurtosis is None
    assert rep.volatility == 0.0 and rep.drawdown.max_drawdown == 0.0
    assert rep.benchmark is not None and rep.benchmark.beta is None and rep.benchmark.correlation is None
    assert rep.var_historical == pytest.approx(-0.001)


def test_horizon_scaling() -> None:
    r, _ = _series(12, n=500)
    assert m.historical_var(r, 0.95, horizon=10) == pytest.approx(m.historical_var(r, 0.95) * math.sqrt(10))
    z = sps.norm.ppf(0.95)
    assert m.parametric_var(r, 0.95, 10) == pytest.approx(-r.mean() * 10 + z * r.std(ddof=1) * math.sqrt(10))
    # with h periods Cornish-Fisher tends towards the Gaussian figure (skew/sqrt(h), kurtosis/h)
    cf_gap_1 = abs(m.cornish_fisher_var(r, 0.99) - m.parametric_var(r, 0.99))
    cf_gap_h = abs(m.cornish_fisher_var(r, 0.99, 25) - m.parametric_var(r, 0.99, 25)) / 5
    assert cf_gap_h < cf_gap_1


def test_contributions_match_direct_computation() -> None:
    rng = np.random.default_rng(5)
    cov = np.array([[0.0004, 0.0001, 0.0], [0.0001, 0.0002, 0.00005], [0.0, 0.00005, 0.0001]])
    x = rng.multivariate_normal([0.0005, 0.0002, 0.0001], cov, 800)
    w = np.array([0.5, 0.3, 0.1])  # 10 % cash
    c = m.contributions(w, x, 0.95)
    port = x @ w
    assert c.total_volatility == pytest.approx(port.std(ddof=1) * math.sqrt(252), rel=1e-10)
    assert c.total_var == pytest.approx(m.parametric_var(port, 0.95), rel=1e-10)
    assert c.total_cvar == pytest.approx(m.historical_cvar(port, 0.95), rel=1e-10)
    assert sum(c.component_volatility) == pytest.approx(c.total_volatility, rel=1e-12)
    assert sum(c.component_var) == pytest.approx(c.total_var, rel=1e-12)
    assert sum(c.component_cvar) == pytest.approx(c.total_cvar, rel=1e-12)
    # marginal volatility = numerical derivative of portfolio vol w.r.t. the weight
    eps = 1e-6
    for i in range(3):
        w2 = w.copy()
        w2[i] += eps
        num = ((x @ w2).std(ddof=1) - port.std(ddof=1)) / eps * math.sqrt(252)
        assert c.marginal_volatility[i] == pytest.approx(num, rel=1e-4)


def test_correlation_matrix_matches_numpy_and_flags_constant_columns() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(0, 0.01, (100, 4))
    x[:, 3] = 0.001
    c = m.correlation_matrix(x)
    ref = np.corrcoef(x[:, :3], rowvar=False)
    assert np.allclose(np.array(c)[:3, :3].astype(float), ref)
    assert c[3][0] is None and c[0][3] is None and c[3][3] is None


# --- properties -------------------------------------------------------------------------------------

returns_st = arrays(np.float64, st.integers(20, 300),
                    elements=st.floats(-0.2, 0.2, allow_nan=False, allow_subnormal=False))
conf_st = st.sampled_from([0.9, 0.95, 0.975])
PROP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROP
@given(returns_st, conf_st)
def test_var_never_exceeds_cvar(r: np.ndarray, c: float) -> None:
    assert m.historical_var(r, c) <= m.historical_cvar(r, c) + 1e-15
    if m._std(r) > 0:
        assert m.parametric_var(r, c) <= m.parametric_cvar(r, c) + 1e-15


@PROP
@given(returns_st, st.floats(0.1, 10.0))
def test_scaling_returns_scales_risk_linearly(r: np.ndarray, k: float) -> None:
    # volatility, VaR, CVaR are positively homogeneous; Sharpe (rf 0) and skew are scale-free
    assume(m._std(r) > 1e-6)
    kr = r * k
    assume(kr.min() >= -1)
    assert m.annual_volatility(kr) == pytest.approx(k * m.annual_volatility(r), rel=1e-9)
    assert m.historical_var(kr) == pytest.approx(k * m.historical_var(r), rel=1e-9, abs=1e-15)
    assert m.historical_cvar(kr) == pytest.approx(k * m.historical_cvar(r), rel=1e-9, abs=1e-15)
    assert m.parametric_var(kr) == pytest.approx(k * m.parametric_var(r), rel=1e-9, abs=1e-15)
    assert m.sharpe(kr) == pytest.approx(m.sharpe(r), rel=1e-9)
    s1, s2 = m.skew(r), m.skew(kr)
    assert s1 is not None and s2 is not None and s2 == pytest.approx(s1, rel=1e-6, abs=1e-9)


@PROP
@given(returns_st, st.floats(-0.01, 0.01))
def test_shift_invariance(r: np.ndarray, shift: float) -> None:
    # adding a constant moves VaR by minus that constant and leaves volatility/beta unchanged
    assume(m._std(r) > 1e-6)
    s = r + shift
    assume(s.min() >= -1)
    assert m.annual_volatility(s) == pytest.approx(m.annual_volatility(r), rel=1e-7)
    assert m.historical_var(s) == pytest.approx(m.historical_var(r) - shift, abs=1e-12)
    assert m.beta(s, r) == pytest.approx(1.0, rel=1e-9)


@PROP
@given(returns_st)
def test_drawdown_is_bounded_and_consistent(r: np.ndarray) -> None:
    dd = m.max_drawdown(r)
    assert -1.0 <= dd.max_drawdown <= 0.0
    assert dd.max_drawdown <= dd.current_drawdown <= 0.0
    assert dd.peak_index <= dd.trough_index
    w = m.wealth_path(r)
    if dd.max_drawdown < 0:
        assert w[dd.trough_index] / w[dd.peak_index] - 1 == pytest.approx(dd.max_drawdown, abs=1e-12)
    assert float(m.drawdown_series(r).min()) == pytest.approx(dd.max_drawdown, abs=1e-12)


@PROP
@given(st.integers(2, 8), st.integers(30, 200), st.integers(0, 10_000), conf_st)
def test_component_contributions_sum_to_total(n_assets: int, n_periods: int, seed: int, c: float) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0003, 0.01, (n_periods, n_assets)) + rng.normal(0, 0.005, (n_periods, 1))
    w = rng.dirichlet(np.ones(n_assets)) * rng.uniform(0.5, 1.0)
    out = m.contributions(w, x, c)
    assert sum(out.component_volatility) == pytest.approx(out.total_volatility, rel=1e-9)
    assert sum(out.component_var) == pytest.approx(out.total_var, rel=1e-9, abs=1e-15)
    assert sum(out.component_cvar) == pytest.approx(out.total_cvar, rel=1e-9, abs=1e-15)
    assert out.total_var <= m.parametric_cvar(x @ w, c) + 1e-12
    pct = [p for p in out.pct_volatility if p is not None]
    assert sum(pct) == pytest.approx(1.0, rel=1e-9)


@PROP
@given(returns_st)
def test_full_report_never_contains_nan(r: np.ndarray) -> None:
    import msgspec

    rep = m.compute_metrics(r, benchmark_returns=r[::-1].copy())

    def walk(x: object) -> None:  # msgspec would write NaN as null, so look at the values themselves
        if isinstance(x, float):
            assert math.isfinite(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(msgspec.to_builtins(rep))


def test_dates_out_of_order_are_refused_naming_the_field():
    from datetime import date

    import pytest as _pytest

    from app.analytics import metrics as _mt

    r = [0.01, -0.02, 0.03] * 10
    days = [date(2024, 1, 1 + i) for i in range(len(r))]
    days[5], days[6] = days[6], days[5]
    with _pytest.raises(_mt.InvalidSeries) as err:
        _mt.compute_metrics(r, dates=days)
    assert err.value.field == "dates"
