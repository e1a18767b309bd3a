"""Liveness and readiness.

live: the process answers. ready: the database answers with every migration applied, and Redis
answers when it is configured; otherwise 503 naming the failing part. Both recover on their own.
"""

from __future__ import annotations

import asyncio

from litestar import Request, Response, get

from app.cache import CacheUnavailable
from app.context import AppContext
from app.db import pending_migrations
from app.system.shutdown import DRAIN


@get("/health/live", sync_to_thread=False, tags=["health"], summary="The process answers")
def live() -> dict[str, str]:
    return {"status": "ok"}


@get("/health/ready", tags=["health"], summary="Database, migrations and Redis are ready")
async def ready(request: Request, ctx: AppContext) -> Response[dict]:
    checks: dict[str, dict] = {}
    try:
        async with asyncio.timeout(2.0):
            async with ctx.db.pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
                pending = await pending_migrations(conn)
        checks["database"] = {"ok": True}
        checks["migrations"] = {"ok": not pending, **({"pending": pending} if pending else {})}
    except (OSError, asyncio.TimeoutError, Exception) as exc:  # any failure to reach it is "not ready"
        checks["database"] = {"ok": False, "error": type(exc).__name__}
    if ctx.settings.redis_url:
        try:
            async with asyncio.timeout(2.0):
                await ctx.cache.ping()
            checks["redis"] = {"ok": True}
        except (CacheUnavailable, asyncio.TimeoutError) as exc:
            checks["redis"] = {"ok": False, "error": type(exc).__name__}
    if DRAIN.draining:
        checks["shutdown"] = {"ok": False, "error": "draining"}
    failing = [name for name, c in checks.items() if not c["ok"]]
    if failing:
        body = {"type": "about:blank", "title": "Service Unavailable", "status": 503,
                "detail": f"not ready: {', '.join(failing)}", "checks": checks}
        return Response(body, status_code=503, media_type="application/problem+json")
    return Response({"status": "ready", "checks": checks})


route_handlers = [live, ready]
