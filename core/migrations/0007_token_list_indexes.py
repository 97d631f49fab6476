"""PostgreSQL-only indexes for the token list at hundreds of thousands of tokens.

Each list ordering ends with the primary key in the same direction (core.filters.StableOrderingFilter),
so ``(column, token_uuid)`` serves a page as an index range in either direction. The search
(core.filters.TokenSearchFilter) compares ``upper(column::text) LIKE '%TERM%'``, which trigram (pg_trgm)
GIN indexes on exactly those expressions answer. SQLite keeps working without them.
"""

from django.db import migrations

TABLE = "authentik_core_token"
PG_INDEXES = {
    "token_expires_pk_idx": f"{TABLE} (expires, token_uuid)",
    "token_description_pk_idx": f"{TABLE} (description, token_uuid)",
    "token_intent_pk_idx": f"{TABLE} (intent, token_uuid)",
    "token_expiring_pk_idx": f"{TABLE} (expiring, token_uuid)",
    "token_identifier_trgm_idx": f"{TABLE} USING gin (upper(identifier::text) gin_trgm_ops)",
    "token_description_trgm_idx": f"{TABLE} USING gin (upper(description) gin_trgm_ops)",
    "user_username_trgm_idx": "authentik_core_user USING gin (upper(username::text) gin_trgm_ops)",
}

# Statistics on the searched expressions, so that the planner estimates how many tokens a search term
# matches (without them it guesses a few hundred, and sorts 100,000 matches instead of walking the
# identifier index).
PG_STATISTICS = {
    "token_identifier_upper_stats": f"(upper(identifier::text)) FROM {TABLE}",
    "token_description_upper_stats": f"(upper(description)) FROM {TABLE}",
}


def create_pg_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    # pg_trgm is a trusted extension: the database owner may create it.
    schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    for name, definition in PG_INDEXES.items():
        # CONCURRENTLY (this migration is not atomic): token writes go on while an index builds.
        schema_editor.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {definition}")
    for name, definition in PG_STATISTICS.items():
        schema_editor.execute(f"CREATE STATISTICS IF NOT EXISTS {name} ON {definition}")
    schema_editor.execute(f"ANALYZE {TABLE}")


def drop_pg_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name in PG_STATISTICS:
        schema_editor.execute(f"DROP STATISTICS IF EXISTS {name}")
    for name in PG_INDEXES:
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("authentik_core", "0006_token_key_constraints")]

    operations = [migrations.RunPython(create_pg_indexes, drop_pg_indexes)]
