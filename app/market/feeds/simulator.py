"""The simulator feed: continues the real daily history with live trades, quotes and minute bars.

- Volatility and correlation come from the covariance of the last year of daily log returns of the
  symbols in storage; each tick draws one vector of correlated normal shocks (Cholesky factor of
  that covariance) scaled to the tick: one trading day's variance per 6.5 hours of wall-clock time.
- Trades arrive as a Poisson process at SIMULATOR_RATE per second (whole market); each trade is
  near the mid price, rounded to the tick size, with a random round-lot-ish size. Quotes surround
  the mid with a spread of a few basis points. Minute bars are built from the simulated trades and
  emitted when the minute closes (no trades, no bar: like Polygon).
- The days between the end of the stored history and yesterday are filled once with simulated
  daily bars (`source = 'simulated'`) from the same model, so that recent windows are populated.

The events are the same typed events the Polygon decoder produces; the same pipeline follows.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import numpy as np

from app.market.feeds.events import MinuteAgg, Quote, Trade

log = logging.getLogger("app.market.simulator")

TRADING_SECONDS_PER_DAY = 6.5 * 3600
UTC = timezone.utc


def estimate_model(closes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, Cholesky factor) of daily log returns from a (days × symbols) close matrix (NaN = no
    price yet: filled forward, then backward). Falls back to 2 % daily vol, 0.3 correlation."""
    n = closes.shape[1]
    fallback_cov = np.full((n, n), 0.3 * 0.02**2) + np.eye(n) * 0.7 * 0.02**2
    if closes.shape[0] < 30:
        return np.zeros(n), np.linalg.cholesky(fallback_cov)
    filled = closes.copy()
    for j in range(n):
        col = filled[:, j]
        mask = np.isnan(col)
        if mask.all():
            col[:] = 1.0
            continue
        idx = np.where(~mask, np.arange(len(col)), 0)
        np.maximum.accumulate(idx, out=idx)
        col[:] = col[idx]
        first = np.argmax(~mask)
        col[:first] = col[first]
    rets = np.diff(np.log(filled), axis=0)
    cov = np.cov(rets, rowvar=False)
    cov = np.atleast_2d(cov)
    # clamp per-asset vol into [0.5 %, 8 %] a day, keep the correlation, regularize
    vol = np.sqrt(np.clip(np.diag(cov), 1e-12, None))
    corr = cov / np.outer(vol, vol)
    vol = np.clip(vol, 0.005, 0.08)
    cov = corr * np.outer(vol, vol) + np.eye(n) * 1e-8
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        chol = np.linalg.cholesky(fallback_cov)
    mean = np.clip(rets.mean(axis=0), -0.001, 0.001)
    return mean, chol


def tick_size(price: float) -> float:
    return 0.01 if price >= 1 else 0.0001


def round_price(price: float) -> float:
    t = tick_size(price)
    return round(round(price / t) * t, 4)


def simulate_daily_bars(symbols: list[str], last_close: dict[str, float], start: date, end: date,
                        mean: np.ndarray, chol: np.ndarray, rng: np.random.Generator) -> list[tuple]:
    """Weekday daily bars from `start` to `end` inclusive, rows shaped like ingest.BAR_COLUMNS."""
    rows: list[tuple] = []
    price = np.array([last_close[s] for s in symbols], dtype=float)
    vol = np.sqrt(np.sum(chol**2, axis=1))
    day = start
    while day <= end:
        if day.weekday() < 5:
            shock = chol @ rng.standard_normal(len(symbols))
            close = price * np.exp(mean + shock)
            gap = price * np.exp(rng.standard_normal(len(symbols)) * vol * 0.2)
            hi = np.maximum(gap, close) * np.exp(np.abs(rng.standard_normal(len(symbols))) * vol * 0.4)
            lo = np.minimum(gap, close) * np.exp(-np.abs(rng.standard_normal(len(symbols))) * vol * 0.4)
            ts = datetime(day.year, day.month, day.day, tzinfo=UTC)
            for i, s in enumerate(symbols):
                o, h, l, c = (round_price(float(x)) for x in (gap[i], hi[i], lo[i], close[i]))
                h, l = max(h, o, c), min(l, o, c)
                volume = int(rng.lognormal(15.0, 0.5))
                rows.append((s, ts, Decimal(repr(o)), Decimal(repr(h)), Decimal(repr(l)), Decimal(repr(c)),
                             volume, None, None, "simulated"))
            price = close
        day += timedelta(days=1)
    return rows


class _MinuteBar:
    __slots__ = ("o", "h", "l", "c", "v", "n", "pv")

    def __init__(self, p: float, s: int) -> None:
        self.o = self.h = self.l = self.c = p
        self.v, self.n, self.pv = s, 1, p * s


class Simulator:
    """Generates events for `symbols` starting from `prices`; `emit(events)` is the pipeline."""

    def __init__(self, symbols: list[str], prices: dict[str, float], mean: np.ndarray, chol: np.ndarray,
                 rate: float, emit, *, seed: int | None = None, quote_ratio: float = 2.0) -> None:
        self.symbols = symbols
        self.emit = emit
        self.rate = rate
        self.quote_ratio = quote_ratio
        self.rng = np.random.default_rng(seed)
        self.log_price = np.log(np.array([prices[s] for s in symbols], dtype=float))
        self.mean = mean
        self.chol = chol
        self.vol = np.sqrt(np.sum(chol**2, axis=1))
        self.tick = min(0.1, max(0.005, 1.0 / rate))
        self.minute: int | None = None
        self.bars: dict[str, _MinuteBar] = {}
        self.seq = int(time.time() * 1000) * 100  # trade ids unique across leaders and restarts
        self.events = 0
        self.running = False

    def step(self, now_ms: int, dt: float) -> list:
        """Advance the model by dt seconds and return the events of this tick."""
        n = len(self.symbols)
        scale = math.sqrt(dt / TRADING_SECONDS_PER_DAY)
        shock = self.chol @ self.rng.standard_normal(n)
        self.log_price += shock * scale
        mids = np.exp(self.log_price)
        events: list = []
        minute = now_ms // 60_000
        if self.minute is not None and minute != self.minute:
            events.extend(self._close_minute())
        self.minute = minute
        n_trades = self.rng.poisson(self.rate * dt)
        if n_trades:
            who = self.rng.integers(0, n, n_trades)
            noise = self.rng.standard_normal(n_trades)
            sizes = np.maximum(1, (self.rng.pareto(1.5, n_trades) * 100).astype(int))
            for k in range(n_trades):
                i = int(who[k])
                sym = self.symbols[i]
                mid = float(mids[i])
                p = round_price(mid * (1 + noise[k] * 0.0002))
                s = int(min(sizes[k], 500_000))
                self.seq += 1
                events.append(Trade(sym=sym, p=p, s=s, t=now_ms, x=4, i=str(self.seq), z=1 if i % 2 else 3,
                                    q=self.seq))
                bar = self.bars.get(sym)
                if bar is None:
                    self.bars[sym] = _MinuteBar(p, s)
                else:
                    bar.h = max(bar.h, p)
                    bar.l = min(bar.l, p)
                    bar.c = p
                    bar.v += s
                    bar.n += 1
                    bar.pv += p * s
        n_quotes = self.rng.poisson(self.rate * self.quote_ratio * dt)
        if n_quotes:
            for i in self.rng.integers(0, n, n_quotes):
                i = int(i)
                mid = float(mids[i])
                half = max(tick_size(mid), mid * 0.0002)
                bid, ask = round_price(mid - half), round_price(mid + half)
                if ask <= bid:
                    ask = round(bid + tick_size(mid), 4)
                events.append(Quote(sym=self.symbols[i], bp=bid, ap=ask, t=now_ms,
                                    bs=int(self.rng.integers(1, 20)), as_=int(self.rng.integers(1, 20)), bx=4, ax=4))
        self.events += len(events)
        return events

    def _close_minute(self) -> list:
        out = []
        start = self.minute * 60_000  # type: ignore[operator]
        for sym, b in self.bars.items():
            out.append(MinuteAgg(sym=sym, o=b.o, h=b.h, l=b.l, c=b.c, v=float(b.v), s=start, e=start + 60_000,
                                 vw=round(b.pv / b.v, 4) if b.v else None, n=b.n))
        self.bars = {}
        return out

    async def run(self) -> None:
        self.running = True
        last = time.monotonic()
        try:
            while True:
                await asyncio.sleep(self.tick)
                now = time.monotonic()
                dt, last = now - last, now
                events = self.step(int(time.time() * 1000), min(dt, 1.0))
                if events:
                    self.emit(events)
        finally:
            self.running = False
