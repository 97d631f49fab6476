"""Query-string filters of the event list and volume, named as in authentik's ``events_events_list``."""

from django import forms
from django.db.models import Q, QuerySet
from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema_field

from events.models import Event, EventAction


# The schema says which strings are accepted (a non-address is a 400), keeping the reference's plain type.
@extend_schema_field({"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]})
class IPAddressFilter(filters.CharFilter):
    """Exact match on an IP address column; anything that is not an address is a 400."""

    field_class = forms.GenericIPAddressField


@extend_schema_field({"$ref": "#/components/schemas/EventActions"})
class EventActionsFilter(filters.MultipleChoiceFilter):
    """Repeatable exact actions; documented as an array of the shared ``EventActions`` enum."""


class EventFilter(filters.FilterSet):
    """Filters over the event columns and over the JSON snapshots an event keeps.

    ``action`` matches case-insensitively anywhere in the action (``action=model`` finds every
    ``model_*`` event), as in authentik; ``actions`` (repeatable) matches exact actions. A malformed
    ``client_ip`` is a 400, not an empty result and not a database error.
    """

    action = filters.CharFilter(field_name="action", lookup_expr="icontains")
    actions = EventActionsFilter(field_name="action", choices=EventAction.choices)
    username = filters.CharFilter(field_name="user__username", label="Username")
    client_ip = IPAddressFilter(field_name="client_ip")
    brand_name = filters.CharFilter(field_name="brand__name", label="Brand name")
    context_model_app = filters.CharFilter(field_name="context__model__app", label="Context Model App")
    context_model_name = filters.CharFilter(field_name="context__model__model_name", label="Context Model Name")
    context_model_pk = filters.CharFilter(method="filter_context_model_pk", label="Context Model Primary Key")
    context_authorized_app = filters.CharFilter(
        field_name="context__authorized_application__pk", label="Context Authorized application"
    )
    context_device = filters.CharFilter(field_name="context__device__pk", label="Context Device Primary Key")

    class Meta:
        model = Event
        fields = ["action", "actions", "username", "client_ip", "brand_name"]

    def filter_context_model_pk(self, queryset: QuerySet[Event], name: str, value: str) -> QuerySet[Event]:
        # Events store uuid keys as 32 hex digits; a client may send the dashed form. Integer keys are
        # stored as JSON numbers, so a numeric value matches those too.
        hex_value = value.replace("-", "")
        query = Q(context__model__pk=hex_value) | Q(context__model__pk=value)
        # Bounded, so the number fits a 64-bit database integer on every backend.
        if value.isascii() and value.isdigit() and len(value) <= 18:
            query |= Q(context__model__pk=int(value))
        return queryset.filter(query)
