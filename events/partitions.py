"""Monthly range partitions of the event table on PostgreSQL (by ``created``, UTC months).

The table ``authentik_events_event`` is partitioned by range of ``created``: one partition per UTC month,
named ``authentik_events_event_pYYYY_MM``, contiguous from the oldest kept month to the newest created
one, and two bounded catch-all ranges around them: ``..._before`` (``MINVALUE`` up to the first month) and
``..._after`` (the end of the last month up to ``MAXVALUE``). Every timestamp has a partition, so a write
never fails because a month was not created in time; ``create_event_partitions`` creates the months ahead
and moves any rows of theirs out of the catch-all (detached and attached again with its new bounds, in
one transaction).

There is no DEFAULT partition (migration 0004 made one; 0005 replaced it): with ordered, non-overlapping
range partitions PostgreSQL can read the partitions one after another in ``created`` order (an ordered
``Append``, newest month first, stopping when the page is full) instead of merging every month's index
(``Merge Append``), which must start a scan in each month before it returns a row.

A partitioned table's primary key must contain the partition key, so the database's key is
``(event_uuid, created)``; Django's model keeps ``event_uuid`` as its pk (the API looks events up by it).
Uniqueness of ``event_uuid`` alone then rests on uuid4 (122 random bits), not on a constraint.

Retention drops a month's partition when none of its rows is unexpired (an index probe on ``expires``),
which frees its space at once: the oldest month is dropped and ``..._before`` extended over its range; a
month between kept ones is emptied (``TRUNCATE``) and kept, so that the months stay contiguous (it is
dropped once it is the oldest). Other expired rows are deleted one by one. Everything here is PostgreSQL
only; on SQLite the table is a plain table and these functions do nothing.
"""

import logging
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import OperationalError, connection, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

TABLE = "authentik_events_event"
BEFORE_PARTITION = f"{TABLE}_before"  # FROM (MINVALUE) TO (the first month)
AFTER_PARTITION = f"{TABLE}_after"  # FROM (the end of the last month) TO (MAXVALUE)
DEFAULT_PARTITION = f"{TABLE}_default"  # migration 0004's catch-all, replaced by the two above in 0005
DEFAULT_MONTHS_AHEAD = 3

logger = logging.getLogger(__name__)


class PartitionLayoutError(RuntimeError):
    """The event table's partitions are not the layout this module maintains (months between two catch-alls)."""


def month_start(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def next_month(month: datetime) -> datetime:
    return datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=UTC)


def months_between(first: datetime, end: datetime) -> Iterator[datetime]:
    """The month starts from ``first`` (a month start) up to, not including, ``end``."""
    month = first
    while month < end:
        yield month
        month = next_month(month)


def _literal(moment: datetime | None, *, unbounded: str = "") -> str:
    """A timestamptz literal for DDL, which takes no query parameters (made from a datetime, never from input);
    ``unbounded`` (``MINVALUE``/``MAXVALUE``) for ``None``."""
    if moment is None:
        assert unbounded in ("MINVALUE", "MAXVALUE")
        return unbounded
    return f"'{moment.astimezone(UTC).isoformat()}'"


def _range(start: datetime | None, end: datetime | None) -> str:
    return f"FOR VALUES FROM ({_literal(start, unbounded='MINVALUE')}) TO ({_literal(end, unbounded='MAXVALUE')})"


def _bounds(month: datetime) -> str:
    return _range(month, next_month(month))


def partition_name(month: datetime) -> str:
    return f"{TABLE}_p{month:%Y_%m}"


def is_partitioned(db: BaseDatabaseWrapper | None = None) -> bool:
    db = db or connection
    if db.vendor != "postgresql":
        return False
    with db.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [TABLE])
        row = cursor.fetchone()
    return bool(row and row[0] == "p")


@dataclass(frozen=True)
class Partition:
    name: str
    start: datetime | None  # None: MINVALUE, or the default partition
    end: datetime | None  # None: MAXVALUE, or the default partition
    default: bool = False

    @property
    def is_month(self) -> bool:
        return self.start is not None and self.end is not None


_RANGE = re.compile(r"FOR VALUES FROM \((.+)\) TO \((.+)\)")


def _bound(text: str) -> datetime | None:
    # '2026-01-01 00:00:00+00' (in the session's time zone, UTC for Django), MINVALUE or MAXVALUE
    if text in ("MINVALUE", "MAXVALUE"):
        return None
    return datetime.fromisoformat(text.strip("'"))


def partitions(db: BaseDatabaseWrapper | None = None) -> list[Partition]:
    """The partitions of the event table in ``created`` order (``..._before``, the months, ``..._after``),
    a default partition (before migration 0005) last."""
    db = db or connection
    with db.cursor() as cursor:
        cursor.execute(
            """
SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = to_regclass(%s)""",
            [TABLE],
        )
        rows = cursor.fetchall()
    result = []
    for name, bound in rows:
        if bound == "DEFAULT":
            result.append(Partition(name, None, None, default=True))
            continue
        match = _RANGE.fullmatch(bound)
        if match is None:
            raise PartitionLayoutError(f"Unexpected bound of partition {name}: {bound}")
        result.append(Partition(name, _bound(match[1]), _bound(match[2])))
    lowest = datetime.min.replace(tzinfo=UTC)
    return sorted(result, key=lambda p: (p.default, p.start is not None, p.start or lowest))


@dataclass(frozen=True)
class Layout:
    """Ranged layout: ``before`` up to ``lower``, the months from ``lower`` to ``upper``, ``after`` from ``upper``."""

    before: Partition
    months: list[Partition]
    after: Partition

    @property
    def lower(self) -> datetime:
        assert self.before.end is not None
        return self.before.end

    @property
    def upper(self) -> datetime:
        assert self.after.start is not None
        return self.after.start


def layout(db: BaseDatabaseWrapper | None = None) -> Layout:
    """The event table's partitions as ``Layout``; ``PartitionLayoutError`` if they are anything else (a
    default partition: migration 0005 not applied; a gap or overlap between the ranges)."""
    found = partitions(db)
    if len(found) < 2 or any(p.default for p in found):
        raise PartitionLayoutError("The event table has no catch-all ranges (is migration 0005 applied?).")
    before, *months, after = found
    if before.name != BEFORE_PARTITION or after.name != AFTER_PARTITION or before.start or after.end:
        raise PartitionLayoutError("The event table's catch-all ranges are missing or misplaced.")
    edge = before.end
    for partition in [*months, after]:
        if partition.start != edge:
            raise PartitionLayoutError(f"The event table's partitions leave a gap or overlap at {partition.name}.")
        edge = partition.end
    return Layout(before, months, after)


class EventTableBusy(RuntimeError):
    """The event table's exclusive lock was not granted within ``LOCK_GIVE_UP_SECONDS``; the change that needed
    it was not made."""


# How long one attempt at the event table's exclusive lock may wait, and for how long attempts go on.
# While the lock request waits, PostgreSQL queues every later read and write of events behind it (set_key's
# audit event included), so a lock request that waited for a long-running reader would stall the service
# for as long as that reader runs. Short attempts, with pauses between them, delay writers by at most
# LOCK_WAIT_MS each.
LOCK_WAIT_MS = 100
LOCK_GIVE_UP_SECONDS = 60.0
_LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's lock_not_available (lock_timeout expired)


def _lock(cursor: Any) -> None:
    """The event table (and so every partition) for this transaction: reads and writes of events wait until
    it commits. Taken before the partitions are read, so that two runs do not work from the same layout.

    Each attempt waits at most ``LOCK_WAIT_MS``, in a savepoint that a refused attempt rolls back; attempts
    are repeated with growing, jittered pauses for up to ``LOCK_GIVE_UP_SECONDS``, then ``EventTableBusy``.
    The session's own ``lock_timeout`` is restored once the lock is held.
    """
    deadline = time.monotonic() + LOCK_GIVE_UP_SECONDS
    cursor.execute("SELECT current_setting('lock_timeout')")
    (configured,) = cursor.fetchone()
    pause = 0.05
    while True:
        try:
            with transaction.atomic(using=cursor.db.alias):
                cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{LOCK_WAIT_MS}ms"])
                cursor.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
            break
        except OperationalError as error:
            if getattr(error.__cause__, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                raise
        if time.monotonic() + pause > deadline:
            raise EventTableBusy(
                f"The event table stayed in use for {LOCK_GIVE_UP_SECONDS:g} s (long-running reads or writes of "
                "events); this change was not made: run again later."
            )
        time.sleep(pause * random.uniform(0.5, 1.5))  # noqa: S311 - jitter, not a secret
        pause = min(pause * 2, 2.0)
    cursor.execute("SELECT set_config('lock_timeout', %s, true)", [configured])


def copy_statistics(cursor: Any, partition: str) -> None:
    """Create the parent's extended statistics objects on ``partition`` too.

    The planner estimates each partition's scan from that partition's own statistics; without them, the
    expressions of the partial JSON indexes get PostgreSQL's blind guess (0.5% of rows per value) and
    a one-token history is read by date through every month.
    """
    cursor.execute(
        "SELECT stxname, pg_get_statisticsobjdef(oid) FROM pg_statistic_ext WHERE stxrelid = to_regclass(%s)",
        [TABLE],
    )
    suffix = partition.removeprefix(TABLE)
    for name, definition in cursor.fetchall():
        head, _, _ = definition.rpartition(" FROM ")
        expressions = head.split(" ON ", 1)[1]
        cursor.execute(f"CREATE STATISTICS IF NOT EXISTS {name}{suffix} ON {expressions} FROM {partition}")
    cursor.execute(f"ANALYZE {partition}")


def create_months(first: datetime, last: datetime, db: BaseDatabaseWrapper | None = None) -> list[str]:
    """Partitions for the months from ``first`` to ``last`` (inclusive) that do not exist yet, and for every
    month between them and the existing months (the months stay contiguous). Returns those created, in order.

    Each new month's rows move out of the catch-all that held them. One transaction: the catch-all is
    detached, the months are created, filled and attached, and the catch-all attached again with the
    bounds that remain (its remaining rows are checked against them). The event table is locked meanwhile,
    for as long as the moved rows take (none when the months are created ahead of time).
    """
    db = db or connection
    first, last = month_start(first), month_start(last)
    if first > last:
        raise ValueError("The first month must not be after the last one.")
    current = layout(db)
    if current.lower <= first and next_month(last) <= current.upper:
        return []  # every month exists: no lock taken
    created: list[str] = []
    with transaction.atomic(using=db.alias), db.cursor() as cursor:
        _lock(cursor)
        current = layout(db)
        lower, upper = min(first, current.lower), max(next_month(last), current.upper)
        if lower < current.lower:
            created += _split_catch_all(cursor, current.before, list(months_between(lower, current.lower)))
            cursor.execute(f"ALTER TABLE {TABLE} ATTACH PARTITION {BEFORE_PARTITION} {_range(None, lower)}")
        if current.upper < upper:
            created += _split_catch_all(cursor, current.after, list(months_between(current.upper, upper)))
            cursor.execute(f"ALTER TABLE {TABLE} ATTACH PARTITION {AFTER_PARTITION} {_range(upper, None)}")
    return sorted(created)


def _split_catch_all(cursor: Any, catch_all: Partition, months: list[datetime]) -> list[str]:
    """Detach ``catch_all`` and attach a partition for each of ``months`` (in its range) with its rows from
    ``catch_all``; the caller attaches ``catch_all`` again with the bounds that remain."""
    cursor.execute(f"ALTER TABLE {TABLE} DETACH PARTITION {catch_all.name}")
    names = []
    for month in months:
        name = partition_name(month)
        cursor.execute(f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING DEFAULTS)")
        cursor.execute(
            f"WITH moved AS (DELETE FROM {catch_all.name} WHERE created >= %s AND created < %s RETURNING *) "  # noqa: S608
            f"INSERT INTO {name} SELECT * FROM moved",
            [month, next_month(month)],
        )
        cursor.execute(f"ALTER TABLE {TABLE} ATTACH PARTITION {name} {_bounds(month)}")
        copy_statistics(cursor, name)
        names.append(name)
    return names


def create_month(month: datetime, db: BaseDatabaseWrapper | None = None) -> bool:
    """Create the partition of ``month`` unless it exists (and those between it and the existing months),
    moving its rows out of the catch-all range that held them. Returns whether it was created."""
    return partition_name(month_start(month)) in create_months(month, month, db)


def create_months_ahead(months_ahead: int, *, now: datetime, db: BaseDatabaseWrapper | None = None) -> list[str]:
    """Partitions for the current month and ``months_ahead`` following ones; returns those created."""
    if months_ahead < 0:
        raise ValueError("months_ahead must not be negative.")
    last = month_start(now)
    for _ in range(months_ahead):
        last = next_month(last)
    return create_months(month_start(now), last, db)


def _holds_unexpired(cursor: Any, partition: str, now: datetime) -> bool:
    cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {partition} WHERE expires > %s)", [now])  # noqa: S608
    return bool(cursor.fetchone()[0])


def drop_expired_partitions(*, now: datetime, db: BaseDatabaseWrapper | None = None) -> tuple[int, datetime | None]:
    """Free every month partition that ended before ``now`` and holds no unexpired row.

    The oldest month is dropped and ``..._before`` attached again over its range; a month after a kept one
    is emptied with ``TRUNCATE`` (its space is freed as by a drop) and stays, so that every timestamp keeps
    a partition; it is dropped once the months before it are. Returns the number of events removed and the
    end of the newest month that lost rows. A partition with one unexpired row is kept whole; retention
    deletes its expired rows one by one. When the event table's lock is not granted (``_lock``), the months
    from there on are left for the next run.
    """
    db = db or connection
    dropped, newest = 0, None
    for partition in layout(db).months:
        assert partition.end is not None
        if partition.end > now:
            break
        with transaction.atomic(using=db.alias), db.cursor() as cursor:
            if _holds_unexpired(cursor, partition.name, now):
                continue
            cursor.execute(f"SELECT count(*) FROM {partition.name}")  # noqa: S608
            rows = cursor.fetchone()[0]
            try:
                _lock(cursor)
            except EventTableBusy:
                # Long-running reads or writes of events: this month and the later ones are left for the next
                # run (retention deletes their expired rows one by one meanwhile).
                logger.warning("Event partition %s not freed whole: the event table stayed in use.", partition.name)
                break
            current = layout(db)
            if partition not in current.months or _holds_unexpired(cursor, partition.name, now):
                continue  # changed meanwhile: left for the next run
            if partition == current.months[0]:
                cursor.execute(f"ALTER TABLE {TABLE} DETACH PARTITION {BEFORE_PARTITION}")
                cursor.execute(f"DROP TABLE {partition.name}")
                cursor.execute(f"ALTER TABLE {TABLE} ATTACH PARTITION {BEFORE_PARTITION} {_range(None, partition.end)}")
            elif rows:
                cursor.execute(f"TRUNCATE {partition.name}")
        if rows:
            dropped += rows
            newest = partition.end if newest is None else max(newest, partition.end)
    return dropped, newest


def replace_default_partition(db: BaseDatabaseWrapper, *, now: datetime) -> None:
    """Migration 0005: the default partition becomes ``..._before`` and ``..._after`` around the months.

    Months missing between the first and the last one (dropped by an earlier retention) are created, so the
    months are contiguous; the default partition's rows then move to whichever partition covers them. With
    no month at all, the catch-alls meet at the current month. In the caller's transaction.
    """
    with db.cursor() as cursor:
        _lock(cursor)
        found = partitions(db)
        months = [p for p in found if p.is_month]
        default = next((p for p in found if p.default), None)
        if default is None or len(months) + 1 != len(found):
            raise PartitionLayoutError("Expected month partitions and a default partition (migration 0004).")
        cursor.execute(f"ALTER TABLE {TABLE} DETACH PARTITION {default.name}")
        lower = months[0].start if months else month_start(now)
        upper = months[-1].end if months else lower
        assert lower is not None
        assert upper is not None
        existing = {p.start for p in months}
        new = {partition_name(month): _bounds(month) for month in months_between(lower, upper) if month not in existing}
        new |= {BEFORE_PARTITION: _range(None, lower), AFTER_PARTITION: _range(upper, None)}
        for name, bounds in new.items():
            cursor.execute(f"CREATE TABLE {name} PARTITION OF {TABLE} {bounds}")
        cursor.execute(f"INSERT INTO {TABLE} SELECT * FROM {default.name}")  # noqa: S608
        cursor.execute(f"DROP TABLE {default.name}")
        for name in new:
            copy_statistics(cursor, name)  # and ANALYZE: only the partitions that are new


def restore_default_partition(db: BaseDatabaseWrapper) -> None:
    """Migration 0005 reversed: ``..._before`` and ``..._after`` give way to one default partition (with their
    rows). Months it created stay. In the caller's transaction."""
    with db.cursor() as cursor:
        _lock(cursor)
        layout(db)  # the ranged layout, or PartitionLayoutError
        for name in (BEFORE_PARTITION, AFTER_PARTITION):
            cursor.execute(f"ALTER TABLE {TABLE} DETACH PARTITION {name}")
        cursor.execute(f"CREATE TABLE {DEFAULT_PARTITION} PARTITION OF {TABLE} DEFAULT")
        for name in (BEFORE_PARTITION, AFTER_PARTITION):
            cursor.execute(f"INSERT INTO {TABLE} SELECT * FROM {name}")  # noqa: S608
            cursor.execute(f"DROP TABLE {name}")
        copy_statistics(cursor, DEFAULT_PARTITION)


def rebuild_events_table(db: BaseDatabaseWrapper, *, partitioned: bool, now: datetime) -> None:
    """Turn the event table into a partitioned one (or back), keeping its rows, indexes and statistics.

    Migration 0004's layout: months and a default partition, which migration 0005 replaces
    (``replace_default_partition``). Back to a plain table from any layout.

    The rows are copied inside the caller's transaction (the migration's): the table is locked meanwhile,
    for a time proportional to its size (about 2 minutes per million events on 2 cores, indexes included).
    """
    old = f"{TABLE}_unpartitioned" if partitioned else f"{TABLE}_partitioned"
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = %s "
            "AND indexname <> %s ORDER BY indexname",
            [TABLE, f"{TABLE}_pkey"],
        )
        indexes = cursor.fetchall()
        cursor.execute(
            "SELECT stxname, pg_get_statisticsobjdef(oid) FROM pg_statistic_ext WHERE stxrelid = to_regclass(%s)",
            [TABLE],
        )
        statistics = cursor.fetchall()
        for name, _ in statistics:
            cursor.execute(f"DROP STATISTICS {name}")
        cursor.execute(f"ALTER TABLE {TABLE} RENAME TO {old}")
        if partitioned:
            cursor.execute(f"CREATE TABLE {TABLE} (LIKE {old} INCLUDING DEFAULTS) PARTITION BY RANGE (created)")
            cursor.execute(f"SELECT min(created) FROM {old}")  # noqa: S608
            oldest = cursor.fetchone()[0]
            month = month_start(min(oldest, now) if oldest else now)
            last = month_start(now)
            for _ in range(DEFAULT_MONTHS_AHEAD):
                last = next_month(last)
            while month <= last:
                cursor.execute(f"CREATE TABLE {partition_name(month)} PARTITION OF {TABLE} {_bounds(month)}")
                month = next_month(month)
            cursor.execute(f"CREATE TABLE {DEFAULT_PARTITION} PARTITION OF {TABLE} DEFAULT")
        else:
            cursor.execute(f"CREATE TABLE {TABLE} (LIKE {old} INCLUDING DEFAULTS)")
        cursor.execute(f"INSERT INTO {TABLE} SELECT * FROM {old}")  # noqa: S608
        cursor.execute(f"DROP TABLE {old}")
        key = "event_uuid, created" if partitioned else "event_uuid"
        cursor.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_pkey PRIMARY KEY ({key})")
        for _, definition in indexes:
            cursor.execute(definition)  # no parameters: a % in it (LIKE 'custom\\_%') stays as is
        for _, definition in statistics:
            cursor.execute(definition)
        if partitioned:
            for partition in partitions(db):
                copy_statistics(cursor, partition.name)
        cursor.execute(f"ANALYZE {TABLE}")
