"""Query-string filters of the token list, and the ordering filter every list of this service uses."""

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import django_filters
from django import forms
from django.db import connection
from django.db.models import BooleanField, Expression, F, Q, QuerySet
from django_filters import rest_framework as filters
from django_filters.fields import IsoDateTimeField
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import extend_schema_field
from rest_framework.exceptions import ValidationError
from rest_framework.filters import BaseFilterBackend, OrderingFilter, SearchFilter
from rest_framework.request import Request

from core.models import Token, TokenIntents, User


class SingleValuedQueryParameters(BaseFilterBackend):
    """A query parameter given more than once is a 400, unless it is a multiple-value filter (``actions``).

    Django reads the last of ``?description=a&description=b`` and ignores the rest, so a client that meant
    "a or b" would silently get a different answer (found by schemathesis' negative testing).
    """

    def filter_queryset(self, request: Request, queryset: QuerySet[Any], view: Any) -> QuerySet[Any]:
        filterset_class = getattr(view, "filterset_class", None)
        filters_by_name = filterset_class.base_filters if filterset_class is not None else {}
        repeated = sorted(
            name
            for name, values in request.query_params.lists()
            if len(values) > 1 and not isinstance(filters_by_name.get(name), django_filters.MultipleChoiceFilter)
        )
        if repeated:
            raise ValidationError({name: ["Give this parameter only once."] for name in repeated})
        return queryset


class StableOrderingFilter(OrderingFilter):
    """DRF's ``ordering`` parameter with the primary key appended as the last sort key (same direction).

    Without a unique last key, rows that tie (same ``expires``, same ``created``) may change places
    between two page queries, so a client walking the pages could see a row twice or never.
    """

    def get_ordering(self, request: Request, queryset: QuerySet[Any], view: Any) -> list[str]:
        ordering = list(super().get_ordering(request, queryset, view) or [])
        if not {"pk", "-pk"} & set(ordering):
            # In the direction of the last key, so that an index on (column, pk) serves both directions
            # with one scan, forwards or backwards, instead of sorting every row that ties.
            descending = bool(ordering) and ordering[-1].startswith("-")
            ordering.append("-pk" if descending else "pk")
        return ordering


class QueriedFilterBackend(DjangoFilterBackend):
    """django-filter's backend, not run when the query string names none of the filterset's filters.

    Then every filter of the filterset gets an empty value, which filters nothing and cannot be invalid:
    the rows are the same, without building a filterset and its form (a tenth of an unfiltered list's CPU).
    Each filter reads the one query parameter of its name (no filter here has a multi-part widget, which
    tests/api/test_list_representation.py checks).
    """

    def filter_queryset(self, request: Request, queryset: QuerySet[Any], view: Any) -> QuerySet[Any]:
        filterset_class = getattr(view, "filterset_class", None)
        named = request.query_params
        if filterset_class is not None and not any(name in named for name in filterset_class.base_filters):
            return queryset
        return super().filter_queryset(request, queryset, view)  # type: ignore[no-any-return]


@extend_schema_field({"$ref": "#/components/schemas/IntentEnum"})
class IntentFilter(filters.ChoiceFilter):
    """A token intent; documented with the shared ``IntentEnum`` component, as in authentik's schema."""


class StrictNullBooleanField(forms.NullBooleanField):
    """``true``/``false`` (or ``1``/``0``, any case); empty means "no filter"; anything else is invalid.

    Django's field (through its select widget) reads any other value as "unknown", so ``?expiring=ture``
    silently filtered nothing.
    """

    widget = forms.TextInput  # hands the raw value to to_python (the select widget maps it first)

    def to_python(self, value: Any) -> bool | None:  # type: ignore[override]  # as in the stubs of the base
        if value in (None, ""):
            return None
        word = str(value).lower()
        if word in ("true", "1"):
            return True
        if word in ("false", "0"):
            return False
        raise forms.ValidationError("Must be true or false.", code="invalid")


class StrictBooleanFilter(django_filters.BooleanFilter):
    """django-filter's boolean filter without the REST flavour's widget, which maps unknown words to None."""

    field_class = StrictNullBooleanField


class UTCIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 datetime that exists in UTC, where the database compares it.

    ``0001-01-01T00:00:00+01:00`` parses, but is in year 0 in UTC: converting it raised OverflowError, a
    500 (found by schemathesis). It is a 400 now.
    """

    def to_python(self, value: Any) -> datetime | None:
        parsed: datetime | None = super().to_python(value)
        if parsed is None:
            return None
        try:
            return parsed.astimezone(UTC)
        except OverflowError:
            raise forms.ValidationError("Enter a date and time that exists in UTC.", code="overflow") from None


class UTCIsoDateTimeFilter(filters.IsoDateTimeFilter):
    field_class = UTCIsoDateTimeField


class TokenFilter(filters.FilterSet):
    """Exact-match filters named as in authentik's ``core_tokens_list``, plus usage filters to find stale tokens.

    ``last_used__lt``/``last_used__gte`` compare the recorded last use (never-used tokens match neither),
    ``last_used__isnull`` finds tokens never used, and ``unused_since`` both at once: tokens not used
    since that moment, including those never used.
    """

    intent = IntentFilter(choices=TokenIntents.choices)
    expiring = StrictBooleanFilter()
    expires = UTCIsoDateTimeFilter()
    last_used__lt = UTCIsoDateTimeFilter(field_name="last_used", lookup_expr="lt", label="Last used before")
    last_used__gte = UTCIsoDateTimeFilter(field_name="last_used", lookup_expr="gte", label="Last used at or after")
    last_used__isnull = StrictBooleanFilter(field_name="last_used", lookup_expr="isnull", label="Never used")
    unused_since = UTCIsoDateTimeFilter(method="filter_unused_since", label="Not used since (never used included)")

    class Meta:
        model = Token
        fields = ["identifier", "intent", "user__username", "description", "expires", "expiring", "managed"]

    def filter_unused_since(self, queryset: QuerySet[Token], name: str, value: datetime) -> QuerySet[Token]:
        return queryset.filter(Q(last_used__isnull=True) | Q(last_used__lt=value))


class AmongIntegers(Expression):
    """``column = ANY('{1,2,3}'::bigint[])`` (PostgreSQL): the column is one of ``values``, written as one array
    literal instead of an ``IN`` list of a parameter per value.

    For a search term that matches a thousand owners, Django compiled and psycopg bound a thousand
    parameters three times per request (count, estimate, page), and PostgreSQL parsed them as many times.
    The values are integers (``int()`` of each, so nothing else can reach the SQL), and a literal rather
    than one array parameter: the planner estimates the rows from the values either way, but a statement
    prepared with an array parameter (``DB_PREPARED_STATEMENTS``) may switch to a generic plan that guesses
    ten values, which would change both the plan and the count's estimate.
    """

    output_field = BooleanField()

    def __init__(self, column: str, values: Iterable[int]) -> None:
        super().__init__()
        self.column: Any = F(column)
        self.values = [int(value) for value in values]

    def get_source_expressions(self) -> list[Any]:
        return [self.column]

    def set_source_expressions(self, exprs: Sequence[Any]) -> None:
        [self.column] = exprs

    def as_sql(self, compiler: Any, connection: Any, **extra_context: Any) -> tuple[str, list[Any]]:  # type: ignore[override]
        assert connection.vendor == "postgresql", "AmongIntegers is PostgreSQL-only; use __in elsewhere"
        sql, params = compiler.compile(self.column)
        literal = ",".join(str(value) for value in self.values)
        return f"{sql} = ANY('{{{literal}}}'::bigint[])", list(params)


def search_part(view: Any, request: Request, model: type[Any], conditions: list[Any] | None) -> QuerySet[Any] | None:
    """The rows of ``model`` meeting ``conditions``, which a search filter found to imply every search term (the
    owners a token search matches, the actions an event search starts), for the paginator to count first
    (``BoundedPaginator.part``); ``None`` without such conditions or when the request names any other filter
    of ``view``'s filterset, which the part would then not imply."""
    filterset = view.filterset_class.base_filters if view.filterset_class is not None else {}
    if not conditions or any(name in request.query_params for name in filterset):
        return None
    return model.objects.filter(*conditions)


class TokenSearchFilter(SearchFilter):
    """``search`` over the token's identifier, intent, description and owner's username (any case, anywhere).

    The same matches as DRF's search over those fields, shaped for indexes: the intents and owners a term
    matches are looked up first (a handful of enum values, a small user table), so the token query is an
    ``OR`` of conditions on the token table alone, which PostgreSQL answers with one bitmap over its
    trigram and b-tree indexes (core migration 0007) instead of a join tested against every token.
    """

    max_owner_ids = 5000  # more matching owners than this: a join instead of a list of ids

    def filter_queryset(self, request: Request, queryset: QuerySet[Any], view: Any) -> QuerySet[Any]:
        # Per term, the condition on owners alone, when the term matches owners by a list of ids: the tokens
        # meeting all of them are a part of the result, which the view may count first (``owner_conditions``).
        owner_conditions: list[Any] | None = []
        for term in self.get_search_terms(request):
            needle = term.lower()
            intents = [intent for intent in TokenIntents.values if needle in intent]
            owners = list(
                User.objects.filter(username__icontains=term)
                .order_by()
                .values_list("pk", flat=True)[: self.max_owner_ids + 1]
            )
            many = len(owners) > self.max_owner_ids
            by_owner: Any
            if many:
                by_owner = Q(user__username__icontains=term)
            elif connection.vendor == "postgresql":
                by_owner = AmongIntegers("user_id", owners)
            else:
                by_owner = Q(user_id__in=owners)
            if owner_conditions is not None:
                owner_conditions = [*owner_conditions, by_owner] if owners and not many else None
            queryset = queryset.filter(
                Q(identifier__icontains=term) | Q(description__icontains=term) | Q(intent__in=intents) | by_owner
            )
        if view is not None:
            view.search_owner_conditions = owner_conditions or None
        return queryset
