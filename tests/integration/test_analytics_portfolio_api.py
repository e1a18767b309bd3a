"""Portfolio analytics through the whole app: a buy-and-hold portfolio on synthetic daily bars (our own
symbols, written straight into the market tables), so every figure can be checked from the closes."""

from __future__ import annotations

import math
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import asyncpg
import numpy as np
import pytest

from app.analytics import metrics as mt
from tests.integration.test_analytics_narrative import fake_model  # noqa: F401 - fixture
from tests.support.auth import register_user

N_DAYS = 320


def _weekdays(n: int, end: date) -> list[date]:
    out: list[date] = []
    d = end
    while len(out) < n:
        if d.weekday() < 5:
            out.append(d)
        d -= timedelta(days=1)
    return out[::-1]


class Market:
    def __init__(self, unique: str) -> None:
        tag = unique.upper()[:8]
        self.symbols = [f"AZ{tag}{i}" for i in range(4)]
        self.bench = f"AB{tag}"
        self.days = _weekdays(N_DAYS, datetime.now(UTC).date())
        rng = np.random.default_rng(int(unique, 16) % 2**32)
        market = rng.normal(0.0004, 0.01, N_DAYS - 1)
        betas = [1.4, 1.3, 0.6, 0.9]
        self.prices: dict[str, list[Decimal]] = {}
        for s, b in zip(self.symbols, betas, strict=True):
            r = b * market + rng.normal(0, 0.008, N_DAYS - 1)
            p = 100 * np.concatenate([[1.0], np.cumprod(1 + r)])
            self.prices[s] = [Decimal(f"{x:.4f}") for x in p]
        pb = 400 * np.concatenate([[1.0], np.cumprod(1 + market)])
        self.prices[self.bench] = [Decimal(f"{x:.4f}") for x in pb]
        self.sectors = {self.symbols[0]: "Technology", self.symbols[1]: "Technology", self.symbols[2]: "Utilities",
                        self.symbols[3]: "Health Care", self.bench: None}

    async def install(self, database_url: str) -> None:
        conn = await asyncpg.connect(database_url)
        try:
            for s in [*self.symbols, self.bench]:
                await conn.execute("INSERT INTO assets (symbol, name, type, sector) VALUES ($1, $2, $3, $4)",
                                   s, f"Test {s}", "etf" if s == self.bench else "stock", self.sectors[s])
                await conn.copy_records_to_table(
                    "daily_bars", columns=["symbol", "ts", "open", "high", "low", "close", "volume", "source"],
                    records=[(s, datetime(d.year, d.month, d.day, tzinfo=UTC), p, p, p, p, 1000, "test")
                             for d, p in zip(self.days, self.prices[s], strict=True)])
        finally:
            await conn.close()


@pytest.fixture
async def market(client, database_url: str, unique: str) -> Market:
    m = Market(unique)  # `client` first: its start-up applies the migrations
    await m.install(database_url)
    return m


TARGET = {0: Decimal("0.40"), 1: Decimal("0.15"), 2: Decimal("0.15"), 3: Decimal("0.10")}  # 20 % cash


def _qty(market: Market, start_index: int) -> dict[int, Decimal]:
    return {i: (w * 60000 / market.prices[market.symbols[i]][start_index]).quantize(Decimal("1"))
            for i, w in TARGET.items()}


async def _portfolio(client, user, market: Market, *, start_index: int = 0) -> str:
    r = await client.post("/api/portfolio", headers=user.headers, json={"name": "analytics test"})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    d0 = market.days[start_index]
    at = datetime(d0.year, d0.month, d0.day, 21, tzinfo=UTC).isoformat()
    r = await client.post(f"/api/portfolio/{pid}/transactions", headers=user.headers,
                          json={"type": "deposit", "amount": "60000", "executed_at": at})
    assert r.status_code == 201, r.text
    for i, q in _qty(market, start_index).items():
        s = market.symbols[i]
        r = await client.post(f"/api/portfolio/{pid}/transactions", headers=user.headers, json={
            "type": "buy", "symbol": s, "quantity": str(q), "price": str(market.prices[s][start_index]),
            "executed_at": at})
        assert r.status_code == 201, r.text
    return pid


def _expected_series(market: Market) -> np.ndarray:
    """Buy-and-hold value path from the closes: cash + Σ q · close (no flows after day 0)."""
    qty = _qty(market, 0)
    invested = sum(qty[i] * market.prices[s][0] for i, s in enumerate(market.symbols))
    cash = Decimal("60000") - invested
    values = np.array([float(cash + sum(qty[i] * market.prices[s][t] for i, s in enumerate(market.symbols)))
                       for t in range(N_DAYS)])
    return values[1:] / values[:-1] - 1


async def test_risk_report_of_a_buy_and_hold_portfolio(client, market: Market) -> None:
    user = await register_user(client)
    pid = await _portfolio(client, user, market)
    r = await client.get(f"/api/analytics/portfolio/{pid}/risk", headers=user.headers,
                         params={"window": "max", "benchmark": market.bench, "confidence": "0.95"})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = _expected_series(market)
    bench = np.array([float(p) for p in market.prices[market.bench]])
    b = bench[1:] / bench[:-1] - 1
    ref = mt.compute_metrics(expected, benchmark_returns=b)
    m = body["metrics"]
    assert m["periods"] == N_DAYS - 1
    assert m["total_return"] == pytest.approx(ref.total_return, rel=1e-6)
    assert m["volatility"] == pytest.approx(ref.volatility, rel=1e-6)
    assert m["sharpe"] == pytest.approx(ref.sharpe, rel=1e-6)
    assert m["var_historical"] == pytest.approx(ref.var_historical, rel=1e-6)
    assert m["benchmark"]["beta"] == pytest.approx(ref.benchmark.beta, rel=1e-6)
    assert m["benchmark"]["periods"] == N_DAYS - 1
    assert m["end_date"] == market.days[-1].isoformat()
    # contributions: every holding, summing to the totals
    c = body["contributions"]
    assert {h["symbol"] for h in c["holdings"]} == set(market.symbols)
    assert sum(h["component_volatility"] for h in c["holdings"]) == pytest.approx(c["total_volatility"], rel=1e-9)
    assert sum(h["component_var"] for h in c["holdings"]) == pytest.approx(c["total_var"], rel=1e-9)
    assert sum(h["component_cvar"] for h in c["holdings"]) == pytest.approx(c["total_cvar"], rel=1e-9)
    tech = [h for h in c["holdings"] if h["sector"] == "Technology"]
    assert len(tech) == 2
    weights = sum(h["weight"] for h in c["holdings"])
    assert 0 < weights < 1  # cash is the rest
    corr = body["correlation"]
    n = len(corr["symbols"])
    assert n == 4 and all(corr["matrix"][i][i] == 1.0 for i in range(n))
    assert all(corr["matrix"][i][j] == pytest.approx(corr["matrix"][j][i]) for i in range(n) for j in range(n))


async def test_ownership_auth_and_parameters(client, market: Market) -> None:
    owner = await register_user(client)
    other = await register_user(client)
    pid = await _portfolio(client, owner, market)
    for path in ("risk", "forecast", "insights"):
        r = await client.get(f"/api/analytics/portfolio/{pid}/{path}", headers=other.headers)
        assert r.status_code == 404, (path, r.text)
        r = await client.get(f"/api/analytics/portfolio/{pid}/{path}")
        assert r.status_code == 401
    r = await client.get("/api/analytics/portfolio/00000000-0000-0000-0000-000000000000/risk", headers=owner.headers)
    assert r.status_code == 404
    r = await client.get(f"/api/analytics/portfolio/{pid}/risk", headers=owner.headers, params={"window": "2y"})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "window"
    r = await client.get(f"/api/analytics/portfolio/{pid}/risk", headers=owner.headers, params={"confidence": "1.2"})
    assert r.status_code == 400
    r = await client.get(f"/api/analytics/portfolio/{pid}/risk", headers=owner.headers,
                         params={"window": "max", "benchmark": "NOSUCHSYM"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "benchmark"


async def test_too_little_history_is_422_with_what_is_needed(client, market: Market) -> None:
    user = await register_user(client)
    pid = await _portfolio(client, user, market, start_index=N_DAYS - 6)  # five returns
    r = await client.get(f"/api/analytics/portfolio/{pid}/risk", headers=user.headers,
                         params={"benchmark": market.bench})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["required_periods"] == 20 and body["available_periods"] == 5
    assert "need at least 20" in body["detail"]
    r = await client.get(f"/api/analytics/portfolio/{pid}/forecast", headers=user.headers)
    assert r.status_code == 422 and r.json()["required_periods"] == 60
    # insights still answer: concentration and cash checks do not need history
    r = await client.get(f"/api/analytics/portfolio/{pid}/insights", headers=user.headers,
                         params={"benchmark": market.bench})
    assert r.status_code == 200, r.text
    body = r.json()
    assert any("history-based checks skipped" in n for n in body["notes"])
    assert {"single_position", "sector"} <= {f["kind"] for f in body["findings"]}


async def test_cached_until_the_ledger_changes(client, market: Market) -> None:
    user = await register_user(client)
    pid = await _portfolio(client, user, market)
    params = {"window": "max", "benchmark": market.bench}
    a = (await client.get(f"/api/analytics/portfolio/{pid}/risk", headers=user.headers, params=params)).json()
    b = (await client.get(f"/api/analytics/portfolio/{pid}/risk", headers=user.headers, params=params)).json()
    assert a["computed_at"] == b["computed_at"]
    r = await client.post(f"/api/portfolio/{pid}/transactions", headers=user.headers,
                          json={"type": "deposit", "amount": "1000"})
    assert r.status_code == 201
    c = (await client.get(f"/api/analytics/portfolio/{pid}/risk", headers=user.headers, params=params)).json()
    assert c["computed_at"] != a["computed_at"]
    # a deposit is a flow, not a return: the time-weighted figures barely move
    assert c["metrics"]["volatility"] == pytest.approx(a["metrics"]["volatility"], rel=1e-3)


async def test_a_weekend_flow_is_not_a_period_of_its_own(client, market: Market) -> None:
    """A deposit on a Saturday between two market days: the risk series stays on market days (the same
    number of periods, the figures barely moved), while the performance series still shows that day."""
    user = await register_user(client)
    pid = await _portfolio(client, user, market)
    params = {"window": "max", "benchmark": market.bench}
    a = (await client.get(f"/api/analytics/portfolio/{pid}/risk", headers=user.headers, params=params)).json()
    k = next(i for i in range(100, N_DAYS) if market.days[i].weekday() == 4)  # a Friday inside the series
    sat = market.days[k] + timedelta(days=1)
    r = await client.post(f"/api/portfolio/{pid}/transactions", headers=user.headers, json={
        "type": "deposit", "amount": "100", "executed_at": datetime(sat.year, sat.month, sat.day, 12,
                                                                     tzinfo=UTC).isoformat()})
    assert r.status_code == 201, r.text
    c = (await client.get(f"/api/analytics/portfolio/{pid}/risk", headers=user.headers, params=params)).json()
    assert c["metrics"]["periods"] == a["metrics"]["periods"] == N_DAYS - 1
    assert c["metrics"]["volatility"] == pytest.approx(a["metrics"]["volatility"], rel=5e-3)
    r = await client.get(f"/api/portfolio/{pid}/performance", headers=user.headers, params={"range": "max"})
    assert r.status_code == 200 and sat.isoformat() in r.json()["dates"]


async def test_forecast_has_ewma_and_garch(client, market: Market) -> None:
    user = await register_user(client)
    pid = await _portfolio(client, user, market)
    r = await client.get(f"/api/analytics/portfolio/{pid}/forecast", headers=user.headers)
    assert r.status_code == 200, r.text
    f = r.json()["forecast"]
    assert f["periods"] == N_DAYS - 1
    for model in ("ewma", "garch"):
        m = f[model]
        assert m is not None, f.get("garch_note")
        assert 0 < m["next_day_volatility"] < m["next_month_volatility"]
        assert m["next_day_var"] < m["next_day_cvar"]
        assert m["annualized_volatility"] == pytest.approx(m["next_day_volatility"] * math.sqrt(252))


async def test_insights_ranked_with_thresholds_per_user(client, market: Market) -> None:
    user = await register_user(client)
    pid = await _portfolio(client, user, market, start_index=N_DAYS - 120)  # little drift from the targets
    r = await client.get(f"/api/analytics/portfolio/{pid}/insights", headers=user.headers,
                         params={"benchmark": market.bench})
    assert r.status_code == 200, r.text
    body = r.json()
    kinds = [f["kind"] for f in body["findings"]]
    assert "sector" in kinds  # two Technology holdings bought at 55 %
    assert "single_position" in kinds  # one at 40 %
    for f in body["findings"]:
        assert f["title"] and f["explanation"] and f["action"] and f["threshold"] and f["numbers"]
    ranks = {"critical": 3, "warning": 2, "info": 1}
    sev = [ranks[f["severity"]] for f in body["findings"]]
    assert sev == sorted(sev, reverse=True)
    assert body["narrative"]["source"] == "template" and body["narrative"]["text"]
    assert body["risk_tolerance"] == "moderate"
    # turn the sector rule off for this user: the next answer reflects it at once (no stale cache)
    r = await client.put("/api/analytics/insights/thresholds", headers=user.headers, json={"disabled": ["sector"]})
    assert r.status_code == 200
    r = await client.get(f"/api/analytics/portfolio/{pid}/insights", headers=user.headers,
                         params={"benchmark": market.bench})
    assert "sector" not in [f["kind"] for f in r.json()["findings"]]


async def test_insights_narrative_from_a_model_and_its_timeout(test_env, market: Market, fake_model) -> None:
    """A second app configured with a (fake) OpenAI-compatible model: its paragraph is used with our
    numbers; when it is slower than AI_TIMEOUT the answer still comes, from the template, in time."""
    from litestar.testing import AsyncTestClient

    from app.asgi import create_app
    from tests.conftest import make_settings

    state, url = fake_model
    settings = make_settings(test_env, ai_api_url=url, ai_api_key="k", ai_model="fake-1", ai_timeout="0.5")
    async with AsyncTestClient(app=create_app(settings)) as ai_client:
        user = await register_user(ai_client)
        pid = await _portfolio(ai_client, user, market, start_index=N_DAYS - 120)
        state.reply = "Volatility runs at {volatility}. The biggest issue: {f1_title}."
        r = await ai_client.get(f"/api/analytics/portfolio/{pid}/insights", headers=user.headers,
                                params={"benchmark": market.bench})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["narrative"]["source"] == "model", body["narrative"]
        assert body["findings"][0]["title"] in body["narrative"]["text"]
        assert "{" not in body["narrative"]["text"]
        # a slow model: a new ledger version forces a fresh answer
        await ai_client.post(f"/api/portfolio/{pid}/transactions", headers=user.headers,
                             json={"type": "deposit", "amount": "10"})
        state.delay = 3.0
        started = time.perf_counter()
        r = await ai_client.get(f"/api/analytics/portfolio/{pid}/insights", headers=user.headers,
                                params={"benchmark": market.bench})
        assert r.status_code == 200 and r.json()["narrative"]["source"] == "template"
        assert time.perf_counter() - started < 2.5


async def test_bundled_history_portfolio_of_only_spy_tracks_spy(client, database_url: str) -> None:
    """Real data: a portfolio that is 100 % SPY (no cash) has beta 1, correlation 1 and SPY's own figures
    against SPY; its window ends at the last bundled close (2024), not today."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT ts, close FROM daily_bars WHERE symbol = 'SPY' AND ts >= '2019-01-02' "
                                "AND source = 'bundled' ORDER BY ts")
    finally:
        await conn.close()
    assert len(rows) > 1000
    user = await register_user(client)
    r = await client.post("/api/portfolio", headers=user.headers, json={"name": "spy only"})
    pid = r.json()["id"]
    first = rows[0]
    at = first["ts"].replace(hour=21).isoformat()
    qty = Decimal("100")
    for tx in ({"type": "deposit", "amount": str(qty * first["close"]), "executed_at": at},
               {"type": "buy", "symbol": "SPY", "quantity": str(qty), "price": str(first["close"]), "executed_at": at}):
        r = await client.post(f"/api/portfolio/{pid}/transactions", headers=user.headers, json=tx)
        assert r.status_code == 201, r.text
    r = await client.get(f"/api/analytics/portfolio/{pid}/risk", headers=user.headers,
                         params={"window": "3y", "benchmark": "SPY"})
    assert r.status_code == 200, r.text
    body = r.json()
    m = body["metrics"]
    last = rows[-1]["ts"].date()
    assert m["end_date"] == last.isoformat()
    assert date.fromisoformat(m["start_date"]) >= last - timedelta(days=3 * 365 + 1)
    assert m["benchmark"]["beta"] == pytest.approx(1.0, abs=1e-9)
    assert m["benchmark"]["correlation"] == pytest.approx(1.0, abs=1e-9)
    assert m["benchmark"]["tracking_error"] == pytest.approx(0.0, abs=1e-9)
    assert m["volatility"] == pytest.approx(m["benchmark"]["benchmark_volatility"], rel=1e-9)
    assert m["drawdown"]["max_drawdown"] == pytest.approx(m["benchmark"]["benchmark_max_drawdown"], rel=1e-9)
    # 2022's bear market is inside the window: a real drawdown with dates in order
    assert m["drawdown"]["max_drawdown"] < -0.15
    assert m["drawdown"]["peak_date"] < m["drawdown"]["trough_date"]
    assert body["contributions"]["holdings"][0]["pct_volatility"] == pytest.approx(1.0)
