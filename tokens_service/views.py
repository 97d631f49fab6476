"""Health endpoints and JSON answers for errors raised outside the API views."""

import sys
from typing import Any

from django.db import connection
from django.http import HttpRequest, JsonResponse

from tokens_service.middleware import DATABASE_UNAVAILABLE, service_unavailable


def _error(status: int, detail: str, code: str) -> JsonResponse:
    return JsonResponse({"detail": detail, "code": code}, status=status)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return _error(400, "Bad request.", "bad_request")


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return _error(403, "You do not have permission to perform this action.", "permission_denied")


def not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return _error(404, "Not found.", "not_found")


def server_error(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """The 500 handler; a database outage raised outside a view (in middleware) is still a 503."""
    exception = sys.exc_info()[1]
    if isinstance(exception, DATABASE_UNAVAILABLE):
        return service_unavailable(exception)
    return _error(500, "Internal server error.", "server_error")


def csrf_failure(request: HttpRequest, reason: str = "") -> JsonResponse:
    return _error(403, "CSRF verification failed.", "permission_denied")


def live(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Touches no database."""
    return JsonResponse({"status": "ok"})


def ready(request: HttpRequest) -> JsonResponse:
    """Readiness: the database answers a trivial query. When it does not, the answer (503) comes within
    ``DB_CONNECT_TIMEOUT`` (unreachable) or ``DB_STATEMENT_TIMEOUT_MS`` (stuck), never a hang."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:  # noqa: BLE001 - any failure means "not ready"; the reason is not for clients
        return JsonResponse({"status": "unavailable", "database": "unreachable"}, status=503)
    return JsonResponse({"status": "ok", "database": "ok"})
