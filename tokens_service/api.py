"""API plumbing shared by every resource: strict JSON parsing, pagination and the error shape."""

import json
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from tokens_service.errors import FieldConflict, ObjectNotFound
from tokens_service.middleware import DATABASE_UNAVAILABLE, SERVER_ERROR_DETAIL, log_database_bug


class DuplicateMemberError(ValueError):
    pass


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise DuplicateMemberError
        result[name] = value
    return result


def _reject_constant(_: str) -> None:
    raise ValueError("NaN and Infinity are not JSON")


class StrictJSONParser(JSONParser):
    """JSON only, UTF-8 only; duplicate members, NaN/Infinity and runaway nesting are 400s.

    The error message is fixed: it never quotes the body, which may hold a key.
    """

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        try:
            text = stream.read().decode("utf-8") if stream is not None else ""
            return json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
        except DuplicateMemberError as exc:
            raise exceptions.ParseError("JSON object has a duplicate member.") from exc
        except (ValueError, RecursionError) as exc:
            raise exceptions.ParseError("Malformed JSON.") from exc


class Pagination(PageNumberPagination):
    """authentik's envelope: numeric page links (0 when absent), counts and an autocomplete map.

    ``page_size`` must be a positive integer (400 otherwise; DRF would silently use the default), and is
    capped at ``max_page_size``. A ``page`` that is not a page of the result set is DRF's 404 "Invalid page.".
    """

    page_size_query_param = "page_size"
    max_page_size = 100

    def get_page_size(self, request: Any) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            assert self.page_size is not None  # REST_FRAMEWORK["PAGE_SIZE"]
            return self.page_size
        # Digits only: int() would also take " 5", "+5" and "1_0". Too many digits is a ValueError too.
        try:
            size = int(raw) if raw.isascii() and raw.isdigit() else 0
        except ValueError:
            size = 0
        if size < 1:
            # The message does not quote the value (query strings can carry secrets by mistake).
            raise exceptions.ValidationError({self.page_size_query_param: ["A positive integer is required."]})
        return min(size, self.max_page_size)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"] = {**parameter["schema"], "minimum": 1}
        return parameters

    def get_paginated_response(self, data: Any) -> Response:
        page = self.page
        assert page is not None  # set by paginate_queryset, which DRF always calls first
        return Response(
            {
                "pagination": {
                    "next": page.next_page_number() if page.has_next() else 0,
                    "previous": page.previous_page_number() if page.has_previous() else 0,
                    "count": page.paginator.count,
                    "current": page.number,
                    "total_pages": page.paginator.num_pages,
                    "start_index": page.start_index(),
                    "end_index": page.end_index(),
                },
                "results": data,
                "autocomplete": {},
            }
        )

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "pagination": {"$ref": "#/components/schemas/Pagination"},
                "results": schema,
                "autocomplete": {"$ref": "#/components/schemas/Autocomplete"},
            },
            "required": ["pagination", "results", "autocomplete"],
        }


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
