"""First-start bootstrap: an ``akadmin`` superuser and its API token, as authentik does."""

import os
import shlex
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from core.models import Token, TokenIntents, User, generate_key
from core.services import token_create
from core.validators import validate_key
from tokens_service.request_meta import SYSTEM_REQUEST

BOOTSTRAP_USERNAME = "akadmin"
BOOTSTRAP_IDENTIFIER = "authentik-bootstrap-token"


class Command(BaseCommand):
    help = (
        "On a database with no users, create the superuser akadmin and the API token "
        "authentik-bootstrap-token (key from AUTHENTIK_BOOTSTRAP_TOKEN, else generated and printed once)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--base-url", default="", help="URL printed in the example curl command.")

    def handle(self, *args: Any, base_url: str = "", **options: Any) -> None:
        supplied = os.environ.get("AUTHENTIK_BOOTSTRAP_TOKEN") or None
        if supplied is not None:
            try:
                validate_key(supplied)
            except ValidationError:
                raise CommandError(
                    "AUTHENTIK_BOOTSTRAP_TOKEN is not a valid key (visible ASCII, 1-1024 characters)."
                ) from None
        with transaction.atomic():
            if User.objects.select_for_update().exists():
                self.stdout.write("Bootstrap skipped: the database already has users.")
                return
            admin = User.objects.create_superuser(
                username=BOOTSTRAP_USERNAME,
                email=os.environ.get("AUTHENTIK_BOOTSTRAP_EMAIL", ""),
                password=os.environ.get("AUTHENTIK_BOOTSTRAP_PASSWORD") or None,
                name="authentik Default Admin",
            )
            token = token_create(
                actor=None,
                user=admin,
                identifier=BOOTSTRAP_IDENTIFIER,
                intent=TokenIntents.API,
                key=supplied,
                expiring=False,
                description="Bootstrap API token",
                request_meta=SYSTEM_REQUEST,
            )
        self._announce(token, printed_key=supplied is None, base_url=base_url)

    def _announce(self, token: Token, *, printed_key: bool, base_url: str) -> None:
        base = base_url.rstrip("/") or "http://127.0.0.1:8000"
        key_ref = shlex.quote(token.key) if printed_key else '"$AUTHENTIK_BOOTSTRAP_TOKEN"'
        self.stdout.write(f"Created superuser {BOOTSTRAP_USERNAME} and API token {token.identifier}.")
        if printed_key:
            self.stdout.write("Its key is shown this once; store it now:")
            self.stdout.write(f"  {token.key}")
        else:
            self.stdout.write("Its key is the value of AUTHENTIK_BOOTSTRAP_TOKEN.")
        new_key = generate_key()
        self.stdout.write("Rotate it with set_key (afterwards only the new key below authenticates):")
        self.stdout.write(
            f"  curl -i -X POST -H 'Authorization: Bearer '{key_ref} -H 'Content-Type: application/json' "
            f'-d \'{{"key": "{new_key}"}}\' {base}/api/v3/core/tokens/{token.identifier}/set_key/'
        )
