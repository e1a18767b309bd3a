"""Each attack of the issue as its own test (OWASP API Security Top 10 2023: broken authentication,
BOLA, BFLA, mass assignment, unrestricted resource consumption)."""

import asyncio
import base64
import json
import logging
import statistics
import time
import uuid

import httpx
import jwt
import pytest
from litestar.testing import AsyncTestClient

from app.asgi import create_app
from tests.conftest import TEST_JWT_SECRET, make_settings
from tests.support.auth import make_admin, register_user
from tests.support.services import AppProcess


def _b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _payload(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _me(client, token: str) -> int:
    return (await client.get("/api/user/me", headers=_bearer(token))).status_code


async def _login(client, email, password, **headers):
    return await client.post("/api/auth/login", json={"email": email, "password": password}, headers=headers)


# --- tokens ----------------------------------------------------------------------------------------

async def test_no_token_or_wrong_scheme_is_401(client):
    u = await register_user(client)
    assert (await client.get("/api/user/me")).status_code == 401
    r = await client.get("/api/user/me", headers={"Authorization": f"Token {u.access_token}"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert (await client.get("/api/user/me", headers={"Authorization": "Bearer "})).status_code == 401
    assert (await client.get("/api/user/me", headers={"Authorization": f"bearer {u.access_token}"})).status_code == 200


async def test_alg_none_token_is_401(client):
    u = await register_user(client)
    forged = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_payload(u.access_token))}."
    assert await _me(client, forged) == 401


async def test_wrong_audience_is_401(client):
    u = await register_user(client)
    claims = {**_payload(u.access_token), "aud": "some-other-api"}
    assert await _me(client, jwt.encode(claims, TEST_JWT_SECRET, algorithm="HS256")) == 401
    claims = {**_payload(u.access_token), "aud": ["wealth-terminal-api", "some-other-api"]}
    assert await _me(client, jwt.encode(claims, TEST_JWT_SECRET, algorithm="HS256")) == 401


async def test_wrong_issuer_is_401(client):
    u = await register_user(client)
    claims = {**_payload(u.access_token), "iss": "evil"}
    assert await _me(client, jwt.encode(claims, TEST_JWT_SECRET, algorithm="HS256")) == 401
    claims = _payload(u.access_token)
    del claims["iss"]
    assert await _me(client, jwt.encode(claims, TEST_JWT_SECRET, algorithm="HS256")) == 401


async def test_expired_token_is_401(client):
    u = await register_user(client)
    now = int(time.time())
    claims = {**_payload(u.access_token), "iat": now - 1000, "exp": now - 10}
    assert await _me(client, jwt.encode(claims, TEST_JWT_SECRET, algorithm="HS256")) == 401
    # The same claims with a valid exp are accepted: it is the expiry that fails above.
    claims = {**claims, "exp": now + 60}
    assert await _me(client, jwt.encode(claims, TEST_JWT_SECRET, algorithm="HS256")) == 200


async def test_tampered_token_is_401(client):
    victim, attacker = await register_user(client), await register_user(client)
    head, payload, sig = attacker.access_token.split(".")
    swapped = _b64({**_payload(attacker.access_token), "sub": str(victim.id)})
    assert await _me(client, f"{head}.{swapped}.{sig}") == 401
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    assert await _me(client, f"{head}.{payload}.{flipped}") == 401
    assert await _me(client, jwt.encode(_payload(attacker.access_token), "x" * 48, algorithm="HS256")) == 401


async def test_token_with_someone_elses_session_id_is_401(client):
    """Even correctly signed: sub and sid must belong together."""
    victim, attacker = await register_user(client), await register_user(client)
    claims = {**_payload(attacker.access_token), "sid": _payload(victim.access_token)["sid"]}
    assert await _me(client, jwt.encode(claims, TEST_JWT_SECRET, algorithm="HS256")) == 401


async def test_token_after_logout_is_401(client):
    u = await register_user(client)
    assert await _me(client, u.access_token) == 200
    assert (await client.post("/api/auth/logout", headers=u.headers)).status_code == 204
    assert await _me(client, u.access_token) == 401
    assert (await client.post("/api/auth/logout", headers=u.headers)).status_code == 401


async def test_refresh_token_is_not_an_access_token_and_vice_versa(client):
    u = await register_user(client)
    assert await _me(client, u.refresh_token) == 401
    assert (await client.post("/api/auth/refresh", json={"refresh_token": u.access_token})).status_code == 401


async def test_refresh_reuse_kills_the_family(client):
    u = await register_user(client)
    other = (await _login(client, u.email, u.password)).json()  # a second, unrelated session
    first = (await client.post("/api/auth/refresh", json={"refresh_token": u.refresh_token})).json()
    assert await _me(client, first["access_token"]) == 200
    # The old refresh token is presented again (stolen copy): 401, and the whole family dies.
    r = await client.post("/api/auth/refresh", json={"refresh_token": u.refresh_token})
    assert r.status_code == 401
    assert (await client.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})).status_code == 401
    assert await _me(client, first["access_token"]) == 401
    assert await _me(client, u.access_token) == 401
    # The user's other login is untouched.
    assert await _me(client, other["access_token"]) == 200


async def test_concurrent_use_of_one_refresh_token_yields_at_most_one_pair(client):
    u = await register_user(client)
    results = await asyncio.gather(*[client.post("/api/auth/refresh", json={"refresh_token": u.refresh_token})
                                     for _ in range(4)])
    assert sum(r.status_code == 200 for r in results) <= 1
    assert all(r.status_code in (200, 401) for r in results)


async def test_disabled_user_is_401(client, database_url):
    admin, u = await register_user(client), await register_user(client)
    await make_admin(database_url, admin.id)
    assert await _me(client, u.access_token) == 200
    await client.patch(f"/api/user/{u.id}", headers=admin.headers, json={"disabled": True})
    assert await _me(client, u.access_token) == 401


async def test_deleted_user_token_is_401(client):
    u = await register_user(client)
    await client.request("DELETE", "/api/user/me", headers=u.headers, json={"password": u.password})
    assert await _me(client, u.access_token) == 401


# --- authorization -----------------------------------------------------------------------------------

async def test_another_users_session_id_is_404_and_untouched(client):
    victim, attacker = await register_user(client), await register_user(client)
    victim_sid = (await client.get("/api/auth/sessions", headers=victim.headers)).json()[0]["id"]
    r = await client.delete(f"/api/auth/sessions/{victim_sid}", headers=attacker.headers)
    assert r.status_code == 404
    assert await _me(client, victim.access_token) == 200
    r = await client.delete(f"/api/auth/sessions/{uuid.uuid4()}", headers=attacker.headers)
    assert r.status_code == 404


async def test_user_on_admin_routes_is_403(client):
    u, other = await register_user(client), await register_user(client)
    assert (await client.get("/api/user", headers=u.headers)).status_code == 403
    r = await client.patch(f"/api/user/{other.id}", headers=u.headers, json={"disabled": True})
    assert r.status_code == 403
    r = await client.patch(f"/api/user/{u.id}", headers=u.headers, json={"role": "admin"})
    assert r.status_code == 403
    assert (await client.get("/api/user/me", headers=u.headers)).json()["role"] == "user"
    assert await _me(client, other.access_token) == 200


async def test_health_schema_and_the_three_auth_endpoints_need_no_token(client):
    assert (await client.get("/health/live")).status_code == 200
    assert (await client.get("/schema/openapi.json")).status_code == 200
    for path in ("/api/auth/register", "/api/auth/login", "/api/auth/refresh"):
        assert (await client.post(path, json={})).status_code == 400  # validation, not 401


async def test_paths_that_merely_look_public_are_not(client):
    u = await register_user(client)
    for path in ("//api/user/me", "/api/user/me/", "/api//user/me", "/api/auth/login/../../user/me"):
        r = await client.get(path)
        assert r.status_code in (401, 404), (path, r.status_code)
        assert "email" not in r.text
    assert (await client.get("/api/user/me/", headers=u.headers)).status_code in (200, 404)


@pytest.mark.parametrize("path, method, body", [
    ("/api/auth/register", "POST", {"email": "mass-{u}@example.com", "password": "a fine long passphrase", "role": "admin"}),
    ("/api/auth/register", "POST", {"email": "mass-{u}@example.com", "password": "a fine long passphrase", "id": "00000000-0000-0000-0000-000000000001"}),
    ("/api/auth/register", "POST", {"email": "mass-{u}@example.com", "password": "a fine long passphrase", "disabled": False}),
])
async def test_mass_assignment_on_register_is_400(client, unique, path, method, body):
    body = {k: v.replace("{u}", unique) if isinstance(v, str) else v for k, v in body.items()}
    r = await client.request(method, path, json=body)
    assert r.status_code == 400, r.text
    extra = (set(body) - {"email", "password"}).pop()
    assert extra in r.json()["detail"]
    # Nothing was created: the same email registers fine afterwards, as a plain user.
    r = await client.post("/api/auth/register", json={"email": body["email"], "password": body["password"]})
    assert r.status_code == 201 and r.json()["user"]["role"] == "user"


@pytest.mark.parametrize("field, value", [("role", "admin"), ("id", str(uuid.uuid4())), ("email", "x@example.com"),
                                          ("disabled", False), ("password_hash", "x")])
async def test_mass_assignment_on_profile_is_400(client, field, value):
    u = await register_user(client)
    r = await client.patch("/api/user/me", headers=u.headers, json={"display_name": "x", field: value})
    assert r.status_code == 400 and field in r.json()["detail"]
    me = (await client.get("/api/user/me", headers=u.headers)).json()
    assert me["role"] == "user" and me["email"] == u.email and me["display_name"] is None


# --- passwords ----------------------------------------------------------------------------------------

async def test_long_passwords_work_and_every_byte_counts(client, unique):
    long_pw = "\u00e9" * 100 + "-tail-A"  # 207 bytes in UTF-8, far beyond bcrypt's 72
    u = await register_user(client, email=f"long-{unique}@example.com", password=long_pw)
    assert (await _login(client, u.email, long_pw)).status_code == 200
    assert (await _login(client, u.email, "\u00e9" * 100 + "-tail-B")).status_code == 401


async def test_too_long_and_too_short_passwords_are_400(client, unique):
    for pw in ("x1" * 129, "short"):
        r = await client.post("/api/auth/register", json={"email": f"len-{unique}@example.com", "password": pw})
        assert r.status_code == 400 and r.json()["errors"][0]["field"] == "password"
    r = await client.post("/api/auth/register", json={"email": f"len-{unique}@example.com", "password": "y" * 2000})
    assert r.status_code == 400


@pytest.mark.parametrize("pw", ["password", "12345678", "Password1", "qwertyuiop", "iloveyou"])
async def test_common_passwords_are_400(client, unique, pw):
    r = await client.post("/api/auth/register", json={"email": f"common-{unique}@example.com", "password": pw})
    assert r.status_code == 400 and "common" in r.json()["detail"]


# --- brute force and rate limits -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def limited_app(test_env):
    """A real server (so the peer is 127.0.0.1, a trusted proxy here) with low limits; each test uses
    its own X-Forwarded-For addresses so the counters do not collide."""
    proc = AppProcess({**test_env, "LOGIN_ATTEMPTS_PER_MINUTE": "3", "RATE_LIMIT_PER_MINUTE": "25",
                       "TRUSTED_PROXIES": "127.0.0.1/32"})
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def _ip() -> str:
    n = uuid.uuid4().int
    return f"10.{n % 250}.{(n >> 8) % 250}.{(n >> 16) % 250 + 1}"


async def _register(http: httpx.AsyncClient, ip: str) -> tuple[str, str]:
    email, pw = f"bf-{uuid.uuid4().hex[:10]}@example.com", "brute force target pw"
    r = await http.post("/api/auth/register", json={"email": email, "password": pw}, headers={"X-Forwarded-For": ip})
    assert r.status_code == 201, r.text
    return email, pw


async def test_brute_force_per_email_is_429_with_retry_after(limited_app):
    async with httpx.AsyncClient(base_url=limited_app.base_url) as http:
        email, pw = await _register(http, _ip())
        for _ in range(3):  # each guess from another address: only the per-email limit can stop this
            r = await http.post("/api/auth/login", json={"email": email, "password": "guess guess"},
                                headers={"X-Forwarded-For": _ip()})
            assert r.status_code == 401
        r = await http.post("/api/auth/login", json={"email": email, "password": "guess guess"},
                            headers={"X-Forwarded-For": _ip()})
        assert r.status_code == 429
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert r.headers["content-type"].startswith("application/problem+json")
        # Even the right password waits now.
        r = await http.post("/api/auth/login", json={"email": email, "password": pw}, headers={"X-Forwarded-For": _ip()})
        assert r.status_code == 429


async def test_brute_force_per_client_address_is_429(limited_app):
    async with httpx.AsyncClient(base_url=limited_app.base_url) as http:
        attacker = _ip()
        for i in range(3):  # spraying different emails from one address
            r = await http.post("/api/auth/login", json={"email": f"spray{i}-{uuid.uuid4().hex[:6]}@example.com",
                                                         "password": "guess guess"}, headers={"X-Forwarded-For": attacker})
            assert r.status_code == 401
        r = await http.post("/api/auth/login", json={"email": "anyone@example.com", "password": "guess guess"},
                            headers={"X-Forwarded-For": attacker})
        assert r.status_code == 429 and "retry-after" in r.headers
        # Another address is not affected.
        email, pw = await _register(http, _ip())
        r = await http.post("/api/auth/login", json={"email": email, "password": pw}, headers={"X-Forwarded-For": _ip()})
        assert r.status_code == 200


async def test_a_parallel_burst_of_guesses_gets_no_more_than_the_limit_checked(limited_app):
    """Attempts are counted atomically before the password is checked, so firing guesses all at once
    does not slip past the limit."""
    async with httpx.AsyncClient(base_url=limited_app.base_url, timeout=30) as http:
        email, _ = await _register(http, _ip())
        results = await asyncio.gather(*[
            http.post("/api/auth/login", json={"email": email, "password": f"guess {i}"},
                      headers={"X-Forwarded-For": _ip()}) for i in range(12)])
        codes = [r.status_code for r in results]
        assert codes.count(401) <= 3 and codes.count(429) >= 9, codes


async def test_forwarded_for_from_a_trusted_proxy_names_the_client(limited_app):
    async with httpx.AsyncClient(base_url=limited_app.base_url) as http:
        ip = _ip()
        email, pw = await _register(http, ip)
        token = (await http.post("/api/auth/login", json={"email": email, "password": pw},
                                 headers={"X-Forwarded-For": f"203.0.113.9, {ip}"})).json()["access_token"]
        sessions = (await http.get("/api/auth/sessions", headers=_bearer(token))).json()
        assert {s["ip"] for s in sessions} == {ip}  # the rightmost hop not trusted, never the spoofable left


async def test_successful_logins_do_not_use_up_the_failure_budget(limited_app):
    async with httpx.AsyncClient(base_url=limited_app.base_url) as http:
        ip = _ip()
        email, pw = await _register(http, ip)
        for _ in range(5):
            r = await http.post("/api/auth/login", json={"email": email, "password": pw}, headers={"X-Forwarded-For": ip})
            assert r.status_code == 200


async def test_global_rate_limit_per_client_is_429(limited_app):
    async with httpx.AsyncClient(base_url=limited_app.base_url) as http:
        ip = _ip()
        statuses = [(await http.get("/api/user/me", headers={"X-Forwarded-For": ip})).status_code for _ in range(26)]
        assert statuses[:25] == [401] * 25 and statuses[25] == 429
        r = await http.get("/api/user/me", headers={"X-Forwarded-For": ip})
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
        assert r.headers["ratelimit-limit"] == "25" and r.headers["ratelimit-remaining"] == "0"
        # Other clients, and health checks, are not limited by this one.
        assert (await http.get("/api/user/me", headers={"X-Forwarded-For": _ip()})).status_code == 401
        for _ in range(30):
            assert (await http.get("/health/live", headers={"X-Forwarded-For": ip})).status_code == 200


async def test_forwarded_for_is_ignored_from_untrusted_peers(test_env):
    """The in-process test client's peer is not a trusted proxy: X-Forwarded-For must not let an
    attacker pick a fresh address per guess. (Own app, in-process cache, so the shared client's
    counters are untouched.)"""
    settings = make_settings(test_env, redis_url="", login_attempts_per_minute="3")
    async with AsyncTestClient(app=create_app(settings)) as c:
        for i in range(3):
            r = await c.post("/api/auth/login", json={"email": f"x{i}@example.com", "password": "guess guess"},
                             headers={"X-Forwarded-For": f"10.0.0.{i + 1}"})
            assert r.status_code == 401
        r = await c.post("/api/auth/login", json={"email": "y@example.com", "password": "guess guess"},
                         headers={"X-Forwarded-For": "10.0.0.99"})
        assert r.status_code == 429


async def test_unknown_email_takes_about_as_long_as_a_wrong_password(test_env):
    """Verified against a dummy hash: no user enumeration by timing. Cost 10 so bcrypt dominates."""
    settings = make_settings(test_env, redis_url="", bcrypt_rounds="10", login_attempts_per_minute="1000")
    async with AsyncTestClient(app=create_app(settings)) as c:
        u = await register_user(c)

        async def timed(email: str) -> float:
            started = time.perf_counter()
            r = await _login(c, email, "not the right password")
            assert r.status_code == 401
            return time.perf_counter() - started

        known = [await timed(u.email) for _ in range(5)]
        unknown = [await timed(f"ghost-{uuid.uuid4().hex[:8]}@example.com") for _ in range(5)]
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.6 < ratio < 1.6, (known, unknown)
    assert statistics.median(unknown) > 0.02  # a bcrypt verification really happened


# --- replicas, logs, responses -------------------------------------------------------------------------

async def test_logout_on_one_replica_is_seen_at_once_by_another(client, settings):
    """Two app instances sharing PostgreSQL and Redis: replica A has the session cached as live;
    logout through replica B; A rejects the token on the very next request."""
    u = await register_user(client)
    assert await _me(client, u.access_token) == 200  # cached on A
    async with AsyncTestClient(app=create_app(settings)) as b:
        assert await _me(b, u.access_token) == 200
        assert (await b.post("/api/auth/logout", headers=u.headers)).status_code == 204
    assert await _me(client, u.access_token) == 401


async def test_single_process_memory_cache_mode_also_revokes(test_env):
    settings = make_settings(test_env, redis_url="")
    async with AsyncTestClient(app=create_app(settings)) as c:
        u = await register_user(c)
        assert await _me(c, u.access_token) == 200
        await c.post("/api/auth/logout", headers=u.headers)
        assert await _me(c, u.access_token) == 401


async def test_no_password_hash_or_token_in_logs_or_foreign_responses(client, database_url, caplog):
    from app.logs import JsonFormatter

    caplog.set_level(logging.DEBUG)
    password = "very secret passphrase 42"
    u = await register_user(client, password=password)
    await _login(client, u.email, password)
    await _login(client, u.email, "wrong password here")
    pair = (await client.post("/api/auth/refresh", json={"refresh_token": u.refresh_token})).json()
    await client.post("/api/user/me/password", headers=_bearer(pair["access_token"]),
                      json={"current_password": password, "new_password": "another secret passphrase"})
    await make_admin(database_url, u.id)
    forged = jwt.encode({"sub": str(u.id), "note": "forged-token-marker"}, "k" * 40, algorithm="HS256")
    await client.get("/api/user/me", headers=_bearer(forged))
    await client.post("/api/auth/refresh", json={"refresh_token": "wtr_guessed-refresh-marker"})
    bodies = [(await client.get(p, headers=_bearer(pair["access_token"]))).text
              for p in ("/api/user/me", "/api/auth/sessions", "/api/user?limit=200")]
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        stored_hash = await conn.fetchval("SELECT password_hash FROM users WHERE id = $1", u.id)
    finally:
        await conn.close()
    secrets = [password, "another secret passphrase", "wrong password here", stored_hash, stored_hash[7:29],
               u.refresh_token, pair["refresh_token"], u.access_token.split(".")[2], pair["access_token"].split(".")[2],
               forged.split(".")[2], "guessed-refresh-marker"]
    formatter = JsonFormatter()
    lines = "\n".join(formatter.format(rec) for rec in caplog.records)
    assert caplog.records, "expected some log records"
    for secret in secrets:
        assert secret not in lines
        for body in bodies:
            assert secret not in body
    for body in bodies:
        assert "password" not in body and "$2b$" not in body


async def test_redis_outage_keeps_tokens_working_and_login_fails_closed(test_env):
    """Own Redis, stopped mid-test: authenticated requests fall back to the database (and the global
    rate limit fails open); logins answer 503 rather than guess without brute-force limits; once Redis
    is back, everything works again."""
    from tests.support.services import RedisServer

    server = RedisServer()
    server.start()
    try:
        settings = make_settings(test_env, redis_url=server.url)
        async with AsyncTestClient(app=create_app(settings)) as c:
            u = await register_user(c)
            assert await _me(c, u.access_token) == 200
            server.stop()
            assert await _me(c, u.access_token) == 200
            r = await _login(c, u.email, u.password)
            assert r.status_code == 503 and "retry-after" in r.headers
            await c.post("/api/auth/logout", headers=u.headers)  # committed in the database
            assert await _me(c, u.access_token) == 401
            server.start()
            assert (await _login(c, u.email, u.password)).status_code == 200
            assert await _me(c, u.access_token) == 401
    finally:
        server.destroy()
