"""The portfolio API on the real app, database and Redis: ownership, the ledger, idempotency,
holdings/summary/performance, bad inputs, import/export."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from tests.support.auth import TestUser, register_user


@pytest.fixture
async def user(client: AsyncTestClient) -> TestUser:
    return await register_user(client)


async def new_portfolio(client: AsyncTestClient, user: TestUser, **kw: Any) -> str:
    r = await client.post("/api/portfolio", json={"name": "Main", **kw}, headers=user.headers)
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def post_tx(client: AsyncTestClient, user: TestUser, pid: str, body: dict, key: str | None = None,
                  expect: int | None = 201) -> Any:
    headers = dict(user.headers)
    if key:
        headers["Idempotency-Key"] = key
    r = await client.post(f"/api/portfolio/{pid}/transactions", json=body, headers=headers)
    if expect is not None:
        assert r.status_code == expect, r.text
    return r


def day(d: str) -> str:
    return f"{d}T15:00:00Z"


async def test_crud_and_ownership(client: AsyncTestClient, user: TestUser) -> None:
    pid = await new_portfolio(client, user, cost_basis_method="average")
    other = await register_user(client)
    r = await client.get(f"/api/portfolio/{pid}", headers=user.headers)
    assert r.status_code == 200 and r.json()["cost_basis_method"] == "average"
    for method, path, body in [("get", "", None), ("patch", "", {"name": "x"}), ("delete", "", None),
                               ("get", "/holdings", None), ("get", "/summary", None), ("get", "/performance", None),
                               ("get", "/transactions", None), ("post", "/transactions", {"type": "deposit", "amount": "1"}),
                               ("get", "/export", None),
                               ("delete", f"/transactions/{uuid.uuid4()}", None)]:
        kwargs: dict[str, Any] = {"headers": other.headers}
        if body is not None:
            kwargs["json"] = body
        r = await getattr(client, method)(f"/api/portfolio/{pid}{path}", **kwargs)
        assert r.status_code == 404, (method, path, r.text)
    r = await client.get("/api/portfolio", headers=other.headers)
    assert r.json() == []
    r = await client.patch(f"/api/portfolio/{pid}", json={"name": "Renamed"}, headers=user.headers)
    assert r.status_code == 200 and r.json()["name"] == "Renamed"
    r = await client.patch(f"/api/portfolio/{pid}", json={"owner": "me"}, headers=user.headers)
    assert r.status_code == 400
    assert (await client.get(f"/api/portfolio/{pid}")).status_code == 401
    r = await client.delete(f"/api/portfolio/{pid}", headers=user.headers)
    assert r.status_code == 204
    assert (await client.get(f"/api/portfolio/{pid}", headers=user.headers)).status_code == 404


async def test_portfolio_limit_per_user(client: AsyncTestClient, user: TestUser) -> None:
    from app.portfolio.service import MAX_PORTFOLIOS_PER_USER

    rs = await asyncio.gather(*[client.post("/api/portfolio", json={"name": f"p{k}"}, headers=user.headers)
                                for k in range(MAX_PORTFOLIOS_PER_USER + 5)])
    assert sorted(r.status_code for r in rs) == [201] * MAX_PORTFOLIOS_PER_USER + [409] * 5
    assert len((await client.get("/api/portfolio", headers=user.headers)).json()) == MAX_PORTFOLIOS_PER_USER
    r = await client.post("/api/portfolio", json={"name": "  "}, headers=user.headers)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "name"


async def test_ledger_holdings_summary(client: AsyncTestClient, user: TestUser) -> None:
    pid = await new_portfolio(client, user)
    await post_tx(client, user, pid, {"type": "deposit", "amount": "10000", "executed_at": day("2024-01-02")})
    await post_tx(client, user, pid, {"type": "buy", "symbol": "aapl", "quantity": "10", "price": "185.5",
                                      "fee": "1", "executed_at": day("2024-01-03")})
    await post_tx(client, user, pid, {"type": "buy", "symbol": "MSFT" if False else "JPM", "quantity": 5,
                                      "price": "170", "executed_at": day("2024-01-04")})
    r = await post_tx(client, user, pid, {"type": "sell", "symbol": "AAPL", "quantity": "4", "price": "190",
                                          "fee": "1", "executed_at": day("2024-02-01"), "note": "trim"})
    tx = r.json()
    assert tx["quantity"] == "4" and tx["price"] == "190" and tx["note"] == "trim" and tx["currency"] == "USD"
    r = await client.get(f"/api/portfolio/{pid}/holdings", headers=user.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    by = {h["symbol"]: h for h in body["holdings"]}
    assert by["AAPL"]["quantity"] == "6"
    assert Decimal(by["AAPL"]["cost_basis"]) == Decimal("1113.6")  # 6 × 185.5 + 6/10 of the fee
    assert Decimal(by["AAPL"]["realized_pnl"]) == Decimal(4 * 190 - 1) - Decimal("742.4")
    assert Decimal(body["cash"]) == Decimal(10000) - Decimal("1856") - 850 + 759
    assert all(isinstance(h["market_value"], str) for h in body["holdings"])
    r = await client.get(f"/api/portfolio/{pid}/summary", headers=user.headers)
    s = r.json()
    assert r.status_code == 200, r.text
    assert Decimal(s["total_value"]) == Decimal(s["market_value"]) + Decimal(s["cash"])
    assert Decimal(s["total_return"]["amount"]) == Decimal(s["total_value"]) - 10000
    assert [p["symbol"] for p in s["top_positions"]] == [h["symbol"] for h in body["holdings"]][:5]
    assert s["stale_prices"] == ["AAPL", "JPM"]  # MARKET_FEED=off: last stored closes
    assert s["as_of"] is not None and s["currency"] == "USD"
    # list with filters and cursor pagination
    seen = []
    cursor = None
    while True:
        url = f"/api/portfolio/{pid}/transactions?limit=1" + (f"&cursor={cursor}" if cursor else "")
        page = (await client.get(url, headers=user.headers)).json()
        seen += [t["type"] for t in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ["sell", "buy", "buy", "deposit"]
    page = (await client.get(f"/api/portfolio/{pid}/transactions?type=buy&symbol=aapl", headers=user.headers)).json()
    assert [t["symbol"] for t in page["items"]] == ["AAPL"]
    page = (await client.get(f"/api/portfolio/{pid}/transactions?from=2024-01-03&to=2024-01-04",
                             headers=user.headers)).json()
    assert [t["type"] for t in page["items"]] == ["buy", "buy"]
    for q, field in [("type=swap", "type"), ("limit=0", "limit"), ("limit=x", "limit"), ("cursor=@@", "cursor"),
                     ("from=yesterday", "from")]:
        r = await client.get(f"/api/portfolio/{pid}/transactions?{q}", headers=user.headers)
        assert r.status_code == 400 and r.json()["errors"][0]["field"] == field, (q, r.text)


async def test_oversell_back_dating_and_delete_recompute(client: AsyncTestClient, user: TestUser) -> None:
    pid = await new_portfolio(client, user)
    buy = (await post_tx(client, user, pid, {"type": "buy", "symbol": "AAPL", "quantity": "10", "price": "100",
                                             "executed_at": day("2023-01-03")})).json()
    r = await post_tx(client, user, pid, {"type": "sell", "symbol": "AAPL", "quantity": "10.5", "price": "1",
                                          "executed_at": day("2023-02-01")}, expect=409)
    problem = r.json()
    assert problem["symbol"] == "AAPL" and problem["available"] == "10" and "only 10" in problem["detail"]
    await post_tx(client, user, pid, {"type": "sell", "symbol": "AAPL", "quantity": "10", "price": "150",
                                      "executed_at": day("2023-06-01")})
    # back-dated sale before the later one: the later sale would oversell → 409, nothing written
    r = await post_tx(client, user, pid, {"type": "sell", "symbol": "AAPL", "quantity": "1", "price": "120",
                                          "executed_at": day("2023-03-01")}, expect=409)
    assert "later sell" in r.json()["detail"]
    # back-dated cheaper buy: FIFO now consumes it first
    await post_tx(client, user, pid, {"type": "buy", "symbol": "AAPL", "quantity": "10", "price": "50",
                                      "executed_at": day("2022-12-01")})
    h = (await client.get(f"/api/portfolio/{pid}/holdings", headers=user.headers)).json()["holdings"]
    assert h[0]["quantity"] == "10" and Decimal(h[0]["cost_basis"]) == 1000  # the 2023 lot remains
    assert Decimal(h[0]["realized_pnl"]) == 1000
    # deleting the first buy leaves 10 bought and 10 sold; deleting the other would break the sale
    txs = (await client.get(f"/api/portfolio/{pid}/transactions", headers=user.headers)).json()["items"]
    first = [t for t in txs if t["type"] == "buy" and t["price"] == "50"][0]
    r = await client.delete(f"/api/portfolio/{pid}/transactions/{first['id']}", headers=user.headers)
    assert r.status_code == 204
    r = await client.delete(f"/api/portfolio/{pid}/transactions/{buy['id']}", headers=user.headers)
    assert r.status_code == 409
    h = (await client.get(f"/api/portfolio/{pid}/holdings", headers=user.headers)).json()
    assert h["holdings"] == [] and Decimal(h["cash"]) == 1500  # the 1000 purchase was auto-funded
    r = await client.delete(f"/api/portfolio/{pid}/transactions/{uuid.uuid4()}", headers=user.headers)
    assert r.status_code == 404


async def test_split_keeps_value(client: AsyncTestClient, user: TestUser) -> None:
    pid = await new_portfolio(client, user)
    await post_tx(client, user, pid, {"type": "buy", "symbol": "GE", "quantity": "3", "price": "90",
                                      "executed_at": day("2024-01-02")})
    before = (await client.get(f"/api/portfolio/{pid}/holdings", headers=user.headers)).json()["holdings"][0]
    await post_tx(client, user, pid, {"type": "split", "symbol": "GE", "ratio": "4", "executed_at": day("2024-01-05")})
    after = (await client.get(f"/api/portfolio/{pid}/holdings", headers=user.headers)).json()["holdings"][0]
    assert after["quantity"] == "12" and after["cost_basis"] == before["cost_basis"] == "270"
    assert Decimal(after["average_cost"]) == Decimal("22.5")


BAD = [
    ({"type": "buy", "symbol": "AAPL", "quantity": "0", "price": "1"}, "quantity", 400),
    ({"type": "buy", "symbol": "AAPL", "quantity": "-5", "price": "1"}, "quantity", 400),
    ({"type": "buy", "symbol": "AAPL", "quantity": "abc", "price": "1"}, "quantity", 400),
    ({"type": "buy", "symbol": "AAPL", "quantity": "NaN", "price": "1"}, "quantity", 400),
    ({"type": "buy", "symbol": "AAPL", "quantity": "Infinity", "price": "1"}, "quantity", 400),
    ({"type": "buy", "symbol": "AAPL", "quantity": "1", "price": "-1"}, "price", 400),
    ({"type": "buy", "symbol": "AAPL", "quantity": "1"}, "price", 400),
    ({"type": "buy", "symbol": "NOPE", "quantity": "1", "price": "1"}, "symbol", 422),
    ({"type": "buy", "symbol": "AAPL", "quantity": "1", "price": "1", "executed_at": "2999-01-01T00:00:00Z"},
     "executed_at", 400),
    ({"type": "swap", "symbol": "AAPL", "quantity": "1", "price": "1"}, "type", 400),
    ({"type": "deposit", "amount": "1", "currency": "EUR"}, "currency", 400),
    ({"type": "deposit", "amount": "1", "quantity": "2"}, "quantity", 400),
    ({"type": "deposit", "amount": "0.000000000001"}, "amount", 400),
    ({"type": "deposit", "amount": "1", "colour": "red"}, "colour", 400),
    ({"type": "split", "symbol": "AAPL", "ratio": "0"}, "ratio", 400),
    ({"type": "buy", "symbol": "AAPL", "quantity": "1e20", "price": "1"}, "quantity", 400),
    ({"type": "buy", "symbol": "AAPL", "quantity": [1], "price": "1"}, "quantity", 400),
    ({"type": None, "amount": "1"}, "type", 400),
    ({"amount": "1"}, "type", 400),
    ({"type": "deposit", "amount": "1", "executed_at": "yesterday"}, "executed_at", 400),
    ({"type": "deposit", "amount": "1", "executed_at": "1850-01-01"}, "executed_at", 400),
    ({"type": "buy", "symbol": "AAPL; DROP TABLE", "quantity": "1", "price": "1"}, "symbol", 400),
    ({"type": "deposit", "amount": "1", "note": "x" * 501}, "note", 400),
    ({"type": "withdrawal", "amount": "5"}, "amount", 409),
]


@pytest.mark.parametrize("body,field,status", BAD)
async def test_bad_input_names_the_field_and_writes_nothing(client: AsyncTestClient, user: TestUser,
                                                            body: dict, field: str, status: int) -> None:
    pid = await new_portfolio(client, user)
    r = await post_tx(client, user, pid, body, expect=status)
    problem = r.json()
    fields = [e["field"] for e in problem.get("errors", [])]
    assert field in fields, problem
    page = (await client.get(f"/api/portfolio/{pid}/transactions", headers=user.headers)).json()
    assert page["items"] == []
    assert (await client.get(f"/api/portfolio/{pid}", headers=user.headers)).json()["ledger_version"] == 0


async def test_idempotency(client: AsyncTestClient, user: TestUser, database_url: str) -> None:
    pid = await new_portfolio(client, user)
    body = {"type": "deposit", "amount": "100"}
    first = await post_tx(client, user, pid, body, key="k-1")
    again = await post_tx(client, user, pid, body, key="k-1")
    assert again.content == first.content and again.headers.get("idempotent-replayed") == "true"
    r = await post_tx(client, user, pid, {"type": "deposit", "amount": "101"}, key="k-1", expect=422)
    assert r.json()["errors"][0]["field"] == "Idempotency-Key"
    page = (await client.get(f"/api/portfolio/{pid}/transactions", headers=user.headers)).json()
    assert len(page["items"]) == 1
    # a failed request releases its key: the same key may then succeed
    await post_tx(client, user, pid, {"type": "withdrawal", "amount": "1000"}, key="k-2", expect=409)
    await post_tx(client, user, pid, {"type": "withdrawal", "amount": "1000"}, key="k-2", expect=409)
    # a request in flight with the key → 409
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("INSERT INTO portfolio_idempotency_keys (user_id, portfolio_id, key, request_hash) "
                           "VALUES ($1, $2, 'k-3', 'x')", user.id, uuid.UUID(pid))
    finally:
        await conn.close()
    r = await post_tx(client, user, pid, body, key="k-3", expect=None)
    assert r.status_code in (409, 422)  # in flight (and, here, with another body)
    # two identical requests at once: one transaction, the other either replays or is told it is in flight
    rs = await asyncio.gather(*[post_tx(client, user, pid, {"type": "deposit", "amount": "7"}, key="k-4", expect=None)
                                for _ in range(5)])
    assert sorted({r.status_code for r in rs}) in ([201], [201, 409])
    page = (await client.get(f"/api/portfolio/{pid}/transactions?type=deposit", headers=user.headers)).json()
    assert [t["amount"] for t in page["items"]].count("7") == 1


async def test_in_flight_same_body_is_409(client: AsyncTestClient, user: TestUser, database_url: str) -> None:
    from app.portfolio.schemas import TransactionIn
    from app.portfolio.service import request_hash

    import msgspec
    pid = await new_portfolio(client, user)
    body = {"type": "deposit", "amount": "5"}
    digest = request_hash(msgspec.convert(body, TransactionIn))
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("INSERT INTO portfolio_idempotency_keys (user_id, portfolio_id, key, request_hash) "
                           "VALUES ($1, $2, 'busy', $3)", user.id, uuid.UUID(pid), digest)
    finally:
        await conn.close()
    r = await post_tx(client, user, pid, body, key="busy", expect=409)
    assert "in flight" in r.json()["detail"]


async def check_consistent(client: AsyncTestClient, user: TestUser, pid: str) -> dict[str, Any]:
    """The stored holdings equal a fresh replay of the exported ledger."""
    from app.portfolio.importer import check_rows, read_json, split_errors
    from app.portfolio.ledger import replay

    exported = (await client.get(f"/api/portfolio/{pid}/export?format=json", headers=user.headers)).json()
    rows, _ = split_errors(read_json(__import__("msgspec").json.encode(exported), 100_000))
    good, bad = check_rows(rows, base_currency="USD", now=datetime.now(UTC) + timedelta(minutes=5))
    assert not bad
    state = replay([e.to_tx(seq=k) for k, (_, e) in enumerate(good)], exported["portfolio"]["cost_basis_method"])
    h = (await client.get(f"/api/portfolio/{pid}/holdings", headers=user.headers)).json()
    assert Decimal(h["cash"]) == state.cash
    assert {x["symbol"]: Decimal(x["quantity"]) for x in h["holdings"]} == \
        {p.symbol: p.quantity for p in state.positions.values() if p.lots}
    return h


async def test_concurrent_trades_keep_a_consistent_ledger(client: AsyncTestClient, user: TestUser) -> None:
    pid = await new_portfolio(client, user)
    start = datetime.now(UTC) - timedelta(days=30)
    await post_tx(client, user, pid, {"type": "buy", "symbol": "AAPL", "quantity": "30", "price": "100",
                                      "executed_at": start.isoformat()})
    # 40 sales of one share — half "now", half back-dated into the last 30 days (full replays) — and 10 buys
    sells = [post_tx(client, user, pid, {"type": "sell", "symbol": "AAPL", "quantity": "1", "price": "101",
                                         **({"executed_at": (start + timedelta(days=1 + k % 28)).isoformat()}
                                            if k % 2 else {})}, expect=None) for k in range(40)]
    buys = [post_tx(client, user, pid, {"type": "buy", "symbol": "JPM", "quantity": "1", "price": "10"},
                    expect=None) for _ in range(10)]
    rs = await asyncio.gather(*sells, *buys)
    codes = [r.status_code for r in rs]
    assert codes[:40].count(201) == 30 and codes[:40].count(409) == 10, codes
    assert codes[40:] == [201] * 10
    h = await check_consistent(client, user, pid)
    by = {x["symbol"]: x for x in h["holdings"]}
    assert "AAPL" not in by and by["JPM"]["quantity"] == "10"
    page = (await client.get(f"/api/portfolio/{pid}/transactions?limit=500", headers=user.headers)).json()
    assert len(page["items"]) == 41
    p = (await client.get(f"/api/portfolio/{pid}", headers=user.headers)).json()
    assert p["ledger_version"] == 41


async def test_concurrent_trades_across_two_processes(client: AsyncTestClient, user: TestUser,
                                                      test_env: dict[str, str]) -> None:
    """The in-process queue only orders one process; the row lock must hold across replicas."""
    import httpx

    from tests.support.services import AppProcess

    pid = await new_portfolio(client, user)
    await post_tx(client, user, pid, {"type": "buy", "symbol": "XOM", "quantity": "20", "price": "100"})
    servers = [AppProcess(test_env), AppProcess(test_env)]
    for server in servers:
        server.start(wait=60)
    try:
        clients = [httpx.AsyncClient(base_url=s.base_url, timeout=60) for s in servers]
        body = {"type": "sell", "symbol": "XOM", "quantity": "1", "price": "99"}
        url = f"/api/portfolio/{pid}/transactions"
        await asyncio.gather(*[c.get("/health/live") for c in clients])
        rs = await asyncio.gather(*[clients[k % 2].post(url, json=body, headers=user.headers) for k in range(30)])
        for c in clients:
            await c.aclose()
    finally:
        for server in servers:
            server.stop()
    codes = [r.status_code for r in rs]
    assert codes.count(201) == 20 and codes.count(409) == 10, codes
    h = await check_consistent(client, user, pid)
    assert h["holdings"] == []


async def test_performance(client: AsyncTestClient, user: TestUser) -> None:
    pid = await new_portfolio(client, user)
    await post_tx(client, user, pid, {"type": "deposit", "amount": "10000", "executed_at": day("2023-01-03")})
    await post_tx(client, user, pid, {"type": "buy", "symbol": "SPY", "quantity": "20", "price": "380",
                                      "executed_at": day("2023-01-03")})
    await post_tx(client, user, pid, {"type": "deposit", "amount": "5000", "executed_at": day("2023-06-01")})
    r = await client.get(f"/api/portfolio/{pid}/performance?range=max&benchmark=SPY", headers=user.headers)
    assert r.status_code == 200, r.text
    perf = r.json()
    n = len(perf["dates"])
    assert n > 200 and len(perf["values"]) == n == len(perf["net_flows"]) == len(perf["benchmark"]["values"])
    assert perf["benchmark"]["values"][0] == 100
    assert Decimal(perf["net_contributions"][-1]) == 15000
    assert sum(Decimal(f) for f in perf["net_flows"]) == 5000  # the first day's deposit is the start value
    # the portfolio is SPY plus cash: its TWR lies between 0 and SPY's own return over the period
    twr, spy = float(perf["time_weighted_return"]), float(perf["benchmark"]["total_return"])
    assert 0 < twr < spy
    assert perf["money_weighted_return"] is not None
    r = await client.get(f"/api/portfolio/{pid}/performance?range=1m&benchmark=SPY", headers=user.headers)
    assert 15 <= len(r.json()["dates"]) <= 24
    for q, field, status in [("range=2d", "range", 400), ("benchmark=NOPE", "benchmark", 422)]:
        r = await client.get(f"/api/portfolio/{pid}/performance?{q}", headers=user.headers)
        assert r.status_code == status and r.json()["errors"][0]["field"] == field


CSV = """Trade Date,Action,Ticker,Shares,Price,Commission,Amount,Notes
2024-01-02,Deposit,,,,,"5,000.00",funding
2024-01-03,Bought,AAPL,10,185.64,1.00,,
2024-01-04,BUY,JPM,5,$170.10,,,"multi
line note"
2024-02-01,Sold,AAPL,4,188.85,1,,
2024-03-15,Dividend,JPM,,,,5.75,
"""


async def test_import_export_round_trip(client: AsyncTestClient, user: TestUser) -> None:
    pid = await new_portfolio(client, user)
    url = f"/api/portfolio/{pid}/import"
    r = await client.post(url + "?dry_run=true", content=CSV, headers={**user.headers, "Content-Type": "text/csv"})
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["valid"] and report["rows"] == 5 and report["imported"] == 0 and report["by_type"]["buy"] == 2
    assert (await client.get(f"/api/portfolio/{pid}/transactions", headers=user.headers)).json()["items"] == []
    r = await client.post(url, content=CSV, headers={**user.headers, "Content-Type": "text/csv"})
    assert r.status_code == 200 and r.json()["imported"] == 5, r.text
    exported = await client.get(f"/api/portfolio/{pid}/export?format=csv", headers=user.headers)
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    assert "multi\nline note" in exported.text
    # into a fresh portfolio: the same ledger and the same export
    pid2 = await new_portfolio(client, user)
    r = await client.post(f"/api/portfolio/{pid2}/import", content=exported.text,
                          headers={**user.headers, "Content-Type": "text/csv"})
    assert r.status_code == 200, r.text
    again = await client.get(f"/api/portfolio/{pid2}/export?format=csv", headers=user.headers)
    assert again.text == exported.text
    pid4 = await new_portfolio(client, user)  # the same file as a multipart upload
    r = await client.post(f"/api/portfolio/{pid4}/import", files={"file": ("ledger.csv", exported.text, "text/csv")},
                          headers=user.headers)
    assert r.status_code == 200 and r.json()["imported"] == 5, r.text
    as_json = (await client.get(f"/api/portfolio/{pid}/export?format=json", headers=user.headers)).json()
    pid3 = await new_portfolio(client, user)
    r = await client.post(f"/api/portfolio/{pid3}/import", json=as_json, headers=user.headers)
    assert r.status_code == 200, r.text
    assert (await client.get(f"/api/portfolio/{pid3}/export?format=json", headers=user.headers)).json()["transactions"] \
        == as_json["transactions"]
    s1 = (await client.get(f"/api/portfolio/{pid}/summary", headers=user.headers)).json()
    s3 = (await client.get(f"/api/portfolio/{pid3}/summary", headers=user.headers)).json()
    assert s1["total_value"] == s3["total_value"] and s1["realized_pnl"] == s3["realized_pnl"]


BAD_CSV = """date,type,symbol,quantity,price
2024-01-02,buy,AAPL,10,100
2024-13-01,buy,AAPL,1,100
2024-01-03,swap,AAPL,1,100
2024-01-04,buy,NOPE,1,100
2024-01-05,buy,AAPL,-1,100
2024-01-06,buy,AAPL,1,NaN
2999-01-01,buy,AAPL,1,1
2024-01-07,sell,AAPL,50,100
"""


async def test_import_reports_every_bad_row_and_writes_nothing(client: AsyncTestClient, user: TestUser) -> None:
    pid = await new_portfolio(client, user)
    for dry in ("true", "false"):
        r = await client.post(f"/api/portfolio/{pid}/import?dry_run={dry}", content=BAD_CSV,
                              headers={**user.headers, "Content-Type": "text/csv"})
        assert r.status_code == (200 if dry == "true" else 422), r.text
        errors = {(e["line"], e["field"]) for e in r.json()["errors"]}
        assert errors == {(3, "executed_at"), (4, "type"), (5, "symbol"), (6, "quantity"), (7, "price"),
                          (8, "executed_at"), (9, "quantity")}, errors
        assert not r.json()["valid"]
    # the oversell is found by the ledger check once the other rows are fixed
    good = "date,type,symbol,quantity,price\n2024-01-02,buy,AAPL,10,100\n2024-01-07,sell,AAPL,50,100\n"
    r = await client.post(f"/api/portfolio/{pid}/import?dry_run=true", content=good,
                          headers={**user.headers, "Content-Type": "text/csv"})
    assert [(e["line"], e["field"]) for e in r.json()["errors"]] == [(3, "quantity")]
    assert (await client.get(f"/api/portfolio/{pid}/transactions", headers=user.headers)).json()["items"] == []
    r = await client.post(f"/api/portfolio/{pid}/import", content="when,what\n1,2\n",
                          headers={**user.headers, "Content-Type": "text/csv"})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "header"


async def test_oversized_import_is_413(client: AsyncTestClient, user: TestUser, settings: Any) -> None:
    pid = await new_portfolio(client, user)
    line = "2024-01-02,deposit,,,,1\n"
    big = "date,type,symbol,quantity,price,amount\n" + line * (settings.portfolio_import_max_bytes // len(line) + 10)
    r = await client.post(f"/api/portfolio/{pid}/import", content=big,
                          headers={**user.headers, "Content-Type": "text/csv"})
    assert r.status_code == 413 and r.json()["errors"][0]["field"] == "file"
    assert (await client.get(f"/api/portfolio/{pid}/transactions", headers=user.headers)).json()["items"] == []


async def test_pnl_today_counts_todays_trade_at_its_price(client: AsyncTestClient, user: TestUser) -> None:
    pid = await new_portfolio(client, user)
    now = datetime.now(UTC)
    yesterday = (now - timedelta(days=1)).isoformat()
    await post_tx(client, user, pid, {"type": "deposit", "amount": "10000", "executed_at": yesterday})
    await post_tx(client, user, pid, {"type": "buy", "symbol": "WMT", "quantity": "10", "price": "50",
                                      "executed_at": yesterday})
    h0 = (await client.get(f"/api/portfolio/{pid}/holdings", headers=user.headers)).json()["holdings"][0]
    price, prev = Decimal(h0["last_price"]), Decimal(h0["previous_close"])
    await post_tx(client, user, pid, {"type": "buy", "symbol": "WMT", "quantity": "5", "price": "80", "fee": "1"})
    s = (await client.get(f"/api/portfolio/{pid}/summary", headers=user.headers)).json()
    expected = 10 * (price - prev) + 5 * (price - 80) - 1
    assert Decimal(s["pnl_today"]["amount"]) == expected


async def test_contract_for_other_domains(client: AsyncTestClient, user: TestUser, settings: Any) -> None:
    """The names analytics/optimizer build against: get_owned_portfolio, get_holdings,
    portfolio_daily_series, ledger_version, and the publication on portfolio:{id}."""
    from app.cache import create_cache
    from app.context import AppContext
    from app.db import Database, create_pool
    from app.errors import NotFound
    from app.portfolio import service

    pool = await create_pool(settings, min_size=1, max_size=2)
    ctx = AppContext(settings=settings, db=Database(pool), cache=create_cache(settings.redis_url))
    try:
        await _contract(client, user, ctx, service, NotFound)
    finally:
        await ctx.cache.close()
        await pool.close()


async def _contract(client: AsyncTestClient, user: TestUser, ctx: Any, service: Any, NotFound: Any) -> None:
    pid = await new_portfolio(client, user)
    await post_tx(client, user, pid, {"type": "deposit", "amount": "5000", "executed_at": day("2024-03-01")})
    await post_tx(client, user, pid, {"type": "buy", "symbol": "AAPL", "quantity": "10", "price": "180",
                                      "executed_at": day("2024-03-04")})
    p = await service.get_owned_portfolio(ctx.db, uuid.UUID(pid), user.id)
    assert p.name == "Main" and p.cost_basis_method == "fifo"
    with pytest.raises(NotFound):
        await service.get_owned_portfolio(ctx.db, uuid.UUID(pid), uuid.uuid4())
    view = await service.get_holdings(ctx, uuid.UUID(pid), user.id)
    assert view.cash == Decimal(3200) and view.holdings[0].symbol == "AAPL"
    assert view.total_value == view.cash + view.holdings[0].market_value
    series = await service.portfolio_daily_series(ctx, uuid.UUID(pid), user.id)
    assert len(series.returns) == len(series.dates) - 1 and len(series.values) == len(series.dates) > 100
    assert all(isinstance(v, Decimal) for v in series.values) and series.net_flows[0] == 0
    assert set(series.weights_by_symbol) == {"AAPL"} and len(series.weights_by_symbol["AAPL"]) == len(series.dates)
    version = await service.ledger_version(ctx, uuid.UUID(pid))
    assert version == 2

    async def first_message() -> bytes:
        async for _, message in ctx.cache.subscribe([f"portfolio:{pid}"]):
            return message
        raise AssertionError

    waiter = asyncio.create_task(first_message())
    await asyncio.sleep(0.3)
    await post_tx(client, user, pid, {"type": "deposit", "amount": "1"})
    import msgspec
    msg = msgspec.json.decode(await asyncio.wait_for(waiter, 5))
    assert msg == {"event": "ledger", "portfolio_id": pid, "ledger_version": 3}


async def test_openapi_lists_the_portfolio_api(client: AsyncTestClient) -> None:
    r = await client.get("/schema/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    for path in ("/api/portfolio", "/api/portfolio/{portfolio_id}/transactions", "/api/portfolio/{portfolio_id}/summary",
                 "/api/portfolio/{portfolio_id}/performance", "/api/portfolio/{portfolio_id}/import",
                 "/api/portfolio/{portfolio_id}/export"):
        assert path in paths, path


async def test_a_just_expired_valuation_is_served_while_one_task_redoes_it(client: AsyncTestClient, user: TestUser,
                                                                         settings: Any) -> None:
    """Live prices: within REVALUE_GRACE past its prices' expiry, a request gets the valuation of moments
    ago and one background task values afresh; past the grace, the request values inline."""
    import time as clock

    import msgspec

    from app.cache import create_cache
    from app.context import AppContext
    from app.db import Database, create_pool
    from app.market.snapshot import Snapshot, snapshot_key
    from app.portfolio import service

    pool = await create_pool(settings, min_size=1, max_size=2)
    ctx = AppContext(settings=settings, db=Database(pool), cache=create_cache(settings.redis_url))
    symbol = "XOM"

    async def quote(price: str) -> None:
        now = int(clock.time() * 1000)
        await ctx.cache.set(snapshot_key(symbol), msgspec.json.encode(
            Snapshot(symbol=symbol, price=Decimal(price), trade_ts=now, prev_close=Decimal(100), updated=now)))
        service._PRICES.clear()  # the next lookup reads the quote cache

    try:
        pid = uuid.UUID(await new_portfolio(client, user))
        await post_tx(client, user, str(pid), {"type": "buy", "symbol": symbol, "quantity": "10", "price": "100"})
        await quote("110")
        v1 = await service.valuation(ctx, pid, user.id)
        assert v1.valuation.market_value == 1100
        d = service._STATE[pid]
        assert d.memo_fresh_until > clock.monotonic()  # a live price: memoized for LIVE_PRICE_TTL
        await quote("120")
        d.memo_fresh_until = clock.monotonic() - 0.001  # just expired
        v2 = await service.valuation(ctx, pid, user.id)
        assert v2.valuation.market_value == 1100 and d.revaluing is not None  # served, being redone
        task = d.revaluing
        await service.valuation(ctx, pid, user.id)
        assert d.revaluing in (task, None)  # never a second task for the same refresh
        await task
        assert d.revaluing is None
        assert (await service.valuation(ctx, pid, user.id)).valuation.market_value == 1200
        await quote("130")
        d.memo_fresh_until = clock.monotonic() - service.REVALUE_GRACE - 0.001  # long expired
        assert (await service.valuation(ctx, pid, user.id)).valuation.market_value == 1300  # inline
    finally:
        await ctx.cache.close()
        await pool.close()
