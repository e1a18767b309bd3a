"""Pure market modules: the frame decoder, the quote book, the simulator's model, the bundled CSVs."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from pathlib import Path

import numpy as np
from hypothesis import given, settings, strategies as st

from app.market.feeds.events import FrameDecoder, MinuteAgg, Quote, SecondAgg, Status, Trade
from app.market.feeds.simulator import Simulator, estimate_model, round_price, simulate_daily_bars
from app.market.history import parse_bundled
from app.market.quotes import DAY_MS, QuoteBook

T0 = 1_733_300_000_000  # a time in 2024 (ms)


def trade(sym="AAPL", p=10.0, s=100, t=T0, **kw) -> dict:
    return {"ev": "T", "sym": sym, "p": p, "s": s, "t": t, "i": "1", "x": 4, **kw}


def test_decoder_types_every_polygon_event():
    d = FrameDecoder()
    frame = [trade(c=[12, 37], q=5, z=3, trfi=1),
             {"ev": "Q", "sym": "AAPL", "bx": 4, "bp": 9.99, "bs": 2, "ax": 7, "ap": 10.01, "as": 3, "c": 0, "t": T0,
              "q": 6, "z": 3, "i": [1]},
             {"ev": "AM", "sym": "AAPL", "v": 10, "av": 100, "op": 9.5, "vw": 10.0, "o": 9.9, "c": 10.1, "h": 10.2,
              "l": 9.8, "a": 9.9, "z": 5, "s": T0, "e": T0 + 60_000},
             {"ev": "A", "sym": "AAPL", "v": 1, "o": 10, "c": 10, "h": 10, "l": 10, "s": T0, "e": T0 + 1000},
             {"ev": "status", "status": "success", "message": "subscribed to: T.AAPL"}]
    events = d.decode(json.dumps(frame).encode())
    assert [type(e) for e in events] == [Trade, Quote, MinuteAgg, SecondAgg, Status]
    assert events[0].q == 5 and events[1].as_ == 3 and events[2].av == 100
    assert d.rejected == 0


def test_decoder_rejects_and_counts_malformed_events_keeping_the_good_ones():
    d = FrameDecoder()
    good = trade()
    bad = [trade(p=-1), trade(p=0), trade(s=10**12), trade(t=5), {"ev": "ZZ"}, {"ev": "T", "sym": "X"},
           trade(sym=""), trade(p="12"), {**trade(), "p": None}]
    events = d.decode(json.dumps([good, *bad, good]).encode())
    assert len(events) == 2 and d.rejected == len(bad)
    assert d.decode(b"[{\"ev\":\"T\",\"sym\":\"A\",\"p\":NaN,\"s\":1,\"t\":1733300000000}]") == []
    assert d.decode(b"not json") == [] and d.decode(b'{"ev":"T"}') == [] and d.decode(b"") == []
    assert d.rejected == len(bad) + 4 and d.last_error


def test_pipeline_rejects_crossed_quotes_and_inconsistent_bars():
    from app.market.ingest import Pipeline

    d = FrameDecoder()
    p = Pipeline(None, queue_size=10, batch_size=5, flush_interval=1, book=QuoteBook())  # type: ignore[arg-type]
    events = d.decode(json.dumps([
        {"ev": "Q", "sym": "A", "bp": 20.0, "ap": 10.0, "t": T0},  # crossed by 2x
        {"ev": "AM", "sym": "A", "o": 10, "h": 9, "l": 8, "c": 8.5, "v": 1, "s": T0},  # open above high
        {"ev": "Q", "sym": "A", "bp": 9.99, "ap": 10.01, "t": T0},
        {"ev": "AM", "sym": "A", "o": 10, "h": 11, "l": 8, "c": 8.5, "v": 1, "s": T0}]).encode())
    p.submit(events)
    assert p.rejected == 2 and "inconsistent bar" in p.last_rejection
    assert len(p.bars) == 1 and p.book.states["A"].bid == 9.99


def test_quote_book_day_statistics_and_roll_over():
    book = QuoteBook()
    book.seed("AAPL", prev_close=Decimal("100"), price=100.0, price_ts=T0 - DAY_MS)
    for p, s in ((101.0, 10), (99.5, 5), (102.25, 1), (100.5, 4)):
        book.on_trade(Trade(sym="AAPL", p=p, s=s, t=T0))
    book.on_quote(Quote(sym="AAPL", bp=100.4, ap=100.6, t=T0, bs=1, as_=2))
    snap = book.snapshot("AAPL")
    assert (snap.open, snap.high, snap.low, snap.price) == (Decimal("101.0"), Decimal("102.25"), Decimal("99.5"),
                                                            Decimal("100.5"))
    assert snap.volume == 20 and snap.prev_close == Decimal("100") and snap.change == Decimal("0.5")
    assert snap.change_pct == Decimal("0.5000") and snap.bid == Decimal("100.4")
    # a late trade from an earlier time of the same day does not move the last price
    book.on_trade(Trade(sym="AAPL", p=90.0, s=1, t=T0 - 1000))
    assert book.snapshot("AAPL").price == Decimal("100.5") and book.snapshot("AAPL").low == Decimal("90.0")
    # next day: yesterday's last price becomes the previous close
    book.on_trade(Trade(sym="AAPL", p=103.0, s=7, t=T0 + DAY_MS))
    snap = book.snapshot("AAPL")
    assert snap.prev_close == Decimal("100.5") and snap.open == Decimal("103.0") and snap.volume == 7
    feed = book.take_feed()
    assert len(feed["AAPL"]["trades"]) == 6 and len(feed["AAPL"]["quotes"]) == 1
    assert book.take_feed() == {}
    assert [s.symbol for s in book.take_dirty()] == ["AAPL"] and book.take_dirty() == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.01, 10_000), st.integers(0, 10_000)), min_size=1, max_size=50))
def test_quote_book_statistics_hold_for_any_trades(trades):
    book = QuoteBook()
    for k, (p, s) in enumerate(trades):
        book.on_trade(Trade(sym="X", p=p, s=s, t=T0 + k))
    snap = book.snapshot("X")
    prices = [Decimal(repr(p)) for p, _ in trades]
    assert snap.high == max(prices) and snap.low == min(prices) and snap.open == prices[0]
    assert snap.price == prices[-1] and snap.volume == sum(s for _, s in trades)
    assert snap.low <= snap.price <= snap.high


def test_simulator_model_recovers_volatility_and_correlation():
    rng = np.random.default_rng(1)
    cov = np.array([[0.02**2, 0.8 * 0.02 * 0.01], [0.8 * 0.02 * 0.01, 0.01**2]])
    rets = rng.multivariate_normal([0, 0], cov, size=2000)
    closes = 100 * np.exp(np.cumsum(rets, axis=0))
    closes[:100, 1] = np.nan  # a stock that started trading later
    _, chol = estimate_model(closes)
    est = chol @ chol.T
    assert abs(np.sqrt(est[0, 0]) - 0.02) < 0.002 and abs(np.sqrt(est[1, 1]) - 0.01) < 0.001
    assert abs(est[0, 1] / np.sqrt(est[0, 0] * est[1, 1]) - 0.8) < 0.05
    # live ticks: correlated, scaled to the tick length
    sim = Simulator(["A", "B"], {"A": 100.0, "B": 50.0}, np.zeros(2), chol, rate=1e-9, emit=None, seed=3)
    moves = []
    for k in range(3000):
        before = sim.log_price.copy()
        sim.step(T0 + k, 1.0)
        moves.append(sim.log_price - before)
    moves = np.array(moves)
    per_day = moves.std(axis=0) * np.sqrt(6.5 * 3600)
    assert np.allclose(per_day, [0.02, 0.01], rtol=0.1)
    assert np.corrcoef(moves.T)[0, 1] > 0.7


def test_simulator_events_and_minute_bars():
    _, chol = estimate_model(np.full((10, 2), np.nan))  # too little data: the fallback model
    sim = Simulator(["A", "B"], {"A": 100.0, "B": 0.5}, np.zeros(2), chol, rate=2000, emit=None, seed=4)
    minute = (T0 // 60_000) * 60_000
    events = []
    for k in range(20):
        events += sim.step(minute + k * 100, 0.1)
    trades = [e for e in events if type(e) is Trade]
    quotes = [e for e in events if type(e) is Quote]
    assert 3600 < len(trades) < 4400 and len(quotes) > len(trades)  # 2,000 a second for 2 s
    assert all(q.bp < q.ap for q in quotes) and all(t.p > 0 and t.s >= 1 for t in trades)
    assert all(round(t.p, 2) == t.p for t in trades if t.sym == "A")
    bars = [e for e in sim.step(minute + 60_000, 0.1) if type(e) is MinuteAgg]
    assert {b.sym for b in bars} == {"A", "B"}
    a_trades = [t for t in trades if t.sym == "A"]
    bar = next(b for b in bars if b.sym == "A")
    assert bar.s == minute and bar.o == a_trades[0].p and bar.c == a_trades[-1].p
    assert bar.h == max(t.p for t in a_trades) and bar.v == sum(t.s for t in a_trades)


def test_simulated_daily_bars_are_valid_weekday_bars():
    _, chol = estimate_model(np.full((10, 3), np.nan))
    rows = simulate_daily_bars(["A", "B", "C"], {"A": 10.0, "B": 200.0, "C": 0.8}, date(2024, 12, 2),
                               date(2024, 12, 15), np.zeros(3), chol, np.random.default_rng(0))
    assert len(rows) == 10 * 3 and all(r[1].weekday() < 5 for r in rows)
    for sym, _ts, o, h, l, c, v, *_rest, source in rows:
        assert l <= min(o, c) and h >= max(o, c) and l > 0 and v > 0 and source == "simulated"


def test_round_price_uses_the_tick_size():
    assert round_price(123.456) == 123.46 and round_price(0.123456) == 0.1235


def test_parse_bundled_skips_empty_cells(tmp_path: Path):
    f = tmp_path / "p.csv"
    f.write_text("date,AAA,BBB\n2024-01-02,1.23456789,\n2024-01-03,,5\n2024-01-04,-1,nan\n")
    rows, checksum = parse_bundled((f,))
    assert rows == [("AAA", "2024-01-02", "1.234568"), ("BBB", "2024-01-03", "5.000000")]
    assert len(checksum) == 64


def test_minute_bars_reach_the_feed_and_polygon_day_fields_are_trusted():
    book = QuoteBook()
    book.seed("AAPL", prev_close=Decimal("100"), price=100.0, price_ts=T0 - DAY_MS)
    book.on_bar(MinuteAgg(sym="AAPL", o=101.0, h=102.0, l=100.5, c=101.5, v=1200, s=T0, e=T0 + 60_000, av=50_000,
                          op=100.8))
    snap = book.snapshot("AAPL")
    assert snap.open == Decimal("100.8") and snap.volume == 50_000 and snap.high == Decimal("102.0")
    bars = book.take_feed()["AAPL"]["bars"]
    assert len(bars) == 1 and json.loads(__import__("msgspec").json.encode(bars[0])) == {
        "type": "bar", "symbol": "AAPL", "ts": T0, "open": "101.0", "high": "102.0", "low": "100.5",
        "close": "101.5", "volume": 1200}
