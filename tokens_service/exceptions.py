"""The error shape of every resource: the exception handler, the error body and the errors it maps to."""

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from tokens_service.errors import FieldConflict, ObjectNotFound
from tokens_service.middleware import DATABASE_UNAVAILABLE, SERVER_ERROR_DETAIL, log_database_bug


class ServiceUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The database is unavailable or busy; retry shortly."
    default_code = "service_unavailable"


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body too large."
    default_code = "request_too_large"


class UnsupportedMediaType(exceptions.UnsupportedMediaType):
    """415 whose message does not repeat the caller's Content-Type."""

    def __init__(self) -> None:
        super().__init__(media_type="", detail="Unsupported media type; send application/json.")


def error_body(detail: str, code: str) -> dict[str, str]:
    return {"detail": detail, "code": code}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Give every error the contract's shape (docs/contract.md, "Wire format"): ``{"detail", "code"}``,
    or field errors for 400."""
    if isinstance(exc, (Http404, ObjectNotFound)):
        exc = exceptions.NotFound()
    elif isinstance(exc, FieldConflict):
        exc = exceptions.ValidationError({exc.field: [exc.message]}, code="unique")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, exceptions.UnsupportedMediaType) and not isinstance(exc, UnsupportedMediaType):
        exc = UnsupportedMediaType()
    elif isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge()
    elif isinstance(exc, DATABASE_UNAVAILABLE):
        # Down, unreachable, locked past lock_timeout or past statement_timeout: tell the client to
        # retry. The database message is not passed on; it can quote parameters.
        exc = ServiceUnavailable()
    elif isinstance(exc, DatabaseError):
        # Integrity, data, programming or internal errors are bugs, not outages: a logged 500.
        log_database_bug(exc)
        return Response(error_body(SERVER_ERROR_DETAIL, "server_error"), status=status.HTTP_500_INTERNAL_SERVER_ERROR)

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        if not isinstance(response.data, dict):
            response.data = {"non_field_errors": response.data}
        return response
    if isinstance(exc, exceptions.ParseError):
        response.data = {"non_field_errors": [str(exc.detail)], "code": "parse_error"}
        return response
    assert isinstance(exc, exceptions.APIException)
    raw = exc.detail
    items = raw.values() if isinstance(raw, dict) else raw if isinstance(raw, list) else [raw]
    code = exc.get_codes()
    response.data = error_body(
        " ".join(str(item) for item in items), code if isinstance(code, str) else exc.default_code
    )
    return response
