from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from app.analytics import forecast as f
from app.analytics.metrics import InsufficientData


def _garch_path(n: int, seed: int, omega: float = 2e-6, a: float = 0.08, b: float = 0.9) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s2 = omega / (1 - a - b)
    out = np.empty(n)
    for t in range(n):
        out[t] = math.sqrt(s2) * rng.standard_normal()
        s2 = omega + a * out[t] ** 2 + b * s2
    return out


def test_ewma_matches_the_plain_recursion() -> None:
    r = np.random.default_rng(1).normal(0, 0.01, 300)
    var = float(np.mean(r[:20] ** 2))
    for x in r:
        var = 0.94 * var + 0.06 * x * x
    assert f.ewma_variance(r) == pytest.approx(var, rel=1e-12)
    fc = f.ewma_forecast(r, 0.99)
    assert fc.next_day_volatility == pytest.approx(math.sqrt(var))
    assert fc.next_month_volatility == pytest.approx(math.sqrt(var * 21))
    assert fc.next_day_var == pytest.approx(norm.ppf(0.99) * math.sqrt(var))
    assert fc.next_day_cvar > fc.next_day_var


def test_garch_recovers_parameters_and_matches_arch_forecast() -> None:
    from arch import arch_model

    r = _garch_path(3000, 7)
    out = f.forecast(r, 0.95)
    assert out.garch is not None and out.garch_note is None
    g = out.garch
    assert g.params["alpha"] == pytest.approx(0.08, abs=0.04)
    assert g.params["beta"] == pytest.approx(0.90, abs=0.05)
    assert g.long_run_volatility == pytest.approx(0.01, rel=0.25)
    res = arch_model(r * 100, mean="Zero", vol="GARCH", p=1, q=1, rescale=False).fit(disp="off")
    v = res.forecast(horizon=21, reindex=False).variance.values[-1] / 1e4
    assert g.next_day_volatility == pytest.approx(math.sqrt(v[0]), rel=1e-6)
    assert g.next_month_volatility == pytest.approx(math.sqrt(v.sum()), rel=1e-6)
    # the month path bends towards the long-run level
    lo, hi = sorted([g.next_day_volatility * math.sqrt(21), g.long_run_volatility * math.sqrt(21)])
    assert lo - 1e-12 <= g.next_month_volatility <= hi + 1e-12


def test_short_history_is_a_clear_error_and_garch_needs_a_year() -> None:
    with pytest.raises(InsufficientData) as exc:
        f.forecast(np.full(30, 0.001))
    assert exc.value.needed == 60 and exc.value.got == 30
    out = f.forecast(np.random.default_rng(2).normal(0, 0.01, 100))
    assert out.garch is None and "250" in (out.garch_note or "")
    assert out.ewma.next_day_volatility > 0


def test_flat_series_does_not_break() -> None:
    out = f.forecast(np.zeros(300))
    assert out.garch is None and out.ewma.next_day_volatility == 0.0 and out.ewma.regime_ratio is None


@settings(max_examples=30, deadline=None)
@given(st.integers(60, 400), st.integers(0, 1000), st.floats(0.1, 10))
def test_ewma_is_scale_equivariant(n: int, seed: int, k: float) -> None:
    r = np.random.default_rng(seed).normal(0, 0.01, n)
    a, b = f.ewma_forecast(r), f.ewma_forecast(r * k)
    assert b.next_day_volatility == pytest.approx(k * a.next_day_volatility, rel=1e-9)
    assert b.regime_ratio == pytest.approx(a.regime_ratio, rel=1e-9)
