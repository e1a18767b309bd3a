"""Polygon.io (Massive) client: the real-time WebSocket and the REST endpoints we need.

WebSocket: wait for `connected`, send auth, require `auth_success` (`auth_failed` → stop retrying,
report it, log it once), subscribe to POLYGON_CHANNELS × POLYGON_SYMBOLS, then read frames and hand
them to the decoder and the pipeline without ever waiting on the database. Any drop → reconnect with
exponential backoff and jitter, then resubscribe and fill the gap. `max_connections` → back off
longer (another client holds the plan's connection).

REST: aggregates (minute and day, following `next_url` — its path and query are resolved against
POLYGON_REST_URL, so a renamed host or a local test server works), grouped daily bars, previous
close, reference tickers. 429 and 5xx are retried with backoff (honouring Retry-After).

Gap fill (on start and after every reconnect): per symbol, minute bars from the last stored bar
(inclusive; at most POLYGON_BACKFILL_DAYS back) to now, and completed daily bars after the last
stored daily bar. They go through the same pipeline; bars are upserted on (symbol, ts), so the
overlap with live bars produces neither holes nor duplicates.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from app.config import Settings
from app.db import Database, sql_file
from app.market.feeds.events import FrameDecoder, Status
from app.market.ingest import Pipeline, RateLimitedLog

log = logging.getLogger("app.market.polygon")
UTC = timezone.utc


class PolygonError(RuntimeError):
    pass


class PolygonAuthError(PolygonError):
    pass


class RestBar(msgspec.Struct):
    o: float
    h: float
    l: float  # noqa: E741
    c: float
    t: int
    v: float = 0.0
    vw: float | None = None
    n: int | None = None
    T: str | None = None


class AggResponse(msgspec.Struct):
    results: list[RestBar] = []
    next_url: str | None = None
    status: str | None = None
    ticker: str | None = None


class TickerInfo(msgspec.Struct):
    ticker: str
    name: str = ""
    type: str | None = None
    primary_exchange: str | None = None
    currency_name: str | None = None
    active: bool = True
    market: str | None = None


class TickersResponse(msgspec.Struct):
    results: list[TickerInfo] = []
    next_url: str | None = None


class TickerDetailsResponse(msgspec.Struct):
    results: TickerInfo | None = None


_TYPES = {"CS": "stock", "ADRC": "stock", "PFD": "stock", "ETF": "etf", "ETN": "etf", "ETV": "etf", "FUND": "fund",
          "INDEX": "index"}


def bar_rows(symbol: str, bars: list[RestBar], source: str, *, day: bool = False) -> list[tuple]:
    """RestBars → rows shaped like ingest.BAR_COLUMNS (daily bars at UTC midnight of their date)."""
    rows = []
    for b in bars:
        if not (0 < b.l <= min(b.o, b.c) and max(b.o, b.c) <= b.h < 10_000_000) or b.v < 0:
            continue
        ts = datetime.fromtimestamp(b.t / 1000, UTC)
        if day:
            ts = datetime(ts.year, ts.month, ts.day, tzinfo=UTC)
        rows.append((b.T or symbol, ts, Decimal(repr(b.o)), Decimal(repr(b.h)), Decimal(repr(b.l)),
                     Decimal(repr(b.c)), int(b.v), None if b.vw is None else Decimal(repr(b.vw)), b.n, source))
    return rows


class PolygonRest:
    def __init__(self, base_url: str, api_key: str, *, client: httpx.AsyncClient | None = None,
                 max_retries: int = 6, backoff: float = 1.0, max_backoff: float = 60.0, timeout: float = 20.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.client = client or httpx.AsyncClient(timeout=timeout)
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.requests = 0
        self.retries = 0
        self.rate_limited = 0

    async def close(self) -> None:
        await self.client.aclose()

    def _resolve(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            parts = urlsplit(path_or_url)  # follow next_url on *our* configured host
            path_or_url = parts.path + (f"?{parts.query}" if parts.query else "")
        return self.base_url + path_or_url

    async def get(self, path_or_url: str, params: dict[str, Any] | None = None, *, type: Any = Any) -> Any:
        url = self._resolve(path_or_url)
        headers = {"Authorization": f"Bearer {self.api_key}"}
        for attempt in range(self.max_retries + 1):
            self.requests += 1
            try:
                r = await self.client.get(url, params=params, headers=headers)
            except httpx.TransportError as exc:
                if attempt >= self.max_retries:
                    raise PolygonError(f"GET {url}: {exc}") from exc
                await self._sleep(attempt, None)
                continue
            if r.status_code == 429 or r.status_code >= 500:
                if r.status_code == 429:
                    self.rate_limited += 1
                if attempt >= self.max_retries:
                    raise PolygonError(f"GET {url}: HTTP {r.status_code} after {attempt + 1} attempts")
                await self._sleep(attempt, r.headers.get("retry-after"))
                continue
            if r.status_code in (401, 403):
                raise PolygonAuthError(f"GET {url}: HTTP {r.status_code} (key unknown or plan not entitled)")
            if r.status_code == 404:
                return None
            if r.status_code >= 400:
                raise PolygonError(f"GET {url}: HTTP {r.status_code}: {r.text[:200]}")
            try:
                return msgspec.json.decode(r.content, type=type)
            except msgspec.DecodeError as exc:
                raise PolygonError(f"GET {url}: unexpected response: {exc}") from exc
        raise PolygonError(f"GET {url}: gave up")  # pragma: no cover

    async def _sleep(self, attempt: int, retry_after: str | None) -> None:
        self.retries += 1
        delay = self.backoff * (2**attempt) * (0.5 + random.random())
        if retry_after:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:
                pass
        await asyncio.sleep(min(delay, self.max_backoff))

    async def aggregates(self, ticker: str, multiplier: int, timespan: str, start: int | str, end: int | str,
                         *, limit: int = 50_000) -> AsyncIterator[list[RestBar]]:
        """Pages of bars (ascending), following next_url."""
        page: AggResponse | None = await self.get(
            f"/v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{start}/{end}",
            {"adjusted": "true", "sort": "asc", "limit": limit}, type=AggResponse)
        while page is not None:
            if page.results:
                yield page.results
            if not page.next_url:
                return
            page = await self.get(page.next_url, type=AggResponse)

    async def grouped_daily(self, day: date) -> list[RestBar]:
        page = await self.get(f"/v2/aggs/grouped/locale/us/market/stocks/{day.isoformat()}", {"adjusted": "true"},
                              type=AggResponse)
        return page.results if page else []

    async def prev_close(self, ticker: str) -> RestBar | None:
        page = await self.get(f"/v2/aggs/ticker/{ticker}/prev", {"adjusted": "true"}, type=AggResponse)
        return page.results[0] if page and page.results else None

    async def ticker_details(self, ticker: str) -> TickerInfo | None:
        page = await self.get(f"/v3/reference/tickers/{ticker}", type=TickerDetailsResponse)
        return page.results if page else None

    async def tickers(self, *, max_pages: int = 100, **params: Any) -> list[TickerInfo]:
        out: list[TickerInfo] = []
        page = await self.get("/v3/reference/tickers", {"market": "stocks", "active": "true", "limit": 1000, **params},
                              type=TickersResponse)
        pages = 1
        while page is not None:
            out.extend(page.results)
            if not page.next_url or pages >= max_pages:
                break
            page = await self.get(page.next_url, type=TickersResponse)
            pages += 1
        return out


class AuthFailed(Exception):
    pass


class PolygonFeed:
    def __init__(self, settings: Settings, pipeline: Pipeline, decoder: FrameDecoder, db: Database, *,
                 rest: PolygonRest | None = None, base_backoff: float = 1.0, max_backoff: float = 60.0,
                 handshake_timeout: float = 10.0) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.decoder = decoder
        self.db = db
        self.rest = rest or PolygonRest(settings.polygon_rest_url, settings.polygon_api_key or "")
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.handshake_timeout = handshake_timeout
        self.state = "starting"
        self.connects = 0
        self.reconnects = 0
        self.max_connection_events = 0
        self.frames = 0
        self.acks = 0
        self.last_status: str | None = None
        self.last_error: str | None = None
        self.connected_since: float | None = None
        self.backfills = 0
        self.backfilled_bars = 0
        self.backfill_error: str | None = None
        self._backfill_task: asyncio.Task | None = None
        self._on_state: Callable[[str], None] = lambda s: None
        self._err_log = RateLimitedLog(log, every=30.0)
        self._auth_logged = False

    # --- topics ------------------------------------------------------------------------------------
    def symbols(self) -> list[str] | None:
        raw = self.settings.polygon_symbols.strip()
        if raw in ("", "*"):
            return None
        return sorted({s.strip().upper() for s in raw.split(",") if s.strip()})

    def topics(self) -> str:
        channels = [c.strip().upper() for c in self.settings.polygon_channels.split(",") if c.strip()]
        syms = self.symbols() or ["*"]
        return ",".join(f"{c}.{s}" for c in channels for s in syms)

    def _set(self, state: str) -> None:
        self.state = state
        self._on_state(state)

    # --- the WebSocket loop ------------------------------------------------------------------------
    async def run(self, on_state: Callable[[str], None] | None = None) -> None:
        if on_state:
            self._on_state = on_state
        backoff = self.base_backoff
        try:
            while True:
                self._set("connecting")
                max_conn = False
                try:
                    async with websockets.connect(self.settings.polygon_ws_url, max_size=2**24, ping_interval=20,
                                                  ping_timeout=20, open_timeout=self.handshake_timeout,
                                                  close_timeout=2, compression=None, max_queue=1024) as ws:
                        await self._handshake(ws)
                        self.connects += 1
                        if self.connects > 1:
                            self.reconnects += 1
                        self.connected_since = time.time()
                        backoff = self.base_backoff
                        self._set("streaming")
                        self._start_backfill()
                        max_conn = await self._read(ws)
                except AuthFailed as exc:
                    self.last_error = str(exc)
                    self._set("auth_failed")
                    if not self._auth_logged:
                        log.error("polygon authentication failed; not retrying (check POLYGON_API_KEY and the plan)",
                                  extra={"status": self.last_status, "reason": str(exc)})
                        self._auth_logged = True
                    return
                except (ConnectionClosed, OSError, TimeoutError, InvalidHandshake, InvalidURI, PolygonError) as exc:
                    self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                    max_conn = max_conn or self.last_status == "max_connections"
                self.connected_since = None
                if max_conn:
                    self.max_connection_events += 1
                    self._set("max_connections")
                    log.warning("polygon: max_connections (another client uses this key); backing off")
                    backoff = max(backoff, min(30.0, self.max_backoff))
                else:
                    self._set("reconnecting")
                    self._err_log.warning("polygon connection lost; reconnecting", error=self.last_error,
                                          backoff=round(backoff, 2))
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self.max_backoff)
        finally:
            if self._backfill_task:
                self._backfill_task.cancel()
                await asyncio.gather(self._backfill_task, return_exceptions=True)

    async def _statuses(self, ws: Any) -> list[Status]:
        async with asyncio.timeout(self.handshake_timeout):
            frame = await ws.recv()
        events = self.decoder.decode(frame)
        statuses = [e for e in events if type(e) is Status]
        for st in statuses:
            self.last_status = st.status
        others = [e for e in events if type(e) is not Status]
        if others:
            self.pipeline.submit(others)
        return statuses

    async def _handshake(self, ws: Any) -> None:
        self._set("handshake")
        while True:
            sts = await self._statuses(ws)
            if any(s.status == "connected" for s in sts):
                break
            if any(s.status == "max_connections" for s in sts):
                raise PolygonError("max_connections")
        try:
            await ws.send(msgspec.json.encode({"action": "auth", "params": self.settings.polygon_api_key}).decode())
        except ConnectionClosed:
            while True:  # read what the server said before closing (e.g. max_connections)
                await self._statuses(ws)
        while True:
            sts = await self._statuses(ws)
            for s in sts:
                if s.status == "auth_success":
                    break
                if s.status in ("auth_failed", "auth_timeout"):
                    raise AuthFailed(f"{s.status}: {s.message}")
                if s.status == "max_connections":
                    raise PolygonError("max_connections")
            else:
                continue
            break
        await ws.send(msgspec.json.encode({"action": "subscribe", "params": self.topics()}).decode())

    async def _read(self, ws: Any) -> bool:
        """Read frames until the connection ends; True when the server said max_connections."""
        decoder, pipeline = self.decoder, self.pipeline
        max_conn = False
        try:
            async for frame in ws:
                self.frames += 1
                events = decoder.decode(frame)
                if events:
                    pipeline.submit(events)
                    if pipeline.statuses:
                        for name in list(pipeline.statuses):
                            if name == "success":
                                self.acks += pipeline.statuses.pop(name)
                            elif name == "max_connections":
                                max_conn = True
                                self.last_status = name
                                pipeline.statuses.pop(name)
        except ConnectionClosed as exc:
            self.last_error = f"connection closed: {exc}"[:300]
        return max_conn

    # --- gap fill ------------------------------------------------------------------------------------
    def _start_backfill(self) -> None:
        if self.settings.polygon_backfill_days <= 0:
            return
        if self._backfill_task and not self._backfill_task.done():
            self._backfill_task.cancel()
        self._backfill_task = asyncio.create_task(self.backfill(), name="polygon-backfill")

    async def backfill_symbols(self) -> list[str]:
        listed = self.symbols()
        if listed is not None:
            return listed
        return [r["symbol"] for r in await self.db.fetch(sql_file("market")["active_symbols"])]

    async def backfill(self) -> int:
        """Fill minute and daily bars since the last stored ones; returns the number of bars queued."""
        try:
            symbols = await self.backfill_symbols()
            await self._sync_assets(symbols)
            now = datetime.now(UTC)
            floor = now - timedelta(days=self.settings.polygon_backfill_days)
            last = {r["symbol"]: r["ts"] for r in await self.db.fetch(sql_file("market")["last_minute_bars"], symbols)}
            total = 0
            for sym in symbols:
                since = max(last.get(sym) or floor, floor)
                async for page in self.rest.aggregates(sym, 1, "minute", int(since.timestamp() * 1000),
                                                       int(now.timestamp() * 1000)):
                    rows = bar_rows(sym, page, "polygon")
                    self.pipeline.submit_bars(rows)
                    total += len(rows)
                last_day = await self.db.fetchval("SELECT max(ts) FROM daily_bars WHERE symbol = $1", sym)
                start_day = (last_day.astimezone(UTC).date() + timedelta(days=1)) if last_day else floor.date()
                yesterday = now.date() - timedelta(days=1)
                if start_day <= yesterday:
                    async for page in self.rest.aggregates(sym, 1, "day", start_day.isoformat(), yesterday.isoformat()):
                        rows = [r for r in bar_rows(sym, page, "polygon", day=True) if r[1].date() <= yesterday]
                        self.pipeline.submit_bars(rows, daily=True)
                        total += len(rows)
            self.backfills += 1
            self.backfilled_bars += total
            self.backfill_error = None
            return total
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.backfill_error = f"{type(exc).__name__}: {exc}"[:300]
            self._err_log.warning("polygon backfill failed", error=self.backfill_error)
            return 0

    async def _sync_assets(self, symbols: list[str]) -> None:
        """Reference data for configured symbols missing from `assets`."""
        if self.symbols() is None:
            return
        have = {r["symbol"] for r in await self.db.fetch(sql_file("market")["known_symbols"], symbols)}
        for sym in symbols:
            if sym in have:
                continue
            info = await self.rest.ticker_details(sym)
            if info is None:
                continue
            await self.db.execute(
                "INSERT INTO assets (symbol, name, type, exchange, currency, active, source) "
                "VALUES ($1, $2, $3, $4, $5, $6, 'polygon') ON CONFLICT (symbol) DO NOTHING",
                sym, info.name or sym, _TYPES.get(info.type or "", "other"), info.primary_exchange,
                (info.currency_name or "usd").upper(), info.active)

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "connects": self.connects, "reconnects": self.reconnects, "frames": self.frames,
                "subscription_acks": self.acks, "max_connection_events": self.max_connection_events, "last_status": self.last_status, "last_error": self.last_error,
                "connected_since": self.connected_since, "backfills": self.backfills,
                "backfilled_bars": self.backfilled_bars, "backfill_error": self.backfill_error,
                "rest_requests": self.rest.requests, "rest_retries": self.rest.retries,
                "rest_rate_limited": self.rest.rate_limited}
