"""Rotation: the server replaces a token's key, optionally keeping the previous key valid for a grace period."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from core.models import Token, User, generate_key
from core.selectors import user_has_global_perm, user_has_token_perm_on_pk
from core.services import key_fingerprint
from events.models import EventAction
from events.services import event_create, model_summary
from tokens_service.errors import ObjectNotFound
from tokens_service.request_meta import RequestMeta

# The longest grace period a rotation may give the previous key: 7 days, as long as a weekly deployment
# cycle needs to roll the new key out, and short enough that a forgotten old key dies on its own.
MAX_GRACE_SECONDS = 7 * 24 * 3600


class RotationForbidden(Exception):
    """The caller may not rotate this token (or the identifier names none, which it must not learn)."""


@dataclass(frozen=True, slots=True)
class Rotation:
    key: str  # the new key, to be shown once
    previous_key_expires: datetime  # when the previous key stops (or stopped, for no grace) authenticating


def token_rotate(
    *,
    token_identifier: str,
    actor: User,
    request_meta: RequestMeta,
    grace_seconds: int = 0,
    authenticated_token: Token | None = None,
) -> Rotation:
    """Give the token ``token_identifier`` a new random key and audit it, atomically.

    Locks the token's row (``SELECT ... FOR UPDATE``) before deciding anything, and decides on that row:
    ``actor`` must hold ``authentik_core.set_token_key`` (globally or on the token), or have
    authenticated with this very token's current key (``authenticated_token``; a previous key within its
    grace period does not count, so a leaked old key cannot take the token over). Then, in the same
    transaction, writes the new key and the digest of the replaced key with the end of its grace period
    (``now + grace_seconds``; a second rotation replaces both, so at most one previous key is ever
    valid), and exactly one ``secret_rotate`` event (the fingerprint of the new key, never a key).

    Raises ``RotationForbidden`` when the caller is not allowed, whether or not the token exists, and
    ``ObjectNotFound`` to a permitted caller for an unknown or expired token. ``grace_seconds`` must be
    within 0..``MAX_GRACE_SECONDS``.
    """
    if not 0 <= grace_seconds <= MAX_GRACE_SECONDS:
        raise ValueError("grace_seconds out of range")
    with transaction.atomic():
        token = Token.objects.select_for_update().filter(identifier=token_identifier).first()
        is_self = (
            token is not None
            and authenticated_token is not None
            and authenticated_token.pk == token.pk
            and not authenticated_token.via_previous_key
            # Still its current key on the locked row: of two concurrent self-rotations, the second fails.
            and authenticated_token.key_digest == token.key_digest
        )
        # Decided on the locked row's pk; with no such row, only the global permission counts (403 for
        # everyone else, so that rotate is no existence oracle).
        permitted = is_self or (
            user_has_token_perm_on_pk(actor, "set_token_key", token.pk)
            if token is not None
            else user_has_global_perm(actor, "authentik_core", "set_token_key")
        )
        if not permitted:
            raise RotationForbidden
        if token is None or token.is_expired:
            raise ObjectNotFound
        now = timezone.now()
        previous_key_expires = now + timedelta(seconds=grace_seconds)
        key = generate_key()
        token.previous_key_digest = token.key_digest
        token.previous_key_expires = previous_key_expires
        token.key = key
        token.save(update_fields=["key", "previous_key_digest", "previous_key_expires"])
        event_create(
            action=EventAction.SECRET_ROTATE,
            actor=actor,
            request_meta=request_meta,
            app="authentik_core",
            context={
                "model": model_summary(token),
                "key_fingerprint": key_fingerprint(key),
                "grace_seconds": grace_seconds,
                "previous_key_expires": previous_key_expires.isoformat(),
                "self_rotation": is_self,
            },
        )
    return Rotation(key=key, previous_key_expires=previous_key_expires)
