"""Writes to tokens. Each service owns its transaction and writes its audit event inside it."""

import json
import uuid
from collections.abc import Collection, Iterable, Mapping
from contextlib import nullcontext
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone
from django.utils.crypto import salted_hmac
from guardian.models import GroupObjectPermission, UserObjectPermission
from guardian.shortcuts import assign_perm

from core.models import Token, TokenIntents, User, key_digest
from events.models import Event, EventAction
from events.services import actor_snapshot, event_create, model_summary
from events.utils import RequestMeta
from tokens_service.errors import FieldConflict, ObjectNotFound

KEY_IN_USE = "This key cannot be used; choose another."
OWNER_FIXED = "A token's owner cannot be changed."
INTENT_FIXED = "The intent can only change between api and app_password."
# The intents a caller may hand out through the API; the others are issued by the system itself.
API_INTENTS = frozenset({TokenIntents.API, TokenIntents.APP_PASSWORD})
# What token_update may change. Never "key" (set_key owns it) and never "user" (owners are fixed).
UPDATABLE_FIELDS = ("identifier", "intent", "description", "expires", "expiring", "managed", "allowed_ips")


def key_fingerprint(key: str) -> str:
    """An HMAC of ``key`` under the server's secret: lets an auditor match a key they hold, reveals nothing."""
    return salted_hmac("tokens-service.key-fingerprint", key, algorithm="sha256").hexdigest()


# Re-keying is one UPDATE that takes the token's row lock and checks existence and expiry in its WHERE
# clause: a concurrent set_key on the same token waits for the lock, then re-checks the WHERE clause
# against the committed row. No SELECT ... FOR UPDATE round trip is needed before it.
_UPDATE_KEY_SQL = f"""
UPDATE {Token._meta.db_table} SET "key" = %s, "key_digest" = %s,
    "previous_key_digest" = NULL, "previous_key_expires" = NULL
WHERE "identifier" = %s AND NOT ("expiring" AND "expires" IS NOT NULL AND "expires" <= %s)
RETURNING "token_uuid"
"""  # noqa: S608 - only model metadata is formatted in; values are parameters

# On PostgreSQL the UPDATE and the audit event are one statement: the INSERT writes the event from the
# UPDATE's RETURNING, so there is an event exactly when a row changed. A statement is atomic: if either
# part fails (the unique digest, the event insert), nothing of it is kept. In autocommit mode it is its
# own transaction, so no BEGIN/COMMIT round trips are needed and the row lock is held only while the
# statement runs and commits. The event's timestamps come from clock_timestamp(), read after the lock
# is granted, so the events of one token are ordered as their changes were committed. The values
# mirror events.services.event_create, which cannot be used here because the insert has to read the
# UPDATE's result inside the same statement.
_SET_KEY_SQL = f"""
WITH updated AS ({_UPDATE_KEY_SQL})
INSERT INTO {Event._meta.db_table}
    ("event_uuid", "user", "action", "app", "context", "client_ip", "created", "expires", "brand")
SELECT %s::uuid, %s::jsonb, %s, %s,
    jsonb_set(%s::jsonb, '{{model,pk}}', to_jsonb(replace(updated."token_uuid"::text, '-', ''))),
    %s::inet, clock_timestamp(), clock_timestamp() + %s::interval, '{{}}'::jsonb
FROM updated"""  # noqa: S608 - only model metadata is formatted in; values are parameters


def token_set_key(*, token_identifier: str, key: str, actor: User, request_meta: RequestMeta) -> None:
    """Replace the key of the token ``token_identifier`` and audit it, atomically.

    Holds the token's row lock while writing, so concurrent calls on one token serialize and the last
    to commit wins; writes only ``key`` and its digest (clearing the previous key a rotation may have
    left valid: set_key is the way to cut a grace period short), and exactly one ``model_updated`` event; both
    commit together or not at all.

    Raises ``ObjectNotFound`` for an unknown or expired token and ``FieldConflict`` on ``key`` when
    another token holds the key. ``key`` must already be validated (``TokenSetKeySerializer``).
    """
    db = connections[DEFAULT_DB_ALIAS]  # this thread's connection, looked up once (not through the proxy)
    update = [key, key_digest(key), token_identifier, db.ops.adapt_datetimefield_value(timezone.now())]
    try:
        if db.vendor == "postgresql":
            written = _set_key_and_audit_in_one_statement(db, update, token_identifier, key, actor, request_meta)
        else:
            written = _set_key_then_audit(db, update, token_identifier, key, actor, request_meta)
    except IntegrityError as exc:
        # The unique digest is the only constraint these writes can break (the event's values are valid
        # by construction). Relying on it, rather than a prior SELECT, costs no query and also catches
        # a concurrent commit of the same key. Nothing was kept: the failed statement or block rolled back.
        raise FieldConflict("key", KEY_IN_USE) from exc
    if not written:
        raise ObjectNotFound


def _set_key_event_context(*, token_identifier: str, token_pk: str | None, key: str) -> dict[str, Any]:
    """The context of set_key's ``model_updated`` event, the same on both write paths: the token summary,
    the changed field and the key's fingerprint (never the key)."""
    return {
        "model": {
            "app": Token._meta.app_label,
            "model_name": Token._meta.model_name,
            "pk": token_pk,
            "name": token_identifier,
        },
        "changed_fields": ["key"],
        "key_fingerprint": key_fingerprint(key),
    }


def _set_key_and_audit_in_one_statement(
    db: BaseDatabaseWrapper, update: list[Any], token_identifier: str, key: str, actor: User, request_meta: RequestMeta
) -> bool:
    # "pk" is filled in by the statement, from the row it updated.
    context = {
        **_set_key_event_context(token_identifier=token_identifier, token_pk=None, key=key),
        "http_request": request_meta.as_context(),
    }
    event: list[Any] = [
        uuid.uuid4(),
        json.dumps(actor_snapshot(actor)),
        EventAction.MODEL_UPDATED.value,
        "authentik_core",
        json.dumps(context),
        request_meta.client_ip,
        settings.EVENT_RETENTION,
    ]
    # Inside a caller's transaction (the admin, tests), a savepoint lets a key clash undo just this
    # statement; in autocommit mode the statement is its own transaction already.
    with transaction.atomic() if db.in_atomic_block else nullcontext(), db.cursor() as cursor:
        cursor.execute(_SET_KEY_SQL, [*update, *event])
        return cursor.rowcount == 1


def _set_key_then_audit(
    db: BaseDatabaseWrapper, update: list[Any], token_identifier: str, key: str, actor: User, request_meta: RequestMeta
) -> bool:
    """Other databases (SQLite): the same UPDATE, then the event through the ORM, in one transaction."""
    with transaction.atomic():
        with db.cursor() as cursor:
            cursor.execute(_UPDATE_KEY_SQL, update)
            row = cursor.fetchone()
        if row is None:
            return False
        token_pk = Token._meta.pk.to_python(row[0])  # type: ignore[union-attr]  # SQLite returns uuids as text
        event_create(
            action=EventAction.MODEL_UPDATED,
            actor=actor,
            request_meta=request_meta,
            app="authentik_core",
            context=_set_key_event_context(token_identifier=token_identifier, token_pk=token_pk.hex, key=key),
        )
    return True


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
    try:
        with transaction.atomic():
            token.save(force_insert=True)
            for codename in owner_permissions:
                assign_perm(f"authentik_core.{codename}", user, token)
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
    return FieldConflict("key", KEY_IN_USE)


def token_update(*, token_pk: uuid.UUID, changes: Mapping[str, Any], actor: User, request_meta: RequestMeta) -> Token:
    """Apply ``changes`` to the token ``token_pk`` and audit it, atomically.

    Locks the row (``SELECT ... FOR UPDATE``), compares each requested value with the stored one and
    saves only the fields that differ (``update_fields``): a field absent from ``changes`` is never
    written, so concurrent updates of different fields cannot undo each other. Writes exactly one
    ``model_updated`` event naming the changed fields (possibly none) in the same transaction.

    ``changes`` holds keys of ``UPDATABLE_FIELDS`` and, optionally, ``user``, which must be the current
    owner. Raises ``ObjectNotFound`` when the token is gone, and ``FieldConflict`` on ``user`` for
    another owner, on ``intent`` for any change but one between ``api`` and ``app_password``, and on
    ``identifier`` or ``managed`` for a value another token holds. On any error nothing is written.
    """
    unexpected = set(changes) - {*UPDATABLE_FIELDS, "user"}
    if unexpected:
        raise TypeError(f"token_update cannot change {sorted(unexpected)}")
    try:
        with transaction.atomic():
            token = Token.objects.select_for_update().filter(pk=token_pk).first()
            if token is None:
                raise ObjectNotFound
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


def token_delete(*, token_pk: uuid.UUID, actor: User, request_meta: RequestMeta) -> None:
    """Delete the token ``token_pk`` with its object permissions, and audit it, atomically.

    Locks the row first, so a concurrent update or ``set_key`` either finishes before or finds no
    token. Writes one ``model_deleted`` event (the token summary, never the key) in the same
    transaction. Raises ``ObjectNotFound`` when the token is already gone.
    """
    with transaction.atomic():
        token = Token.objects.select_for_update().filter(pk=token_pk).first()
        if token is None:
            raise ObjectNotFound
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

    The event (actor, client IP, token summary under ``secret`` as authentik records it; never the key)
    is committed before the key is returned, so no key leaves without its audit record. Raises
    ``ObjectNotFound`` for an unknown or expired token. The caller checks ``view_token_key`` first.
    """
    with transaction.atomic():
        token = Token.objects.filter(identifier=token_identifier).first()
        if token is None or token.is_expired:
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
                .filter(expiring=True, expires__lte=now)
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
