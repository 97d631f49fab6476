"""Shared argument handling of grant_perm and revoke_perm."""

from typing import Any

from django.contrib.auth.models import Group, Permission
from django.core.management.base import CommandError

from core.models import Token, User

TOKEN_PERMISSIONS = ("set_token_key", "view_token_key", "view_token", "change_token", "delete_token", "add_token")


def add_arguments(parser: Any) -> None:
    parser.add_argument("permission", help=f"One of {', '.join(TOKEN_PERMISSIONS)} (or authentik_core.<name>).")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="Username.")
    who.add_argument("--group", help="Group name.")
    parser.add_argument("--token", help="Token identifier: an object permission on it, instead of a global one.")


def resolve(options: dict[str, Any]) -> tuple[Permission, User | Group, Token | None]:
    codename = options["permission"].removeprefix("authentik_core.")
    if codename not in TOKEN_PERMISSIONS:
        raise CommandError(f"Unknown permission; use one of {', '.join(TOKEN_PERMISSIONS)}.")
    permission = Permission.objects.get(content_type__app_label="authentik_core", codename=codename)
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
    return permission, holder, token


def global_permissions(holder: User | Group) -> Any:
    """The many-to-many manager of ``holder``'s global permissions."""
    return holder.user_permissions if isinstance(holder, User) else holder.permissions
