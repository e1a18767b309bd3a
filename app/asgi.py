"""create_app(): plugins, routers, the lifespan (pools, cache, domain services)."""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from litestar import Litestar, Request
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin

from app import __version__
from app.cache import create_cache
from app.config import Settings, load_settings
from app.context import AppContext
from app.db import Database, check_timescaledb, create_pool, migrate
from app.errors import EXCEPTION_HANDLERS, AppError
from app.logs import RequestContextMiddleware, configure_logging

log = logging.getLogger("app")

# Each domain module exposes `route_handlers` and, optionally:
#   `lifespan(ctx: AppContext) -> AsyncContextManager` started after the database and cache,
#   `plugins(settings) -> list`, `middleware(settings) -> list`, `dependencies() -> dict`.
DOMAIN_MODULES: list[str] = [
    "app.system.health",
    "app.system.routes",  # first lifespan in, last out: the sampler outlives the services it watches
    "app.auth",
    "app.market",
    "app.portfolio",
    "app.analytics",
    "app.optimizer",
]


# Request bodies above this get 413 before a handler runs (routes that stream uploads, like the portfolio
# import, set their own limit). Litestar's default, made explicit: ~300 assets × 6 years of daily
# returns sent inline to the optimizer fit.
REQUEST_MAX_BODY_SIZE = 10 * 1024 * 1024


async def require_json_body(request: Request) -> None:
    """A route with a JSON `data` body refuses a body declared as something else (415, naming
    Content-Type) instead of parsing it as JSON anyway. No Content-Type at all is read as JSON.
    Async although it awaits nothing: Litestar runs a sync hook in a thread pool, on every request."""
    data_field = request.route_handler.parsed_data_field
    if data_field is None:
        return
    media_type = getattr(data_field.kwarg_definition, "media_type", None)
    if media_type is not None and str(getattr(media_type, "value", media_type)) != "application/json":
        return  # a form or multipart body, declared so by the handler
    declared = request.headers.get("content-type")
    if not declared:
        return
    kind = declared.split(";", 1)[0].strip().lower()
    if kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json")):
        return
    raise AppError(f"the body must be JSON (Content-Type: application/json), not {kind or declared!r}",
                   status_code=415, field="Content-Type")


def _load_domains() -> list[Any]:
    return [importlib.import_module(name) for name in DOMAIN_MODULES]


class WealthTerminal(Litestar):
    """Litestar with the request-context layer outside everything, so that even an unmatched route
    (answered before Litestar's middleware runs) gets a request id and an access log line."""

    def wrap_outermost(self, settings: Settings) -> None:
        self._outermost = RequestContextMiddleware(super().__call__, settings)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:  # type: ignore[override]
        await self._outermost(scope, receive, send)


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or load_settings()
    configure_logging(settings.log_level)
    domains = _load_domains()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        stack = AsyncExitStack()
        try:
            pool = await create_pool(settings)
            db = Database(pool)
            stack.push_async_callback(db.close)
            async with pool.acquire() as conn:
                await check_timescaledb(conn)
                if settings.migrate_on_start:
                    await migrate(conn)
            cache = create_cache(settings.redis_url)
            stack.push_async_callback(cache.close)
            ctx = AppContext(settings=settings, db=db, cache=cache)
            app.state.ctx = ctx
            for domain in domains:
                if hasattr(domain, "lifespan"):
                    await stack.enter_async_context(domain.lifespan(ctx))
            log.info("started", extra={"version": __version__, "env": settings.env, "cache": cache.kind,
                                       "market_feed": settings.market_feed})
            # Everything built so far (modules, bundled data, the password list …) lives as long as
            # the process: keep it out of the cyclic GC, whose full passes over it stalled requests.
            # Requests' garbage is freed by reference counting; the young generation's default
            # threshold (700) still ran over a hundred collections a second under load (~2 % of the CPU).
            gc.collect()
            gc.freeze()
            gc.set_threshold(10_000)
            yield
        finally:
            log.info("stopping")
            # Domains stop in reverse order (market flushes while the pool is still open). The whole
            # of it is bounded: a stuck component must not keep a stopping replica alive forever.
            try:
                async with asyncio.timeout(settings.shutdown_timeout):
                    await stack.aclose()
            except TimeoutError:
                log.error("shutdown did not finish within SHUTDOWN_TIMEOUT; exiting anyway",
                          extra={"timeout_s": settings.shutdown_timeout})

    def provide_ctx(state: State) -> AppContext:
        return state.ctx

    def provide_db(state: State) -> Database:
        return state.ctx.db

    def provide_settings() -> Settings:
        return settings

    dependencies: dict[str, Provide] = {
        "ctx": Provide(provide_ctx, sync_to_thread=False),
        "db": Provide(provide_db, sync_to_thread=False),
        "settings": Provide(provide_settings, sync_to_thread=False),
    }
    handlers: list[Any] = []
    plugins: list[Any] = []
    middleware: list[Any] = []
    for domain in domains:
        handlers.extend(domain.route_handlers)
        if hasattr(domain, "plugins"):
            plugins.extend(domain.plugins(settings))
        if hasattr(domain, "middleware"):
            middleware.extend(domain.middleware(settings))
        if hasattr(domain, "dependencies"):
            dependencies.update(domain.dependencies())

    app = WealthTerminal(
        route_handlers=handlers,
        plugins=plugins,
        middleware=middleware,
        dependencies=dependencies,
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        before_request=require_json_body,
        request_max_body_size=REQUEST_MAX_BODY_SIZE,
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(
            title="Wealth Terminal API", version=__version__, path="/schema",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
        ),
        cors_config=CORSConfig(allow_origins=[]),
        logging_config=None,
        debug=False,
    )
    app.wrap_outermost(settings)
    return app
