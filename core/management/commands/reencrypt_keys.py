"""Re-encrypt every token key under the current encryption key and re-digest it under the current pepper."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import Count, Max, Q, QuerySet
from django.utils import timezone

from core import crypto
from core.models import Token

MAX_PASSES = 5


def _current_pepper_prefix() -> str:
    """How every digest under the current pepper starts."""
    return f"{crypto.DIGEST_PREFIX}{crypto.current_pepper_id()}$"


def tokens_needing_rotation() -> QuerySet[Token]:
    """Tokens whose stored key is not under the current encryption key or whose digest is not under the current
    pepper (legacy rows included). ``startswith`` compares the stored text, never a decrypted key."""
    current_key = f"{crypto.CIPHERTEXT_PREFIX}{crypto.current_encryption_key_id()}$"
    return Token.objects.filter(~Q(key__startswith=current_key) | ~Q(key_digest__startswith=_current_pepper_prefix()))


def previous_keys_under_older_peppers() -> QuerySet[Token]:
    """Tokens whose previous key (from a rotation) still authenticates and is digested under an older pepper.

    Only its digest is stored, so it cannot be re-digested: the older pepper must stay configured until the
    grace period ends, or the previous key stops working early.
    """
    return Token.objects.filter(previous_key_digest__isnull=False, previous_key_expires__gt=timezone.now()).exclude(
        previous_key_digest__startswith=_current_pepper_prefix()
    )


def tokens_reencrypt(*, batch_size: int) -> tuple[int, int]:
    """Bring every token to the current encryption key and pepper; return (converted, still pending).

    Batches of ``batch_size`` tokens, each in its own short transaction that locks its rows with ``SKIP LOCKED``
    (PostgreSQL): a token that a request is re-keying right now is left for the next pass instead of waited
    for, and the request never waits longer than one batch. The key is read (decrypted) and written back
    (encrypted under the current key) with its digest inside that lock, so no concurrent set_key is undone.
    Runs up to ``MAX_PASSES`` passes while rows remain and progress is made.
    """
    converted = 0
    for _ in range(MAX_PASSES):
        progress, last_pk = 0, None
        while True:
            with transaction.atomic():
                batch_query = tokens_needing_rotation().select_for_update(skip_locked=True).order_by("pk")
                if last_pk is not None:
                    batch_query = batch_query.filter(pk__gt=last_pk)
                batch = list(batch_query.only("pk", "key", "key_digest")[:batch_size])
                for token in batch:
                    token.key_digest = crypto.key_digest(token.key)
                if batch:
                    Token.objects.bulk_update(batch, ["key", "key_digest"])
            progress += len(batch)
            if len(batch) < batch_size:
                break
            last_pk = batch[-1].pk
        converted += progress
        pending = tokens_needing_rotation().count()
        if not pending or not progress:
            return converted, pending
    return converted, tokens_needing_rotation().count()


class Command(BaseCommand):
    help = (
        "Re-encrypt every token key under the first TOKEN_KEYS_ENCRYPTION_KEYS entry and re-digest it under the "
        "first TOKEN_KEYS_PEPPERS entry, in short batches; safe while the service serves. Prints counts only."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--batch-size", type=int, default=500, help="Tokens per transaction (default 500).")

    def handle(self, *args: Any, **options: Any) -> None:
        batch_size = options["batch_size"]
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        try:
            converted, pending = tokens_reencrypt(batch_size=batch_size)
        except crypto.KeyDecryptionError as exc:
            # The message names a key id at most, never a key or a ciphertext.
            raise CommandError(f"{exc} Nothing further was converted; earlier batches are committed.") from None
        self.stdout.write(
            f"Converted {converted} token(s) to encryption key {crypto.current_encryption_key_id()!r} and pepper "
            f"{crypto.current_pepper_id()!r}."
        )
        if pending:
            raise CommandError(f"{pending} token(s) were busy and are not converted yet; run the command again.")
        in_grace = previous_keys_under_older_peppers().aggregate(count=Count("pk"), until=Max("previous_key_expires"))
        if in_grace["count"]:
            raise CommandError(
                f"{in_grace['count']} token(s) have a previous key in its grace period, digested under an older "
                f"pepper, until {in_grace['until'].isoformat()}; keep the older pepper(s) configured until then."
            )
