"""Hostile inputs found by the API fuzzing (tests/integration/test_api_fuzz.py) and by hand: each used to
answer 500 or be taken as something it is not; each must now be a 4xx problem body naming the input.

- NUL characters (PostgreSQL text cannot hold them) in bodies, query strings and paths;
- dates whose UTC value leaves years 1–9999; JSON nested deeper than the decoder's recursion limit;
- no body, a body that is not JSON, a body declared as another media type, a 50 MB body;
- ids in the path that are not UUIDs.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import asyncpg
import pytest
from litestar import Litestar, post
from litestar.testing import AsyncTestClient

from app.errors import EXCEPTION_HANDLERS
from tests.support.auth import TestUser, make_admin, register_user

PROBLEM = "application/problem+json"
BIG = 50 * 1024 * 1024


@pytest.fixture(scope="module")
async def world(client: Any, database_url: str) -> dict[str, Any]:
    user = await register_user(client)
    admin = await register_user(client)
    await make_admin(database_url, admin.id)
    r = await client.post("/api/portfolio", json={"name": "edges"}, headers=user.headers)
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    r = await client.post(f"/api/portfolio/{pid}/transactions", headers=user.headers,
                          json={"type": "deposit", "amount": "1000", "executed_at": "2024-01-02T00:00:00Z"})
    assert r.status_code == 201, r.text
    return {"user": user, "admin": admin, "pid": pid}


def _problem(r: Any, status: int, field: str | None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    body = r.json()
    assert body["status"] == status and body["detail"]
    if field is not None:
        assert field in [e["field"] for e in body.get("errors", [])], body
    return body


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


# (id, method, path — {pid} is the user's portfolio —, request kwargs, status, field named)
CASES: list[tuple[str, str, str, dict[str, Any], int, str | None]] = [
    # NUL in JSON bodies (each was a 500: asyncpg CharacterNotInRepertoireError)
    ("portfolio-name-nul", "POST", "/api/portfolio", {"json": {"name": "a\x00b"}}, 400, "name"),
    ("portfolio-rename-nul", "PATCH", "/api/portfolio/{pid}", {"json": {"name": "a\x00b"}}, 400, "name"),
    ("transaction-note-nul", "POST", "/api/portfolio/{pid}/transactions",
     {"json": {"type": "deposit", "amount": "5", "note": "a\x00b"}}, 400, "note"),
    ("register-email-nul", "POST", "/api/auth/register",
     {"json": {"email": "x\x00@example.com", "password": "edge case pass 1"}, "public": True}, 400, "email"),
    ("register-display-name-nul", "POST", "/api/auth/register",
     {"json": {"email": f"dn-{uuid.uuid4().hex[:8]}@example.com", "password": "edge case pass 1",
               "display_name": "a\x00b"}, "public": True}, 400, "display_name"),
    ("login-email-nul", "POST", "/api/auth/login",
     {"json": {"email": "x\x00@example.com", "password": "edge case pass 1"}, "public": True}, 400, "email"),
    ("profile-display-name-nul", "PATCH", "/api/user/me", {"json": {"display_name": "a\x00b"}}, 400, "display_name"),
    ("optimize-symbol-nul", "POST", "/api/optimizer/optimize", {"json": {"symbols": ["a\x00b", "AAPL"]}},
     422, "symbols[0]"),
    ("rebalance-target-nul", "POST", "/api/optimizer/rebalance",
     {"json": {"portfolio_id": "{pid}", "target": {"a\x00b": 0.5}}}, 422, "target"),
    # NUL in query strings and paths: refused for every route before any handler (app.logs)
    ("transactions-symbol-nul", "GET", "/api/portfolio/{pid}/transactions?symbol=a%00b", {}, 400, "symbol"),
    ("performance-benchmark-nul", "GET", "/api/portfolio/{pid}/performance?benchmark=a%00b", {}, 400, "benchmark"),
    ("assets-search-nul", "GET", "/api/markets/assets?search=a%00b", {}, 400, "search"),
    ("quotes-symbols-nul", "GET", "/api/markets/quotes?symbols=a%00b", {}, 400, "symbols"),
    ("asset-path-nul", "GET", "/api/markets/assets/a%00b", {}, 400, "path"),
    ("history-path-nul", "GET", "/api/markets/history/a%00b", {}, 400, "path"),
    # malformed filters that reached the database
    ("transactions-symbol-junk", "GET", "/api/portfolio/{pid}/transactions?symbol=%24%24", {}, 400, "symbol"),
    ("performance-benchmark-junk", "GET", "/api/portfolio/{pid}/performance?benchmark=%24%24", {}, 400, "benchmark"),
    # dates out of Python's / PostgreSQL's range (OverflowError, asyncpg DataError: 500s)
    ("transactions-to-9999", "GET", "/api/portfolio/{pid}/transactions?to=9999-12-31", {}, 400, "to"),
    ("transactions-from-offset-past-9999", "GET",
     "/api/portfolio/{pid}/transactions?from=9999-12-31T23:59:59-23:59", {}, 400, "from"),
    ("executed-at-before-year-1-in-utc", "POST", "/api/portfolio/{pid}/transactions",
     {"json": {"type": "deposit", "amount": "5", "executed_at": "0001-01-01T00:00:00+05:00"}}, 400, "executed_at"),
    ("executed-at-after-9999-in-utc", "POST", "/api/portfolio/{pid}/transactions",
     {"json": {"type": "deposit", "amount": "5", "executed_at": "9999-12-31T23:59:59-05:00"}}, 400, "executed_at"),
    # crafted pagination cursors (bigint overflow, offsets past year 9999: asyncpg DataError 500s)
    ("cursor-seq-past-bigint", "GET", "/api/portfolio/{pid}/transactions?cursor="
     + _cursor("2024-01-01T00:00:00+00:00|99999999999999999999"), {}, 400, "cursor"),
    ("cursor-time-past-9999-in-utc", "GET", "/api/portfolio/{pid}/transactions?cursor="
     + _cursor("9999-12-31T23:59:59-23:00|1"), {}, 400, "cursor"),
    ("cursor-time-before-year-1-in-utc", "GET", "/api/portfolio/{pid}/transactions?cursor="
     + _cursor("0001-01-01T00:00:00+23:00|1"), {}, 400, "cursor"),
    ("user-list-offset-past-bigint", "GET", "/api/user?offset=9223372036854775808", {"admin": True}, 400, "offset"),
    # numbers: a quantity that rounds to 0 in a 28-digit context passed the decimal-places check and
    # could not be stored (500); more than 28 digits were silently rounded
    ("quantity-1e-999999999", "POST", "/api/portfolio/{pid}/transactions",
     {"json": {"type": "buy", "symbol": "AAPL", "quantity": "1E-999999999", "price": "1"}}, 400, "quantity"),
    ("quantity-29-digits", "POST", "/api/portfolio/{pid}/transactions",
     {"json": {"type": "buy", "symbol": "AAPL", "quantity": "1.0000000000000000000000000001", "price": "1"}},
     400, "quantity"),
    ("rebalance-min-trade-value-nan", "POST", "/api/optimizer/rebalance",
     {"json": {"portfolio_id": "{pid}", "target": {"AAPL": 0.5}, "min_trade_value": "NaN"}}, 422, "min_trade_value"),
    ("optimizer-alpha-tiny", "POST", "/api/optimizer/optimize",
     {"json": {"returns": {"A": [0.01, -0.01] * 40, "B": [-0.02, 0.01] * 40},
               "dates": [f"2020-{m:02d}-{d:02d}" for m in range(1, 5) for d in range(1, 21)], "alpha": 1e-300}},
     400, "alpha"),
    # bodies
    ("json-nested-too-deeply", "POST", "/api/portfolio",
     {"content": b"[" * 100_000, "headers": {"content-type": "application/json"}}, 400, "body"),
    ("no-body", "POST", "/api/portfolio", {}, 400, "body"),
    ("invalid-json", "POST", "/api/portfolio", {"content": b"{bad", "headers": {"content-type": "application/json"}},
     400, None),
    ("invalid-json-public", "POST", "/api/auth/login",
     {"content": b"{bad", "headers": {"content-type": "application/json"}, "public": True}, 400, None),
    ("text-plain-body", "POST", "/api/portfolio",
     {"content": b'{"name": "x"}', "headers": {"content-type": "text/plain"}}, 415, "Content-Type"),
    ("form-body", "POST", "/api/auth/login",
     {"content": b"email=a&password=b", "headers": {"content-type": "application/x-www-form-urlencoded"},
      "public": True}, 415, "Content-Type"),
    ("multipart-body", "PATCH", "/api/user/me",
     {"content": b'--b\r\nContent-Disposition: form-data; name="display_name"\r\n\r\nx\r\n--b--\r\n',
      "headers": {"content-type": "multipart/form-data; boundary=b"}}, 415, "Content-Type"),
    ("text-plain-optimizer", "POST", "/api/optimizer/optimize",
     {"content": b'{"symbols": ["AAPL", "MSFT"]}', "headers": {"content-type": "text/plain"}}, 415, "Content-Type"),
    ("huge-body", "POST", "/api/portfolio", {"content": b"x" * BIG, "headers": {"content-type": "application/json"}},
     413, None),
    ("huge-body-public", "POST", "/api/auth/register",
     {"content": b"x" * BIG, "headers": {"content-type": "application/json"}, "public": True}, 413, None),
    ("huge-body-optimizer", "POST", "/api/optimizer/optimize",
     {"content": b"x" * BIG, "headers": {"content-type": "application/json"}}, 413, None),
    ("huge-import", "POST", "/api/portfolio/{pid}/import",
     {"content": b"x" * BIG, "headers": {"content-type": "text/csv"}}, 413, "file"),
    # ids that are not UUIDs: no route matches
    ("portfolio-id-not-uuid", "GET", "/api/portfolio/not-a-uuid", {}, 404, None),
    ("portfolio-id-int", "GET", "/api/portfolio/1/holdings", {}, 404, None),
    ("tx-id-not-uuid", "DELETE", "/api/portfolio/{pid}/transactions/xyz", {}, 404, None),
    ("analytics-id-not-uuid", "GET", "/api/analytics/portfolio/xyz/risk", {}, 404, None),
    ("session-id-not-uuid", "DELETE", "/api/auth/sessions/xyz", {}, 404, None),
    ("user-id-not-uuid", "PATCH", "/api/user/xyz", {"json": {"role": "admin"}}, 404, None),
]


def _fill(value: Any, pid: str) -> Any:
    if isinstance(value, str):
        return value.replace("{pid}", pid)
    if isinstance(value, dict):
        return {k: _fill(v, pid) for k, v in value.items()}
    return value


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "field"),
                         [pytest.param(*c[1:], id=c[0]) for c in CASES])
async def test_hostile_input_is_a_named_4xx(client: Any, world: dict[str, Any], method: str, path: str,
                                            kwargs: dict[str, Any], status: int, field: str | None) -> None:
    user: TestUser = world["user"]
    kwargs = dict(kwargs)
    if kwargs.pop("admin", False):
        user = world["admin"]
    headers = {} if kwargs.pop("public", False) else dict(user.headers)
    headers.update(kwargs.pop("headers", {}))
    if "json" in kwargs:
        kwargs["json"] = _fill(kwargs["json"], world["pid"])
    r = await client.request(method, _fill(path, world["pid"]), headers=headers, **kwargs)
    _problem(r, status, field)


async def test_nul_in_an_imported_note_is_a_row_error(client: Any, world: dict[str, Any]) -> None:
    user, pid = world["user"], world["pid"]
    r = await client.post(f"/api/portfolio/{pid}/import", headers={**user.headers, "content-type": "text/csv"},
                          content=b"date,type,amount,note\n2024-01-03,deposit,1,a\x00b\n")
    assert r.status_code == 422, r.text
    assert [(e["line"], e["field"]) for e in r.json()["errors"]] == [(2, "note")]


async def test_a_json_import_note_that_is_not_text_is_refused_not_stringified(client: Any,
                                                                             world: dict[str, Any]) -> None:
    user, pid = world["user"], world["pid"]
    good = {"date": "2024-01-03", "type": "deposit", "amount": "1"}
    rows = [{**good, "note": {"a": 1}}, {**good, "note": [1]}] + [
        {**good, "type": "split", "symbol": "AAPL", "ratio": "2", "amount": None, field: junk}
        for field in ("type", "symbol", "ratio", "currency", "date") for junk in ({"a": 1}, [1])]
    r = await client.post(f"/api/portfolio/{pid}/import?dry_run=true", json={"transactions": rows},
                          headers=user.headers)
    assert r.status_code == 200 and not r.json()["valid"], r.text
    assert {e["line"] for e in r.json()["errors"]} == set(range(1, len(rows) + 1)), r.text
    assert {(e["line"], e["field"]) for e in r.json()["errors"]} >= {(1, "note"), (2, "note")}


async def test_json_with_a_json_media_type_suffix_and_without_content_type_are_accepted(
        client: Any, world: dict[str, Any]) -> None:
    user = world["user"]
    for ctype in ("application/json; charset=utf-8", "application/merge-patch+json", None):
        headers = {**user.headers, **({"content-type": ctype} if ctype else {})}
        r = await client.patch("/api/user/me", content=b'{"risk_tolerance": "moderate"}', headers=headers)
        assert r.status_code == 200, (ctype, r.text)


async def test_csv_import_keeps_its_own_media_types(client: Any, world: dict[str, Any]) -> None:
    user, pid = world["user"], world["pid"]
    r = await client.post(f"/api/portfolio/{pid}/import?dry_run=true", content=b"date,type,amount\n2024-01-04,deposit,1\n",
                          headers={**user.headers, "content-type": "text/csv"})
    assert r.status_code == 200 and r.json()["valid"], r.text


async def test_unstorable_text_that_escapes_validation_is_a_400_not_a_500() -> None:
    """The safety net in app.errors: NUL text that reaches PostgreSQL is the input's fault."""

    @post("/store", sync_to_thread=False)
    def store() -> None:
        raise asyncpg.exceptions.CharacterNotInRepertoireError('invalid byte sequence for encoding "UTF8": 0x00')

    @post("/recurse", sync_to_thread=False)
    def recurse() -> None:
        raise RecursionError("maximum recursion depth exceeded")  # not a decoding error: still a 500

    app = Litestar([store, recurse], exception_handlers=EXCEPTION_HANDLERS, logging_config=None)  # type: ignore[arg-type]
    async with AsyncTestClient(app=app) as c:
        r = await c.post("/store")
        assert r.status_code == 400 and r.headers["content-type"].startswith(PROBLEM), r.text
        assert (await c.post("/recurse")).status_code == 500


# --- reported by the QA sweep in the market and analytics domains, fixed afterwards ------------------

@pytest.mark.parametrize("query", ["end=9999-12-31", "start=9999-12-31&end=9999-12-31",
                                   "start=0001-01-01T00:00:00%2B01:00", "end=9999-12-31T23:59:59-01:00"])
async def test_history_dates_at_the_ends_of_the_calendar_are_a_400(client, query):
    user = await register_user(client)
    r = await client.get(f"/api/markets/history/AAPL?{query}", headers=user.headers)
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["field"] in ("start", "end")


async def test_known_symbols_treats_a_nul_name_as_unknown(client, database_url):
    from app.db import Database
    from app.market.prices import known_symbols

    db = Database(await asyncpg.create_pool(database_url, min_size=1, max_size=1))
    try:
        assert await known_symbols(db, ["a\x00b", "AAPL"]) == {"AAPL"}
    finally:
        await db.close()


def test_drawdown_insight_of_a_total_loss_has_no_division_by_zero():
    from app.analytics.insights import _recovery_phrase

    assert "lost everything" in _recovery_phrase(1.0)
    assert "gain to get back" in _recovery_phrase(0.5)


async def test_insights_of_a_portfolio_that_lost_everything_answer(client):
    """QA repro: a holding bought and sold at 0 is a 100 % drawdown; insights used to divide by zero."""
    user = await register_user(client)
    pid = (await client.post("/api/portfolio", json={"name": "wiped out"}, headers=user.headers)).json()["id"]
    for day, side in (("2024-01-02", "buy"), ("2024-01-03", "sell")):
        r = await client.post(f"/api/portfolio/{pid}/transactions", headers=user.headers,
                              json={"type": side, "symbol": "AAPL", "quantity": "1", "price": "0",
                                    "executed_at": f"{day}T15:00:00Z"})
        assert r.status_code == 201, r.text
    r = await client.get(f"/api/analytics/portfolio/{pid}/insights", headers=user.headers)
    assert r.status_code in (200, 422), r.text
