# Keys at rest, step 3 of 3 (tighten): the database itself refuses a plain key or an unpeppered digest,
# whatever writes the row (ORM, raw SQL, a server of an older version).

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('authentik_core', '0005_encrypt_token_keys'),
    ]

    operations = [
        migrations.AddConstraint(
            model_name='token',
            constraint=models.CheckConstraint(condition=models.Q(('key__startswith', 'gcm$')), name='token_key_encrypted'),
        ),
        migrations.AddConstraint(
            model_name='token',
            constraint=models.CheckConstraint(condition=models.Q(('key_digest__startswith', 'hmac$')), name='token_key_digest_peppered'),
        ),
    ]
