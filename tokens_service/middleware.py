"""Request-scoped plumbing: a request id on every request and response, 503s for database outages, 500s
for every other database error, and dropping persistent database connections the server has ended."""

import logging
import re
import select
import traceback
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from django.db import DatabaseError, InterfaceError, OperationalError, connections
from django.http import HttpRequest, HttpResponse, JsonResponse

REQUEST_ID_HEADER = "X-Request-ID"
# A caller-supplied id is kept only when it is short and plain, so it cannot smuggle anything into logs.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")

# Down, unreachable, restarting, or a lock/statement timeout: the request may succeed if retried.
# Other database errors (integrity, data, programming) are bugs or caller mistakes, not outages.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)
SERVICE_UNAVAILABLE_DETAIL = "The database is unavailable or busy; retry shortly."
SERVER_ERROR_DETAIL = "Internal server error."
RETRY_AFTER_SECONDS = "2"

logger = logging.getLogger(__name__)


class RequestIdMiddleware:
    """Sets ``request.request_id`` (the caller's ``X-Request-ID`` if sane, else a new uuid4 hex)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        supplied = request.META.get("HTTP_X_REQUEST_ID", "")
        request.request_id = supplied if _SAFE_REQUEST_ID.match(supplied) else uuid.uuid4().hex  # type: ignore[attr-defined]
        response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request.request_id  # type: ignore[attr-defined]
        return response


def service_unavailable(exception: BaseException) -> JsonResponse:
    """The 503 answer for a database outage; logs the error class and SQLSTATE, never its text."""
    cause = exception.__cause__
    logger.warning(
        "database unavailable: %s",
        type(cause or exception).__name__,
        extra={"sqlstate": getattr(cause, "sqlstate", None)},
    )
    response = JsonResponse({"detail": SERVICE_UNAVAILABLE_DETAIL, "code": "service_unavailable"}, status=503)
    response["Retry-After"] = RETRY_AFTER_SECONDS
    return response


def database_error_summary(exception: BaseException) -> dict[str, Any]:
    """What may be logged of a database error: its class, SQLSTATE and where it was raised, never its text.

    The driver's message can quote the statement's parameters (a key, a value too long for its column),
    so neither the message nor a formatted traceback (which repeats it) is logged; the raising frames
    are listed as ``file:line function`` only.
    """
    cause = exception.__cause__
    frames = traceback.extract_tb(exception.__traceback__)[-8:]
    return {
        "db_error": type(exception).__name__,
        "db_driver_error": type(cause).__name__ if cause is not None else None,
        "sqlstate": getattr(cause, "sqlstate", None),
        "raised_at": [f"{frame.filename}:{frame.lineno} {frame.name}" for frame in frames],
    }


def log_database_bug(exception: DatabaseError) -> None:
    """Log a database error that is not an outage (integrity, data, programming, internal) at ERROR,
    by class and SQLSTATE only. Such an error is a bug or an unhandled caller mistake, answered 500:
    a 503 would make it look like an outage that a retry fixes."""
    logger.error("database error: %s", type(exception).__name__, extra=database_error_summary(exception))


def server_error_for_database_bug(exception: DatabaseError) -> JsonResponse:
    """The logged 500 JSON answer ``{"detail", "code": "server_error"}`` for a database bug."""
    log_database_bug(exception)
    return JsonResponse({"detail": SERVER_ERROR_DETAIL, "code": "server_error"}, status=500)


def close_connections_the_server_ended() -> None:
    """Close each persistent PostgreSQL connection whose server side has hung up, without a round trip.

    An idle connection receives nothing between requests unless the server ends it (a restart, a
    terminated backend, an idle timeout): then its socket turns readable (the FATAL message, then end
    of file). One non-blocking poll finds that, and the request's first query opens a new connection.
    This replaces Django's health check (``CONN_HEALTH_CHECKS``), a ``SELECT 1`` round trip per request;
    as with it, a server that goes away after the check fails that request's query (a 503).
    """
    for conn in connections.all(initialized_only=True):
        raw = conn.connection
        if raw is None or conn.vendor != "postgresql" or conn.in_atomic_block:
            continue
        try:
            fd = raw.pgconn.socket
        except psycopg.Error:  # the connection is already closed or lost
            conn.close()
            continue
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)  # errors and hang-ups are always reported
        if raw.closed or raw.broken or poller.poll(0):
            conn.close()


class DatabaseUnavailableMiddleware:
    """Answers 503 JSON ``{"detail", "code": "service_unavailable"}`` when a view fails because the
    database is unavailable, for every view, not only the API (whose exception handler does the same);
    any other database error is a logged 500 JSON ``{"detail", "code": "server_error"}``.

    Errors raised by other middleware never reach ``process_exception``; ``views.server_error`` (the
    500 handler) recognises them instead. Every 503 gets a ``Retry-After`` header.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        close_connections_the_server_ended()
        response = self.get_response(request)
        if response.status_code == 503 and not response.has_header("Retry-After"):
            response["Retry-After"] = RETRY_AFTER_SECONDS
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, DATABASE_UNAVAILABLE):
            return service_unavailable(exception)
        if isinstance(exception, DatabaseError):
            return server_error_for_database_bug(exception)
        return None


# --- browser-only middleware ------------------------------------------------------------------------------

# The API's paths, at the root and under authentik's /api/v3/ base path (the schema pages excluded).
_API_PATH = re.compile(r"^/(?:api/v3/)?(?:core|events)/")


def is_bearer_api_request(request: HttpRequest) -> bool:
    """Whether ``request`` is an API call that carries an ``Authorization`` header and no cookie (an empty
    ``Cookie`` header, as Django's test client sends, carries none).

    Such a request is authenticated by its header alone: DRF tries the bearer authenticator first, which
    either authenticates the caller or refuses the request, so the session is never consulted. Django's
    request user, messages and static files have nothing to do for it.
    """
    meta = request.META
    if "HTTP_AUTHORIZATION" not in meta or meta.get("HTTP_COOKIE"):
        return False
    return _API_PATH.match(request.path_info) is not None


class BrowserOnlyMiddleware:
    """Mixin for a middleware that serves browsers only: bearer API requests (``is_bearer_api_request``)
    pass straight through to the next layer, so they do not pay for the lazy request user, messages and
    static-file lookups that cannot apply to them (about 3% of a set_key's CPU, measured).
    Every other request, the admin and the API called with a session cookie among them, gets the
    middleware in full. ``tokens_service.browser_middleware`` applies it to Django's classes (the admin's
    system checks accept subclasses).
    """

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if is_bearer_api_request(request):
            return self.get_response(request)  # type: ignore[attr-defined,no-any-return]
        return super().__call__(request)  # type: ignore[misc,no-any-return]
