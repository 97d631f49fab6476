"""POST /core/tokens/{identifier}/rotate/: a generated key, a bounded grace period for the previous one."""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone
from guardian.shortcuts import assign_perm

from core.models import Token, TokenIntents, key_digest
from core.rotation import MAX_GRACE_SECONDS, RotationForbidden, token_rotate
from core.selectors import bearer_match, token_for_bearer_key
from core.services import key_fingerprint, token_set_key
from events.models import Event, EventAction
from tests.helpers import requires_postgres
from tokens_service.request_meta import RequestMeta

SET_KEY = "authentik_core.set_token_key"


def rotate_url(identifier: str, mount: str = "") -> str:
    prefix = "v3:" if mount == "v3" else ""
    return reverse(f"{prefix}token-rotate", kwargs={"identifier": identifier})


def list_url() -> str:
    return reverse("token-list")


def rotate(client, identifier: str, body=None, mount: str = ""):
    if body is None:
        return client.post(rotate_url(identifier, mount))
    return client.post(rotate_url(identifier, mount), body, format="json")


def shift_previous_expiry(token: Token, delta: timedelta) -> None:
    """Move the end of the grace period, as the passing of time would (no sleeping in tests)."""
    Token.objects.filter(pk=token.pk).update(previous_key_expires=timezone.now() + delta)


# --- who may rotate ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mount", ["", "v3"])
def test_superuser_rotates_and_gets_the_new_key_once(mount, bearer, admin_token, make_token, superuser):
    target = make_token(superuser)
    old_key = target.key
    response = rotate(bearer(admin_token), target.identifier, mount=mount)
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert set(body) == {"key", "previous_key_expires"}
    target.refresh_from_db()
    assert body["key"] == target.key != old_key
    assert len(body["key"]) == 60
    # No grace: the old key stops at once, the new one works.
    assert token_for_bearer_key(old_key) is None
    assert token_for_bearer_key(body["key"]).pk == target.pk


@pytest.mark.parametrize("kind", ["user-global", "group-global", "user-object", "group-object"])
def test_set_token_key_holders_may_rotate(kind, bearer, make_user, make_token, make_group):
    caller = make_user()
    target = make_token(make_user())
    if kind == "user-global":
        caller = make_user(perms=(SET_KEY,))
    elif kind == "group-global":
        caller.groups.add(make_group(SET_KEY))
    elif kind == "user-object":
        assign_perm(SET_KEY, caller, target)
    else:
        group = make_group()
        caller.groups.add(group)
        assign_perm(SET_KEY, group, target)
    assert rotate(bearer(make_token(caller)), target.identifier).status_code == 200


def test_a_token_rotates_itself_without_any_permission(bearer, make_user, make_token):
    token = make_token(make_user())
    response = rotate(bearer(token), token.identifier, {"grace_seconds": 60})
    assert response.status_code == 200
    new_key = response.json()["key"]
    assert token_for_bearer_key(new_key).pk == token.pk
    event = Event.objects.get(action=EventAction.SECRET_ROTATE)
    assert event.context["self_rotation"] is True


def test_owner_and_other_users_without_permission_are_forbidden_and_nothing_changes(bearer, make_user, make_token):
    owner = make_user()
    target = make_token(owner)
    for caller_token in (make_token(owner), make_token(make_user())):  # another token of the owner; a stranger
        response = rotate(bearer(caller_token), target.identifier)
        assert response.status_code == 403
        assert response.json()["code"] == "permission_denied"
    assert Token.objects.get(pk=target.pk).key == target.key
    assert not Event.objects.exists()


def test_unknown_identifier_is_403_without_permission_and_404_with_it(bearer, make_user, make_token, admin_token):
    nobody = bearer(make_token(make_user()))
    assert rotate(nobody, "no-such-token").status_code == 403
    assert rotate(bearer(admin_token), "no-such-token").status_code == 404


def test_expired_token_is_404(bearer, admin_token, make_token, superuser, past):
    target = make_token(superuser, expires=past)
    assert rotate(bearer(admin_token), target.identifier).status_code == 404
    assert Token.objects.get(pk=target.pk).key == target.key


def test_anonymous_and_bad_credentials_are_403(bearer, make_token, superuser):
    target = make_token(superuser)
    assert rotate(bearer(None), target.identifier).json()["code"] == "not_authenticated"
    assert rotate(bearer("not-a-key-at-all"), target.identifier).json()["code"] == "authentication_failed"
    assert Token.objects.get(pk=target.pk).key == target.key


def test_other_methods_are_405(bearer, admin_token):
    assert bearer(admin_token).get(rotate_url(admin_token.identifier)).status_code == 405


# --- the body ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"grace_seconds": -1},
        {"grace_seconds": MAX_GRACE_SECONDS + 1},
        {"grace_seconds": "60"},
        {"grace_seconds": 60.0},
        {"grace_seconds": True},
        {"grace_seconds": None},
        [],
        "x",
    ],
)
def test_bad_bodies_are_400_and_change_nothing(body, bearer, admin_token, make_token, superuser):
    target = make_token(superuser)
    response = rotate(bearer(admin_token), target.identifier, body)
    assert response.status_code == 400
    assert Token.objects.get(pk=target.pk).key == target.key
    assert not Event.objects.exists()


def test_non_json_body_is_415(bearer, admin_token, make_token, superuser):
    target = make_token(superuser)
    response = bearer(admin_token).post(rotate_url(target.identifier), "grace_seconds=5", content_type="text/plain")
    assert response.status_code == 415


def test_the_largest_grace_is_accepted(bearer, admin_token, make_token, superuser):
    target = make_token(superuser)
    assert rotate(bearer(admin_token), target.identifier, {"grace_seconds": MAX_GRACE_SECONDS}).status_code == 200


# --- grace period -----------------------------------------------------------------------------------


def test_previous_key_works_during_grace_and_fails_after_with_one_suspicious_event(
    bearer, admin_token, make_token, superuser
):
    target = make_token(superuser)
    old_key = target.key
    response = rotate(bearer(admin_token), target.identifier, {"grace_seconds": 3600})
    new_key = response.json()["key"]
    assert bearer(old_key).get(list_url()).status_code == 200
    assert bearer(new_key).get(list_url()).status_code == 200
    match = bearer_match(old_key)
    assert match.previous
    assert match.authenticates

    shift_previous_expiry(target, -timedelta(seconds=1))
    for _ in range(3):
        late = bearer(old_key).get(list_url())
        assert late.status_code == 403
        assert late.json()["code"] == "authentication_failed"
    assert bearer(new_key).get(list_url()).status_code == 200
    (event,) = Event.objects.filter(action=EventAction.SUSPICIOUS_REQUEST)  # throttled: one per minute
    assert event.context["reason"] == "previous_key_after_grace"
    assert event.context["model"]["pk"] == target.pk.hex
    assert event.user["is_anonymous"] is True
    assert old_key not in str(event.context)
    assert new_key not in str(event.context)


def test_no_grace_old_key_use_is_flagged_too(bearer, admin_token, make_token, superuser):
    target = make_token(superuser)
    old_key = target.key
    rotate(bearer(admin_token), target.identifier)
    assert bearer(old_key).get(list_url()).status_code == 403
    assert Event.objects.filter(action=EventAction.SUSPICIOUS_REQUEST).count() == 1


def test_a_second_rotation_replaces_the_previous_key(bearer, admin_token, make_token, superuser):
    target = make_token(superuser)
    first_key = target.key
    second_key = rotate(bearer(admin_token), target.identifier, {"grace_seconds": 3600}).json()["key"]
    third_key = rotate(bearer(admin_token), target.identifier, {"grace_seconds": 3600}).json()["key"]
    assert token_for_bearer_key(first_key) is None  # no longer the previous key: simply unknown
    assert token_for_bearer_key(second_key).pk == target.pk  # the previous key now
    assert token_for_bearer_key(third_key).pk == target.pk
    target.refresh_from_db()
    assert target.previous_key_digest == key_digest(second_key)


def test_set_key_ends_a_grace_period(bearer, admin_token, make_token, superuser):
    target = make_token(superuser)
    old_key = target.key
    rotate(bearer(admin_token), target.identifier, {"grace_seconds": 3600})
    token_set_key(
        token_identifier=target.identifier, key="a-chosen-key-0123456789", actor=superuser, request_meta=RequestMeta()
    )
    target.refresh_from_db()
    assert target.previous_key_digest is None
    assert target.previous_key_expires is None
    assert bearer_match(old_key) is None


def test_a_previous_key_cannot_rotate_its_token(bearer, make_user, make_token):
    token = make_token(make_user())
    old_key = token.key
    new_key = rotate(bearer(token), token.identifier, {"grace_seconds": 3600}).json()["key"]
    # The old key still authenticates during the grace period, but a leaked old key must not take over.
    response = rotate(bearer(old_key), token.identifier)
    assert response.status_code == 403
    assert token_for_bearer_key(new_key).pk == token.pk


def test_current_key_wins_over_another_tokens_previous_key(make_user, make_token, superuser):
    first, second = make_token(make_user()), make_token(make_user())
    shared = first.key
    token_rotate(token_identifier=first.identifier, actor=superuser, request_meta=RequestMeta(), grace_seconds=3600)
    token_set_key(token_identifier=second.identifier, key=shared, actor=superuser, request_meta=RequestMeta())
    assert token_for_bearer_key(shared).pk == second.pk


# --- the event --------------------------------------------------------------------------------------


def test_one_secret_rotate_event_without_keys(bearer, admin_token, make_token, superuser):
    target = make_token(superuser)
    old_key = target.key
    body = rotate(bearer(admin_token), target.identifier, {"grace_seconds": 90}).json()
    (event,) = Event.objects.all()
    assert event.action == EventAction.SECRET_ROTATE
    assert event.user["username"] == superuser.username
    assert event.context["model"] == {
        "app": "authentik_core",
        "model_name": "token",
        "pk": target.pk.hex,
        "name": target.identifier,
    }
    assert event.context["key_fingerprint"] == key_fingerprint(body["key"])
    assert event.context["grace_seconds"] == 90
    assert event.context["self_rotation"] is False
    text = str(event.context) + str(event.user)
    assert body["key"] not in text
    assert old_key not in text
    assert key_digest(body["key"]) not in text
    assert key_digest(old_key) not in text


def test_service_refuses_without_permission_whether_or_not_the_token_exists(make_user, make_token):
    caller = make_user()
    target = make_token(make_user())
    for identifier in (target.identifier, "no-such-token"):
        with pytest.raises(RotationForbidden):
            token_rotate(token_identifier=identifier, actor=caller, request_meta=RequestMeta())
    assert not Event.objects.exists()


def test_grace_out_of_range_is_refused_by_the_service(make_token, superuser):
    target = make_token(superuser)
    with pytest.raises(ValueError, match="grace_seconds"):
        token_rotate(token_identifier=target.identifier, actor=superuser, request_meta=RequestMeta(), grace_seconds=-1)


def test_only_api_tokens_authenticate_after_rotation(make_token, superuser):
    target = make_token(superuser, intent=TokenIntents.APP_PASSWORD)
    rotation = token_rotate(token_identifier=target.identifier, actor=superuser, request_meta=RequestMeta())
    assert token_for_bearer_key(rotation.key) is None
    assert Token.objects.get(pk=target.pk).key == rotation.key


# --- concurrency (PostgreSQL) -----------------------------------------------------------------------


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_rotations_leave_at_most_one_previous_key(make_user, make_token, superuser):
    target = make_token(make_user())
    original = target.key
    keys: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        try:
            barrier.wait()
            rotation = token_rotate(
                token_identifier=target.identifier, actor=superuser, request_meta=RequestMeta(), grace_seconds=3600
            )
            keys.append(rotation.key)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(keys) == 4
    valid = [key for key in [original, *keys] if token_for_bearer_key(key) is not None]
    # The current key and exactly one previous key: the one replaced by the last rotation to commit.
    assert len(valid) == 2
    assert Event.objects.filter(action=EventAction.SECRET_ROTATE).count() == 4


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_self_rotations_with_one_key_succeed_once(bearer, make_user, make_token):
    token = make_token(make_user())
    statuses: list[int] = []
    barrier = threading.Barrier(3)

    def worker() -> None:
        try:
            barrier.wait()
            statuses.append(rotate(bearer(token.key), token.identifier, {"grace_seconds": 60}).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # The first rotation commits; the others find the key they authenticated with no longer current.
    assert sorted(statuses) == [200, 403, 403]
    assert Event.objects.filter(action=EventAction.SECRET_ROTATE).count() == 1


def test_rotations_are_rate_limited_per_caller_like_set_key(bearer, admin_token, make_token, superuser, settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "rotate": "2/min"},
    }
    target = make_token(superuser)
    statuses = [rotate(bearer(admin_token), target.identifier).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert Event.objects.filter(action=EventAction.SECRET_ROTATE).count() == 2
