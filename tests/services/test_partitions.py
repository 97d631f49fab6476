"""The event table partitioned by month (PostgreSQL): migration of existing rows, partitions ahead, retention."""

import io
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from events.models import Event, EventAction
from events.partitions import (
    DEFAULT_PARTITION,
    TABLE,
    is_partitioned,
    month_start,
    next_month,
    partition_name,
    partitions,
)
from tests.helpers import ON_POSTGRES, requires_postgres

BEFORE = ("authentik_events", "0003_scale_indexes_and_volume_rollup")
PARTITIONED = ("authentik_events", "0004_partition_events_by_month")


def migrate_events(target: tuple[str, str]) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([target])


def located(pk: uuid.UUID) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT tableoid::regclass::text FROM {TABLE} WHERE event_uuid = %s", [pk])  # noqa: S608
        return cursor.fetchone()[0]


def command(name: str, **options) -> str:
    out = io.StringIO()
    call_command(name, stdout=out, **options)
    return out.getvalue()


@pytest.mark.skipif(ON_POSTGRES, reason="the SQLite lane's plain table; the PostgreSQL lane tests partitions")
def test_sqlite_has_a_plain_table_and_the_command_says_so(db):
    assert not is_partitioned()
    assert "not partitioned" in command("create_event_partitions")


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_migration_moves_existing_rows_into_their_months():
    migrate_events(BEFORE)
    try:
        assert not is_partitioned()
        now = timezone.now()
        times = [now, now - timedelta(days=45), now - timedelta(days=400)]
        made = [
            Event.objects.create(action=EventAction.LOGIN, app="test", created=created, user={"username": "u"})
            for created in times
        ]
        migrate_events(PARTITIONED)
        assert is_partitioned()
        for event, created in zip(made, times, strict=True):
            stored = Event.objects.get(pk=event.pk)
            assert stored.created == created
            assert stored.user == {"username": "u"}
            assert located(event.pk) == partition_name(month_start(created))
        names = [p.name for p in partitions()]
        # From the oldest row's month to three months ahead, then the default partition.
        assert names[0] == partition_name(month_start(times[-1]))
        ahead = month_start(now)
        for _ in range(3):
            ahead = next_month(ahead)
        assert names[-2:] == [partition_name(ahead), DEFAULT_PARTITION]
        # The indexes of the plain table exist on the partitioned one.
        with connection.cursor() as cursor:
            cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", [TABLE])
            indexes = {row[0] for row in cursor.fetchall()}
        assert {"event_username_idx", "event_model_pk_idx", "event_created_action_idx", f"{TABLE}_pkey"} <= indexes
        # Each partition carries the expression statistics the planner needs for the JSON filters.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_statistic_ext WHERE stxrelid = to_regclass(%s)",
                [partition_name(month_start(now))],
            )
            assert cursor.fetchone()[0] >= 8
        # And back: one plain table with the same rows.
        migrate_events(BEFORE)
        assert not is_partitioned()
        assert Event.objects.count() == 3
    finally:
        migrate_events(PARTITIONED)


@requires_postgres
def test_writes_land_in_their_month_or_the_default_partition(db):
    assert is_partitioned()
    now_event = Event.objects.create(action=EventAction.LOGIN, app="test")
    assert located(now_event.pk) == partition_name(month_start(timezone.now()))
    far = Event.objects.create(action=EventAction.LOGIN, app="test", created=datetime(2001, 5, 17, tzinfo=UTC))
    assert located(far.pk) == DEFAULT_PARTITION


@requires_postgres
def test_create_event_partitions_goes_ahead_and_moves_default_rows(db):
    now = timezone.now()
    month = month_start(now)
    for _ in range(5):
        month = next_month(month)  # five months ahead: beyond what the migration created
    early = Event.objects.create(action=EventAction.LOGIN, app="test", created=month + timedelta(days=2))
    assert located(early.pk) == DEFAULT_PARTITION
    output = command("create_event_partitions", months_ahead=6)
    assert partition_name(month) in output
    assert located(early.pk) == partition_name(month)
    assert "Created 0 partitions." in command("create_event_partitions", months_ahead=6)


@requires_postgres
def test_bad_months_ahead_is_refused(db):
    from django.core.management import CommandError

    with pytest.raises(CommandError):
        command("create_event_partitions", months_ahead=-1)


@requires_postgres
def test_prune_drops_a_month_whose_rows_all_expired_and_deletes_rows_elsewhere(db):
    now = timezone.now()
    old_month = month_start(now - timedelta(days=100))
    command_output = io.StringIO()
    # Partitions of past months (the migration starts at the current month on an empty table).
    from events.partitions import create_month

    create_month(old_month)
    expired = [
        Event.objects.create(action=EventAction.LOGIN, app="t", created=old_month + timedelta(days=d), expires=now)
        for d in (1, 2, 3)
    ]
    kept_month = month_start(now - timedelta(days=40))
    create_month(kept_month)
    mixed_expired = Event.objects.create(
        action=EventAction.LOGIN, app="t", created=kept_month + timedelta(days=1), expires=now - timedelta(days=1)
    )
    mixed_kept = Event.objects.create(
        action=EventAction.LOGIN, app="t", created=kept_month + timedelta(days=2), expires=now + timedelta(days=9)
    )
    call_command("prune_expired", stdout=command_output)
    names = [p.name for p in partitions()]
    assert partition_name(old_month) not in names  # dropped whole
    assert partition_name(kept_month) in names  # one unexpired row: kept, its expired row deleted
    assert not Event.objects.filter(pk__in=[e.pk for e in [*expired, mixed_expired]]).exists()
    assert Event.objects.filter(pk=mixed_kept.pk).exists()
    assert "Deleted 4 expired events" in command_output.getvalue()
