"""Writes to tokens, in plain ORM. Each service owns its transaction and writes its audit event inside it.

This module is the contract: every rule of a write is here, readable as ORM (``transaction.atomic``,
``select_for_update``, ``save(update_fields=...)``, ``events.services.event_create``). ``token_set_key``
also has a one-statement SQL version in ``core.fastpath`` (same signature, same decisions through
``set_key_outcome``), chosen by ``fastpath.enabled()``.

Authorization of a write or a read of one token is decided here, on the row the service has locked, in
the same transaction as the write: never on an identifier resolved earlier, which a concurrent rename
could have moved to another token.
"""

import uuid
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import BooleanField, ExpressionWrapper
from django.utils import timezone
from django.utils.crypto import salted_hmac
from guardian.models import GroupObjectPermission, UserObjectPermission

from core import fastpath
from core.crypto import key_lookup_digests
from core.models import Token, TokenIntents, User
from core.object_permissions import token_perm_grant
from core.selectors import user_has_global_perm, user_has_token_perm_on_pk
from events.models import EventAction
from events.services import event_create, model_summary
from tokens_service.errors import FieldConflict, ObjectNotFound
from tokens_service.request_meta import RequestMeta

KEY_IN_USE = "This key cannot be used; choose another."
OWNER_FIXED = "A token's owner cannot be changed."
INTENT_FIXED = "The intent can only change between api and app_password."
# The intents a caller may hand out through the API; the others are issued by the system itself.
API_INTENTS = frozenset({TokenIntents.API, TokenIntents.APP_PASSWORD})
# What token_update may change. Never "key" (set_key owns it) and never "user" (owners are fixed).
UPDATABLE_FIELDS = ("identifier", "intent", "description", "expires", "expiring", "managed", "allowed_ips")


class KeyInUse(FieldConflict):
    """The new key is another token's key: a 400 on ``key`` that never says whose.

    The service has already written a ``suspicious_request`` event; the HTTP layer also counts it
    against the caller and the client address (``tokens_service.throttling.KeyCollisionThrottle``).
    """

    def __init__(self) -> None:
        super().__init__("key", KEY_IN_USE)


def key_fingerprint(key: str) -> str:
    """An HMAC of ``key`` under the server's secret: lets an auditor match a key they hold, reveals nothing."""
    return salted_hmac("tokens-service.key-fingerprint", key, algorithm="sha256").hexdigest()


def _locked_token(**lookup: Any) -> Token | None:
    """The token matching ``lookup``, locked (``SELECT ... FOR UPDATE``) until the transaction ends, with
    ``expired`` annotated from the expiry rule (``TokenQuerySet.expired_q``). Call inside ``atomic``."""
    expired = ExpressionWrapper(Token.objects.expired_q(timezone.now()), output_field=BooleanField())
    return Token.objects.select_for_update().annotate(expired=expired).filter(**lookup).first()


def _refuse_unknown(actor: User, codename: str) -> None:
    """No token by that identifier: 404 for holders of the global permission, 403 for everyone else, so
    that a caller who may not act on it cannot tell whether it exists."""
    if user_has_global_perm(actor, "authentik_core", codename):
        raise ObjectNotFound
    raise PermissionDenied


def _authorize(actor: User, codename: str, token: Token, *, owner_allowed: bool = False) -> None:
    """Raise ``PermissionDenied`` unless ``actor`` may act on the locked ``token``: ``codename`` held
    globally or on this row's pk (or, with ``owner_allowed``, ``actor`` owns it)."""
    if owner_allowed and token.user_id == actor.pk:
        return
    if not user_has_token_perm_on_pk(actor, codename, token.pk):
        raise PermissionDenied


def token_summary(*, token_identifier: str, token_pk: str | None) -> dict[str, Any]:
    """``events.services.model_summary`` of a token known by identifier and pk hex (``None`` where the
    hand-written statement fills it in from the row it wrote)."""
    return {
        "app": Token._meta.app_label,
        "model_name": Token._meta.model_name,
        "pk": token_pk,
        "name": token_identifier,
    }


def set_key_event_context(*, token_identifier: str, token_pk: str | None, key: str) -> dict[str, Any]:
    """The context of set_key's ``model_updated`` event, the same on both paths: the token summary, the
    changed field and the key's fingerprint (never the key)."""
    return {
        "model": token_summary(token_identifier=token_identifier, token_pk=token_pk),
        "changed_fields": ["key"],
        "key_fingerprint": key_fingerprint(key),
    }


def report_key_collision(*, actor: User | None, request_meta: RequestMeta, token_summary: dict[str, Any]) -> None:
    """Write the ``suspicious_request`` event of a key that another token holds: which token the caller
    tried to re-key (or create), never the key, its digest or the other token."""
    event_create(
        action=EventAction.SUSPICIOUS_REQUEST,
        actor=actor,
        request_meta=request_meta,
        app="authentik_core",
        context={"reason": "key_in_use", "model": token_summary},
    )


def refuse_unless_allowed(*, token_pk: uuid.UUID | None, permitted: bool, global_perm: bool, expired: bool) -> None:
    """Raise the answer to a decision taken on a locked row that does not allow the operation.

    In this order: no such token (``ObjectNotFound`` with the global permission, else
    ``PermissionDenied``, so that a caller who may not act cannot tell whether it exists), no permission
    on the row (``PermissionDenied``), expired (``ObjectNotFound``).
    """
    if token_pk is None:
        raise ObjectNotFound if global_perm else PermissionDenied
    if not permitted:
        raise PermissionDenied
    if expired:
        raise ObjectNotFound


def set_key_outcome(
    *,
    token_pk: uuid.UUID | None,
    permitted: bool,
    global_perm: bool,
    expired: bool,
    collides: bool,
    written: bool,
    token_identifier: str,
    actor: User,
    request_meta: RequestMeta,
) -> None:
    """Turn the decision taken on the locked row into set_key's answer; shared by both paths.

    In this order: no such token (404 with the global permission, else 403), no permission on the row
    (403), expired (404), key held by another token (400 and a ``suspicious_request`` event). Nothing
    was written in any of these cases.
    """
    refuse_unless_allowed(token_pk=token_pk, permitted=permitted, global_perm=global_perm, expired=expired)
    assert token_pk is not None  # refused above otherwise
    if collides:
        summary = token_summary(token_identifier=token_identifier, token_pk=token_pk.hex)
        report_key_collision(actor=actor, request_meta=request_meta, token_summary=summary)
        raise KeyInUse
    if not written:  # pragma: no cover - every refusal is handled above
        raise AssertionError("set_key allowed a write that did not happen")


def token_set_key(
    *, token_identifier: str, key: str, actor: User, request_meta: RequestMeta, token_pk: uuid.UUID | None = None
) -> None:
    """Replace the key of the token ``token_identifier`` and audit it, atomically.

    Locks the token's row by its identifier, then decides on that row: ``authentik_core.set_token_key``
    held by ``actor`` (superuser, globally, or as an object permission on this row's pk), the token not
    expired, no other token holding the key. Writes only ``key`` (and its digest) and exactly one
    ``model_updated`` event; both commit together or not at all. Concurrent calls on one token
    serialize and the last to commit wins.

    Raises ``PermissionDenied`` (no permission on the row; unknown identifier for a caller without the
    global permission), ``ObjectNotFound`` (unknown for a holder of the global permission, or expired)
    and ``KeyInUse``. ``key`` must already be validated (``TokenSetKeySerializer``). With ``token_pk`` (the
    admin, whose page names a token by pk) the identifier must still name that token, or it is unknown.
    """
    if fastpath.enabled():
        fastpath.token_set_key(
            token_identifier=token_identifier, key=key, actor=actor, request_meta=request_meta, token_pk=token_pk
        )
        return
    decision: dict[str, Any] = {"permitted": False, "global_perm": False, "expired": False, "collides": False}
    try:
        with transaction.atomic():
            lookup = {"identifier": token_identifier} | ({} if token_pk is None else {"pk": token_pk})
            token = _locked_token(**lookup)
            decision["token_pk"] = token.pk if token is not None else None
            if token is None:
                decision["global_perm"] = user_has_global_perm(actor, "authentik_core", "set_token_key")
            else:
                decision["permitted"] = user_has_token_perm_on_pk(actor, "set_token_key", token.pk)
                decision["expired"] = token.expired  # type: ignore[attr-defined]  # annotated by _locked_token
                # Every digest the key may be stored under (each pepper, the legacy one), see core.crypto.
                others = Token.objects.filter(key_digest__in=key_lookup_digests(key)).exclude(pk=token.pk)
                decision["collides"] = others.exists()
            written = (
                token is not None and not any(decision[k] for k in ("expired", "collides")) and decision["permitted"]
            )
            if written:
                assert token is not None
                token.key = key
                # A new key also ends any grace period a rotation gave the previous one (core.rotation).
                token.previous_key_digest = token.previous_key_expires = None
                token.save(update_fields=["key", "previous_key_digest", "previous_key_expires"])
                event_create(
                    action=EventAction.MODEL_UPDATED,
                    actor=actor,
                    request_meta=request_meta,
                    app="authentik_core",
                    context=set_key_event_context(token_identifier=token_identifier, token_pk=token.pk.hex, key=key),
                )
    except IntegrityError:
        # The last line of defence: another transaction committed the same key after the check above.
        decision["collides"], written = True, False
    set_key_outcome(
        **decision, written=written, token_identifier=token_identifier, actor=actor, request_meta=request_meta
    )


def token_create(
    *,
    actor: User | None,
    user: User,
    identifier: str,
    request_meta: RequestMeta,
    intent: str = TokenIntents.API,
    key: str | None = None,
    description: str = "",
    expires: datetime | None = None,
    expiring: bool = True,
    managed: str | None = None,
    allowed_ips: list[str] | None = None,
    owner_permissions: Iterable[str] = (),
) -> Token:
    """Create a token (a fresh random key unless ``key`` is given) and its ``model_created`` event.

    ``owner_permissions`` are ``authentik_core`` codenames granted to the owner as guardian object
    permissions on the new token (the API grants ``view_token_key``). The row, the grants and the event
    commit together. Raises ``FieldConflict`` when the identifier, the key or ``managed`` is taken.
    """
    token = Token(
        identifier=identifier,
        user=user,
        intent=intent,
        description=description,
        expires=expires,
        expiring=expiring,
        managed=managed,
        allowed_ips=allowed_ips,
    )
    if key is not None:
        token.key = key
        # Checked first, so that a clash is an answer rather than a unique-constraint error (whose
        # message names the digest) in the database's log; the constraint still catches a race.
        if Token.objects.filter(key_digest__in=key_lookup_digests(key)).exists():
            report_key_collision(actor=actor, request_meta=request_meta, token_summary={"name": identifier})
            raise KeyInUse
    try:
        with transaction.atomic():
            token.save(force_insert=True)
            for codename in owner_permissions:
                token_perm_grant(token=token, codename=codename, grantee=user, actor=actor, request_meta=request_meta)
            event_create(
                action=EventAction.MODEL_CREATED,
                actor=actor,
                request_meta=request_meta,
                app="authentik_core",
                context={"model": model_summary(token)},
            )
    except IntegrityError as exc:
        raise _creation_conflict(identifier=identifier, managed=managed) from exc
    return token


def _creation_conflict(*, identifier: str, managed: str | None) -> FieldConflict:
    """Name the field that clashed, without quoting any key. Runs after the rollback."""
    if Token.objects.filter(identifier=identifier).exists():
        return FieldConflict("identifier", "A token with this identifier already exists.")
    if managed is not None and Token.objects.filter(managed=managed).exists():
        return FieldConflict("managed", "A token with this managed value already exists.")
    return KeyInUse()


def token_update(
    *, token_pk: uuid.UUID, changes: Mapping[str, Any], actor: User, request_meta: RequestMeta, authorize: bool = False
) -> Token:
    """Apply ``changes`` to the token ``token_pk`` and audit it, atomically.

    Locks the row (``SELECT ... FOR UPDATE``), compares each requested value with the stored one and
    saves only the fields that differ (``update_fields``): a field absent from ``changes`` is never
    written, so concurrent updates of different fields cannot undo each other. Writes exactly one
    ``model_updated`` event naming the changed fields (possibly none) in the same transaction.

    ``changes`` holds keys of ``UPDATABLE_FIELDS`` and, optionally, ``user``, which must be the current
    owner. Raises ``ObjectNotFound`` when the token is gone, and ``FieldConflict`` on ``user`` for
    another owner, on ``intent`` for any change but one between ``api`` and ``app_password``, and on
    ``identifier`` or ``managed`` for a value another token holds. On any error nothing is written.

    With ``authorize`` (the API), the owner-or-``change_token`` rule is decided on the locked row, in
    this transaction, and ``PermissionDenied`` raised when it fails. Callers that authorize by other
    means (the admin's model permissions) leave it off.
    """
    unexpected = set(changes) - {*UPDATABLE_FIELDS, "user"}
    if unexpected:
        raise TypeError(f"token_update cannot change {sorted(unexpected)}")
    try:
        with transaction.atomic():
            token = Token.objects.select_for_update().filter(pk=token_pk).first()
            if token is None:
                raise ObjectNotFound
            if authorize:
                _authorize(actor, "change_token", token, owner_allowed=True)
            if "user" in changes and getattr(changes["user"], "pk", changes["user"]) != token.user_id:
                raise FieldConflict("user", OWNER_FIXED)
            intent = changes.get("intent", token.intent)
            # A verification or recovery token must not become an API credential, nor the reverse.
            if intent != token.intent and not {intent, token.intent} <= API_INTENTS:
                raise FieldConflict("intent", INTENT_FIXED)
            changed = [name for name in UPDATABLE_FIELDS if name in changes and getattr(token, name) != changes[name]]
            for name in changed:
                setattr(token, name, changes[name])
            if changed:
                token.save(update_fields=changed)
            event_create(
                action=EventAction.MODEL_UPDATED,
                actor=actor,
                request_meta=request_meta,
                app="authentik_core",
                context={"model": model_summary(token), "changed_fields": changed},
            )
    except IntegrityError as exc:
        raise _update_conflict(token_pk=token_pk, changes=changes) from exc
    return token


def _update_conflict(*, token_pk: uuid.UUID, changes: Mapping[str, Any]) -> FieldConflict:
    """Name the unique field an update clashed on. Runs after the rollback."""
    others = Token.objects.exclude(pk=token_pk)
    if "identifier" in changes and others.filter(identifier=changes["identifier"]).exists():
        return FieldConflict("identifier", "A token with this identifier already exists.")
    if changes.get("managed") is not None and others.filter(managed=changes["managed"]).exists():
        return FieldConflict("managed", "A token with this managed value already exists.")
    # The clashing row was removed in the meantime: a retry will succeed.
    return FieldConflict("non_field_errors", "The token changed concurrently; retry.")


def delete_object_permissions(token_pks: Collection[uuid.UUID]) -> None:
    """Remove every guardian object permission (user and group) on the tokens ``token_pks``.

    guardian's generic tables hold no foreign key to the token, so nothing cascades: without this a
    permission would outlive its token. Call it inside the transaction that deletes the tokens.
    """
    object_pks = [str(pk) for pk in token_pks]
    token_type = {"content_type__app_label": "authentik_core", "content_type__model": "token"}
    UserObjectPermission.objects.filter(object_pk__in=object_pks, **token_type).delete()
    GroupObjectPermission.objects.filter(object_pk__in=object_pks, **token_type).delete()


def token_delete(
    *, token_pk: uuid.UUID, actor: User | None, request_meta: RequestMeta, authorize: bool = False
) -> None:
    """Delete the token ``token_pk`` with its object permissions, and audit it, atomically.

    Locks the row first, so a concurrent update or ``set_key`` either finishes before or finds no
    token. Writes one ``model_deleted`` event (the token summary, never the key) in the same
    transaction (``actor`` ``None``: the system, e.g. a user deleted through the ORM). Raises
    ``ObjectNotFound`` when the token is already gone. With ``authorize`` (the API),
    the owner-or-``delete_token`` rule is decided on the locked row (``PermissionDenied``).
    """
    with transaction.atomic():
        token = Token.objects.select_for_update().filter(pk=token_pk).first()
        if token is None:
            raise ObjectNotFound
        if authorize:
            if actor is None:  # an anonymous caller is never authorized
                raise PermissionDenied
            _authorize(actor, "delete_token", token, owner_allowed=True)
        summary = model_summary(token)
        delete_object_permissions([token.pk])
        token.delete()
        event_create(
            action=EventAction.MODEL_DELETED,
            actor=actor,
            request_meta=request_meta,
            app="authentik_core",
            context={"model": summary},
        )


def token_view_key(*, token_identifier: str, actor: User, request_meta: RequestMeta) -> str:
    """Return the key of the token ``token_identifier`` after writing its ``secret_view`` event.

    Locks the row by its identifier and decides on that row: ``authentik_core.view_token_key`` held by
    ``actor`` (superuser, globally, or on this row's pk), and the token not expired. The event (actor,
    client IP, token summary under ``secret`` as authentik records it; never the key) is committed
    before the key is returned, so no key leaves without its audit record, and the key returned is the
    one of the row the decision was taken on. Raises ``PermissionDenied`` and ``ObjectNotFound`` as
    ``token_set_key`` does.
    """
    if fastpath.enabled():
        return fastpath.token_view_key(token_identifier=token_identifier, actor=actor, request_meta=request_meta)
    with transaction.atomic():
        token = _locked_token(identifier=token_identifier)
        if token is None:
            _refuse_unknown(actor, "view_token_key")
        assert token is not None
        _authorize(actor, "view_token_key", token)
        if token.expired:  # type: ignore[attr-defined]  # annotated by _locked_token
            raise ObjectNotFound
        event_create(
            action=EventAction.SECRET_VIEW,
            actor=actor,
            request_meta=request_meta,
            app="authentik_core",
            context={"secret": model_summary(token)},
        )
    return token.key


def tokens_delete_expired(*, now: datetime, batch_size: int, request_meta: RequestMeta) -> int:
    """Delete tokens of every intent but ``api`` that expired by ``now``; return how many.

    Works in batches of ``batch_size``, each in its own short transaction that locks its rows with
    ``SKIP LOCKED`` (PostgreSQL): a token that a request is updating right now is left for the next
    run instead of being waited for, and serving requests never wait long on this job. Each deleted
    token loses its object permissions and gets a ``model_deleted`` event in the same transaction.
    Expired ``api`` tokens are kept: their owners still see them and may extend them.
    """
    total = 0
    while True:
        with transaction.atomic():
            batch = list(
                Token.objects.select_for_update(skip_locked=True)
                .expired(now)
                .exclude(intent=TokenIntents.API)
                .only("token_uuid", "identifier")
                .order_by("expires", "pk")[:batch_size]
            )
            if not batch:
                break
            delete_object_permissions([token.pk for token in batch])
            Token.objects.filter(pk__in=[token.pk for token in batch]).delete()
            for token in batch:
                event_create(
                    action=EventAction.MODEL_DELETED,
                    actor=None,
                    request_meta=request_meta,
                    app="authentik_core",
                    context={"model": model_summary(token), "reason": "expired"},
                )
        total += len(batch)
        if len(batch) < batch_size:
            break
    return total
