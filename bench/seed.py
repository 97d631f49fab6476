"""Seed a benchmark database with callers and target tokens. Run by bench/run.py, with DATABASE_URL set.

Usage: python bench/seed.py PLAN.json, where PLAN.json holds the callers' keys (chosen by run.py, so that
the service's and the baseline's copies of the data are identical) and the number of spread targets.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokens_service.settings")

import django

django.setup()

from django.contrib.auth.models import Permission  # noqa: E402
from django.contrib.contenttypes.models import ContentType  # noqa: E402
from django.db import transaction  # noqa: E402
from guardian.models import UserObjectPermission  # noqa: E402

from core.models import Token, TokenIntents, User, generate_key, key_digest  # noqa: E402

# Targets are owned by a fourth user, so no caller ever re-keys the token it authenticates with.
TOKEN_PERMS = ("set_token_key", "view_token_key", "view_token")


def seed(spec: dict) -> None:
    perms = {p.codename: p for p in Permission.objects.filter(content_type__app_label="authentik_core")}
    token_type = ContentType.objects.get_for_model(Token)
    with transaction.atomic():
        root = User.objects.create_user("bench-root", "root@bench.test", is_superuser=True, is_staff=True)
        globl = User.objects.create_user("bench-global", "global@bench.test")
        globl.user_permissions.add(*(perms[codename] for codename in TOKEN_PERMS))
        obj = User.objects.create_user("bench-object", "object@bench.test")
        owner = User.objects.create_user("bench-owner", "owner@bench.test")
        for name, user in (("root", root), ("global", globl), ("object", obj)):
            Token.objects.create(
                identifier=f"bench-{name}-api", key=spec["callers"][name], user=user, intent=TokenIntents.API
            )
        identifiers = [spec["hot"]] + [f"{spec['spread_prefix']}{i:05d}" for i in range(spec["spread"])]
        targets = []
        for identifier in identifiers:
            key = generate_key()
            targets.append(
                Token(identifier=identifier, key=key, key_digest=key_digest(key), user=owner, description="bench")
            )
        Token.objects.bulk_create(targets, batch_size=500)
        # The object-permission caller holds set_token_key and view_token_key on every target, and
        # nothing globally: its requests take the object-permission branch of the check.
        UserObjectPermission.objects.bulk_create(
            [
                UserObjectPermission(
                    user=obj, permission=perms[codename], content_type=token_type, object_pk=str(token.pk)
                )
                for token in targets
                for codename in ("set_token_key", "view_token_key")
            ],
            batch_size=1000,
        )


if __name__ == "__main__":
    seed(json.loads(Path(sys.argv[1]).read_text()))
