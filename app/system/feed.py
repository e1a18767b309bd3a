"""The `system` channel on /market-feed: the status summary pushed every SYSTEM_PUSH_INTERVAL seconds.

Uses the market domain's action registry (`app.market.stream.register_action`); without the market
domain there is no feed and nothing to register.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("app.system")

CHANNEL = "system"
_state: dict[str, Any] = {"sampler": None, "interval": 5.0}
_subscribed: dict[int, bool] = {}  # id(conn) → still subscribed


def bind(sampler: Any, interval: float) -> None:
    _state["sampler"] = sampler
    _state["interval"] = interval


def _payload(conn: Any) -> dict[str, Any] | None:
    sampler = _state["sampler"]
    if sampler is None or not sampler.latest:
        return None
    return {"type": CHANNEL, "channel": CHANNEL, "data": sampler.summary()}


async def _push(conn: Any, key: int) -> None:
    try:
        while _subscribed.get(key):
            payload = _payload(conn)
            if payload is not None:
                conn.send(payload)
            await asyncio.sleep(_state["interval"])
    finally:
        _subscribed.pop(key, None)


async def subscribe(conn: Any, message: dict) -> dict:
    key = id(conn)
    if not _subscribed.get(key):
        _subscribed[key] = True
        conn.add_task(_push(conn, key))
    return {"channel": CHANNEL, "subscribed": True, "interval_s": _state["interval"]}


async def unsubscribe(conn: Any, message: dict) -> dict:
    _subscribed[id(conn)] = False
    return {"channel": CHANNEL, "subscribed": False}


def register_feed_channel() -> bool:
    try:
        from app.market.stream import register_action  # type: ignore[import-not-found]
    except ImportError:
        return False
    register_action("system.subscribe", subscribe)
    register_action("system.unsubscribe", unsubscribe)
    return True
