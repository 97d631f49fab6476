"""Three indexes of the token table that no query needs, dropped: each set_key changes ``key_digest``, so it
is never a HOT update and writes an entry into every index of the table.

- ``token_expires_idx`` (expires): ``token_expires_pk_idx`` (expires, token_uuid; migration 0007) serves
  every query on expires, as its first column.
- The ``varchar_pattern_ops`` / ``text_pattern_ops`` twins Django adds on PostgreSQL beside a unique index of
  a text column (for ``LIKE 'prefix%'``), for ``key_digest`` and ``managed``: both are only ever compared
  whole, which the unique index serves (the planner took the twin of ``key_digest`` for the bearer lookup,
  as often as not). The twin of ``identifier`` stays: identifier prefixes are searched.

Should a later migration alter ``key_digest`` or ``managed``, Django drops the twin if it exists and may
create it again; drop it again then. SQLite has no such twins.
"""

from django.db import migrations

TABLE = "authentik_core_token"
# (name, column, operator class): Django's names for the twins (schema_editor._create_index_name(..., "_like")).
TWINS = [
    ("authentik_core_token_key_digest_65908419_like", "key_digest", "varchar_pattern_ops"),
    ("authentik_core_token_managed_20a845a1_like", "managed", "text_pattern_ops"),
]


def drop_twins(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, _column, _opclass in TWINS:
        # CONCURRENTLY (this migration is not atomic): token writes go on meanwhile.
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")


def create_twins(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, column, opclass in TWINS:
        schema_editor.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {TABLE} ({column} {opclass})")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("authentik_core", "0009_token_page_keys_index")]

    operations = [
        migrations.RemoveIndex(model_name="token", name="token_expires_idx"),
        migrations.RunPython(drop_twins, create_twins),
    ]
