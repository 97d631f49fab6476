"""Grant a token permission to a user or group, globally or on one token."""

from typing import Any

from django.core.management.base import BaseCommand
from guardian.shortcuts import assign_perm

from core.management.commands import _perms


class Command(BaseCommand):
    help = "Grant authentik_core.<permission> to --user or --group, globally or on --token (django-guardian)."

    def add_arguments(self, parser: Any) -> None:
        _perms.add_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        permission, holder, token = _perms.resolve(options)
        if token is None:
            _perms.global_permissions(holder).add(permission)
        else:
            assign_perm(permission, holder, token)
        where = f"on token {token.identifier}" if token else "globally"
        self.stdout.write(f"Granted {permission.codename} to {holder} {where}.")
