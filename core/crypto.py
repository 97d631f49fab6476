"""Keys at rest: the scannable format of generated keys, their encryption and their peppered lookup digest.

Stored forms (README, "Keys at rest"):

- the key column holds ``gcm$<key id>$<base64url(nonce | AES-256-GCM ciphertext | tag)>`` under the
  encryption key ``<key id>`` of ``TOKEN_KEYS_ENCRYPTION_KEYS``;
- the digest column holds ``hmac$<pepper id>$<hex HMAC-SHA256(pepper, key)>`` under the pepper
  ``<pepper id>`` of ``TOKEN_KEYS_PEPPERS``.

Neither the encryption keys nor the peppers are in the database, so a dump alone yields no key and no way
to test a guessed key. Nothing here logs, and no error message quotes a key, a ciphertext or a digest.
"""

import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
import secrets
import string
import zlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings

CIPHERTEXT_PREFIX = "gcm$"
DIGEST_PREFIX = "hmac$"
# Binds every ciphertext to its purpose: a value encrypted for anything else under the same key never decrypts.
_ASSOCIATED_DATA = b"tokens-service:token-key:v1"
_NONCE_BYTES = 12

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
KEY_BODY_LENGTH = 50  # about 298 random bits
KEY_CHECKSUM_LENGTH = 6  # 62**6 > 2**32: any CRC32 fits


class KeyDecryptionError(Exception):
    """A stored key cannot be decrypted: its encryption key is not configured, or the value was altered."""


# --- generated keys: prefix + random base62 body + base62 CRC32 of the body -------------------------------


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(BASE62[digit])
    return "".join(reversed(digits))


def key_checksum(body: str) -> str:
    """The 6-character base62 CRC32 of a generated key's random body."""
    return _base62(zlib.crc32(body.encode("ascii")), KEY_CHECKSUM_LENGTH)


def generate_key() -> str:
    """``TOKEN_KEY_PREFIX`` + 50 random base62 characters (``secrets``) + their 6-character checksum."""
    body = "".join(secrets.choice(BASE62) for _ in range(KEY_BODY_LENGTH))
    return f"{settings.TOKEN_KEY_PREFIX}{body}{key_checksum(body)}"


def generated_key_pattern(prefix: str | None = None) -> str:
    """The regular expression a secret scanner uses for generated keys (checksum not verified by it)."""
    prefix = settings.TOKEN_KEY_PREFIX if prefix is None else prefix
    return rf"\b{re.escape(prefix)}[0-9A-Za-z]{{{KEY_BODY_LENGTH + KEY_CHECKSUM_LENGTH}}}\b"


def is_generated_key(candidate: str, prefix: str | None = None) -> bool:
    """Whether ``candidate`` has the generated format *and* a correct checksum (no false positives)."""
    prefix = settings.TOKEN_KEY_PREFIX if prefix is None else prefix
    if not re.fullmatch(generated_key_pattern(prefix), candidate):
        return False
    body, checksum = candidate[len(prefix) : -KEY_CHECKSUM_LENGTH], candidate[-KEY_CHECKSUM_LENGTH:]
    return hmac.compare_digest(key_checksum(body), checksum)


# --- encryption at rest ------------------------------------------------------------------------------------


@functools.cache
def _ciphers(keys: tuple[tuple[str, bytes], ...]) -> dict[str, AESGCM]:
    return {key_id: AESGCM(secret) for key_id, secret in keys}


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def encrypt_key(key: str) -> str:
    """The stored form of ``key``: AES-256-GCM under the current encryption key, with a fresh random nonce."""
    keys = settings.TOKEN_KEYS_ENCRYPTION_KEYS
    key_id = keys[0][0]
    nonce = os.urandom(_NONCE_BYTES)
    sealed = _ciphers(keys)[key_id].encrypt(nonce, key.encode("utf-8"), _ASSOCIATED_DATA)
    return f"{CIPHERTEXT_PREFIX}{key_id}${_b64encode(nonce + sealed)}"


def encryption_key_id(stored: str) -> str | None:
    """The id of the encryption key that ``stored`` was encrypted under; ``None`` for a legacy plain key."""
    if not stored.startswith(CIPHERTEXT_PREFIX):
        return None
    return stored[len(CIPHERTEXT_PREFIX) :].partition("$")[0]


def decrypt_key(stored: str) -> str:
    """The key that ``stored`` holds. A legacy plain key (a row the migration has not reached yet) is returned
    as it is; raises ``KeyDecryptionError`` (quoting nothing of the value) when decryption is impossible."""
    key_id = encryption_key_id(stored)
    if key_id is None:
        return stored
    keys = settings.TOKEN_KEYS_ENCRYPTION_KEYS
    cipher = _ciphers(keys).get(key_id)
    if cipher is None:
        raise KeyDecryptionError(
            f"A token key is encrypted under the key id {key_id!r}, which TOKEN_KEYS_ENCRYPTION_KEYS lacks."
        )
    encoded = stored[len(CIPHERTEXT_PREFIX) + len(key_id) + 1 :]
    try:
        data = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        return cipher.decrypt(data[:_NONCE_BYTES], data[_NONCE_BYTES:], _ASSOCIATED_DATA).decode("utf-8")
    except (binascii.Error, ValueError, InvalidTag):
        raise KeyDecryptionError(f"A token key under the key id {key_id!r} fails authentication.") from None


# --- peppered lookup digest --------------------------------------------------------------------------------


@functools.cache
def _keyed_hmac(pepper: bytes) -> "hmac.HMAC":
    """An HMAC-SHA256 keyed with ``pepper`` and fed nothing yet: copying it skips re-deriving the pads."""
    return hmac.new(pepper, digestmod=hashlib.sha256)


def _peppered(pepper_id: str, pepper: bytes, key: str) -> str:
    mac = _keyed_hmac(pepper).copy()
    mac.update(key.encode("utf-8"))
    return f"{DIGEST_PREFIX}{pepper_id}${mac.hexdigest()}"


def key_digest(key: str) -> str:
    """The lookup and uniqueness digest of ``key``: HMAC-SHA256 under the current pepper, tagged with its id."""
    pepper_id, pepper = settings.TOKEN_KEYS_PEPPERS[0]
    return _peppered(pepper_id, pepper, key)


def legacy_key_digest(key: str) -> str:
    """The unpeppered SHA-256 that rows written before encryption at rest carry until they are converted."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def older_key_digests(key: str) -> list[str]:
    """The digests ``key`` may still be stored under besides the current one: older peppers, legacy SHA-256."""
    return [_peppered(pepper_id, pepper, key) for pepper_id, pepper in settings.TOKEN_KEYS_PEPPERS[1:]] + [
        legacy_key_digest(key)
    ]


def key_lookup_digests(key: str) -> list[str]:
    """Every digest a stored ``key`` can carry, the current one first: one indexed ``IN`` finds its row."""
    return [key_digest(key), *older_key_digests(key)]


def digest_pepper_id(digest: str) -> str | None:
    """The id of the pepper behind ``digest``; ``None`` for a legacy SHA-256."""
    if not digest.startswith(DIGEST_PREFIX):
        return None
    return digest[len(DIGEST_PREFIX) :].partition("$")[0]


def current_encryption_key_id() -> str:
    return str(settings.TOKEN_KEYS_ENCRYPTION_KEYS[0][0])


def current_pepper_id() -> str:
    return str(settings.TOKEN_KEYS_PEPPERS[0][0])


def rotating_peppers() -> bool:
    """Whether more than one pepper is configured (a pepper rotation is under way)."""
    return len(settings.TOKEN_KEYS_PEPPERS) > 1
