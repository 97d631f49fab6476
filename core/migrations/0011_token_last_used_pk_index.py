"""``last_used`` indexed together with the pk: ``(last_used, token_uuid)`` replaces ``(last_used)``.

Every list ordering ends with the pk in the same direction (core.filters.StableOrderingFilter). With the
index on ``last_used`` alone, ``?ordering=-last_used`` puts the never-used tokens first (NULL sorts first
in descending order) and had to sort all of them by pk for the first page: at 500,000 tokens, 150,000 of
them unused, 73 ms a page instead of an index range (README, "Scale"). The new index also serves the
``last_used`` filters as the old one did.

On PostgreSQL both indexes are built and dropped ``CONCURRENTLY`` (the migration is not atomic), so token
writes go on meanwhile; SQLite gets the same indexes the ordinary way.
"""

from django.db import migrations, models

TABLE = "authentik_core_token"
OLD = models.Index(fields=["last_used"], name="token_last_used_idx")
NEW = models.Index(fields=["last_used", "token_uuid"], name="token_last_used_pk_idx")


def _swap(apps, schema_editor, add: models.Index, remove: models.Index) -> None:
    token = apps.get_model("authentik_core", "Token")
    if schema_editor.connection.vendor == "postgresql":
        columns = ", ".join(token._meta.get_field(name).column for name in add.fields)
        schema_editor.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {add.name} ON {TABLE} ({columns})")
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {remove.name}")
    else:
        schema_editor.add_index(token, add)
        schema_editor.remove_index(token, remove)


def forwards(apps, schema_editor):
    _swap(apps, schema_editor, add=NEW, remove=OLD)


def backwards(apps, schema_editor):
    _swap(apps, schema_editor, add=OLD, remove=NEW)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("authentik_core", "0010_drop_redundant_token_indexes")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveIndex(model_name="token", name=OLD.name),
                migrations.AddIndex(model_name="token", index=NEW),
            ],
            database_operations=[migrations.RunPython(forwards, backwards)],
        )
    ]
