"""Auth & user service: accounts, sessions, refresh rotation, profile, admin. Routes call these."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import re
import secrets
import time
import uuid
import zoneinfo
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import asyncpg
import msgspec

from app.auth import passwords
from app.auth.models import AuthUser
from app.auth.schemas import (
    AdminUserOut, AdminUserPatch, AuthOut, ProfileOut, ProfilePatch, RegisterIn, SessionOut, UserOut, UserPage,
)
from app.auth.tokens import issue_access_token, mark_gone, refresh_states
from app.cache import CacheUnavailable
from app.context import AppContext
from app.db import sql_file
from app.errors import AppError, Conflict, Forbidden, NotFound, ServiceUnavailable, Unauthorized

log = logging.getLogger("app.auth")

# No whitespace and no control characters (a NUL cannot even be stored in PostgreSQL text).
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s.\x00-\x1f\x7f]+$")
REFRESH_PREFIX = "wtr_"
BAD_CREDENTIALS = "invalid email or password"
LOGIN_WINDOW = 60  # seconds: LOGIN_ATTEMPTS_PER_MINUTE failed logins per email and per client address


def q(name: str) -> str:
    return sql_file("auth")[name]


def normalize_email(email: str) -> str:
    return email.strip().lower()


def valid_email(email: str) -> bool:
    return bool(_EMAIL.match(email)) and len(email) <= 254


def clean_display_name(value: str | None) -> str | None:
    """Stripped, None when blank; control characters (NUL, which PostgreSQL text cannot hold,
    line breaks …) are refused naming the field."""
    name = (value or "").strip() or None
    if name is not None and any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise AppError("display_name must not contain control characters", field="display_name")
    return name


def new_refresh_token() -> tuple[str, bytes]:
    token = REFRESH_PREFIX + secrets.token_urlsafe(32)
    return token, hash_refresh_token(token)


def hash_refresh_token(token: str) -> bytes:
    # 256 random bits: a fast hash is enough (nothing to brute-force); only the hash is stored.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def user_out(row: Any) -> UserOut:
    return UserOut(id=row["id"], email=row["email"], display_name=row["display_name"], role=row["role"],
                   created_at=row["created_at"])


def profile_out(row: Any) -> ProfileOut:
    return ProfileOut(id=row["id"], email=row["email"], display_name=row["display_name"], role=row["role"],
                      base_currency=row["base_currency"], timezone=row["timezone"],
                      risk_tolerance=row["risk_tolerance"], created_at=row["created_at"])


def admin_user_out(row: Any) -> AdminUserOut:
    return AdminUserOut(id=row["id"], email=row["email"], display_name=row["display_name"], role=row["role"],
                        disabled=row["disabled"], created_at=row["created_at"])


class Client(msgspec.Struct, frozen=True):
    ip: str
    user_agent: str | None


# --- passwords off the event loop ---------------------------------------------------------------------
# bcrypt runs in threads of its own (it releases the GIL), at most one fewer than there are cores, so a
# burst of logins can neither block the event loop nor take every core from it, nor fill the default
# executor that other code relies on. Surplus logins queue here.

PASSWORD_THREADS = max(1, (os.cpu_count() or 2) - 1)
_password_pool = ThreadPoolExecutor(max_workers=PASSWORD_THREADS, thread_name_prefix="bcrypt")


async def _off_loop(fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(_password_pool, fn, *args)


async def hash_password(ctx: AppContext, password: str) -> str:
    return await _off_loop(passwords.hash_password, password, ctx.settings.bcrypt_rounds)


async def verify_password(password: str, password_hash: str) -> bool:
    return await _off_loop(passwords.verify_password, password, password_hash)


@lru_cache(maxsize=4)
def _dummy_hash(rounds: int) -> str:
    return passwords.make_dummy_hash(rounds)


async def dummy_hash(ctx: AppContext) -> str:
    return await _off_loop(_dummy_hash, ctx.settings.bcrypt_rounds)


def check_password_policy(password: str, email: str | None, field: str = "password") -> None:
    why = passwords.policy_violation(password, email)
    if why:
        raise AppError(why, status_code=400, field=field)


# --- sessions -------------------------------------------------------------------------------------------

async def _start_session(ctx: AppContext, conn: asyncpg.Connection, user_row: Any, client: Client) -> AuthOut:
    session_id = uuid.uuid4()
    refresh, refresh_hash = new_refresh_token()
    await conn.execute(q("insert_session"), session_id, user_row["id"], refresh_hash, client.user_agent,
                       client.ip, float(ctx.settings.refresh_token_ttl))
    return AuthOut(user=user_out(user_row), access_token=issue_access_token(ctx.settings, user_row["id"], session_id),
                   refresh_token=refresh, expires_in=ctx.settings.access_token_ttl)


async def register(ctx: AppContext, data: RegisterIn, client: Client) -> AuthOut:
    email = normalize_email(data.email)
    if not valid_email(email):
        raise AppError("not a valid email address", field="email")
    check_password_policy(data.password, email)
    display_name = clean_display_name(data.display_name)
    password_hash = await hash_password(ctx, data.password)
    async with ctx.db.transaction() as conn:
        row = await conn.fetchrow(q("insert_user"), email, password_hash, display_name, "user")
        if row is None:
            raise Conflict("an account with this email already exists", field="email")
        out = await _start_session(ctx, conn, row, client)
    log.info("user registered", extra={"user_id": str(row["id"])})
    return out


class LoginLimiter:
    """Failed logins per email and per client address, LOGIN_ATTEMPTS_PER_MINUTE each, in fixed
    one-minute windows, counted in `ctx.cache` (Redis: shared by every replica).

    An attempt is counted *before* its password is checked (an atomic INCR), and credited back as a
    success afterwards, so failures = attempts − successes. Counting first is what stops a burst of
    parallel guesses: each one's INCR is atomic, so at most the limit of them are ever verified —
    checking a counter first and counting failures afterwards would let them all through. Both counters
    of a window share its key suffix and expiry, so credit never leaks into the next window."""

    def __init__(self, ctx: AppContext, email: str, ip: str) -> None:
        self.ctx = ctx
        now = time.time()
        bucket = int(now // LOGIN_WINDOW)
        self.retry_after = max(1, math.ceil((bucket + 1) * LOGIN_WINDOW - now))
        digest = hashlib.sha256(email.encode()).hexdigest()[:32]
        self.prefixes = [f"auth:login:email:{digest}:{bucket}", f"auth:login:ip:{ip}:{bucket}"]

    async def begin(self) -> None:
        """Count this attempt; 429 when failures in this window already reach the limit."""
        limit = self.ctx.settings.login_attempts_per_minute
        ttl = LOGIN_WINDOW * 2
        try:
            attempts = [await self.ctx.cache.incr(f"{p}:n", ttl=ttl) for p in self.prefixes]
            successes = await self.ctx.cache.get_many([f"{p}:ok" for p in self.prefixes])
        except CacheUnavailable:
            # The limiter is a security control: without it, refuse rather than allow unlimited guessing.
            raise ServiceUnavailable("login is temporarily unavailable", headers={"Retry-After": "5"}) from None
        # This attempt is included in `attempts` and not yet in the successes: it is one of the failures.
        if any(n - int(ok or 0) > limit for n, ok in zip(attempts, successes)):
            raise AppError("too many failed logins; try again later", status_code=429,
                           headers={"Retry-After": str(self.retry_after)}, retry_after=self.retry_after)

    async def succeeded(self) -> None:
        try:
            for p in self.prefixes:
                await self.ctx.cache.incr(f"{p}:ok", ttl=LOGIN_WINDOW * 2)
        except CacheUnavailable:
            pass


async def login(ctx: AppContext, email: str, password: str, client: Client) -> AuthOut:
    email = normalize_email(email)
    if "\x00" in email:  # no account can have it (refused at registration), and PostgreSQL cannot compare it
        raise AppError("not a valid email address", field="email")
    limiter = LoginLimiter(ctx, email, client.ip)
    await limiter.begin()
    row = await ctx.db.fetchrow(q("user_for_login"), email)
    # Unknown email: verify against a dummy hash all the same, so both failures take the same time.
    stored = row["password_hash"] if row is not None else await dummy_hash(ctx)
    ok = await verify_password(password, stored)
    if row is None or not ok:
        log.info("login failed", extra={"known_user": row is not None, "client": client.ip})
        raise Unauthorized(BAD_CREDENTIALS, headers={"WWW-Authenticate": "Bearer"})
    await limiter.succeeded()  # the password was right: not a failed login (even if the account is disabled)
    if row["disabled"]:
        raise Forbidden("this account is disabled")
    if passwords.needs_rehash(stored, ctx.settings.bcrypt_rounds):
        await ctx.db.execute(q("rehash_password"), row["id"], await hash_password(ctx, password))
    async with ctx.db.transaction() as conn:
        user_row = await conn.fetchrow(q("user_by_id"), row["id"])
        out = await _start_session(ctx, conn, user_row, client)
    log.info("login", extra={"user_id": str(row["id"])})
    return out


async def refresh(ctx: AppContext, token: str, client: Client) -> AuthOut:
    """Rotate: the presented refresh token is spent, a new pair is issued for the same session.
    A spent token presented again means it leaked (or a client raced itself): the whole session
    (token family) is revoked, in the database first, and its access tokens die with it."""
    presented = hash_refresh_token(token)
    invalid = Unauthorized("invalid refresh token", headers={"WWW-Authenticate": "Bearer"})
    reused: uuid.UUID | None = None
    async with ctx.db.transaction() as conn:
        row = await conn.fetchrow(q("session_for_refresh"), presented)
        if row is None:
            reused = await conn.fetchval(q("used_refresh_session"), presented)
            if reused is not None:
                await conn.execute(q("revoke_session"), reused, "refresh token reuse")
        elif row["revoked_at"] is None and not row["expired"] and not row["disabled"]:
            new_token, new_hash = new_refresh_token()
            await conn.execute(q("insert_used_refresh"), presented, row["id"])
            await conn.execute(q("rotate_refresh"), row["id"], new_hash, client.user_agent, client.ip)
            user_row = await conn.fetchrow(q("user_by_id"), row["user_id"])
            return AuthOut(user=user_out(user_row),
                           access_token=issue_access_token(ctx.settings, row["user_id"], row["id"]),
                           refresh_token=new_token, expires_in=ctx.settings.access_token_ttl)
    if reused is not None:
        log.warning("refresh token reuse: session revoked", extra={"session_id": str(reused)})
        await refresh_states(ctx, [reused], reason="refresh token reuse")
    raise invalid


async def logout(ctx: AppContext, user: AuthUser) -> None:
    await ctx.db.execute(q("revoke_session"), user.session_id, "logout")
    await refresh_states(ctx, [user.session_id], reason="logout")


async def list_sessions(ctx: AppContext, user: AuthUser) -> list[SessionOut]:
    rows = await ctx.db.fetch(q("list_sessions"), user.id)
    return [SessionOut(id=r["id"], created_at=r["created_at"], last_used_at=r["last_used_at"],
                       user_agent=r["user_agent"], ip=r["ip"], current=r["id"] == user.session_id) for r in rows]


async def end_session(ctx: AppContext, user: AuthUser, session_id: uuid.UUID) -> None:
    """End one of the caller's own sessions. Someone else's (or an unknown, ended) session: 404."""
    ended = await ctx.db.fetchval(q("revoke_own_session"), session_id, user.id, "ended by user")
    if ended is None:
        raise NotFound("no such session")
    await refresh_states(ctx, [session_id], reason="ended by user")


# --- profile ---------------------------------------------------------------------------------------------

async def get_profile(ctx: AppContext, user: AuthUser) -> ProfileOut:
    row = await ctx.db.fetchrow(q("user_by_id"), user.id)
    if row is None:
        raise NotFound("no such user")
    return profile_out(row)


@lru_cache(maxsize=1)
def _timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


async def update_profile(ctx: AppContext, user: AuthUser, patch: ProfilePatch) -> ProfileOut:
    set_name = patch.display_name is not msgspec.UNSET
    name = clean_display_name(patch.display_name or None) if set_name else None
    currency = patch.base_currency.upper() if isinstance(patch.base_currency, str) else None
    tz = patch.timezone if isinstance(patch.timezone, str) else None
    if tz is not None and tz not in _timezones():
        raise AppError("not a known IANA time zone (e.g. Europe/Berlin)", field="timezone")
    risk = patch.risk_tolerance if isinstance(patch.risk_tolerance, str) else None
    row = await ctx.db.fetchrow(q("update_profile"), user.id, set_name, name, currency, tz, risk)
    if row is None:
        raise NotFound("no such user")
    return profile_out(row)


async def _confirm_password(ctx: AppContext, user: AuthUser, password: str, field: str) -> None:
    stored = await ctx.db.fetchval(q("password_hash_by_id"), user.id)
    if stored is None or not await verify_password(password, stored):
        raise AppError("password is not correct", status_code=403, field=field)


async def change_password(ctx: AppContext, user: AuthUser, current: str, new: str) -> None:
    await _confirm_password(ctx, user, current, "current_password")
    check_password_policy(new, user.email, field="new_password")
    new_hash = await hash_password(ctx, new)
    async with ctx.db.transaction() as conn:
        await conn.execute(q("update_password"), user.id, new_hash)
        ended = [r["id"] for r in await conn.fetch(q("revoke_user_sessions_except"), user.id, user.session_id,
                                                   "password changed")]
    await refresh_states(ctx, ended, reason="password changed")
    log.info("password changed", extra={"user_id": str(user.id), "sessions_ended": len(ended)})


async def delete_account(ctx: AppContext, user: AuthUser, password: str) -> None:
    await _confirm_password(ctx, user, password, "password")
    async with ctx.db.transaction() as conn:
        sessions = [r["id"] for r in await conn.fetch(q("live_session_ids"), user.id)]
        await conn.execute(q("delete_user"), user.id)  # everything the user owns goes with it (ON DELETE CASCADE)
    await mark_gone(ctx, sessions, reason="account deleted")
    log.info("account deleted", extra={"user_id": str(user.id)})


# --- admin ------------------------------------------------------------------------------------------------

async def list_users(ctx: AppContext, limit: int, offset: int) -> UserPage:
    rows = await ctx.db.fetch(q("list_users"), limit, offset)
    total = await ctx.db.fetchval(q("count_users"))
    return UserPage(items=[admin_user_out(r) for r in rows], total=total, limit=limit, offset=offset)


async def admin_update_user(ctx: AppContext, admin: AuthUser, user_id: uuid.UUID, patch: AdminUserPatch) -> AdminUserOut:
    role = patch.role if isinstance(patch.role, str) else None
    disabled = patch.disabled if isinstance(patch.disabled, bool) else None
    if user_id == admin.id and (disabled or role == "user"):
        raise AppError("admins cannot disable or demote themselves", status_code=409)
    async with ctx.db.transaction() as conn:
        sessions = [r["id"] for r in await conn.fetch(q("live_session_ids"), user_id)]
        row = await conn.fetchrow(q("admin_update_user"), user_id, role, disabled)
        if row is None:
            raise NotFound("no such user")
        if disabled:
            await conn.execute(q("revoke_user_sessions"), user_id, "user disabled")
    # Role and disabled flag live in every cached session state: overwrite them all.
    await refresh_states(ctx, sessions, reason="user disabled" if disabled else "user changed")
    log.info("user updated by admin", extra={"user_id": str(user_id), "admin_id": str(admin.id),
                                             "role": row["role"], "disabled": row["disabled"]})
    return admin_user_out(row)

