"""Keys at rest: encryption of stored keys, the peppered digest, rotations of both, the generated key format."""

import base64
import hashlib
import os
import random
import re
import string
import subprocess
import sys
import tomllib
import zlib
from collections.abc import Callable

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, connection, transaction
from django.test import override_settings
from django.urls import reverse

from core import crypto, fastpath
from core.models import Token, generate_key, key_digest
from core.services import key_fingerprint
from events.models import Event
from tests.helpers import ROOT

OLD_KEK = ("old", b"o" * 32)
NEW_KEK = ("new", b"n" * 32)
OLD_PEPPER = ("p1", b"1" * 32)
NEW_PEPPER = ("p2", b"2" * 32)


def stored_row(identifier: str) -> tuple[str, str]:
    """The key and digest columns as the database holds them (no model field conversion)."""
    with connection.cursor() as cursor:
        cursor.execute('SELECT "key", key_digest FROM authentik_core_token WHERE identifier = %s', [identifier])
        row = cursor.fetchone()
    assert row is not None
    return row[0], row[1]


def set_key_url(identifier: str) -> str:
    return reverse("token-set-key", kwargs={"identifier": identifier})


def view_key_url(identifier: str) -> str:
    return reverse("token-view-key", kwargs={"identifier": identifier})


def authenticates(bearer: Callable, key: str) -> bool:
    return bearer(key).get(reverse("token-list")).status_code == 200


# --- encryption ---------------------------------------------------------------------------------------------


def test_encryption_round_trips_with_a_fresh_nonce_and_tags_the_key_id():
    key = "a-key-to-protect-0123456789"
    first, second = crypto.encrypt_key(key), crypto.encrypt_key(key)
    assert first != second
    assert first.startswith("gcm$test$")
    assert key not in first
    assert crypto.decrypt_key(first) == crypto.decrypt_key(second) == key
    assert crypto.encryption_key_id(first) == "test"


def test_altered_ciphertext_and_unknown_key_id_fail_without_quoting_the_value():
    stored = crypto.encrypt_key("tamper-target-key-value")
    body = stored[len("gcm$test$") :]
    flipped = stored[: len("gcm$test$")] + ("A" if body[0] != "A" else "B") + body[1:]
    with pytest.raises(crypto.KeyDecryptionError) as excinfo:
        crypto.decrypt_key(flipped)
    assert body[5:20] not in str(excinfo.value)
    with pytest.raises(crypto.KeyDecryptionError, match="'gone'"):
        crypto.decrypt_key("gcm$gone$" + body)


def test_older_encryption_keys_still_decrypt_and_the_first_encrypts(settings):
    settings.TOKEN_KEYS_ENCRYPTION_KEYS = (OLD_KEK,)
    stored_old = crypto.encrypt_key("rotating-kek-key-1")
    settings.TOKEN_KEYS_ENCRYPTION_KEYS = (NEW_KEK, OLD_KEK)
    assert crypto.decrypt_key(stored_old) == "rotating-kek-key-1"
    assert crypto.encryption_key_id(crypto.encrypt_key("x-y-z")) == "new"
    settings.TOKEN_KEYS_ENCRYPTION_KEYS = (NEW_KEK,)
    with pytest.raises(crypto.KeyDecryptionError):
        crypto.decrypt_key(stored_old)


def test_the_same_key_under_another_encryption_key_with_the_same_id_does_not_decrypt(settings):
    settings.TOKEN_KEYS_ENCRYPTION_KEYS = (("k", b"a" * 32),)
    stored = crypto.encrypt_key("wrong-kek-key-value")
    settings.TOKEN_KEYS_ENCRYPTION_KEYS = (("k", b"b" * 32),)
    with pytest.raises(crypto.KeyDecryptionError):
        crypto.decrypt_key(stored)


@pytest.mark.django_db
def test_the_database_holds_ciphertext_and_a_peppered_digest_while_the_model_holds_the_key(make_user):
    user = make_user()
    Token(identifier="at-rest", key="plain-key-at-rest-42", user=user).save()
    stored_key, stored_digest = stored_row("at-rest")
    assert stored_key.startswith("gcm$test$")
    assert "plain-key-at-rest-42" not in stored_key
    assert stored_digest == key_digest("plain-key-at-rest-42")
    assert stored_digest.startswith("hmac$test$")
    assert hashlib.sha256(b"plain-key-at-rest-42").hexdigest() not in stored_digest
    token = Token.objects.get(identifier="at-rest")
    assert token.key == "plain-key-at-rest-42"
    assert Token.objects.values_list("key", flat=True).get(identifier="at-rest") == "plain-key-at-rest-42"
    # Filtering on the key cannot find it: tokens are looked up through the digest only.
    assert not Token.objects.filter(key="plain-key-at-rest-42").exists()


@pytest.mark.django_db
def test_set_key_and_view_key_round_trip_through_the_encrypted_column(superuser, admin_token, bearer):
    target = Token.objects.create(identifier="target", user=superuser, key="target-old-key-123")
    api = bearer(admin_token)
    assert api.post(set_key_url("target"), {"key": "target-new-key-456"}).status_code == 204
    stored_key, stored_digest = stored_row("target")
    assert stored_key.startswith("gcm$")
    assert "target-new-key-456" not in stored_key
    assert stored_digest == key_digest("target-new-key-456")
    assert api.get(view_key_url("target")).json() == {"key": "target-new-key-456"}
    assert authenticates(bearer, "target-new-key-456")
    assert not authenticates(bearer, "target-old-key-123")
    event = Event.objects.filter(context__model__name=target.identifier).latest("created")
    serialized = str(event.context) + str(event.user)
    assert stored_key not in serialized
    assert stored_digest not in serialized
    assert stored_digest.split("$")[-1] not in serialized


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("column", "value"),
    [("key", "a-plain-key-value-1"), ("key_digest", hashlib.sha256(b"a-plain-key-value-1").hexdigest())],
)
def test_the_database_refuses_plain_keys_and_unpeppered_digests_from_raw_sql(make_user, column, value):
    token = Token.objects.create(identifier="raw", user=make_user())
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f'UPDATE authentik_core_token SET "{column}" = %s WHERE identifier = %s', [value, "raw"])  # noqa: S608
    assert Token.objects.get(pk=token.pk).key == token.key


# --- encryption key rotation ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_encryption_key_rotation_keeps_every_token_working(settings, make_user, bearer, superuser):
    settings.TOKEN_KEYS_ENCRYPTION_KEYS = (OLD_KEK,)
    keys = {f"kek-rot-{n}": f"kek-rotation-key-{n}-abcdef" for n in range(7)}
    for identifier, key in keys.items():
        Token.objects.create(identifier=identifier, key=key, user=superuser)
    settings.TOKEN_KEYS_ENCRYPTION_KEYS = (NEW_KEK, OLD_KEK)
    assert all(authenticates(bearer, key) for key in keys.values())
    call_command("reencrypt_keys", "--batch-size", "3", stdout=open(os.devnull, "w"))  # noqa: SIM115
    assert {stored_row(identifier)[0].split("$")[1] for identifier in keys} == {"new"}
    settings.TOKEN_KEYS_ENCRYPTION_KEYS = (NEW_KEK,)  # the old key is dropped
    for identifier, key in keys.items():
        assert authenticates(bearer, key)
        assert bearer(key).get(view_key_url(identifier)).json() == {"key": key}


@pytest.mark.django_db
def test_reencrypt_keys_prints_counts_never_keys(settings, superuser, capsys):
    settings.TOKEN_KEYS_ENCRYPTION_KEYS = (OLD_KEK,)
    Token.objects.create(identifier="quiet", key="quiet-rotation-key-987", user=superuser)
    settings.TOKEN_KEYS_ENCRYPTION_KEYS = (NEW_KEK, OLD_KEK)
    call_command("reencrypt_keys")
    out = capsys.readouterr()
    assert "Converted 1 token(s)" in out.out
    stored_key, stored_digest = stored_row("quiet")
    for secret in ("quiet-rotation-key-987", stored_key, stored_digest):
        assert secret not in out.out + out.err
    call_command("reencrypt_keys")
    assert "Converted 0 token(s)" in capsys.readouterr().out


@pytest.mark.django_db
def test_reencrypt_keys_fails_clearly_when_an_encryption_key_is_missing(settings, superuser):
    settings.TOKEN_KEYS_ENCRYPTION_KEYS = (OLD_KEK,)
    Token.objects.create(identifier="orphan", key="orphaned-key-value-1", user=superuser)
    settings.TOKEN_KEYS_ENCRYPTION_KEYS = (NEW_KEK,)
    with pytest.raises(CommandError, match="'old'") as excinfo:
        call_command("reencrypt_keys")
    assert "orphaned-key-value-1" not in str(excinfo.value)
    with pytest.raises(CommandError, match="at least 1"):
        call_command("reencrypt_keys", "--batch-size", "0")


# --- pepper rotation ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_pepper_rotation_keeps_every_token_authenticating(settings, bearer, superuser):
    settings.TOKEN_KEYS_PEPPERS = (OLD_PEPPER,)
    keys = {f"pep-rot-{n}": f"pepper-rotation-key-{n}-xyz" for n in range(5)}
    for identifier, key in keys.items():
        Token.objects.create(identifier=identifier, key=key, user=superuser)
    settings.TOKEN_KEYS_PEPPERS = (NEW_PEPPER, OLD_PEPPER)
    assert all(authenticates(bearer, key) for key in keys.values())
    # A token re-keyed during the window gets the new pepper at once.
    assert bearer(keys["pep-rot-0"]).post(set_key_url("pep-rot-0"), {"key": "pepper-rotated-key-0"}).status_code == 204
    keys["pep-rot-0"] = "pepper-rotated-key-0"
    assert stored_row("pep-rot-0")[1].startswith("hmac$p2$")
    call_command("reencrypt_keys", "--batch-size", "2", stdout=open(os.devnull, "w"))  # noqa: SIM115
    assert {stored_row(identifier)[1].split("$")[1] for identifier in keys} == {"p2"}
    settings.TOKEN_KEYS_PEPPERS = (NEW_PEPPER,)
    assert all(authenticates(bearer, key) for key in keys.values())


@pytest.mark.django_db
def test_reencrypt_keys_says_when_an_older_pepper_still_carries_a_previous_key(settings, bearer, superuser):
    settings.TOKEN_KEYS_PEPPERS = (OLD_PEPPER,)
    Token.objects.create(identifier="graced", key="graced-key-before-rotation", user=superuser)
    rotated = bearer("graced-key-before-rotation").post(
        reverse("token-rotate", args=["graced"]), {"grace_seconds": 3600}, format="json"
    )
    assert rotated.status_code == 200
    settings.TOKEN_KEYS_PEPPERS = (NEW_PEPPER, OLD_PEPPER)
    with pytest.raises(CommandError, match=r"1 token\(s\) have a previous key in its grace period") as refused:
        call_command("reencrypt_keys", stdout=open(os.devnull, "w"))  # noqa: SIM115
    assert "graced-key-before-rotation" not in str(refused.value)
    # The current key was converted; the previous one authenticates while its pepper is configured ...
    assert stored_row("graced")[1].startswith("hmac$p2$")
    assert authenticates(bearer, "graced-key-before-rotation")
    # ... and would stop early without it, which is what the command warns about.
    settings.TOKEN_KEYS_PEPPERS = (NEW_PEPPER,)
    assert not authenticates(bearer, "graced-key-before-rotation")
    # Once the grace period is over, nothing holds the older pepper any more.
    Token.objects.filter(identifier="graced").update(previous_key_expires="2000-01-01T00:00:00Z")
    settings.TOKEN_KEYS_PEPPERS = (NEW_PEPPER, OLD_PEPPER)
    call_command("reencrypt_keys", stdout=open(os.devnull, "w"))  # noqa: SIM115


@pytest.mark.django_db
def test_during_a_pepper_rotation_a_key_held_under_the_old_pepper_stays_unique(settings, bearer, superuser):
    settings.TOKEN_KEYS_PEPPERS = (OLD_PEPPER,)
    Token.objects.create(identifier="holder", key="unique-across-peppers", user=superuser)
    caller = Token.objects.create(identifier="caller", key="caller-key-abcdef", user=superuser)
    settings.TOKEN_KEYS_PEPPERS = (NEW_PEPPER, OLD_PEPPER)
    response = bearer(caller).post(set_key_url("caller"), {"key": "unique-across-peppers"})
    assert response.status_code == 400
    assert response.json() == {"key": ["This key cannot be used; choose another."]}
    assert Token.objects.get(identifier="caller").key == "caller-key-abcdef"
    with pytest.raises(IntegrityError), transaction.atomic():
        Token.objects.create(identifier="dup", key="unique-across-peppers", user=superuser)
    # Re-setting a token's own key is not a clash.
    assert bearer(caller).post(set_key_url("holder"), {"key": "unique-across-peppers"}).status_code == 204
    assert stored_row("holder")[1] == key_digest("unique-across-peppers")


@pytest.mark.django_db
def test_only_a_pepper_rotation_adds_a_statement_to_set_key(superuser, admin_token, bearer, settings):
    from django.test.utils import CaptureQueriesContext

    Token.objects.create(identifier="count", key="count-old-key-1234", user=superuser)
    with CaptureQueriesContext(connection) as queries:
        assert bearer(admin_token).post(set_key_url("count"), {"key": "count-new-key-5678"}).status_code == 204
    # The fast path's single statement compares every digest the key may carry; the contract path's
    # Token.save() adds its cross-pepper check only while two peppers are configured.
    settings.TOKEN_KEYS_PEPPERS = (*settings.TOKEN_KEYS_PEPPERS, OLD_PEPPER)
    with CaptureQueriesContext(connection) as rotating:
        assert bearer(admin_token).post(set_key_url("count"), {"key": "count-newer-key-9"}).status_code == 204
    assert len(rotating) == len(queries) + (0 if fastpath.enabled() else 1)


# --- generated keys: prefix and checksum --------------------------------------------------------------------------


def test_generated_keys_carry_the_prefix_and_a_valid_checksum():
    for _ in range(200):
        key = generate_key()
        assert re.fullmatch(crypto.generated_key_pattern(), key)
        assert crypto.is_generated_key(key)
        assert key[-6:] == crypto.key_checksum(key[4:-6])


def test_strings_with_the_prefix_but_no_valid_checksum_are_not_generated_keys():
    rng = random.Random(12)  # deterministic: the same 20000 candidates every run
    alphabet = string.ascii_letters + string.digits
    candidates = ["tks_" + "".join(rng.choice(alphabet) for _ in range(56)) for _ in range(20000)]
    assert all(re.fullmatch(crypto.generated_key_pattern(), candidate) for candidate in candidates)
    assert not any(crypto.is_generated_key(candidate) for candidate in candidates)


def test_any_single_character_change_breaks_the_checksum():
    key = generate_key()
    for position in range(4, len(key)):
        for replacement in "0aZ":
            if key[position] != replacement:
                assert not crypto.is_generated_key(key[:position] + replacement + key[position + 1 :])
    assert not crypto.is_generated_key(key[:-1])
    assert not crypto.is_generated_key("xyz_" + key[4:])


def test_checksum_is_base62_crc32_of_the_body():
    assert crypto.key_checksum("") == "000000"
    checksum = crypto.key_checksum("hello")
    assert len(checksum) == 6
    assert sum(crypto.BASE62.index(c) * 62**i for i, c in enumerate(reversed(checksum))) == zlib.crc32(b"hello")


def test_prefix_is_configurable(settings):
    settings.TOKEN_KEY_PREFIX = "acme_"
    key = generate_key()
    assert key.startswith("acme_")
    assert len(key) == 61
    assert crypto.is_generated_key(key)
    assert not crypto.is_generated_key(key, prefix="tks_")


def _readme_gitleaks_rule() -> dict:
    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"```toml\n(\[\[rules\]\].*?)```", readme, re.DOTALL)
    assert snippet, "README has the gitleaks rule"
    return tomllib.loads(snippet.group(1))["rules"][0]


def test_the_documented_gitleaks_rule_finds_generated_keys_and_nothing_else():
    rule = _readme_gitleaks_rule()
    pattern = re.compile(rule["regex"])
    assert rule["regex"] == crypto.generated_key_pattern()
    assert rule["keywords"] == ["tks_"]
    key = generate_key()
    for text in (f"token = '{key}'", f"Authorization: Bearer {key}\n", f'{{"key":"{key}"}}'):
        assert pattern.search(text).group(0) == key
    for text in (f"x{key}", f"{key}0", key[:-1], f"tks_{'a' * 55}", "tks_", "unrelated text"):
        assert not pattern.search(text)


# --- configuration --------------------------------------------------------------------------------------------


def _check(**env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TOKEN_KEY", "DJANGO_DEBUG"))}
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**base, "DATABASE_URL": "", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


VALID = base64.b64encode(b"k" * 32).decode()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TOKEN_KEYS_PEPPERS": f"a:{VALID}"}, "TOKEN_KEYS_ENCRYPTION_KEYS is required unless DJANGO_DEBUG is on"),
        ({"TOKEN_KEYS_ENCRYPTION_KEYS": f"a:{VALID}"}, "TOKEN_KEYS_PEPPERS is required unless DJANGO_DEBUG is on"),
        (
            {"TOKEN_KEYS_ENCRYPTION_KEYS": "a:c2hvcnQ=", "TOKEN_KEYS_PEPPERS": f"a:{VALID}"},
            "must be 32 random bytes",
        ),
        ({"TOKEN_KEYS_ENCRYPTION_KEYS": VALID, "TOKEN_KEYS_PEPPERS": f"a:{VALID}"}, "id:base64"),
        (
            {"TOKEN_KEYS_ENCRYPTION_KEYS": f"a:{VALID},a:{VALID}", "TOKEN_KEYS_PEPPERS": f"a:{VALID}"},
            "appears twice",
        ),
        (
            {"TOKEN_KEYS_ENCRYPTION_KEYS": f"a:{VALID}", "TOKEN_KEYS_PEPPERS": f"a:{VALID}", "TOKEN_KEY_PREFIX": "x"},
            "TOKEN_KEY_PREFIX must be",
        ),
    ],
)
def test_production_refuses_to_start_without_valid_key_settings(env, message):
    result = _check(**env)
    assert result.returncode != 0
    assert message in result.stderr
    assert VALID not in result.stderr


def test_valid_key_settings_start():
    result = _check(TOKEN_KEYS_ENCRYPTION_KEYS=f"b:{VALID},a:{VALID}", TOKEN_KEYS_PEPPERS=f"a:{VALID}")
    assert result.returncode == 0, result.stderr


@pytest.mark.django_db
def test_logs_and_events_never_carry_a_key_its_ciphertext_or_its_digest(superuser, admin_token, bearer, caplog):
    caplog.set_level("DEBUG")
    api = bearer(admin_token)
    assert api.post(reverse("token-list"), {"identifier": "logged"}).status_code == 201
    generated = api.get(view_key_url("logged")).json()["key"]
    assert api.post(set_key_url("logged"), {"key": "logged-chosen-key-1"}).status_code == 204
    assert api.post(set_key_url("logged"), {"key": admin_token.key}).status_code == 400  # a clash
    assert bearer("logged-chosen-key-1").get(view_key_url("logged")).status_code == 200
    assert bearer("not-a-valid-key-at-all").get(reverse("token-list")).status_code == 403
    stored_key, stored_digest = stored_row("logged")
    admin_stored_key, admin_digest = stored_row(admin_token.identifier)
    events = "".join(str(event.context) + str(event.user) for event in Event.objects.all())
    secrets = [generated, "logged-chosen-key-1", admin_token.key, stored_key, admin_stored_key]
    secrets += [digest.split("$")[-1] for digest in (stored_digest, admin_digest, key_digest(generated))]
    secrets += [hashlib.sha256(key.encode()).hexdigest() for key in (generated, "logged-chosen-key-1", admin_token.key)]
    for secret in secrets:
        assert secret not in caplog.text
        assert secret not in events


@pytest.mark.parametrize("secret", ["one-server-secret", "another-server-secret-after-a-rotation"])
def test_key_fingerprint_is_djangos_salted_hmac(secret):
    from django.utils.crypto import salted_hmac

    key = generate_key()
    with override_settings(SECRET_KEY=secret):
        expected = salted_hmac("tokens-service.key-fingerprint", key, algorithm="sha256").hexdigest()
        assert key_fingerprint(key) == expected
