"""Reads of the audit log: who may read it, and event volume per day."""

from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Count, QuerySet
from django.db.models.functions import TruncDay
from django.utils import timezone

from core.models import User
from core.selectors import user_has_global_perm
from events.models import Event


def user_can_view_events(user: User) -> bool:
    """Active superusers and holders of the global ``authentik_events.view_event`` (user or group)."""
    return user_has_global_perm(user, "authentik_events", "view_event")


def event_volume(events: QuerySet[Event], *, history_days: int, now: datetime | None = None) -> list[dict[str, Any]]:
    """How many of ``events`` each action had per UTC day, over the last ``history_days`` days.

    One ``GROUP BY`` query. Rows are ``{"action", "time", "count"}`` with ``time`` the start of the day
    (UTC), ordered by day, then action. Days and actions without events are absent.
    """
    since = (now or timezone.now()) - timedelta(days=history_days)
    rows = (
        events.filter(created__gte=since)
        # The caller's ordering would become part of the GROUP BY: drop it.
        .order_by()
        .annotate(time=TruncDay("created", tzinfo=UTC))
        .values("action", "time")
        .annotate(count=Count("pk"))
        .order_by("time", "action")
    )
    return [dict(row) for row in rows]
