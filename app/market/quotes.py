"""The quote book: latest trade, quote and day statistics per symbol, kept in memory by the
ingesting replica, written to the cache (`Snapshot`, see snapshot.py) and published for the
WebSocket fan-out on every flush. The per-event work is plain float arithmetic; Decimals are made
only for changed symbols at flush time.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec
from msgspec import Raw

from app.market.feeds.events import MinuteAgg, Quote, Trade
from app.market.snapshot import Snapshot

DAY_MS = 86_400_000


def dec(value: float | None) -> Decimal | None:
    return None if value is None else Decimal(repr(value))


def day_str(day_number: int) -> str:
    import datetime as _dt

    return (_dt.date(1970, 1, 1) + _dt.timedelta(days=day_number)).isoformat()


class _State:
    __slots__ = ("symbol", "price", "size", "trade_ts", "bid", "ask", "bid_size", "ask_size", "quote_ts",
                 "day", "open", "high", "low", "volume", "prev_close", "updated")

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.price: float | None = None
        self.size: int | None = None
        self.trade_ts: int | None = None
        self.bid: float | None = None
        self.ask: float | None = None
        self.bid_size: int | None = None
        self.ask_size: int | None = None
        self.quote_ts: int | None = None
        self.day = -1  # days since the epoch of the day statistics
        self.open: float | None = None
        self.high: float | None = None
        self.low: float | None = None
        self.volume = 0
        self.prev_close: Decimal | None = None  # previous day's close
        self.updated = 0


# What the WebSocket clients receive (prices as decimal strings, times in ms since the epoch).
class FeedTrade(msgspec.Struct, tag_field="type", tag="trade"):
    symbol: str
    price: str
    size: int
    ts: int


class FeedQuote(msgspec.Struct, tag_field="type", tag="quote"):
    symbol: str
    bid: str | None
    ask: str | None
    bid_size: int | None
    ask_size: int | None
    ts: int
    price: str | None = None
    change: str | None = None
    change_pct: str | None = None
    volume: int = 0


class FeedBar(msgspec.Struct, tag_field="type", tag="bar"):
    symbol: str
    ts: int
    open: str
    high: str
    low: str
    close: str
    volume: int


_PRICE_STR: dict[float, bytes] = {}
_TRADE_FMT = b'{"type":"trade","symbol":%s,"price":"%s","size":%d,"ts":%d}'
_SYMBOLS_JSON: dict[str, bytes] = {}


def _json_str(s: str) -> bytes:
    b = _SYMBOLS_JSON.get(s)
    if b is None:
        if len(_SYMBOLS_JSON) > 50_000:
            _SYMBOLS_JSON.clear()
        b = _SYMBOLS_JSON[s] = msgspec.json.encode(s)
    return b


class QuoteBook:
    def __init__(self) -> None:
        self.states: dict[str, _State] = {}
        self.dirty: set[str] = set()
        # Events since the last publish, per symbol: every trade and bar, the latest quote.
        self.out_trades: dict[str, list[Trade]] = {}
        self.out_quotes: dict[str, Quote] = {}
        self.out_bars: dict[str, list[MinuteAgg]] = {}
        self.forward_trades = True

    # --- seeding from storage ----------------------------------------------------------------
    def seed(self, symbol: str, *, prev_close: Decimal | None, price: float | None = None,
             price_ts: int | None = None, day: int | None = None, open_: float | None = None,
             high: float | None = None, low: float | None = None, volume: int = 0,
             bid: float | None = None, ask: float | None = None) -> None:
        """Start from stored state: the last price, and today's statistics when `day` is today."""
        st = self.states.get(symbol) or self._new(symbol)
        st.prev_close = prev_close
        st.price, st.trade_ts = price, price_ts
        st.bid, st.ask = bid, ask
        if day is not None:
            st.day = day
            st.open, st.high, st.low, st.volume = open_, high, low, volume
        st.updated = price_ts or 0
        self.dirty.add(symbol)

    def _new(self, symbol: str) -> _State:
        st = _State(symbol)
        self.states[symbol] = st
        return st

    def _roll(self, st: _State, day: int) -> None:
        if day < st.day:
            return
        if st.day >= 0 and st.price is not None:
            st.prev_close = Decimal(repr(st.price))
        st.day = day
        st.open = st.high = st.low = None
        st.volume = 0

    # --- events (the hot path) -----------------------------------------------------------------
    def on_trade(self, ev: Trade) -> None:
        st = self.states.get(ev.sym)
        if st is None:
            st = self._new(ev.sym)
        day = ev.t // DAY_MS
        if day != st.day:
            if day < st.day:  # a late trade from an earlier day: stored, not applied to today
                return
            self._roll(st, day)
        p = ev.p
        if st.open is None:
            st.open = st.high = st.low = p
        elif p > st.high:  # type: ignore[operator]
            st.high = p
        elif p < st.low:  # type: ignore[operator]
            st.low = p
        st.volume += ev.s
        if st.trade_ts is None or ev.t >= st.trade_ts:
            st.price = p
            st.size = ev.s
            st.trade_ts = ev.t
        st.updated = ev.t
        self.dirty.add(ev.sym)
        if self.forward_trades:
            lst = self.out_trades.get(ev.sym)
            if lst is None:
                self.out_trades[ev.sym] = [ev]
            else:
                lst.append(ev)

    def on_quote(self, ev: Quote) -> None:
        st = self.states.get(ev.sym)
        if st is None:
            st = self._new(ev.sym)
        if st.quote_ts is None or ev.t >= st.quote_ts:
            st.bid, st.ask, st.bid_size, st.ask_size, st.quote_ts = ev.bp, ev.ap, ev.bs, ev.as_, ev.t
            st.updated = max(st.updated, ev.t)
            self.dirty.add(ev.sym)
            self.out_quotes[ev.sym] = ev

    def on_bar(self, ev: MinuteAgg) -> None:
        st = self.states.get(ev.sym)
        if st is None:
            st = self._new(ev.sym)
        day = ev.s // DAY_MS
        if day > st.day:
            self._roll(st, day)
        if day == st.day:
            # Polygon's AM carries today's official open and accumulated volume: trust them.
            if ev.op is not None:
                st.open = ev.op
            if st.high is None or ev.h > st.high:
                st.high = ev.h
            if st.low is None or ev.l < st.low:
                st.low = ev.l
            if st.open is None:
                st.open = ev.o
            if ev.av is not None:
                st.volume = max(st.volume, int(ev.av))
            if st.price is None:
                st.price = ev.c
                st.trade_ts = ev.e or ev.s + 60_000
        self.dirty.add(ev.sym)
        self.out_bars.setdefault(ev.sym, []).append(ev)

    # --- flush ---------------------------------------------------------------------------------
    def snapshot(self, symbol: str) -> Snapshot:
        st = self.states[symbol]
        return Snapshot(symbol=symbol, price=dec(st.price), size=st.size, trade_ts=st.trade_ts, bid=dec(st.bid),
                        ask=dec(st.ask), bid_size=st.bid_size, ask_size=st.ask_size, quote_ts=st.quote_ts,
                        day=day_str(st.day) if st.day >= 0 else None, open=dec(st.open), high=dec(st.high),
                        low=dec(st.low), volume=st.volume, prev_close=st.prev_close, updated=st.updated)

    def take_dirty(self) -> list[Snapshot]:
        dirty, self.dirty = self.dirty, set()
        return [self.snapshot(s) for s in dirty]

    def take_feed(self) -> dict[str, dict[str, list]]:
        """Events since the last call as feed structs grouped by symbol and channel."""
        out: dict[str, dict[str, list]] = {}
        trades, self.out_trades = self.out_trades, {}
        quotes, self.out_quotes = self.out_quotes, {}
        bars, self.out_bars = self.out_bars, {}
        strs = _PRICE_STR
        if len(strs) > 100_000:
            strs.clear()
        for sym, evs in trades.items():
            # Trades are the bulk: their JSON is formatted directly (same shape as FeedTrade).
            jsym = _json_str(sym)
            lst = []
            append = lst.append
            for e in evs:
                p = e.p
                ps = strs.get(p)
                if ps is None:
                    ps = strs[p] = repr(p).encode()
                append(Raw(_TRADE_FMT % (jsym, ps, e.s, e.t)))
            out[sym] = {"trades": lst}
        for sym, q in quotes.items():
            st = self.states[sym]
            change = change_pct = None
            if st.price is not None and st.prev_close:
                price = Decimal(repr(st.price))
                change = str(price - st.prev_close)
                change_pct = str(((price - st.prev_close) / st.prev_close * 100).quantize(Decimal("0.0001")))
            out.setdefault(sym, {})["quotes"] = [FeedQuote(sym, repr(q.bp), repr(q.ap), q.bs, q.as_, q.t,
                                                           None if st.price is None else repr(st.price),
                                                           change, change_pct, st.volume)]
        for sym, evs in bars.items():
            out.setdefault(sym, {})["bars"] = [FeedBar(sym, e.s, repr(e.o), repr(e.h), repr(e.l), repr(e.c), int(e.v))
                                               for e in evs]
        return out
