"""/api/optimizer/* through the whole app: the inline-returns universe, validation, errors, limits."""

from __future__ import annotations

import csv
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
from litestar.testing import AsyncTestClient
from pypfopt import EfficientFrontier

from tests.support.auth import TestUser, register_user


@pytest.fixture(scope="module")
async def user(client: AsyncTestClient) -> TestUser:
    await client.app.state.ctx.services["optimizer"].pool.wait_ready(180)
    return await register_user(client)


def inline(n: int = 8, t: int = 300, seed: int = 0) -> tuple[dict[str, list[float]], list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 0.01, (n, n))
    R = rng.multivariate_normal(rng.normal(0.0006, 0.0004, n), a @ a.T / n + np.eye(n) * 1e-4, size=t)
    start = date(2023, 1, 2)
    dates, d = [], start
    while len(dates) < t:
        if d.weekday() < 5:
            dates.append(d.isoformat())
        d += timedelta(days=1)
    return {f"A{i}": R[:, i].tolist() for i in range(n)}, dates, R


async def test_max_sharpe_inline_matches_pypfopt(client: AsyncTestClient, user: TestUser) -> None:
    returns, dates, R = inline()
    r = await client.post("/api/optimizer/optimize", headers=user.headers,
                          json={"returns": returns, "dates": dates, "risk_free_rate": 0.02})
    assert r.status_code == 200, r.text
    body = r.json()
    ef = EfficientFrontier(R.mean(axis=0), np.cov(R.T), weight_bounds=(0, 1))
    theirs = ef.max_sharpe(risk_free_rate=0.02 / 252)
    assert max(abs(body["weights"][s] - theirs[i]) for i, s in enumerate(returns)) < 1e-4
    assert body["solver"] == "CLARABEL" and body["status"] == "optimal"
    assert body["universe"] == {"source": "inline", "symbols": list(returns), "observations": 300,
                                "start": dates[0], "end": dates[-1], "periods_per_year": 252}
    assert set(body["risk_contributions"]) == set(returns)
    assert sum(body["risk_contributions"].values()) == pytest.approx(1.0)
    assert body["elapsed_ms"] > 0 and body["total_ms"] >= body["elapsed_ms"]
    assert body["warnings"] == []
    for key in ("expected_return", "volatility", "sharpe"):
        assert isinstance(body[key], float)


@pytest.mark.parametrize("model", ["hrp", "risk_parity"])
async def test_other_models(client: AsyncTestClient, user: TestUser, model: str) -> None:
    returns, dates, _ = inline(seed=3)
    r = await client.post("/api/optimizer/optimize", headers=user.headers,
                          json={"returns": returns, "dates": dates, "model": model, "covariance": "ledoit_wolf"})
    assert r.status_code == 200, r.text
    w = r.json()["weights"]
    assert all(v > 0 for v in w.values()) and sum(w.values()) == pytest.approx(1.0)


async def test_black_litterman_with_views(client: AsyncTestClient, user: TestUser) -> None:
    returns, dates, _ = inline(seed=4)
    r = await client.post("/api/optimizer/optimize", headers=user.headers, json={
        "returns": returns, "dates": dates, "model": "black_litterman", "objective": "max_sharpe",
        "views": [{"symbol": "A0", "expected_return": 0.3}, {"symbol": "A1", "versus": "A2", "expected_return": 0.02}]})
    assert r.status_code == 200, r.text
    bl = r.json()["black_litterman"]
    assert bl["prior_weights"]["A0"] == pytest.approx(1 / 8)
    assert bl["posterior_returns"]["A0"] > bl["prior_returns"]["A0"]


async def test_frontier_inline(client: AsyncTestClient, user: TestUser) -> None:
    returns, dates, _ = inline(seed=5)
    r = await client.post("/api/optimizer/frontier", headers=user.headers,
                          json={"returns": returns, "dates": dates, "points": 6})
    assert r.status_code == 200, r.text
    pts = r.json()["points"]
    assert len(pts) == 6
    assert [p["expected_return"] for p in pts] == sorted(p["expected_return"] for p in pts)


def field_of(r) -> str:
    body = r.json()
    assert body["status"] == r.status_code and body["detail"]
    return body["errors"][0]["field"]


async def test_validation_names_the_field(client: AsyncTestClient, user: TestUser) -> None:
    returns, dates, _ = inline(n=3, t=100)
    post = lambda body: client.post("/api/optimizer/optimize", headers=user.headers, json=body)  # noqa: E731

    bad = {**returns, "A1": returns["A1"][:3] + [None] + returns["A1"][4:]}
    r = await post({"returns": bad, "dates": dates})
    assert r.status_code == 422 and field_of(r) == "returns.A1[3]"

    r = await post({"returns": {**returns, "A0": [150.0] + returns["A0"][1:]}, "dates": dates})  # a price
    assert r.status_code == 422 and field_of(r) == "returns.A0[0]" and "simple returns" in r.json()["detail"]

    r = await post({"returns": {**returns, "a1": returns["A1"]}, "dates": dates})
    assert r.status_code == 422 and field_of(r) == "returns.a1" and "duplicate" in r.json()["detail"]

    r = await post({"symbols": ["AAPL"]})
    assert r.status_code == 422 and field_of(r) == "symbols"

    r = await post({"returns": {**returns, "A2": returns["A2"][:-1]}, "dates": dates})
    assert r.status_code == 422 and field_of(r) == "returns.A2"

    r = await post({"returns": returns, "dates": dates[:1] + dates[:-1]})
    assert r.status_code == 422 and field_of(r) == "dates[1]"

    r = await post({"returns": returns, "dates": dates, "constraints": {"max_weight": 0.3}})
    assert r.status_code == 422 and field_of(r) == "constraints.max_weight"
    assert "sum to 1" in r.json()["detail"]

    r = await post({"returns": returns, "dates": dates, "constraints": {"min_weight": {"A0": 0.6, "A1": 0.6}}})
    assert r.status_code == 422 and field_of(r) == "constraints.min_weight"

    r = await post({"returns": returns, "dates": dates, "constraints": {"max_weight": {"ZZZ": 0.5}}})
    assert r.status_code == 422 and field_of(r) == "constraints.max_weight.ZZZ"

    r = await post({"symbols": ["AAPL", "MSFT", "aapl"]})
    assert r.status_code == 422 and field_of(r) == "symbols[2]"

    r = await post({"returns": returns, "dates": dates, "symbols": ["AAPL", "MSFT"]})
    assert r.status_code == 422 and "exactly one" in r.json()["detail"]

    r = await post({"returns": {k: v[:40] for k, v in returns.items()}, "dates": dates[:40]})
    assert r.status_code == 422 and field_of(r) == "returns"
    assert r.json()["needed"] == 60 and "at least 60" in r.json()["detail"]

    r = await post({"returns": returns, "dates": dates, "model": "black_litterman",
                    "views": [{"symbol": "A0", "versus": "NOPE", "expected_return": 0.01}]})
    assert r.status_code == 422 and field_of(r) == "views[0].versus"

    r = await post({"returns": returns, "dates": dates, "model": "black_litterman"})
    assert r.status_code == 422 and field_of(r) == "views"

    r = await post({"returns": returns, "dates": dates, "objective": "best"})
    assert r.status_code == 400 and field_of(r) == "objective"

    r = await post({"returns": returns, "dates": dates, "surprise": 1})
    assert r.status_code == 400


async def test_nan_literal_in_inline_returns_is_refused(client: AsyncTestClient, user: TestUser) -> None:
    returns, dates, _ = inline(n=2, t=80)
    body = '{"returns": {"A0": [NaN' + ", 0.01" * 79 + '], "A1": ' + str(returns["A1"]) + '}, "dates": ' + \
        str(dates).replace("'", '"') + "}"
    r = await client.post("/api/optimizer/optimize", headers={**user.headers, "content-type": "application/json"},
                          content=body)
    assert r.status_code == 422, r.text
    assert field_of(r) == "returns.A0[0]"


async def test_infeasible_target_names_the_constraint(client: AsyncTestClient, user: TestUser) -> None:
    returns, dates, _ = inline(seed=6)
    r = await client.post("/api/optimizer/optimize", headers=user.headers, json={
        "returns": returns, "dates": dates, "objective": "min_risk", "constraints": {"target_return": 5.0}})
    assert r.status_code == 422
    assert field_of(r) == "constraints.target_return"
    assert r.json()["solver_status"] == "infeasible"


async def test_needs_a_token(client: AsyncTestClient) -> None:
    returns, dates, _ = inline(n=2, t=80)
    r = await client.post("/api/optimizer/optimize", json={"returns": returns, "dates": dates})
    assert r.status_code == 401


async def test_status_reports_the_pool(client: AsyncTestClient, user: TestUser) -> None:
    status = client.app.state.ctx.services["optimizer"].status()
    assert status["workers"] == 2 and status["ready"] == 2 and status["ok"] >= 1
    assert len(status["pids"]) == 2


async def test_time_limit_gives_504_and_the_pool_recovers(client: AsyncTestClient, user: TestUser) -> None:
    pool = client.app.state.ctx.services["optimizer"].pool
    rng = np.random.default_rng(9)
    n, t = 150, 1500
    R = rng.normal(0.0005, 0.01, (t, n))
    dates = [(date(2000, 1, 3) + timedelta(days=i)).isoformat() for i in range(t)]
    big = {"returns": {f"X{i}": R[:, i].tolist() for i in range(n)}, "dates": dates, "risk_measure": "cdar"}
    recycled = pool.status()["recycled"]
    pool.timeout = 0.3  # as if OPTIMIZER_TIMEOUT=0.3
    try:
        r = await client.post("/api/optimizer/optimize", headers=user.headers, json=big)
    finally:
        pool.timeout = client.app.state.ctx.settings.optimizer_timeout
    assert r.status_code == 504, r.text
    assert r.json()["title"] == "Gateway Timeout" and "time limit" in r.json()["detail"]
    assert pool.status()["recycled"] == recycled + 1
    await pool.wait_ready(180)
    small, small_dates, _ = inline(n=3, t=80)
    r = await client.post("/api/optimizer/optimize", headers=user.headers, json={"returns": small, "dates": small_dates})
    assert r.status_code == 200, r.text


# --- the `symbols` universe: history from our database (the bundled daily closes) ------------------------
BUNDLED = Path(__file__).resolve().parents[2] / "app" / "market" / "data" / "stock_prices.csv"


def bundled_returns(symbols: list[str], lookback: int) -> np.ndarray:
    """Independent of our code: the CSV the market domain loads, read with the csv module."""
    with BUNDLED.open() as f:
        rows = list(csv.DictReader(f))
    rows = [r for r in rows if all(r[s] for s in symbols)]
    closes = np.array([[round(float(r[s]), 6) for s in symbols] for r in rows[-(lookback + 1):]])
    return closes[1:] / closes[:-1] - 1


async def test_symbols_universe_matches_pypfopt_on_the_bundled_history(client: AsyncTestClient,
                                                                      user: TestUser) -> None:
    symbols = ["AAPL", "JPM", "WMT", "XOM", "PFE"]
    r = await client.post("/api/optimizer/optimize", headers=user.headers,
                          json={"symbols": [s.lower() for s in symbols], "lookback": 500, "objective": "min_risk"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["universe"]["source"] == "symbols" and body["universe"]["observations"] == 500
    assert body["universe"]["end"] == "2024-11-29"
    R = bundled_returns(symbols, 500)
    theirs = EfficientFrontier(R.mean(axis=0), np.cov(R.T), weight_bounds=(0, 1)).min_volatility()
    assert max(abs(body["weights"][s] - theirs[i]) for i, s in enumerate(symbols)) < 1e-4


async def test_an_asset_added_after_an_unknown_symbol_answer_is_seen_at_once(client: AsyncTestClient, user: TestUser,
                                                                          database_url: str, unique: str) -> None:
    """The symbols check is memoized for a few seconds, but never an answer naming an unknown symbol."""
    import asyncpg

    sym = f"ZZ{unique[:6].upper()}"
    body = {"symbols": ["AAPL", sym]}
    r = await client.post("/api/optimizer/optimize", headers=user.headers, json=body)
    assert r.status_code == 422 and r.json()["unknown"] == [sym]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("INSERT INTO assets (symbol, name, type, source) VALUES ($1, 'test', 'stock', 'bundled')", sym)
    finally:
        await conn.close()
    r = await client.post("/api/optimizer/optimize", headers=user.headers, json=body)
    assert r.status_code == 422 and "unknown" not in r.json() and "too little history" in r.json()["detail"], r.text


async def test_symbols_universe_errors(client: AsyncTestClient, user: TestUser) -> None:
    post = lambda body: client.post("/api/optimizer/optimize", headers=user.headers, json=body)  # noqa: E731
    r = await post({"symbols": ["AAPL", "NOSUCH", "MSFT0"]})
    assert r.status_code == 422 and field_of(r) == "symbols"
    assert "NOSUCH" in r.json()["detail"] and r.json()["unknown"] == ["NOSUCH", "MSFT0"]

    r = await post({"symbols": ["AAPL", "JPM"], "lookback": 30})
    assert r.status_code == 422 and field_of(r) == "lookback" and r.json()["needed"] == 60

    r = await post({"symbols": ["AAPL", "META"], "lookback": 20_000})  # META's history is shorter
    assert r.status_code == 200, r.text
    assert any("META" in w for w in r.json()["warnings"])


async def test_frontier_from_symbols(client: AsyncTestClient, user: TestUser) -> None:
    r = await client.post("/api/optimizer/frontier", headers=user.headers, json={
        "symbols": ["AAPL", "JPM", "WMT", "XOM"], "points": 5, "covariance": "ledoit_wolf",
        "constraints": {"max_weight": 0.5}})
    assert r.status_code == 200, r.text
    pts = r.json()["points"]
    assert len(pts) == 5
    assert all(max(p["weights"].values()) <= 0.5 + 1e-7 for p in pts)
