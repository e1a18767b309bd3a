"""The `system` channel on /market-feed: the status summary pushed every SYSTEM_PUSH_INTERVAL seconds.

Uses the market domain's action registry (`app.market.stream.register_action`); without the market
domain there is no feed and nothing to register.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from app.system.status import current_sampler

log = logging.getLogger("app.system")

CHANNEL = "system"
_pushers: dict[int, asyncio.Task] = {}  # id(conn) → its push task (cancelled with the socket)


def _interval() -> float:
    sampler = current_sampler()
    return sampler.ctx.settings.system_push_interval if sampler is not None else 5.0


def _payload(conn: Any) -> dict[str, Any] | None:
    sampler = current_sampler()
    if sampler is None or not sampler.latest:
        return None
    return {"type": CHANNEL, "channel": CHANNEL, "data": sampler.summary()}


async def _push(conn: Any) -> None:
    try:
        while True:
            payload = _payload(conn)
            if payload is not None:
                conn.send(payload)
            await asyncio.sleep(_interval())
    finally:
        key = id(conn)
        if _pushers.get(key) is asyncio.current_task():
            del _pushers[key]


async def subscribe(conn: Any, message: dict) -> dict:
    key = id(conn)
    task = _pushers.get(key)
    if task is None or task.done():
        _pushers[key] = conn.add_task(_push(conn))
    return {"channel": CHANNEL, "subscribed": True, "interval_s": _interval()}


async def unsubscribe(conn: Any, message: dict) -> dict:
    task = _pushers.pop(id(conn), None)
    if task is not None:
        task.cancel()
    return {"channel": CHANNEL, "subscribed": False}


def register_feed_channel() -> bool:
    try:
        from app.market.stream import register_action  # type: ignore[import-not-found]
    except ImportError:
        return False
    register_action("system.subscribe", subscribe)
    register_action("system.unsubscribe", unsubscribe)
    return True
