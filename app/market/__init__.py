"""Market data service: bundled history, live feed (simulator or Polygon), quote cache, REST and
the /market-feed WebSocket. See docs/market.md."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.context import AppContext
from app.market.history import ensure_bundled_history
from app.market.routes import route_handlers as _rest_handlers

route_handlers: list = [*_rest_handlers]


@asynccontextmanager
async def lifespan(ctx: AppContext) -> AsyncIterator[None]:
    from app.market.service import MarketService

    await ensure_bundled_history(ctx.db)
    service = MarketService(ctx)
    ctx.services["market"] = service
    await service.start()
    try:
        yield
    finally:
        await service.stop()
        ctx.services.pop("market", None)
