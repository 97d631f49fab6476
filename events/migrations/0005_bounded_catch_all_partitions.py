"""PostgreSQL: the event table's default partition gives way to two bounded catch-all ranges (events.partitions).

``authentik_events_event_before`` (MINVALUE up to the first month) and ``authentik_events_event_after``
(the end of the last month up to MAXVALUE), with any month missing between the first and the last one
created, so the partitions are ordered and leave no gap: PostgreSQL can then read a page ordered by
``created`` month after month instead of merging every month's index. The default partition's rows move
to the partitions that cover them, in this migration's transaction (the table is locked meanwhile, for as
long as those rows take; normally few). Reversible (back to a default partition). SQLite: nothing changes.
"""

from django.db import migrations
from django.utils import timezone


def bounded(apps, schema_editor):
    from events.partitions import is_partitioned, partitions, replace_default_partition

    db = schema_editor.connection
    if is_partitioned(db) and any(p.default for p in partitions(db)):
        replace_default_partition(db, now=timezone.now())


def default(apps, schema_editor):
    from events.partitions import is_partitioned, partitions, restore_default_partition

    db = schema_editor.connection
    if is_partitioned(db) and not any(p.default for p in partitions(db)):
        restore_default_partition(db)


class Migration(migrations.Migration):
    dependencies = [("authentik_events", "0004_partition_events_by_month")]

    operations = [migrations.RunPython(bounded, default)]
