"""The system domain: /api/system/status, /metrics, the `system` feed channel, graceful shutdown.

Registered in app/asgi.py DOMAIN_MODULES. Its lifespan starts the sampler (and the event-loop lag
probe) before the other domains and stops it after them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Request, get

from app.config import Settings
from app.context import AppContext
from app.errors import ServiceUnavailable
from app.system import feed
from app.system.metrics import EVENT_LOOP_LAG, MetricsController, mark_worker_gone, prometheus_config
from app.system.shutdown import WebSocketDrainMiddleware
from app.system.status import LoopLagMonitor, SystemSampler, activate, deactivate

log = logging.getLogger("app.system")


def _is_admin(request: Request) -> bool:
    user = request.scope.get("user")
    return getattr(user, "role", None) == "admin"


def sampler_of(ctx: AppContext) -> SystemSampler:
    sampler = ctx.services.get("system")
    if not isinstance(sampler, SystemSampler) or not sampler.latest:
        raise ServiceUnavailable("system status is not sampled yet")
    return sampler


@get("/api/system/status", tags=["system"], summary="System status: summary for users, everything for admins",
     description="Host CPU/memory/network, event-loop lag, database and Redis round trips, market feed and other "
                 "services. Admins also get `detail`: per-core CPU, swap, disk, the process, the database pool, "
                 "and every service's full status. Sampled every SYSTEM_SAMPLE_INTERVAL seconds in the "
                 "background, so this is cheap.")
async def system_status(request: Request, ctx: AppContext) -> dict[str, Any]:
    sampler = sampler_of(ctx)
    body = sampler.summary()
    if _is_admin(request):
        body["detail"] = sampler.full()
    return body


@asynccontextmanager
async def lifespan(ctx: AppContext) -> AsyncIterator[None]:
    lag = LoopLagMonitor()
    lag.observers.append(EVENT_LOOP_LAG.observe)
    sampler = SystemSampler(ctx, lag=lag)
    await sampler.start()
    ctx.services["system"] = sampler
    activate(sampler)  # /metrics and the `system` feed channel read it
    feed.register_feed_channel()
    try:
        yield
    finally:
        deactivate(sampler)
        ctx.services.pop("system", None)
        mark_worker_gone()
        await sampler.stop()


def plugins(settings: Settings) -> list:
    return []


def middleware(settings: Settings) -> list:
    return [WebSocketDrainMiddleware, prometheus_config().middleware]


route_handlers = [system_status, MetricsController]
