"""The global authentication (Litestar's JWT backend) and the global per-client rate limit.

Both are installed by `AuthPlugin` for the whole app. Order, outermost first: rate limit → JWT auth
→ route guards → handler, so that floods of bad tokens are limited too.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from litestar.config.app import AppConfig
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, TooManyRequestsException
from litestar.middleware.authentication import AuthenticationResult
from litestar.middleware.rate_limit import RateLimitConfig, RateLimitMiddleware
from litestar.plugins import InitPlugin
from litestar.security.jwt import JWTAuth, JWTAuthenticationMiddleware, Token
from litestar.types import Message, Receive, Scope, Send

from app.auth.models import AuthUser
from app.auth.tokens import (ALGORITHM, REQUIRED_CLAIMS, VerifiedToken, claims_of, is_revoked, session_key_of_bearer,
                             session_state, signing_key, user_for)
from app.cache import CacheUnavailable, MemoryCache
from app.config import Settings
from app.net import client_ip

# Public paths. Every pattern is anchored. Everything under /api/ needs a token except these three;
# paths outside /api/ (health, OpenAPI schema, /metrics — network-restricted by the system domain —
# and the /market-feed WebSocket, which authenticates itself with the same token) are public.
AUTH_EXCLUDE = [
    r"^/(?!api/).",
    r"^/api/auth/(register|login|refresh)$",
]
RATE_LIMIT_EXCLUDE = [r"^/health/", r"^/metrics$"]
_SCOPE_STATE_KEY = "wt.auth.session_state"
_SCOPE_PREFETCH_KEY = "wt.auth.session_prefetch"  # (session cache key, cached value) read by the rate limiter
log = logging.getLogger("app.auth")


class BearerJWTMiddleware(JWTAuthenticationMiddleware):
    """Litestar's JWT middleware, insisting on the `Bearer` scheme."""

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        header = connection.headers.get(self.auth_header)
        if not header:
            raise NotAuthorizedException("missing bearer token")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise NotAuthorizedException("expected an Authorization: Bearer <access token> header")
        return await self.authenticate_token(encoded_token=token, connection=connection)


async def retrieve_user_handler(token: Token, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthUser | None:
    """The token is already verified (signature, claims); here: its session and user must be live."""
    user_id, session_id = claims_of(token)
    state = await session_state(connection.app.state.ctx, session_id,
                                connection.scope.get(_SCOPE_PREFETCH_KEY))  # type: ignore[call-overload]
    connection.scope[_SCOPE_STATE_KEY] = state  # type: ignore[literal-required]
    user = user_for(state, user_id, session_id)
    if user is not None and not is_revoked(state):
        activity = connection.app.state.ctx.services.get("auth.activity")
        if activity is not None:
            activity.touch(session_id)
    return user


async def revoked_token_handler(token: Token, connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """Litestar's revoked-token hook: a token of an ended (logged out, revoked, expired) session."""
    state = connection.scope.get(_SCOPE_STATE_KEY)  # type: ignore[call-overload]
    return state is None or is_revoked(state)


def build_jwt_auth(settings: Settings) -> JWTAuth[AuthUser, Token]:
    return JWTAuth[AuthUser, Token](
        token_secret=signing_key(settings),
        algorithm=ALGORITHM,
        retrieve_user_handler=retrieve_user_handler,
        revoked_token_handler=revoked_token_handler,
        authentication_middleware_class=BearerJWTMiddleware,
        token_cls=VerifiedToken,
        accepted_audiences=[settings.jwt_audience],
        accepted_issuers=[settings.jwt_issuer],
        require_claims=list(REQUIRED_CLAIMS),
        strict_audience=True,
        exclude=AUTH_EXCLUDE,
        exclude_http_methods=["OPTIONS"],  # CORS preflight only; HEAD is authenticated like GET
        description="Access token from /api/auth/login, /register or /refresh: `Authorization: Bearer <token>`.",
    )


# --- global per-client rate limit -----------------------------------------------------------------

class CounterRateLimitMiddleware(RateLimitMiddleware):
    """Litestar's rate-limit middleware (its config, exclusions and client identifier) with a
    fixed-window *counter* instead of a timestamp list: one atomic INCR per request in the app cache
    (Redis when REDIS_URL is set, so the limit holds across replicas; in-process otherwise). Litestar's
    own implementation reads and rewrites a JSON list of every request time in the window, which is
    slow at high limits and loses counts between replicas.

    A request with a bearer token that verifies also gets its session's cached state in the *same*
    Redis command (`cache.incr_and_get`), left in the scope for the JWT middleware: one round trip
    per authenticated request instead of two."""

    def __init__(self, app: Any, config: RateLimitConfig) -> None:
        super().__init__(app, config)
        self._fallback_cache = MemoryCache()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = scope["litestar_app"]
        request = app.request_class(scope)
        if not await self.should_check_request(request=request):
            await self.app(scope, receive, send)
            return
        ctx = app.state.get("ctx")  # None only when the app serves without its lifespan (schema tools)
        cache = ctx.cache if ctx is not None else self._fallback_cache
        window = 60 if self.unit == "minute" else {"second": 1, "hour": 3600, "day": 86400}[self.unit]
        now = time.time()
        bucket = int(now // window)
        reset = max(1, int((bucket + 1) * window - now + 0.999))
        key = f"rl:{self.get_identifier_for_request(request)}:{bucket}"
        session_key = None if ctx is None else session_key_of_bearer(ctx.settings, request.headers.get("authorization"))
        try:
            if session_key is None:
                count = await cache.incr(key, ttl=window + 1)
            else:
                count, cached = await cache.incr_and_get(key, window + 1, session_key)
                scope[_SCOPE_PREFETCH_KEY] = (session_key, cached)  # type: ignore[literal-required]
        except CacheUnavailable:
            # Fail open: an unreachable Redis must not take the whole API down with it (/health/ready
            # reports it). Login brute-force limits fail closed instead (see service.login).
            log.warning("rate-limit store unavailable; request not counted")
            await self.app(scope, receive, send)
            return
        remaining = str(max(0, self.max_requests - count))
        if count > self.max_requests:
            raise TooManyRequestsException("too many requests; slow down", headers={
                "RateLimit-Policy": f"{self.max_requests}; w={window}", "RateLimit-Limit": str(self.max_requests),
                "RateLimit-Remaining": remaining, "RateLimit-Reset": str(reset), "Retry-After": str(reset)})
        # raw (name, value) pairs appended to the response's: no handler sets these names itself
        extra = [(b"ratelimit-policy", f"{self.max_requests}; w={window}".encode()),
                 (b"ratelimit-limit", str(self.max_requests).encode()),
                 (b"ratelimit-remaining", remaining.encode()), (b"ratelimit-reset", str(reset).encode())]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_wrapper)


def build_rate_limit(settings: Settings) -> RateLimitConfig:
    trusted = settings.trusted_proxies
    return RateLimitConfig(
        rate_limit=("minute", settings.rate_limit_per_minute),
        exclude=RATE_LIMIT_EXCLUDE,
        identifier_for_request=lambda request: client_ip(request.scope, trusted),
        middleware_class=CounterRateLimitMiddleware,
    )


class AuthPlugin(InitPlugin):
    """Installs the JWT backend (middleware, OpenAPI security scheme) and the global rate limit."""

    def __init__(self, settings: Settings, *, authenticate: bool = True) -> None:
        self.settings = settings
        self.authenticate = authenticate

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        if self.authenticate:
            app_config = build_jwt_auth(self.settings).on_app_init(app_config)
        app_config.middleware.insert(0, build_rate_limit(self.settings).middleware)
        return app_config
