"""Grants and revocations of token permissions, each with its audit event in the same transaction.

Every path that hands out or takes back a per-token permission (the admin's object-permission pages,
token creation through the API, the ``grant_perm`` / ``revoke_perm`` commands) goes through
``token_perm_grant`` / ``token_perm_revoke``; global grants from the commands go through
``global_perm_grant`` / ``global_perm_revoke``. Each call writes exactly one ``model_updated`` event
naming the token (for object permissions), the permission and the grantee, and whether it was granted.
"""

from typing import Any

from django.contrib.auth.models import Group, Permission
from django.db import transaction
from guardian.shortcuts import assign_perm, get_group_perms, get_user_perms, remove_perm

from core.models import Token, User
from events.models import EventAction
from events.services import event_create, model_summary
from tokens_service.errors import ObjectNotFound
from tokens_service.request_meta import RequestMeta

APP_LABEL = Token._meta.app_label
# Who may manage object permissions in the admin (besides active superusers): a global permission.
MANAGE_PERMISSION_CODENAME = "manage_token_permissions"
MANAGE_PERMISSION = f"{APP_LABEL}.{MANAGE_PERMISSION_CODENAME}"


def can_manage_token_permissions(user: Any) -> bool:
    """Active superusers and holders of the global ``authentik_core.manage_token_permissions`` (user or
    group). ``change_token`` alone is not enough: it lets a user edit a token, not decide who else may."""
    if not getattr(user, "is_active", False):
        return False
    return bool(user.is_superuser or user.has_perm(MANAGE_PERMISSION))


def _permission(codename: str) -> Permission:
    codename = codename.removeprefix(f"{APP_LABEL}.")
    try:
        return Permission.objects.get(content_type__app_label=APP_LABEL, codename=codename)
    except Permission.DoesNotExist as exc:
        raise ValueError(f"unknown permission {APP_LABEL}.{codename}") from exc


def grantee_summary(grantee: User | Group) -> dict[str, Any]:
    """What an event records of a grantee: its kind, pk and name (never anything secret)."""
    if isinstance(grantee, Group):
        return {"type": "group", "pk": grantee.pk, "name": grantee.name}
    return {"type": "user", "pk": grantee.pk, "username": grantee.get_username()}


def _holds(grantee: User | Group, token: Token, codename: str) -> bool:
    # The grantee's own rows only: for a user, not those inherited from its groups.
    held = get_group_perms(grantee, token) if isinstance(grantee, Group) else get_user_perms(grantee, token)
    return codename in set(held.values_list("codename", flat=True))


def _locked_token(token: Token) -> Token:
    """Re-read ``token`` under its row lock, so a grant cannot race a deletion into an orphaned row
    (``token_delete`` locks the row before removing the token's object permissions)."""
    locked = Token.objects.select_for_update().filter(pk=token.pk).first()
    if locked is None:
        raise ObjectNotFound
    return locked


def _audit(
    *,
    token: Token | None,
    permission: Permission,
    grantee: User | Group,
    granted: bool,
    changed: bool,
    actor: User | None,
    request_meta: RequestMeta,
) -> None:
    context: dict[str, Any] = {
        "permission": f"{APP_LABEL}.{permission.codename}",
        "grantee": grantee_summary(grantee),
        "granted": granted,
        "changed": changed,
    }
    if token is not None:
        context = {"model": model_summary(token), **context}
    else:
        context = {"model": model_summary(grantee), "scope": "global", **context}
    event_create(
        action=EventAction.MODEL_UPDATED,
        actor=actor,
        request_meta=request_meta,
        app=APP_LABEL,
        context=context,
    )


def _set_token_perm(
    *, token: Token, codename: str, grantee: User | Group, granted: bool, actor: User | None, request_meta: RequestMeta
) -> bool:
    """Give (``granted``) or take away a token object permission under the token's row lock, audited."""
    permission = _permission(codename)
    with transaction.atomic():
        locked = _locked_token(token)
        changed = _holds(grantee, locked, permission.codename) != granted
        if changed:
            (assign_perm if granted else remove_perm)(permission, grantee, locked)
        _audit(
            token=locked,
            permission=permission,
            grantee=grantee,
            granted=granted,
            changed=changed,
            actor=actor,
            request_meta=request_meta,
        )
    return changed


def token_perm_grant(
    *, token: Token, codename: str, grantee: User | Group, actor: User | None, request_meta: RequestMeta
) -> bool:
    """Grant ``authentik_core.<codename>`` on ``token`` to a user or group (django-guardian), audited.

    Locks the token's row, writes the object permission unless it is already held, and writes one
    ``model_updated`` event (token summary, ``permission``, ``grantee``, ``granted: true``, ``changed``)
    in the same transaction. Returns whether a row was added. Raises ``ObjectNotFound`` when the token
    is gone and ``ValueError`` for an unknown permission. Authorization is the caller's job.
    """
    return _set_token_perm(
        token=token, codename=codename, grantee=grantee, granted=True, actor=actor, request_meta=request_meta
    )


def token_perm_revoke(
    *, token: Token, codename: str, grantee: User | Group, actor: User | None, request_meta: RequestMeta
) -> bool:
    """Revoke ``authentik_core.<codename>`` on ``token`` from a user or group, audited.

    The same lock, event (``granted: false``) and errors as ``token_perm_grant``. Returns whether a row
    was removed. A permission the grantee holds through one of its groups is not touched.
    """
    return _set_token_perm(
        token=token, codename=codename, grantee=grantee, granted=False, actor=actor, request_meta=request_meta
    )


def _set_global_perm(
    *, codename: str, grantee: User | Group, granted: bool, actor: User | None, request_meta: RequestMeta
) -> bool:
    """Give (``granted``) or take away a global permission of a user or group, audited."""
    permission = _permission(codename)
    related = grantee.permissions if isinstance(grantee, Group) else grantee.user_permissions
    with transaction.atomic():
        changed = related.filter(pk=permission.pk).exists() != granted
        if changed:
            (related.add if granted else related.remove)(permission)
        _audit(
            token=None,
            permission=permission,
            grantee=grantee,
            granted=granted,
            changed=changed,
            actor=actor,
            request_meta=request_meta,
        )
    return changed


def global_perm_grant(*, codename: str, grantee: User | Group, actor: User | None, request_meta: RequestMeta) -> bool:
    """Grant ``authentik_core.<codename>`` on every token to a user or group, audited (one
    ``model_updated`` event on the grantee, ``scope: "global"``). Returns whether it was added."""
    return _set_global_perm(codename=codename, grantee=grantee, granted=True, actor=actor, request_meta=request_meta)


def global_perm_revoke(*, codename: str, grantee: User | Group, actor: User | None, request_meta: RequestMeta) -> bool:
    """Revoke a global ``authentik_core.<codename>`` from a user or group, audited like ``global_perm_grant``."""
    return _set_global_perm(codename=codename, grantee=grantee, granted=False, actor=actor, request_meta=request_meta)
