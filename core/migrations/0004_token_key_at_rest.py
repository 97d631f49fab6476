# Keys at rest, step 1 of 3 (expand): the key column becomes EncryptedKeyField (the same text column; the ORM
# now encrypts what it writes and decrypts what it reads, passing rows not yet converted through as they
# are) and the digest column widens for the tagged HMAC ("hmac$<pepper id>$<64 hex>"). No row is touched.

import core.models
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('authentik_core', '0003_token_rotation_usage'),
    ]

    operations = [
        migrations.AlterField(
            model_name='token',
            name='key',
            field=core.models.EncryptedKeyField(default=core.models.generate_key),
        ),
        migrations.AlterField(
            model_name='token',
            name='key_digest',
            field=models.CharField(editable=False, max_length=80, unique=True),
        ),
    ]
