"""AI analytics service: risk metrics with stated conventions, forecasts, explainable insights.

Domain module for app/asgi.py: `route_handlers`, `lifespan(ctx)` (the HTTP client for the narrative
model, and `ctx.services["analytics"]` for /api/system/status).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from app.context import AppContext


def __getattr__(name: str) -> Any:  # routes imported lazily: the pure modules stay light
    if name == "route_handlers":
        from app.analytics.routes import route_handlers

        return route_handlers
    raise AttributeError(name)


@contextlib.asynccontextmanager
async def lifespan(ctx: AppContext) -> AsyncIterator[None]:
    import httpx

    from app.analytics.narrative import model_configured
    from app.analytics.service import AnalyticsService

    client = httpx.AsyncClient(timeout=ctx.settings.ai_timeout) if model_configured(ctx.settings) else None
    ctx.services["analytics"] = AnalyticsService(http=client)
    try:
        yield
    finally:
        if client is not None:
            await client.aclose()
