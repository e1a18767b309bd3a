"""Every auth & user endpoint on its happy path (and its plain failure modes)."""

import asyncio
import os
import subprocess
import sys
import uuid

import asyncpg
import pytest

from app.config import PROJECT_ROOT
from tests.support.auth import make_admin, register_user


def _email(unique: str) -> str:
    return f"api-{unique}@example.com"


async def _login(client, email, password, **headers):
    return await client.post("/api/auth/login", json={"email": email, "password": password}, headers=headers)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_register_returns_user_and_tokens(client, unique):
    r = await client.post("/api/auth/register", json={"email": f"Api-{unique}@Example.COM",
                                                      "password": "a fine long passphrase", "display_name": " Ann "})
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"user", "access_token", "refresh_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer" and body["expires_in"] == 900
    assert set(body["user"]) == {"id", "email", "display_name", "role", "created_at"}
    assert body["user"]["email"] == _email(unique) and body["user"]["role"] == "user"
    assert body["user"]["display_name"] == "Ann"
    assert body["refresh_token"].startswith("wtr_") and body["access_token"].count(".") == 2
    me = await client.get("/api/user/me", headers=_bearer(body["access_token"]))
    assert me.status_code == 200 and me.json()["email"] == _email(unique)


async def test_email_is_unique_case_insensitively(client, unique):
    await register_user(client, email=_email(unique))
    r = await client.post("/api/auth/register", json={"email": _email(unique).upper(), "password": "another passphrase"})
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "email"


async def test_register_rejects_a_malformed_email(client):
    r = await client.post("/api/auth/register", json={"email": "not-an-email", "password": "a fine long passphrase"})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "email"


async def test_login_same_shape_and_case_insensitive_email(client, unique):
    u = await register_user(client, email=_email(unique))
    r = await _login(client, u.email.upper(), u.password)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"]["id"] == str(u.id) and body["token_type"] == "bearer"
    assert (await client.get("/api/user/me", headers=_bearer(body["access_token"]))).status_code == 200


async def test_wrong_password_and_unknown_email_give_the_same_401(client, unique):
    u = await register_user(client, email=_email(unique))
    wrong = await _login(client, u.email, "not the password at all")
    unknown = await _login(client, f"nobody-{unique}@example.com", "not the password at all")
    assert wrong.status_code == unknown.status_code == 401
    strip = lambda b: {k: v for k, v in b.items() if k != "request_id"}  # noqa: E731
    assert strip(wrong.json()) == strip(unknown.json())


async def test_refresh_rotates_the_pair(client):
    u = await register_user(client)
    r = await client.post("/api/auth/refresh", json={"refresh_token": u.refresh_token})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["refresh_token"] != u.refresh_token and body["access_token"] != u.access_token
    assert (await client.get("/api/user/me", headers=_bearer(body["access_token"]))).status_code == 200
    r2 = await client.post("/api/auth/refresh", json={"refresh_token": body["refresh_token"]})
    assert r2.status_code == 200
    # The session (and so the sessions list) is the same one throughout.
    sessions = (await client.get("/api/auth/sessions", headers=_bearer(r2.json()["access_token"]))).json()
    assert len(sessions) == 1


async def test_refresh_with_an_unknown_token_is_401(client):
    r = await client.post("/api/auth/refresh", json={"refresh_token": "wtr_" + "x" * 43})
    assert r.status_code == 401


async def test_logout_ends_the_session(client):
    u = await register_user(client)
    assert (await client.get("/api/user/me", headers=u.headers)).status_code == 200
    r = await client.post("/api/auth/logout", headers=u.headers)
    assert r.status_code == 204
    assert (await client.get("/api/user/me", headers=u.headers)).status_code == 401
    assert (await client.post("/api/auth/refresh", json={"refresh_token": u.refresh_token})).status_code == 401


async def test_sessions_list_and_delete_one(client):
    u = await register_user(client)
    second = (await _login(client, u.email, u.password, **{"User-Agent": "pytest-phone/1.0"})).json()
    r = await client.get("/api/auth/sessions", headers=u.headers)
    assert r.status_code == 200
    sessions = r.json()
    assert len(sessions) == 2
    assert {s["current"] for s in sessions} == {True, False}
    other = next(s for s in sessions if not s["current"])
    assert other["user_agent"] == "pytest-phone/1.0" and other["ip"]
    assert set(other) == {"id", "created_at", "last_used_at", "user_agent", "ip", "current"}
    assert (await client.delete(f"/api/auth/sessions/{other['id']}", headers=u.headers)).status_code == 204
    assert (await client.get("/api/user/me", headers=_bearer(second["access_token"]))).status_code == 401
    assert (await client.get("/api/user/me", headers=u.headers)).status_code == 200
    assert len((await client.get("/api/auth/sessions", headers=u.headers)).json()) == 1
    assert (await client.delete(f"/api/auth/sessions/{other['id']}", headers=u.headers)).status_code == 404


async def test_profile_get_and_patch(client):
    u = await register_user(client)
    me = (await client.get("/api/user/me", headers=u.headers)).json()
    assert me["base_currency"] == "USD" and me["timezone"] == "UTC" and me["risk_tolerance"] == "moderate"
    r = await client.patch("/api/user/me", headers=u.headers, json={
        "display_name": "Grace", "base_currency": "eur", "timezone": "Europe/Berlin", "risk_tolerance": "aggressive"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["display_name"], body["base_currency"], body["timezone"], body["risk_tolerance"]) == (
        "Grace", "EUR", "Europe/Berlin", "aggressive")
    # Partial update leaves the rest; null clears the display name.
    body = (await client.patch("/api/user/me", headers=u.headers, json={"display_name": None})).json()
    assert body["display_name"] is None and body["timezone"] == "Europe/Berlin"
    assert (await client.get("/api/user/me", headers=u.headers)).json()["base_currency"] == "EUR"


@pytest.mark.parametrize("patch, field", [
    ({"timezone": "Mars/Olympus"}, "timezone"), ({"risk_tolerance": "yolo"}, "risk_tolerance"),
    ({"base_currency": "EURO"}, "base_currency"), ({"display_name": "x" * 101}, "display_name"),
])
async def test_profile_patch_rejects_bad_values(client, patch, field):
    u = await register_user(client)
    r = await client.patch("/api/user/me", headers=u.headers, json=patch)
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["field"] == field


async def test_password_change_ends_other_sessions(client):
    u = await register_user(client)
    other = (await _login(client, u.email, u.password)).json()
    r = await client.post("/api/user/me/password", headers=u.headers,
                          json={"current_password": u.password, "new_password": "a brand new passphrase"})
    assert r.status_code == 204, r.text
    assert (await client.get("/api/user/me", headers=u.headers)).status_code == 200
    assert (await client.get("/api/user/me", headers=_bearer(other["access_token"]))).status_code == 401
    assert (await client.post("/api/auth/refresh", json={"refresh_token": other["refresh_token"]})).status_code == 401
    assert (await _login(client, u.email, "a brand new passphrase")).status_code == 200


async def test_password_change_needs_the_current_password_and_a_good_new_one(client):
    u = await register_user(client)
    r = await client.post("/api/user/me/password", headers=u.headers,
                          json={"current_password": "wrong wrong wrong", "new_password": "a brand new passphrase"})
    assert r.status_code == 403 and r.json()["errors"][0]["field"] == "current_password"
    r = await client.post("/api/user/me/password", headers=u.headers,
                          json={"current_password": u.password, "new_password": "password1"})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "new_password"


async def test_delete_account_needs_the_password_and_cascades(client, database_url):
    u = await register_user(client)
    r = await client.request("DELETE", "/api/user/me", headers=u.headers, json={"password": "not my password"})
    assert r.status_code == 403
    r = await client.request("DELETE", "/api/user/me", headers=u.headers, json={"password": u.password})
    assert r.status_code == 204, r.text
    assert (await client.get("/api/user/me", headers=u.headers)).status_code == 401
    assert (await _login(client, u.email, u.password)).status_code == 401
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM users WHERE id = $1", u.id) == 0
        assert await conn.fetchval("SELECT count(*) FROM sessions WHERE user_id = $1", u.id) == 0
    finally:
        await conn.close()


async def test_admin_lists_users_paginated(client, database_url):
    admin = await register_user(client)
    await make_admin(database_url, admin.id)
    await register_user(client)
    await register_user(client)
    r = await client.get("/api/user", headers=admin.headers, params={"limit": 2, "offset": 0})
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["limit"] == 2 and page["offset"] == 0 and page["total"] >= 3 and len(page["items"]) == 2
    assert set(page["items"][0]) == {"id", "email", "display_name", "role", "disabled", "created_at"}
    nxt = (await client.get("/api/user", headers=admin.headers, params={"limit": 2, "offset": 2})).json()
    assert not {i["id"] for i in nxt["items"]} & {i["id"] for i in page["items"]}
    assert (await client.get("/api/user", headers=admin.headers, params={"limit": 0})).status_code == 400
    assert (await client.get("/api/user", headers=admin.headers, params={"limit": 1000})).status_code == 400


async def test_admin_changes_roles_with_immediate_effect(client, database_url):
    admin = await register_user(client)
    await make_admin(database_url, admin.id)
    u = await register_user(client)
    assert (await client.get("/api/user", headers=u.headers)).status_code == 403
    r = await client.patch(f"/api/user/{u.id}", headers=admin.headers, json={"role": "admin"})
    assert r.status_code == 200 and r.json()["role"] == "admin"
    assert (await client.get("/api/user", headers=u.headers)).status_code == 200
    assert (await client.get("/api/user/me", headers=u.headers)).json()["role"] == "admin"
    r = await client.patch(f"/api/user/{u.id}", headers=admin.headers, json={"role": "user"})
    assert r.status_code == 200
    assert (await client.get("/api/user", headers=u.headers)).status_code == 403


async def test_admin_disable_ends_sessions_and_enable_restores_login(client, database_url):
    admin = await register_user(client)
    await make_admin(database_url, admin.id)
    u = await register_user(client)
    assert (await client.get("/api/user/me", headers=u.headers)).status_code == 200
    r = await client.patch(f"/api/user/{u.id}", headers=admin.headers, json={"disabled": True})
    assert r.status_code == 200 and r.json()["disabled"] is True
    assert (await client.get("/api/user/me", headers=u.headers)).status_code == 401
    assert (await client.post("/api/auth/refresh", json={"refresh_token": u.refresh_token})).status_code == 401
    assert (await _login(client, u.email, u.password)).status_code == 403
    await client.patch(f"/api/user/{u.id}", headers=admin.headers, json={"disabled": False})
    assert (await _login(client, u.email, u.password)).status_code == 200
    assert (await client.get("/api/user/me", headers=u.headers)).status_code == 401  # old sessions stay ended


async def test_admin_cannot_lock_themselves_out_and_unknown_user_is_404(client, database_url):
    admin = await register_user(client)
    await make_admin(database_url, admin.id)
    r = await client.patch(f"/api/user/{admin.id}", headers=admin.headers, json={"disabled": True})
    assert r.status_code == 409
    r = await client.patch(f"/api/user/{uuid.uuid4()}", headers=admin.headers, json={"role": "admin"})
    assert r.status_code == 404


async def test_websocket_helper_authenticate_token(client, settings):
    """`authenticate_token(ctx, token)` (for /market-feed), here with a context of its own — like another
    replica sharing the database and Redis."""
    from app.auth.tokens import authenticate_token
    from app.cache import create_cache
    from app.context import AppContext
    from app.db import Database, create_pool
    from app.errors import Unauthorized

    ctx = AppContext(settings, Database(await create_pool(settings, min_size=1, max_size=2)),
                     create_cache(settings.redis_url))
    try:
        u = await register_user(client)
        user = await authenticate_token(ctx, u.access_token)
        assert user.id == u.id and user.email == u.email and user.role == "user"
        await client.post("/api/auth/logout", headers=u.headers)
        with pytest.raises(Unauthorized):
            await authenticate_token(ctx, u.access_token)
        with pytest.raises(Unauthorized):
            await authenticate_token(ctx, "not.a.token")
    finally:
        await ctx.db.close()
        await ctx.cache.close()


def _cli(test_env, *args, password=None):
    env = {**os.environ, **test_env}
    env.pop("WT_ADMIN_PASSWORD", None)
    if password:
        env["WT_ADMIN_PASSWORD"] = password
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


async def test_create_admin_command(client, test_env, unique):
    email = f"root-{unique}@example.com"
    out = await asyncio.to_thread(_cli, test_env, "create-admin", email, password="an admin passphrase")
    assert out.returncode == 0, out.stderr
    assert "created admin" in out.stdout and "an admin passphrase" not in out.stdout + out.stderr
    tokens = (await _login(client, email, "an admin passphrase")).json()
    assert tokens["user"]["role"] == "admin"
    assert (await client.get("/api/user", headers=_bearer(tokens["access_token"]))).status_code == 200
    # An existing account is promoted; without a password and a terminal, a new one is refused.
    u = await register_user(client)
    out = await asyncio.to_thread(_cli, test_env, "create-admin", u.email)
    assert out.returncode == 0 and "now an admin" in out.stdout
    assert (await client.get("/api/user", headers=u.headers)).status_code == 200
    out = await asyncio.to_thread(_cli, test_env, "create-admin", f"new-{unique}@example.com")
    assert out.returncode != 0 and "WT_ADMIN_PASSWORD" in out.stderr
    out = await asyncio.to_thread(_cli, test_env, "create-admin", f"weak-{unique}@example.com", password="password")
    assert out.returncode != 0 and "common" in out.stderr


async def test_an_expired_session_cannot_refresh_nor_be_listed(client, database_url):
    u = await register_user(client)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE user_id = $1", u.id)
    finally:
        await conn.close()
    assert (await client.post("/api/auth/refresh", json={"refresh_token": u.refresh_token})).status_code == 401
    fresh = (await _login(client, u.email, u.password)).json()
    sessions = (await client.get("/api/auth/sessions", headers=_bearer(fresh["access_token"]))).json()
    assert [s["current"] for s in sessions] == [True]


async def test_a_hash_of_lower_cost_is_upgraded_at_login(test_env, database_url):
    from litestar.testing import AsyncTestClient

    from app.asgi import create_app
    from app.auth import passwords
    from tests.conftest import make_settings

    settings = make_settings(test_env, redis_url="", bcrypt_rounds="5")
    async with AsyncTestClient(app=create_app(settings)) as c:
        u = await register_user(c)
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("UPDATE users SET password_hash = $2 WHERE id = $1", u.id,
                               passwords.hash_password(u.password, 4))
            assert (await _login(c, u.email, u.password)).status_code == 200
            upgraded = await conn.fetchval("SELECT password_hash FROM users WHERE id = $1", u.id)
        finally:
            await conn.close()
        assert passwords.hash_cost(upgraded) == 5 and passwords.verify_password(u.password, upgraded)
        assert (await _login(c, u.email, u.password)).status_code == 200


async def test_an_authenticated_request_reads_its_session_in_the_rate_limiters_command(client, redis_server):
    """One Redis command per authenticated request (the rate-limit count and the session state
    together, in a script), and that prefetched state is what decides: a session marked ended in the
    cache is refused on the very next request."""
    import jwt
    import redis.asyncio as aioredis

    from app.auth.tokens import GONE, _encode, _key

    user = await register_user(client)
    sid = jwt.decode(user.access_token, options={"verify_signature": False})["sid"]
    assert (await client.get("/api/user/me", headers=user.headers)).status_code == 200  # state now cached
    r = aioredis.Redis.from_url(redis_server.url)
    seen: list[tuple[str, str]] = []
    listening = asyncio.Event()

    async def monitor() -> None:
        async with r.monitor() as m:
            listening.set()
            async for cmd in m.listen():
                if sid in cmd["command"]:
                    seen.append((cmd["client_type"], cmd["command"].split()[0].upper()))

    task = asyncio.create_task(monitor())
    try:
        await asyncio.wait_for(listening.wait(), 5)
        await asyncio.sleep(0.2)
        for _ in range(3):
            assert (await client.get("/api/user/me", headers=user.headers)).status_code == 200
        await asyncio.sleep(0.3)
        from_clients = [name for kind, name in seen if kind != "lua"]
        assert from_clients == ["EVALSHA"] * 3, seen  # no separate GET of the session

        await r.set(_key(sid), _encode(GONE), px=60_000)
        assert (await client.get("/api/user/me", headers=user.headers)).status_code == 401
    finally:
        task.cancel()
        await r.aclose()


async def test_requests_move_last_used_at_without_a_write_each(test_env, database_url):
    """Requests mark their session as used in memory; the app writes it every SESSION_ACTIVITY_FLUSH s
    (here 0.3) and at shutdown, and never moves it backwards."""
    import jwt
    from litestar.testing import AsyncTestClient

    from app.asgi import create_app
    from tests.conftest import make_settings

    settings = make_settings(test_env, session_activity_flush="0.3")
    db = await asyncpg.connect(database_url)
    try:
        async with AsyncTestClient(app=create_app(settings)) as c:
            user = await register_user(c)
            sid = uuid.UUID(jwt.decode(user.access_token, options={"verify_signature": False})["sid"])
            at_login = await db.fetchval("SELECT last_used_at FROM sessions WHERE id = $1", sid)
            await asyncio.sleep(1.0)
            assert (await c.get("/api/user/me", headers=user.headers)).status_code == 200
            await asyncio.sleep(0.8)  # two flush intervals
            used = await db.fetchval("SELECT last_used_at FROM sessions WHERE id = $1", sid)
            assert (used - at_login).total_seconds() >= 0.9
            status = c.app.state.ctx.services["auth.activity"].status()
            assert status["state"] == "ok" and status["written"] >= 1 and status["failures"] == 0
            listed = (await c.get("/api/auth/sessions", headers=user.headers)).json()
            assert [s["id"] for s in listed] == [str(sid)] and listed[0]["last_used_at"] >= used.isoformat()[:19]
        before = await db.fetchval("SELECT last_used_at FROM sessions WHERE id = $1", sid)
        await asyncio.sleep(1.0)
        # an app whose next flush is an hour away: what it saw is written when it stops
        async with AsyncTestClient(app=create_app(make_settings(test_env, session_activity_flush="3600"))) as c:
            assert (await c.get("/api/user/me", headers=user.headers)).status_code == 200
            assert await db.fetchval("SELECT last_used_at FROM sessions WHERE id = $1", sid) == before
        last = await db.fetchval("SELECT last_used_at FROM sessions WHERE id = $1", sid)
        assert (last - before).total_seconds() >= 0.9
        # an older observation arriving late does not move it back
        from datetime import timedelta

        from app.auth.activity import SessionActivity
        from app.db import Database

        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
        try:
            late = SessionActivity()
            late._seen[sid] = (last - timedelta(hours=1)).timestamp()
            assert await late.flush(Database(pool)) == 1
        finally:
            await pool.close()
        assert await db.fetchval("SELECT last_used_at FROM sessions WHERE id = $1", sid) == last
        # a write that fails keeps what it held for the next one, and says so on the status page
        late.touch(sid)
        with pytest.raises(asyncpg.InterfaceError):
            await late.flush(Database(pool))  # the pool is closed
        assert late.pending() == 1 and late.status()["state"] == "retrying" and late.status()["failures"] == 1
    finally:
        await db.close()
