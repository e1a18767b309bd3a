"""Request bodies of /api/optimizer/* (msgspec; unknown fields are refused)."""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

Model = Literal["mean_variance", "black_litterman", "hrp", "risk_parity"]
Objective = Literal["max_sharpe", "min_risk", "max_return", "utility"]
RiskMeasure = Literal["variance", "cvar", "cdar", "mad", "max_drawdown"]
Covariance = Literal["sample", "ledoit_wolf", "oas"]
ExpectedReturns = Literal["historical", "ewma"]
Weight = Annotated[float, Meta(ge=-1.0, le=1.0)]


class ViewIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Absolute: `symbol` returns `expected_return` a year. Relative (with `versus`): `symbol` beats
    `versus` by `expected_return` a year."""

    symbol: str
    expected_return: Annotated[float, Meta(ge=-1.0, le=5.0)]
    versus: str | None = None


class ConstraintsIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    long_only: bool = True
    max_short: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.2  # total short weight when long_only is false
    min_weight: Weight | dict[str, Weight] | None = None  # one bound for all, or per symbol
    max_weight: Weight | dict[str, Weight] | None = None
    target_return: Annotated[float, Meta(ge=-1.0, le=10.0)] | None = None  # annual
    # annual volatility for variance; per-period CVaR / MAD; CDaR / max drawdown as a fraction
    target_risk: Annotated[float, Meta(gt=0.0, le=10.0)] | None = None


class OptimizeRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # the universe: exactly one of these
    symbols: list[str] | None = None
    portfolio_id: uuid.UUID | None = None
    returns: dict[str, list[float | None]] | None = None  # inline simple returns per symbol …
    dates: list[date] | None = None  # … on these dates (same length, increasing)

    model: Model = "mean_variance"
    objective: Objective = "max_sharpe"
    risk_measure: RiskMeasure = "variance"
    risk_aversion: Annotated[float, Meta(gt=0.0, le=1000.0)] = 2.0  # for objective=utility
    lookback: Annotated[int, Meta(ge=2, le=20_000)] = 756  # daily returns used from our history
    covariance: Covariance = "sample"
    expected_returns: ExpectedReturns = "historical"
    ewma_halflife: Annotated[float, Meta(gt=0.0, le=10_000.0)] = 63.0  # periods, for expected_returns=ewma
    risk_free_rate: Annotated[float, Meta(ge=-0.5, le=1.0)] = 0.0  # annual
    alpha: Annotated[float, Meta(gt=0.0, lt=0.5)] = 0.05  # CVaR / CDaR tail
    constraints: ConstraintsIn = msgspec.field(default_factory=ConstraintsIn)
    views: list[ViewIn] = msgspec.field(default_factory=list)  # Black-Litterman
    prior: Literal["current", "equal"] | None = None  # Black-Litterman market weights; default current if known
    bl_delta: Annotated[float, Meta(gt=0.0, le=1000.0)] | None = None  # None → implied by the prior


class FrontierRequest(OptimizeRequest, forbid_unknown_fields=True, kw_only=True):
    points: Annotated[int, Meta(ge=2, le=100)] = 20


class RebalanceRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    portfolio_id: uuid.UUID
    # {symbol: weight, …} (the rest stays in cash), or an optimize request (its universe defaults to
    # the portfolio's holdings)
    target: dict[str, Any]
    cash_buffer: Annotated[float, Meta(ge=0.0, lt=1.0)] = 0.0  # fraction of the portfolio value kept in cash
    min_trade_value: Decimal = Decimal(0)  # skip trades worth less (checked: not negative)
    fractional: bool = False
