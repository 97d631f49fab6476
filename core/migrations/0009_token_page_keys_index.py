"""PostgreSQL only: the token list's page keys read from an index alone.

A caller without the global ``view_token`` sees the tokens of ``core.fastpath.visible_token_pks`` (5,150 in
README, "Scale"); a page of them probes every visible token by its primary key and sorts them. The page's
keys are now read first (``tokens_service.pagination.KeyedPaginator``), and for the default ordering
(identifier, expires, pk) this index holds every column the probe reads, so each probe is an index-only
lookup instead of an index lookup plus a read of the whole row. SQLite keeps working without it.
"""

from django.db import migrations

TABLE = "authentik_core_token"
INDEX = "token_pk_order_idx"


def create_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    # CONCURRENTLY (this migration is not atomic): token writes go on while the index builds.
    schema_editor.execute(
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} ON {TABLE} (token_uuid) INCLUDE (identifier, expires)"
    )


def drop_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("authentik_core", "0008_search_statistics")]

    operations = [migrations.RunPython(create_index, drop_index)]
