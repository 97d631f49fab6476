"""Users and API tokens (app label ``authentik_core``)."""

import hashlib
import secrets
import string
import uuid
from typing import Any

from django.contrib.auth.models import AbstractUser
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

KEY_ALPHABET = string.ascii_letters + string.digits
DEFAULT_KEY_LENGTH = 60


def generate_key() -> str:
    """60 characters from ``[A-Za-z0-9]``, drawn with ``secrets``."""
    return "".join(secrets.choice(KEY_ALPHABET) for _ in range(DEFAULT_KEY_LENGTH))


def key_digest(key: str) -> str:
    """The lookup and uniqueness digest of a key.

    A plain SHA-256 is enough: keys are long random strings, and the digest must not change when the
    server's secret is rotated, or every token would stop authenticating.
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


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
        return hashlib.sha256(f"tokens-service:user:{self.uuid}".encode()).hexdigest()


class TokenIntents(models.TextChoices):
    VERIFICATION = "verification"
    API = "api"
    RECOVERY = "recovery"
    APP_PASSWORD = "app_password"  # noqa: S105


class Token(models.Model):
    """A secret key that stands for its user.

    ``key_digest`` is derived from ``key`` by ``save()`` and is unique in the database, so two tokens
    can never share a key, whatever races happen, and a constraint error names only the digest.
    """

    token_uuid = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    identifier = models.SlugField(
        max_length=255,
        unique=True,
        validators=[RegexValidator(r"^[-a-zA-Z0-9_]+$")],
    )
    key = models.TextField(default=generate_key)
    key_digest = models.CharField(max_length=64, unique=True, editable=False)
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
        max_length=64, null=True, blank=True, default=None, editable=False
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

    class Meta:
        verbose_name = "Token"
        verbose_name_plural = "Tokens"
        permissions = [
            ("view_token_key", "View token's key"),
            ("set_token_key", "Set a token's key"),
        ]
        indexes = [
            models.Index(fields=["expires"], name="token_expires_idx"),
            models.Index(fields=["previous_key_digest"], name="token_previous_key_idx"),
            models.Index(fields=["last_used"], name="token_last_used_idx"),
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
        super().save(*args, **kwargs)

    @property
    def is_expired(self) -> bool:
        return bool(self.expiring and self.expires is not None and self.expires <= timezone.now())
