"""Every error is an RFC 9457 problem-details body; no stack trace reaches a client."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, NotAuthorizedException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

log = logging.getLogger("app.errors")

PROBLEM_JSON = "application/problem+json"
_TITLES = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    409: "Conflict", 413: "Payload Too Large", 415: "Unsupported Media Type", 422: "Unprocessable Content",
    429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable", 504: "Gateway Timeout",
}


class AppError(Exception):
    """A domain error with an HTTP status. `extra` fields are added to the problem body.

    `field` names the offending input; it is reported in `errors` like validation errors.
    """

    status_code = 400

    def __init__(self, detail: str, *, status_code: int | None = None, title: str | None = None,
                 field: str | None = None, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        if status_code is not None:
            self.status_code = status_code
        self.title = title
        self.field = field
        self.headers = headers or {}
        self.extra = extra


class NotFound(AppError):
    status_code = 404


class Conflict(AppError):
    status_code = 409


class Unprocessable(AppError):
    status_code = 422


class Forbidden(AppError):
    status_code = 403


class Unauthorized(AppError):
    status_code = 401


class ServiceUnavailable(AppError):
    status_code = 503


def problem(request: Request | None, status: int, detail: str, *, title: str | None = None,
            errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None,
            **extra: Any) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if request is not None:
        body["instance"] = request.url.path
        rid = request.scope.get("state", {}).get("request_id")
        if rid:
            body["request_id"] = rid
    if errors:
        body["errors"] = errors
    body.update(extra)
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _validation_errors(extra: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if isinstance(extra, list):
        for item in extra:
            if isinstance(item, dict):
                field = item.get("key") or ""
                out.append({"field": field.removeprefix("$.") if isinstance(field, str) else str(field),
                            "message": str(item.get("message", "")), "source": item.get("source", "body")})
    elif isinstance(extra, dict):
        out.append({"field": str(extra.get("key", "")), "message": str(extra.get("message", ""))})
    return out


def _field_from_msgspec(detail: str) -> str | None:
    # msgspec messages end with " - at `$.field`" or name the field in "Object missing required field `x`"
    if "`$." in detail:
        return detail.rsplit("`$.", 1)[1].split("`", 1)[0]
    if "field `" in detail:
        return detail.split("field `", 1)[1].split("`", 1)[0]
    return None


def http_exception_handler(request: Request, exc: HTTPException) -> Response:
    status = exc.status_code
    detail = exc.detail or _TITLES.get(status, "Error")
    errors = None
    if isinstance(exc, ValidationException):
        errors = _validation_errors(exc.extra)
        for err in errors:
            if err["field"] == "data" and err["message"] == "'data'":  # Litestar's KeyError: no body at all
                err.update(field="body", message="a JSON request body is required")
            if not err["field"] or err["field"] == "data":  # unknown body fields come back as key "data"
                err["field"] = _field_from_msgspec(err["message"]) or err["field"] or ""
        if errors:
            named = ", ".join(e["field"] for e in errors if e["field"])
            first = errors[0]["message"]
            detail = f"invalid input{' in ' + named if named else ''}: {first}" if first else detail
    elif status >= 500:
        log.error("http error", extra={"status": status, "path": request.url.path, "detail": detail})
        detail = _TITLES.get(status, "Error")
    headers = dict(exc.headers or {})
    if isinstance(exc, NotAuthorizedException):
        headers.setdefault("WWW-Authenticate", "Bearer")
    return problem(request, status, detail, errors=errors, headers=headers or None)


def app_error_handler(request: Request, exc: AppError) -> Response:
    errors = [{"field": exc.field, "message": exc.detail}] if exc.field else None
    return problem(request, exc.status_code, exc.detail, title=exc.title, errors=errors,
                   headers=exc.headers or None, **exc.extra)


def internal_error_handler(request: Request, exc: Exception) -> Response:
    if isinstance(exc, RecursionError) and "deserializ" in str(exc):
        # msgspec gives up on absurdly nested JSON (`[[[[…`) with a RecursionError while Litestar
        # decodes the body: the input is at fault, not the server.
        return problem(request, 400, "the JSON body is nested too deeply",
                       errors=[{"field": "body", "message": "nested too deeply", "source": "body"}])
    if isinstance(exc, _UNSTORABLE_TEXT):
        # Safety net: a NUL character (which PostgreSQL text cannot hold) in a body field that no
        # validation caught. Query and path parameters are refused earlier (app.logs), naming them.
        log.warning("unstorable text reached the database", extra={"path": request.url.path, "error": str(exc)})
        return problem(request, 400, "text values must not contain NUL characters")
    log.exception("unhandled error", extra={"path": request.url.path})
    return problem(request, HTTP_500_INTERNAL_SERVER_ERROR, "an internal error occurred; it has been logged")


# SQLSTATE 22021 / 22P05: text the database cannot store (a NUL character) — always the input's fault.
_UNSTORABLE_TEXT = (asyncpg.exceptions.CharacterNotInRepertoireError, asyncpg.exceptions.UntranslatableCharacterError)

EXCEPTION_HANDLERS = {
    AppError: app_error_handler,
    HTTPException: http_exception_handler,
    Exception: internal_error_handler,
}

__all__ = ["AppError", "NotFound", "Conflict", "Unprocessable", "Forbidden", "Unauthorized",
           "ServiceUnavailable", "problem", "EXCEPTION_HANDLERS", "MediaType"]
