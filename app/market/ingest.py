"""One pipeline after decoding: bounded buffers → batch writer (COPY) → TimescaleDB.

`submit(events)` is synchronous and never waits on the database: trades go into a bounded deque,
bars into bounded dicts keyed by (symbol, ts) (a corrected bar replaces the pending one). When a
buffer is full the oldest entries are dropped and counted. The writer task takes batches and writes
them: trades with a plain binary COPY; minute and daily bars with a COPY into a temporary staging
table and one upsert, then today's daily bar is rebuilt from the minute bars. A failed write is
retried with backoff while the buffers keep absorbing (and dropping) new events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import asyncpg

from app.db import Database, sql_file
from app.market.feeds.events import MinuteAgg, Quote, SecondAgg, Status, Trade
from app.market.quotes import QuoteBook

log = logging.getLogger("app.market.ingest")

UTC = timezone.utc
TRADE_COLUMNS = ("ts", "symbol", "price", "size", "exchange", "trade_id", "tape", "seq")
BAR_COLUMNS = ("symbol", "ts", "open", "high", "low", "close", "volume", "vwap", "trades", "source")
_fromts = datetime.fromtimestamp


_PRICES: dict[float, Decimal] = {}  # float price → exact Decimal of its shortest repr (prices repeat: ticks)


def price_decimal(p: float) -> Decimal:
    d = _PRICES.get(p)
    if d is None:
        if len(_PRICES) > 100_000:
            _PRICES.clear()
        d = _PRICES[p] = Decimal(repr(p))
    return d


def trade_row(ev: Trade) -> tuple:
    return (_fromts(ev.t / 1000, UTC), ev.sym, price_decimal(ev.p), ev.s, ev.x, ev.i, ev.z, ev.q)


def trade_rows(batch: list[Trade]) -> list[tuple]:
    """COPY rows for a batch (the hot path: consecutive trades share timestamps, prices repeat)."""
    out: list[tuple] = []
    append = out.append
    prices = _PRICES
    if len(prices) > 100_000:
        prices.clear()
    last_t = -1
    last_dt = None
    for ev in batch:
        t = ev.t
        if t != last_t:
            last_dt = _fromts(t / 1000, UTC)
            last_t = t
        p = ev.p
        d = prices.get(p)
        if d is None:
            d = prices[p] = Decimal(repr(p))
        append((last_dt, ev.sym, d, ev.s, ev.x, ev.i, ev.z, ev.q))
    return out


def bar_row(ev: MinuteAgg, source: str) -> tuple:
    return (ev.sym, _fromts(ev.s / 1000, UTC), Decimal(repr(ev.o)), Decimal(repr(ev.h)), Decimal(repr(ev.l)),
            Decimal(repr(ev.c)), int(ev.v), None if ev.vw is None else Decimal(repr(ev.vw)), ev.n, source)


class RateLimitedLog:
    """Log at most once per `every` seconds, counting what was suppressed."""

    def __init__(self, logger: logging.Logger, every: float = 10.0) -> None:
        self.logger, self.every, self.last, self.suppressed = logger, every, 0.0, 0

    def warning(self, msg: str, **extra: Any) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.logger.warning(msg, extra={**extra, "suppressed": self.suppressed})
            self.last, self.suppressed = now, 0
        else:
            self.suppressed += 1


class Pipeline:
    def __init__(self, db: Database, *, queue_size: int, batch_size: int, flush_interval: float,
                 book: QuoteBook | None = None, source: str = "feed", writers: int = 2) -> None:
        self.db = db
        self.book = book
        self.source = source
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.writers = writers
        self.trades: deque[Trade] = deque()
        self.bars: dict[tuple[str, int], tuple] = {}
        self.daily: dict[tuple[str, int], tuple] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._bar_lock = asyncio.Lock()
        # counters
        self.received = 0
        self.written_trades = 0
        self.written_bars = 0
        self.written_daily = 0
        self.dropped = 0
        self.write_errors = 0
        self.last_error: str | None = None
        self.last_written_event_ms: int | None = None
        self.lag_ms: float | None = None
        self.db_ok = True
        self.statuses: dict[str, int] = {}
        self.rejected = 0  # semantically invalid events (crossed quotes, inconsistent bars)
        self.last_rejection: str | None = None
        self._err_log = RateLimitedLog(log)
        self._reject_log = RateLimitedLog(log)

    # --- input (synchronous: never waits) -------------------------------------------------------
    def submit(self, events: list) -> None:
        book = self.book
        trades = self.trades
        n_before = len(trades)
        for ev in events:
            t = type(ev)
            if t is Trade:
                trades.append(ev)
                if book is not None:
                    book.on_trade(ev)
            elif t is Quote:
                if ev.bp > 0 and ev.ap > 0 and ev.bp > ev.ap * 1.5:  # crossed far beyond any real market
                    self._reject(f"crossed quote for {ev.sym}")
                elif book is not None:
                    book.on_quote(ev)
            elif t is MinuteAgg:
                if not (ev.l <= ev.o <= ev.h and ev.l <= ev.c <= ev.h):
                    self._reject(f"inconsistent bar for {ev.sym}")
                    continue
                self._add_bar(ev, self.source)
                if book is not None:
                    book.on_bar(ev)
            elif t is Status:
                self.statuses[ev.status] = self.statuses.get(ev.status, 0) + 1
            elif t is SecondAgg:
                pass
        self.received += len(events)
        over = len(trades) - self.queue_size
        if over > 0:
            for _ in range(over):
                trades.popleft()
            self.dropped += over
        if len(trades) - n_before >= self.batch_size or len(trades) >= self.batch_size:
            self._wake.set()

    def _reject(self, why: str) -> None:
        self.rejected += 1
        self.last_rejection = why
        self._reject_log.warning("market event rejected", reason=why)

    def _add_bar(self, ev: MinuteAgg, source: str) -> None:
        key = (ev.sym, ev.s)
        self.bars.pop(key, None)  # re-insert at the end: a correction is the newest entry
        self.bars[key] = bar_row(ev, source)
        if len(self.bars) > self.queue_size:
            del self.bars[next(iter(self.bars))]
            self.dropped += 1

    def submit_bars(self, rows: list[tuple], *, daily: bool = False) -> None:
        """Rows shaped like BAR_COLUMNS (from REST backfill or the simulator's gap fill)."""
        target = self.daily if daily else self.bars
        for row in rows:
            key = (row[0], int(row[1].timestamp() * 1000))
            target.pop(key, None)
            target[key] = row
            if len(target) > self.queue_size:
                del target[next(iter(target))]
                self.dropped += 1
        self._wake.set()

    def depth(self) -> int:
        """Events not yet written: buffered, and held by a writer for a retry."""
        return len(self.trades) + len(self.bars) + len(self.daily) + self._inflight

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        for i in range(self.writers):
            self._tasks.append(asyncio.create_task(self._trade_writer(), name=f"market-trade-writer-{i}"))
        self._tasks.append(asyncio.create_task(self._bar_writer(), name="market-bar-writer"))

    async def stop(self, drain_timeout: float = 5.0) -> None:
        try:
            async with asyncio.timeout(drain_timeout):
                while self.depth() and self.db_ok:
                    self._wake.set()
                    await asyncio.sleep(0.02)
        except TimeoutError:
            pass
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def flushed(self, timeout: float = 10.0) -> None:
        """Wait until everything submitted so far is written (tests, benchmarks)."""
        async with asyncio.timeout(timeout):
            while self.depth() or self._busy:
                self._wake.set()
                await asyncio.sleep(0.005)

    _busy = 0
    _inflight = 0

    # --- writers ---------------------------------------------------------------------------------
    async def _wait_for_work(self, ready) -> None:
        if ready():
            return
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), self.flush_interval)
        except TimeoutError:
            pass

    async def _trade_writer(self) -> None:
        backoff = 0.2
        rows: list[tuple] = []
        while True:
            if not rows:
                await self._wait_for_work(lambda: len(self.trades) >= self.batch_size)
                n = min(len(self.trades), self.batch_size)
                if not n:
                    continue
                pop = self.trades.popleft
                batch = [pop() for _ in range(n)]
                rows = trade_rows(batch)
                last_ms = batch[-1].t
                del batch
                self._inflight += len(rows)
            self._busy += 1
            try:
                async with self.db.pool.acquire() as conn:
                    await conn.copy_records_to_table("trades", records=rows, columns=TRADE_COLUMNS)
                self.written_trades += len(rows)
                self._written(last_ms)
                self._inflight -= len(rows)
                rows = []
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except (asyncpg.PostgresError, OSError, asyncio.TimeoutError, asyncpg.InterfaceError) as exc:
                self._failed(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception as exc:  # a bad row must not kill the writer: drop the batch, count it
                self._failed(exc)
                self.dropped += len(rows)
                self._inflight -= len(rows)
                rows = []
            finally:
                self._busy -= 1

    def _written(self, last_ms: int) -> None:
        self.db_ok = True
        if self.last_written_event_ms is None or last_ms > self.last_written_event_ms:
            self.last_written_event_ms = last_ms
        self.lag_ms = max(0.0, time.time() * 1000 - last_ms)

    def _failed(self, exc: BaseException) -> None:
        self.write_errors += 1
        self.db_ok = False
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        self._err_log.warning("market write failed; retrying", error=self.last_error, depth=self.depth())

    async def _bar_writer(self) -> None:
        backoff = 0.2
        while True:
            await self._wait_for_work(lambda: False)
            if not self.bars and not self.daily:
                continue
            minute_rows = list(self.bars.values())[: self.batch_size]
            daily_rows = list(self.daily.values())[: self.batch_size]
            self._busy += 1
            try:
                await self.write_bars(minute_rows, daily_rows)
                for r in minute_rows:
                    key = (r[0], int(r[1].timestamp() * 1000))
                    if self.bars.get(key) is r:
                        del self.bars[key]
                for r in daily_rows:
                    key = (r[0], int(r[1].timestamp() * 1000))
                    if self.daily.get(key) is r:
                        del self.daily[key]
                self.written_bars += len(minute_rows)
                self.written_daily += len(daily_rows)
                self.db_ok = True
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                self._busy -= 1

    async def write_bars(self, minute_rows: list[tuple], daily_rows: list[tuple]) -> None:
        q = sql_file("market")
        async with self.db.pool.acquire() as conn, conn.transaction():
            await conn.execute(q["create_bar_stage"])
            if minute_rows:
                await conn.copy_records_to_table("_stage_bars", records=minute_rows, columns=BAR_COLUMNS)
                await conn.execute(q["upsert_minute_bars"])
                await conn.execute(q["rollup_daily_from_stage"])
                await conn.execute("TRUNCATE _stage_bars")
            if daily_rows:
                await conn.copy_records_to_table("_stage_bars", records=daily_rows, columns=BAR_COLUMNS)
                await conn.execute(q["upsert_daily_bars"])

    def status(self) -> dict[str, Any]:
        return {"received": self.received, "written_trades": self.written_trades, "written_bars": self.written_bars,
                "written_daily_bars": self.written_daily, "queue_depth": self.depth(), "queue_size": self.queue_size,
                "dropped": self.dropped, "rejected": self.rejected, "write_errors": self.write_errors, "db_ok": self.db_ok,
                "last_error": self.last_error, "lag_ms": None if self.lag_ms is None else round(self.lag_ms, 1)}
