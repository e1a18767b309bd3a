"""Analytics endpoints. Every route needs a bearer token (the auth plugin guards /api/); portfolio routes
also check ownership (someone else's portfolio is a 404, like a missing one)."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Request, get, post, put
from litestar.params import Parameter

from app.analytics import service
from app.analytics.metrics import Metrics
from app.analytics.schemas import ForecastReport, InsightsReport, MetricsRequest, RiskReport, ThresholdsView
from app.auth.models import AuthUser
from app.context import AppContext

TAGS = ["analytics"]


@post("/api/analytics/metrics", status_code=200, tags=TAGS,
      summary="Risk and performance metrics for any return series")
async def series_metrics(data: MetricsRequest, ctx: AppContext) -> Metrics:
    return await service.metrics_for_series(ctx, data)


@get("/api/analytics/portfolio/{portfolio_id:uuid}/risk", tags=TAGS,
     summary="Risk report: metrics, contributions to volatility and VaR, correlation matrix")
async def portfolio_risk(
    request: Request[AuthUser, Any, Any], ctx: AppContext, portfolio_id: uuid.UUID,
    window: str = Parameter(default="1y", description="1y, 3y, 5y or max"),
    benchmark: str = Parameter(default="SPY", max_length=20),
    confidence: float = Parameter(default=0.95, ge=0.5, lt=1.0),
) -> RiskReport:
    return await service.risk_report(ctx, request.user.id, portfolio_id, window=window, benchmark=benchmark,
                                     confidence=confidence)


@get("/api/analytics/portfolio/{portfolio_id:uuid}/forecast", tags=TAGS,
     summary="Next-day and next-month volatility and VaR (EWMA and GARCH(1,1))")
async def portfolio_forecast(
    request: Request[AuthUser, Any, Any], ctx: AppContext, portfolio_id: uuid.UUID,
    window: str = Parameter(default="max", description="1y, 3y, 5y or max: the history the models fit"),
    confidence: float = Parameter(default=0.95, ge=0.5, lt=1.0),
) -> ForecastReport:
    return await service.forecast_report(ctx, request.user.id, portfolio_id, window=window, confidence=confidence)


@get("/api/analytics/portfolio/{portfolio_id:uuid}/insights", tags=TAGS,
     summary="Ranked, explainable findings and a summary paragraph")
async def portfolio_insights(
    request: Request[AuthUser, Any, Any], ctx: AppContext, portfolio_id: uuid.UUID,
    benchmark: str = Parameter(default="SPY", max_length=20),
) -> InsightsReport:
    return await service.insights_report(ctx, request.user.id, portfolio_id, benchmark=benchmark)


@get("/api/analytics/insights/thresholds", tags=TAGS, summary="Your insight thresholds (effective and overrides)")
async def get_thresholds(request: Request[AuthUser, Any, Any], ctx: AppContext) -> ThresholdsView:
    return await service.get_thresholds(ctx, request.user.id)


@put("/api/analytics/insights/thresholds", tags=TAGS,
     summary="Replace your threshold overrides (partial: unspecified values keep their defaults)")
async def put_thresholds(request: Request[AuthUser, Any, Any], ctx: AppContext,
                         data: dict[str, Any]) -> ThresholdsView:
    return await service.put_thresholds(ctx, request.user.id, data)


route_handlers = [series_metrics, portfolio_risk, portfolio_forecast, portfolio_insights, get_thresholds,
                  put_thresholds]
