"""Query-string filters of the event list and volume, named as in authentik's ``events_events_list``."""

from typing import Any

from django import forms
from django.db import connection
from django.db.models import F, Func, Q, QuerySet, TextField
from django.db.models.functions import Lower
from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema_field
from rest_framework.filters import SearchFilter
from rest_framework.request import Request

from events.models import Event, EventAction

CUSTOM_PREFIX = EventAction.CUSTOM_PREFIX.value


class JSONText(Func):
    """``column #>> '{a,b}'`` (PostgreSQL): a JSON member as text, with the path written into the SQL.

    Django passes JSON key paths as query parameters; an expression index on ``context #>> '{model,pk}'``
    only matches a query whose path is the same constant. The path comes from this module, never from a
    request (``[a-z_]`` only, checked here).
    """

    output_field = TextField()

    def __init__(self, column: str, *path: str) -> None:
        assert all(part.replace("_", "").isalpha() and part.islower() for part in path)
        self.path = path
        super().__init__(F(column))

    def as_sql(self, compiler: Any, connection: Any, **extra_context: Any) -> tuple[str, list[Any]]:  # type: ignore[override]
        assert connection.vendor == "postgresql", "JSONText is PostgreSQL-only; use Django's key lookups elsewhere"
        sql, params = compiler.compile(self.source_expressions[0])
        return f"({sql} #>> '{{{','.join(self.path)}}}')", list(params)


def postgresql() -> bool:
    return connection.vendor == "postgresql"


def action_contains(value: str) -> Q:
    """``action`` contains ``value``, any case: the known actions that do, or custom actions that do.

    The action column holds the enum's values (and ``custom_*``), so matching the enum in Python turns a
    substring scan of every row into an index lookup of a few exact values.
    """
    needle = value.lower()
    known = [action for action in EventAction.values if needle in action and action != CUSTOM_PREFIX]
    custom = Q(action__startswith=CUSTOM_PREFIX, action__icontains=value)
    return Q(action__in=known) | custom if known else custom


# The schema says which strings are accepted (a non-address is a 400), keeping the reference's plain type.
@extend_schema_field({"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]})
class IPAddressFilter(filters.CharFilter):
    """Exact match on an IP address column; anything that is not an address is a 400."""

    field_class = forms.GenericIPAddressField


@extend_schema_field({"$ref": "#/components/schemas/EventActions"})
class EventActionsFilter(filters.MultipleChoiceFilter):
    """Repeatable exact actions; documented as an array of the shared ``EventActions`` enum.

    One ``action IN (...)``, without django-filter's default ``DISTINCT`` (the filter is on a column of
    the event itself, so it cannot repeat rows; a DISTINCT over every column would sort every match).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("distinct", False)
        super().__init__(*args, **kwargs)

    def filter(self, qs: QuerySet[Event], value: list[str]) -> QuerySet[Event]:
        return qs.filter(action__in=value) if value else qs


class EventFilter(filters.FilterSet):
    """Filters over the event columns and over the JSON snapshots an event keeps.

    ``action`` matches case-insensitively anywhere in the action (``action=model`` finds every
    ``model_*`` event), as in authentik; ``actions`` (repeatable) matches exact actions. A malformed
    ``client_ip`` is a 400, not an empty result and not a database error.
    """

    action = filters.CharFilter(method="filter_action")
    actions = EventActionsFilter(field_name="action", choices=EventAction.choices)
    username = filters.CharFilter(method="filter_username", label="Username")
    client_ip = IPAddressFilter(field_name="client_ip")
    brand_name = filters.CharFilter(method="filter_json", label="Brand name")
    context_model_app = filters.CharFilter(method="filter_json", label="Context Model App")
    context_model_name = filters.CharFilter(method="filter_json", label="Context Model Name")
    context_model_pk = filters.CharFilter(method="filter_context_model_pk", label="Context Model Primary Key")
    context_authorized_app = filters.CharFilter(method="filter_json", label="Context Authorized application")
    context_device = filters.CharFilter(method="filter_json", label="Context Device Primary Key")

    # Filter name -> (column, JSON path). On PostgreSQL each is compared as text through ``JSONText``, the
    # expression its index is built on (migration 0003); elsewhere through Django's key lookups.
    JSON_MEMBERS = {
        "username": ("user", ("username",)),
        "brand_name": ("brand", ("name",)),
        "context_model_app": ("context", ("model", "app")),
        "context_model_name": ("context", ("model", "model_name")),
        "context_model_pk": ("context", ("model", "pk")),
        "context_authorized_app": ("context", ("authorized_application", "pk")),
        "context_device": ("context", ("device", "pk")),
    }

    class Meta:
        model = Event
        fields = ["action", "actions", "username", "client_ip", "brand_name"]

    def filter_action(self, queryset: QuerySet[Event], name: str, value: str) -> QuerySet[Event]:
        return queryset.filter(action_contains(value))

    def filter_username(self, queryset: QuerySet[Event], name: str, value: str) -> QuerySet[Event]:
        return self.filter_json(queryset, name, value)

    def filter_json(self, queryset: QuerySet[Event], name: str, value: str) -> QuerySet[Event]:
        column, path = self.JSON_MEMBERS[name]
        if postgresql():
            # Text equality: a string member equal to value, or a number whose text is value.
            return queryset.alias(**{f"_{name}": JSONText(column, *path)}).filter(**{f"_{name}": value})
        return queryset.filter(**{"__".join((column, *path)): value})

    def filter_context_model_pk(self, queryset: QuerySet[Event], name: str, value: str) -> QuerySet[Event]:
        # Events store uuid keys as 32 hex digits; a client may send the dashed form. Integer keys are
        # stored as JSON numbers, so a numeric value matches those too.
        hex_value = value.replace("-", "")
        if postgresql():
            # As text, the string "42" and the number 42 are both 42.
            pk = JSONText("context", "model", "pk")
            return queryset.alias(_context_model_pk=pk).filter(_context_model_pk__in=sorted({hex_value, value}))
        query = Q(context__model__pk=hex_value) | Q(context__model__pk=value)
        # Bounded, so the number fits a 64-bit database integer on every backend.
        if value.isascii() and value.isdigit() and len(value) <= 18:
            query |= Q(context__model__pk=int(value))
        return queryset.filter(query)


class EventSearchFilter(SearchFilter):
    """``search``: each term must start one of the action, the actor's username, the client address or the
    name of the object the event is about (e.g. a token's identifier); letters in any case.

    Prefixes rather than substrings anywhere in the JSON: a prefix is a range in an index (on PostgreSQL
    an expression index each, migration 0003), a substring of every event's JSON is a scan of the table.
    """

    search_description = (
        "Terms (separated by spaces) that each start the action, the actor's username, the client address "
        "or the name of the object the event is about (a token's identifier); any case."
    )

    def get_search_terms(self, request: Request) -> list[str]:
        return [term for term in super().get_search_terms(request) if term]

    def filter_queryset(self, request: Request, queryset: QuerySet[Any], view: Any) -> QuerySet[Any]:
        terms = self.get_search_terms(request)
        if not terms:
            return queryset
        # Per term, the known actions it starts: events of actions every term starts all match, which the
        # view may count first (``action_conditions``; ``search=login``: login and login_failed).
        action_conditions: list[Q] | None = []
        if postgresql():
            queryset = queryset.alias(
                _search_username=Lower(JSONText("user", "username")),
                _search_object=Lower(JSONText("context", "model", "name")),
            )
            username, name = "_search_username", "_search_object"
        else:
            queryset = queryset.alias(
                _search_username=Lower("user__username"), _search_object=Lower("context__model__name")
            )
            username, name = "_search_username", "_search_object"
        for term in terms:
            needle = term.lower()
            known = [action for action in EventAction.values if action.startswith(needle) and action != CUSTOM_PREFIX]
            if action_conditions is not None:
                action_conditions = [*action_conditions, Q(action__in=known)] if known else None
            query = (
                Q(action__in=known)
                | Q(action__startswith=CUSTOM_PREFIX, action__istartswith=term)
                | Q(**{f"{username}__startswith": needle})
                | Q(**{f"{name}__startswith": needle})
                | Q(client_ip__startswith=term)
            )
            queryset = queryset.filter(query)
        if view is not None:
            view.search_action_conditions = action_conditions or None
        return queryset
