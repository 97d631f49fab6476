"""App configuration of the audit log."""

from django.apps import AppConfig


class EventsConfig(AppConfig):
    name = "events"
    label = "authentik_events"
    verbose_name = "Events"
    default_auto_field = "django.db.models.BigAutoField"
