"""Optimizer service: Riskfolio-Lib models (in worker processes) turned into rebalance trades.

Domain module for app/asgi.py: `route_handlers` and `lifespan(ctx)`, which starts the worker pool in
the background (the server does not wait for Riskfolio to import) and stops it on shutdown.
This package is also imported by the worker processes, so it stays light: nothing heavy at import.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from app.context import AppContext


def __getattr__(name: str) -> Any:  # routes imported lazily: workers import this package too
    if name == "route_handlers":
        from app.optimizer.routes import route_handlers

        return route_handlers
    raise AttributeError(name)


@contextlib.asynccontextmanager
async def lifespan(ctx: AppContext) -> AsyncIterator[None]:
    from app.optimizer.service import OptimizerService

    svc = OptimizerService(ctx.settings)
    svc.start()
    ctx.services["optimizer"] = svc
    try:
        yield
    finally:
        ctx.services.pop("optimizer", None)
        await svc.stop()
