"""Revoke a token permission from a user or group, globally or on one token, with its audit event."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from core.management.commands import _perms
from core.object_permissions import global_perm_revoke, token_perm_revoke
from tokens_service.errors import ObjectNotFound
from tokens_service.request_meta import SYSTEM_REQUEST


class Command(BaseCommand):
    help = (
        "Revoke authentik_core.<permission> from --user or --group, globally or on --token. "
        "Writes one model_updated audit event."
    )

    def add_arguments(self, parser: Any) -> None:
        _perms.add_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        codename, holder, token = _perms.resolve(options)
        if token is None:
            global_perm_revoke(codename=codename, grantee=holder, actor=None, request_meta=SYSTEM_REQUEST)
        else:
            try:
                token_perm_revoke(
                    token=token, codename=codename, grantee=holder, actor=None, request_meta=SYSTEM_REQUEST
                )
            except ObjectNotFound as exc:
                raise CommandError("No such token.") from exc
        where = f"on token {token.identifier}" if token else "globally"
        self.stdout.write(f"Revoked {codename} from {holder} {where}.")
