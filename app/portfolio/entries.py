"""Validation of ledger entries from any source (JSON body, CSV or JSON import): every problem is
reported with the field it concerns. Pure: the caller supplies "now", the portfolio's currency and the
known symbols."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from app.portfolio.ledger import AMOUNT_TYPES, SYMBOL_REQUIRED, TRADE_TYPES, Tx, TxType

SYMBOL_RE = re.compile(r"^[A-Z0-9.:-]{1,24}$")
CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
MAX_PLACES = 10
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
FUTURE_SKEW = timedelta(seconds=60)  # clocks differ a little; more than this ahead is "the future"
MAX_NOTE = 500
LIMITS: dict[str, tuple[Decimal, Decimal, bool]] = {  # field: (min, max, min allowed)
    "quantity": (Decimal(0), Decimal("1e12"), False),
    "price": (Decimal(0), Decimal("1e9"), True),
    "amount": (Decimal(0), Decimal("1e13"), False),
    "fee": (Decimal(0), Decimal("1e9"), True),
    "ratio": (Decimal("0.000001"), Decimal("1000000"), True),
}
APPLIES: dict[TxType, set[str]] = {
    TxType.BUY: {"symbol", "quantity", "price", "fee"},
    TxType.SELL: {"symbol", "quantity", "price", "fee"},
    TxType.DEPOSIT: {"amount", "fee"},
    TxType.WITHDRAWAL: {"amount", "fee"},
    TxType.DIVIDEND: {"symbol", "amount", "fee"},
    TxType.INTEREST: {"symbol", "amount", "fee"},
    TxType.FEE: {"symbol", "amount"},
    TxType.SPLIT: {"symbol", "ratio"},
}


@dataclass(slots=True)
class Entry:
    """A validated entry, ready to be stored."""

    type: TxType
    symbol: str | None
    quantity: Decimal | None
    price: Decimal | None
    amount: Decimal | None
    fee: Decimal
    ratio: Decimal | None
    currency: str
    note: str | None
    executed_at: datetime

    def to_tx(self, seq: int, id: Any = None) -> Tx:
        return Tx(type=self.type, executed_at=self.executed_at, seq=seq, symbol=self.symbol, quantity=self.quantity,
                  price=self.price, amount=self.amount, fee=self.fee, ratio=self.ratio, id=id)

    def canonical(self) -> dict[str, Any]:
        return {"type": self.type.value, "symbol": self.symbol, "quantity": _s(self.quantity), "price": _s(self.price),
                "amount": _s(self.amount), "fee": _s(self.fee), "ratio": _s(self.ratio), "currency": self.currency,
                "note": self.note, "executed_at": self.executed_at.isoformat()}


def _s(d: Decimal | None) -> str | None:
    return None if d is None else str(d.normalize()) if d else "0"


FieldErrors = list[tuple[str, str]]


def check_number(name: str, value: Any, errors: FieldErrors) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (Decimal, int, str)):
        errors.append((name, "must be a decimal number"))
        return None
    try:
        d = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except ArithmeticError:
        errors.append((name, f"{value!r} is not a number"))
        return None
    if not d.is_finite():
        errors.append((name, "must be a finite number (not NaN or infinity)"))
        return None
    lo, hi, lo_ok = LIMITS[name]
    if d < lo or (d == lo and not lo_ok):
        errors.append((name, f"must be {'at least' if lo_ok else 'greater than'} {lo}"
                             + (" (a sale is a sell entry with a positive quantity)" if name == "quantity" else "")))
        return None
    if d > hi:
        errors.append((name, f"must be at most {hi}"))
        return None
    if d.normalize().as_tuple().exponent < -MAX_PLACES:  # type: ignore[operator]
        errors.append((name, f"at most {MAX_PLACES} decimal places"))
        return None
    return d + 0  # a fresh Decimal, -0 → 0


def check_entry(raw: dict[str, Any], *, base_currency: str, now: datetime) -> tuple[Entry | None, FieldErrors]:
    """`raw` has the fields of TransactionIn (values already Decimal/datetime, or strings from a CSV)."""
    errors: FieldErrors = []
    kind_raw = raw.get("type")
    try:
        kind = TxType(str(kind_raw).strip().lower()) if kind_raw is not None else None
    except ValueError:
        kind = None
        errors.append(("type", f"unknown type {kind_raw!r}; one of {', '.join(t.value for t in TxType)}"))
    else:
        if kind is None:
            errors.append(("type", "is required"))
    values = {name: check_number(name, raw.get(name), errors) for name in LIMITS}
    symbol = raw.get("symbol")
    if symbol is not None:
        symbol = str(symbol).strip().upper() or None
        if symbol is not None and not SYMBOL_RE.match(symbol):
            errors.append(("symbol", "must be 1–24 characters of A–Z, 0–9, '.', ':' or '-'"))
    currency = raw.get("currency")
    currency = str(currency).strip().upper() if currency not in (None, "") else base_currency
    if not CURRENCY_RE.match(currency):
        errors.append(("currency", "must be a three-letter ISO 4217 code"))
    elif currency != base_currency:
        errors.append(("currency", f"must be the portfolio's currency {base_currency} (no FX conversion)"))
    note = raw.get("note")
    if note is not None:
        note = str(note).strip()  # stored stripped, so that export → import gives the same note
        if len(note) > MAX_NOTE:
            errors.append(("note", f"at most {MAX_NOTE} characters"))
        elif "\x00" in note:  # PostgreSQL text cannot hold NUL
            errors.append(("note", "must not contain NUL characters"))
        note = note or None
    executed_at = raw.get("executed_at")
    if executed_at is None:
        executed_at = now
    elif not isinstance(executed_at, datetime):
        errors.append(("executed_at", "must be an ISO 8601 date or date-time"))
        executed_at = None
    if executed_at is not None:
        if executed_at.tzinfo is None:
            executed_at = executed_at.replace(tzinfo=UTC)
        try:
            executed_at = executed_at.astimezone(UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00+01:00 is before year 1 in UTC
            errors.append(("executed_at", f"must be after {EARLIEST.date()} and not in the future"))
            executed_at = None
    if executed_at is not None:
        if executed_at > now + FUTURE_SKEW:
            errors.append(("executed_at", "may not be in the future"))
        elif executed_at < EARLIEST:
            errors.append(("executed_at", f"must be after {EARLIEST.date()}"))
    if kind is not None:
        applies = APPLIES[kind]
        for name in ("symbol", "quantity", "price", "amount", "ratio"):
            given = symbol if name == "symbol" else values[name]
            if given is not None and name not in applies:
                errors.append((name, f"does not apply to a {kind.value}"))
        if values["fee"] and "fee" not in applies:
            errors.append(("fee", f"does not apply to a {kind.value} (use amount)"))
        required = (["symbol"] if kind in SYMBOL_REQUIRED else []) + \
            (["quantity", "price"] if kind in TRADE_TYPES else []) + \
            (["amount"] if kind in AMOUNT_TYPES else []) + (["ratio"] if kind is TxType.SPLIT else [])
        for name in required:
            given = symbol if name == "symbol" else values[name]
            if given is None and not any(f == name for f, _ in errors):
                errors.append((name, f"is required for a {kind.value}"))
    if errors or kind is None or executed_at is None:
        return None, errors
    return Entry(type=kind, symbol=symbol, quantity=values["quantity"], price=values["price"],
                 amount=values["amount"], fee=values["fee"] or Decimal(0), ratio=values["ratio"], currency=currency,
                 note=note, executed_at=executed_at), errors


def check_symbols(entries: list[Entry], asset_currency: dict[str, str], base_currency: str) -> dict[int, FieldErrors]:
    """Unknown symbols, and assets quoted in another currency, by index of the entry."""
    out: dict[int, FieldErrors] = {}
    for k, e in enumerate(entries):
        if e.symbol is None:
            continue
        cur = asset_currency.get(e.symbol)
        if cur is None:
            out[k] = [("symbol", f"unknown symbol {e.symbol}")]
        elif cur != base_currency and e.type in (TxType.BUY, TxType.SELL):
            out[k] = [("symbol", f"{e.symbol} is quoted in {cur}, the portfolio in {base_currency} (no FX conversion)")]
    return out
