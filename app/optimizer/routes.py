"""POST /api/optimizer/optimize, /frontier, /rebalance. All need a bearer token (auth domain)."""

from __future__ import annotations

import json
from typing import Any

from litestar import Request, Router, post
from litestar.status_codes import HTTP_200_OK

from app.asgi import require_json_body
from app.context import AppContext
from app.errors import Unprocessable
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


class _NotANumber:
    pass


def _find(value: Any, path: str) -> str | None:
    if isinstance(value, _NotANumber):
        return path
    if isinstance(value, dict):
        for k, v in value.items():
            found = _find(v, f"{path}.{k}" if path else str(k))
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _find(v, f"{path}[{i}]")
            if found:
                return found
    return None


async def name_non_finite_numbers(request: Request[Any, Any, Any]) -> None:
    """JSON has no NaN or Infinity, but Python's json.dumps writes them. Instead of a bare "malformed
    JSON" 400, say which field holds one. A byte scan first: bodies without them cost nothing more."""
    body = await request.body()
    # single-byte checks are a memchr (~0.1 ms per MB); the substring searches only run when needed
    if not ((b"N" in body and b"NaN" in body) or (b"I" in body and b"Infinity" in body)):
        return
    try:
        parsed = json.loads(body, parse_constant=lambda _: _NotANumber())
    except ValueError:
        return  # malformed in some other way: the usual 400
    where = _find(parsed, "")
    if where:
        raise Unprocessable(f"{where} is NaN or infinite: send finite numbers (inline returns may not have gaps)",
                            field=where)


async def before_optimizer_request(request: Request[Any, Any, Any]) -> None:
    # A router's before_request replaces the app's: run the app-wide Content-Type check here too.
    await require_json_body(request)
    await name_non_finite_numbers(request)


route_handlers = [Router("/", route_handlers=[optimize, frontier, rebalance],
                         before_request=before_optimizer_request)]
