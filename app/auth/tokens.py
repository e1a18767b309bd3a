"""Access tokens (JWT, HS256 pinned) and the liveness of the session behind them.

An access token carries `sub` (user id), `sid` (session id = refresh-token family), `exp`, `iat`,
`iss`, `aud` and `typ="access"`; all are required and verified. A token is only as good as its
session: every request also checks that the session is not revoked or expired and that its user
exists and is not disabled.

Session state is cached in `ctx.cache` (Redis when REDIS_URL is set, so shared by every replica)
under `auth:session:{sid}`. The database is the truth; whoever changes it (logout, session delete,
password change, disable, role change, account deletion, refresh reuse) first commits, then
*overwrites* the cached state of every affected session. A request that misses the cache reads the
database and stores what it read with SET NX only, so it can never overwrite a newer revocation with
an older "live" state. A logged-out token is therefore rejected by every replica on its very next
request. Live states expire after SESSION_CACHE_TTL as a safety net (e.g. a revocation whose cache
write failed while Redis was unreachable); revoked states live as long as any token of theirs could.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Iterable
from typing import Any

import jwt
import msgspec
from litestar.exceptions import NotAuthorizedException
from litestar.security.jwt import Token

from app.auth.models import AuthUser
from app.cache import CacheUnavailable
from app.config import Settings
from app.context import AppContext
from app.db import sql_file
from app.errors import Unauthorized

log = logging.getLogger("app.auth")

ALGORITHM = "HS256"
ACCESS_TYPE = "access"
REQUIRED_CLAIMS = ("sub", "sid", "exp", "iat", "iss", "aud", "typ")
SESSION_CACHE_TTL = 60.0  # seconds a cached *live* state may be trusted (revocations overwrite it at once)
REVOCATIONS_CHANNEL = "auth:sessions:revoked"  # JSON {"session_ids": [...], "user_id": ..., "reason": ...}

_keys: dict[tuple[str | None, str], str] = {}


def signing_key(settings: Settings) -> str:
    k = (settings.jwt_secret, settings.data_dir)
    key = _keys.get(k)
    if key is None:
        key = _keys[k] = settings.signing_key()
    return key


def issue_access_token(settings: Settings, user_id: uuid.UUID, session_id: uuid.UUID) -> str:
    now = int(time.time())
    payload = {
        "sub": str(user_id), "sid": str(session_id), "typ": ACCESS_TYPE,
        "iat": now, "exp": now + settings.access_token_ttl,
        "iss": settings.jwt_issuer, "aud": settings.jwt_audience,
        "jti": secrets.token_urlsafe(8),
    }
    return jwt.encode(payload, signing_key(settings), algorithm=ALGORITHM)


class VerifiedToken(Token):
    """Litestar's Token, remembering which exact token strings it has already verified.

    Verifying a JWT (HMAC, base64, JSON, claim checks, dataclass conversion) costs ~50 µs; a client
    sends the same token for up to 15 minutes. A hit needs the identical string *and* identical
    verification parameters, and `exp` is still checked on every use, so the result is the same as
    decoding again. Session liveness is never cached here (see `session_state`)."""

    _verified: dict[tuple[Any, ...], tuple[float, Token]] = {}
    MAX_ENTRIES = 20_000  # ~1 KB each

    @classmethod
    def decode(cls, encoded_token: str, secret: str, algorithm: str, audience: Any = None, issuer: Any = None,
               require_claims: Any = None, verify_exp: bool = True, verify_nbf: bool = True,
               strict_audience: bool = False) -> Token:
        key = (encoded_token, secret, algorithm, _frozen(audience), _frozen(issuer), _frozen(require_claims),
               verify_exp, verify_nbf, strict_audience)
        hit = cls._verified.get(key)
        if hit is not None and (hit[0] > time.time() or not verify_exp):
            return hit[1]
        token = super().decode(encoded_token, secret, algorithm, audience=audience, issuer=issuer,
                               require_claims=require_claims, verify_exp=verify_exp, verify_nbf=verify_nbf,
                               strict_audience=strict_audience)
        if len(cls._verified) >= cls.MAX_ENTRIES:
            now = time.time()
            for k in [k for k, (exp, _) in cls._verified.items() if exp <= now]:
                del cls._verified[k]
            if len(cls._verified) >= cls.MAX_ENTRIES:
                cls._verified.clear()
        cls._verified[key] = (token.exp.timestamp(), token)
        return token


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def decode_token(settings: Settings, encoded: str) -> Token:
    """Verify signature (HS256 only), exp, iat, iss, aud (exactly ours) and the presence of every claim."""
    return VerifiedToken.decode(
        encoded_token=encoded, secret=signing_key(settings), algorithm=ALGORITHM,
        audience=[settings.jwt_audience], issuer=[settings.jwt_issuer],
        require_claims=REQUIRED_CLAIMS, strict_audience=True,
    )


def claims_of(token: Token) -> tuple[uuid.UUID, uuid.UUID]:
    """(user id, session id) of a decoded token whose `typ` is access; NotAuthorizedException otherwise.
    Kept on the token object (the verified-token memo hands out the same one for the same string):
    the rate limiter and the JWT middleware both ask on every request."""
    claims: tuple[uuid.UUID, uuid.UUID] | None = token.__dict__.get("_wt_claims")
    if claims is not None:
        return claims
    extras = token.extras
    if extras.get("typ") != ACCESS_TYPE:
        raise NotAuthorizedException("Invalid token")
    try:
        claims = uuid.UUID(token.sub), uuid.UUID(str(extras.get("sid")))
    except (ValueError, TypeError, AttributeError):
        raise NotAuthorizedException("Invalid token") from None
    token.__dict__["_wt_claims"] = claims
    return claims


# --- session state ----------------------------------------------------------------------------------

class SessionState(msgspec.Struct, array_like=True, frozen=True):
    user_id: str  # "" for a session that does not exist (any more)
    email: str
    role: str
    disabled: bool
    revoked: bool
    expires_at: float  # unix seconds: the session's (refresh family's) end

    @property
    def live(self) -> bool:
        return bool(self.user_id) and not self.disabled and not self.revoked and self.expires_at > time.time()


GONE = SessionState("", "", "", True, True, 0.0)
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(SessionState).decode


def _key(session_id: uuid.UUID | str) -> str:
    return f"auth:session:{session_id}"


def _ttl(state: SessionState, settings: Settings) -> float:
    # A revoked state must outlive every access token of its session; a live one is a short-term copy.
    return SESSION_CACHE_TTL if state.live else settings.access_token_ttl + 60.0


def state_from_row(row: Any) -> SessionState:
    return SessionState(str(row["user_id"]), row["email"], row["role"], row["disabled"], row["revoked"],
                        float(row["expires_at"]))


def session_key_of_bearer(settings: Settings, authorization: str | None) -> str | None:
    """The cache key of the session behind a verifiable `Bearer` access token, else None. Lets the
    rate limiter fetch the session state in the same Redis command as its count (see
    `CounterRateLimitMiddleware`); the JWT middleware still verifies the token itself."""
    if not authorization or authorization[:7].lower() != "bearer ":
        return None
    try:
        _, session_id = claims_of(decode_token(settings, authorization[7:].strip()))
    except NotAuthorizedException:
        return None
    return _key(session_id)


async def session_state(ctx: AppContext, session_id: uuid.UUID,
                        prefetched: tuple[str, bytes | None] | None = None) -> SessionState:
    """The session's state: from the cache, else the database. `prefetched` is (key, cached value) as
    read moments ago in this request (by the rate limiter); a miss there goes to the database."""
    key = _key(session_id)
    cache_ok = True
    try:
        if prefetched is not None and prefetched[0] == key:
            raw = prefetched[1]
        else:
            raw = await ctx.cache.get(key)
        if raw is not None:
            return _decode(raw)
    except CacheUnavailable:
        cache_ok = False
    except msgspec.DecodeError:
        pass
    row = await ctx.db.fetchrow(sql_file("auth")["session_state"], session_id)
    state = GONE if row is None else state_from_row(row)
    if cache_ok:
        try:
            await ctx.cache.set_if_absent(key, _encode(state), ttl=_ttl(state, ctx.settings))
        except CacheUnavailable:
            pass
    return state


async def publish_states(ctx: AppContext, states: dict[uuid.UUID, SessionState], *, reason: str | None = None) -> None:
    """After a committed change: overwrite the cached state of these sessions (see module docstring)."""
    if not states:
        return
    try:
        for sid, state in states.items():
            await ctx.cache.set(_key(sid), _encode(state), ttl=_ttl(state, ctx.settings))
    except CacheUnavailable:
        log.warning("session cache not updated; cached live states expire within %ss", SESSION_CACHE_TTL,
                    extra={"sessions": len(states)})
    ended = [str(sid) for sid, st in states.items() if not st.live]
    if ended:
        message = {"session_ids": ended, "reason": reason}
        try:
            await ctx.cache.publish(REVOCATIONS_CHANNEL, msgspec.json.encode(message))
        except CacheUnavailable:
            pass


async def refresh_states(ctx: AppContext, session_ids: Iterable[uuid.UUID], *, reason: str | None = None) -> None:
    """Re-read these sessions from the database and publish their states."""
    ids = list(session_ids)
    if not ids:
        return
    rows = {r["id"]: r for r in await ctx.db.fetch(sql_file("auth")["session_states"], ids)}
    states = {sid: state_from_row(rows[sid]) if sid in rows else GONE for sid in ids}
    await publish_states(ctx, states, reason=reason)


async def mark_gone(ctx: AppContext, session_ids: Iterable[uuid.UUID], *, reason: str | None = None) -> None:
    await publish_states(ctx, {sid: GONE for sid in session_ids}, reason=reason)


def user_for(state: SessionState, user_id: uuid.UUID, session_id: uuid.UUID) -> AuthUser | None:
    """The caller, when the session belongs to this user and the user exists and is not disabled."""
    if not state.user_id or state.disabled or state.user_id != str(user_id):
        return None
    return AuthUser(id=user_id, email=state.email, role=state.role, session_id=session_id)


def is_revoked(state: SessionState) -> bool:
    return state.revoked or state.expires_at <= time.time()


async def authenticate_token(ctx: AppContext, token: str) -> AuthUser:
    """For the WebSocket and anything outside the middleware: the caller, or Unauthorized for any
    bad, expired or revoked token (or a disabled or deleted user)."""
    try:
        user_id, session_id = claims_of(decode_token(ctx.settings, token))
    except NotAuthorizedException:
        raise Unauthorized("invalid or expired access token", headers={"WWW-Authenticate": "Bearer"}) from None
    state = await session_state(ctx, session_id)
    user = user_for(state, user_id, session_id)
    if user is None or is_revoked(state):
        raise Unauthorized("session ended or user disabled", headers={"WWW-Authenticate": "Bearer"})
    return user
