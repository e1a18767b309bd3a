"""Request and response bodies of the analytics API (msgspec)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Literal

import msgspec

from app.analytics.forecast import Forecast
from app.analytics.insights import Finding, InsightThresholds
from app.analytics.metrics import Metrics

MAX_POINTS = 100_000  # ~400 years of daily data; bounds the work one request can ask for

Window = Literal["1y", "3y", "5y", "max"]


class MetricsRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Any return series: simple periodic returns (0.01 = +1 %), oldest first."""

    returns: Annotated[list[float], msgspec.Meta(max_length=MAX_POINTS)]
    benchmark_returns: Annotated[list[float], msgspec.Meta(max_length=MAX_POINTS)] | None = None
    # one date per return (the day it ends) or one more (the first is the start, wealth 1)
    dates: Annotated[list[date], msgspec.Meta(max_length=MAX_POINTS + 1)] | None = None
    # with dates: the benchmark is aligned by date (inner join); without: by position, same length
    benchmark_dates: Annotated[list[date], msgspec.Meta(max_length=MAX_POINTS)] | None = None
    periods_per_year: Annotated[float, msgspec.Meta(gt=0, le=100_000)] = 252
    risk_free_rate: Annotated[float, msgspec.Meta(gt=-1, le=1)] = 0.0  # annual, e.g. 0.04
    confidence: Annotated[float, msgspec.Meta(ge=0.5, lt=1)] = 0.95
    horizon: Annotated[int, msgspec.Meta(ge=1, le=2520)] = 1  # VaR horizon in periods


class HoldingRisk(msgspec.Struct, kw_only=True):
    symbol: str
    weight: float
    sector: str | None
    asset_type: str | None
    marginal_volatility: float
    component_volatility: float
    pct_volatility: float | None
    marginal_var: float
    component_var: float
    pct_var: float | None
    component_cvar: float
    pct_cvar: float | None


class HoldingsRisk(msgspec.Struct, kw_only=True):
    """The current holdings at current weights over the window's common dates (an ex-ante view)."""

    periods: int
    start_date: date | None
    end_date: date | None
    total_volatility: float   # annualized
    total_var: float          # one day, Gaussian
    total_cvar: float         # one day, historical
    holdings: list[HoldingRisk]


class CorrelationMatrix(msgspec.Struct, kw_only=True):
    symbols: list[str]
    matrix: list[list[float | None]]


class RiskReport(msgspec.Struct, kw_only=True):
    portfolio_id: uuid.UUID
    window: str
    benchmark: str
    confidence: float
    as_of: date
    computed_at: datetime
    metrics: Metrics
    contributions: HoldingsRisk | None
    correlation: CorrelationMatrix | None
    notes: list[str] = msgspec.field(default_factory=list)


class ForecastReport(msgspec.Struct, kw_only=True):
    portfolio_id: uuid.UUID
    window: str
    as_of: date
    computed_at: datetime
    forecast: Forecast


class Narrative(msgspec.Struct, kw_only=True):
    text: str
    source: Literal["model", "template"]
    model: str | None = None


class InsightsReport(msgspec.Struct, kw_only=True):
    portfolio_id: uuid.UUID
    as_of: date
    computed_at: datetime
    risk_tolerance: str
    findings: list[Finding]
    narrative: Narrative
    notes: list[str] = msgspec.field(default_factory=list)


class ThresholdsView(msgspec.Struct, kw_only=True):
    effective: InsightThresholds
    overrides: dict
    updated_at: datetime | None = None
