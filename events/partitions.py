"""Monthly range partitions of the event table on PostgreSQL (by ``created``, UTC months).

The table ``authentik_events_event`` is partitioned by range of ``created``: one partition per UTC month,
named ``authentik_events_event_pYYYY_MM``, plus a default partition that catches rows outside every month
(so a write never fails because a month was not created in time; ``create_event_partitions`` moves them
into their month). A partitioned table's primary key must contain the partition key, so the database's key
is ``(event_uuid, created)``; Django's model keeps ``event_uuid`` as its pk (the API looks events up by it).
Uniqueness of ``event_uuid`` alone then rests on uuid4 (122 random bits), not on a constraint.

Retention drops a month's partition when none of its rows is unexpired (an index probe on ``expires``),
which frees its space at once; other expired rows are deleted one by one. Everything here is PostgreSQL
only; on SQLite the table is a plain table and these functions do nothing.
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import connection, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

TABLE = "authentik_events_event"
DEFAULT_PARTITION = f"{TABLE}_default"
DEFAULT_MONTHS_AHEAD = 3


def month_start(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def next_month(month: datetime) -> datetime:
    return datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=UTC)


def _literal(moment: datetime) -> str:
    """A timestamptz literal for DDL, which takes no query parameters (made from a datetime, never from input)."""
    return f"'{moment.astimezone(UTC).isoformat()}'"


def _bounds(month: datetime) -> str:
    return f"FOR VALUES FROM ({_literal(month)}) TO ({_literal(next_month(month))})"


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
    start: datetime | None  # None: the default partition
    end: datetime | None


def partitions(db: BaseDatabaseWrapper | None = None) -> list[Partition]:
    """The partitions of the event table, months in order, the default partition last."""
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
            result.append(Partition(name, None, None))
            continue
        # FOR VALUES FROM ('2026-01-01 00:00:00+00') TO ('2026-02-01 00:00:00+00')
        start_text, end_text = bound.split("'")[1], bound.split("'")[3]
        result.append(Partition(name, datetime.fromisoformat(start_text), datetime.fromisoformat(end_text)))
    return sorted(result, key=lambda p: (p.start is None, p.start or datetime.min.replace(tzinfo=UTC)))


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


def create_month(month: datetime, db: BaseDatabaseWrapper | None = None) -> bool:
    """Create the partition of ``month`` unless it exists, moving its rows out of the default partition.

    Returns whether it was created. One transaction: the rows move and the partition attaches together.
    """
    db = db or connection
    name, end = partition_name(month), next_month(month)
    if any(p.name == name for p in partitions(db)):
        return False
    with transaction.atomic(using=db.alias), db.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING DEFAULTS)")
        cursor.execute(
            f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE created >= %s AND created < %s RETURNING *) "  # noqa: S608
            f"INSERT INTO {name} SELECT * FROM moved",
            [month, end],
        )
        cursor.execute(f"ALTER TABLE {TABLE} ATTACH PARTITION {name} {_bounds(month)}")
        copy_statistics(cursor, name)
    return True


def create_months_ahead(months_ahead: int, *, now: datetime, db: BaseDatabaseWrapper | None = None) -> list[str]:
    """Partitions for the current month and ``months_ahead`` following ones; returns those created."""
    month, created = month_start(now), []
    for _ in range(months_ahead + 1):
        if create_month(month, db):
            created.append(partition_name(month))
        month = next_month(month)
    return created


def drop_expired_partitions(*, now: datetime, db: BaseDatabaseWrapper | None = None) -> tuple[int, datetime | None]:
    """Drop every month partition that ended before ``now`` and holds no unexpired row.

    Returns the number of events dropped and the end of the newest dropped month. A partition with one
    unexpired row is kept whole; retention deletes its expired rows one by one.
    """
    db = db or connection
    dropped, newest = 0, None
    for partition in partitions(db):
        if partition.start is None or partition.end is None or partition.end > now:
            continue
        with transaction.atomic(using=db.alias), db.cursor() as cursor:
            cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {partition.name} WHERE expires > %s)", [now])  # noqa: S608
            if cursor.fetchone()[0]:
                continue
            cursor.execute(f"SELECT count(*) FROM {partition.name}")  # noqa: S608
            dropped += cursor.fetchone()[0]
            cursor.execute(f"DROP TABLE {partition.name}")
        newest = partition.end if newest is None else max(newest, partition.end)
    return dropped, newest


def rebuild_events_table(db: BaseDatabaseWrapper, *, partitioned: bool, now: datetime) -> None:
    """Turn the event table into a partitioned one (or back), keeping its rows, indexes and statistics.

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
