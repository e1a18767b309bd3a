"""/api/optimizer/rebalance and the portfolio universe, on real portfolios (portfolio domain) priced
from the stored closes (market domain)."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from litestar.testing import AsyncTestClient

from tests.support.auth import TestUser, register_user

D = Decimal


@pytest.fixture(scope="module")
async def owner(client: AsyncTestClient) -> TestUser:
    await client.app.state.ctx.services["optimizer"].pool.wait_ready(180)
    return await register_user(client)


async def make_portfolio(client: AsyncTestClient, user: TestUser, cash: str, buys: dict[str, tuple[str, str]]) -> str:
    r = await client.post("/api/portfolio", headers=user.headers, json={"name": f"p-{uuid.uuid4().hex[:6]}"})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    txs = [{"type": "deposit", "amount": cash}] + [
        {"type": "buy", "symbol": s, "quantity": q, "price": p} for s, (q, p) in buys.items()]
    for tx in txs:
        r = await client.post(f"/api/portfolio/{pid}/transactions", headers=user.headers, json=tx)
        assert r.status_code == 201, r.text
    return pid


async def transaction_count(client: AsyncTestClient, user: TestUser, pid: str) -> int:
    r = await client.get(f"/api/portfolio/{pid}/transactions", headers=user.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    return len(body["items"] if isinstance(body, dict) else body)


async def test_rebalance_to_weights(client: AsyncTestClient, owner: TestUser) -> None:
    pid = await make_portfolio(client, owner, "100000", {"AAPL": ("100", "150"), "JPM": ("50", "120")})
    before = await transaction_count(client, owner, pid)
    r = await client.post("/api/optimizer/rebalance", headers=owner.headers, json={
        "portfolio_id": pid, "target": {"AAPL": 0.3, "WMT": 0.3, "XOM": 0.3}, "cash_buffer": 0.02})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["recorded"] is False
    trades = {t["symbol"]: t for t in body["trades"]}
    assert trades["JPM"]["side"] == "sell" and D(trades["JPM"]["quantity"]) == 50  # not in the target
    assert {"WMT", "XOM"} <= {s for s, t in trades.items() if t["side"] == "buy"}
    for p in body["positions"]:
        assert abs(D(p["quantity_after"]) - D(p["target_quantity"])) < 1
        assert D(p["quantity_after"]) == D(p["quantity_after"]).to_integral_value()
    assert D(body["cash_after"]) >= D(body["cash_buffer_value"]) >= 0
    total = D(body["total_value"])
    spent = sum((D(t["estimated_value"]) * (1 if t["side"] == "buy" else -1) for t in body["trades"]), D(0))
    assert D(body["cash_after"]) == D(body["cash_before"]) - spent
    assert D(body["drift_after"]) < D(body["drift_before"])
    assert D(body["turnover"]) > 0
    assert sum(D(w) for w in body["resulting_weights"].values()) + D(body["cash_weight_after"]) == pytest.approx(1, abs=1e-6)
    assert total > 0
    # prices: the market domain's latest (a live quote, else the last stored close, with a warning)
    prices = {p["symbol"]: D(p["price"]) for p in body["positions"]}
    assert all(D(t["estimated_price"]) == prices[t["symbol"]] for t in body["trades"])
    assert await transaction_count(client, owner, pid) == before  # nothing recorded


async def test_rebalance_to_an_optimization_of_the_holdings(client: AsyncTestClient, owner: TestUser) -> None:
    pid = await make_portfolio(client, owner, "50000", {"AAPL": ("40", "150"), "JPM": ("40", "120"),
                                                        "XOM": ("60", "100")})
    r = await client.post("/api/optimizer/rebalance", headers=owner.headers, json={
        "portfolio_id": pid, "target": {"model": "hrp", "lookback": 500}, "fractional": True,
        "min_trade_value": "50"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["optimization"]["universe"]["source"] == "portfolio"
    assert set(body["optimization"]["weights"]) == {"AAPL", "JPM", "XOM"}
    for t in body["trades"]:
        assert D(t["estimated_value"]) >= 50
    assert D(body["cash_after"]) >= 0


async def test_black_litterman_prior_from_current_weights(client: AsyncTestClient, owner: TestUser) -> None:
    pid = await make_portfolio(client, owner, "40000", {"AAPL": ("100", "150"), "WMT": ("100", "60")})
    r = await client.post("/api/optimizer/optimize", headers=owner.headers, json={
        "portfolio_id": pid, "model": "black_litterman", "objective": "min_risk",
        "views": [{"symbol": "AAPL", "versus": "WMT", "expected_return": 0.03}]})
    assert r.status_code == 200, r.text
    prior = r.json()["black_litterman"]["prior_weights"]
    assert prior["AAPL"] > prior["WMT"]  # AAPL's position is worth more than WMT's


async def test_rebalance_validation_and_ownership(client: AsyncTestClient, owner: TestUser) -> None:
    pid = await make_portfolio(client, owner, "10000", {"AAPL": ("10", "150")})
    post = lambda body: client.post("/api/optimizer/rebalance", headers=owner.headers,  # noqa: E731
                                    json={"portfolio_id": pid, **body})

    r = await post({"target": {"AAPL": 0.7, "JPM": 0.5}})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "target"
    r = await post({"target": {"AAPL": -0.1}})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "target.AAPL"
    r = await post({"target": {"NOSUCH": 0.5}})
    assert r.status_code == 422 and "NOSUCH" in r.json()["detail"]
    r = await post({"target": {}})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "target"
    r = await post({"target": {"model": "nope"}})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "target.model"
    r = await post({"target": {"model": "hrp"}})  # one holding: nothing to optimize
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "target.portfolio_id"
    r = await post({"target": {"AAPL": 0.5}, "min_trade_value": "-1"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "min_trade_value"

    stranger = await register_user(client)
    r = await client.post("/api/optimizer/rebalance", headers=stranger.headers,
                          json={"portfolio_id": pid, "target": {"AAPL": 0.5}})
    assert r.status_code == 404
    r = await client.post("/api/optimizer/optimize", headers=stranger.headers, json={"portfolio_id": pid})
    assert r.status_code == 404
