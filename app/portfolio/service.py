"""Portfolio service: ownership, the ledger in PostgreSQL, derived state, valuation, performance.

Every ledger change (add, import, delete, change of cost method) runs in one database transaction
that locks the portfolio row (SELECT … FOR UPDATE), writes the entries, recomputes the derived
state (`ledger.apply` for an entry that sorts last, a full replay otherwise), stores it in
`portfolio_state`, and bumps `portfolios.ledger_version`. Concurrent writers on one portfolio
therefore serialize, and no sale can pass a check made against a stale holding.

Readers (summary, holdings) take the version with the ownership check (one query) and reuse the
decoded state from a per-process cache keyed by that version; prices come from the market domain's
quote cache.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import math
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec

from app.cache import CacheUnavailable
from app.context import AppContext
from app.db import Database, sql_file
from app.errors import AppError, Conflict, NotFound, Unprocessable
from app.memo import TTLMemo
from app.portfolio import performance as perf
from app.portfolio.entries import SYMBOL_RE, Entry, check_entry, check_symbols
from app.portfolio.ledger import (CostMethod, InsufficientCash, InsufficientQuantity, LedgerError, LedgerState,
                                  Position, Tx, TxType, replay)
from app.portfolio.performance import DailySeries
from app.portfolio.schemas import (AmountPct, BenchmarkOut, HoldingOut, HoldingsOut, PerformanceOut, PortfolioIn,
                                   PortfolioOut, PortfolioPatch, SummaryOut, TopPosition, TransactionIn,
                                   TransactionOut, TransactionPage, dec, pct)
from app.portfolio.valuation import HoldingValue, PositionSnap, Valuation, snapshot, value

log = logging.getLogger("app.portfolio")

IDEMPOTENCY_TTL = 24 * 3600
IDEMPOTENCY_TAKEOVER = 60.0  # an in-flight claim older than this (a crashed request) may be taken over
STATE_CACHE_SIZE = 512
LEDGER_CACHE_SIZE = 32
MAX_PORTFOLIOS_PER_USER = 100
MAX_ENTRIES_PER_PORTFOLIO = 200_000  # replaying a ledger this long takes ~1 s; split portfolios beyond it
RANGES = ("1w", "1m", "3m", "ytd", "1y", "3y", "max")

HoldingsView = Valuation  # contract names: .cash, .holdings (list[HoldingView]), .total_value
HoldingView = HoldingValue
__all__ = ["DailySeries", "HoldingView", "HoldingsView", "PortfolioRow", "get_owned_portfolio", "get_holdings",
           "portfolio_daily_series", "ledger_version", "channel"]


def q(name: str) -> str:
    return sql_file("portfolio")[name]


def channel(portfolio_id: uuid.UUID | str) -> str:
    return f"portfolio:{portfolio_id}"


class PortfolioRow(msgspec.Struct):
    id: uuid.UUID
    user_id: uuid.UUID
    name: str
    base_currency: str
    cost_basis_method: str
    ledger_version: int
    created_at: datetime
    updated_at: datetime


def _portfolio(row: asyncpg.Record) -> PortfolioRow:
    return PortfolioRow(**dict(row))


def portfolio_out(p: PortfolioRow) -> PortfolioOut:
    return PortfolioOut(id=p.id, name=p.name, base_currency=p.base_currency, cost_basis_method=p.cost_basis_method,
                        ledger_version=p.ledger_version, created_at=p.created_at, updated_at=p.updated_at)


def tx_from_row(r: asyncpg.Record) -> Tx:
    return Tx(type=TxType(r["type"]), executed_at=r["executed_at"], seq=r["seq"], symbol=r["symbol"],
              quantity=r["quantity"], price=r["price"], amount=r["amount"], fee=r["fee"], ratio=r["ratio"], id=r["id"])


def tx_out(r: asyncpg.Record) -> TransactionOut:
    return TransactionOut(id=r["id"], type=r["type"], symbol=r["symbol"], quantity=dec(r["quantity"], None),
                          price=dec(r["price"], None), amount=dec(r["amount"], None), fee=dec(r["fee"], None) or "0",
                          ratio=dec(r["ratio"], None), currency=r["currency"], note=r["note"],
                          executed_at=r["executed_at"], created_at=r["created_at"])


# --- portfolios -------------------------------------------------------------------------------------------

async def get_owned_portfolio(db: Database, portfolio_id: uuid.UUID, user_id: uuid.UUID) -> PortfolioRow:
    row = await db.fetchrow(q("get_owned_portfolio"), portfolio_id, user_id)
    if row is None:
        raise NotFound("portfolio not found")
    return _portfolio(row)


def _check_name(name: str | None) -> str | None:
    if name is None:
        return None
    name = name.strip()
    if not 1 <= len(name) <= 100:
        raise AppError("name must be 1–100 characters", field="name")
    if "\x00" in name:  # PostgreSQL text cannot hold NUL
        raise AppError("name must not contain NUL characters", field="name")
    return name


async def list_portfolios(ctx: AppContext, user_id: uuid.UUID) -> list[PortfolioOut]:
    return [portfolio_out(_portfolio(r)) for r in await ctx.db.fetch(q("list_portfolios"), user_id)]


async def create_portfolio(ctx: AppContext, user_id: uuid.UUID, data: PortfolioIn) -> PortfolioOut:
    name = _check_name(data.name)
    currency = data.base_currency.strip().upper()
    if len(currency) != 3 or not currency.isalpha() or not currency.isascii():
        raise AppError("base_currency must be a three-letter ISO 4217 code", field="base_currency")
    async with ctx.db.transaction() as conn:
        await conn.execute(q("lock_user_portfolios"), str(user_id))  # the count below holds under concurrency
        if await conn.fetchval(q("count_portfolios"), user_id) >= MAX_PORTFOLIOS_PER_USER:
            raise Conflict(f"at most {MAX_PORTFOLIOS_PER_USER} portfolios per user")
        row = await conn.fetchrow(q("create_portfolio"), user_id, name, currency, data.cost_basis_method)
        state = LedgerState(method=CostMethod(data.cost_basis_method))
        await conn.execute(q("upsert_state"), row["id"], row["ledger_version"],
                           msgspec.json.encode(state).decode())
    return portfolio_out(_portfolio(row))


async def update_portfolio(ctx: AppContext, portfolio_id: uuid.UUID, user_id: uuid.UUID,
                           patch: PortfolioPatch) -> PortfolioOut:
    name = _check_name(patch.name)
    async with write_lock(portfolio_id), ctx.db.transaction() as conn:
        row = await conn.fetchrow(q("lock_owned_portfolio"), portfolio_id, user_id)
        if row is None:
            raise NotFound("portfolio not found")
        method = patch.cost_basis_method or row["cost_basis_method"]
        row = await conn.fetchrow(q("update_portfolio"), portfolio_id, user_id, name or row["name"], method)
        if patch.cost_basis_method is not None:
            txs = [tx_from_row(r) for r in await conn.fetch(q("ledger"), portfolio_id)]
            try:
                state = replay(txs, method)
            except LedgerError as err:  # not expected: the methods differ in cost only
                raise _ledger_conflict(err, set()) from None
            await _store_state(conn, portfolio_id, state, None)
            row = await conn.fetchrow(q("get_owned_portfolio"), portfolio_id, user_id)
    if patch.cost_basis_method is not None:
        await _publish(ctx, portfolio_id, row["ledger_version"])
    return portfolio_out(_portfolio(row))


async def delete_portfolio(ctx: AppContext, portfolio_id: uuid.UUID, user_id: uuid.UUID) -> None:
    result = await ctx.db.execute(q("delete_portfolio"), portfolio_id, user_id)
    if result.endswith(" 0"):
        raise NotFound("portfolio not found")
    _STATE.pop(portfolio_id, None)
    await _publish(ctx, portfolio_id, -1, event="deleted")


async def ledger_version(ctx: AppContext, portfolio_id: uuid.UUID) -> int:
    v = await ctx.db.fetchval(q("ledger_version"), portfolio_id)
    if v is None:
        raise NotFound("portfolio not found")
    return int(v)


async def _publish(ctx: AppContext, portfolio_id: uuid.UUID, version: int, event: str = "ledger") -> None:
    msg = msgspec.json.encode({"event": event, "portfolio_id": str(portfolio_id), "ledger_version": version})
    try:
        await ctx.cache.publish(channel(portfolio_id), msg)
    except CacheUnavailable:  # the ledger is committed; live subscribers catch up on their next tick
        log.warning("portfolio change not published: cache unavailable", extra={"portfolio_id": str(portfolio_id)})


# --- the derived state, cached per process by ledger version ----------------------------------------------

@dataclass(slots=True)
class Derived:
    """The ledger state of one version, with lazily computed aggregates and today's entries."""

    version: int
    state: LedgerState
    snaps: list[PositionSnap] | None = None
    day: date | None = None
    today: list[Tx] | None = None
    memo: tuple[Any, Valuation, dict[str, Any]] | None = None  # the last valuation and its prices
    # until this time.monotonic(), none of memo's prices can have changed (their memo entries live on)
    memo_fresh_until: float = float("-inf")
    revaluing: asyncio.Task[None] | None = None  # a background revaluation under way


_STATE: OrderedDict[uuid.UUID, Derived] = OrderedDict()
_LEDGER: OrderedDict[uuid.UUID, tuple[int, list[Tx]]] = OrderedDict()


_WRITE_LOCKS: weakref.WeakValueDictionary[uuid.UUID, asyncio.Lock] = weakref.WeakValueDictionary()


def write_lock(portfolio_id: uuid.UUID) -> asyncio.Lock:
    """Writers of one portfolio queue here, in this process, before they take a database connection:
    the row lock (SELECT … FOR UPDATE) still serializes replicas, but one process no longer parks
    its whole pool on that lock (nor wakes every waiter at each commit)."""
    lock = _WRITE_LOCKS.get(portfolio_id)
    if lock is None:
        lock = _WRITE_LOCKS[portfolio_id] = asyncio.Lock()
    return lock


def _remember(portfolio_id: uuid.UUID, d: Derived) -> None:
    _STATE[portfolio_id] = d
    _STATE.move_to_end(portfolio_id)
    while len(_STATE) > STATE_CACHE_SIZE:
        _STATE.popitem(last=False)


def _start_of_day(now: datetime) -> datetime:
    return datetime(now.year, now.month, now.day, tzinfo=UTC)


async def _load_state(conn: Any, portfolio_id: uuid.UUID, method: str) -> tuple[LedgerState, int | None]:
    """The stored state (portfolio figures + one row per position) and its version."""
    row = await conn.fetchrow(q("get_state"), portfolio_id)
    if row is not None:
        state = msgspec.json.decode(row["state"], type=LedgerState)
        if state.method == method:
            for r in await conn.fetch(q("get_positions"), portfolio_id):
                pos = _decode_position(r["position"])
                state.positions[pos.symbol] = pos
            return state, int(row["ledger_version"])
    txs = [tx_from_row(r) for r in await conn.fetch(q("ledger"), portfolio_id)]
    return replay(txs, method), None


_decode_position = msgspec.json.Decoder(Position).decode


async def _store_state(conn: asyncpg.Connection, portfolio_id: uuid.UUID, state: LedgerState,
                       touched: set[str] | None) -> int:
    """Bump the version and write the state: every position (`touched` None) or only those named."""
    scalars = msgspec.structs.replace(state, positions={})
    version = int(await conn.fetchval(q("bump_and_store_state"), portfolio_id, msgspec.json.encode(scalars).decode()))
    if touched is None:
        await conn.execute(q("delete_positions"), portfolio_id)
        names = list(state.positions)
    else:
        names = [n for n in touched if n in state.positions]
    if len(names) == 1:
        await conn.execute(q("upsert_position"), portfolio_id, names[0],
                           msgspec.json.encode(state.positions[names[0]]).decode())
    elif names:
        await conn.executemany(q("upsert_position"), [(portfolio_id, n, msgspec.json.encode(state.positions[n]).decode())
                                                      for n in names])
    return version


async def derived(ctx: AppContext, portfolio_id: uuid.UUID, version: int, method: str) -> Derived:
    now = datetime.now(UTC)
    today = now.date()
    hit = _STATE.get(portfolio_id)
    if hit is None or hit.version != version:
        async with ctx.db.connection() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                state, stored = await _load_state(conn, portfolio_id, method)
                todays = [tx_from_row(r) for r in await conn.fetch(q("ledger_since"), portfolio_id,
                                                                      _start_of_day(now))]
        hit = Derived(version=version, state=state, day=today, today=todays)
        if stored == version:
            _remember(portfolio_id, hit)
    else:
        _STATE.move_to_end(portfolio_id)
    if hit.day != today or hit.today is None:
        hit.today = [tx_from_row(r) for r in await ctx.db.fetch(q("ledger_since"), portfolio_id, _start_of_day(now))]
        hit.day = today
    if hit.snaps is None:
        hit.snaps = snapshot(hit.state)
    return hit


async def _owned(ctx: AppContext, portfolio_id: uuid.UUID, user_id: uuid.UUID) -> asyncpg.Record:
    row = await ctx.db.fetchrow(q("owned_version"), portfolio_id, user_id)
    if row is None:
        raise NotFound("portfolio not found")
    return row


async def _owned_version(ctx: AppContext, portfolio_id: uuid.UUID, user_id: uuid.UUID) -> tuple[int, str]:
    row = await _owned(ctx, portfolio_id, user_id)
    return int(row["ledger_version"]), row["cost_basis_method"]


@dataclass(slots=True)
class Valued:
    valuation: Valuation
    version: int
    currency: str
    memo: dict[str, Any]  # per (version, prices): derived outputs (e.g. the encoded summary) may be kept here


STORED_PRICE_TTL = 5.0  # a price from a stored bar changes only when a bar is written
LIVE_PRICE_TTL = 0.1  # a live quote is re-read from the quote cache at most this late
_PRICES: TTLMemo[str, Any] = TTLMemo()


async def _prices(ctx: AppContext, symbols: list[str]) -> dict[str, Any]:
    """Latest prices from the market domain's quote cache, memoized per process: live quotes for
    0.1 s (so that a burst of requests reads the cache once, not once each), prices that came from
    stored bars (no live quote) for 5 s."""
    from app.market.prices import latest_prices

    return await _PRICES.get_many(symbols, lambda wanted: latest_prices(ctx, wanted),
                                  ttl_of=lambda p: STORED_PRICE_TTL if p.stale else LIVE_PRICE_TTL)


REVALUE_GRACE = LIVE_PRICE_TTL  # how long past its prices' expiry a valuation is served while it is redone


async def valuation(ctx: AppContext, portfolio_id: uuid.UUID, user_id: uuid.UUID) -> Valued:
    row = await _owned(ctx, portfolio_id, user_id)
    version = int(row["ledger_version"])
    d = await derived(ctx, portfolio_id, version, row["cost_basis_method"])
    memo = d.memo
    if memo is not None and memo[0][0] == d.day:
        now = time.monotonic()
        if now < d.memo_fresh_until:
            # the prices it was valued at are all still the memoized ones: nothing to look up or compare
            return Valued(memo[1], version, row["base_currency"], memo[2])
        if now < d.memo_fresh_until + REVALUE_GRACE:
            # Just expired, so requests are coming in: they get this valuation (its live prices at most
            # LIVE_PRICE_TTL + REVALUE_GRACE old) while one task values afresh. Under load every request
            # that waited for the refresh lost a whole event-loop turn (the p99 with live prices).
            if d.revaluing is None:
                d.revaluing = asyncio.get_running_loop().create_task(_revalue_in_background(ctx, d))
            return Valued(memo[1], version, row["base_currency"], memo[2])
    memo = await _revalue(ctx, d)
    return Valued(memo[1], version, row["base_currency"], memo[2])


async def _revalue(ctx: AppContext, d: Derived) -> tuple[Any, Valuation, dict[str, Any]]:
    """Value `d` at current prices (again only if they moved) and note until when those prices hold."""
    symbols = sorted({p.symbol for p in d.state.positions.values() if p.lots} |
                     {t.symbol for t in d.today or () if t.symbol})
    prices = await _prices(ctx, symbols) if symbols else {}
    key = (d.day, len(d.today or ()),
           tuple((s, p.price, p.previous_close, p.stale, p.as_of) for s, p in sorted(prices.items())))
    memo = d.memo
    if memo is None or memo[0] != key:  # prices moved (or the day): value again
        memo = d.memo = (key, value(d.state, prices, d.today or [], d.snaps), {})
    # symbols without any price are looked up again on the next request, as before
    d.memo_fresh_until = _PRICES.expires_at(symbols) if len(prices) == len(symbols) else float("-inf")
    return memo


async def _revalue_in_background(ctx: AppContext, d: Derived) -> None:
    try:
        await _revalue(ctx, d)
    except Exception:  # the next request past the grace values inline and reports the error itself
        log.warning("background revaluation failed", exc_info=True)
    finally:
        d.revaluing = None


async def get_holdings(ctx: AppContext, portfolio_id: uuid.UUID, user_id: uuid.UUID) -> HoldingsView:
    return (await valuation(ctx, portfolio_id, user_id)).valuation


def holding_out(h: HoldingValue) -> HoldingOut:
    return HoldingOut(symbol=h.symbol, quantity=dec(h.quantity), average_cost=dec(h.average_cost),
                      cost_basis=dec(h.cost_basis), last_price=dec(h.last_price), previous_close=dec(h.previous_close),
                      market_value=dec(h.market_value), weight=pct(h.weight * 100), unrealized_pnl=dec(h.unrealized_pnl),
                      unrealized_pnl_pct=pct(h.unrealized_pnl_pct), day_change=dec(h.day_change),
                      day_change_pct=pct(h.day_change_pct), realized_pnl=dec(h.realized_pnl), income=dec(h.income),
                      price_as_of=h.price_as_of, stale=h.stale)  # type: ignore[arg-type]


async def holdings_out(ctx: AppContext, portfolio_id: uuid.UUID, user_id: uuid.UUID) -> HoldingsOut:
    v = await valuation(ctx, portfolio_id, user_id)
    val, version = v.valuation, v.version
    return HoldingsOut(portfolio_id=portfolio_id, cash=dec(val.cash), market_value=dec(val.market_value),  # type: ignore[arg-type]
                       total_value=dec(val.total_value), holdings=[holding_out(h) for h in val.holdings],  # type: ignore[arg-type]
                       as_of=val.as_of, stale_prices=val.stale_symbols, ledger_version=version)


async def summary(ctx: AppContext, portfolio_id: uuid.UUID, user_id: uuid.UUID) -> SummaryOut:
    v = await valuation(ctx, portfolio_id, user_id)
    out = v.memo.get("summary")
    if out is None:
        out = v.memo["summary"] = summary_from(portfolio_id, v.valuation, v.version, v.currency)
    return out


def summary_from(portfolio_id: uuid.UUID, val: Valuation, version: int, currency: str) -> SummaryOut:
    top = [TopPosition(symbol=h.symbol, quantity=dec(h.quantity), market_value=dec(h.market_value),  # type: ignore[arg-type]
                       weight=pct(h.weight * 100), last_price=dec(h.last_price), day_change=dec(h.day_change),  # type: ignore[arg-type]
                       day_change_pct=pct(h.day_change_pct), unrealized_pnl_pct=pct(h.unrealized_pnl_pct))
           for h in val.holdings[:5]]
    from app.portfolio.valuation import pct as ratio_pct
    return SummaryOut(
        portfolio_id=portfolio_id, currency=currency, total_value=dec(val.total_value), cash=dec(val.cash),  # type: ignore[arg-type]
        market_value=dec(val.market_value), cost_basis=dec(val.cost_basis),  # type: ignore[arg-type]
        unrealized_pnl=AmountPct(dec(val.unrealized_pnl), pct(ratio_pct(val.unrealized_pnl, val.cost_basis))),  # type: ignore[arg-type]
        realized_pnl=dec(val.realized_pnl), income=dec(val.income), fees=dec(val.fees),  # type: ignore[arg-type]
        net_contributions=dec(val.net_contributions),  # type: ignore[arg-type]
        pnl_today=AmountPct(dec(val.pnl_today), pct(val.pnl_today_pct)),  # type: ignore[arg-type]
        total_return=AmountPct(dec(val.total_return), pct(val.total_return_pct)),  # type: ignore[arg-type]
        top_positions=top, holdings_count=len(val.holdings), as_of=val.as_of, stale_prices=val.stale_symbols,
        ledger_version=version)


# --- writing the ledger ------------------------------------------------------------------------------------

def _ledger_conflict(err: LedgerError, new_ids: set[Any]) -> AppError:
    tx = err.tx
    later = tx is not None and tx.id is not None and tx.id not in new_ids
    prefix = ""
    if later:
        prefix = (f"this change would invalidate the later {tx.type} of {tx.executed_at.isoformat()} "  # type: ignore[union-attr]
                  f"(id {tx.id}): ")
    if isinstance(err, InsufficientQuantity):
        return Conflict(prefix + err.message, field="quantity", symbol=err.symbol, available=dec(err.available, None),
                        requested=dec(err.requested, None))
    if isinstance(err, InsufficientCash):
        return Conflict(prefix + err.message, field="amount", available=dec(err.available, None),
                        requested=dec(err.requested, None))
    return AppError(prefix + err.message, field=err.field)


ASSET_TTL = 60.0  # known assets and their currency, per process (unknown symbols are asked every time)
_ASSET_CURRENCY: TTLMemo[str, str] = TTLMemo(ASSET_TTL)


async def _asset_currencies(db: Any, symbols: Sequence[str]) -> dict[str, str]:
    async def fetch(missing: list[str]) -> dict[str, str]:
        return {r["symbol"]: r["currency"] for r in await db.fetch(q("asset_currencies"), missing)}

    return await _ASSET_CURRENCY.get_many(symbols, fetch)


def _raise_field_errors(errors: list[tuple[str, str]], status: int = 400) -> None:
    if errors:
        field, first = errors[0]
        detail = "; ".join(f"{f}: {m}" for f, m in errors)
        raise AppError(detail, status_code=status, field=field,
                       invalid=[{"field": f, "message": m} for f, m in errors])


async def validate_one(ctx: AppContext, data: TransactionIn, base_currency: str) -> Entry:
    raw = {f: getattr(data, f) for f in data.__struct_fields__}
    raw["type"] = data.type.value
    entry, errors = check_entry(raw, base_currency=base_currency, now=datetime.now(UTC))
    _raise_field_errors(errors)
    assert entry is not None
    if entry.symbol:
        bad = check_symbols([entry], await _asset_currencies(ctx.db, [entry.symbol]), base_currency)
        _raise_field_errors(bad.get(0, []), status=422)
    return entry


def _entry_args(e: Entry) -> tuple[Any, ...]:
    return (e.type.value, e.symbol, e.quantity, e.price, e.amount, e.fee, e.ratio, e.currency, e.note, e.executed_at)


def request_hash(data: TransactionIn) -> str:
    body = msgspec.json.encode(msgspec.to_builtins(data), order="deterministic")
    return hashlib.sha256(body).hexdigest()


@dataclass(slots=True)
class Posted:
    status: int
    body: bytes
    replayed: bool


async def add_transaction(ctx: AppContext, portfolio_id: uuid.UUID, user_id: uuid.UUID, data: TransactionIn,
                          idempotency_key: str | None) -> Posted:
    portfolio = await get_owned_portfolio(ctx.db, portfolio_id, user_id)
    claimed = False
    if idempotency_key is not None:
        key = idempotency_key.strip()
        if not 1 <= len(key) <= 255 or not key.isprintable():
            raise AppError("Idempotency-Key must be 1–255 printable characters", field="Idempotency-Key")
        digest = request_hash(data)
        got = await ctx.db.fetchval(q("idem_claim"), user_id, portfolio_id, key, digest)
        if got is None:
            prior = await ctx.db.fetchrow(q("idem_get"), user_id, portfolio_id, key)
            if prior is None:  # released between our insert and our read: try once more
                got = await ctx.db.fetchval(q("idem_claim"), user_id, portfolio_id, key, digest)
                if got is None:
                    raise Conflict("a request with this Idempotency-Key is in flight; retry later",
                                   field="Idempotency-Key")
            elif prior["request_hash"] != digest:
                raise Unprocessable("this Idempotency-Key was used with a different request body",
                                    field="Idempotency-Key")
            elif prior["status"] == "done":
                return Posted(prior["response_status"], prior["response_body"].encode(), True)
            elif await ctx.db.fetchval(q("idem_take_over"), user_id, portfolio_id, key, digest,
                                       IDEMPOTENCY_TAKEOVER) is None:
                raise Conflict("a request with this Idempotency-Key is in flight; retry later",
                               field="Idempotency-Key", headers={"Retry-After": "1"})
        claimed = True
        idempotency_key = key
    try:
        entry = await validate_one(ctx, data, portfolio.base_currency)
        async with write_lock(portfolio_id), ctx.db.transaction() as conn:
            locked = await conn.fetchrow(q("lock_owned_portfolio"), portfolio_id, user_id)
            if locked is None:
                raise NotFound("portfolio not found")
            method = locked["cost_basis_method"]
            hit = _STATE.get(portfolio_id)
            if hit is not None and hit.version == locked["ledger_version"]:
                state = hit.state  # never mutated: evolve() copies what it changes
            else:
                state, _ = await _load_state(conn, portfolio_id, method)
            if state.count >= MAX_ENTRIES_PER_PORTFOLIO:
                raise Conflict(f"a portfolio holds at most {MAX_ENTRIES_PER_PORTFOLIO} transactions")
            row = await conn.fetchrow(q("insert_transaction"), portfolio_id, *_entry_args(entry))
            tx = tx_from_row(row)
            try:
                if state.last_key is None or tx.sort_key() >= state.last_key:
                    # the usual case, an entry "now": applied on top of the stored state
                    state, touched = state.evolve(tx), {tx.symbol} if tx.symbol else set()
                else:  # back-dated: everything after it is recomputed
                    state = replay([tx_from_row(r) for r in await conn.fetch(q("ledger"), portfolio_id)], method)
                    touched = None
            except LedgerError as err:
                raise _ledger_conflict(err, {tx.id}) from None
            version = await _store_state(conn, portfolio_id, state, touched)
            body = msgspec.json.encode(tx_out(row))
            if claimed:
                await conn.execute(q("idem_complete"), user_id, portfolio_id, idempotency_key, 201, body.decode())
    except BaseException:
        if claimed:
            await asyncio.shield(_release(ctx, user_id, portfolio_id, idempotency_key))  # type: ignore[arg-type]
        raise
    _remember(portfolio_id, Derived(version=version, state=state))
    await _publish(ctx, portfolio_id, version)
    return Posted(201, body, False)


async def _release(ctx: AppContext, user_id: uuid.UUID, portfolio_id: uuid.UUID, key: str) -> None:
    try:
        await ctx.db.execute(q("idem_release"), user_id, portfolio_id, key)
    except Exception:  # noqa: BLE001 - the claim then expires by take-over
        log.warning("could not release an idempotency claim", exc_info=True)


async def purge_idempotency_keys(ctx: AppContext) -> None:
    await ctx.db.execute(q("idem_purge"), float(IDEMPOTENCY_TTL))


async def delete_transaction(ctx: AppContext, portfolio_id: uuid.UUID, user_id: uuid.UUID, tx_id: uuid.UUID) -> None:
    async with write_lock(portfolio_id), ctx.db.transaction() as conn:
        locked = await conn.fetchrow(q("lock_owned_portfolio"), portfolio_id, user_id)
        if locked is None:
            raise NotFound("portfolio not found")
        if await conn.fetchval(q("delete_transaction"), portfolio_id, tx_id) is None:
            raise NotFound("transaction not found")
        try:
            state = replay([tx_from_row(r) for r in await conn.fetch(q("ledger"), portfolio_id)],
                           locked["cost_basis_method"])
        except LedgerError as err:
            raise _ledger_conflict(err, set()) from None
        version = await _store_state(conn, portfolio_id, state, None)
    await _publish(ctx, portfolio_id, version)


async def import_entries(ctx: AppContext, portfolio_id: uuid.UUID, user_id: uuid.UUID,
                         rows: list[tuple[int, Entry]], *, dry_run: bool) -> tuple[list[tuple[int, str | None, str]], int | None]:
    """Check the entries against the ledger (in ledger order, after the existing entries of the same
    instant) and, unless `dry_run` or anything is wrong, store them all in one transaction.

    Returns (errors by line, new ledger version)."""
    errors: list[tuple[int, str | None, str]] = []
    async with write_lock(portfolio_id), ctx.db.transaction() as conn:
        locked = await conn.fetchrow(q("lock_owned_portfolio") if not dry_run else q("get_owned_portfolio"),
                                     portfolio_id, user_id)
        if locked is None:
            raise NotFound("portfolio not found")
        existing = [tx_from_row(r) for r in await conn.fetch(q("ledger"), portfolio_id)]
        if len(existing) + len(rows) > MAX_ENTRIES_PER_PORTFOLIO:
            raise Conflict(f"a portfolio holds at most {MAX_ENTRIES_PER_PORTFOLIO} transactions", field="file")
        base = max((t.seq for t in existing), default=0)
        new = [e.to_tx(seq=base + k + 1, id=("new", line)) for k, (line, e) in enumerate(rows)]
        state = LedgerState(method=CostMethod(locked["cost_basis_method"]))
        from app.portfolio.ledger import sort_txs

        for tx in sort_txs([*existing, *new]):
            try:
                state.apply(tx)
            except LedgerError as err:
                if isinstance(tx.id, tuple):
                    errors.append((tx.id[1], err.field, err.message))
                else:
                    errors.append((0, err.field, f"the import would invalidate the existing {tx.type} of "
                                                 f"{tx.executed_at.isoformat()} (id {tx.id}): {err.message}"))
        if errors or dry_run or not rows:
            return errors, None
        cols = list(zip(*(_entry_args(e) for _, e in rows), strict=True))
        await conn.execute(q("insert_transactions_bulk"), portfolio_id, *[list(c) for c in cols])
        version = await _store_state(conn, portfolio_id, state, None)
    await _publish(ctx, portfolio_id, version)
    return errors, version


# --- reading the ledger ----------------------------------------------------------------------------------------

def encode_cursor(executed_at: datetime, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{executed_at.isoformat()}|{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, seq = raw.split("|")
        ts = datetime.fromisoformat(when)
        if ts.tzinfo is None:
            raise ValueError
        n = int(seq)
        if not 0 <= n < 2**63:  # seq is a bigint
            raise ValueError
        return ts.astimezone(UTC), n  # OverflowError when the offset leaves years 1–9999
    except (ValueError, UnicodeDecodeError, OverflowError):
        raise AppError("cursor is not one this API returned", field="cursor") from None


async def list_transactions(ctx: AppContext, portfolio_id: uuid.UUID, user_id: uuid.UUID, *, type: str | None,
                            symbol: str | None, start: datetime | None, end: datetime | None, limit: int,
                            cursor: str | None) -> TransactionPage:
    await get_owned_portfolio(ctx.db, portfolio_id, user_id)
    if type is not None:
        try:
            type = TxType(type.strip().lower()).value
        except ValueError:
            raise AppError(f"unknown type {type!r}; one of {', '.join(t.value for t in TxType)}", field="type") from None
    if not 1 <= limit <= 500:
        raise AppError("limit must be between 1 and 500", field="limit")
    symbol = symbol.strip().upper() if symbol else None
    if symbol is not None and not SYMBOL_RE.match(symbol):
        raise AppError("symbol must be 1–24 characters of A–Z, 0–9, '.', ':' or '-'", field="symbol")
    after_ts, after_seq = decode_cursor(cursor) if cursor else (None, None)
    rows = await ctx.db.fetch(q("list_transactions"), portfolio_id, type, symbol,
                              start, end, after_ts, after_seq, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = encode_cursor(rows[-1]["executed_at"], rows[-1]["seq"]) if more and rows else None
    return TransactionPage(items=[tx_out(r) for r in rows], next_cursor=nxt)


async def ledger_rows(ctx: AppContext, portfolio_id: uuid.UUID, user_id: uuid.UUID) -> tuple[PortfolioRow, list[asyncpg.Record]]:
    p = await get_owned_portfolio(ctx.db, portfolio_id, user_id)
    return p, await ctx.db.fetch(q("ledger"), portfolio_id)


async def _ledger_txs(ctx: AppContext, portfolio_id: uuid.UUID, version: int) -> list[Tx]:
    hit = _LEDGER.get(portfolio_id)
    if hit is not None and hit[0] == version:
        _LEDGER.move_to_end(portfolio_id)
        return hit[1]
    async with ctx.db.connection() as conn:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            v = await conn.fetchval(q("ledger_version"), portfolio_id)
            txs = [tx_from_row(r) for r in await conn.fetch(q("ledger"), portfolio_id)]
    if v == version:
        _LEDGER[portfolio_id] = (version, txs)
        while len(_LEDGER) > LEDGER_CACHE_SIZE:
            _LEDGER.popitem(last=False)
    return txs


# --- performance ------------------------------------------------------------------------------------------------

def _months_back(d: date, months: int) -> date:
    y, m = divmod(d.year * 12 + d.month - 1 - months, 12)
    m += 1
    day = min(d.day, [31, 29 if y % 4 == 0 and (y % 100 != 0 or y % 400 == 0) else 28, 31, 30, 31, 30, 31, 31, 30,
                      31, 30, 31][m - 1])
    return date(y, m, day)


def range_start(rng: str, end: date, first: date | None) -> date | None:
    if rng == "1w":
        return end - timedelta(days=7)
    if rng == "1m":
        return _months_back(end, 1)
    if rng == "3m":
        return _months_back(end, 3)
    if rng == "ytd":
        return date(end.year - 1, 12, 31)  # the last close of the previous year is the base
    if rng == "1y":
        return _months_back(end, 12)
    if rng == "3y":
        return _months_back(end, 36)
    return first


async def _series(ctx: AppContext, txs: list[Tx], method: str, start: date | None, end: date | None,
                  extra_symbols: Sequence[str] = (), with_weights: bool = False
                  ) -> tuple[DailySeries, dict[str, list[tuple[date, Decimal]]]]:
    from app.market.prices import daily_closes

    symbols = sorted({t.symbol for t in txs if t.symbol and t.type in (TxType.BUY, TxType.SELL, TxType.SPLIT)})
    wanted = sorted(set(symbols) | set(extra_symbols))
    first_tx = txs[0].executed_at.date() if txs else None
    closes = await daily_closes(ctx.db, wanted, (start or first_tx or date(1900, 1, 1)) - timedelta(days=14), end) \
        if wanted else {}
    if end is None:
        last_close = max((s[-1][0] for sym, s in closes.items() if s and sym in symbols), default=None)
        last_tx = txs[-1].executed_at.date() if txs else None
        end = max((d for d in (last_close, last_tx) if d is not None), default=datetime.now(UTC).date())
    if start is None:
        start = first_tx or end
    close_days = {d for sym in symbols for d, _ in closes.get(sym, ()) if start <= d <= end}
    dates = sorted(close_days.union(t.executed_at.date() for t in txs if start <= t.executed_at.date() <= end))
    held = {s: closes.get(s, []) for s in symbols}
    if len(dates) * max(len(symbols), 1) > 20_000:
        series = await asyncio.to_thread(perf.daily_values, txs, method, held, dates, with_weights=with_weights,
                                         close_days=close_days)
    else:
        series = perf.daily_values(txs, method, held, dates, with_weights=with_weights, close_days=close_days)
    return series, closes


SERIES_TTL = 30.0  # closes change during the day (today's live close), the ledger by version
SERIES_CACHE_SIZE = 64
_SERIES: TTLMemo[tuple, tuple[DailySeries, dict[str, list[tuple[date, Decimal]]]]] = TTLMemo(SERIES_TTL,
                                                                                            SERIES_CACHE_SIZE)


async def _series_cached(ctx: AppContext, portfolio_id: uuid.UUID, version: int, method: str, start: date | None,
                         end: date | None, extra_symbols: Sequence[str] = (), with_weights: bool = False
                         ) -> tuple[DailySeries, dict[str, list[tuple[date, Decimal]]]]:
    key = (portfolio_id, version, method, start, end, tuple(extra_symbols), with_weights)
    hit = _SERIES.get(key)
    if hit is not None:
        return hit
    txs = await _ledger_txs(ctx, portfolio_id, version)
    series, closes = await _series(ctx, txs, method, start, end, extra_symbols, with_weights)
    _SERIES.put(key, (series, closes))
    return series, closes


async def portfolio_daily_series(ctx: AppContext, portfolio_id: uuid.UUID, user_id: uuid.UUID,
                                 start: date | None = None, end: date | None = None) -> DailySeries:
    """Contract: the daily value series (market value + cash), net flows, time-weighted daily
    returns (flows removed) and weights per symbol, from `start` (default: the first entry).

    Cached per (portfolio, ledger version, range) for 30 s: treat the result as read-only."""
    version, method = await _owned_version(ctx, portfolio_id, user_id)
    series, _ = await _series_cached(ctx, portfolio_id, version, method, start, end, with_weights=True)
    return series


async def performance(ctx: AppContext, portfolio_id: uuid.UUID, user_id: uuid.UUID, rng: str,
                      benchmark: str | None) -> PerformanceOut:
    from app.market.prices import known_symbols

    if rng not in RANGES:
        raise AppError(f"range must be one of {', '.join(RANGES)}", field="range")
    bench = benchmark.strip().upper() if benchmark else None
    if bench is not None and not SYMBOL_RE.match(bench):
        raise AppError("benchmark must be a ticker symbol such as SPY", field="benchmark")
    if bench is not None and not await known_symbols(ctx.db, [bench]):
        raise Unprocessable(f"unknown benchmark symbol {bench}", field="benchmark")
    version, method = await _owned_version(ctx, portfolio_id, user_id)
    txs = await _ledger_txs(ctx, portfolio_id, version)
    if not txs:
        return PerformanceOut(portfolio_id=portfolio_id, range=rng, start=None, end=None, dates=[], values=[],
                              net_flows=[], net_contributions=[], twr_index=[], time_weighted_return=None,
                              time_weighted_return_annualized=None, money_weighted_return=None,
                              benchmark=BenchmarkOut(bench, [], None) if bench else None)
    # the range ends at the latest market date with data for the ledger's symbols (or its last entry)
    symbols = sorted({t.symbol for t in txs if t.symbol and t.type in (TxType.BUY, TxType.SELL, TxType.SPLIT)})
    end_candidates = [txs[-1].executed_at.date()]
    last_close = await ctx.db.fetchval(q("last_close"), symbols) if symbols else None
    if last_close is not None:
        end_candidates.append(last_close.astimezone(UTC).date())
    end = max(end_candidates)
    start = range_start(rng, end, txs[0].executed_at.date())
    start = max(start, txs[0].executed_at.date()) if start else txs[0].executed_at.date()
    series, closes = await _series_cached(ctx, portfolio_id, version, method, start, end, [bench] if bench else [])
    dates = series.dates
    twr = perf.chain(series.returns) if series.returns else None
    span = (dates[-1] - dates[0]).days if dates else 0
    twr_ann = perf.annualize(twr, span) if twr is not None and span >= 365 else None
    mwr = perf.xirr(perf.xirr_cashflows(dates, series.values, series.net_flows)) if len(dates) > 1 else None
    bench_out = None
    if bench:
        aligned = perf.align(closes.get(bench, []), dates)
        firsts = [a for a in aligned if a is not None]
        base = float(firsts[0]) if firsts else None
        values = [None if a is None or not base else float(a) / base * 100 for a in aligned]
        total = (float(firsts[-1]) / base - 1) if firsts and base else None
        bench_out = BenchmarkOut(symbol=bench, values=values, total_return=None)

    def ratio(x: float | None) -> str | None:
        return None if x is None or not math.isfinite(x) else pct(Decimal(repr(x * 100)))

    out = PerformanceOut(
        portfolio_id=portfolio_id, range=rng, start=dates[0] if dates else None, end=dates[-1] if dates else None,
        dates=dates, values=[dec(v, 2) for v in series.values],  # type: ignore[misc]
        net_flows=[dec(f, 2) for f in series.net_flows], net_contributions=[dec(c, 2) for c in series.contributions],  # type: ignore[misc]
        twr_index=[round(x, 6) for x in perf.cumulative_index(series.returns)] if dates else [],
        time_weighted_return=ratio(twr), time_weighted_return_annualized=ratio(twr_ann),
        money_weighted_return=ratio(mwr), benchmark=bench_out)
    if bench_out is not None:
        bench_out.total_return = ratio(total)
    return out


