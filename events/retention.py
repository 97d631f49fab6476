"""Retention of audit events: delete those past their ``expires`` in short batches, keep the rollup current."""

import logging
from datetime import datetime, timedelta

from django.db import transaction

from events.models import Event, EventVolume
from events.partitions import PartitionLayoutError, drop_expired_partitions, is_partitioned
from events.selectors import MAX_HISTORY_DAYS, event_volume_rollup

logger = logging.getLogger(__name__)


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
        try:
            total, newest = drop_expired_partitions(now=now)
        except PartitionLayoutError:
            # Partitions this module does not keep (migration 0005 not applied, or changed by hand): no month
            # is freed whole, but the expired rows are still deleted, one by one, below.
            logger.warning("Event partitions not freed whole: unexpected partition layout.", exc_info=True)
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


def events_prune_expired(*, now: datetime, batch_size: int) -> int:
    """Retention of events: ``events_delete_expired``, then the volume rollup of the days that are over.

    Counting finished days into ``EventVolume`` here means ``/events/volume/`` requests need not.
    Returns how many events were deleted.
    """
    deleted = events_delete_expired(now=now, batch_size=batch_size)
    event_volume_rollup(first_day=now - timedelta(days=MAX_HISTORY_DAYS + 1), now=now)
    return deleted
