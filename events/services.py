"""The only writer of audit events (their deletion past retention is ``events.retention``)."""

from typing import Any

from django.db import models

from events.models import Event, EventAction
from tokens_service.request_meta import RequestMeta


def actor_snapshot(actor: Any) -> dict[str, Any]:
    """What an event keeps of the user who acted: enough to find them, nothing secret."""
    if actor is None or not getattr(actor, "is_authenticated", False):
        return {"username": "AnonymousUser", "pk": -1, "is_anonymous": True}
    return {"pk": actor.pk, "username": actor.get_username(), "email": actor.email}


def model_summary(instance: models.Model) -> dict[str, Any]:
    pk = instance.pk
    return {
        "app": instance._meta.app_label,
        "model_name": instance._meta.model_name,
        "pk": pk.hex if hasattr(pk, "hex") else pk,
        "name": str(instance),
    }


def event_values(
    *,
    action: EventAction,
    actor: Any,
    request_meta: RequestMeta,
    app: str,
    context: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The column values of one event (all but its uuid and timestamps, which the row gets by default).

    ``event_create`` inserts them through the ORM; ``core.fastpath`` binds the same values into its SQL
    statement, so both write the same event. ``context`` must already be free of secrets; the request
    summary is added here.
    """
    return {
        "action": action,
        "app": app,
        "user": actor_snapshot(actor),
        "client_ip": request_meta.client_ip,
        "context": {**(context or {}), "http_request": request_meta.as_context()},
    }


def event_create(
    *,
    action: EventAction,
    actor: Any,
    request_meta: RequestMeta,
    app: str,
    context: dict[str, Any] | None = None,
) -> Event:
    """Insert one event. Call it inside the caller's transaction so the event and the change commit together.

    ``context`` must already be free of secrets; the request summary is added here.
    """
    return Event.objects.create(
        **event_values(action=action, actor=actor, request_meta=request_meta, app=app, context=context)
    )
