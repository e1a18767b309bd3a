"""The demo ledger is deterministic, valid, never needs auto-funding and keeps a small cash buffer."""

from __future__ import annotations

import csv
from datetime import date
from decimal import Decimal

from app.config import PROJECT_ROOT
from app.portfolio.demo import DEMO_SYMBOLS, build_demo_ledger
from app.portfolio.ledger import replay


def bundled_closes() -> dict[str, list[tuple[date, Decimal]]]:
    closes: dict[str, list[tuple[date, Decimal]]] = {}
    for name in ("stock_prices.csv", "spy_prices.csv"):
        with open(PROJECT_ROOT / "app" / "market" / "data" / name) as f:
            for row in csv.DictReader(f):
                day = date.fromisoformat(row["date"])
                for sym, v in row.items():
                    if sym in DEMO_SYMBOLS and v:
                        closes.setdefault(sym, []).append((day, Decimal(v)))
    return closes


def test_demo_ledger() -> None:
    closes = bundled_closes()
    entries = build_demo_ledger(closes)
    assert [e.canonical() for e in entries] == [e.canonical() for e in build_demo_ledger(closes)]
    state = replay([e.to_tx(seq=k) for k, e in enumerate(entries)], "fifo")
    assert state.auto_funded == 0 and state.realized_pnl > 0 and state.dividends > 0
    assert len(state.open_positions()) >= 10
    value = sum((p.quantity * closes[p.symbol][-1][1] for p in state.open_positions()), state.cash)
    assert Decimal(0) < state.cash < value / 10 and value > 2 * state.net_contributions
    assert all(e.price == e.price.quantize(Decimal("0.01")) for e in entries if e.price is not None)
