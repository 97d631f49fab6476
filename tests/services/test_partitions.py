"""The event table partitioned by month (PostgreSQL): migration of existing rows, partitions ahead, retention.

Layout since migration 0005: contiguous months between two bounded catch-all ranges (``..._before`` from
MINVALUE, ``..._after`` to MAXVALUE), no default partition, so that the partitions are ordered.
"""

import io
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from events import partitions as partitions_module
from events.models import Event, EventAction
from events.partitions import (
    AFTER_PARTITION,
    BEFORE_PARTITION,
    DEFAULT_PARTITION,
    TABLE,
    EventTableBusy,
    PartitionLayoutError,
    create_month,
    create_months,
    is_partitioned,
    layout,
    month_start,
    next_month,
    partition_name,
    partitions,
)
from tests.helpers import ON_POSTGRES, requires_postgres

BEFORE = ("authentik_events", "0003_scale_indexes_and_volume_rollup")
PARTITIONED = ("authentik_events", "0004_partition_events_by_month")
BOUNDED = ("authentik_events", "0005_bounded_catch_all_partitions")
LATEST = BOUNDED


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
        migrate_events(LATEST)


def months_ahead(count: int) -> datetime:
    month = month_start(timezone.now())
    for _ in range(count):
        month = next_month(month)
    return month


def page_plan() -> str:
    """The plan of a newest-first page of events, with sorting and sequential scans discouraged so that
    the choice is between merging the partitions' index scans and reading them one after another."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_sort = off")
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(
            f"EXPLAIN SELECT event_uuid FROM {TABLE} ORDER BY created DESC LIMIT 20"  # noqa: S608
        )
        return "\n".join(row[0] for row in cursor.fetchall())


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_migration_0005_replaces_the_default_partition_by_bounded_ranges():
    migrate_events(PARTITIONED)
    try:
        now = timezone.now()
        # Rows the default partition holds at 0004: long ago, and beyond the months created ahead.
        made = {
            "old": Event.objects.create(action=EventAction.LOGIN, app="t", created=datetime(2001, 5, 17, tzinfo=UTC)),
            "ahead": Event.objects.create(action=EventAction.LOGIN, app="t", created=months_ahead(7)),
            "now": Event.objects.create(action=EventAction.LOGIN, app="t", created=now),
        }
        assert located(made["old"].pk) == located(made["ahead"].pk) == DEFAULT_PARTITION
        # A month dropped by an earlier retention between kept ones leaves a gap, which 0005 fills.
        gap = next_month(month_start(now))
        months = [p.name for p in partitions() if not p.default]  # from an earlier test's oldest row, or now
        assert months[-1] == partition_name(months_ahead(3))
        assert partition_name(gap) in months
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE {partition_name(gap)}")
        in_gap = Event.objects.create(action=EventAction.LOGIN, app="t", created=gap + timedelta(hours=5))
        assert located(in_gap.pk) == DEFAULT_PARTITION
        # With a default partition the page merges every partition's index scan (Merge Append).
        assert "Merge Append" in page_plan()

        migrate_events(BOUNDED)
        ranged = layout()
        assert [p.name for p in partitions()] == [BEFORE_PARTITION, *months, AFTER_PARTITION]
        assert ranged.upper == next_month(months_ahead(3))
        assert located(made["old"].pk) == BEFORE_PARTITION
        assert located(made["ahead"].pk) == AFTER_PARTITION
        assert located(made["now"].pk) == partition_name(month_start(now))
        assert located(in_gap.pk) == partition_name(gap)
        assert Event.objects.count() == 4
        with connection.cursor() as cursor:
            cursor.execute("SELECT partdefid FROM pg_partitioned_table WHERE partrelid = to_regclass(%s)", [TABLE])
            assert cursor.fetchone()[0] == 0  # no default partition
            cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", [AFTER_PARTITION])
            assert len(cursor.fetchall()) >= 10  # the parent's indexes
            cursor.execute("SELECT count(*) FROM pg_statistic_ext WHERE stxrelid = to_regclass(%s)", [AFTER_PARTITION])
            assert cursor.fetchone()[0] >= 8
        # The partitions are ordered: the page reads them one after another, newest first.
        plan = page_plan()
        assert "Merge Append" not in plan
        assert plan.index(AFTER_PARTITION) < plan.index(partition_name(month_start(now))) < plan.index(BEFORE_PARTITION)

        # And back: a default partition holding the catch-alls' rows; the filled month stays.
        migrate_events(PARTITIONED)
        assert [p.name for p in partitions()][-1] == DEFAULT_PARTITION
        assert not any(p.name in (BEFORE_PARTITION, AFTER_PARTITION) for p in partitions())
        assert located(made["old"].pk) == located(made["ahead"].pk) == DEFAULT_PARTITION
        assert located(in_gap.pk) == partition_name(gap)
        assert Event.objects.count() == 4
        with pytest.raises(PartitionLayoutError):
            layout()  # the functions of the ranged layout refuse a default partition
    finally:
        migrate_events(LATEST)


@requires_postgres
def test_writes_land_in_their_month_or_a_catch_all(db):
    assert is_partitioned()
    now_event = Event.objects.create(action=EventAction.LOGIN, app="test")
    assert located(now_event.pk) == partition_name(month_start(timezone.now()))
    far = Event.objects.create(action=EventAction.LOGIN, app="test", created=datetime(2001, 5, 17, tzinfo=UTC))
    assert located(far.pk) == BEFORE_PARTITION
    future = Event.objects.create(action=EventAction.LOGIN, app="test", created=months_ahead(40))
    assert located(future.pk) == AFTER_PARTITION
    # The extremes of the type have a partition too.
    for moment in (datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, tzinfo=UTC)):
        Event.objects.create(action=EventAction.LOGIN, app="test", created=moment)
    names = [p.name for p in partitions()]
    assert (names[0], names[-1]) == (BEFORE_PARTITION, AFTER_PARTITION)


@requires_postgres
def test_create_event_partitions_goes_ahead_and_moves_catch_all_rows(db):
    month = months_ahead(5)  # beyond what the migration created (three months ahead)
    early = Event.objects.create(action=EventAction.LOGIN, app="test", created=month + timedelta(days=2))
    later = Event.objects.create(action=EventAction.LOGIN, app="test", created=months_ahead(9))
    assert located(early.pk) == located(later.pk) == AFTER_PARTITION
    output = command("create_event_partitions", months_ahead=6)
    assert f"Created 3 partitions: {partition_name(months_ahead(4))}, {partition_name(month)}," in output
    assert located(early.pk) == partition_name(month)
    assert located(later.pk) == AFTER_PARTITION  # beyond the new months: still in the catch-all
    assert layout().upper == months_ahead(7)
    assert "Created 0 partitions." in command("create_event_partitions", months_ahead=6)
    # The partitions stay ordered: no default partition appears, the catch-all kept its indexes.
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", [AFTER_PARTITION])
        assert len(cursor.fetchall()) >= 10
    assert "Merge Append" not in page_plan()


@requires_postgres
def test_an_older_month_fills_the_months_up_to_the_first_one(db):
    first = layout().lower
    old = Event.objects.create(action=EventAction.LOGIN, app="t", created=first - timedelta(days=70))
    older = Event.objects.create(action=EventAction.LOGIN, app="t", created=first - timedelta(days=400))
    old_month = month_start(first - timedelta(days=70))
    assert create_month(old_month)
    assert not create_month(old_month)
    assert layout().lower == old_month
    assert [p.start for p in layout().months][:3] == [
        old_month,
        next_month(old_month),
        next_month(next_month(old_month)),
    ]
    assert located(old.pk) == partition_name(old_month)
    assert located(older.pk) == BEFORE_PARTITION


@requires_postgres
def test_bad_month_ranges_and_layouts_are_refused(db):
    with pytest.raises(ValueError, match="first month"):
        create_months(months_ahead(2), months_ahead(1))
    before = [p.name for p in partitions()]
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {TABLE} DETACH PARTITION {partition_name(months_ahead(1))}")
    with pytest.raises(PartitionLayoutError, match="gap"):
        create_months(months_ahead(1), months_ahead(8))
    with pytest.raises(CommandError, match="gap"):
        command("create_event_partitions", months_ahead=8)
    assert [p.name for p in partitions()] == [name for name in before if name != partition_name(months_ahead(1))]


@requires_postgres
def test_bad_months_ahead_is_refused(db):
    with pytest.raises(CommandError):
        command("create_event_partitions", months_ahead=-1)


@requires_postgres
def test_prune_drops_a_month_whose_rows_all_expired_and_deletes_rows_elsewhere(db):
    now = timezone.now()
    old_month = month_start(now - timedelta(days=100))
    command_output = io.StringIO()
    # Partitions of past months (the migration starts at the current month on an empty table).
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
    assert layout().lower == kept_month  # the months before it dropped, the catch-all extended over them
    assert not Event.objects.filter(pk__in=[e.pk for e in [*expired, mixed_expired]]).exists()
    assert Event.objects.filter(pk=mixed_kept.pk).exists()
    assert "Deleted 4 expired events" in command_output.getvalue()
    # A late write into the dropped months still has a partition.
    late = Event.objects.create(action=EventAction.LOGIN, app="t", created=old_month + timedelta(days=4))
    assert located(late.pk) == BEFORE_PARTITION


@requires_postgres
def test_prune_empties_an_expired_month_after_a_kept_one_and_keeps_it(db):
    now = timezone.now()
    kept_month = month_start(now - timedelta(days=100))
    expired_month = next_month(kept_month)
    create_month(kept_month)
    kept = Event.objects.create(
        action=EventAction.LOGIN, app="t", created=kept_month + timedelta(days=1), expires=now + timedelta(days=9)
    )
    expired = [
        Event.objects.create(
            action=EventAction.LOGIN,
            app="t",
            created=expired_month + timedelta(days=d),
            expires=now - timedelta(days=1),
        )
        for d in (1, 2)
    ]
    from events.partitions import drop_expired_partitions

    dropped, newest = drop_expired_partitions(now=now)
    assert (dropped, newest) == (2, next_month(expired_month))
    names = [p.name for p in partitions()]
    assert partition_name(kept_month) in names
    assert partition_name(expired_month) in names  # emptied, kept: the months stay contiguous
    assert located(kept.pk) == partition_name(kept_month)
    assert not Event.objects.filter(pk__in=[e.pk for e in expired]).exists()
    layout()  # still contiguous
    # An empty month is left alone: nothing counted, nothing to recount in the rollup.
    assert drop_expired_partitions(now=now) == (0, None)
    # Once the month before it goes, it goes too.
    assert drop_expired_partitions(now=now + timedelta(days=10)) == (1, next_month(kept_month))
    assert layout().lower > expired_month


@requires_postgres
def test_prune_still_deletes_expired_rows_when_the_layout_is_unexpected(db, caplog):
    now = timezone.now()
    expired = Event.objects.create(action=EventAction.LOGIN, app="t", created=now, expires=now - timedelta(days=1))
    with connection.cursor() as cursor:  # a gap: someone detached a month by hand
        cursor.execute(f"ALTER TABLE {TABLE} DETACH PARTITION {partition_name(months_ahead(2))}")
    output = command("prune_expired")
    assert "Deleted 1 expired events" in output
    assert not Event.objects.filter(pk=expired.pk).exists()
    assert "unexpected partition layout" in caplog.text


def other_session() -> Any:
    """A second PostgreSQL session on the test database, outside the test's transaction."""
    import psycopg

    settings_dict = connection.settings_dict
    return psycopg.connect(
        host=settings_dict["HOST"],
        port=settings_dict["PORT"] or 5432,
        user=settings_dict["USER"],
        dbname=settings_dict["NAME"],
        autocommit=False,
    )


@contextmanager
def event_table_read_by_another_session() -> Iterator[Any]:
    """Another session holds the event table's read lock, as a long-running event query does."""
    reader = other_session()
    try:
        reader.execute(f"LOCK TABLE {TABLE} IN ACCESS SHARE MODE")
        yield reader
    finally:
        reader.rollback()
        reader.close()


@requires_postgres
def test_partition_changes_give_up_on_a_busy_event_table_and_change_nothing(db, monkeypatch):
    monkeypatch.setattr(partitions_module, "LOCK_WAIT_MS", 20)
    monkeypatch.setattr(partitions_module, "LOCK_GIVE_UP_SECONDS", 0.3)
    before = partitions()
    with connection.cursor() as cursor:
        cursor.execute("SHOW lock_timeout")
        configured = cursor.fetchone()[0]
    with event_table_read_by_another_session():
        with pytest.raises(EventTableBusy, match="stayed in use"):
            create_months(months_ahead(1), months_ahead(6))
        with pytest.raises(CommandError, match="stayed in use"):
            command("create_event_partitions", months_ahead=6)
        assert partitions() == before
    # The session's own lock timeout is untouched by the refused attempts; and once the reader is gone the
    # same change goes through, with that timeout back in force for the rest of the transaction.
    with connection.cursor() as cursor:
        cursor.execute("SHOW lock_timeout")
        assert cursor.fetchone()[0] == configured
    with transaction.atomic():
        assert partition_name(months_ahead(6)) in create_months(months_ahead(1), months_ahead(6))
        with connection.cursor() as cursor:
            cursor.execute("SHOW lock_timeout")
            assert cursor.fetchone()[0] == configured


@requires_postgres
def test_writers_of_events_are_not_queued_behind_a_waiting_partition_change(db, monkeypatch):
    """While a partition change waits for the event table, PostgreSQL queues every later lock request on the
    table behind it: a set_key's audit event would wait for as long as the oldest reader runs. The change
    waits in short attempts instead, so a writer arriving meanwhile is served."""
    monkeypatch.setattr(partitions_module, "LOCK_WAIT_MS", 50)
    monkeypatch.setattr(partitions_module, "LOCK_GIVE_UP_SECONDS", 30.0)
    changer_pid = connection.cursor().connection.info.backend_pid
    outcome: dict[str, Any] = {}

    def writer_then_release(reader: Any) -> None:
        with other_session() as writer:
            # Wait until the change has asked for the lock at least once (it is in its attempts).
            for _ in range(600):
                row = writer.execute(
                    "SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted AND mode = 'AccessExclusiveLock'",
                    [changer_pid],
                ).fetchone()
                writer.rollback()
                if row and row[0]:
                    break
                time.sleep(0.005)
            else:
                outcome["writer"] = "the change never asked for the lock"
            try:
                # An event write's lock, in a session that waits no longer than a request may.
                writer.execute("SET lock_timeout = '2s'")
                writer.execute(f"LOCK TABLE {TABLE} IN ROW EXCLUSIVE MODE")
                outcome.setdefault("writer", "served")
            except Exception as error:
                outcome["writer"] = f"refused: {error}"
            finally:
                writer.rollback()
        reader.rollback()  # the long read ends: the change may now go ahead

    with event_table_read_by_another_session() as reader:
        helper = threading.Thread(target=writer_then_release, args=(reader,))
        helper.start()
        try:
            created = create_months(months_ahead(1), months_ahead(6))
        finally:
            helper.join(timeout=60)
    assert outcome["writer"] == "served"
    assert partition_name(months_ahead(6)) in created


@requires_postgres
def test_prune_leaves_months_for_the_next_run_when_the_event_table_stays_busy(db, monkeypatch, caplog):
    now = timezone.now()
    old_month = month_start(now - timedelta(days=100))
    create_month(old_month)  # (this test's transaction now holds the table's lock: the refusal is simulated)
    expired = Event.objects.create(
        action=EventAction.LOGIN, app="t", created=old_month + timedelta(days=1), expires=now
    )
    real_lock = partitions_module._lock

    def busy(cursor: Any) -> None:
        raise EventTableBusy("The event table stayed in use")

    monkeypatch.setattr(partitions_module, "_lock", busy)
    output = io.StringIO()
    call_command("prune_expired", stdout=output)
    # The month was not dropped, but its expired row was deleted one by one.
    assert partition_name(old_month) in [p.name for p in partitions()]
    assert not Event.objects.filter(pk=expired.pk).exists()
    assert "Deleted 1 expired events" in output.getvalue()
    assert f"{partition_name(old_month)} not freed whole: the event table stayed in use" in caplog.text
    # The next run, with the table free, drops the (now empty) month.
    monkeypatch.setattr(partitions_module, "_lock", real_lock)
    call_command("prune_expired", stdout=io.StringIO())
    assert partition_name(old_month) not in [p.name for p in partitions()]
