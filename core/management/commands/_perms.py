"""Shared argument handling of grant_perm and revoke_perm."""

from typing import Any

from django.contrib.auth.models import Group
from django.core.management.base import CommandError

from core.models import Token, User
from core.object_permissions import MANAGE_PERMISSION_CODENAME

TOKEN_PERMISSIONS = ("set_token_key", "view_token_key", "view_token", "change_token", "delete_token", "add_token")
# Permissions that only make sense globally (never per token).
GLOBAL_ONLY_PERMISSIONS = (MANAGE_PERMISSION_CODENAME,)


def add_arguments(parser: Any) -> None:
    names = ", ".join((*TOKEN_PERMISSIONS, *GLOBAL_ONLY_PERMISSIONS))
    parser.add_argument("permission", help=f"One of {names} (or authentik_core.<name>).")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="Username.")
    who.add_argument("--group", help="Group name.")
    parser.add_argument("--token", help="Token identifier: an object permission on it, instead of a global one.")


def resolve(options: dict[str, Any]) -> tuple[str, User | Group, Token | None]:
    """The permission's codename, the user or group, and the token (``None`` for a global permission)."""
    codename = options["permission"].removeprefix("authentik_core.")
    if codename not in TOKEN_PERMISSIONS and codename not in GLOBAL_ONLY_PERMISSIONS:
        known = ", ".join((*TOKEN_PERMISSIONS, *GLOBAL_ONLY_PERMISSIONS))
        raise CommandError(f"Unknown permission; use one of {known}.")
    if codename in GLOBAL_ONLY_PERMISSIONS and options["token"]:
        raise CommandError(f"{codename} is global only; leave out --token.")
    holder: User | Group
    try:
        holder = (
            User.objects.get(username=options["user"]) if options["user"] else Group.objects.get(name=options["group"])
        )
    except (User.DoesNotExist, Group.DoesNotExist) as exc:
        raise CommandError("No such user or group.") from exc
    token = None
    if options["token"]:
        token = Token.objects.filter(identifier=options["token"]).first()
        if token is None:
            raise CommandError("No such token.")
    return codename, holder, token
