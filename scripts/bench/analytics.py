"""Benchmark: the full risk report for 50 holdings × 10 years of daily data.

Ours (app.analytics.service.compute_risk: closes → returns → every metric, benchmark-relative figures,
per-holding contributions, correlation matrix) next to quantstats 0.0.86 (+ pandas) computing the same
metrics in the same run, and the ratio. Budget: ours ≤ 50 ms (median).

Both start from the closes as the service loads them (sql/analytics.sql `daily_closes`: per symbol a
list of date ordinals and a list of float8 prices, as asyncpg returns them); the array conversion is
inside the timing.

    .venv/bin/python scripts/bench/analytics.py [--repeat 15] [--holdings 50] [--years 10]
    .venv/bin/python scripts/bench/analytics.py --http [--repeat 5]

`--http` instead times the endpoints end to end (in-process app, its own throwaway PostgreSQL +
TimescaleDB cluster, in-process cache) on the demo portfolio of `python -m app seed-demo` (bundled real
prices 2015–2024, monthly savings, rebalancing, dividends): cold (analytics cache keys and the
series memo cleared before each request, as after a ledger change) and cached.

No database needed: the report is computed from the data the service would have loaded. Prints one line per figure; exits 1 if ours is over budget.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
import warnings
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from app.analytics.returns import Closes  # noqa: E402
from app.analytics.service import HoldingIn, PortfolioData, compute_risk  # noqa: E402

BUDGET_MS = 50.0


def synthetic(n_holdings: int, years: int, seed: int = 7) -> PortfolioData:
    rng = np.random.default_rng(seed)
    n = 252 * years
    days: list[date] = []
    d = date(2014, 1, 2)
    while len(days) < n + 1:
        if d.weekday() < 5:
            days.append(d)
        d += timedelta(days=1)
    market = rng.normal(0.0004, 0.011, n)
    betas = rng.uniform(0.5, 1.6, n_holdings)
    rets = market[:, None] * betas + rng.standard_t(4, (n, n_holdings)) * 0.008
    prices = 50 * np.vstack([np.ones(n_holdings), np.cumprod(1 + rets, axis=0)])
    ords = [d.toordinal() for d in days]
    # as asyncpg hands over the `daily_closes` query: Python lists of ints and floats
    closes = {f"S{j:02d}": (list(ords), np.round(prices[:, j], 4).tolist()) for j in range(n_holdings)}
    spy = 300 * np.concatenate([[1.0], np.cumprod(1 + market)])
    closes["SPY"] = (list(ords), np.round(spy, 4).tolist())
    w = rng.dirichlet(np.ones(n_holdings)) * 0.95
    port = rets @ w  # the time-weighted series the portfolio service would rebuild
    holdings = [HoldingIn(symbol=f"S{j:02d}", weight=float(w[j]), market_value=float(w[j]) * 1e6,
                          sector=f"Sector{j % 11}", asset_type="stock") for j in range(n_holdings)]
    values = np.concatenate([[1e6], 1e6 * np.cumprod(1 + port)])
    return PortfolioData(series_dates=days, series_returns=port.tolist(), series_values=values.tolist(),
                         holdings=holdings, cash_weight=0.05, total_value=1e6, closes=closes, benchmark="SPY")


def ours(data: PortfolioData) -> object:
    loaded = {s: Closes(np.asarray(o, dtype=np.int64), np.asarray(p, dtype=np.float64)) for s, (o, p) in data.closes.items()}
    return compute_risk(PortfolioData(**{**data.__dict__, "closes": loaded}), confidence=0.95, window="max",
                        portfolio_id=uuid.UUID(int=0))


def quantstats_equivalent(data: PortfolioData) -> dict:
    """The same figures with quantstats/pandas: from the same Decimal closes to the same outputs."""
    import pandas as pd
    import quantstats as qs

    qs.stats  # noqa: B018 - imported outside the timing
    idx = pd.DatetimeIndex(data.series_dates[1:])
    r = pd.Series(data.series_returns, index=idx)
    px = pd.DataFrame({s: pd.Series(data.closes[s][1], index=pd.DatetimeIndex(
        [date.fromordinal(o) for o in data.closes[s][0]]))
        for s in [h.symbol for h in data.holdings] + [data.benchmark]})
    rets = px.pct_change().dropna()
    b = rets[data.benchmark]
    hold = rets[[h.symbol for h in data.holdings]]
    out = {
        "cagr": qs.stats.cagr(r), "volatility": qs.stats.volatility(r), "sharpe": qs.stats.sharpe(r),
        "sortino": qs.stats.sortino(r), "max_drawdown": qs.stats.max_drawdown(r), "calmar": qs.stats.calmar(r),
        "drawdown_details": qs.stats.drawdown_details(qs.stats.to_drawdown_series(r)),
        "var_parametric": qs.stats.value_at_risk(r), "var_historical": r.quantile(0.05),
        "cvar_historical": qs.stats.conditional_value_at_risk(r, method="historical"),
        "cvar_parametric": qs.stats.conditional_value_at_risk(r), "skew": qs.stats.skew(r),
        "kurtosis": qs.stats.kurtosis(r), "best": qs.stats.best(r), "worst": qs.stats.worst(r),
        "win_rate": qs.stats.win_rate(r), "greeks": qs.stats.greeks(r, b),
        "information_ratio": qs.stats.information_ratio(r, b), "correlation": r.corr(b),
        "tracking_error": (r - b).std() * np.sqrt(252),
        "bench_cagr": qs.stats.cagr(b), "bench_vol": qs.stats.volatility(b), "bench_mdd": qs.stats.max_drawdown(b),
    }
    # quantstats has no risk contributions: the pandas equivalent of ours
    w = np.array([h.weight for h in data.holdings])
    cov = hold.cov()
    sw = cov.values @ w
    sigma = float(np.sqrt(w @ sw))
    out["component_vol"] = w * sw / sigma * np.sqrt(252)
    port = hold @ w
    tail = port <= port.quantile(0.05)
    out["component_cvar"] = -(hold[tail] * w).mean()
    out["correlation_matrix"] = hold.corr()
    return out


def timed(fn, data, repeat: int) -> list[float]:
    fn(data)  # warm-up (imports, caches)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(data)
        times.append((time.perf_counter() - t) * 1000)
    return times


async def http_bench(repeat: int) -> int:
    import os
    import tempfile

    from litestar.testing import AsyncTestClient

    from app.analytics import service as analytics_service
    from app.asgi import create_app
    from app.config import load_settings
    from app.portfolio.cli import DEMO_PASSWORD, seed
    from tests.support.services import start_cluster

    cluster = start_cluster()
    try:
        cluster.create_database("wt_bench")
        env = {"ENV": "test", "DATABASE_URL": cluster.url("wt_bench"), "JWT_SECRET": "bench-" + "a" * 40,
               "DATA_DIR": tempfile.mkdtemp(prefix="wt-bench-"), "BCRYPT_ROUNDS": "4", "MARKET_FEED": "off",
               "LOG_LEVEL": "WARNING", "RATE_LIMIT_PER_MINUTE": "100000"}
        settings = load_settings(env, dotenv=os.devnull)
        async with AsyncTestClient(app=create_app(settings)) as client:
            demo = await seed(settings, password=DEMO_PASSWORD)
            r = await client.post("/api/auth/login", json={"email": demo["email"], "password": DEMO_PASSWORD})
            headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
            pid = demo["portfolio_id"]
            cache = client.app.state.ctx.cache
            print(f"analytics endpoints on the demo portfolio ({demo['transactions']} transactions), "
                  f"{repeat} runs each")
            for path, params in (("risk", {"window": "max"}), ("risk", {"window": "1y"}), ("forecast", {}),
                                 ("insights", {})):
                url = f"/api/analytics/portfolio/{pid}/{path}"
                cold, warm = [], []
                for _ in range(repeat):
                    await cache.delete(*await cache.keys("analytics:*"))
                    analytics_service._SERIES.clear()  # cold = as after a ledger change: series rebuilt too
                    t = time.perf_counter()
                    r = await client.get(url, headers=headers, params=params)
                    cold.append((time.perf_counter() - t) * 1000)
                    assert r.status_code == 200, r.text
                    t = time.perf_counter()
                    r = await client.get(url, headers=headers, params=params)
                    warm.append((time.perf_counter() - t) * 1000)
                extra = ""
                if path == "risk":
                    body = r.json()
                    extra = (f"  ({body['metrics']['periods']} returns, "
                             f"{len(body['contributions']['holdings'])} holdings)")
                print(f"  GET {path:9s} {str(params):20s} cold median {statistics.median(cold):8.1f} ms   "
                      f"cached median {statistics.median(warm):6.1f} ms{extra}")
    finally:
        cluster.destroy()
    return 0


def main() -> int:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--holdings", type=int, default=50)
    ap.add_argument("--years", type=int, default=10)
    ap.add_argument("--http", action="store_true", help="time the endpoints end to end on the demo portfolio")
    args = ap.parse_args()
    if args.http:
        import asyncio

        return asyncio.run(http_bench(min(args.repeat, 5)))
    data = synthetic(args.holdings, args.years)
    a = timed(ours, data, args.repeat)
    b = timed(quantstats_equivalent, data, args.repeat)
    rep = ours(data)
    q = quantstats_equivalent(data)
    checks = {
        "sharpe": (rep.metrics.sharpe, q["sharpe"]), "max_drawdown": (rep.metrics.drawdown.max_drawdown, q["max_drawdown"]),
        "beta": (rep.metrics.benchmark.beta, q["greeks"]["beta"]),
        "cvar_historical": (rep.metrics.cvar_historical, -q["cvar_historical"]),
        "sum component vol": (sum(h.component_volatility for h in rep.contributions.holdings), float(q["component_vol"].sum())),
    }
    print(f"analytics risk report: {args.holdings} holdings x {args.years} years "
          f"({len(data.series_returns)} daily returns), {args.repeat} runs")
    print(f"  ours        median {statistics.median(a):8.2f} ms   min {min(a):8.2f} ms   budget {BUDGET_MS:.0f} ms")
    print(f"  quantstats  median {statistics.median(b):8.2f} ms   min {min(b):8.2f} ms")
    print(f"  ratio       quantstats / ours = {statistics.median(b) / statistics.median(a):.1f}x")
    for name, (x, y) in checks.items():
        print(f"  agree {name:18s} ours {x: .10f}  quantstats/pandas {y: .10f}")
    from app.analytics.forecast import forecast

    f = timed(lambda d: forecast(d.series_returns), data, max(3, args.repeat // 3))
    print(f"  forecast (EWMA + GARCH(1,1) fit, {len(data.series_returns)} returns; not in the budget) "
          f"median {statistics.median(f):.2f} ms")
    ok = statistics.median(a) <= BUDGET_MS
    print("  within budget" if ok else "  OVER BUDGET")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
