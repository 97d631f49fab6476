"""Models: key digest upkeep, uniqueness in the database, expiry, and no key in str/repr."""

import string
from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.models import DEFAULT_KEY_LENGTH, KEY_ALPHABET, Token, TokenIntents, User, generate_key, key_digest
from events.models import Event
from tests.helpers import requires_postgres


def test_generated_keys_are_60_characters_prefix_base62_body_and_checksum():
    keys = {generate_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert len(key) == DEFAULT_KEY_LENGTH == 60
        assert key.startswith("tks_")
        assert set(key) <= set(KEY_ALPHABET)
        assert set(key[4:]) <= set(string.ascii_letters + string.digits)


@pytest.mark.django_db
def test_orm_created_token_has_a_digest_and_authenticates(client):
    user = User.objects.create_user("ormuser", is_superuser=True)
    Token(identifier="from-shell", key="shell-made-key-123", user=user).save()
    token = Token.objects.get(identifier="from-shell")
    assert token.key_digest == key_digest("shell-made-key-123")
    assert token.intent == TokenIntents.API
    response = client.post(
        "/core/tokens/from-shell/set_key/",
        {"key": "rotated-key-456"},
        content_type="application/json",
        HTTP_AUTHORIZATION="Bearer shell-made-key-123",
    )
    assert response.status_code == 204


@pytest.mark.django_db
def test_field_level_save_of_key_keeps_the_digest_in_step():
    user = User.objects.create_user("u1")
    token = Token.objects.create(identifier="t1", user=user)
    token.key = "changed-key-value"
    token.save(update_fields=["key"])
    assert Token.objects.get(pk=token.pk).key_digest == key_digest("changed-key-value")


@pytest.mark.django_db
def test_database_rejects_two_tokens_with_one_key_without_printing_it():
    user = User.objects.create_user("u2")
    Token.objects.create(identifier="a", user=user, key="same-secret-key-value")
    with pytest.raises(IntegrityError) as excinfo, transaction.atomic():
        Token.objects.create(identifier="b", user=user, key="same-secret-key-value")
    assert "same-secret-key-value" not in str(excinfo.value)


@requires_postgres
@pytest.mark.django_db
def test_digest_uniqueness_is_a_database_constraint_even_for_raw_updates():
    from django.db import connection

    user = User.objects.create_user("u3")
    a = Token.objects.create(identifier="a", user=user)
    b = Token.objects.create(identifier="b", user=user)
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "UPDATE authentik_core_token SET key_digest = %s WHERE token_uuid = %s", [a.key_digest, b.token_uuid]
        )


@pytest.mark.django_db
def test_str_and_repr_never_show_the_key():
    user = User.objects.create_user("u4")
    token = Token.objects.create(identifier="visible-name", user=user, key="never-show-this-key")
    assert str(token) == "visible-name"
    assert "never-show-this-key" not in repr(token)
    assert token.key_digest not in repr(token)


@pytest.mark.django_db
def test_expiry_rules():
    user = User.objects.create_user("u5")
    now = timezone.now()
    assert Token(user=user, expiring=True, expires=now - timedelta(seconds=1)).is_expired
    assert not Token(user=user, expiring=True, expires=now + timedelta(minutes=5)).is_expired
    assert not Token(user=user, expiring=False, expires=now - timedelta(days=1)).is_expired
    assert not Token(user=user, expiring=True, expires=None).is_expired


@pytest.mark.django_db
def test_token_permissions_have_the_reference_names():
    from django.contrib.auth.models import Permission

    names = dict(
        Permission.objects.filter(content_type__app_label="authentik_core", content_type__model="token").values_list(
            "codename", "name"
        )
    )
    assert names["set_token_key"] == "Set a token's key"
    assert names["view_token_key"] == "View token's key"


@pytest.mark.django_db
def test_user_has_authentik_fields():
    user = User.objects.create_user("u6", name="U Six")
    assert user.uuid
    assert user.type == "internal"
    assert user.attributes == {}
    assert user.password_change_date is not None
    assert user.last_updated is not None
    assert len(user.uid) == 64
    assert user.uid == User.objects.get(pk=user.pk).uid


@pytest.mark.django_db
def test_event_default_expiry_is_one_year():
    event = Event.objects.create(action="login", app="test")
    assert timedelta(days=364) < event.expires - event.created <= timedelta(days=365, seconds=1)
