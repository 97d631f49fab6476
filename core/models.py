"""Users and API tokens (app label ``authentik_core``)."""

import hashlib
import uuid
from datetime import datetime
from typing import Any

from django.contrib.auth.models import AbstractUser
from django.core.validators import RegexValidator
from django.db import IntegrityError, models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

from core import crypto
from core.crypto import BASE62, generate_key, key_digest

# Every character a generated key contains: its prefix ([a-z0-9] and "_"), then base62 (README, "Keys at rest").
KEY_ALPHABET = BASE62 + "_"
DEFAULT_KEY_LENGTH = 60  # with the default 4-character prefix "tks_"

__all__ = ["DEFAULT_KEY_LENGTH", "KEY_ALPHABET", "EncryptedKeyField", "Token", "User", "generate_key", "key_digest"]


class EncryptedKeyField(models.TextField):
    """A key: the plain key in Python, authenticated ciphertext (``core.crypto.encrypt_key``) in the database.

    Every value written through the ORM (``save``, ``create``, ``update``, ``bulk_update``, fixtures) is
    encrypted under the current encryption key with a fresh nonce, and every value read is decrypted, so
    ``Token(key=...)`` and ``token.key`` deal in plain keys. Filtering on the key matches nothing (the
    ciphertext of the filter value is never the stored one): tokens are found through ``key_digest``.
    """

    def from_db_value(self, value: str | None, expression: Any, connection: BaseDatabaseWrapper) -> str | None:
        return None if value is None else crypto.decrypt_key(value)

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        return None if value is None else crypto.encrypt_key(value)


def key_held_under_older_digest(
    key: str, *, exclude_pk: Any = None, exclude_identifier: str | None = None, using: str | None = None
) -> bool:
    """Whether another token holds ``key`` under an older pepper or the legacy digest.

    Only while more than one pepper is configured (a pepper rotation); otherwise ``False`` without a query.
    Race-free without a lock: nothing writes older digests, so rows only leave that set, and a row that
    leaves it by conversion gets the current digest, which the unique index compares.
    """
    if not crypto.rotating_peppers():
        return False
    others = Token.objects.using(using).filter(key_digest__in=crypto.older_key_digests(key))
    if exclude_pk is not None:
        others = others.exclude(pk=exclude_pk)
    if exclude_identifier is not None:
        others = others.exclude(identifier=exclude_identifier)
    return others.exists()


class UserTypes(models.TextChoices):
    INTERNAL = "internal"
    EXTERNAL = "external"
    SERVICE_ACCOUNT = "service_account"
    INTERNAL_SERVICE_ACCOUNT = "internal_service_account"


class User(AbstractUser):
    """Django's user plus the fields of authentik's user object."""

    uuid = models.UUIDField(default=uuid.uuid4, editable=False, unique=True)
    name = models.TextField(blank=True, help_text="User's display name.")
    attributes = models.JSONField(default=dict, blank=True)
    type = models.TextField(choices=UserTypes.choices, default=UserTypes.INTERNAL)
    path = models.TextField(default="users")
    password_change_date = models.DateTimeField(auto_now_add=True)
    last_updated = models.DateTimeField(auto_now=True)

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"

    def set_password(self, raw_password: str | None) -> None:
        super().set_password(raw_password)
        self.password_change_date = timezone.now()

    @property
    def uid(self) -> str:
        """A stable, non-reversible identifier of the user (as authentik's ``uid``)."""
        return user_uid(self.uuid)


def user_uid(user_uuid: uuid.UUID) -> str:
    """``User.uid`` from the user's uuid alone (the token list reads users as rows, not instances)."""
    return hashlib.sha256(f"tokens-service:user:{user_uuid}".encode()).hexdigest()


class TokenIntents(models.TextChoices):
    VERIFICATION = "verification"
    API = "api"
    RECOVERY = "recovery"
    APP_PASSWORD = "app_password"  # noqa: S105


class TokenQuerySet(models.QuerySet["Token"]):
    """The expiry rule, written once: a token is expired when it expires (``expiring``), has an
    ``expires`` date and that date is at or before ``now``. Services, selectors, retention and the fast
    path (which compiles ``expired_q`` into its SQL) all use it."""

    @staticmethod
    def expired_q(now: datetime) -> models.Q:
        return models.Q(expiring=True, expires__isnull=False, expires__lte=now)

    def expired(self, now: datetime | None = None) -> "TokenQuerySet":
        return self.filter(self.expired_q(now or timezone.now()))

    def unexpired(self, now: datetime | None = None) -> "TokenQuerySet":
        return self.exclude(self.expired_q(now or timezone.now()))


class Token(models.Model):
    """A secret key that stands for its user.

    ``key`` is stored encrypted (``EncryptedKeyField``). ``key_digest``, the peppered HMAC of the key, is
    derived from it by ``save()`` and is unique in the database, so two tokens can never share a key,
    whatever races happen, and a constraint error names only the digest. Check constraints refuse any
    row whose key is not ciphertext or whose digest is not peppered, whatever writes it.
    """

    token_uuid = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    identifier = models.SlugField(
        max_length=255,
        unique=True,
        validators=[RegexValidator(r"^[-a-zA-Z0-9_]+$")],
    )
    key = EncryptedKeyField(default=generate_key)
    key_digest = models.CharField(max_length=80, unique=True, editable=False)
    intent = models.TextField(choices=TokenIntents.choices, default=TokenIntents.API)
    user = models.ForeignKey("authentik_core.User", on_delete=models.CASCADE, related_name="tokens")
    description = models.TextField(default="", blank=True)
    expires = models.DateTimeField(null=True, blank=True, default=None)
    expiring = models.BooleanField(default=True)
    managed = models.TextField(
        null=True,
        blank=True,
        default=None,
        unique=True,
        verbose_name="Managed by authentik",
        help_text=(
            "Objects that are managed by authentik. These objects are created and updated automatically. "
            "This flag only indicates that an object can be overwritten by migrations. You can still modify "
            "the objects via the API, but expect changes to be overwritten in a later update."
        ),
    )
    # Rotation with a grace period (core.rotation): the digest of the key replaced by the last rotation
    # and when it stopped (or stops) authenticating. Kept after that moment, so that a late use of the old
    # key is recognised (403 and a suspicious_request event). set_key clears both.
    previous_key_digest = models.CharField(  # noqa: DJ001 - NULL: no previous key, never a digest of ""
        max_length=80, null=True, blank=True, default=None, editable=False
    )
    previous_key_expires = models.DateTimeField(null=True, blank=True, default=None, editable=False)
    # Usage (core.usage): written at most once a minute per token, by the bearer authentication.
    last_used = models.DateTimeField(null=True, blank=True, default=None, editable=False)
    last_used_ip = models.GenericIPAddressField(null=True, blank=True, default=None, editable=False)
    # Normalized CIDR strings; null (or absent) means any address may use the token.
    allowed_ips = models.JSONField(null=True, blank=True, default=None)
    # Expiry warnings (manage.py warn_expiring): the expiry date warned about and the tightest threshold
    # (in days) already reported for it. A changed expiry date makes both stale.
    expiry_warned_for = models.DateTimeField(null=True, blank=True, default=None, editable=False)
    expiry_warned_days = models.PositiveSmallIntegerField(null=True, blank=True, default=None, editable=False)

    objects = TokenQuerySet.as_manager()

    class Meta:
        verbose_name = "Token"
        verbose_name_plural = "Tokens"
        permissions = [
            ("view_token_key", "View token's key"),
            ("set_token_key", "Set a token's key"),
            # Global only: who may grant and revoke per-token permissions in the admin (besides superusers).
            ("manage_token_permissions", "Manage object permissions on tokens"),
        ]
        # expires alone: token_expires_pk_idx (expires, token_uuid; migration 0007) serves every query on it.
        indexes = [
            models.Index(fields=["previous_key_digest"], name="token_previous_key_idx"),
            # Ends in the pk, as every ordering does (core.filters.StableOrderingFilter): a page ordered by
            # -last_used is an index range even among the never-used tokens, which sort first (migration 0011).
            models.Index(fields=["last_used", "token_uuid"], name="token_last_used_pk_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(key__startswith=crypto.CIPHERTEXT_PREFIX), name="token_key_encrypted"
            ),
            models.CheckConstraint(
                condition=models.Q(key_digest__startswith=crypto.DIGEST_PREFIX), name="token_key_digest_peppered"
            ),
        ]

    # Set (on the instance only) when the bearer authentication matched the previous key of a rotation.
    via_previous_key = False

    def __str__(self) -> str:
        return self.identifier

    def save(self, *args: Any, **kwargs: Any) -> None:
        # The digest is part of the key, not business logic: keep it right however the row is saved
        # (admin, fixtures, shell), including field-level saves that name only "key".
        self.key_digest = key_digest(self.key)
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and "key" in update_fields:
            kwargs["update_fields"] = {*update_fields, "key_digest"}
        if (update_fields is None or "key" in update_fields) and key_held_under_older_digest(
            self.key, exclude_pk=None if self._state.adding else self.pk, using=kwargs.get("using")
        ):
            # The unique index sees current-pepper digests only; during a pepper rotation a key stored
            # under an older one is found here instead. Same error class as the index's.
            raise IntegrityError("duplicate key value violates unique constraint on key_digest")
        super().save(*args, **kwargs)

    @property
    def is_expired(self) -> bool:
        """``TokenQuerySet.expired_q`` for an instance in memory."""
        return bool(self.expiring and self.expires is not None and self.expires <= timezone.now())
