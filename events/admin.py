"""Read-only admin of the audit log: events are written only by ``events.services``."""

import json
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString

from events.models import Event


def _pretty(value: Any) -> SafeString:
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    """Lists and shows events; nobody can add, change or delete one here, superusers included."""

    list_display = ("created", "action", "actor", "app", "client_ip")
    list_filter = ("action", "app")
    search_fields = ("action", "app", "user__username")
    date_hierarchy = "created"
    ordering = ("-created",)
    fields = (
        "event_uuid",
        "action",
        "app",
        "actor_json",
        "client_ip",
        "created",
        "expires",
        "context_json",
        "brand_json",
    )
    readonly_fields = fields

    @admin.display(description="user")
    def actor(self, event: Event) -> str:
        return str(event.user.get("username", "")) if isinstance(event.user, dict) else ""

    @admin.display(description="user")
    def actor_json(self, event: Event) -> SafeString:
        return _pretty(event.user)

    @admin.display(description="context")
    def context_json(self, event: Event) -> SafeString:
        return _pretty(event.context)

    @admin.display(description="brand")
    def brand_json(self, event: Event) -> SafeString:
        return _pretty(event.brand)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
