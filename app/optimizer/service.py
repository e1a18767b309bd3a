"""The optimizer service: validate a request, gather the return history (our database, a portfolio's
holdings, or inline), hand the problem to a worker process, turn weights into rebalance trades.

Riskfolio never runs here (see pool.py); this module only does I/O, validation and bookkeeping.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import msgspec
import numpy as np

from app.config import Settings
from app.context import AppContext
from app.db import sql_file
from app.errors import AppError, ServiceUnavailable, Unprocessable
from app.memo import TTLMemo
from app.optimizer.pool import OptimizerBusy, OptimizerPool, OptimizerTimeout, WorkerCrashed
from app.optimizer.problem import Problem, SolveError, View
from app.optimizer.rebalance import RebalanceError, plan_rebalance
from app.optimizer.schemas import FrontierRequest, OptimizeRequest, RebalanceRequest

log = logging.getLogger("app.optimizer")

MIN_OBSERVATIONS = 60  # returns needed at the least, whatever the model
MAX_ASSETS = 500
MAX_OBSERVATIONS = 20_000
MAX_PERIOD_RETURN = 10.0  # +1000 % in one period: beyond it the input is surely not simple returns


# --- the long-running part ---------------------------------------------------------------------------
class OptimizerService:
    """Owns the worker pool; `ctx.services["optimizer"]`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool = OptimizerPool(workers=settings.optimizer_workers, timeout=settings.optimizer_timeout,
                                  nice=settings.optimizer_nice)

    def start(self) -> None:
        if self.settings.optimizer_prestart:
            self.pool.start()

    async def stop(self) -> None:
        await self.pool.stop()

    def status(self) -> dict[str, Any]:
        return self.pool.status()

    async def run(self, op: str, payload: Any) -> Any:
        try:
            return await self.pool.run(op, payload)
        except SolveError as exc:
            extra = {k: v for k, v in exc.extra.items() if isinstance(v, (str, int, float, bool, type(None)))}
            title = {502: "Bad Gateway", 504: "Gateway Timeout"}.get(exc.status)
            raise AppError(exc.detail, status_code=exc.status, field=exc.field, title=title, **extra) from None
        except OptimizerTimeout as exc:
            raise AppError(f"{exc} (OPTIMIZER_TIMEOUT); try fewer assets, a shorter lookback or the variance "
                           "risk measure", status_code=504, title="Gateway Timeout",
                           timeout_s=self.settings.optimizer_timeout) from None
        except OptimizerBusy as exc:
            raise ServiceUnavailable(f"the optimizer is busy: {exc}; retry shortly",
                                     headers={"Retry-After": "2"}) from None
        except WorkerCrashed as exc:
            log.error("optimizer worker failure", extra={"error": str(exc)})
            raise AppError("the optimizer failed unexpectedly; it has been logged", status_code=500) from None


def service(ctx: AppContext) -> OptimizerService:
    svc = ctx.services.get("optimizer")
    if svc is None:
        raise ServiceUnavailable("the optimizer is not running")
    return svc


class AlignedCloses(msgspec.Struct, frozen=True):
    """Closes of several symbols on the days they all have one (what a return matrix needs)."""
    dates: list[date]  # ascending
    prices: Any  # np.ndarray, len(dates) × len(symbols)
    first: dict[str, date | None]  # each symbol's first day in the window (None: no bars at all)


def align_closes(symbols: list[str], rows: Any) -> AlignedCloses:
    """(symbol, day, close) rows → the aligned matrix. Pure; done once per memo entry."""
    by_symbol: dict[str, dict[date, float]] = {s: {} for s in symbols}
    for symbol, day, close in rows:
        by_symbol[symbol][day] = close
    common = sorted(set.intersection(*(set(v) for v in by_symbol.values()))) if by_symbol else []
    prices = np.array([[by_symbol[s][d] for s in symbols] for d in common], dtype=float).reshape(len(common),
                                                                                                len(symbols))
    prices.flags.writeable = False  # memoized and shared by requests: slices of it must stay read-only
    return AlignedCloses(dates=common, prices=prices, first={s: min(v) if v else None for s, v in by_symbol.items()})


class _ClosesMemo:
    """Recently aligned closes, for repeated optimizations of one universe (objectives, frontier,
    constraints tried in turn). Keyed by the window and the newest bar's timestamp, so a new day's bar
    is seen at once; entries live CLOSES_TTL seconds, so updates to today's bar are seen soon; at most
    CLOSES_MAX_ROWS closes are kept (least recently used dropped first)."""

    def __init__(self, ttl: float, max_rows: int) -> None:
        self.ttl, self.max_rows = ttl, max_rows
        self._items: dict[Any, tuple[float, int, Any]] = {}

    def get(self, key: Any) -> Any:
        item = self._items.pop(key, None)
        if item is None or item[0] < time.monotonic():
            return None
        self._items[key] = item  # most recently used last
        return item[2]

    def put(self, key: Any, value: Any, rows: int) -> None:
        self._items[key] = (time.monotonic() + self.ttl, rows, value)
        while sum(r for _, r, _ in self._items.values()) > self.max_rows and len(self._items) > 1:
            self._items.pop(next(iter(self._items)))


CLOSES_TTL = 60.0
CLOSES_MAX_ROWS = 2_000_000  # closes kept in all (8 bytes each in the aligned matrices: ~16 MB)
_CLOSES = _ClosesMemo(CLOSES_TTL, CLOSES_MAX_ROWS)


# --- universe and history ----------------------------------------------------------------------------
class Universe(msgspec.Struct):
    symbols: list[str]
    returns: Any  # np.ndarray T × N
    dates: list[date]  # the date of each return
    periods_per_year: int
    source: str  # "symbols" | "portfolio" | "inline"
    current_weights: dict[str, float] | None = None  # a portfolio's market-value weights
    warnings: list[str] = msgspec.field(default_factory=list)


def _fail(detail: str, field: str, **extra: Any) -> Unprocessable:
    return Unprocessable(detail, field=field, **extra)


def _normalize(symbols: list[str], field: str, *, upper: bool = True) -> list[str]:
    out: list[str] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(symbols):
        s = raw.strip().upper() if upper else raw.strip()
        where = f"{field}[{i}]" if upper else f"{field}.{raw}"
        if not s:
            raise _fail("empty symbol", where)
        if upper and not s.isprintable():  # a NUL cannot even be looked up in PostgreSQL
            raise _fail(f"not a ticker symbol: {s!r}", where)
        if s.upper() in seen:  # AAPL and aapl are one symbol, also among inline returns
            raise _fail(f"duplicate symbol {s} (also at index {seen[s.upper()]})", where)
        seen[s.upper()] = i
        out.append(s)
    return out


def needed_observations(n_assets: int, covariance: str) -> int:
    """Returns needed: at least MIN_OBSERVATIONS, and more observations than assets for the sample
    covariance (otherwise it is singular); shrinkage estimators cope with fewer."""
    return max(MIN_OBSERVATIONS, n_assets + 1) if covariance == "sample" else MIN_OBSERVATIONS


def _periods_per_year(dates: list[date]) -> int:
    if len(dates) < 2:
        return 252
    gap = statistics.median((b - a).days for a, b in zip(dates, dates[1:]))
    if gap <= 4:
        return 252
    if gap <= 10:
        return 52
    if gap <= 45:
        return 12
    return 4


def _inline_universe(req: OptimizeRequest) -> Universe:
    assert req.returns is not None
    if not req.returns:
        raise _fail("returns is empty: give {symbol: [simple returns …]} for at least 2 symbols", "returns")
    symbols = _normalize(list(req.returns), "returns", upper=False)
    series = list(req.returns.values())
    if req.dates is None:
        raise _fail("dates is required with inline returns: one date per return", "dates")
    dates = req.dates
    for i, (a, b) in enumerate(zip(dates, dates[1:])):
        if b <= a:
            raise _fail(f"dates must be strictly increasing: {b} follows {a}", f"dates[{i + 1}]")
    for s, values in zip(symbols, series):
        if len(values) != len(dates):
            raise _fail(f"{s} has {len(values)} returns but dates has {len(dates)}", f"returns.{s}")
    if len(dates) > MAX_OBSERVATIONS:
        raise _fail(f"at most {MAX_OBSERVATIONS} returns per symbol", "returns")
    # column by column: each conversion is short, so the GIL passes back to the event loop in between
    matrix = np.empty((len(dates), len(symbols)))
    for j, values in enumerate(series):
        matrix[:, j] = np.array(values, dtype=float)  # null → NaN
    bad = ~np.isfinite(matrix) | (matrix <= -1.0) | (matrix > MAX_PERIOD_RETURN)
    if bad.any():
        i, j = (int(x) for x in np.argwhere(bad)[0])
        s, v = symbols[j], matrix[i, j]
        if not math.isfinite(v):
            why = "is missing or not a number"
        elif v <= -1.0:
            why = f"is {v}: a simple return cannot be -100 % or less"
        else:
            why = f"is {v}: more than {MAX_PERIOD_RETURN:g} (×{MAX_PERIOD_RETURN + 1:g}) in one period; send simple returns, not prices or percentages"
        raise _fail(f"return {i} of {s} {why}", f"returns.{s}[{i}]")
    return Universe(symbols=symbols, returns=matrix, dates=list(dates), periods_per_year=_periods_per_year(dates),
                    source="inline")


BOUNDS_TTL = 5.0  # seconds; a new asset or a new day's bar is seen this late at most
_BOUNDS: TTLMemo[tuple[str, ...], tuple[frozenset[str], datetime | None]] = TTLMemo(BOUNDS_TTL, size=1_000)


async def _universe_bounds(ctx: AppContext, symbols: list[str]) -> tuple[frozenset[str], datetime | None]:
    """(which symbols are known assets, the newest daily bar among them), memoized for BOUNDS_TTL: the
    query re-plans on every run (a hypertable under `= ANY($1)`), ~0.5 ms of a 20-asset request."""
    key = tuple(symbols)
    hit = _BOUNDS.get(key)
    if hit is not None:
        return hit
    row = await ctx.db.fetchrow(sql_file("optimizer")["universe_bounds"], symbols)
    bounds = frozenset(row["known"]), row["latest"]
    if len(bounds[0]) == len(key):  # an unknown symbol is asked again next time: it may be added any moment
        _BOUNDS.put(key, bounds)
    return bounds


async def _db_universe(ctx: AppContext, symbols: list[str], req: OptimizeRequest, source: str,
                       field: str) -> Universe:
    known, latest = await _universe_bounds(ctx, symbols)
    unknown = [s for s in symbols if s not in known]
    if unknown:
        raise _fail(f"unknown symbol{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}", field,
                    unknown=unknown)
    needed = needed_observations(len(symbols), req.covariance)
    if req.lookback < needed:
        raise _fail(f"lookback {req.lookback} is too short: {len(symbols)} assets with the {req.covariance} "
                    f"covariance need at least {needed} daily returns", "lookback", needed=needed)
    # the window ends at the newest bar and spans the calendar days that hold `lookback` trading days
    end = latest.astimezone(timezone.utc).date() if latest else datetime.now(timezone.utc).date()
    start = end - timedelta(days=int(req.lookback * 366 / 250) + 14)
    key = (tuple(symbols), start, end, latest)
    aligned: AlignedCloses | None = _CLOSES.get(key)
    if aligned is None:
        rows = await ctx.db.fetch(sql_file("optimizer")["daily_closes"], symbols,
                                  datetime(start.year, start.month, start.day, tzinfo=timezone.utc),
                                  datetime(end.year, end.month, end.day, tzinfo=timezone.utc) + timedelta(days=1))
        aligned = align_closes(symbols, rows)
        _CLOSES.put(key, aligned, max(1, aligned.prices.size))
    common = aligned.dates[-(req.lookback + 1):]
    prices = aligned.prices[-(req.lookback + 1):]
    available = max(len(common) - 1, 0)
    first = aligned.first
    if available < needed:
        shortest = sorted(symbols, key=lambda s: (first[s] is not None, first[s] or date.min), reverse=True)[:3]
        detail = ", ".join(f"{s} since {first[s]}" if first[s] else f"{s} has none" for s in shortest)
        raise _fail(f"too little history: {available} common daily returns over the lookback, at least {needed} "
                    f"are needed ({detail})", field, needed=needed, available=available)
    if (prices <= 0).any():
        raise _fail("a stored close is not positive; cannot compute returns", field)
    returns = prices[1:] / prices[:-1] - 1.0
    warnings: list[str] = []
    if available < req.lookback:
        latest_start = max(symbols, key=lambda s: first[s] or date.min)
        warnings.append(f"only {available} common daily returns of the {req.lookback} asked for "
                        f"({latest_start} starts {first[latest_start]})")
    return Universe(symbols=symbols, returns=returns, dates=common[1:], periods_per_year=252, source=source,
                    warnings=warnings)


async def _portfolio_weights(ctx: AppContext, portfolio_id: uuid.UUID, user_id: uuid.UUID) -> tuple[Any, dict[str, float]]:
    from app.portfolio.service import get_holdings  # noqa: PLC0415 — the portfolio domain

    view = await get_holdings(ctx, portfolio_id, user_id)
    values: dict[str, float] = {}
    for h in view.holdings:
        if h.quantity > 0:
            mv = h.market_value if getattr(h, "market_value", None) is not None else h.quantity * (h.last_price or 0)
            values[h.symbol] = float(mv)
    total = sum(values.values())
    weights = {s: v / total for s, v in values.items()} if total > 0 else {}
    return view, weights


async def build_universe(ctx: AppContext, user_id: uuid.UUID, req: OptimizeRequest, *,
                         field_prefix: str = "") -> Universe:
    given = [name for name in ("symbols", "portfolio_id", "returns")
             if getattr(req, name) is not None]
    if len(given) != 1:
        raise _fail("give exactly one universe: symbols, portfolio_id or returns"
                    + (f" (got {', '.join(given)})" if given else ""), field_prefix + (given[-1] if given else "symbols"))
    if req.returns is not None:
        # hundreds of thousands of floats to check and copy: in a thread, so the event loop keeps turning
        uni = await asyncio.to_thread(_inline_universe, req) if len(req.returns) * len(req.dates or ()) > 20_000 \
            else _inline_universe(req)
    elif req.symbols is not None:
        symbols = _normalize(req.symbols, field_prefix + "symbols")
        if not 2 <= len(symbols) <= MAX_ASSETS:
            raise _fail(f"between 2 and {MAX_ASSETS} symbols are needed", field_prefix + "symbols")
        uni = await _db_universe(ctx, symbols, req, "symbols", field_prefix + "symbols")
    else:
        assert req.portfolio_id is not None
        _, weights = await _portfolio_weights(ctx, req.portfolio_id, user_id)
        if len(weights) < 2:
            raise _fail("the portfolio needs at least 2 holdings to optimize", field_prefix + "portfolio_id")
        uni = await _db_universe(ctx, sorted(weights), req, "portfolio", field_prefix + "portfolio_id")
        uni.current_weights = weights
    n, t = len(uni.symbols), uni.returns.shape[0]
    if n < 2:
        raise _fail("at least 2 assets are needed", field_prefix + given[0])
    if n > MAX_ASSETS:
        raise _fail(f"at most {MAX_ASSETS} assets", field_prefix + given[0])
    needed = needed_observations(n, req.covariance)
    if t < needed:
        raise _fail(f"too little history: {t} returns, at least {needed} are needed for {n} assets with the "
                    f"{req.covariance} covariance", field_prefix + given[0], needed=needed, available=t)
    if uni.source != "inline" and t > req.lookback:  # inline returns are used as sent
        uni.returns = uni.returns[-req.lookback:]
        uni.dates = uni.dates[-req.lookback:]
    spread = uni.returns.std(axis=0)
    if np.all(spread == 0):
        raise _fail("every asset's returns are constant; nothing to optimize", field_prefix + given[0])
    flat = [s for s, sd in zip(uni.symbols, spread) if sd == 0]
    if flat and req.covariance == "sample":
        raise _fail(f"returns of {', '.join(flat)} never change: the covariance is singular", field_prefix + given[0])
    return uni


def _bounds(value: float | dict[str, float] | None, symbols: list[str], default: float, field: str) -> np.ndarray:
    if value is None:
        return np.full(len(symbols), default)
    if isinstance(value, dict):
        index = set(symbols)
        out = np.full(len(symbols), default)
        pos = {s: i for i, s in enumerate(symbols)}
        for key, v in value.items():
            s = key.strip().upper() if key.strip().upper() in index else key.strip()
            if s not in index:
                raise _fail(f"{key} is not in the universe", f"{field}.{key}")
            out[pos[s]] = v
        return out
    return np.full(len(symbols), float(value))


def build_problem(req: OptimizeRequest, uni: Universe, settings: Settings, *, field_prefix: str = "") -> Problem:
    c = req.constraints
    symbols = uni.symbols
    n = len(symbols)
    cf = field_prefix + "constraints."
    lo = _bounds(c.min_weight, symbols, 0.0 if c.long_only else -1.0, cf + "min_weight")
    hi = _bounds(c.max_weight, symbols, 1.0, cf + "max_weight")
    if c.long_only and (lo < 0).any():
        raise _fail("min_weight below 0 needs long_only=false", cf + "min_weight")
    if (lo > hi + 1e-12).any():
        s = symbols[int(np.argmax(lo - hi))]
        raise _fail(f"min_weight is above max_weight for {s}", cf + "min_weight")
    if hi.sum() < 1 - 1e-9:
        raise _fail(f"max_weight allows at most {hi.sum():.6g} in total across {n} assets, but the weights must "
                    "sum to 1", cf + "max_weight", total=float(hi.sum()))
    if lo.sum() > 1 + 1e-9:
        raise _fail(f"min_weight asks for at least {lo.sum():.6g} in total across {n} assets, but the weights "
                    "must sum to 1", cf + "min_weight", total=float(lo.sum()))
    index = set(symbols)
    views: list[View] = []
    for i, v in enumerate(req.views):
        vf = f"{field_prefix}views[{i}]"
        sym = v.symbol.strip().upper() if v.symbol.strip().upper() in index else v.symbol.strip()
        if sym not in index:
            raise _fail(f"view on {v.symbol}, which is not in the universe", vf + ".symbol")
        other = None
        if v.versus is not None:
            other = v.versus.strip().upper() if v.versus.strip().upper() in index else v.versus.strip()
            if other not in index:
                raise _fail(f"view against {v.versus}, which is not in the universe", vf + ".versus")
            if other == sym:
                raise _fail("a relative view needs two different symbols", vf + ".versus")
        views.append(View(symbol=sym, annual_return=v.expected_return, versus=other))
    prior_weights = None
    if req.model == "black_litterman":
        if not views:
            raise _fail("black_litterman needs at least one view", field_prefix + "views")
        prior = req.prior or ("current" if uni.current_weights else "equal")
        if prior == "current":
            if not uni.current_weights:
                raise _fail("prior=current needs the portfolio_id universe (its current weights)",
                            field_prefix + "prior")
            prior_weights = np.array([uni.current_weights.get(s, 0.0) for s in symbols])
    elif views:
        raise _fail("views are used only by model=black_litterman", field_prefix + "views")
    return Problem(
        symbols=symbols,
        returns=uni.returns,
        periods_per_year=uni.periods_per_year,
        model=req.model,
        objective=req.objective,
        risk_measure=req.risk_measure,
        risk_aversion=req.risk_aversion,
        covariance=req.covariance,
        expected_returns=req.expected_returns,
        ewma_halflife=req.ewma_halflife,
        risk_free_rate=req.risk_free_rate,
        alpha=req.alpha,
        long_only=c.long_only,
        max_short=c.max_short,
        min_weight=lo,
        max_weight=hi,
        target_return=c.target_return,
        target_risk=c.target_risk,
        views=views,
        prior_weights=prior_weights,
        bl_delta=req.bl_delta,
        time_limit=settings.optimizer_timeout * 0.9,  # the solver stops itself before the pool has to
    )


def _universe_info(uni: Universe) -> dict[str, Any]:
    return {"source": uni.source, "symbols": uni.symbols, "observations": int(uni.returns.shape[0]),
            "start": uni.dates[0].isoformat() if uni.dates else None,
            "end": uni.dates[-1].isoformat() if uni.dates else None,
            "periods_per_year": uni.periods_per_year}


async def optimize(ctx: AppContext, user_id: uuid.UUID, req: OptimizeRequest, *, field_prefix: str = "",
                   universe: Universe | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    uni = universe or await build_universe(ctx, user_id, req, field_prefix=field_prefix)
    problem = build_problem(req, uni, ctx.settings, field_prefix=field_prefix)
    result = await service(ctx).run("optimize", problem)
    result["universe"] = _universe_info(uni)
    result["warnings"] = uni.warnings + result.get("warnings", [])
    result["total_ms"] = round((time.perf_counter() - started) * 1000, 3)
    return result


async def frontier(ctx: AppContext, user_id: uuid.UUID, req: FrontierRequest) -> dict[str, Any]:
    started = time.perf_counter()
    uni = await build_universe(ctx, user_id, req)
    problem = build_problem(req, uni, ctx.settings)
    result = await service(ctx).run("frontier", (problem, req.points))
    result["universe"] = _universe_info(uni)
    result["warnings"] = uni.warnings + result.get("warnings", [])
    result["total_ms"] = round((time.perf_counter() - started) * 1000, 3)
    return result


# --- rebalance ----------------------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _decimal_weight(v: float) -> Decimal:
    return Decimal(repr(float(v)))


async def rebalance(ctx: AppContext, user_id: uuid.UUID, req: RebalanceRequest) -> dict[str, Any]:
    from app.market.prices import known_symbols, latest_prices  # noqa: PLC0415 — the market domain

    started = time.perf_counter()
    if not req.min_trade_value.is_finite() or req.min_trade_value < 0:  # NaN first: NaN < 0 raises
        raise _fail("min_trade_value must be a non-negative amount", "min_trade_value")
    view, current_weights = await _portfolio_weights(ctx, req.portfolio_id, user_id)
    holdings = {h.symbol: Decimal(h.quantity) for h in view.holdings if h.quantity != 0}
    warnings: list[str] = []
    optimization: dict[str, Any] | None = None
    if not req.target:
        raise _fail("target is empty: give weights {symbol: weight} or an optimize request", "target")
    if all(_is_number(v) for v in req.target.values()):
        targets: dict[str, Decimal] = {}
        for key, v in req.target.items():
            s = key.strip().upper()
            if not s or not s.isprintable():  # a NUL cannot even be looked up in PostgreSQL
                raise _fail(f"not a ticker symbol: {s!r}", "target")
            if s in targets:
                raise _fail(f"duplicate symbol {s}", f"target.{key}")
            if not math.isfinite(v) or v < 0 or v > 1:
                raise _fail(f"target weight for {s} must be between 0 and 1", f"target.{key}")
            targets[s] = _decimal_weight(v)
        unknown = sorted(set(targets) - set(holdings) - await known_symbols(ctx.db, list(targets)))
        if unknown:
            raise _fail(f"unknown symbol{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}", "target",
                        unknown=unknown)
        total = sum(targets.values(), Decimal(0))
        if total > Decimal("1.000001"):
            raise _fail(f"target weights sum to {total}, more than 1", "target", total=float(total))
    else:
        try:
            opt_req = msgspec.convert(req.target, OptimizeRequest)
        except msgspec.ValidationError as exc:
            msg = str(exc)
            where = msg.rsplit("`$.", 1)[1].split("`", 1)[0] if "`$." in msg else ""
            raise AppError(f"invalid optimize request in target: {msg}", status_code=400,
                           field="target" + (f".{where}" if where else "")) from None
        if opt_req.symbols is None and opt_req.returns is None and opt_req.portfolio_id is None:
            opt_req = msgspec.structs.replace(opt_req, portfolio_id=req.portfolio_id)
        if opt_req.returns is not None:
            raise _fail("a rebalance needs a universe of real symbols: use symbols or portfolio_id",
                        "target.returns")
        optimization = await optimize(ctx, user_id, opt_req, field_prefix="target.")
        targets = {s: _decimal_weight(w) for s, w in optimization["weights"].items() if w > 0}
        # float weights can sum a hair above 1
        total = sum(targets.values(), Decimal(0))
        if total > 1:
            targets = {s: w / total for s, w in targets.items()}
        warnings += [f"optimization: {w}" for w in optimization.get("warnings", [])]
    symbols = sorted(set(holdings) | {s for s, w in targets.items() if w > 0})
    quotes = await latest_prices(ctx, symbols)
    prices: dict[str, Decimal] = {}
    by_holding = {h.symbol: h for h in view.holdings}
    stale: list[str] = []
    for s in symbols:
        q = quotes.get(s)
        if q is not None and q.price > 0:
            prices[s] = Decimal(q.price)
            if q.stale:
                stale.append(s)
        elif s in by_holding and getattr(by_holding[s], "last_price", None):
            prices[s] = Decimal(by_holding[s].last_price)
            stale.append(s)
        else:
            raise _fail(f"no price for {s}", "target", symbol=s)
    if stale:
        warnings.append(f"estimated from the last stored close (no live quote): {', '.join(stale)}")
    try:
        plan = plan_rebalance(holdings=holdings, cash=Decimal(view.cash), prices=prices, target_weights=targets,
                              cash_buffer=_decimal_weight(req.cash_buffer), min_trade_value=req.min_trade_value,
                              fractional=req.fractional)
    except RebalanceError as exc:
        raise _fail(exc.detail, exc.field) from None
    if plan.cash_after < plan.cash_buffer_value:
        warnings.append("cash stays below the buffer: the current position already holds less cash and the "
                        "trades that would free it are below min_trade_value")
    result: dict[str, Any] = {
        "portfolio_id": str(req.portfolio_id),
        "recorded": False,  # the client posts the trades it accepts to the portfolio
        "trades": [{"symbol": t.symbol, "side": t.side, "quantity": t.quantity, "estimated_price": t.price,
                    "estimated_value": t.value} for t in plan.trades],
        "positions": [{"symbol": p.symbol, "quantity_before": p.quantity_before, "quantity_after": p.quantity_after,
                       "target_quantity": p.target_quantity.quantize(Decimal("0.000001")), "price": p.price,
                       "weight_before": p.weight_before, "weight_after": p.weight_after,
                       "target_weight": p.target_weight} for p in plan.positions],
        "resulting_weights": plan.weights_after,
        "cash_weight_after": plan.cash_weight_after,
        "total_value": plan.total_value,
        "cash_before": plan.cash_before,
        "cash_after": plan.cash_after,
        "cash_buffer_value": plan.cash_buffer_value,
        "leftover_cash": plan.cash_after,
        "turnover": plan.turnover,
        "drift_before": plan.drift_before,
        "drift_after": plan.drift_after,
        "fractional": req.fractional,
        "warnings": warnings,
        "total_ms": round((time.perf_counter() - started) * 1000, 3),
    }
    if optimization is not None:
        result["optimization"] = optimization
    return result
