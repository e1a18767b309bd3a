"""Live portfolio summaries on `/market-feed`, through the market domain's action registry.

`{"action":"subscribe_portfolio","portfolio_id":"…","id":1}` → ack, then events
`{"type":"portfolio","portfolio_id":…,"total_value":…,"pnl_today":{…},"top_positions":[…],…}`
whenever the valuation changes (prices moved or the ledger changed), at most every
PORTFOLIO_LIVE_INTERVAL seconds (0.25). `{"action":"unsubscribe_portfolio","portfolio_id":…}` stops it.
Another user's portfolio is refused like a missing one. Each tick costs one indexed query (ownership
and ledger version) and one quote-cache read; the ledger state itself is cached by version.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import msgspec

from app.context import AppContext
from app.errors import AppError, NotFound

log = logging.getLogger("app.portfolio.live")
MAX_PORTFOLIOS_PER_CONNECTION = 5
_registered = False


def _ctx(conn: Any) -> AppContext:
    return conn.hub.ctx


def _portfolio_id(message: dict) -> uuid.UUID:
    raw = message.get("portfolio_id")
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        raise ValueError("portfolio_id must be a portfolio's id (a UUID)") from None


def _subs(conn: Any) -> dict[uuid.UUID, asyncio.Task]:
    subs = getattr(conn, "_portfolio_subs", None)
    if subs is None:
        subs = {}
        conn._portfolio_subs = subs
    return subs


async def _stream(conn: Any, portfolio_id: uuid.UUID) -> None:
    from app.portfolio import service

    ctx = _ctx(conn)
    interval = ctx.settings.portfolio_live_interval
    last: bytes | None = None
    while not conn.closed:
        try:
            v = await service.valuation(ctx, portfolio_id, conn.user.id)
            summary = service.summary_from(portfolio_id, v.valuation, v.version, v.currency)
            payload = msgspec.to_builtins(summary)
            body = msgspec.json.encode(payload)
            if body != last:
                conn.send({"type": "portfolio", **payload})
                last = body
        except NotFound:
            conn.send({"type": "error", "code": "not_found", "action": "subscribe_portfolio",
                       "portfolio_id": str(portfolio_id), "message": "portfolio not found (deleted?); unsubscribed"})
            _subs(conn).pop(portfolio_id, None)
            return
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a failed tick (database blip) is retried, never kills the socket
            log.warning("live portfolio tick failed", exc_info=True, extra={"portfolio_id": str(portfolio_id)})
        await asyncio.sleep(interval)


async def subscribe_portfolio(conn: Any, message: dict) -> dict:
    from app.portfolio import service

    pid = _portfolio_id(message)
    portfolio = await service.get_owned_portfolio(_ctx(conn).db, pid, conn.user.id)  # NotFound → rejected
    subs = _subs(conn)
    if pid not in subs:
        if len(subs) >= MAX_PORTFOLIOS_PER_CONNECTION:
            raise AppError(f"at most {MAX_PORTFOLIOS_PER_CONNECTION} portfolios per connection", status_code=429)
        subs[pid] = conn.add_task(_stream(conn, pid))
    return {"portfolio_id": str(pid), "name": portfolio.name,
            "interval_ms": int(_ctx(conn).settings.portfolio_live_interval * 1000)}


async def unsubscribe_portfolio(conn: Any, message: dict) -> dict:
    pid = _portfolio_id(message)
    task = _subs(conn).pop(pid, None)
    if task is not None:
        task.cancel()
    return {"portfolio_id": str(pid), "subscribed": False}


def register(ctx: AppContext) -> bool:
    """Add the actions to /market-feed. False (and a log line) when the market stream is absent."""
    global _registered
    if _registered:
        return True
    try:
        from app.market.stream import register_action
    except ImportError:
        log.warning("market stream not available: live portfolio summaries are off")
        return False
    register_action("subscribe_portfolio", subscribe_portfolio)
    register_action("unsubscribe_portfolio", unsubscribe_portfolio)
    _registered = True
    return True
