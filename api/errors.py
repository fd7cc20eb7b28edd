"""The one place where errors become HTTP responses.

Every error answer has the shape ``{"error": {"code": ..., "message": ..., "field": ...}}``
(``problems`` lists every field problem of a rejected record). Codes are stable; they come from
the packages' exception trees (``issuance.errors``, ``hsm.errors``, ``cardspec.errors``) or from
the HTTP layer itself (``unauthorized``, ``forbidden``, ``rate_limited``, ``not_found``,
``method_not_allowed``, ``validation_error``, ``internal_error``). No stack trace ever leaves
the server; unexpected exceptions are logged and answered ``500 internal_error``.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.calllog import ERROR_CODE, state_of
from cardspec.errors import CardSpecError, InvalidIdentifier
from hsm.errors import HsmError, HsmUnavailable
from issuance import errors as ie
from issuance.db_async import DatabaseUnavailable
from issuance.services.outbox import DeliveryError
from printers.errors import PrinterError

log = logging.getLogger("api")


class FieldProblemOut(BaseModel):
    field: str
    reason: str
    #: Stable reason code (a photo's ``PhotoProblem``, an intake cell's ``CellProblem``).
    code: str | None = None


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None
    problems: list[FieldProblemOut] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    """An error the HTTP layer raises itself (auth, scope, rate limit, bad input)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers


#: issuance error class -> HTTP status (most specific first).
ISSUANCE_STATUS: list[tuple[type[ie.IssuanceError], int]] = [
    (ie.PhotoRejected, 422),
    (ie.ValidationError, 422),
    (ie.NotFound, 404),
    (ie.TransitionError, 409),
    (ie.ConflictError, 409),
    (ie.PermissionDenied, 403),
    (ie.IntegrityError, 409),
    (ie.ConfigError, 503),
    (ie.StationError, 503),
]


class ErrorJSONResponse(JSONResponse):
    """The error answer; ``code`` is kept for the call log (:mod:`api.calllog`)."""

    code: str = ""


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    problems: list[FieldProblemOut] | None = None,
    headers: dict[str, str] | None = None,
) -> ErrorJSONResponse:
    body = ErrorResponse(
        error=ErrorBody(code=code, message=message, field=field, problems=problems)
    )
    response = ErrorJSONResponse(
        body.model_dump(exclude_none=True), status_code=status, headers=headers
    )
    response.code = code
    return response


def map_exception(exc: BaseException) -> ErrorJSONResponse:
    """The response for an exception of one of the packages' trees (each package's root is
    mapped here, once: issuance, cardspec, hsm, printers; and the database driver's)."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.field, headers=exc.headers)
    if isinstance(exc, sa.exc.OperationalError | DatabaseUnavailable):
        log.error("database error: %s", exc)
        return error_response(503, "service_unavailable", "the database is unavailable; retry")
    if isinstance(exc, DeliveryError):
        log.error("notification gateway error: %s", exc)
        return error_response(503, exc.code, "the notification gateway is unavailable; retry")
    if isinstance(exc, ie.ValidationError):
        problems = [
            FieldProblemOut(field=p.field, reason=p.reason, code=p.code) for p in exc.problems
        ]
        first = problems[0].field if problems else None
        return error_response(422, exc.code, str(exc), first, problems or None)
    if isinstance(exc, ie.IssuanceError):
        status = next((s for cls, s in ISSUANCE_STATUS if isinstance(exc, cls)), 400)
        if status == 503:
            log.error("configuration error: %s", exc)
            return error_response(503, "service_unavailable", "the service is misconfigured")
        return error_response(status, exc.code, exc.message)
    if isinstance(exc, InvalidIdentifier):
        field = getattr(exc, "field", None)
        return error_response(422, "validation_error", str(exc), field)
    if isinstance(exc, CardSpecError):
        return error_response(422, "card_error", str(exc))
    if isinstance(exc, sa.exc.DataError):
        return error_response(422, "validation_error", "a value is out of range or malformed")
    if isinstance(exc, asyncpg.DataError):
        return error_response(422, "validation_error", "a value is out of range or malformed")
    if isinstance(exc, HsmUnavailable | HsmError):
        log.error("HSM error: %s", exc)
        return error_response(503, exc.code, "the HSM is unavailable; try again")
    if isinstance(exc, PrinterError):
        log.error("printer error: %s", exc)
        return error_response(503, exc.code, "the printer is unavailable; try again")
    log.exception("unexpected error", exc_info=exc)
    return error_response(500, "internal_error", "internal error")


def _validation(exc: RequestValidationError) -> ErrorJSONResponse:
    problems: list[FieldProblemOut] = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":  # its loc holds an offset, not a field
            where = [p for p in err.get("loc", ()) if isinstance(p, int)]
            at = f" at offset {where[0]}" if where else ""
            why = (err.get("ctx") or {}).get("error", "")
            problems.append(FieldProblemOut(field="body", reason=f"malformed JSON{at}: {why}"))
            continue
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        problems.append(FieldProblemOut(field=".".join(loc) or "body", reason=str(err.get("msg"))))
    first = problems[0] if problems else FieldProblemOut(field="body", reason="invalid")
    return error_response(
        422, "validation_error", f"{first.field}: {first.reason}", first.field, problems
    )


HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
}


def _noted(request: Request, response: ErrorJSONResponse) -> ErrorJSONResponse:
    """Tell the call log which error code the call ended with."""
    state_of(request.scope)[ERROR_CODE] = response.code
    return response


def route_table(app: Any) -> list[tuple[Any, frozenset[str], str]]:
    """Every route of ``app`` as (path regex, methods, path template), built once per app
    (FastAPI keeps included routers nested: their routes are found with their prefixes)."""
    table = getattr(app.state, "route_table", None)
    if table is None:
        from fastapi.routing import iter_route_contexts
        from starlette.routing import compile_path

        table = []
        for r in iter_route_contexts(app.router.routes):
            template = r.path_format
            if not template or not r.methods:
                continue
            table.append((compile_path(template)[0], frozenset(r.methods), template))
        app.state.route_table = table
    return table


def route_of(app: Any, path: str, method: str) -> str | None:
    """The template of the route that answers ``method`` at ``path`` (None: none does)."""
    for regex, methods, template in route_table(app):
        if method in methods and regex.match(path):
            return template
    return None


def allowed_methods(app: Any, path: str) -> list[str]:
    """Every method some route of ``app`` answers at ``path`` (and OPTIONS, HEAD with GET)."""
    methods = {"OPTIONS"}
    for regex, route_methods, _ in route_table(app):
        if regex.match(path):
            methods |= route_methods
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def install(app: FastAPI) -> None:
    async def on_api(request: Request, exc: Exception) -> JSONResponse:
        return _noted(request, map_exception(exc))

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _noted(request, _validation(exc))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names the first route's methods only
            allow = allowed_methods(request.app, request.url.path)
            headers["Allow"] = ", ".join(allow)
            if request.method == "OPTIONS":  # RFC 9110 9.3.7: what the resource allows
                return Response(status_code=204, headers=headers)
        return _noted(request, error_response(exc.status_code, code, message, headers=headers))

    roots = (ApiError, ie.IssuanceError, HsmError, CardSpecError, PrinterError)
    for cls in (*roots, sa.exc.SQLAlchemyError):
        app.add_exception_handler(cls, on_api)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_api)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error statuses a route can answer."""
    text = {
        400: "Malformed request",
        401: "Missing or invalid bearer token",
        403: "Outside the caller's scopes or role",
        404: "Not found",
        409: "Conflict with the current state",
        422: "Invalid input (the field is named)",
        429: "Too many failed attempts",
        503: "HSM or database unavailable",
    }
    return {s: {"model": ErrorResponse, "description": text[s]} for s in statuses}
