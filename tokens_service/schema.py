"""drf-spectacular plumbing: schema hooks, authentik's ``authentik`` bearer scheme, and the docs pages.

The hooks are loaded through ``SPECTACULAR_SETTINGS``; importing the module (the hooks, or the docs views
from ``urls.py``) also registers the authentication extension before any view is inspected.
"""

from collections.abc import Callable
from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView
from rest_framework.request import Request
from rest_framework.response import Response

# Every API route is mounted twice (root and authentik's base path). The schema keeps the root copy and
# lists "/api/v3" as a server instead, so each operation is documented (and has its operationId) once.
DUPLICATE_MOUNT_PREFIX = "/api/v3/"

Endpoint = tuple[str, str, str, Callable[..., Any]]


def drop_duplicate_mount(endpoints: list[Endpoint], **kwargs: Any) -> list[Endpoint]:
    """Preprocessing hook: remove the ``/api/v3/...`` copies of the root endpoints."""
    return [endpoint for endpoint in endpoints if not endpoint[0].startswith(DUPLICATE_MOUNT_PREFIX)]


# Components that schemas elsewhere refer to by name without a serializer behind them: the envelope of
# tokens_service.pagination.Pagination. Shaped as in authentik's schema (numbers, all required).
_PAGINATION_FIELDS = ("next", "previous", "count", "current", "total_pages", "start_index", "end_index")
SHARED_COMPONENTS: dict[str, dict[str, Any]] = {
    "Pagination": {
        "type": "object",
        "properties": {name: {"type": "number"} for name in _PAGINATION_FIELDS},
        "required": sorted(_PAGINATION_FIELDS),
    },
    "Autocomplete": {"type": "object", "additionalProperties": {}},
}


def add_shared_components(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Postprocessing hook: define the hand-referenced components, so every ``$ref`` resolves."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    for name, component in SHARED_COMPONENTS.items():
        schemas.setdefault(name, component)
    result["components"]["schemas"] = dict(sorted(schemas.items()))
    return result


# The error bodies of tokens_service.exceptions.exception_handler, named as in authentik's schema, and referenced
# by every operation: clients generated from the schema then raise typed errors for 400 and 403.
ERROR_COMPONENTS: dict[str, dict[str, Any]] = {
    "GenericError": {
        "type": "object",
        "description": "Generic API Error",
        "properties": {"detail": {"type": "string"}, "code": {"type": "string"}},
        "required": ["detail"],
    },
    "ValidationError": {
        "type": "object",
        "description": "Validation Error",
        "properties": {"non_field_errors": {"type": "array", "items": {"type": "string"}}, "code": {"type": "string"}},
        "additionalProperties": {},
    },
}
ERROR_RESPONSES = {
    "400": ("ValidationErrorResponse", "ValidationError"),
    "403": ("GenericErrorResponse", "GenericError"),
}
_HTTP_METHODS = {"get", "put", "post", "patch", "delete"}
# Query parameters for which an empty value is an error (page: 404 "Invalid page.", page_size: 400).
NO_EMPTY_VALUE_PARAMETERS = {"page", "page_size"}


def _can_answer_404(path: str, operation: dict[str, Any]) -> bool:
    """An identifier in the path (unknown or invisible: 404), or a page number (past the last page: 404)."""
    parameters = operation.get("parameters", [])
    return "{" in path or any(param.get("in") == "query" and param.get("name") == "page" for param in parameters)


def add_error_responses(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Postprocessing hook: every operation documents 400 and 403 with the shared error bodies, and 404
    where it can answer one (found by property-based testing against the live server, tests/api/test_schemathesis.py).

    An operation that documents its own 400 or 404 (set_key's "Missing key") keeps it.
    """
    components = result.setdefault("components", {})
    components.setdefault("schemas", {}).update(ERROR_COMPONENTS)
    responses = components.setdefault("responses", {})
    for response_name, schema_name in ERROR_RESPONSES.values():
        responses[response_name] = {
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}},
            "description": "",
        }
    for path, item in result.get("paths", {}).items():
        for method, operation in item.items():
            if method not in _HTTP_METHODS:
                continue
            for status, (response_name, _) in ERROR_RESPONSES.items():
                operation["responses"].setdefault(status, {"$ref": f"#/components/responses/{response_name}"})
            if _can_answer_404(path, operation):
                operation["responses"].setdefault("404", {"$ref": "#/components/responses/GenericErrorResponse"})
    return result


def allow_empty_filter_values(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Postprocessing hook: say that an empty filter, search, ordering or ``history_days`` value is accepted.

    ``?intent=`` means "no intent filter" (django-filter skips empty values, as in authentik's API) and
    ``?history_days=`` the default; without ``allowEmptyValue`` the schema would call them invalid.
    """
    for item in result.get("paths", {}).values():
        for method, operation in item.items():
            if method not in _HTTP_METHODS:
                continue
            for param in operation.get("parameters", []):
                if param.get("in") != "query" or param.get("name") in NO_EMPTY_VALUE_PARAMETERS:
                    continue
                # A repeatable (array) filter reads ``?actions=`` as one empty value, which is not a choice: 400.
                if param.get("schema", {}).get("type") != "array":
                    param["allowEmptyValue"] = True
    return result


def drop_unreferenced_components(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Postprocessing hook: remove component schemas nothing refers to (request twins of read-only nests)."""
    schemas = result.get("components", {}).get("schemas", {})
    while True:
        text = repr({key: value for key, value in result.items() if key != "components"})
        text += repr({name: value for name, value in schemas.items()})
        text += repr(result.get("components", {}).get("responses", {}))
        unused = [name for name in schemas if f"#/components/schemas/{name}'" not in text]
        if not unused:
            return result
        for name in unused:
            del schemas[name]


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """Documents ``core.authentication.BearerTokenAuthentication`` under the name authentik's schema uses."""

    target_class = "core.authentication.BearerTokenAuthentication"
    name = "authentik"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {"type": "http", "scheme": "bearer"}


# The docs pages may load and call this server only. The bundles come from drf-spectacular-sidecar;
# the inline bootstrap script and the styles the bundles inject need 'unsafe-inline', Redoc's search
# worker runs from a blob: URL. Redoc's sidebar badge points at cdn.redoc.ly: the browser blocks it.
DOCS_CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


def _same_origin_only(response: Response) -> Response:
    response["Content-Security-Policy"] = DOCS_CONTENT_SECURITY_POLICY
    return response


class SwaggerView(SpectacularSwaggerView):
    """Swagger UI from the sidecar's static files, allowed to talk to this server only."""

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        return _same_origin_only(super().finalize_response(request, response, *args, **kwargs))


class RedocView(SpectacularRedocView):
    """Redoc from the sidecar's static files (without drf-spectacular's Google Fonts links), this server only."""

    template_name = "docs/redoc.html"

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        return _same_origin_only(super().finalize_response(request, response, *args, **kwargs))
