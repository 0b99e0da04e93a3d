"""The gateway app: ``create_app(settings)``; ``botai api`` serves it with uvicorn.

Every error answer is ``{"error": "<what went wrong and what to change>"}``. Platform
exceptions map to status codes here, once: invalid input and data a job cannot run on 422,
not found 404, duplicate training 409, quota 429 (with Retry-After), misconfiguration and
unreachable services 503 (an outage names the service and carries Retry-After). Unexpected
errors answer 500 with the exception type only (the log has the traceback).

Routing answers keep that form too: an unknown path answers 404, a method the path does
not serve 405 with ``Allow`` listing every method it serves, and a body that is not a JSON
object (unparsable, or sent as another media type) 422 naming the fix. Each route declares
in the OpenAPI schema every status it can answer (``api.routes``); the schema is fuzzed
against the running gateway in ``tests/api/test_contract_fuzz.py``.

Every request runs inside :func:`api.outages.prefect_bounded`: its Prefect calls time out
after ``prefect_timeout_s`` instead of Prefect's minutes of retries.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from api.dead_letters import router as dead_letters_router
from api.metrics import router as metrics_router
from api.models import router as models_router
from api.outages import prefect_bounded, unavailable_message
from api.quotas import QuotaExceededError
from api.routes import router
from api.service import TaskConflictError
from api.settings import ApiSettings
from core.echo import ECHO_LIMIT, echo, shorten
from core.exceptions import (
    ConfigurationError,
    ConflictError,
    DuplicateRunError,
    InsufficientDataError,
    InvalidInputError,
    NotFoundError,
    ServiceUnavailableError,
)
from integrations.store import Store

log = logging.getLogger(__name__)


#: Platform exceptions and their HTTP status (the first matching class wins).
STATUS_OF_ERROR: dict[type[Exception], int] = {
    InvalidInputError: 422,
    InsufficientDataError: 422,
    NotFoundError: 404,
    DuplicateRunError: 409,
    ConflictError: 409,
    TaskConflictError: 409,
    QuotaExceededError: 429,
    ConfigurationError: 503,
    # store errors arrive converted by its boundary (integrations.store.boundary): an
    # outage is a StoreUnavailableError, a refusal (StoreError) answers 500 as unexpected
    ServiceUnavailableError: 503,
    httpx.TransportError: 503,  # the Prefect API, reached outside service.prefect_call
}
#: Seconds a caller is asked to wait after a 503 for an outage.
RETRY_AFTER_OUTAGE_S = 5


#: Invalid fields named in one 422 answer (a body can hold thousands of bad items).
MAX_ERRORS_SHOWN = 10


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


#: The answer to a body that is not JSON (FastAPI reports it as one error at the body).
NOT_JSON = "the body is not valid JSON: send a JSON object with Content-Type: application/json"
#: The answer to a body that is missing, not an object, or not sent as JSON.
NOT_AN_OBJECT = "the body must be a JSON object sent with Content-Type: application/json"


def _validation_message(exc: RequestValidationError) -> str:
    """Returns one line naming each invalid field and what to change.

    Inputs are never echoed whole: a quoted input (and a field name, which the sender also
    chooses) is cut to ``ECHO_LIMIT`` characters with its length; so is each message.
    """
    parts = []
    for err in exc.errors()[:MAX_ERRORS_SHOWN]:
        if err.get("type") == "json_invalid":
            parts.append(NOT_JSON)
            continue
        if tuple(err.get("loc", ())) == ("body",) and err.get("type") != "value_error":
            parts.append(NOT_AN_OBJECT)
            continue
        loc = shorten(".".join(str(p) for p in err.get("loc", ()) if p != "body"))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "missing":  # name where it goes: the fix
            in_query = tuple(err.get("loc", ()))[:1] == ("query",)
            msg = "required: add it to the " + ("query string" if in_query else "body")
        value = err.get("input")
        if isinstance(value, str) and len(value) > ECHO_LIMIT:
            msg = msg.replace(repr(value), echo(value)).replace(value, shorten(value))
        msg = shorten(msg, 4 * ECHO_LIMIT)
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = len(exc.errors()) - MAX_ERRORS_SHOWN
    if more > 0:
        parts.append(f"... and {more} more")
    return "Invalid parameters: " + "; ".join(parts)


#: Methods an ``Allow`` header may list (each tried against the routes).
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route of ``app`` serves at the request's path (for ``Allow``)."""
    return [
        method
        for method in HTTP_METHODS
        if any(
            route.matches({**scope, "method": method})[0] == Match.FULL
            for route in app.router.routes
        )
    ]


def _install_handlers(app: FastAPI) -> None:
    # Starlette's class: also routing's 404/405 and FastAPI's body-parsing 400
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        message = str(exc.detail)
        if exc.status_code == 405:
            allow = allowed_methods(app, request.scope)
            headers["Allow"] = ", ".join(allow)
            message = f"Method {request.method} not allowed on this path: use {' or '.join(allow)}"
        elif exc.status_code == 404 and not isinstance(exc, HTTPException):
            message = f"No such endpoint {request.url.path}: see /docs for the endpoints"
        elif exc.status_code == 400 and not isinstance(exc, HTTPException):
            return _error(422, f"Invalid parameters: {NOT_JSON}")  # unreadable body
        return _error(exc.status_code, message, headers or None)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    async def platform_error(request: Request, exc: Exception) -> JSONResponse:
        status = next(code for cls, code in STATUS_OF_ERROR.items() if isinstance(exc, cls))
        message, headers = str(exc), None
        if status == 503:
            outage = unavailable_message(exc)  # None for a misconfiguration
            if outage is not None:
                message, headers = outage, {"Retry-After": str(RETRY_AFTER_OUTAGE_S)}
            log.warning("request refused: %s", message)
        if isinstance(exc, QuotaExceededError):
            headers = {"Retry-After": str(exc.retry_after_s)}
        return _error(status, message, headers)

    for cls in STATUS_OF_ERROR:
        app.add_exception_handler(cls, platform_error)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, f"Internal error ({type(exc).__name__}); see the gateway log")

    app.add_exception_handler(Exception, unexpected)


def create_app(settings: ApiSettings, store_factory: Callable[[], Store] | None = None) -> FastAPI:
    """Build the gateway.

    Args:
        settings: see :class:`ApiSettings`.
        store_factory: returns the platform store; default: the ``mongodb`` block
            (``blocks.loader.load_store``), connected on the first request that needs it.

    Returns:
        the FastAPI app (OpenAPI docs at ``/docs``).
    """
    if store_factory is None:

        def store_factory() -> Store:
            return gateway_store(settings)

    app = FastAPI(
        title="BotAI task gateway",
        summary="Start and follow the trading bot's AI jobs (Prefect flow runs) over HTTP.",
        version="1.0",
    )
    app.state.settings = settings
    app.state.store_factory = store_factory
    app.state.store = None
    _install_handlers(app)
    app.include_router(router)
    app.include_router(dead_letters_router)
    app.include_router(metrics_router)
    app.include_router(models_router)
    _declare_own_errors(app)
    app.add_middleware(BoundedPrefectCalls, settings=settings)
    return app


def _declare_own_errors(app: FastAPI) -> None:
    """Drop FastAPI's automatic ``422 HTTPValidationError`` from the schema: every 422 of
    this gateway is an ``ErrorBody``, declared by the routes that can answer it (a route
    whose only parameter is a UUID in its path cannot: routing answers 404 first)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                answer = operation.get("responses", {}).get("422", {})
                if "HTTPValidationError" in json.dumps(answer):
                    del operation["responses"]["422"]
        components = schema.get("components", {}).get("schemas", {})
        if "HTTPValidationError" not in json.dumps(schema.get("paths")):
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


class BoundedPrefectCalls:
    """ASGI middleware: each request runs in :func:`api.outages.prefect_bounded` (the
    handlers' worker threads inherit the context)."""

    def __init__(self, app: ASGIApp, settings: ApiSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with prefect_bounded(self.settings):
            await self.app(scope, receive, send)


def gateway_store(settings: ApiSettings) -> Store:
    """The store of the ``mongodb`` block, with the gateway's timeouts, indexes ensured.

    Raises:
        ConfigurationError: the block is missing. PrefectUnavailableError: Prefect did not
        answer. StoreUnavailableError: the store did not answer.
    """
    from api.outages import prefect_call, store_calls
    from blocks.loader import load_block
    from blocks.mongodb import MongoDBBlock

    block = prefect_call(lambda: load_block(MongoDBBlock), settings)
    store = block.get_store(timeout_ms=int(settings.store_timeout_s * 1000))
    with store_calls(settings):
        store.ensure_indexes()
    return store


def serve(settings: ApiSettings) -> None:
    """Run the gateway with uvicorn on ``settings.host:settings.port`` until interrupted."""
    import uvicorn

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
