"""The keys-at-rest migrations: rows written in the old format (plain key, SHA-256 digest) keep working."""

import hashlib
import importlib
from collections.abc import Iterator

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from core.crypto import key_digest
from core.models import Token
from tests.helpers import migrate_to_latest

BEFORE = [("authentik_core", "0003_token_rotation_usage")]
EXPANDED = [("authentik_core", "0004_token_key_at_rest")]
BACKFILL = importlib.import_module("core.migrations.0005_encrypt_token_keys")

OLD_KEYS = {f"legacy-{n}": f"legacy-plain-key-{n}-0123456789" for n in range(7)}


def migrate(targets: list[tuple[str, str]]) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    return MigrationExecutor(connection)


@pytest.fixture
def old_rows(transactional_db: None) -> Iterator[dict[str, str]]:
    """The schema before the keys-at-rest migrations (0003), with tokens written the way it stored them;
    the latest schema again afterwards."""
    try:
        executor = migrate(BEFORE)
        apps = executor.loader.project_state(BEFORE).apps
        user = apps.get_model("authentik_core", "User").objects.create(
            username="legacy-root", is_superuser=True, is_staff=True, is_active=True
        )
        old_token = apps.get_model("authentik_core", "Token")
        for identifier, key in OLD_KEYS.items():
            digest = hashlib.sha256(key.encode()).hexdigest()
            old_token.objects.create(identifier=identifier, key=key, key_digest=digest, user_id=user.pk)
        yield OLD_KEYS
    finally:
        migrate_to_latest()


def stored() -> dict[str, tuple[str, str]]:
    with connection.cursor() as cursor:
        cursor.execute('SELECT identifier, "key", key_digest FROM authentik_core_token')
        return {identifier: (key, digest) for identifier, key, digest in cursor.fetchall()}


def assert_everything_works(bearer, keys: dict[str, str]) -> None:
    for identifier, key in keys.items():
        api = bearer(key)
        assert api.get(reverse("token-list")).status_code == 200, identifier
        response = api.get(reverse("token-view-key", kwargs={"identifier": identifier}))
        assert response.json() == {"key": key}
        assert Token.objects.get(identifier=identifier).key == key


def test_old_rows_are_converted_in_batches_and_authenticate_as_before(old_rows, bearer, monkeypatch):
    monkeypatch.setattr(BACKFILL, "BATCH_SIZE", 3)  # 7 rows: batches of 3, 3 and 1
    with CaptureQueriesContext(connection) as queries:
        migrate_to_latest()
    batches = [query["sql"] for query in queries if 'SELECT token_uuid, "key"' in query["sql"]]
    assert len(batches) == 3
    if connection.vendor == "postgresql":
        assert all(sql.endswith("FOR UPDATE") for sql in batches)
    rows = stored()
    assert set(rows) == set(old_rows)
    for identifier, key in old_rows.items():
        stored_key, stored_digest = rows[identifier]
        assert stored_key.startswith("gcm$")
        assert key not in stored_key
        assert stored_digest == key_digest(key)
    assert_everything_works(bearer, old_rows)


def test_rows_not_yet_converted_keep_authenticating_after_the_schema_step(old_rows, bearer):
    migrate(EXPANDED)
    assert all(digest == hashlib.sha256(key.encode()).hexdigest() for key, digest in stored().values())
    assert_everything_works(bearer, old_rows)
    # A token re-keyed before the backfill reaches it is written in the new format and skipped by it.
    first = next(iter(old_rows))
    api = bearer(old_rows[first])
    response = api.post(reverse("token-set-key", kwargs={"identifier": first}), {"key": "rekeyed-mid-migration-1"})
    assert response.status_code == 204
    keys = {**old_rows, first: "rekeyed-mid-migration-1"}
    assert stored()[first][1] == key_digest("rekeyed-mid-migration-1")
    migrate_to_latest()
    assert all(digest.startswith("hmac$") for _, digest in stored().values())
    assert_everything_works(bearer, keys)


def test_the_backfill_can_be_reverted_and_replayed(old_rows, bearer):
    migrate_to_latest()
    migrate(EXPANDED)
    for identifier, (stored_key, stored_digest) in stored().items():
        assert stored_key == old_rows[identifier]
        assert stored_digest == hashlib.sha256(stored_key.encode()).hexdigest()
    migrate_to_latest()
    assert_everything_works(bearer, old_rows)
