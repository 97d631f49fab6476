"""Audit-event API: the read-only viewset mounted at ``events/events``."""

from collections.abc import Callable, Iterable
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.viewsets import ReadOnlyModelViewSet

from core.filters import SingleValuedQueryParameters, StableOrderingFilter, search_part
from core.listing import iso_8601
from core.models import User
from events.filters import EventFilter, EventSearchFilter
from events.models import Event, EventAction
from events.selectors import MAX_HISTORY_DAYS, event_volume, user_can_view_events
from tokens_service.db import list_page_plans
from tokens_service.pagination import Pagination


class CanViewEvents(BasePermission):
    """Active superusers and holders of the global ``authentik_events.view_event``, for every method.

    Checked before the method: callers without it get 403 for anything, permitted callers get 405 for
    writes, which this API does not offer.
    """

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return isinstance(user, User) and user_can_view_events(user)


class EventSerializer(serializers.ModelSerializer):
    """Event Serializer"""

    # The API is read-only; the fields that are not read-only only keep authentik's required lists.
    pk = serializers.UUIDField(source="event_uuid", read_only=True)
    user = serializers.DictField(required=False)
    action = serializers.ChoiceField(choices=EventAction.choices)
    app = serializers.CharField()
    # Declared fields are popped off the class, so this does not shadow ``Serializer.context``.
    context = serializers.DictField(required=False)  # type: ignore[assignment]
    client_ip = serializers.CharField(allow_null=True, required=False)
    expires = serializers.DateTimeField(required=False)
    brand = serializers.DictField(required=False)

    class Meta:
        model = Event
        fields = ["pk", "user", "action", "app", "context", "client_ip", "created", "expires", "brand"]


class TypeCreateSerializer(serializers.Serializer):
    """Types of an object that can be created"""

    name = serializers.CharField()
    description = serializers.CharField()
    component = serializers.CharField()
    model_name = serializers.CharField()
    icon_url = serializers.CharField(required=False)
    requires_enterprise = serializers.BooleanField(default=False)
    deprecated = serializers.BooleanField(default=False)


class EventVolumeSerializer(serializers.Serializer):
    """Count of events of action created on day for a single event action"""

    action = serializers.ChoiceField(choices=EventAction.choices)
    time = serializers.DateTimeField()
    count = serializers.IntegerField()


class EventVolumeQuerySerializer(serializers.Serializer):
    history_days = serializers.IntegerField(min_value=1, max_value=MAX_HISTORY_DAYS, default=7)


def _dict_field(value: Any) -> dict[str, Any]:
    """``DictField`` (its child unvalidated): a copy with string keys; a value that is no object fails as there."""
    return {str(key): member for key, member in value.items()}


def event_list_rows(events: Iterable[Event]) -> list[dict[str, Any]]:
    """``EventSerializer(events, many=True).data``: the same members in the same order, the same values.

    ``pk`` the dashed uuid, ``action`` and ``app`` as stored, the JSON snapshots copied with string keys,
    ``client_ip`` as text or null, the times in ISO 8601 in the current time zone (``Z`` for UTC), as
    DRF's ``DateTimeField`` writes them (the list's time zone is looked up once).
    """
    when = iso_8601(timezone.get_current_timezone())
    return [
        {
            "pk": str(event.event_uuid),
            "user": _dict_field(event.user),
            "action": event.action,
            "app": str(event.app),
            "context": _dict_field(event.context),
            "client_ip": None if event.client_ip is None else str(event.client_ip),
            "created": when(event.created),
            "expires": when(event.expires),
            "brand": _dict_field(event.brand),
        }
        for event in events
    ]


class EventViewSet(ReadOnlyModelViewSet):
    """Event Read-Only Viewset"""

    queryset = Event.objects.all()
    serializer_class = EventSerializer
    lookup_field = "event_uuid"
    permission_classes = [CanViewEvents]
    filter_backends = [SingleValuedQueryParameters, DjangoFilterBackend, EventSearchFilter, StableOrderingFilter]
    filterset_class = EventFilter
    # What EventSearchFilter matches (by prefix): action, user.username, client_ip, context.model.name.
    search_fields = ["action", "user", "client_ip", "context"]
    ordering = ["-created"]
    ordering_fields = ["created", "action", "app", "client_ip", "expires"]

    def get_queryset(self) -> QuerySet[Event]:
        return Event.objects.all()

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        # DRF's list, with the events of the searched actions counted first when they are enough.
        # (A comment, not a docstring: the schema would show a docstring.)
        queryset = self.filter_queryset(self.get_queryset())
        paginator = self.paginator
        if isinstance(paginator, Pagination):
            paginator.count_part = self._searched_actions_events(request)
        with list_page_plans(request.query_params):  # prepared plans only when nothing is filtered
            page = self.paginate_queryset(queryset)
            if page is None:
                return Response(self.get_serializer(queryset, many=True).data)
            # The page as EventSerializer(page, many=True).data gives it, without building the serializer's
            # fields and calling each field per row (most of the list's CPU): held to it by
            # tests/api/test_events_api.py.
            return self.get_paginated_response(event_list_rows(page))

    def _searched_actions_events(self, request: Request) -> QuerySet[Event] | None:
        # A search whose terms each start known actions (EventSearchFilter.action_conditions), and no other
        # filter: the events of actions every term starts all match, and counting them is an index range
        # (event_action_pk_idx), where counting the search builds a month's bitmap over five indexes
        # (search=login: about 125,000 events). The paginator counts them first (BoundedPaginator.part);
        # the count is the same either way.
        return search_part(self, request, Event, getattr(self, "search_action_conditions", None))

    @extend_schema(responses={200: TypeCreateSerializer(many=True)})
    @action(detail=False, methods=["get"], pagination_class=None, filter_backends=[])
    def actions(self, request: Request) -> Response:
        """Get all actions"""
        data = [
            {"name": label, "description": "", "component": value, "model_name": ""}
            for value, label in EventAction.choices
        ]
        return Response(TypeCreateSerializer(data, many=True).data)

    def _rollup_action_filter(self) -> Callable[[str], bool] | None:
        """Which actions the request's filters let through, when they filter by action only; else ``None``.

        Then the volume can come from the per-day rollup: it keeps days and actions, nothing else.
        """
        params = self.request.query_params
        given = {name for name, values in params.lists() if any(values)} - {"history_days", "ordering", "format"}
        if not given <= {"action", "actions"}:
            return None
        contains = params.get("action", "").lower()
        exact = set(params.getlist("actions")) - {""}
        return lambda action: contains in action.lower() and (not exact or action in exact)

    @extend_schema(
        # The bounds the query serializer enforces, so that the schema does not promise what is a 400.
        parameters=[
            OpenApiParameter(
                "history_days",
                {"type": "integer", "minimum": 1, "maximum": MAX_HISTORY_DAYS},
                default=7,
            )
        ],
        responses={200: EventVolumeSerializer(many=True)},
    )
    @action(detail=False, methods=["get"], pagination_class=None)
    def volume(self, request: Request) -> Response:
        """Get event volume for specified filters and timeframe"""
        query = EventVolumeQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        events = self.filter_queryset(self.get_queryset())
        rows = event_volume(
            events, history_days=query.validated_data["history_days"], action_filter=self._rollup_action_filter()
        )
        # What EventVolumeSerializer(rows, many=True).data gives, without its per-field work on every row (a
        # year of days times actions is thousands of rows): each day is formatted once.
        time_field = serializers.DateTimeField()
        times = {time: time_field.to_representation(time) for time in {row["time"] for row in rows}}
        return Response([{"action": row["action"], "time": times[row["time"]], "count": row["count"]} for row in rows])
