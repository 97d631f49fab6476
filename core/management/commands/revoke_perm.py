"""Revoke a token permission from a user or group, globally or on one token."""

from typing import Any

from django.core.management.base import BaseCommand
from guardian.shortcuts import remove_perm

from core.management.commands import _perms


class Command(BaseCommand):
    help = "Revoke authentik_core.<permission> from --user or --group, globally or on --token."

    def add_arguments(self, parser: Any) -> None:
        _perms.add_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        permission, holder, token = _perms.resolve(options)
        if token is None:
            _perms.global_permissions(holder).remove(permission)
        else:
            remove_perm(permission, holder, token)
        where = f"on token {token.identifier}" if token else "globally"
        self.stdout.write(f"Revoked {permission.codename} from {holder} {where}.")
