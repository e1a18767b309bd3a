"""A local fake of Polygon.io for tests: a real WebSocket server (`websockets`) that speaks the
protocol (connected → auth → auth_success/auth_failed → subscribe acks → frames of events) and a
small HTTP/1.1 server that serves aggregates (paged with next_url), and the recorded REST samples in
../shared/polygon-samples. Tests script it: push frames, drop connections, inject 429s."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import websockets

from app.config import PROJECT_ROOT

SAMPLES = Path("/work/shared/polygon-samples/rest")
if not SAMPLES.exists():
    SAMPLES = PROJECT_ROOT.parent / "shared" / "polygon-samples" / "rest"


class FakePolygon:
    def __init__(self, api_key: str = "good-key") -> None:
        self.api_key = api_key
        self.ws_server: Any = None
        self.http_server: asyncio.Server | None = None
        self.ws_port = 0
        self.http_port = 0
        self.clients: set[Any] = set()
        self.subscribed: list[str] = []
        self.auth_attempts = 0
        self.connections = 0
        self.max_connections_mode = False
        # REST state: bars served by /v2/aggs (t in ms → bar dict), and an upper bound on what REST knows.
        self.minute_bars: dict[str, dict[int, dict]] = {}
        self.daily_bars: dict[str, dict[int, dict]] = {}
        self.rest_until: int | None = None
        self.page_size = 25
        self.rate_limit_next = 0
        self.requests: list[str] = []
        self.client_messages: list[dict] = []
        self._subscribed_event = asyncio.Event()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/stocks"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    async def start(self) -> None:
        self.ws_server = await websockets.serve(self._ws_handler, "127.0.0.1", 0)
        self.ws_port = self.ws_server.sockets[0].getsockname()[1]
        self.http_server = await asyncio.start_server(self._http_handler, "127.0.0.1", 0)
        self.http_port = self.http_server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.ws_server:
            self.ws_server.close()
            await self.ws_server.wait_closed()
        if self.http_server:
            self.http_server.close()
            await self.http_server.wait_closed()

    # --- WebSocket ---------------------------------------------------------------------------------
    async def _ws_handler(self, ws: Any) -> None:
        self.connections += 1
        await ws.send(json.dumps([{"ev": "status", "status": "connected", "message": "Connected Successfully"}]))
        if self.max_connections_mode:
            await ws.send(json.dumps([{"ev": "status", "status": "max_connections",
                                       "message": "Maximum number of websocket connections exceeded."}]))
            await ws.close(1008, "max_connections")
            return
        try:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
            self.client_messages.append(msg)
            self.auth_attempts += 1
            if msg.get("action") != "auth" or msg.get("params") != self.api_key:
                await ws.send(json.dumps([{"ev": "status", "status": "auth_failed",
                                           "message": "authentication failed"}]))
                await ws.close(1008, "auth failed")
                return
            await ws.send(json.dumps([{"ev": "status", "status": "auth_success", "message": "authenticated"}]))
            self.clients.add(ws)
            async for raw in ws:
                msg = json.loads(raw)
                self.client_messages.append(msg)
                if msg.get("action") == "subscribe":
                    topics = [t for t in msg["params"].split(",") if t]
                    self.subscribed.extend(topics)
                    await ws.send(json.dumps([{"ev": "status", "status": "success", "message": f"subscribed to: {t}"}
                                              for t in topics]))
                    self._subscribed_event.set()
        except (websockets.ConnectionClosed, asyncio.TimeoutError):
            pass
        finally:
            self.clients.discard(ws)

    async def wait_subscribed(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not self.clients:
                await asyncio.sleep(0.01)
            await self._subscribed_event.wait()

    def reset_subscribed(self) -> None:
        self._subscribed_event.clear()

    async def send(self, events: list[dict]) -> None:
        await self.send_raw(json.dumps(events))

    async def send_raw(self, frame: str) -> None:
        for ws in list(self.clients):
            try:
                await ws.send(frame)
            except websockets.ConnectionClosed:
                pass

    async def drop(self) -> None:
        """Cut every connection abruptly (no close handshake), as a network failure would."""
        for ws in list(self.clients):
            ws.transport.abort()
        self.clients.clear()

    # --- HTTP ----------------------------------------------------------------------------------------
    async def _http_handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _ = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, v = h.decode().split(":", 1)
                    headers[k.strip().lower()] = v.strip()
                status, body, extra = self._route(method, target, headers)
                data = json.dumps(body).encode()
                head = [f"HTTP/1.1 {status} X", "Content-Type: application/json", f"Content-Length: {len(data)}"]
                head += [f"{k}: {v}" for k, v in extra.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
                await writer.drain()
        except (ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    def _route(self, method: str, target: str, headers: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        self.requests.append(target)
        parts = urlsplit(target)
        path, query = parts.path, parse_qs(parts.query)
        key = query.get("apiKey", [None])[0] or headers.get("authorization", "").removeprefix("Bearer ")
        if key != self.api_key:
            return 401, {"status": "ERROR", "error": "Unknown API Key"}, {}
        if self.rate_limit_next > 0:
            self.rate_limit_next -= 1
            return 429, {"status": "ERROR", "error": "You've exceeded the maximum requests per minute"}, \
                {"Retry-After": "0"}
        seg = path.strip("/").split("/")
        if seg[:3] == ["v2", "aggs", "ticker"] and len(seg) == 9 and seg[4] == "range":
            ticker, span, start, end = seg[3], seg[6], seg[7], seg[8]
            store = self.minute_bars if span == "minute" else self.daily_bars
            bars = store.get(ticker)
            if bars is None and span == "day":
                sample = SAMPLES / "v2/aggs/ticker" / ticker / "range/1/day" / start / f"{end}.json"
                if sample.exists():
                    return 200, json.loads(sample.read_text()), {}
            lo, hi = _ms(start), _ms(end, end=True)
            if self.rest_until is not None:
                hi = min(hi, self.rest_until)
            rows = [bars[t] for t in sorted(bars or {}) if lo <= t <= hi]
            offset = int(query.get("cursor", ["0"])[0])
            page = rows[offset:offset + self.page_size]
            body: dict[str, Any] = {"ticker": ticker, "adjusted": True, "queryCount": len(page),
                                    "resultsCount": len(page), "status": "OK", "request_id": "fake",
                                    "results": page}
            if offset + self.page_size < len(rows):
                body["next_url"] = f"https://api.polygon.io{path}?cursor={offset + self.page_size}"
            return 200, body, {}
        sample = SAMPLES / (path.strip("/") + ".json")
        if not sample.exists():
            matches = list(sample.parent.glob(sample.stem + "&*.json")) if sample.parent.exists() else []
            sample = matches[0] if matches else sample
        if sample.exists():
            body = json.loads(sample.read_text())
            if isinstance(body, dict) and body.get("next_url") and "cursor" not in parts.query:
                body["next_url"] = f"https://api.massive.com{path}?cursor=page2"
            elif isinstance(body, dict) and "cursor" in parts.query:
                body.pop("next_url", None)
            return 200, body, {}
        return 404, {"status": "NOT_FOUND", "request_id": "fake", "message": "Not found"}, {}


def _ms(value: str, end: bool = False) -> int:
    if value.isdigit():
        return int(value)
    from datetime import datetime, timedelta, timezone

    d = datetime.fromisoformat(value).replace(tzinfo=timezone.utc)
    return int(((d + timedelta(days=1)) if end else d).timestamp() * 1000) - (1 if end else 0)
