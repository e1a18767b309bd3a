"""Auth & user service: registration, login, sessions (refresh-token families), roles, profile.

Domain module for app/asgi.py: `route_handlers`, `plugins(settings)` (JWT auth + global rate limit),
`lifespan(ctx)` (warms the dummy hash, purges old sessions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from app.config import Settings
from app.context import AppContext

log = logging.getLogger("app.auth")

SESSION_RETENTION = 30 * 24 * 3600  # keep ended sessions this long (visible to admins via the database)
PURGE_INTERVAL = 3600.0


def __getattr__(name: str) -> Any:  # route_handlers imported lazily: app.auth.models must stay light
    if name == "route_handlers":
        from app.auth.routes import route_handlers

        return route_handlers
    raise AttributeError(name)


def plugins(settings: Settings) -> list[Any]:
    from app.auth.security import AuthPlugin

    return [AuthPlugin(settings)]


@contextlib.asynccontextmanager
async def lifespan(ctx: AppContext) -> AsyncIterator[None]:
    from app.auth import service
    from app.auth.activity import SessionActivity
    from app.db import sql_file

    await service.dummy_hash(ctx)  # computed once, off the loop, before the first login needs it

    async def purge() -> None:
        while True:
            try:
                await ctx.db.execute(sql_file("auth")["purge_old_sessions"], float(SESSION_RETENTION))
            except Exception:  # noqa: BLE001 - never let the janitor die; try again next hour
                log.warning("purging old sessions failed", exc_info=True)
            await asyncio.sleep(PURGE_INTERVAL)

    activity = ctx.services["auth.activity"] = SessionActivity()
    task = asyncio.create_task(purge(), name="auth-session-purge")
    recorder = asyncio.create_task(activity.run(ctx.db, ctx.settings.session_activity_flush),
                                   name="auth-session-activity")
    try:
        yield
    finally:
        for t in (task, recorder):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        try:
            await activity.flush(ctx.db)  # what was seen since the last flush
        except Exception:  # noqa: BLE001 - stopping anyway; at most SESSION_ACTIVITY_FLUSH s of activity lost
            log.warning("recording session activity at shutdown failed", exc_info=True)
