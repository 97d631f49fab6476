"""Reads: bearer lookup, permission checks and visibility of tokens, in plain ORM.

This module is the contract. The requests every API call makes (bearer lookup, permission check) also
have a hand-written SQL version in ``core.fastpath``, with the same signatures; ``fastpath.enabled()``
(setting ``TOKENS_FAST_PATH``) chooses it, and a differential test holds both to the same answers.
"""

import hmac
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth.models import Group, Permission
from django.db import connection, models
from django.db.models import CharField, Exists, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Cast, Replace
from django.utils import timezone
from guardian.models import GroupObjectPermission, UserObjectPermission

from core import fastpath
from core.crypto import key_lookup_digests
from core.models import Token, TokenIntents, User


def token_for_bearer_key(key: str) -> Token | None:
    """The token that ``key`` authenticates as, with its user, in one query; ``None`` if it does not.

    Only an unexpired ``api`` token of an active user authenticates, with its current key or, within the
    grace period of its last rotation, its previous key (``via_previous_key`` is then set on the token).
    The key is matched through its digest (index lookups), never compared in Python.
    """
    match = bearer_match(key)
    return match.token if match is not None and match.authenticates else None


@dataclass(frozen=True, slots=True)
class BearerMatch:
    """A token whose current or previous key is the presented one."""

    token: Token
    previous: bool  # matched the key replaced by the last rotation, not the current one
    authenticates: bool  # False only for a previous key whose grace period is over


def bearer_match(key: str) -> BearerMatch | None:
    """The live ``api`` token (of an active user) whose current or previous key is ``key``, in one query.

    The key is looked up under every digest it may be stored under (each configured pepper, the legacy
    one: ``core.crypto.key_lookup_digests``). The current key wins if another token's previous key happens
    to be the same. A previous key authenticates only until ``previous_key_expires``; after that the match
    is still reported (``authenticates`` False), so that the caller can flag the late use of a replaced key.
    """
    if fastpath.enabled():
        return fastpath.bearer_match(key)
    digests = key_lookup_digests(key)
    now = timezone.now()
    candidates = (
        Token.objects.unexpired(now)
        .select_related("user")
        .defer(*fastpath.BEARER_DEFERRED)
        .filter(Q(key_digest__in=digests) | Q(previous_key_digest__in=digests))
        .filter(intent=TokenIntents.API, user__is_active=True)
    )
    return choose_bearer_match(list(candidates), digests, now)


def choose_bearer_match(candidates: Sequence[Token], digests: Sequence[str], now: datetime) -> BearerMatch | None:
    """The answer of ``bearer_match`` from the tokens whose current or previous digest is one of ``digests``
    (shared by the contract path and ``core.fastpath``)."""

    def holds(digest: str | None) -> bool:
        return digest is not None and any(hmac.compare_digest(digest, candidate) for candidate in digests)

    current = [token for token in candidates if holds(token.key_digest)]
    if len(current) > 1:
        return None  # (only conceivable mid pepper rotation) two tokens with one key: nobody
    if current:
        return BearerMatch(token=current[0], previous=False, authenticates=True)
    if len(candidates) != 1:
        return None  # no match, or the same previous key on several tokens: ambiguous, never guess
    token = candidates[0]
    token.via_previous_key = True
    expires = token.previous_key_expires
    return BearerMatch(token=token, previous=True, authenticates=expires is not None and expires > now)


def _object_pk_matches(token_pk: Subquery | OuterRef) -> tuple[dict[str, Any], Q]:
    """Annotation and filter matching guardian's text ``object_pk`` against a token's uuid.

    guardian stores ``str(uuid)`` (with dashes). PostgreSQL casts a uuid to exactly that text, which
    keeps guardian's (content_type, object_pk) index usable; SQLite stores uuids as 32 hex digits, so
    there the dashes are removed from ``object_pk`` instead.
    """
    if connection.vendor == "postgresql":
        return {}, Q(object_pk=Cast(token_pk, output_field=CharField()))
    return {"object_pk_hex": Replace("object_pk", Value("-"), Value(""))}, Q(object_pk_hex=token_pk)


def _holds_token_perm(user: User, codename: str, on_token: tuple[dict[str, Any], Q]) -> bool:
    """Whether active ``user`` holds ``authentik_core.<codename>`` as a user or group permission, or as a
    guardian object permission (user or group) on the token ``on_token`` matches. One query."""
    annotation, pk_match = on_token
    perm = OuterRef("pk")
    user_global = User.user_permissions.through.objects.filter(user_id=user.pk, permission_id=perm)
    group_global = Group.permissions.through.objects.filter(group__user=user.pk, permission_id=perm)
    on_object = {"permission_id": perm, "content_type_id": OuterRef("content_type_id")}
    user_object = UserObjectPermission.objects.annotate(**annotation).filter(pk_match, user_id=user.pk, **on_object)
    group_object = GroupObjectPermission.objects.annotate(**annotation).filter(
        pk_match, group__user=user.pk, **on_object
    )
    return (
        Permission.objects.filter(content_type__app_label="authentik_core", content_type__model="token")
        .filter(codename=codename)
        .filter(Exists(user_global) | Exists(group_global) | Exists(user_object) | Exists(group_object))
        .exists()
    )


def user_has_token_perm(user: User, codename: str, identifier: str) -> bool:
    """Whether ``user`` holds ``authentik_core.<codename>`` globally or on the token ``identifier``.

    Active superusers always do (no query). Otherwise one query answers all four ways of holding it:
    a user permission, a group permission, a guardian object permission of the user or of one of its
    groups. An unknown identifier simply matches no object permission, so callers cannot probe for it.

    The identifier is resolved in the query, without a lock: use it for up-front checks and display
    only. A decision that allows a write or a read of a token is ``user_has_token_perm_on_pk`` on the
    row the service has locked.
    """
    if not user.is_active:
        return False
    if user.is_superuser:
        return True
    if fastpath.enabled():
        return fastpath.user_has_token_perm(user, codename, identifier)
    token_pk = Subquery(Token.objects.filter(identifier=identifier).values("pk")[:1])
    return _holds_token_perm(user, codename, _object_pk_matches(token_pk))


def user_has_token_perm_on_pk(user: User, codename: str, token_pk: uuid.UUID) -> bool:
    """Whether ``user`` holds ``authentik_core.<codename>`` globally or on the token whose pk is ``token_pk``.

    The deciding check of every service that writes or reveals a token: it runs inside the service's
    transaction, after the token's row is locked, on that row's pk (which a rename cannot change).
    """
    if not user.is_active:
        return False
    if user.is_superuser:
        return True
    if fastpath.enabled():
        return fastpath.user_has_token_perm_on_pk(user, codename, token_pk)
    return _holds_token_perm(user, codename, ({}, Q(object_pk=str(token_pk))))


# The codenames of the token's permissions (Django's defaults and the model's own): in this app, no other
# model has a permission of these names, so holding one globally is holding it on the token model.
_TOKEN_CODENAMES = frozenset(
    [f"{action}_{Token._meta.model_name}" for action in Token._meta.default_permissions]
    + [codename for codename, _ in Token._meta.permissions]
)


def user_has_global_perm(user: User, app_label: str, codename: str) -> bool:
    """Whether ``user`` holds ``<app_label>.<codename>`` globally (user or group permission), in one query.

    Active superusers always do; inactive users never do. Object permissions are not consulted.
    """
    if not user.is_active:
        return False
    if user.is_superuser:
        return True
    if fastpath.enabled() and app_label == Token._meta.app_label and codename in _TOKEN_CODENAMES:
        return fastpath.user_has_global_token_perm(user, codename)
    perm = OuterRef("pk")
    user_global = User.user_permissions.through.objects.filter(user_id=user.pk, permission_id=perm)
    group_global = Group.permissions.through.objects.filter(permission_id=perm, group__user=user.pk)
    return (
        Permission.objects.filter(content_type__app_label=app_label, codename=codename)
        .filter(Exists(user_global) | Exists(group_global))
        .exists()
    )


def tokens_visible_to(user: User) -> QuerySet[Token]:
    """Tokens ``user`` may see, with their owners.

    Everything for active superusers and holders of the global ``authentik_core.view_token``;
    otherwise the user's own tokens plus those on which the user, or one of its groups, holds any
    guardian object permission (holding ``change_token`` or ``view_token_key`` on a token implies
    seeing it). Inactive users see nothing.

    Here an ``OR`` of ``EXISTS``, tested against every token; ``core.fastpath.visible_token_pks`` gives
    the same set as one ``pk IN (... UNION ...)`` of three index lookups, which reads only the user's own
    rows however many tokens exist (README, "Scale").
    """
    tokens = Token.objects.select_related("user")
    if not user.is_active:
        return tokens.none()
    if user_has_global_perm(user, "authentik_core", "view_token"):
        return tokens
    if fastpath.enabled():
        return tokens.filter(pk__in=fastpath.visible_token_pks(user))
    annotation, pk_match = _object_pk_matches(OuterRef("pk"))
    token_type = {"content_type__app_label": "authentik_core", "content_type__model": "token"}
    user_object = UserObjectPermission.objects.annotate(**annotation).filter(pk_match, user_id=user.pk, **token_type)
    group_object = GroupObjectPermission.objects.annotate(**annotation).filter(
        pk_match, group__user=user.pk, **token_type
    )
    return tokens.filter(Q(user=user) | Exists(user_object) | Exists(group_object))


_ON_DELETE_ACTIONS = {
    models.CASCADE: "cascade",
    models.SET_NULL: "set_null",
    models.SET_DEFAULT: "set_default",
}


def objects_using(instance: models.Model) -> list[dict[str, str]]:
    """Every object that references ``instance`` through a foreign key, one-to-one or many-to-many.

    Each entry names the referencing object (``app``, ``model_name``, ``pk``, ``name``) and what deleting
    ``instance`` does to it (``action``, authentik's ``UsedByActionEnum``). One query per reverse
    relation; a model nothing points to (a token, today) costs none and yields ``[]``.
    """
    used_by: list[dict[str, str]] = []
    for relation in instance._meta.related_objects:
        accessor = relation.get_accessor_name()
        if accessor is None:
            continue
        if relation.many_to_many:
            action = "cascade_many"
        else:
            on_delete = getattr(relation, "on_delete", None)
            action = _ON_DELETE_ACTIONS.get(on_delete, "left_dangling")  # type: ignore[arg-type]
        if relation.one_to_one:
            related = getattr(instance, accessor, None)
            referencing = [related] if related is not None else []
        else:
            referencing = list(getattr(instance, accessor).all())
        for obj in referencing:
            used_by.append(
                {
                    "app": obj._meta.app_label,
                    "model_name": obj._meta.model_name or "",
                    "pk": str(obj.pk),
                    "name": str(obj),
                    "action": action,
                }
            )
    return used_by
