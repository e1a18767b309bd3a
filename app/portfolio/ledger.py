"""The transaction ledger, pure: lots, cash, realized P&L, FIFO or average cost, splits.

Nothing here does I/O or imports the app. Every amount is a `Decimal`; arithmetic runs in a wide
context (`LEDGER_CONTEXT`, 80 significant digits) so that quantities, cash and proceeds are exact.
The one place where exactness is impossible — the share of a lot's cost that a partial sale takes
(`cost * sold / held`) — is quantized to `COST_QUANTUM` (1e-12) with banker's rounding, and the
remainder stays in the lot, so cost is conserved exactly: no cent appears or vanishes.

Conventions (documented in docs/portfolio.md):
- Order: by `executed_at`, then by `seq` (insertion order) — a back-dated entry is simply replayed
  in its place.
- buy:  cash -= quantity*price + fee; a lot with cost quantity*price + fee (fees are part of cost).
- sell: cash += quantity*price - fee; realized P&L += that minus the cost of the shares sold (FIFO:
  oldest lots first; average: held cost × sold / held). Selling more than held → `InsufficientQuantity`.
- deposit / withdrawal: external cash flows (contributions). A withdrawal beyond cash →
  `InsufficientCash`.
- dividend / interest: cash += amount - fee; counted as income (not realized P&L).
- fee: cash -= amount + fee.
- split(ratio): new shares per old share (2 → 2-for-1, 0.1 → 1-for-10); quantities × ratio, cost
  unchanged, so per-share cost ÷ ratio and value and P&L are untouched.
- Cash never goes negative through a purchase or a fee: a shortfall is funded by an implicit
  deposit (`auto_funded`, counted as a contribution), so that a ledger of trades alone — the usual
  broker export — still has meaningful value and returns.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import datetime
from decimal import (ROUND_HALF_EVEN, Context, Decimal, DivisionByZero, InvalidOperation, Overflow,
                     localcontext)
from typing import Any

import msgspec

LEDGER_CONTEXT = Context(prec=80, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, DivisionByZero, Overflow])
COST_QUANTUM = Decimal("1e-12")
ZERO = Decimal(0)


class TxType(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"
    DEPOSIT = "deposit"
    WITHDRAWAL = "withdrawal"
    DIVIDEND = "dividend"
    INTEREST = "interest"
    FEE = "fee"
    SPLIT = "split"


TRADE_TYPES = frozenset({TxType.BUY, TxType.SELL})
SYMBOL_REQUIRED = frozenset({TxType.BUY, TxType.SELL, TxType.SPLIT, TxType.DIVIDEND})
AMOUNT_TYPES = frozenset({TxType.DEPOSIT, TxType.WITHDRAWAL, TxType.DIVIDEND, TxType.INTEREST, TxType.FEE})
EXTERNAL_FLOW_TYPES = frozenset({TxType.DEPOSIT, TxType.WITHDRAWAL})


class LedgerError(Exception):
    """A transaction the ledger cannot accept at its place in the sequence."""

    def __init__(self, message: str, *, tx: Tx | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.tx = tx
        self.field = field


class InsufficientQuantity(LedgerError):
    """A sale of more shares than are held at that moment."""

    def __init__(self, symbol: str, requested: Decimal, available: Decimal, tx: Tx | None = None) -> None:
        when = f" on {tx.executed_at.isoformat()}" if tx is not None else ""
        super().__init__(f"cannot sell {requested} {symbol}{when}: only {available} held at that point",
                         tx=tx, field="quantity")
        self.symbol = symbol
        self.requested = requested
        self.available = available


class InsufficientCash(LedgerError):
    def __init__(self, requested: Decimal, available: Decimal, tx: Tx | None = None) -> None:
        when = f" on {tx.executed_at.isoformat()}" if tx is not None else ""
        super().__init__(f"cannot withdraw {requested}{when}: only {available} cash at that point",
                         tx=tx, field="amount")
        self.requested = requested
        self.available = available


class Tx(msgspec.Struct, frozen=True, kw_only=True):
    """One ledger entry. Which fields matter depends on `type` (see the module docstring)."""

    type: TxType
    executed_at: datetime
    seq: int = 0
    symbol: str | None = None
    quantity: Decimal | None = None
    price: Decimal | None = None
    amount: Decimal | None = None
    fee: Decimal = ZERO
    ratio: Decimal | None = None
    id: Any = None

    def sort_key(self) -> tuple[datetime, int]:
        return (self.executed_at, self.seq)

    @property
    def cash_effect(self) -> Decimal:
        """The change of cash this entry causes on its own (before any auto-funding)."""
        with localcontext(LEDGER_CONTEXT):
            t = TxType(self.type)
            if t is TxType.BUY:
                return -(self.quantity * self.price + self.fee)  # type: ignore[operator]
            if t is TxType.SELL:
                return self.quantity * self.price - self.fee  # type: ignore[operator]
            if t in (TxType.DEPOSIT, TxType.DIVIDEND, TxType.INTEREST):
                return self.amount - self.fee  # type: ignore[operator]
            if t in (TxType.WITHDRAWAL, TxType.FEE):
                return -(self.amount + self.fee)  # type: ignore[operator]
            return -self.fee


def validate_tx(tx: Tx) -> None:
    """Shape checks independent of the sequence; raises LedgerError naming the field."""
    try:
        kind = TxType(tx.type)
    except ValueError:
        raise LedgerError(f"unknown transaction type {tx.type!r}", tx=tx, field="type") from None

    def need(name: str, positive: bool = True, allow_zero: bool = False) -> Decimal:
        value = getattr(tx, name)
        if value is None:
            raise LedgerError(f"{name} is required for a {kind.value}", tx=tx, field=name)
        if not isinstance(value, Decimal) or not value.is_finite():
            raise LedgerError(f"{name} must be a finite number", tx=tx, field=name)
        if positive and (value < 0 or (value == 0 and not allow_zero)):
            raise LedgerError(f"{name} must be {'zero or ' if allow_zero else ''}positive", tx=tx, field=name)
        return value

    if not isinstance(tx.fee, Decimal) or not tx.fee.is_finite() or tx.fee < 0:
        raise LedgerError("fee must be zero or positive", tx=tx, field="fee")
    if kind in SYMBOL_REQUIRED and not tx.symbol:
        raise LedgerError(f"symbol is required for a {kind.value}", tx=tx, field="symbol")
    if kind in TRADE_TYPES:
        need("quantity")
        need("price", allow_zero=True)
    elif kind in AMOUNT_TYPES:
        need("amount")
    elif kind is TxType.SPLIT:
        need("ratio")


class Lot(msgspec.Struct, kw_only=True):
    quantity: Decimal
    cost: Decimal  # total cost of the lot, fees included
    opened_at: datetime

    @property
    def unit_cost(self) -> Decimal:
        with localcontext(LEDGER_CONTEXT):
            return self.cost / self.quantity if self.quantity else ZERO


class Position(msgspec.Struct, kw_only=True):
    symbol: str
    lots: list[Lot] = msgspec.field(default_factory=list)
    realized_pnl: Decimal = ZERO
    income: Decimal = ZERO  # dividends received on this symbol
    fees: Decimal = ZERO  # trade fees paid on this symbol (already inside cost / proceeds)
    last_price: Decimal | None = None  # of the last buy or sale: the fallback when no market price exists

    @property
    def quantity(self) -> Decimal:
        with localcontext(LEDGER_CONTEXT):
            return sum((lot.quantity for lot in self.lots), ZERO)

    @property
    def cost_basis(self) -> Decimal:
        with localcontext(LEDGER_CONTEXT):
            return sum((lot.cost for lot in self.lots), ZERO)

    @property
    def average_cost(self) -> Decimal:
        qty = self.quantity
        with localcontext(LEDGER_CONTEXT):
            return self.cost_basis / qty if qty else ZERO

    def clone(self) -> Position:
        return Position(symbol=self.symbol,
                        lots=[Lot(quantity=lot.quantity, cost=lot.cost, opened_at=lot.opened_at) for lot in self.lots],
                        realized_pnl=self.realized_pnl, income=self.income, fees=self.fees, last_price=self.last_price)


class CostMethod(enum.StrEnum):
    FIFO = "fifo"
    AVERAGE = "average"


class LedgerState(msgspec.Struct, kw_only=True):
    """Everything that follows from the ledger up to some point. Mutated by `apply`."""

    method: CostMethod
    cash: Decimal = ZERO
    positions: dict[str, Position] = msgspec.field(default_factory=dict)
    realized_pnl: Decimal = ZERO
    dividends: Decimal = ZERO
    interest: Decimal = ZERO
    fees: Decimal = ZERO  # every fee paid (trade fees and standalone fees)
    deposits: Decimal = ZERO
    withdrawals: Decimal = ZERO
    auto_funded: Decimal = ZERO
    count: int = 0
    last_key: tuple[datetime, int] | None = None

    # --- derived ---------------------------------------------------------------------------------
    @property
    def net_contributions(self) -> Decimal:
        with localcontext(LEDGER_CONTEXT):
            return self.deposits + self.auto_funded - self.withdrawals

    @property
    def cost_basis(self) -> Decimal:
        with localcontext(LEDGER_CONTEXT):
            return sum((p.cost_basis for p in self.positions.values()), ZERO)

    def open_positions(self) -> list[Position]:
        return [p for p in self.positions.values() if p.lots]

    def quantity(self, symbol: str) -> Decimal:
        pos = self.positions.get(symbol)
        return pos.quantity if pos else ZERO

    def copy(self) -> LedgerState:
        return msgspec.convert(msgspec.to_builtins(self), LedgerState)

    def evolve(self, tx: Tx) -> LedgerState:
        """A new state with `tx` applied; `self` is untouched and shares every position `tx` does not
        concern (copy on write: an entry changes at most the position of its own symbol)."""
        new = msgspec.structs.replace(self, positions=dict(self.positions))
        if tx.symbol is not None and tx.symbol in new.positions:
            new.positions[tx.symbol] = new.positions[tx.symbol].clone()
        new.apply(tx)
        return new

    # --- mutation --------------------------------------------------------------------------------
    def _position(self, symbol: str) -> Position:
        pos = self.positions.get(symbol)
        if pos is None:
            pos = self.positions[symbol] = Position(symbol=symbol)
        return pos

    def _debit(self, amount: Decimal) -> None:
        """Spend cash on a purchase or fee; a shortfall is funded by an implicit deposit."""
        self.cash -= amount
        if self.cash < 0:
            self.auto_funded -= self.cash
            self.cash = ZERO

    def apply(self, tx: Tx) -> None:
        """Apply one entry at the end of the sequence. On error the state is left unchanged."""
        validate_tx(tx)
        with localcontext(LEDGER_CONTEXT):
            t = TxType(tx.type)
            if t is TxType.BUY:
                qty, price = tx.quantity, tx.price
                assert qty is not None and price is not None
                cost = qty * price + tx.fee
                pos = self._position(tx.symbol)  # type: ignore[arg-type]
                if self.method is CostMethod.AVERAGE and pos.lots:
                    lot = pos.lots[0]
                    lot.quantity += qty
                    lot.cost += cost
                else:
                    pos.lots.append(Lot(quantity=qty, cost=cost, opened_at=tx.executed_at))
                pos.fees += tx.fee
                pos.last_price = price
                self.fees += tx.fee
                self._debit(cost)
            elif t is TxType.SELL:
                qty, price = tx.quantity, tx.price
                assert qty is not None and price is not None
                pos = self.positions.get(tx.symbol)  # type: ignore[arg-type]
                held = pos.quantity if pos else ZERO
                if pos is None or qty > held:
                    raise InsufficientQuantity(tx.symbol or "", qty, held, tx)
                removed = self._take(pos, qty)
                proceeds = qty * price - tx.fee
                pnl = proceeds - removed
                pos.realized_pnl += pnl
                pos.fees += tx.fee
                pos.last_price = price
                self.realized_pnl += pnl
                self.fees += tx.fee
                self.cash += proceeds
                if self.cash < 0:  # a fee larger than the proceeds
                    self.auto_funded -= self.cash
                    self.cash = ZERO
            elif t is TxType.DEPOSIT:
                self.deposits += tx.amount  # type: ignore[operator]
                self.fees += tx.fee
                self.cash += tx.amount  # type: ignore[operator]
                self._debit(tx.fee)
            elif t is TxType.WITHDRAWAL:
                need = tx.amount + tx.fee  # type: ignore[operator]
                if need > self.cash:
                    raise InsufficientCash(need, self.cash, tx)
                self.withdrawals += tx.amount  # type: ignore[operator]
                self.fees += tx.fee
                self.cash -= need
            elif t in (TxType.DIVIDEND, TxType.INTEREST):
                if t is TxType.DIVIDEND:
                    self.dividends += tx.amount  # type: ignore[operator]
                    self._position(tx.symbol).income += tx.amount  # type: ignore[arg-type,operator]
                else:
                    self.interest += tx.amount  # type: ignore[operator]
                self.fees += tx.fee
                self.cash += tx.amount  # type: ignore[operator]
                self._debit(tx.fee)
            elif t is TxType.FEE:
                self.fees += tx.amount + tx.fee  # type: ignore[operator]
                self._debit(tx.amount + tx.fee)  # type: ignore[operator]
            elif t is TxType.SPLIT:
                pos = self.positions.get(tx.symbol)  # type: ignore[arg-type]
                ratio = tx.ratio
                assert ratio is not None
                if pos is not None:
                    for lot in pos.lots:
                        lot.quantity *= ratio  # cost unchanged: value and P&L are untouched
                    if pos.last_price is not None:
                        pos.last_price /= ratio
                if tx.fee:
                    self.fees += tx.fee
                    self._debit(tx.fee)
            else:  # pragma: no cover - TxType is closed
                raise LedgerError(f"unknown transaction type {t!r}", tx=tx, field="type")
        self.count += 1
        key = tx.sort_key()
        if self.last_key is None or key > self.last_key:
            self.last_key = key

    def _take(self, pos: Position, qty: Decimal) -> Decimal:
        """Remove `qty` shares from the position's lots; returns the cost removed (exactly conserved)."""
        removed = ZERO
        remaining = qty
        while remaining > 0:
            lot = pos.lots[0]
            if remaining >= lot.quantity:
                removed += lot.cost
                remaining -= lot.quantity
                pos.lots.pop(0)
            else:
                part = (lot.cost * remaining / lot.quantity).quantize(COST_QUANTUM)
                lot.cost -= part
                lot.quantity -= remaining
                removed += part
                remaining = ZERO
        return removed


def sort_txs(txs: Iterable[Tx]) -> list[Tx]:
    return sorted(txs, key=Tx.sort_key)


def replay(txs: Iterable[Tx], method: CostMethod | str, *, until: datetime | None = None) -> LedgerState:
    """The state after applying `txs` in ledger order (optionally only those executed before `until`).

    Raises LedgerError (its `.tx` names the entry) at the first entry the sequence cannot accept —
    which, for a back-dated insertion, may be a later sale that the new entry makes impossible.
    """
    state = LedgerState(method=CostMethod(method))
    for tx in sort_txs(txs):
        if until is not None and tx.executed_at >= until:
            break
        state.apply(tx)
    return state


def append(state: LedgerState, tx: Tx) -> LedgerState:
    """A new state with `tx` applied, when `tx` sorts after everything in `state` (the fast path of
    a trade posted "now"); otherwise the caller must replay. The input state is not modified."""
    if state.last_key is not None and tx.sort_key() < state.last_key:
        raise ValueError("append() needs an entry that sorts after the state's last entry; replay instead")
    return state.evolve(tx)


def encode_state(state: LedgerState) -> bytes:
    return msgspec.json.encode(state)


def decode_state(data: bytes | str) -> LedgerState:
    return msgspec.json.decode(data, type=LedgerState)
