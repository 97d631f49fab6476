"""Retention: delete expired audit events and expired non-API tokens, in small batches."""

from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone

from core.services import tokens_delete_expired
from events.models import Event, EventVolume
from events.partitions import drop_expired_partitions, is_partitioned
from events.selectors import event_volume_rollup
from events.utils import SYSTEM_REQUEST

DEFAULT_BATCH_SIZE = 500
MAX_HISTORY_DAYS = 366  # the longest history /events/volume/ serves


def events_delete_expired(*, now: datetime, batch_size: int) -> int:
    """Delete events whose ``expires`` is at or before ``now``, ``batch_size`` rows per transaction.

    On a partitioned table (PostgreSQL), month partitions that ended before ``now`` and hold no
    unexpired row are dropped whole first (``events.partitions.drop_expired_partitions``).

    Events are append-only and nothing else locks them, so each batch is a short ``DELETE`` by
    primary key found through the ``expires`` index; serving requests never wait behind a long one.
    """
    total = 0
    newest: datetime | None = None
    if is_partitioned():
        # Whole months first: a partition without an unexpired row is dropped, not emptied row by row.
        total, newest = drop_expired_partitions(now=now)
    while True:
        with transaction.atomic():
            rows = list(Event.objects.filter(expires__lte=now).order_by().values_list("pk", "created")[:batch_size])
            if not rows:
                break
            deleted, _ = Event.objects.filter(pk__in=[pk for pk, _ in rows]).delete()
        total += deleted
        latest = max(created for _, created in rows)
        newest = latest if newest is None else max(newest, latest)
        if len(rows) < batch_size:
            break
    if newest is not None:
        # The rolled-up days that lost events are counted again when next needed.
        EventVolume.objects.filter(day__lte=newest).delete()
    return total


class Command(BaseCommand):
    help = (
        "Delete audit events past their retention date and expired tokens of every intent but api. "
        "Runs in short batches, so it is safe to run (e.g. from cron) while the service serves."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size",
            type=int,
            default=DEFAULT_BATCH_SIZE,
            help=f"Rows deleted per transaction (default {DEFAULT_BATCH_SIZE}).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        batch_size = options["batch_size"]
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        # One cut-off for the whole run: rows that expire while it runs wait for the next run, and the
        # loops end even if events keep expiring.
        now = timezone.now()
        events = events_delete_expired(now=now, batch_size=batch_size)
        # Tokens second: their model_deleted events are new and far from expiry.
        tokens = tokens_delete_expired(now=now, batch_size=batch_size, request_meta=SYSTEM_REQUEST)
        # Count the days that are over into the volume rollup, so /events/volume/ requests need not.
        event_volume_rollup(first_day=now - timedelta(days=MAX_HISTORY_DAYS + 1), now=now)
        self.stdout.write(f"Deleted {events} expired events and {tokens} expired tokens.")
