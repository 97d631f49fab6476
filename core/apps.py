"""App configuration of users and tokens."""

from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    label = "authentik_core"
    verbose_name = "Core"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Signal handlers: user deletion deletes the user's tokens through the token services, and
        # admin logins are audited and rate-limited (core/signals.py).
        from core import signals  # noqa: F401
