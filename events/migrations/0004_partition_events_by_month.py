"""PostgreSQL: the event table becomes range-partitioned by month of ``created`` (events.partitions).

Existing rows are copied into their month's partition in this migration's transaction, with every index
and statistics object rebuilt; the table is locked meanwhile. Reversible (back to one plain table).
SQLite: nothing changes.
"""

from django.db import migrations
from django.utils import timezone


def partition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    from events.partitions import is_partitioned, rebuild_events_table

    if not is_partitioned(schema_editor.connection):
        rebuild_events_table(schema_editor.connection, partitioned=True, now=timezone.now())


def unpartition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    from events.partitions import is_partitioned, rebuild_events_table

    if is_partitioned(schema_editor.connection):
        rebuild_events_table(schema_editor.connection, partitioned=False, now=timezone.now())


class Migration(migrations.Migration):
    dependencies = [("authentik_events", "0003_scale_indexes_and_volume_rollup")]

    operations = [migrations.RunPython(partition, unpartition)]
