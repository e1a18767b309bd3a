"""The `/market-feed` WebSocket and the per-replica fan-out hub.

Protocol (docs/market.md): authenticate with `?token=<access token>` or a first message
`{"action":"auth","token":"…"}` (within 10 s), else the socket is closed with 4401. Then
`{"action":"subscribe"|"unsubscribe","symbols":[…],"channels":["trades","quotes","bars"],"id":…}`;
every action is acknowledged (`{"type":"ack",…}`) or answered with `{"type":"error",…}`; the
connection is never dropped for a bad message. Every server frame is a JSON array of events.

Fan-out: the ingesting replica publishes one batch per FEED_FLUSH_INTERVAL on the cache channel
`market:feed` (Redis pub/sub when REDIS_URL is set). Every replica's hub receives it, keeps the
events as raw JSON (no re-encoding), and gives each connection one frame: connections with the same
subscriptions share the frame bytes. A connection whose previous frame is still being sent gets the
waiting batches merged (conflated: the latest trade and quote per symbol, bars kept); a connection
that cannot take a frame for WS_SLOW_CLIENT_TIMEOUT seconds is closed with 4008. Neither slows the
other connections or ingestion.

Other domains add actions with `register_action(name, handler)`; `async def handler(conn, message)
-> dict` returns the ack body, `conn.send(event)` queues an event to that client, `conn.add_task(coro)`
runs a task cancelled when the socket closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import msgspec
from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect

from app.cache import CacheUnavailable
from app.context import AppContext
from app.errors import AppError
from app.market.ingest import RateLimitedLog

log = logging.getLogger("app.market.stream")

FEED_CHANNEL = "market:feed"
REVOKED_CHANNEL = "auth:sessions:revoked"  # published by the auth domain when sessions end
CHANNELS = ("trades", "quotes", "bars")
AUTH_TIMEOUT = 10.0
HEARTBEAT_INTERVAL = 15.0
MAX_MESSAGE_BYTES = 16 * 1024
MAX_BACKLOG = 8  # batches waiting for one connection before they are conflated
MAX_EXTRA = 1000  # events queued by conn.send() before the oldest are dropped
CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_MANY = 4429
# The per-user connection limit is counted across replicas in the shared cache: one slot per open
# connection, renewed every SLOT_RENEW s, gone SLOT_TTL s after its replica stopped renewing it.
SLOT_KEY_PREFIX = "ws:conns:"
SLOT_TTL = 60.0
SLOT_RENEW = 20.0
CLOSE_SLOW = 4008
CLOSE_GOING_AWAY = 1001

Handler = Callable[["FeedConnection", dict], Awaitable[dict]]
_ACTIONS: dict[str, Handler] = {}
_BUILTIN = {"auth", "subscribe", "unsubscribe", "ping"}

_json = msgspec.json.Encoder()
_decode_any = msgspec.json.Decoder()


def register_action(name: str, handler: Handler) -> None:
    """Add a client action (`{"action": name, …}`) handled by `handler(conn, message) -> ack body`."""
    if name in _BUILTIN:
        raise ValueError(f"action {name!r} is built in")
    if name in _ACTIONS and _ACTIONS[name] is not handler:
        raise ValueError(f"action {name!r} is already registered")
    _ACTIONS[name] = handler


class Published(msgspec.Struct):
    """What the ingesting replica publishes: `t` publish time (ms), `e` symbol → channel → events."""
    t: int
    e: dict[str, dict[str, list[msgspec.Raw]]]


_published_decoder = msgspec.json.Decoder(Published)


class Batch:
    __slots__ = ("events", "frames", "texts")

    def __init__(self, events: dict[str, dict[str, list[msgspec.Raw]]]) -> None:
        self.events = events
        self.frames: dict[frozenset, list[bytes]] = {}
        self.texts: dict[frozenset, str | None] = {}  # the whole frame, shared by equal subscribers

    def text_for(self, signature: frozenset, order: tuple) -> str | None:
        if signature in self.texts:
            return self.texts[signature]
        parts = self.parts_for(signature, order)
        text = (b"[" + b",".join(parts) + b"]").decode() if parts else None
        self.texts[signature] = text
        return text

    def parts_for(self, signature: frozenset, order: tuple) -> list[bytes]:
        parts = self.frames.get(signature)
        if parts is None:
            parts = []
            events = self.events
            for sym, ch in order:
                by_ch = events.get(sym)
                if by_ch is not None:
                    lst = by_ch.get(ch)
                    if lst:
                        parts.extend(lst)
            self.frames[signature] = parts
        return parts


class FeedConnection:
    """One authenticated client. `send(event)` and `add_task(coro)` are for action handlers."""

    def __init__(self, hub: FeedHub, socket: WebSocket, user: Any) -> None:
        self.hub = hub
        self.socket = socket
        self.user = user
        self.id = uuid.uuid4().hex[:12]
        self.subs: dict[str, set[str]] = {}
        self.signature: frozenset = frozenset()
        self.order: tuple = ()
        self.backlog: list[Batch] = []
        self.latest: dict[tuple[str, str], bytes] | None = None  # conflated state of a lagging client
        self.latest_bars: list[bytes] = []
        self.extra: list[bytes] = []
        self.tasks: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self.closed = False
        self.close_reason: tuple[int, str] | None = None
        self.frames_sent = 0
        self.conflated = 0
        self.dropped = 0
        self.last_sent = time.monotonic()

    # --- for action handlers -------------------------------------------------------------------
    def send(self, event: dict | msgspec.Struct) -> None:
        if self.closed:
            return
        self.extra.append(_json.encode(event))
        if len(self.extra) > MAX_EXTRA:
            del self.extra[0]
            self.dropped += 1
        self._wake.set()

    def add_task(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # --- subscriptions -------------------------------------------------------------------------
    def _resign(self) -> None:
        pairs = sorted((s, c) for s, chs in self.subs.items() for c in chs)
        self.order = tuple(pairs)
        self.signature = frozenset(pairs)

    def symbol_count(self) -> int:
        return len(self.subs)

    # --- fan-out ---------------------------------------------------------------------------------
    def offer(self, batch: Batch) -> None:
        if self.closed or not self.order:
            return
        self.backlog.append(batch)
        if len(self.backlog) > MAX_BACKLOG:
            self._fold()
        self._wake.set()

    def _fold(self) -> None:
        """Conflate the waiting batches: the latest trade and quote per symbol, every bar."""
        if self.latest is None:
            self.latest = {}
        latest, bars = self.latest, self.latest_bars
        for b in self.backlog:
            events = b.events
            for sym, ch in self.order:
                by_ch = events.get(sym)
                if by_ch is None:
                    continue
                lst = by_ch.get(ch)
                if not lst:
                    continue
                if ch == "bars":
                    bars.extend(lst)
                else:
                    latest[(sym, ch)] = lst[-1]
        self.conflated += len(self.backlog)
        self.backlog = []

    def _take_frame(self) -> str | None:
        if len(self.backlog) == 1 and self.latest is None and not self.extra:  # the common case: shared text
            b = self.backlog[0]
            self.backlog = []
            return b.text_for(self.signature, self.order)
        if self.latest is not None or len(self.backlog) > 1:
            if len(self.backlog) > 1 or self.latest is not None:
                self._fold()
            parts = [*self.latest.values(), *self.latest_bars]  # type: ignore[union-attr]
            self.latest, self.latest_bars = None, []
        elif self.backlog:
            parts = self.backlog[0].parts_for(self.signature, self.order)
            self.backlog = []
        else:
            parts = []
        if self.extra:
            parts = [*self.extra, *parts]
            self.extra = []
        if not parts:
            return None
        return (b"[" + b",".join(parts) + b"]").decode()

    async def writer(self) -> None:
        timeout = self.hub.ctx.settings.ws_slow_client_timeout
        window_start = time.monotonic()
        blocked = 0.0  # seconds spent waiting for the socket in the current window
        while not self.closed:
            try:
                await asyncio.wait_for(self._wake.wait(), HEARTBEAT_INTERVAL)
            except TimeoutError:
                self.send({"type": "heartbeat", "ts": int(time.time() * 1000)})
                continue
            self._wake.clear()
            frame = self._take_frame()
            if frame is None:
                continue
            started = time.monotonic()
            try:
                async with asyncio.timeout(timeout):
                    await self.socket.send_data(frame, mode="text")
            except TimeoutError:
                await self._drop_slow(f"slow consumer: a frame could not be delivered in {timeout:g} s", timeout)
                return
            except (WebSocketDisconnect, OSError, RuntimeError):
                self.closed = True
                return
            now = time.monotonic()
            blocked += now - started
            self.frames_sent += 1
            self.last_sent = now
            # A healthy socket takes a frame at once. One whose sends kept us waiting for more than
            # half of a WS_SLOW_CLIENT_TIMEOUT window is behind for good (its updates were being
            # conflated all along): drop it.
            if now - window_start >= timeout:
                if blocked > timeout / 2:
                    await self._drop_slow(f"slow consumer: behind for {timeout:g} s despite conflation", timeout)
                    return
                window_start, blocked = now, 0.0

    async def _drop_slow(self, reason: str, timeout: float) -> None:
        # Stop feeding it at once; the close frame goes out when its socket takes data again (or the
        # protocol's ping timeout ends the connection).
        self.hub.slow_disconnects += 1
        self.hub.connections.discard(self)
        log.info("slow feed client disconnected", extra={"connection_id": self.id, "conflated": self.conflated})
        await self.close(CLOSE_SLOW, reason, wait=2 * timeout)

    async def close(self, code: int, reason: str, wait: float = 1.0) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = (code, reason)
        self._wake.set()
        try:
            async with asyncio.timeout(wait):
                await self.socket.close(code=code, reason=reason)
        except (TimeoutError, WebSocketDisconnect, OSError, RuntimeError):
            pass


class FeedHub:
    """Per replica: the connections, their subscriptions, and the subscriber of the feed channel."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.connections: set[FeedConnection] = set()
        self.handlers: set[asyncio.Task] = set()  # every live socket's writer and reader tasks
        self.by_user: dict[Any, set[FeedConnection]] = {}
        self._task: asyncio.Task | None = None
        self.batches = 0
        self.events_in = 0
        self.last_batch_lag_ms: float | None = None
        self.slow_disconnects = 0
        self.subscribe_errors = 0
        self._known: set[str] = set()
        self._known_at = 0.0
        self._err_log = RateLimitedLog(log)

    def start(self) -> None:
        self._task = asyncio.create_task(self._consume(), name="market-feed-hub")

    async def stop(self) -> None:
        await asyncio.gather(*(conn.close(CLOSE_GOING_AWAY, "server shutting down") for conn in list(self.connections)),
                             return_exceptions=True)
        for task in list(self.handlers):  # e.g. a slow client's close still waiting for its socket
            task.cancel()
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _consume(self) -> None:
        while True:
            try:
                async for channel, message in self.ctx.cache.subscribe([FEED_CHANNEL, REVOKED_CHANNEL]):
                    if channel == FEED_CHANNEL:
                        self.dispatch(message)
                    else:
                        self.revoke(message)
            except asyncio.CancelledError:
                raise
            except (CacheUnavailable, OSError) as exc:
                self.subscribe_errors += 1
                self._err_log.warning("feed subscription lost; resubscribing", error=str(exc))
                await asyncio.sleep(1.0)
            except Exception:
                self.subscribe_errors += 1
                log.exception("feed hub error; resubscribing")
                await asyncio.sleep(1.0)

    def dispatch(self, message: bytes) -> None:
        try:
            published = _published_decoder.decode(message)
        except msgspec.DecodeError:
            self._err_log.warning("bad feed batch ignored")
            return
        self.batches += 1
        self.last_batch_lag_ms = max(0.0, time.time() * 1000 - published.t)
        batch = Batch(published.e)
        for conn in self.connections:
            conn.offer(batch)

    def revoke(self, message: bytes) -> None:
        """A session ended (logout, password change, account disabled…): close its sockets."""
        try:
            body = _decode_any.decode(message)
            ended = {str(s) for s in body.get("session_ids") or []}
            reason = str(body.get("reason") or "session ended")
        except (msgspec.DecodeError, AttributeError, TypeError):
            return
        for conn in list(self.connections):
            if str(getattr(conn.user, "session_id", "")) in ended:
                self.connections.discard(conn)
                asyncio.create_task(conn.close(CLOSE_UNAUTHORIZED, f"session ended: {reason}"[:120]))

    async def known(self, symbols: list[str]) -> set[str]:
        if time.monotonic() - self._known_at > 30 or any(s not in self._known for s in symbols):
            from app.market.prices import known_symbols

            found = await known_symbols(self.ctx.db, symbols)
            if time.monotonic() - self._known_at > 30:
                self._known = set(self._known) | found
                self._known_at = time.monotonic()
            else:
                self._known |= found
            return found
        return {s for s in symbols if s in self._known}

    def status(self) -> dict[str, Any]:
        return {"ws_clients": len(self.connections), "ws_users": len(self.by_user), "batches": self.batches,
                "last_batch_lag_ms": None if self.last_batch_lag_ms is None else round(self.last_batch_lag_ms, 1),
                "slow_disconnects": self.slow_disconnects,
                "conflated_batches": sum(c.conflated for c in self.connections)}


# --- the socket handler --------------------------------------------------------------------------

async def _authenticate(ctx: AppContext, token: Any) -> Any:
    from app.auth.tokens import authenticate_token

    if not isinstance(token, str) or not token:
        raise AppError("token required", status_code=401)
    return await authenticate_token(ctx, token)


def _error(code: str, message: str, msg_id: Any = None, **extra: Any) -> dict:
    out = {"type": "error", "code": code, "message": message, **extra}
    if msg_id is not None:
        out["id"] = msg_id
    return out


def _str_list(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [v for v in value.split(",")]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"`{name}` must be a list of strings")
    return [v.strip().upper() if name == "symbols" else v.strip().lower() for v in value if v.strip()]


async def _subscribe(conn: FeedConnection, msg: dict, subscribe: bool) -> dict:
    settings = conn.hub.ctx.settings
    symbols = _str_list(msg.get("symbols"), "symbols")
    channels = _str_list(msg.get("channels"), "channels") or list(CHANNELS)
    bad_channels = [c for c in channels if c not in CHANNELS]
    if bad_channels:
        raise ValueError(f"unknown channels {bad_channels}; use {list(CHANNELS)}")
    if not symbols:
        raise ValueError("`symbols` must name at least one symbol")
    if len(symbols) > settings.ws_max_symbols:
        raise ValueError(f"at most {settings.ws_max_symbols} symbols per connection")
    if subscribe:
        known = await conn.hub.known(symbols)
        unknown = [s for s in symbols if s not in known]
        new = [s for s in symbols if s in known and s not in conn.subs]
        if conn.symbol_count() + len(new) > settings.ws_max_symbols:
            raise LimitError(f"subscription limit: at most {settings.ws_max_symbols} symbols per connection "
                             f"(now {conn.symbol_count()})")
        for s in symbols:
            if s in known:
                conn.subs.setdefault(s, set()).update(channels)
    else:
        unknown = []
        for s in symbols:
            chs = conn.subs.get(s)
            if chs is not None:
                chs.difference_update(channels)
                if not chs:
                    del conn.subs[s]
    conn._resign()
    body: dict[str, Any] = {"symbols": [s for s in symbols if s not in unknown], "channels": channels,
                            "subscriptions": {s: sorted(c) for s, c in sorted(conn.subs.items())}}
    if unknown:
        body["unknown"] = unknown
    return body


class LimitError(ValueError):
    pass


async def _handle(conn: FeedConnection, raw: str | bytes) -> None:
    if len(raw) > MAX_MESSAGE_BYTES:
        conn.send(_error("too_large", f"messages are limited to {MAX_MESSAGE_BYTES} bytes"))
        return
    try:
        msg = _decode_any.decode(raw)
    except msgspec.DecodeError:
        conn.send(_error("bad_json", "message is not valid JSON"))
        return
    if not isinstance(msg, dict):
        conn.send(_error("bad_message", "message must be a JSON object with an `action`"))
        return
    action = msg.get("action")
    msg_id = msg.get("id")
    if not isinstance(msg_id, (str, int, type(None))) or isinstance(msg_id, bool):
        msg_id = None
    try:
        if action in ("subscribe", "unsubscribe"):
            body = await _subscribe(conn, msg, action == "subscribe")
        elif action == "ping":
            body = {"ts": int(time.time() * 1000)}
        elif action == "auth":
            body = {"user_id": str(conn.user.id)}  # already authenticated: a harmless repeat
        elif isinstance(action, str) and action in _ACTIONS:
            body = await _ACTIONS[action](conn, msg)
        else:
            known = sorted(_BUILTIN | set(_ACTIONS))
            conn.send(_error("unknown_action", f"unknown action {action!r}; use one of {known}", msg_id))
            return
    except LimitError as exc:
        conn.send(_error("limit", str(exc), msg_id, action=action))
        return
    except ValueError as exc:
        conn.send(_error("bad_request", str(exc), msg_id, action=action))
        return
    except AppError as exc:
        conn.send(_error("rejected", exc.detail, msg_id, action=action, status=exc.status_code))
        return
    except Exception:
        log.exception("feed action failed", extra={"action": action})
        conn.send(_error("internal", "the action failed; it has been logged", msg_id, action=action))
        return
    ack = {"type": "ack", "action": action, **(body or {})}
    if msg_id is not None:
        ack["id"] = msg_id
    conn.send(ack)


@websocket("/market-feed", opt={"exclude_from_auth": True})
async def market_feed(socket: WebSocket, ctx: AppContext) -> None:
    service = ctx.services.get("market")
    await socket.accept()
    hub: FeedHub | None = getattr(service, "hub", None)
    if hub is None:
        await socket.close(code=1013, reason="market feed unavailable")
        return
    token = socket.query_params.get("token")
    try:
        if token is None:
            try:
                async with asyncio.timeout(AUTH_TIMEOUT):
                    first = await socket.receive_data(mode="text")
            except TimeoutError:
                await socket.close(code=CLOSE_UNAUTHORIZED, reason="authentication required: no auth message in time")
                return
            try:
                msg = _decode_any.decode(first)
            except msgspec.DecodeError:
                msg = None
            if not isinstance(msg, dict) or msg.get("action") != "auth":
                await socket.close(code=CLOSE_UNAUTHORIZED,
                                   reason='authentication required: send {"action":"auth","token":...} first')
                return
            token = msg.get("token")
        try:
            user = await _authenticate(ctx, token)
        except AppError as exc:
            await socket.close(code=CLOSE_UNAUTHORIZED, reason=f"unauthorized: {exc.detail}"[:120])
            return
    except WebSocketDisconnect:
        return
    limit = ctx.settings.ws_max_connections_per_user
    mine = hub.by_user.setdefault(user.id, set())
    conn = FeedConnection(hub, socket, user)
    slot_key = f"{SLOT_KEY_PREFIX}{user.id}"
    allowed = len(mine) < limit  # this replica's own count first: free, and it holds without Redis
    if allowed:
        try:  # then the count shared by every replica
            allowed = await ctx.cache.claim_slot(slot_key, conn.id, limit, SLOT_TTL)
        except CacheUnavailable:
            log.warning("connection slots unavailable; limit counted on this replica only")
    if not allowed:
        if not mine:
            hub.by_user.pop(user.id, None)
        await socket.close(code=CLOSE_TOO_MANY, reason=f"too many connections: at most {limit} per user")
        return
    conn.add_task(_renew_slot(ctx, slot_key, conn.id, limit))
    mine.add(conn)
    hub.connections.add(conn)
    conn.send({"type": "ack", "action": "auth", "user_id": str(user.id), "connection_id": conn.id,
               "channels": list(CHANNELS), "max_symbols": ctx.settings.ws_max_symbols})

    async def reader() -> None:
        while not conn.closed:
            try:
                raw = await socket.receive_data(mode="text")
            except (WebSocketDisconnect, OSError, RuntimeError):
                return
            await _handle(conn, raw)

    writer_task = asyncio.create_task(conn.writer())
    reader_task = asyncio.create_task(reader())
    hub.handlers.update((writer_task, reader_task))
    try:
        await asyncio.wait({writer_task, reader_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        conn.closed = True
        hub.connections.discard(conn)
        mine.discard(conn)
        if not mine:
            hub.by_user.pop(user.id, None)
        hub.handlers.difference_update((writer_task, reader_task))
        for t in (writer_task, reader_task, *conn.tasks):
            t.cancel()
        await asyncio.gather(writer_task, reader_task, *conn.tasks, return_exceptions=True)
        try:
            await ctx.cache.release_slot(slot_key, conn.id)
        except CacheUnavailable:
            pass  # the slot expires by itself within SLOT_TTL


async def _renew_slot(ctx: AppContext, key: str, member: str, limit: int) -> None:
    """Keep this connection's slot in the shared count alive (it expires SLOT_TTL after the last
    renewal, so a replica that dies frees its users' slots by itself)."""
    while True:
        await asyncio.sleep(SLOT_RENEW)
        try:
            await ctx.cache.claim_slot(key, member, limit, SLOT_TTL)
        except CacheUnavailable:
            pass


route_handlers = [market_feed]
