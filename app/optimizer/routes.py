"""POST /api/optimizer/optimize, /frontier, /rebalance. All need a bearer token (auth domain)."""

from __future__ import annotations

from typing import Any

from litestar import Request, post
from litestar.status_codes import HTTP_200_OK

from app.context import AppContext
from app.optimizer import service
from app.optimizer.schemas import FrontierRequest, OptimizeRequest, RebalanceRequest


@post("/api/optimizer/optimize", status_code=HTTP_200_OK, tags=["optimizer"],
      summary="Optimal weights (mean-variance, Black-Litterman, HRP, risk parity) with their figures")
async def optimize(request: Request[Any, Any, Any], ctx: AppContext, data: OptimizeRequest) -> dict[str, Any]:
    return await service.optimize(ctx, request.user.id, data)


@post("/api/optimizer/frontier", status_code=HTTP_200_OK, tags=["optimizer"],
      summary="N points of the efficient frontier (return, risk, weights)")
async def frontier(request: Request[Any, Any, Any], ctx: AppContext, data: FrontierRequest) -> dict[str, Any]:
    return await service.frontier(ctx, request.user.id, data)


@post("/api/optimizer/rebalance", status_code=HTTP_200_OK, tags=["optimizer"],
      summary="The trades that take a portfolio to target weights (nothing is recorded)")
async def rebalance(request: Request[Any, Any, Any], ctx: AppContext, data: RebalanceRequest) -> dict[str, Any]:
    return await service.rebalance(ctx, request.user.id, data)


route_handlers = [optimize, frontier, rebalance]
