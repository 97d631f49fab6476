"""Signal handlers: the two places where only a signal sees every case (see README, "Deleting users" and
"Admin login"). Each writes its audit events through ``events.services`` or the token services."""

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from django.db.models.signals import pre_delete
from django.dispatch import receiver
from guardian.models import UserObjectPermission

from core.models import Token, User
from core.object_permissions import token_perm_revoke
from core.services import token_delete
from tokens_service.errors import ObjectNotFound
from tokens_service.request_meta import SYSTEM_REQUEST, RequestMeta

# Who is deleting users right now (the admin sets it); ORM deletes elsewhere are recorded as the system.
_deleting_actor: ContextVar[tuple[User | None, RequestMeta] | None] = ContextVar("deleting_actor", default=None)


@contextlib.contextmanager
def deleting_as(actor: User | None, request_meta: RequestMeta) -> Iterator[None]:
    """Record ``actor`` and ``request_meta`` in the events of user deletions made inside this block."""
    reset = _deleting_actor.set((actor, request_meta))
    try:
        yield
    finally:
        _deleting_actor.reset(reset)


@receiver(pre_delete, sender=User, dispatch_uid="core.delete_user_tokens")
def delete_user_tokens(sender: type[User], instance: User, using: str, **kwargs: Any) -> None:
    """Before a user row goes, delete its tokens through ``token_delete`` and revoke its token permissions.

    A ``pre_delete`` receiver is the only hook that sees every deletion: ``user.delete()``, queryset
    deletes (``User.objects.filter(...).delete()``, the admin's bulk action) and cascades. Django sends
    it inside the deletion's own transaction, so the tokens, their ``model_deleted`` events, the
    revocations and the user row commit together or not at all. Without it the database would cascade
    the tokens away with no event, and guardian's rows on those tokens (no foreign key) would remain.
    """
    actor, request_meta = _deleting_actor.get() or (None, SYSTEM_REQUEST)
    # Lock the user row first: a token created for this user concurrently waits (its foreign key check
    # needs the row) and then fails, instead of slipping in after the token list was read.
    User.objects.using(using).select_for_update().filter(pk=instance.pk).exists()
    for token_pk in Token.objects.using(using).filter(user_id=instance.pk).values_list("pk", flat=True):
        try:
            # actor None (an ORM delete outside the admin) is recorded as the system, as event_create allows.
            token_delete(token_pk=token_pk, actor=actor, request_meta=request_meta)
        except ObjectNotFound:
            continue  # deleted concurrently: the goal is reached
    # The user's permissions on other users' tokens: revoked one by one, so each revocation is audited as
    # any other. (The database would cascade these rows away too, but silently.)
    held = UserObjectPermission.objects.using(using).filter(
        user_id=instance.pk, content_type__app_label=Token._meta.app_label, content_type__model=Token._meta.model_name
    )
    for object_pk, codename in held.values_list("object_pk", "permission__codename"):
        token = Token.objects.using(using).filter(pk=object_pk).first()
        if token is None:
            continue
        try:
            token_perm_revoke(token=token, codename=codename, grantee=instance, actor=actor, request_meta=request_meta)
        except ObjectNotFound:
            continue
