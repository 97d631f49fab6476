"""Writes to tokens. Each service owns its transaction and writes its audit event inside it."""

from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils.crypto import salted_hmac

from core.models import Token, TokenIntents, User
from events.models import EventAction
from events.services import event_create, model_summary
from events.utils import RequestMeta
from tokens_service.errors import FieldConflict, ObjectNotFound

KEY_IN_USE = "This key cannot be used; choose another."


def key_fingerprint(key: str) -> str:
    """An HMAC of ``key`` under the server's secret: lets an auditor match a key they hold, reveals nothing."""
    return salted_hmac("tokens-service.key-fingerprint", key, algorithm="sha256").hexdigest()


def token_set_key(*, token_identifier: str, key: str, actor: User, request_meta: RequestMeta) -> Token:
    """Replace the key of the token ``token_identifier`` and audit it, atomically.

    Locks the token row (``SELECT ... FOR UPDATE``), so concurrent calls on one token serialize and
    the last to commit wins; saves only ``key`` (and its digest); writes one ``model_updated`` event.
    Both commit together or not at all.

    Raises ``ObjectNotFound`` for an unknown or expired token and ``FieldConflict`` on ``key`` when
    another token holds the key. ``key`` must already be validated (``TokenSetKeySerializer``).
    """
    with transaction.atomic():
        token = Token.objects.select_for_update().filter(identifier=token_identifier).first()
        if token is None or token.is_expired:
            raise ObjectNotFound
        token.key = key
        try:
            token.save(update_fields=["key"])
        except IntegrityError as exc:
            # The unique digest is the only constraint this update can break. Relying on it (rather
            # than a prior SELECT) costs no query and also catches a concurrent commit of the same key.
            # Raising leaves the atomic block, which rolls the transaction back.
            raise FieldConflict("key", KEY_IN_USE) from exc
        event_create(
            action=EventAction.MODEL_UPDATED,
            actor=actor,
            request_meta=request_meta,
            app="authentik_core",
            context={
                "model": model_summary(token),
                "changed_fields": ["key"],
                "key_fingerprint": key_fingerprint(key),
            },
        )
    return token


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
) -> Token:
    """Create a token (a fresh random key unless ``key`` is given) and its ``model_created`` event.

    Raises ``FieldConflict`` when the identifier, the key or ``managed`` is taken.
    """
    token = Token(
        identifier=identifier,
        user=user,
        intent=intent,
        description=description,
        expires=expires,
        expiring=expiring,
        managed=managed,
    )
    if key is not None:
        token.key = key
    try:
        with transaction.atomic():
            token.save(force_insert=True)
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
