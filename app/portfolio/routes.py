"""HTTP routes under /api/portfolio. Every route checks that the portfolio belongs to the caller
(another user's portfolio id answers 404, like one that does not exist)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, delete, get, patch, post
from litestar.params import Parameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from app.auth.models import AuthUser
from app.context import AppContext
from app.errors import AppError
from app.portfolio import importer, service
from app.portfolio.schemas import (HoldingsOut, ImportReport, PerformanceOut, PortfolioIn, PortfolioOut, PortfolioPatch,
                                   RowError, SummaryOut, TransactionIn, TransactionPage)

AuthRequest = Request[AuthUser, Any, Any]
TAGS = ["portfolio"]


@get("/api/portfolio", tags=TAGS, summary="The caller's portfolios")
async def list_portfolios(request: AuthRequest, ctx: AppContext) -> list[PortfolioOut]:
    return await service.list_portfolios(ctx, request.user.id)


@post("/api/portfolio", tags=TAGS, status_code=HTTP_201_CREATED, summary="Create a portfolio")
async def create_portfolio(request: AuthRequest, ctx: AppContext, data: PortfolioIn) -> PortfolioOut:
    return await service.create_portfolio(ctx, request.user.id, data)


@get("/api/portfolio/{portfolio_id:uuid}", tags=TAGS, summary="One portfolio")
async def get_portfolio(request: AuthRequest, ctx: AppContext, portfolio_id: uuid.UUID) -> PortfolioOut:
    return service.portfolio_out(await service.get_owned_portfolio(ctx.db, portfolio_id, request.user.id))


@patch("/api/portfolio/{portfolio_id:uuid}", tags=TAGS,
       summary="Rename, or change the cost-basis method (the ledger is recomputed)")
async def patch_portfolio(request: AuthRequest, ctx: AppContext, portfolio_id: uuid.UUID,
                          data: PortfolioPatch) -> PortfolioOut:
    return await service.update_portfolio(ctx, portfolio_id, request.user.id, data)


@delete("/api/portfolio/{portfolio_id:uuid}", tags=TAGS, status_code=HTTP_204_NO_CONTENT,
        summary="Delete a portfolio and its ledger")
async def delete_portfolio(request: AuthRequest, ctx: AppContext, portfolio_id: uuid.UUID) -> None:
    await service.delete_portfolio(ctx, portfolio_id, request.user.id)


@post("/api/portfolio/{portfolio_id:uuid}/transactions", tags=TAGS, status_code=HTTP_201_CREATED,
      summary="Record a transaction (addTrade); send an Idempotency-Key header to make retries safe")
async def add_transaction(request: AuthRequest, ctx: AppContext, portfolio_id: uuid.UUID, data: TransactionIn,
                          idempotency_key: Annotated[str | None, Parameter(header="Idempotency-Key")] = None
                          ) -> Response[bytes]:
    posted = await service.add_transaction(ctx, portfolio_id, request.user.id, data, idempotency_key)
    headers = {"Idempotent-Replayed": "true"} if posted.replayed else {}
    return Response(posted.body, status_code=posted.status, media_type="application/json", headers=headers)


def _bound(value: str | None, field: str, end: bool) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            ts = datetime(d.year, d.month, d.day, tzinfo=UTC)
            return ts + timedelta(days=1) if end else ts  # `to` is inclusive of that day
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
        # In UTC here, not in the driver: 9999-12-31T23:59-05:00 is past year 9999 in UTC.
        return ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)
    except ValueError:
        raise AppError(f"{field} must be YYYY-MM-DD or an ISO 8601 date-time", field=field) from None
    except OverflowError:  # the day after 9999-12-31, or an offset that leaves years 1–9999
        raise AppError(f"{field} is out of range", field=field) from None


@get("/api/portfolio/{portfolio_id:uuid}/transactions", tags=TAGS,
     summary="The ledger, newest first, filtered; follow next_cursor for the next page")
async def list_transactions(
    request: AuthRequest, ctx: AppContext, portfolio_id: uuid.UUID,
    type: Annotated[str | None, Parameter(query="type")] = None,
    symbol: Annotated[str | None, Parameter(query="symbol")] = None,
    date_from: Annotated[str | None, Parameter(query="from")] = None,
    date_to: Annotated[str | None, Parameter(query="to")] = None,
    limit: Annotated[str, Parameter(query="limit")] = "100",
    cursor: Annotated[str | None, Parameter(query="cursor")] = None,
) -> TransactionPage:
    try:
        n = int(limit)
    except ValueError:
        raise AppError("limit must be an integer", field="limit") from None
    return await service.list_transactions(ctx, portfolio_id, request.user.id, type=type, symbol=symbol,
                                           start=_bound(date_from, "from", False), end=_bound(date_to, "to", True),
                                           limit=n, cursor=cursor)


@delete("/api/portfolio/{portfolio_id:uuid}/transactions/{tx_id:uuid}", tags=TAGS, status_code=HTTP_204_NO_CONTENT,
        summary="Delete a transaction; what follows it is recomputed (409 if that makes a later sale impossible)")
async def delete_transaction(request: AuthRequest, ctx: AppContext, portfolio_id: uuid.UUID, tx_id: uuid.UUID) -> None:
    await service.delete_transaction(ctx, portfolio_id, request.user.id, tx_id)


@get("/api/portfolio/{portfolio_id:uuid}/holdings", tags=TAGS, summary="Open positions at current prices")
async def holdings(request: AuthRequest, ctx: AppContext, portfolio_id: uuid.UUID) -> HoldingsOut:
    return await service.holdings_out(ctx, portfolio_id, request.user.id)


@get("/api/portfolio/{portfolio_id:uuid}/summary", tags=TAGS,
     summary="Total value, cash, P&L (unrealized, realized, today), total return, top positions")
async def summary(request: AuthRequest, ctx: AppContext, portfolio_id: uuid.UUID) -> SummaryOut:
    return await service.summary(ctx, portfolio_id, request.user.id)


@get("/api/portfolio/{portfolio_id:uuid}/performance", tags=TAGS,
     summary="Daily values, net contributions, time-weighted and money-weighted (XIRR) return, benchmark")
async def performance(request: AuthRequest, ctx: AppContext, portfolio_id: uuid.UUID,
                      range: Annotated[str, Parameter(query="range")] = "1y",
                      benchmark: Annotated[str | None, Parameter(query="benchmark")] = "SPY") -> PerformanceOut:
    return await service.performance(ctx, portfolio_id, request.user.id, range, benchmark or None)


async def _upload(request: Request[Any, Any, Any], limit: int) -> tuple[bytes, str]:
    """The uploaded file: a multipart `file` field, or the raw body (text/csv or application/json)."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + 64 * 1024:
        raise AppError(f"the file is larger than {limit} bytes", status_code=413, field="file")
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/form-data"):
        if not (length and length.isdigit()):  # the form parser reads everything: know the size first
            raise AppError("a multipart upload needs a Content-Length", status_code=411, field="file")
        form = await request.form()
        upload = form.get("file")
        if upload is None or not hasattr(upload, "read"):
            raise AppError("send the CSV in a multipart field named file", field="file")
        data = await upload.read()
        name = (getattr(upload, "filename", "") or "").lower()
        kind = "json" if name.endswith(".json") or "json" in (getattr(upload, "content_type", "") or "") else "csv"
    else:
        data = b""
        async for chunk in request.stream():
            data += chunk
            if len(data) > limit:
                raise AppError(f"the file is larger than {limit} bytes", status_code=413, field="file")
        kind = "json" if "json" in ctype else "csv"
    if len(data) > limit:
        raise AppError(f"the file is larger than {limit} bytes", status_code=413, field="file")
    return data, kind


@post("/api/portfolio/{portfolio_id:uuid}/import", tags=TAGS, status_code=200, request_max_body_size=None,
      summary="Import transactions from CSV (or JSON as exported); dry_run=true only reports; all-or-nothing")
async def import_transactions(request: AuthRequest, ctx: AppContext, portfolio_id: uuid.UUID,
                              dry_run: Annotated[str, Parameter(query="dry_run")] = "false") -> Response[ImportReport]:
    dry = dry_run.strip().lower() in ("1", "true", "yes")
    if dry_run.strip().lower() not in ("1", "true", "yes", "0", "false", "no", ""):
        raise AppError("dry_run must be true or false", field="dry_run")
    portfolio = await service.get_owned_portfolio(ctx.db, portfolio_id, request.user.id)
    data, kind = await _upload(request, ctx.settings.portfolio_import_max_bytes)
    max_rows = ctx.settings.portfolio_import_max_rows
    try:
        if kind == "json":
            raws = importer.read_json(data, max_rows)
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise importer.ImportFormatError("the file must be UTF-8 text") from None
            raws = importer.read_csv(text, max_rows)
    except importer.ImportFormatError as exc:
        status = 413 if "more than" in exc.message else 400
        raise AppError(exc.message, status_code=status, field=exc.field) from None
    total_rows = len(raws)
    raws, errors = importer.split_errors(raws)
    entries, bad = importer.check_rows(raws, base_currency=portfolio.base_currency, now=datetime.now(UTC))
    errors.extend(bad)
    symbols = sorted({e.symbol for _, e in entries if e.symbol})
    currencies = await service._asset_currencies(ctx.db, symbols)
    from app.portfolio.entries import check_symbols

    for k, errs in check_symbols([e for _, e in entries], currencies, portfolio.base_currency).items():
        errors.extend((entries[k][0], f, m) for f, m in errs)
    bad_lines = {line for line, _, _ in errors}
    good = [(line, e) for line, e in entries if line not in bad_lines]
    # the ledger check runs on the good rows even when others are bad, so that one pass reports
    # every problem (a sale may then look uncovered only because its purchase row is among the bad)
    ledger_errors, version = await service.import_entries(ctx, portfolio_id, request.user.id, good,
                                                          dry_run=dry or bool(errors))
    errors.extend(ledger_errors)
    errors.sort(key=lambda e: (e[0], e[1] or ""))
    by_type: dict[str, int] = {}
    for _, e in entries:
        by_type[e.type.value] = by_type.get(e.type.value, 0) + 1
    report = ImportReport(dry_run=dry, rows=total_rows,
                          valid=not errors, imported=0 if (errors or dry) else len(good), by_type=by_type,
                          errors=[RowError(line=line, field=f, message=m) for line, f, m in errors],
                          ledger_version=version)
    return Response(report, status_code=200 if (dry or not errors) else 422)


@get("/api/portfolio/{portfolio_id:uuid}/export", tags=TAGS,
     summary="The ledger as CSV or JSON, in ledger order; import reads it back")
async def export(request: AuthRequest, ctx: AppContext, portfolio_id: uuid.UUID,
                 format: Annotated[str, Parameter(query="format")] = "csv") -> Response[Any]:
    if format not in ("csv", "json"):
        raise AppError("format must be csv or json", field="format")
    portfolio, rows = await service.ledger_rows(ctx, portfolio_id, request.user.id)
    items = importer.export_rows([msgspec.to_builtins(service.tx_out(r)) for r in rows])
    stem = f"portfolio-{portfolio_id}"
    if format == "json":
        body = msgspec.json.encode({"portfolio": {"id": str(portfolio.id), "name": portfolio.name,
                                                  "base_currency": portfolio.base_currency,
                                                  "cost_basis_method": portfolio.cost_basis_method},
                                    "transactions": items})
        return Response(body, media_type="application/json",
                        headers={"Content-Disposition": f'attachment; filename="{stem}.json"'})
    return Response(importer.to_csv(items), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{stem}.csv"'})


route_handlers = [list_portfolios, create_portfolio, get_portfolio, patch_portfolio, delete_portfolio, add_transaction,
                  list_transactions, delete_transaction, holdings, summary, performance, import_transactions, export]
