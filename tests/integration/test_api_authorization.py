"""Object-level authorization (BOLA) across every route that takes an id: another user's portfolio,
transaction or session answers 404 exactly like an unknown id — never its data, never a change — and
admin routes answer 403 to a user.

Each case is sent by the attacker with the victim's ids; for read-only cases the same request by the
victim is the control (2xx), so the 404 is the ownership check, not missing data. After every case
the victim's portfolio, ledger, session and role are checked unchanged.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.support.auth import TestUser, register_user

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
async def world(client: Any) -> dict[str, Any]:
    victim, attacker = await register_user(client), await register_user(client)
    name = f"victim-{uuid.uuid4().hex[:10]}"
    r = await client.post("/api/portfolio", json={"name": name}, headers=victim.headers)
    assert r.status_code == 201, r.text
    v_pid = r.json()["id"]
    tx_ids = []
    for body in ({"type": "deposit", "amount": "100000", "executed_at": "2020-01-02T00:00:00Z"},
                 {"type": "buy", "symbol": "AAPL", "quantity": "100", "price": "75",
                  "executed_at": "2020-01-03T00:00:00Z"},
                 {"type": "buy", "symbol": "JPM", "quantity": "100", "price": "140",
                  "executed_at": "2020-01-03T00:00:00Z"}):
        r = await client.post(f"/api/portfolio/{v_pid}/transactions", json=body, headers=victim.headers)
        assert r.status_code == 201, r.text
        tx_ids.append(r.json()["id"])
    r = await client.post("/api/portfolio", json={"name": "attacker's own"}, headers=attacker.headers)
    assert r.status_code == 201, r.text
    sessions = (await client.get("/api/auth/sessions", headers=victim.headers)).json()
    return {"victim": victim, "attacker": attacker, "name": name, "v_pid": v_pid, "v_tx": tx_ids[0],
            "v_session": next(s["id"] for s in sessions if s["current"]), "a_pid": r.json()["id"]}


def _sub(value: Any, w: dict[str, Any]) -> Any:
    if isinstance(value, str):
        for key in ("v_pid", "v_tx", "v_session", "a_pid"):
            value = value.replace("{" + key + "}", str(w[key]))
        return value.replace("{v_user}", str(w["victim"].id))
    if isinstance(value, dict):
        return {k: _sub(v, w) for k, v in value.items()}
    if isinstance(value, list):
        return [_sub(v, w) for v in value]
    return value


CSV = b"date,type,amount\n2024-01-02,deposit,1\n"
# (id, method, path, kwargs, status for the attacker, control: the victim's request succeeds (read-only))
CASES: list[tuple[str, str, str, dict[str, Any], int, bool]] = [
    ("portfolio-get", "GET", "/api/portfolio/{v_pid}", {}, 404, True),
    ("portfolio-rename", "PATCH", "/api/portfolio/{v_pid}", {"json": {"name": "pwned"}}, 404, False),
    ("portfolio-method", "PATCH", "/api/portfolio/{v_pid}", {"json": {"cost_basis_method": "average"}}, 404, False),
    ("portfolio-delete", "DELETE", "/api/portfolio/{v_pid}", {}, 404, False),
    ("transactions-list", "GET", "/api/portfolio/{v_pid}/transactions", {}, 404, True),
    ("transaction-add", "POST", "/api/portfolio/{v_pid}/transactions",
     {"json": {"type": "withdrawal", "amount": "1"}}, 404, False),
    ("transaction-add-idempotent", "POST", "/api/portfolio/{v_pid}/transactions",
     {"json": {"type": "withdrawal", "amount": "1"}, "headers": {"Idempotency-Key": "k-1"}}, 404, False),
    ("transaction-delete", "DELETE", "/api/portfolio/{v_pid}/transactions/{v_tx}", {}, 404, False),
    # the attacker's own portfolio with the victim's transaction id
    ("transaction-delete-via-own-portfolio", "DELETE", "/api/portfolio/{a_pid}/transactions/{v_tx}", {}, 404, False),
    ("holdings", "GET", "/api/portfolio/{v_pid}/holdings", {}, 404, True),
    ("summary", "GET", "/api/portfolio/{v_pid}/summary", {}, 404, True),
    ("performance", "GET", "/api/portfolio/{v_pid}/performance?range=max", {}, 404, True),
    ("export-csv", "GET", "/api/portfolio/{v_pid}/export?format=csv", {}, 404, True),
    ("export-json", "GET", "/api/portfolio/{v_pid}/export?format=json", {}, 404, True),
    ("import", "POST", "/api/portfolio/{v_pid}/import", {"content": CSV, "headers": {"content-type": "text/csv"}},
     404, False),
    ("import-dry-run", "POST", "/api/portfolio/{v_pid}/import?dry_run=true",
     {"content": CSV, "headers": {"content-type": "text/csv"}}, 404, True),
    ("analytics-risk", "GET", "/api/analytics/portfolio/{v_pid}/risk?window=max", {}, 404, True),
    ("analytics-forecast", "GET", "/api/analytics/portfolio/{v_pid}/forecast?window=max", {}, 404, True),
    ("analytics-insights", "GET", "/api/analytics/portfolio/{v_pid}/insights", {}, 404, True),
    ("optimizer-optimize", "POST", "/api/optimizer/optimize",
     {"json": {"portfolio_id": "{v_pid}", "model": "hrp"}}, 404, True),
    ("optimizer-frontier", "POST", "/api/optimizer/frontier",
     {"json": {"portfolio_id": "{v_pid}", "points": 3}}, 404, True),
    ("optimizer-rebalance", "POST", "/api/optimizer/rebalance",
     {"json": {"portfolio_id": "{v_pid}", "target": {"AAPL": 0.5, "JPM": 0.5}}}, 404, True),
    # the attacker's own portfolio, optimized over the victim's holdings
    ("optimizer-rebalance-nested-target", "POST", "/api/optimizer/rebalance",
     {"json": {"portfolio_id": "{a_pid}", "target": {"portfolio_id": "{v_pid}", "model": "hrp"}}}, 404, False),
    ("session-delete", "DELETE", "/api/auth/sessions/{v_session}", {}, 404, False),
    ("admin-user-patch", "PATCH", "/api/user/{v_user}", {"json": {"disabled": True}}, 403, False),
    ("admin-user-promote", "PATCH", "/api/user/{v_user}", {"json": {"role": "admin"}}, 403, False),
    ("admin-user-list", "GET", "/api/user", {}, 403, False),
]


async def _victim_state(client: Any, w: dict[str, Any]) -> tuple[Any, ...]:
    h = w["victim"].headers
    p = await client.get(f"/api/portfolio/{w['v_pid']}", headers=h)
    assert p.status_code == 200, f"the victim lost their portfolio: {p.text}"
    txs = await client.get(f"/api/portfolio/{w['v_pid']}/transactions", headers=h)
    me = await client.get("/api/user/me", headers=h)
    assert me.status_code == 200, f"the victim's session ended: {me.text}"
    body = p.json()
    return (body["name"], body["cost_basis_method"], body["ledger_version"],
            sorted(t["id"] for t in txs.json()["items"]), me.json()["role"])


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "control"),
                         [pytest.param(*c[1:], id=c[0]) for c in CASES])
async def test_another_users_object_is_not_found(client: Any, world: dict[str, Any], method: str, path: str,
                                                 kwargs: dict[str, Any], status: int, control: bool) -> None:
    attacker: TestUser = world["attacker"]
    before = await _victim_state(client, world)
    extra = _sub(kwargs, world)
    headers = extra.pop("headers", {})
    url = _sub(path, world)

    r = await client.request(method, url, headers={**attacker.headers, **headers}, **extra)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    for secret in (world["name"], world["victim"].email, '"AAPL"', '"JPM"'):
        assert secret not in r.text, f"{secret} leaked: {r.text}"
    assert await _victim_state(client, world) == before

    if control:  # the very same request by the owner works: the 404 above is the ownership check
        r = await client.request(method, url, headers={**world["victim"].headers, **headers}, **extra)
        assert 200 <= r.status_code < 300, r.text


async def test_an_unknown_id_answers_like_someone_elses(client: Any, world: dict[str, Any]) -> None:
    attacker: TestUser = world["attacker"]
    theirs = await client.get(f"/api/portfolio/{world['v_pid']}/summary", headers=attacker.headers)
    nobody = await client.get(f"/api/portfolio/{uuid.uuid4()}/summary", headers=attacker.headers)
    assert theirs.status_code == nobody.status_code == 404
    assert theirs.json()["detail"] == nobody.json()["detail"]


async def test_market_feed_subscribe_portfolio_refuses_another_users_portfolio(client: Any,
                                                                               world: dict[str, Any]) -> None:
    ws = await client.websocket_connect(f"/market-feed?token={world['attacker'].access_token}")
    with ws:
        assert ws.receive_json()[0]["action"] == "auth"
        for i, pid in enumerate((world["v_pid"], str(uuid.uuid4())), 1):
            ws.send_json({"action": "subscribe_portfolio", "portfolio_id": pid, "id": i})
            (event,) = ws.receive_json()
            assert event["type"] == "error" and event["status"] == 404 and event["id"] == i, event
            assert world["name"] not in str(event)
        ws.send_json({"action": "subscribe_portfolio", "portfolio_id": world["a_pid"], "id": 3})
        (ack,) = ws.receive_json()
        assert ack["type"] == "ack" and ack["portfolio_id"] == world["a_pid"], ack
