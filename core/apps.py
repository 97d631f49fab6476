"""App configuration of users and tokens."""

from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    label = "authentik_core"
    verbose_name = "Core"
    default_auto_field = "django.db.models.BigAutoField"
