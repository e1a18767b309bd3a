"""Market data service: bundled history, live feed (simulator or Polygon), quote cache, REST and
the /market-feed WebSocket. See docs/market.md."""

from __future__ import annotations

import logging
import re

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.context import AppContext
from app.market.history import ensure_bundled_history
from app.market.routes import route_handlers as _rest_handlers
from app.market.stream import register_action, route_handlers as _ws_handlers

route_handlers: list = [*_rest_handlers, *_ws_handlers]
__all__ = ["route_handlers", "lifespan", "register_action", "ensure_bundled_history"]


class _RedactQueryToken(logging.Filter):
    """uvicorn logs a WebSocket's path with its query string: hide `?token=…` (an access token)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and isinstance(record.args, tuple):
            record.args = tuple(_TOKEN_RE.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str) and "token=" in record.msg:
            record.msg = _TOKEN_RE.sub(r"\1***", record.msg)
        return True


_TOKEN_RE = re.compile(r"((?:^|[?&])token=)[^&\s\"]+")


@asynccontextmanager
async def lifespan(ctx: AppContext) -> AsyncIterator[None]:
    from app.market.service import MarketService

    for name in ("uvicorn.error", "uvicorn.access", "uvicorn"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactQueryToken) for f in logger.filters):
            logger.addFilter(_RedactQueryToken())

    await ensure_bundled_history(ctx.db)
    service = MarketService(ctx)
    ctx.services["market"] = service
    await service.start()
    try:
        yield
    finally:
        await service.stop()
        ctx.services.pop("market", None)
