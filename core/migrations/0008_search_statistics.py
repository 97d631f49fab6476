"""PostgreSQL only: finer statistics on the token search's expressions.

With the default statistics target (100 histogram entries) PostgreSQL cannot estimate an infix ``LIKE``
below about 1% of the rows: at 500,000 tokens a rare term such as ``tok-4242`` (about 100 matches) was
estimated at 5,000, so the planner walked the identifier index through 360,000 tokens (about 190 ms)
instead of reading the trigram indexes' matches and sorting them (about 8 ms). 10,000 entries bring the
floor to about 0.01%, while frequent terms still walk the identifier index and stop at the first page.
ANALYZE of the token table then reads up to 3,000,000 rows (about 4 s at 500,000 tokens).
"""

from django.db import migrations

SEARCHED = {
    # index (its one expression column) -> extended statistics on the same expression (migration 0007)
    "token_identifier_trgm_idx": "token_identifier_upper_stats",
    "token_description_trgm_idx": "token_description_upper_stats",
    "user_username_trgm_idx": None,
}
TARGET = 10_000


def set_targets(target: int, analyze: bool):
    def apply(apps, schema_editor):
        if schema_editor.connection.vendor != "postgresql":
            return
        for index, statistics in SEARCHED.items():
            schema_editor.execute(f"ALTER INDEX {index} ALTER COLUMN 1 SET STATISTICS {target}")
            if statistics is not None:
                schema_editor.execute(f"ALTER STATISTICS {statistics} SET STATISTICS {target}")
        if analyze:
            schema_editor.execute("ANALYZE authentik_core_token, authentik_core_user")

    return apply


class Migration(migrations.Migration):
    dependencies = [("authentik_core", "0007_token_list_indexes")]

    operations = [migrations.RunPython(set_targets(TARGET, analyze=True), set_targets(-1, analyze=False))]
