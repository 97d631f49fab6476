# Keys at rest, step 2 of 3 (backfill): every row still holding a plain key and its SHA-256 digest gets the
# encrypted key and the peppered digest, under the current TOKEN_KEYS_ENCRYPTION_KEYS and TOKEN_KEYS_PEPPERS.
#
# Safe on a live database: the migration is not atomic; rows are converted in batches of BATCH_SIZE, each in
# its own short transaction that locks just its rows (FOR UPDATE on PostgreSQL), so a concurrent set_key
# waits at most for one batch and is never lost. A row's key and digest change together. Until a row is
# converted, servers of this version still authenticate it by its legacy digest and read its plain key.
# Interrupted, it resumes where it stopped (converted rows no longer match). Raw SQL on purpose: it must
# read the old plain values as they are stored, not through the model field.

from django.db import migrations, transaction

BATCH_SIZE = 500


def _convert(schema_editor, select_where, convert):
    connection = schema_editor.connection
    table = connection.ops.quote_name('authentik_core_token')
    lock = ' FOR UPDATE' if connection.features.has_select_for_update else ''
    last = None
    while True:
        after = '' if last is None else ' AND token_uuid > %s'
        params = [*([] if last is None else [last]), BATCH_SIZE]
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute(
                f'SELECT token_uuid, "key" FROM {table} WHERE {select_where}{after} ORDER BY token_uuid LIMIT %s{lock}',
                params,
            )
            rows = cursor.fetchall()
            if rows:
                cursor.executemany(
                    f'UPDATE {table} SET "key" = %s, "key_digest" = %s WHERE token_uuid = %s',
                    [(*convert(stored), pk) for pk, stored in rows],
                )
        if len(rows) < BATCH_SIZE:
            return
        last = rows[-1][0]


def encrypt_keys(apps, schema_editor):
    from core.crypto import DIGEST_PREFIX, encrypt_key, key_digest

    def convert(plain):
        return encrypt_key(plain), key_digest(plain)

    _convert(schema_editor, f"key_digest NOT LIKE '{DIGEST_PREFIX}%%'", convert)


def decrypt_keys(apps, schema_editor):
    """Going back to 0002: plain keys and SHA-256 digests again (needs the encryption keys)."""
    from core.crypto import DIGEST_PREFIX, decrypt_key, legacy_key_digest

    def convert(stored):
        plain = decrypt_key(stored)
        return plain, legacy_key_digest(plain)

    _convert(schema_editor, f"key_digest LIKE '{DIGEST_PREFIX}%%'", convert)


class Migration(migrations.Migration):

    atomic = False

    dependencies = [
        ('authentik_core', '0004_token_key_at_rest'),
    ]

    operations = [
        migrations.RunPython(encrypt_keys, decrypt_keys, elidable=False),
    ]
