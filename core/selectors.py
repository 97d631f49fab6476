"""Reads: bearer lookup, permission checks and visibility of tokens."""

from typing import Any

from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.db.models import CharField, Exists, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Cast, Replace
from django.utils import timezone
from guardian.models import GroupObjectPermission, UserObjectPermission

from core.models import Token, TokenIntents, User, key_digest


def token_for_bearer_key(key: str) -> Token | None:
    """The token that ``key`` authenticates as, with its user, in one query; ``None`` if it does not.

    The key is matched through its digest (an index lookup in SQL), never compared in Python.
    """
    now = timezone.now()
    return (
        Token.objects.select_related("user")
        .filter(key_digest=key_digest(key), intent=TokenIntents.API, user__is_active=True)
        .exclude(expiring=True, expires__lte=now)
        .first()
    )


def _object_pk_matches(token_pk: Subquery) -> tuple[dict[str, Any], Q]:
    """Annotation and filter matching guardian's text ``object_pk`` against a token's uuid.

    guardian stores ``str(uuid)`` (with dashes). PostgreSQL casts a uuid to exactly that text, which
    keeps guardian's (content_type, object_pk) index usable; SQLite stores uuids as 32 hex digits, so
    there the dashes are removed from ``object_pk`` instead.
    """
    if connection.vendor == "postgresql":
        return {}, Q(object_pk=Cast(token_pk, output_field=CharField()))
    return {"object_pk_hex": Replace("object_pk", Value("-"), Value(""))}, Q(object_pk_hex=token_pk)


def user_has_token_perm(user: User, codename: str, identifier: str) -> bool:
    """Whether ``user`` holds ``authentik_core.<codename>`` globally or on the token ``identifier``.

    Active superusers always do. Otherwise one query answers all four ways of holding it: a user
    permission, a group permission, a guardian object permission of the user or of one of its groups.
    An unknown identifier simply matches no object permission, so callers cannot probe for it.
    """
    if not user.is_active:
        return False
    if user.is_superuser:
        return True
    token_pk = Subquery(Token.objects.filter(identifier=identifier).values("pk")[:1])
    annotation, pk_match = _object_pk_matches(token_pk)
    perm = OuterRef("pk")
    user_global = User.user_permissions.through.objects.filter(user_id=user.pk, permission_id=perm)
    group_global = Group.permissions.through.objects.filter(permission_id=perm, group__user=user.pk)
    user_object = UserObjectPermission.objects.annotate(**annotation).filter(
        pk_match, user_id=user.pk, permission_id=perm
    )
    group_object = GroupObjectPermission.objects.annotate(**annotation).filter(
        pk_match, group__user=user.pk, permission_id=perm
    )
    return (
        Permission.objects.filter(
            content_type__app_label="authentik_core", content_type__model="token", codename=codename
        )
        .filter(Exists(user_global) | Exists(group_global) | Exists(user_object) | Exists(group_object))
        .exists()
    )


def tokens_visible_to(user: User) -> QuerySet[Token]:
    """Tokens ``user`` may see: all for superusers and global ``view_token``; else own and object-permitted."""
    tokens = Token.objects.select_related("user")
    if user.is_superuser or user.has_perm("authentik_core.view_token"):
        return tokens
    from guardian.shortcuts import get_objects_for_user

    permitted = get_objects_for_user(
        user, "authentik_core.view_token", klass=Token, accept_global_perms=False, with_superuser=False
    )
    return tokens.filter(Q(user=user) | Q(pk__in=permitted.values("pk")))
