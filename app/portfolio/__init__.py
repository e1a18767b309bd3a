"""Portfolio & trade service: the exact ledger, valuation, performance, import/export, live summary.
See docs/portfolio.md.

Domain module for app/asgi.py: `route_handlers`, `lifespan(ctx)` (idempotency-key janitor; the
`subscribe_portfolio` action on /market-feed when the market stream offers its registry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from app.context import AppContext

log = logging.getLogger("app.portfolio")
PURGE_INTERVAL = 3600.0


def __getattr__(name: str) -> Any:  # routes imported lazily: the pure modules stay light to import
    if name == "route_handlers":
        from app.portfolio.routes import route_handlers

        return route_handlers
    raise AttributeError(name)


@contextlib.asynccontextmanager
async def lifespan(ctx: AppContext) -> AsyncIterator[None]:
    from app.portfolio import live, service

    live.register(ctx)

    async def purge() -> None:
        while True:
            try:
                await service.purge_idempotency_keys(ctx)
            except Exception:  # noqa: BLE001 - the janitor never dies; next hour again
                log.warning("purging idempotency keys failed", exc_info=True)
            await asyncio.sleep(PURGE_INTERVAL)

    task = asyncio.create_task(purge(), name="portfolio-idempotency-purge")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
