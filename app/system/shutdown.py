"""Graceful shutdown on SIGTERM.

uvicorn, on SIGTERM: stops accepting, asks every connection to finish (HTTP keep-alive ends after the
current response, WebSockets are closed with 1012), waits up to SHUTDOWN_TIMEOUT for in-flight
requests, cancels what is left, and only then runs the lifespan shutdown (where the market domain
flushes its ingestion buffer while the database pool is still open: the app's lifespan exits the
domains before it closes the cache and the pool).

We add, before uvicorn's own steps (see `GracefulServer`):
1. `DRAIN.draining` turns on: /health/ready answers 503 "draining" so a load balancer stops sending
   new work here, and a WebSocket that arrives now is refused.
2. Every open WebSocket gets a close frame with 1001 "going away" (clients reconnect elsewhere), and
   we wait a moment for their handlers to finish.
3. Then uvicorn's shutdown proceeds as above.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import uvicorn
from uvicorn.supervisors import multiprocess as uvicorn_multiprocess

log = logging.getLogger("app.system")

GOING_AWAY = 1001


class _Socket:
    __slots__ = ("send", "accepted", "closed", "done")

    def __init__(self, send: Any) -> None:
        self.send = send
        self.accepted = False
        self.closed = False
        self.done = asyncio.Event()


class Drain:
    """Process-wide shutdown state: the draining flag and the open WebSockets."""

    def __init__(self) -> None:
        self.draining = False
        self.started_at: float | None = None
        self.sockets: set[_Socket] = set()

    def open_websockets(self) -> int:
        return sum(1 for s in self.sockets if s.accepted and not s.closed)

    async def begin(self, wait: float = 2.0) -> int:
        """Turn draining on, close every WebSocket with 1001, wait up to `wait` s for their handlers."""
        if not self.draining:
            self.draining = True
            self.started_at = time.monotonic()
        closing = [s for s in list(self.sockets) if s.accepted and not s.closed]
        for sock in closing:
            sock.closed = True
            try:
                # bounded: a peer that stopped reading must not hold up the whole shutdown
                async with asyncio.timeout(wait):
                    await sock.send({"type": "websocket.close", "code": GOING_AWAY,
                                     "reason": "server shutting down"})
            except Exception:  # the peer is already gone, or does not take the frame in time
                sock.done.set()
        if closing:
            pending = [asyncio.ensure_future(s.done.wait()) for s in closing]
            _, still = await asyncio.wait(pending, timeout=wait)
            for fut in still:
                fut.cancel()
        log.info("draining", extra={"websockets_closed": len(closing)})
        return len(closing)

    def reset(self) -> None:  # tests
        self.draining = False
        self.started_at = None
        self.sockets.clear()


DRAIN = Drain()


class WebSocketDrainMiddleware:
    """Tracks open WebSockets so that a shutdown can close them with 1001 before uvicorn's 1012.

    After we have closed a socket, the handler's own sends are dropped (the client is leaving) and its
    next receive already returns the disconnect that uvicorn queued with our close.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        if DRAIN.draining:
            await send({"type": "websocket.close", "code": GOING_AWAY, "reason": "server shutting down"})
            return
        sock = _Socket(send)

        async def tracked_send(message: Any) -> None:
            kind = message["type"]
            if sock.closed:
                return  # we already said goodbye with 1001
            if kind == "websocket.accept":
                sock.accepted = True
            elif kind == "websocket.close":
                sock.closed = True
            await send(message)

        DRAIN.sockets.add(sock)
        try:
            await self.app(scope, receive, tracked_send)
        finally:
            DRAIN.sockets.discard(sock)
            sock.done.set()


class GracefulServer(uvicorn.Server):
    """uvicorn's server with our drain step first (see the module docstring)."""

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        for server in self.servers:  # stop accepting before anything else
            server.close()
        wait = min(2.0, max(0.1, self.config.timeout_graceful_shutdown or 2.0) / 2)
        try:
            async with asyncio.timeout(4 * wait + 1):
                await DRAIN.begin(wait=wait)
        except Exception:  # shutting down must go on whatever happens here
            log.exception("drain failed")
        await super().shutdown(sockets)


class GracefulProcess(uvicorn_multiprocess.Process):
    """One of uvicorn's worker processes, running `GracefulServer` instead of uvicorn's server."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = GracefulServer(config=self.config)
        return self._server


def serve_workers(config: uvicorn.Config, workers: int) -> None:
    """WEB_WORKERS > 1: uvicorn's own supervisor (one listening socket, `workers` spawned processes,
    a dead or hung one replaced, SIGTERM/SIGINT passed on as SIGTERM), each running `GracefulServer`.

    Each process is a full replica: the shared state (rate limits, sessions, WebSocket slots, price
    fan-out, feed leadership) already lives in Redis and PostgreSQL, as for replicas on several
    machines."""
    # The supervisor creates its processes through this module global, its only hook; the spawned
    # children unpickle GracefulProcess by reference from this module.
    uvicorn_multiprocess.Process = GracefulProcess  # type: ignore[misc]
    config.workers = workers
    sock = config.bind_socket()
    uvicorn_multiprocess.Multiprocess(config, sockets=[sock]).run()
