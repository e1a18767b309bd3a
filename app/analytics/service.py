"""Analytics service: loads a portfolio's series and market data, runs the pure maths off the event loop,
caches results per portfolio until its ledger or the market day changes."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import httpx
import msgspec
import numpy as np

from app.analytics import forecast as fc
from app.analytics import insights as ins
from app.analytics import metrics as mt
from app.analytics.narrative import model_configured, write_narrative
from app.analytics.returns import EMPTY, Closes, aligned_matrix, close_returns
from app.analytics.schemas import (
    CorrelationMatrix,
    ForecastReport,
    HoldingRisk,
    HoldingsRisk,
    InsightsReport,
    MetricsRequest,
    RiskReport,
    ThresholdsView,
)
from app.cache import CacheUnavailable
from app.context import AppContext
from app.db import sql_file
from app.errors import AppError, Unprocessable
from app.memo import TTLMemo

log = logging.getLogger("app.analytics")

CACHE_TTL = 26 * 3600.0   # a market day, plus slack; keys also change with the ledger version and the day
CACHE_VERSION = 1         # bump when a cached body's shape changes
WINDOW_DAYS = {"1y": 365, "3y": 3 * 365 + 1, "5y": 5 * 365 + 1, "max": None}
INSIGHTS_WINDOW = "1y"
CLOSE_LOOKBACK = timedelta(days=10)  # fetch closes from a bit before the window so its first day has a return

T = TypeVar("T")


def _sql() -> dict[str, str]:
    return sql_file("analytics")


def metrics_error(exc: mt.MetricsError) -> Unprocessable:
    """422 naming the input and, for too little history, how much is needed."""
    if isinstance(exc, mt.InsufficientData):
        return Unprocessable(exc.message, field=exc.field, required_periods=exc.needed, available_periods=exc.got)
    return Unprocessable(exc.message, field=exc.field)


# --- service state (for /api/system/status) ----------------------------------------------------------

@dataclass
class AnalyticsService:
    http: httpx.AsyncClient | None = None
    counters: dict[str, int] = field(default_factory=lambda: {
        "cache_hits": 0, "cache_misses": 0, "reports": 0, "narrative_model": 0, "narrative_template": 0})
    compute_ms_last: float = 0.0

    def status(self) -> dict[str, Any]:
        return {"state": "ok", **self.counters, "compute_ms_last": round(self.compute_ms_last, 1),
                "narrative_model_configured": self.http is not None}


def _service(ctx: AppContext) -> AnalyticsService:
    svc = ctx.services.get("analytics")
    if svc is None:  # app started without the lifespan (unit-style use)
        svc = ctx.services["analytics"] = AnalyticsService()
    return svc


async def _off_loop(svc: AnalyticsService, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    started = time.perf_counter()
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    finally:
        svc.compute_ms_last = (time.perf_counter() - started) * 1000


_INFLIGHT: dict[str, asyncio.Future[Any]] = {}


async def _cached(ctx: AppContext, key: str, type_: type[T], compute: Callable[[], Awaitable[T]]) -> T:
    """The cached value, or compute it once: concurrent misses for one key in this process share a
    single computation (a dashboard asks for risk, forecast and insights at the same moment)."""
    svc = _service(ctx)
    try:
        raw = await ctx.cache.get(key)
    except CacheUnavailable:
        raw = None
    if raw is not None:
        try:
            value = msgspec.json.decode(raw, type=type_)
            svc.counters["cache_hits"] += 1
            return value
        except msgspec.DecodeError:
            log.warning("dropping an undecodable cache entry", extra={"key": key})
    pending = _INFLIGHT.get(key)
    if pending is not None:
        try:
            value = await asyncio.shield(pending)
            svc.counters["cache_hits"] += 1
            return value
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not pending.cancelled() or (task is not None and task.cancelling()):
                raise
            # the computing request went away (client disconnected): compute it here instead
    svc.counters["cache_misses"] += 1
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    _INFLIGHT[key] = future
    try:
        value = await compute()
    except Exception as exc:
        future.set_exception(exc)
        future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
        raise
    except BaseException:
        future.cancel()
        raise
    else:
        future.set_result(value)
    finally:
        if _INFLIGHT.get(key) is future:
            del _INFLIGHT[key]
    try:
        await ctx.cache.set(key, msgspec.json.encode(value), ttl=CACHE_TTL)
    except CacheUnavailable:
        pass  # the answer is still right, only not cached
    return value


def _today() -> date:
    return datetime.now(UTC).date()


async def _cache_key(ctx: AppContext, kind: str, portfolio_id: uuid.UUID, *params: object) -> str:
    from app.portfolio.service import ledger_version

    version = await ledger_version(ctx, portfolio_id)
    tail = ":".join(str(p) for p in params)
    return f"analytics:v{CACHE_VERSION}:{kind}:{portfolio_id}:l{version}:{_today().isoformat()}:{tail}"


# --- POST /api/analytics/metrics ----------------------------------------------------------------------

async def metrics_for_series(ctx: AppContext, body: MetricsRequest) -> mt.Metrics:
    try:
        return await _off_loop(
            _service(ctx), mt.compute_metrics, body.returns, dates=body.dates,
            benchmark_returns=body.benchmark_returns, benchmark_dates=body.benchmark_dates,
            periods_per_year=body.periods_per_year, risk_free_rate=body.risk_free_rate,
            confidence=body.confidence, horizon=body.horizon)
    except mt.MetricsError as exc:
        raise metrics_error(exc) from None


# --- loading a portfolio -------------------------------------------------------------------------------

@dataclass
class HoldingIn:
    symbol: str
    weight: float
    market_value: float | None
    sector: str | None = None
    asset_type: str | None = None


@dataclass
class PortfolioData:
    series_dates: list[date]
    series_returns: list[float]
    series_values: list[float]
    holdings: list[HoldingIn]
    cash_weight: float
    total_value: float
    closes: dict[str, Closes]
    benchmark: str


def window_start(window: str, end: date | None = None) -> date | None:
    """First day of a window ending at ``end`` (the portfolio's latest market date); None for max."""
    days = WINDOW_DAYS.get(window, -1)
    if days == -1:
        raise AppError("window must be one of 1y, 3y, 5y, max", status_code=400, field="window")
    return None if days is None else (end or _today()) - timedelta(days=days)


@dataclass
class WindowSeries:
    dates: list[date]
    returns: list[float]
    values: list[float]


SERIES_MEMO_SIZE = 16
_SERIES: TTLMemo[tuple[uuid.UUID, int, date], Any] = TTLMemo(size=SERIES_MEMO_SIZE)


async def _full_series(ctx: AppContext, portfolio_id: uuid.UUID, user_id: uuid.UUID) -> Any:
    """The portfolio's whole daily series, memoized per process by (portfolio, ledger version, day):
    one insights request needs it three times (risk, forecast, fee drag) and rebuilding ten years of
    ledger is the slowest step. Callers have checked ownership already."""
    from app.portfolio.service import ledger_version, portfolio_daily_series

    key = (portfolio_id, await ledger_version(ctx, portfolio_id), _today())
    hit = _SERIES.get(key)
    if hit is not None:
        return hit
    series = await portfolio_daily_series(ctx, portfolio_id, user_id)
    _SERIES.put(key, series)
    return series


async def window_series(ctx: AppContext, portfolio_id: uuid.UUID, user_id: uuid.UUID, window: str) -> WindowSeries:
    """The portfolio's daily series over the window, on market days only (days without closes are
    linked into the next market day: `fold_to_market_days`). Windows end at the series' last date
    (the latest market date with closes for its holdings), not at today, so a stale data source
    still gives a full window."""
    from app.portfolio.performance import fold_to_market_days

    series = await _full_series(ctx, portfolio_id, user_id)
    dates, day_values, returns = fold_to_market_days(series.dates, series.values, series.returns,
                                                     series.market_days)
    values = [float(v) for v in day_values]
    if dates:
        start = window_start(window, dates[-1])
        if start is not None:
            i0 = next((i for i, d in enumerate(dates) if d >= start), len(dates))
            dates, returns, values = dates[i0:], returns[i0:], values[i0:]
    return WindowSeries(dates=dates, returns=returns, values=values)


def _f(x: Decimal | float | None) -> float | None:
    return None if x is None else float(x)


async def load_portfolio(ctx: AppContext, portfolio_id: uuid.UUID, user_id: uuid.UUID, window: str,
                         benchmark: str) -> PortfolioData:
    from app.portfolio.service import get_holdings

    series = await window_series(ctx, portfolio_id, user_id, window)
    view = await get_holdings(ctx, portfolio_id, user_id)
    total = float(view.total_value) if view.total_value else 0.0
    holdings: list[HoldingIn] = []
    for h in view.holdings:
        if not h.quantity:
            continue
        mv = _f(h.market_value)
        holdings.append(HoldingIn(symbol=h.symbol, market_value=mv,
                                  weight=(mv / total) if (mv is not None and total > 0) else 0.0))
    symbols = sorted({h.symbol for h in holdings} | {benchmark})
    if holdings:
        rows = await ctx.db.fetch(_sql()["asset_info"], [h.symbol for h in holdings])
        info = {r["symbol"]: r for r in rows}
        for h in holdings:
            if h.symbol in info:
                h.sector = info[h.symbol]["sector"]
                h.asset_type = info[h.symbol]["type"]
    first = series.dates[0] if series.dates else None
    closes = await load_closes(ctx, symbols, None if first is None else first - CLOSE_LOOKBACK)
    if closes.get(benchmark, EMPTY).ords.size == 0:
        raise Unprocessable(f"no daily closes for benchmark {benchmark!r}; use a symbol with price history "
                            "such as SPY", field="benchmark")
    cash = float(view.cash) if view.cash is not None else 0.0
    return PortfolioData(
        series_dates=series.dates, series_returns=series.returns, series_values=series.values, holdings=holdings,
        cash_weight=(cash / total) if total > 0 else 0.0, total_value=total, closes=closes, benchmark=benchmark)


async def load_closes(ctx: AppContext, symbols: list[str], start: date | None) -> dict[str, Closes]:
    """Daily closes straight from the market's ``daily_bars`` (which the market writer keeps current for
    today, like ``daily_closes``), converted to float in PostgreSQL and delivered as arrays: ~25× fewer
    Python objects than ``(date, Decimal)`` pairs for 50 symbols × 10 years."""
    lo = None if start is None else datetime(start.year, start.month, start.day, tzinfo=UTC)
    rows = await ctx.db.fetch(_sql()["daily_closes"], symbols, lo)
    return {r["symbol"]: Closes(np.asarray(r["ords"], dtype=np.int64), np.asarray(r["closes"], dtype=np.float64))
            for r in rows}


# --- the risk report (pure, runs in a thread) -------------------------------------------------------------

def compute_risk(data: PortfolioData, *, confidence: float, window: str, portfolio_id: uuid.UUID) -> RiskReport:
    """Metrics of the time-weighted series, benchmark-relative figures, and per-holding contributions."""
    notes: list[str] = []
    returns = np.asarray(data.series_returns, dtype=np.float64)
    need = mt.required_periods(confidence)
    if returns.size < need:
        raise mt.InsufficientData(need, int(returns.size), "daily returns of portfolio history",
                                  why=f"the {window} window has {returns.size}; trade history must span at least "
                                      f"{need + 1} market days")
    b_dates, b_returns = close_returns(data.closes.get(data.benchmark, EMPTY))
    try:
        metrics = mt.compute_metrics(returns, dates=data.series_dates, benchmark_returns=b_returns,
                                     benchmark_dates=b_dates, confidence=confidence)
    except mt.InsufficientData as exc:
        if exc.field != "benchmark_returns":
            raise
        # the portfolio's own figures stand; only the benchmark-relative ones are left out
        metrics = mt.compute_metrics(returns, dates=data.series_dates, confidence=confidence)
        notes.append(f"benchmark {data.benchmark}: {exc.message}; benchmark-relative figures left out")
    if returns.size < mt.DEFAULT_PERIODS_PER_YEAR:
        notes.append(f"annualized figures extrapolate {returns.size} daily returns (less than a year)")
    contrib: HoldingsRisk | None = None
    corr: CorrelationMatrix | None = None
    held = [h for h in data.holdings if h.weight > 0]
    missing = [h.symbol for h in data.holdings if h.weight <= 0]
    if missing:
        notes.append(f"no current price for {', '.join(missing)}: left out of contributions")
    if held:
        symbols = [h.symbol for h in held]
        first_return_day = data.series_dates[1] if len(data.series_dates) > 1 else None
        days, mat = aligned_matrix(data.closes, symbols, start=first_return_day)
        if mat.shape[0] >= mt.MIN_PERIODS:
            c = mt.contributions([h.weight for h in held], mat, confidence)
            contrib = HoldingsRisk(
                periods=int(mat.shape[0]), start_date=days[0], end_date=days[-1],
                total_volatility=c.total_volatility, total_var=c.total_var, total_cvar=c.total_cvar,
                holdings=[HoldingRisk(
                    symbol=h.symbol, weight=h.weight, sector=h.sector, asset_type=h.asset_type,
                    marginal_volatility=c.marginal_volatility[i], component_volatility=c.component_volatility[i],
                    pct_volatility=c.pct_volatility[i], marginal_var=c.marginal_var[i],
                    component_var=c.component_var[i], pct_var=c.pct_var[i], component_cvar=c.component_cvar[i],
                    pct_cvar=c.pct_cvar[i]) for i, h in enumerate(held)])
            corr = CorrelationMatrix(symbols=symbols, matrix=mt.correlation_matrix(mat))
        else:
            notes.append(f"contributions need {mt.MIN_PERIODS} days on which every current holding has a "
                         f"return; the window has {mat.shape[0]}")
    return RiskReport(portfolio_id=portfolio_id, window=window, benchmark=data.benchmark, confidence=confidence,
                      as_of=data.series_dates[-1], computed_at=datetime.now(UTC), metrics=metrics,
                      contributions=contrib, correlation=corr, notes=notes)


def _check_confidence(confidence: float) -> None:
    if not (0.5 <= confidence < 1.0) or not math.isfinite(confidence):
        raise AppError("confidence must be in [0.5, 1), e.g. 0.95", status_code=400, field="confidence")


def _check_benchmark(benchmark: str) -> str:
    b = benchmark.strip().upper()
    if not b or len(b) > 20 or not all(ch.isalnum() or ch in ".-^:" for ch in b):
        raise AppError("benchmark must be a ticker symbol such as SPY", status_code=400, field="benchmark")
    return b


async def risk_report(ctx: AppContext, user_id: uuid.UUID, portfolio_id: uuid.UUID, *, window: str = "1y",
                      benchmark: str = "SPY", confidence: float = 0.95) -> RiskReport:
    from app.portfolio.service import get_owned_portfolio

    _check_confidence(confidence)
    benchmark = _check_benchmark(benchmark)
    window_start(window)
    await get_owned_portfolio(ctx.db, portfolio_id, user_id)
    key = await _cache_key(ctx, "risk", portfolio_id, window, benchmark, confidence)

    async def compute() -> RiskReport:
        data = await load_portfolio(ctx, portfolio_id, user_id, window, benchmark)
        svc = _service(ctx)
        svc.counters["reports"] += 1
        try:
            return await _off_loop(svc, compute_risk, data, confidence=confidence, window=window,
                                   portfolio_id=portfolio_id)
        except mt.MetricsError as exc:
            raise metrics_error(exc) from None

    return await _cached(ctx, key, RiskReport, compute)


async def forecast_report(ctx: AppContext, user_id: uuid.UUID, portfolio_id: uuid.UUID, *, window: str = "max",
                          confidence: float = 0.95) -> ForecastReport:
    from app.portfolio.service import get_owned_portfolio

    _check_confidence(confidence)
    window_start(window)
    await get_owned_portfolio(ctx.db, portfolio_id, user_id)
    key = await _cache_key(ctx, "forecast", portfolio_id, window, confidence)

    async def compute() -> ForecastReport:
        series = await window_series(ctx, portfolio_id, user_id, window)
        svc = _service(ctx)
        try:
            out = await _off_loop(svc, fc.forecast, series.returns, confidence)
        except mt.MetricsError as exc:
            raise metrics_error(exc) from None
        return ForecastReport(portfolio_id=portfolio_id, window=window, as_of=series.dates[-1],
                              computed_at=datetime.now(UTC), forecast=out)

    return await _cached(ctx, key, ForecastReport, compute)


# --- insights ---------------------------------------------------------------------------------------

async def load_thresholds(ctx: AppContext, user_id: uuid.UUID) -> tuple[dict, datetime | None]:
    row = await ctx.db.fetchrow(_sql()["get_thresholds"], user_id)
    if row is None:
        return {}, None
    return dict(row["thresholds"] or {}), row["updated_at"]


async def get_thresholds(ctx: AppContext, user_id: uuid.UUID) -> ThresholdsView:
    stored, updated = await load_thresholds(ctx, user_id)
    try:
        effective = ins.merge_thresholds(stored)
    except msgspec.ValidationError:  # a default changed under an old override: show defaults, keep the row
        log.warning("stored insight thresholds no longer valid", extra={"user_id": str(user_id)})
        effective = ins.InsightThresholds()
    return ThresholdsView(effective=effective, overrides=stored, updated_at=updated)


async def put_thresholds(ctx: AppContext, user_id: uuid.UUID, overrides: dict) -> ThresholdsView:
    try:
        effective = ins.merge_thresholds(overrides)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        where = msg.rsplit("`$.", 1)[1].split("`", 1)[0] if "`$." in msg else (
            msg.split("field `", 1)[1].split("`", 1)[0] if "field `" in msg else None)
        raise AppError(f"invalid thresholds: {msg}", status_code=400, field=where) from None
    row = await ctx.db.fetchrow(_sql()["put_thresholds"], user_id, overrides)
    assert row is not None
    return ThresholdsView(effective=effective, overrides=dict(row["thresholds"]), updated_at=row["updated_at"])


def _pairs(corr: CorrelationMatrix | None) -> list[ins.CorrelatedPair]:
    if corr is None:
        return []
    out = []
    n = len(corr.symbols)
    for i in range(n):
        for j in range(i + 1, n):
            c = corr.matrix[i][j]
            if c is not None:
                out.append(ins.CorrelatedPair(corr.symbols[i], corr.symbols[j], float(c)))
    return out


def _headline(report: RiskReport | None) -> dict[str, str]:
    if report is None:
        return {}
    m = report.metrics
    h = {"volatility": ins.pct(m.volatility), "max_drawdown": ins.pct(-m.drawdown.max_drawdown),
         "cagr": ins.pct(m.cagr)}
    if m.sharpe is not None:
        h["sharpe"] = f"{m.sharpe:.2f}"
    if m.benchmark is not None and m.benchmark.beta is not None:
        h["beta"] = f"{m.benchmark.beta:.2f}"
    return h


async def _fees_12m(ctx: AppContext, portfolio_id: uuid.UUID) -> float | None:
    try:
        v = await ctx.db.fetchval(_sql()["fees_12m"], portfolio_id)
    except Exception as exc:  # noqa: BLE001 - a schema mismatch must not take insights down
        log.warning("fee query failed: %s", exc)
        return None
    return None if v is None else float(v)


async def insights_report(ctx: AppContext, user_id: uuid.UUID, portfolio_id: uuid.UUID,
                          benchmark: str = "SPY") -> InsightsReport:
    from app.market.prices import latest_prices
    from app.portfolio.service import get_holdings, get_owned_portfolio

    benchmark = _check_benchmark(benchmark)
    await get_owned_portfolio(ctx.db, portfolio_id, user_id)
    stored, _ = await load_thresholds(ctx, user_id)
    tolerance = await ctx.db.fetchval(_sql()["risk_tolerance"], user_id) or "moderate"
    digest = hashlib.sha256(msgspec.json.encode(stored, order="sorted")).hexdigest()[:12]
    key = await _cache_key(ctx, "insights", portfolio_id, benchmark, tolerance, digest,
                           int(model_configured(ctx.settings)))

    async def compute() -> InsightsReport:
        try:
            thresholds = ins.merge_thresholds(stored)
        except msgspec.ValidationError:
            thresholds = ins.InsightThresholds()
        notes: list[str] = []
        report: RiskReport | None = None
        forecast: ForecastReport | None = None
        try:
            report = await risk_report(ctx, user_id, portfolio_id, window=INSIGHTS_WINDOW, benchmark=benchmark)
        except Unprocessable as exc:
            notes.append(f"history-based checks skipped: {exc.detail}")
        if report is not None:
            try:
                forecast = await forecast_report(ctx, user_id, portfolio_id)
            except Unprocessable as exc:
                notes.append(f"volatility regime check skipped: {exc.detail}")
        view = await get_holdings(ctx, portfolio_id, user_id)
        total = float(view.total_value) if view.total_value else 0.0
        held = [h for h in view.holdings if h.quantity]
        symbols = [h.symbol for h in held]
        rows = await ctx.db.fetch(_sql()["asset_info"], symbols) if symbols else []
        info = {r["symbol"]: r for r in rows}
        prices = await latest_prices(ctx, symbols) if symbols else {}
        now = datetime.now(UTC)
        facts_holdings = []
        for h in held:
            mv = _f(h.market_value)
            p = prices.get(h.symbol)
            age = None if p is None else max(0.0, (now - p.as_of).total_seconds() / 86400)
            a = info.get(h.symbol)
            facts_holdings.append(ins.HoldingFacts(
                symbol=h.symbol, weight=(mv / total) if (mv is not None and total > 0) else 0.0,
                sector=a["sector"] if a else None, asset_type=a["type"] if a else None, price_age_days=age))
        m = report.metrics if report else None
        vol_f = vol_lr = None
        model = None
        if forecast is not None:
            chosen = forecast.forecast.garch or forecast.forecast.ewma
            model = chosen.model
            vol_f, vol_lr = chosen.annualized_volatility, chosen.long_run_annualized_volatility
        year = await window_series(ctx, portfolio_id, user_id, "1y")
        avg_value = sum(year.values) / len(year.values) if year.values else (total or None)
        facts = ins.InsightFacts(
            holdings=facts_holdings, cash_weight=(float(view.cash) / total) if total > 0 else 0.0,
            risk_tolerance=tolerance, benchmark=benchmark,
            beta=m.benchmark.beta if m and m.benchmark else None,
            current_drawdown=m.drawdown.current_drawdown if m else None,
            drawdown_peak_date=(m.drawdown.current_peak_date.isoformat() if m and m.drawdown.current_peak_date
                                else None),
            forecast_volatility=vol_f, long_run_volatility=vol_lr, forecast_model=model,
            pairs=_pairs(report.correlation if report else None),
            fees_12m=await _fees_12m(ctx, portfolio_id), average_value_12m=avg_value)
        findings = ins.evaluate(facts, thresholds)
        svc = _service(ctx)
        narrative = await write_narrative(ctx.settings, svc.http, findings, holdings=len(held),
                                          headline=_headline(report))
        svc.counters["narrative_model" if narrative.source == "model" else "narrative_template"] += 1
        return InsightsReport(portfolio_id=portfolio_id, as_of=report.as_of if report else _today(),
                              computed_at=datetime.now(UTC), risk_tolerance=tolerance, findings=findings,
                              narrative=narrative, notes=notes)

    return await _cached(ctx, key, InsightsReport, compute)
