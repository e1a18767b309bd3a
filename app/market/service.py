"""The market service: leader election, the ingesting side (feed → pipeline → cache + publish,
retention) on exactly one replica, and the fan-out hub on every replica.

Leadership is a PostgreSQL session-level advisory lock held on a dedicated connection (not from the
pool). Every replica tries it every LEADER_POLL seconds; a dead leader's connection closes and its
lock is released at once, so another replica takes over within about LEADER_POLL seconds. The
leader checks its connection on the same period and stops ingesting as soon as it is lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import msgspec
import numpy as np

from app.cache import CacheUnavailable
from app.context import AppContext
from app.db import sql_file
from app.market.feeds.events import FrameDecoder
from app.market.ingest import Pipeline, RateLimitedLog
from app.market.quotes import DAY_MS, QuoteBook
from app.market.snapshot import decode_snapshot, snapshot_key
from app.market.stream import FEED_CHANNEL, FeedHub, Published

log = logging.getLogger("app.market")

LEADER_LOCK_KEY = 0x4D4B_5446_4545_44  # "MKTFEED"
LEADER_POLL = 2.0
UTC = timezone.utc


class MarketService:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.hub = FeedHub(ctx)
        self.decoder = FrameDecoder()
        self.state = "off" if self.settings.market_feed == "off" else "standby"
        self.is_leader = False
        self.leader_since: float | None = None
        self.book: QuoteBook | None = None
        self.pipeline: Pipeline | None = None
        self.feed: Any = None  # Simulator or PolygonFeed while leading
        self.published = 0
        self.publish_errors = 0
        self.feed_error: str | None = None
        self._election: asyncio.Task | None = None
        self._drain_task: asyncio.Task | None = None
        self._rate_task: asyncio.Task | None = None
        self._rates = {"events_per_second": 0.0, "written_per_second": 0.0}
        self.loop_lag_ms = 0.0
        self._err_log = RateLimitedLog(log)
        self.encoder = msgspec.json.Encoder()

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self.hub.start()
        self._rate_task = asyncio.create_task(self._measure_rates(), name="market-rates")
        if self.settings.market_feed != "off":
            self._election = asyncio.create_task(self._elect(), name="market-election")

    async def stop(self) -> None:
        if self._election:
            self._election.cancel()
            await asyncio.gather(self._election, return_exceptions=True)
        pipeline = self._resume_draining()
        if pipeline is not None:
            await pipeline.stop(drain_timeout=2.0)
            self.pipeline = None
        if self._rate_task:
            self._rate_task.cancel()
        await self.hub.stop()

    # --- leadership ----------------------------------------------------------------------------
    async def _elect(self) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            lead: asyncio.Task | None = None
            try:
                conn = await asyncpg.connect(self.settings.effective_database_url, timeout=5,
                                             server_settings={"application_name": "wealth-terminal market leader",
                                                              "tcp_keepalives_idle": "5",
                                                              "tcp_keepalives_interval": "2",
                                                              "tcp_keepalives_count": "2"})
                while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY):
                    self.state = "standby"
                    await asyncio.sleep(LEADER_POLL)
                self.is_leader, self.leader_since = True, time.time()
                log.info("market feed: this replica ingests", extra={"feed": self.settings.market_feed})
                lead = asyncio.create_task(self._lead(), name="market-lead")
                while not lead.done():
                    await asyncio.wait({lead}, timeout=LEADER_POLL)
                    if not lead.done():
                        async with asyncio.timeout(LEADER_POLL * 2):
                            await conn.fetchval("SELECT 1")
                if lead.exception() is not None:
                    raise lead.exception()  # type: ignore[misc]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._err_log.warning("market leadership lost or unavailable; retrying",
                                      error=f"{type(exc).__name__}: {exc}")
            finally:
                if lead is not None and not lead.done():
                    lead.cancel()
                    await asyncio.gather(lead, return_exceptions=True)
                if self.is_leader:
                    log.info("market feed: this replica stopped ingesting")
                self.is_leader = False
                if conn is not None:
                    conn.terminate()
            if self.state != "auth_failed":
                self.state = "standby"
            await asyncio.sleep(LEADER_POLL)

    async def _lead(self) -> None:
        s = self.settings
        self.state = "starting"
        pipeline = self._resume_draining()
        if pipeline is None:  # (a pipeline still writing what we buffered before is taken over as is)
            pipeline = Pipeline(self.ctx.db, queue_size=s.ingest_queue_size, batch_size=s.ingest_batch_size,
                                flush_interval=s.ingest_flush_interval, book=QuoteBook(), source=s.market_feed)
            pipeline.start()
        book = pipeline.book
        assert book is not None
        self.book, self.pipeline = book, pipeline
        tasks: list[asyncio.Task] = []
        try:
            await self._seed_book(book)
            tasks.append(asyncio.create_task(self._publisher(book), name="market-publisher"))
            tasks.append(asyncio.create_task(self._retention(), name="market-retention"))
            tasks.append(asyncio.create_task(self._run_feed(pipeline, book), name="market-feed"))
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.feed = None
            if pipeline.depth():
                # Leadership lost (e.g. the database went away) with events still buffered: they are
                # ours alone (no other replica received them), so keep writing them in the
                # background, retrying until the database is back.
                self._drain_task = asyncio.create_task(self._drain(pipeline), name="market-drain")
            else:
                await pipeline.stop(drain_timeout=0)
                self.pipeline = None

    async def _run_feed(self, pipeline: Pipeline, book: QuoteBook) -> None:
        """The feed, restarted after a crash (never silently dead)."""
        delay = 1.0
        while True:
            try:
                if self.settings.market_feed == "simulator":
                    await self._run_simulator(pipeline, book)
                else:
                    from app.market.feeds.polygon import PolygonFeed

                    self.feed = feed = PolygonFeed(self.settings, pipeline, self.decoder, self.ctx.db)
                    self.state = "connecting"
                    try:
                        await feed.run(on_state=self._set_state)
                    finally:
                        await feed.rest.close()
                    if feed.state == "auth_failed":
                        self.state = "auth_failed"
                        await asyncio.Event().wait()  # stop retrying; reported in status
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.feed_error = f"{type(exc).__name__}: {exc}"[:300]
                self.state = "error"
                log.exception("market feed crashed; restarting", extra={"delay": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _drain(self, pipeline: Pipeline) -> None:
        try:
            await pipeline.flushed(timeout=3600)
        except TimeoutError:
            log.warning("market: buffered events could not be written within an hour; dropped",
                        extra={"events": pipeline.depth()})
        await pipeline.stop(drain_timeout=0)
        if self.pipeline is pipeline:
            self.pipeline = None

    def _resume_draining(self) -> Pipeline | None:
        task, self._drain_task = self._drain_task, None
        if task is None or task.done() or self.pipeline is None:
            return None
        task.cancel()  # cancelled inside flushed(): the pipeline itself keeps running
        return self.pipeline

    def _set_state(self, state: str) -> None:
        self.state = state

    # --- simulator -------------------------------------------------------------------------------
    async def _run_simulator(self, pipeline: Pipeline, book: QuoteBook) -> None:
        from app.market.feeds.simulator import Simulator, estimate_model, simulate_daily_bars

        db = self.ctx.db
        symbols = [r["symbol"] for r in await db.fetch(
            "SELECT a.symbol FROM assets a WHERE a.active AND EXISTS "
            "(SELECT 1 FROM daily_bars d WHERE d.symbol = a.symbol) ORDER BY a.symbol")]
        if not symbols:
            self.state = "idle"
            log.warning("simulator: no symbols with history; nothing to simulate")
            await asyncio.Event().wait()
        last_day = await db.fetchval(sql_file("market")["last_daily_bar_any"], symbols)
        rows = await db.fetch(sql_file("market")["recent_daily_closes"], symbols, last_day - timedelta(days=400))
        days = sorted({r["ts"] for r in rows})
        index = {d: i for i, d in enumerate(days)}
        col = {s: j for j, s in enumerate(symbols)}
        closes = np.full((len(days), len(symbols)), np.nan)
        for r in rows:
            closes[index[r["ts"]], col[r["symbol"]]] = float(r["close"])
        mean, chol = estimate_model(closes[-253:])
        # Fill the days between the stored history and yesterday with simulated daily bars.
        today = datetime.now(UTC).date()
        last_close = {}
        for j, sym in enumerate(symbols):
            colv = closes[:, j]
            ok = colv[~np.isnan(colv)]
            last_close[sym] = float(ok[-1]) if len(ok) else 100.0
        first_missing = last_day.astimezone(UTC).date() + timedelta(days=1)
        if first_missing < today:
            rng = np.random.default_rng(int(first_missing.strftime("%Y%m%d")))
            gap = simulate_daily_bars(symbols, last_close, first_missing, today - timedelta(days=1), mean, chol, rng)
            if gap:
                pipeline.submit_bars(gap, daily=True)
                await pipeline.flushed(timeout=60)
                log.info("simulator: filled the history gap with simulated daily bars",
                         extra={"from": first_missing.isoformat(), "rows": len(gap)})
                for row in gap:
                    last_close[row[0]] = float(row[5])
                await self._seed_book(book)
        prices = {}
        for sym in symbols:
            st = book.states.get(sym)
            prices[sym] = st.price if st is not None and st.price else last_close[sym]
        sim = Simulator(symbols, prices, mean, chol, self.settings.simulator_rate, pipeline.submit)
        self.feed = sim
        self.state = "running"
        await sim.run()

    # --- quote book seeding, publishing, retention ----------------------------------------------
    async def _seed_book(self, book: QuoteBook) -> None:
        rows = await self.ctx.db.fetch(sql_file("market")["seed_quote_book"])
        symbols = [r["symbol"] for r in rows]
        try:
            cached = await self.ctx.cache.get_many([snapshot_key(s) for s in symbols])
        except CacheUnavailable:
            cached = [None] * len(symbols)
        today = int(time.time() * 1000) // DAY_MS
        for row, raw in zip(rows, cached):
            sym = row["symbol"]
            snap = decode_snapshot(raw)
            bar_day = int(row["ts"].timestamp() * 1000) // DAY_MS
            if snap is not None and snap.day is not None and snap.price is not None and \
                    (datetime.fromisoformat(snap.day).toordinal() - 719163) == today:
                # a previous leader's state of today: continue it
                book.seed(sym, prev_close=snap.prev_close, price=float(snap.price), price_ts=snap.trade_ts,
                          day=today, open_=_f(snap.open), high=_f(snap.high), low=_f(snap.low), volume=snap.volume,
                          bid=_f(snap.bid), ask=_f(snap.ask))
            elif bar_day == today:
                book.seed(sym, prev_close=row["prev_close"], price=float(row["close"]),
                          price_ts=int(row["ts"].timestamp() * 1000), day=today, open_=float(row["open"]),
                          high=float(row["high"]), low=float(row["low"]), volume=int(row["volume"]))
            else:
                book.seed(sym, prev_close=row["close"], price=float(row["close"]),
                          price_ts=int(row["ts"].timestamp() * 1000))

    async def _publisher(self, book: QuoteBook) -> None:
        interval = self.settings.feed_flush_interval
        cache = self.ctx.cache
        enc = self.encoder
        while True:
            await asyncio.sleep(interval)
            snaps = book.take_dirty()
            feed = book.take_feed()
            try:
                if snaps:
                    await cache.set_many({snapshot_key(s.symbol): enc.encode(s) for s in snaps})
                if feed:
                    await cache.publish(FEED_CHANNEL, enc.encode(Published(t=int(time.time() * 1000), e=feed)))
                    self.published += 1
            except CacheUnavailable as exc:
                self.publish_errors += 1
                for s in snaps:  # try these again next time
                    book.dirty.add(s.symbol)
                self._err_log.warning("quote cache unavailable", error=str(exc))

    async def _retention(self) -> None:
        days = self.settings.trade_retention_days
        while True:
            try:
                dropped = await self.ctx.db.fetchval(sql_file("market")["drop_old_trades"], timedelta(days=days))
                if dropped:
                    log.info("trade retention: dropped chunks", extra={"chunks": dropped, "older_than_days": days})
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._err_log.warning("trade retention failed", error=str(exc))
            await asyncio.sleep(self.settings.trade_retention_interval)

    async def _measure_rates(self) -> None:
        last_r = last_w = 0
        last_p: Pipeline | None = None
        loop = asyncio.get_running_loop()
        while True:
            # event-loop lag: how late 20 sleeps of 50 ms wake up (a blocked loop delays every client)
            worst = 0.0
            for _ in range(20):
                t0 = loop.time()
                await asyncio.sleep(0.05)
                worst = max(worst, loop.time() - t0 - 0.05)
            self.loop_lag_ms = round(worst * 1000, 1)
            p = self.pipeline if self.is_leader else None
            if p is None:
                self._rates = {"events_per_second": 0.0, "written_per_second": 0.0}
                last_p = None
                continue
            if p is not last_p:
                last_r, last_w, last_p = p.received, p.written_trades + p.written_bars, p
                continue
            r, w = p.received, p.written_trades + p.written_bars
            self._rates = {"events_per_second": float(r - last_r), "written_per_second": float(w - last_w)}
            last_r, last_w = r, w

    def status(self) -> dict[str, Any]:
        p = self.pipeline  # while leading, or still writing what it buffered before losing the lead
        out: dict[str, Any] = {
            "feed": self.settings.market_feed, "state": self.state, "ingesting": self.is_leader,
            "draining": self._drain_task is not None and not self._drain_task.done(),
            "leader_since": self.leader_since if self.is_leader else None,
            **self._rates,
            "lag_ms": p.lag_ms if p else None, "queue_depth": p.depth() if p else 0,
            "dropped": p.dropped if p else 0,
            "rejected": self.decoder.rejected + (p.rejected if p else 0),
            "last_rejection": (p.last_rejection if p and p.last_rejection else None) or self.decoder.last_error, "published_batches": self.published,
            "publish_errors": self.publish_errors, "feed_error": self.feed_error,
            "loop_lag_ms": self.loop_lag_ms,
            **self.hub.status(),
        }
        if p:
            out["pipeline"] = p.status()
        if self.feed is not None and hasattr(self.feed, "status"):
            out["source"] = self.feed.status()
        return out


def _f(v: Any) -> float | None:
    return None if v is None else float(v)
