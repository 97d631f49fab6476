"""Reads of the audit log: who may read it, and event volume per day."""

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.db import connections
from django.db.models import Count, QuerySet
from django.db.models.functions import TruncDate, TruncDay
from django.utils import timezone

from core.models import User
from core.selectors import user_has_global_perm
from events.models import Event, EventVolume

MAX_HISTORY_DAYS = 366  # the longest history /events/volume/ serves


def user_can_view_events(user: User) -> bool:
    """Active superusers and holders of the global ``authentik_events.view_event`` (user or group)."""
    return user_has_global_perm(user, "authentik_events", "view_event")


# A day is rolled up once it ended this long ago: no transaction still running can add an event to it
# (statements and idle transactions are cut off well before, see DB_STATEMENT_TIMEOUT_MS and
# DB_IDLE_IN_TRANSACTION_TIMEOUT_MS).
ROLLUP_SETTLE = timedelta(minutes=5)
COUNTED = ""  # EventVolume.action of the row that marks a day as counted


def _day_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _rollup_days() -> TruncDate:
    """``EventVolume.day`` read as a date (its UTC day). Every rollup day is a UTC midnight (``_day_start``
    or ``TruncDay`` in UTC), so the date is the whole value; a date is cheaper to read than a timestamp:
    on PostgreSQL, Django's loader of ``timestamp with time zone`` is Python code (about 10 us a value,
    most of a year's volume request), a date is loaded in C."""
    return TruncDate("day", tzinfo=UTC)


def _rollup_rows(start: datetime, end: datetime) -> list[tuple[str, datetime, int]]:
    """The rollup's ``(action, day, count)`` rows of the days in ``[start, end)``, ``day`` a UTC midnight.

    Read on a plain cursor, without the queryset's per-value converters: a year is thousands of rows naming
    at most 366 days, so each day's value, as the database returns it (a date, or its ISO text on SQLite),
    is turned into its midnight once.
    """
    rollup = EventVolume.objects.filter(day__gte=start, day__lt=end).exclude(action=COUNTED).order_by()
    query = rollup.values_list("action", _rollup_days(), "count").query
    sql, params = query.get_compiler(using=rollup.db).as_sql()
    with connections[rollup.db].cursor() as cursor:
        cursor.execute(sql, params)
        raw = cursor.fetchall()
    midnights: dict[Any, datetime] = {}
    for value in {day for _, day, _ in raw}:
        day = date.fromisoformat(value) if isinstance(value, str) else value
        midnights[value] = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return [(action, midnights[day], count) for action, day, count in raw]


def _live_volume(events: QuerySet[Event], start: datetime, end: datetime | None) -> list[dict[str, Any]]:
    rows = events.filter(created__gte=start)
    if end is not None:
        rows = rows.filter(created__lt=end)
    grouped = (
        # The caller's ordering would become part of the GROUP BY: drop it.
        rows.order_by()
        .annotate(time=TruncDay("created", tzinfo=UTC))
        .values("action", "time")
        .annotate(count=Count("pk"))
    )
    return [dict(row) for row in grouped]


def event_volume_rollup(*, first_day: datetime, now: datetime | None = None) -> tuple[datetime, datetime]:
    """Make sure every settled day from ``first_day`` on is in ``EventVolume``; return the settled range.

    Missing days are counted with one ``GROUP BY`` over the events from the first to the last missing day
    (an index range on ``created``). Concurrent callers may count the same day; the unique constraint
    keeps one copy. Returns ``(first_day, end)``: the rollup covers ``[first_day, end)``.
    """
    now = now or timezone.now()
    end = _day_start(now - ROLLUP_SETTLE)
    first_day = _day_start(first_day)
    if first_day >= end:
        return first_day, first_day
    marks = EventVolume.objects.filter(day__gte=first_day, day__lt=end, action=COUNTED)
    counted = set(marks.values_list(_rollup_days(), flat=True))
    days = []
    day = first_day
    while day < end:
        if day.date() not in counted:
            days.append(day)
        day += timedelta(days=1)
    if days:
        rows = _live_volume(Event.objects.all(), days[0], days[-1] + timedelta(days=1))
        missing = set(days)
        volumes = [EventVolume(day=row["time"], action=row["action"], count=row["count"]) for row in rows]
        volumes = [volume for volume in volumes if volume.day in missing]
        volumes += [EventVolume(day=day, action=COUNTED, count=0) for day in days]
        EventVolume.objects.bulk_create(volumes, ignore_conflicts=True, batch_size=1000)
    return first_day, end


def event_volume(
    events: QuerySet[Event],
    *,
    history_days: int,
    now: datetime | None = None,
    action_filter: Callable[[str], bool] | None = None,
) -> list[dict[str, Any]]:
    """How many of ``events`` each action had per UTC day, since ``history_days`` days before now.

    Rows are ``{"action", "time", "count"}`` with ``time`` the start of the day (UTC), ordered by day,
    then action. Days and actions without events are absent.

    With ``action_filter`` (``events`` is then the event table filtered by action only, and
    ``action_filter`` says which actions pass), whole past days come from the ``EventVolume`` rollup and
    only the first, partial day and the unsettled last hours are counted from the events: a few index
    ranges instead of every event of the period. Without it (any other filter) every day is counted
    from ``events``, through the indexes of those filters.
    """
    now = now or timezone.now()
    since = now - timedelta(days=history_days)
    if action_filter is None:
        rows = _live_volume(events, since, None)
    else:
        first_full_day = _day_start(since) + timedelta(days=1)
        start, end = event_volume_rollup(first_day=first_full_day, now=now)
        rows = _live_volume(events, since, start)
        # Tuples, not model instances, and days read as dates (``_rollup_rows``): a year of days times actions
        # is thousands of rows, and building an instance per row, then loading a timestamp per row, was most
        # of the request's time.
        rows += [
            {"action": action, "time": day, "count": count}
            for action, day, count in _rollup_rows(start, end)
            if action_filter(action)
        ]
        rows += _live_volume(events, max(end, since), None)
    rows = [row for row in rows if row["count"]]
    return sorted(rows, key=lambda row: (row["time"], row["action"]))
