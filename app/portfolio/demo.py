"""The demo portfolio: a realistic, deterministic ledger built on the bundled real daily closes.
Pure: closes in, entries out (the CLI in app/portfolio/cli.py stores them).

The story (2015 → the last bundled day): 60,000 deposited at the start and 1,000 every month; a
core of SPY plus ten large caps bought at the close of their trade day (whole shares, 1.00 fee);
monthly savings go to SPY and, in turn, one of the stocks; each January a position above 15 % of
the portfolio is trimmed back to 12 %; profits taken in AAPL in 2020 and 2021;
PFE sold out in 2023 and META bought; quarterly dividends (approximate yields, noted as such) on the
dividend payers; a small yearly cash interest and an account fee. The bundled prices are
split-adjusted, so the demo records no splits (a split entry would double-count them).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_DOWN, Decimal

from app.portfolio.entries import Entry
from app.portfolio.ledger import TxType

CORE: dict[str, Decimal] = {  # target weights of the initial purchase
    "SPY": Decimal("0.30"), "AAPL": Decimal("0.09"), "AMZN": Decimal("0.08"), "GOOG": Decimal("0.08"),
    "JPM": Decimal("0.07"), "MA": Decimal("0.07"), "WMT": Decimal("0.06"), "XOM": Decimal("0.06"),
    "PFE": Decimal("0.05"), "SBUX": Decimal("0.05"), "BAC": Decimal("0.04"),
}
ROTATION = ["AAPL", "AMZN", "GOOG", "JPM", "MA", "WMT", "XOM", "SBUX", "BAC"]
YIELDS: dict[str, Decimal] = {  # approximate annual dividend yields, paid quarterly
    "SPY": Decimal("0.017"), "JPM": Decimal("0.028"), "WMT": Decimal("0.018"), "XOM": Decimal("0.045"),
    "PFE": Decimal("0.035"), "SBUX": Decimal("0.022"), "BAC": Decimal("0.022"), "AAPL": Decimal("0.006"),
    "MA": Decimal("0.006"),
}
FEE = Decimal("1.00")
START = date(2015, 1, 2)
CENT = Decimal("0.01")
DEMO_SYMBOLS = sorted(set(CORE) | set(ROTATION) | {"META"})


def _at(d: date, hour: int = 20) -> datetime:
    return datetime.combine(d, time(hour), UTC)  # 20:00 UTC: after the US close


def build_demo_ledger(closes: Mapping[str, list[tuple[date, Decimal]]], *, start: date = START,
                      currency: str = "USD") -> list[Entry]:
    by_day: dict[str, dict[date, Decimal]] = {s: dict(v) for s, v in closes.items()}
    days = sorted(by_day.get("SPY", {}))
    days = [d for d in days if d >= start]
    if not days:
        raise ValueError("no SPY closes after the start date: load the bundled history first")
    out: list[Entry] = []
    held: dict[str, Decimal] = {}
    cash = Decimal(0)

    def price(sym: str, d: date) -> Decimal | None:
        p = by_day.get(sym, {}).get(d)
        return p.quantize(CENT) if p is not None else None

    def add(kind: TxType, d: date, hour: int = 20, **kw: object) -> None:
        out.append(Entry(type=kind, symbol=kw.get("symbol"), quantity=kw.get("quantity"), price=kw.get("price"),  # type: ignore[arg-type]
                         amount=kw.get("amount"), fee=kw.get("fee", Decimal(0)), ratio=None,  # type: ignore[arg-type]
                         currency=currency, note=kw.get("note"), executed_at=_at(d, hour)))  # type: ignore[arg-type]

    def buy(sym: str, d: date, budget: Decimal, note: str | None = None) -> None:
        nonlocal cash
        p = price(sym, d)
        if p is None or p <= 0:
            return
        qty = ((min(budget, cash) - FEE) / p).quantize(Decimal(1), rounding=ROUND_DOWN)
        if qty <= 0:
            return
        add(TxType.BUY, d, symbol=sym, quantity=qty, price=p, fee=FEE, note=note)
        held[sym] = held.get(sym, Decimal(0)) + qty
        cash -= qty * p + FEE

    def sell(sym: str, d: date, fraction: Decimal, note: str) -> None:
        nonlocal cash
        p = price(sym, d)
        qty = (held.get(sym, Decimal(0)) * fraction).quantize(Decimal(1), rounding=ROUND_DOWN)
        if p is None or qty <= 0:
            return
        add(TxType.SELL, d, symbol=sym, quantity=qty, price=p, fee=FEE, note=note)
        held[sym] -= qty
        cash += qty * p - FEE

    first = days[0]
    add(TxType.DEPOSIT, first, hour=14, amount=Decimal(60000), note="initial funding")
    cash += 60000
    for sym, w in CORE.items():
        buy(sym, first, Decimal(60000) * w, note="initial allocation")
    month = (first.year, first.month)
    rotation = 0
    quarter_paid: set[tuple[int, int]] = set()
    for d in days[1:]:
        ym = (d.year, d.month)
        if ym != month:  # the first trading day of a month
            month = ym
            add(TxType.DEPOSIT, d, hour=14, amount=Decimal(1000), note="monthly savings")
            cash += 1000
            buy("SPY", d, Decimal(500), note="monthly savings")
            sym = ROTATION[rotation % len(ROTATION)]
            rotation += 1
            buy(sym, d, Decimal(450), note="monthly savings")
            q = (d.year, (d.month - 1) // 3)
            if d.month in (3, 6, 9, 12) and q not in quarter_paid:
                quarter_paid.add(q)
                for s, y in YIELDS.items():
                    p = price(s, d)
                    if held.get(s) and p is not None:
                        amount = (held[s] * p * y / 4).quantize(CENT)
                        if amount > 0:
                            add(TxType.DIVIDEND, d, hour=13, symbol=s, amount=amount, note="approximate yield")
                            cash += amount
            if d.month == 1 and d.year > first.year:  # yearly rebalance: trim any position above 15 %
                values = {sym: q * (price(sym, d) or Decimal(0)) for sym, q in held.items() if q > 0}
                total = sum(values.values(), Decimal(0)) + cash
                trimmed = set()
                for sym, v in sorted(values.items()):
                    if total > 0 and v / total > Decimal("0.15"):
                        sell(sym, d, (v - total * Decimal("0.12")) / v, note="yearly rebalance")
                        trimmed.add(sym)
                spare = cash - total * Decimal("0.03")  # keep ~3 % cash, put the rest in the smallest
                smallest = sorted((v, sym) for sym, v in values.items() if sym not in trimmed)[:3]
                for _, sym in smallest:
                    if spare > 100:
                        buy(sym, d, spare / len(smallest), note="yearly rebalance")
                interest = (cash * Decimal("0.01")).quantize(CENT)
                if interest > 0:
                    add(TxType.INTEREST, d, hour=12, amount=interest, note="cash interest")
                    cash += interest
                add(TxType.FEE, d, hour=12, amount=Decimal(25), note="yearly account fee")
                cash -= 25
        if d == _first_on_or_after(days, date(2020, 8, 3)):
            sell("AAPL", d, Decimal("0.30"), note="take profit")
        if d == _first_on_or_after(days, date(2021, 11, 1)):
            sell("AAPL", d, Decimal("0.20"), note="take profit")
        if d == _first_on_or_after(days, date(2023, 3, 1)):
            sell("PFE", d, Decimal(1), note="sold out")
            buy("META", d, Decimal(4000), note="new position")
        if d == _first_on_or_after(days, date(2022, 6, 1)):
            buy("AMZN", d, Decimal(3000), note="buy the dip")
    return out


def _first_on_or_after(days: list[date], target: date) -> date | None:
    for d in days:
        if d >= target:
            return d
    return None


def history_start(start: date = START) -> date:
    return start - timedelta(days=10)
