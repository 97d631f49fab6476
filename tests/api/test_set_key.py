"""POST /core/tokens/{identifier}/set_key/: authentication, authorization, validation, effects, atomicity."""

import json
import logging
from datetime import timedelta
from unittest import mock

import pytest
from django.db import connection
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone
from guardian.shortcuts import assign_perm
from rest_framework.test import APIClient

from core.models import Token, TokenIntents, generate_key, key_digest
from core.services import key_fingerprint
from events.models import Event
from tests.helpers import ON_POSTGRES, requires_postgres

SET_KEY = "authentik_core.set_token_key"


def set_key_url(identifier: str, mount: str = "") -> str:
    name = "v3:token-set-key" if mount == "v3" else "token-set-key"
    return reverse(name, kwargs={"identifier": identifier})


def post_key(client: APIClient, identifier: str, key: object, mount: str = ""):
    return client.post(set_key_url(identifier, mount), {"key": key}, format="json")


def assert_unchanged(token: Token) -> None:
    old_key = token.key
    token.refresh_from_db()
    assert token.key == old_key
    assert token.key_digest == key_digest(old_key)
    # A refused key may leave a suspicious_request event (a collision), never a change event.
    assert not Event.objects.exclude(action="suspicious_request").exists()


# --- mounts -----------------------------------------------------------------------------------------


def test_urls_are_served_at_root_and_under_api_v3():
    assert set_key_url("abc") == "/core/tokens/abc/set_key/"
    assert set_key_url("abc", "v3") == "/api/v3/core/tokens/abc/set_key/"


@pytest.mark.parametrize("mount", ["", "v3"])
def test_superuser_sets_key_on_both_mounts(mount, bearer, admin_token, make_token, superuser):
    token = make_token(superuser)
    new_key = generate_key()
    response = post_key(bearer(admin_token), token.identifier, new_key, mount)
    assert response.status_code == 204
    assert response.content == b""
    assert response["Cache-Control"] == "no-store"
    token.refresh_from_db()
    assert token.key == new_key


# --- authentication ---------------------------------------------------------------------------------


def test_anonymous_is_403_not_authenticated(make_user, make_token):
    token = make_token(make_user())
    response = post_key(APIClient(), token.identifier, "new-key")
    assert response.status_code == 403
    assert response.json()["code"] == "not_authenticated"
    assert isinstance(response.json()["detail"], str)
    assert_unchanged(token)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Bearer",
        "Bearer ",
        "Bearer a b",
        "Basic dXNlcjpwYXNz",
        "Token abcdef",
        "Bearerabcdef",
        "Bearer k\u00e9y",
        "Bearer \u00ff\u00fe",
        "Bearer " + "a" * 1025,
        "Bearer unknown-key-value",
    ],
    ids=[
        "empty",
        "scheme-only",
        "scheme-space",
        "two-words",
        "basic",
        "token-scheme",
        "no-space",
        "non-ascii",
        "latin1-bytes",
        "too-long",
        "unknown-key",
    ],
)
def test_malformed_or_unknown_credentials_are_403_authentication_failed(header, admin_token, make_token, superuser):
    token = make_token(superuser)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = post_key(client, token.identifier, "new-key")
    assert response.status_code == 403
    assert response.json() == {"detail": "Invalid or expired token.", "code": "authentication_failed"}
    assert_unchanged(token)


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR"])
def test_bearer_scheme_is_case_insensitive(scheme, admin_token, make_token, superuser):
    token = make_token(superuser)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"{scheme} {admin_token.key}")
    assert post_key(client, token.identifier, generate_key()).status_code == 204


@pytest.mark.parametrize(
    "caller_state",
    ["expired", "wrong-intent-verification", "wrong-intent-recovery", "wrong-intent-app-password", "inactive-user"],
)
def test_unusable_caller_tokens_are_403_authentication_failed(caller_state, make_user, make_token, bearer, past):
    caller = make_user(superuser=True)
    fields: dict = {}
    if caller_state == "expired":
        fields = {"expires": past, "expiring": True}
    elif caller_state.startswith("wrong-intent"):
        fields = {"intent": caller_state.removeprefix("wrong-intent-").replace("-", "_")}
    caller_token = make_token(caller, **fields)
    if caller_state == "inactive-user":
        caller.is_active = False
        caller.save()
    target = make_token(caller)
    response = post_key(bearer(caller_token), target.identifier, generate_key())
    assert response.status_code == 403
    assert response.json()["code"] == "authentication_failed"
    assert_unchanged(target)


def test_expired_flag_off_means_the_caller_token_still_works(make_user, make_token, bearer, past):
    caller = make_user(superuser=True)
    caller_token = make_token(caller, expires=past, expiring=False)
    target = make_token(caller)
    assert post_key(bearer(caller_token), target.identifier, generate_key()).status_code == 204


# --- authorization ----------------------------------------------------------------------------------


def test_owner_without_permission_gets_403(make_user, make_token, bearer):
    owner = make_user()
    caller_token = make_token(owner)
    response = post_key(bearer(caller_token), caller_token.identifier, generate_key())
    assert response.status_code == 403
    assert response.json() == {
        "detail": "You do not have permission to perform this action.",
        "code": "permission_denied",
    }
    assert_unchanged(caller_token)


def test_unpermitted_caller_cannot_tell_whether_an_identifier_exists(make_user, make_token, bearer):
    caller_token = make_token(make_user())
    other = make_token(make_user())
    existing = post_key(bearer(caller_token), other.identifier, generate_key())
    missing = post_key(bearer(caller_token), "does-not-exist", generate_key())
    assert existing.status_code == missing.status_code == 403
    assert existing.json() == missing.json()
    # Even a malformed body gets the 403 first: validation runs only for permitted callers.
    assert post_key(bearer(caller_token), "does-not-exist", None).status_code == 403
    assert_unchanged(other)


def test_object_permission_allows_this_token_only(make_user, make_token, bearer):
    caller = make_user()
    caller_token = make_token(caller)
    permitted = make_token(make_user())
    other = make_token(make_user())
    assign_perm(SET_KEY, caller, permitted)

    assert post_key(bearer(caller_token), other.identifier, generate_key()).status_code == 403
    other_key = other.key
    other.refresh_from_db()
    assert other.key == other_key

    new_key = generate_key()
    assert post_key(bearer(caller_token), permitted.identifier, new_key).status_code == 204
    permitted.refresh_from_db()
    assert permitted.key == new_key


def test_group_object_permission_allows(make_user, make_token, make_group, bearer):
    caller = make_user()
    group = make_group()
    caller.groups.add(group)
    target = make_token(make_user())
    assign_perm(SET_KEY, group, target)
    assert post_key(bearer(make_token(caller)), target.identifier, generate_key()).status_code == 204


def test_other_object_permissions_do_not_allow(make_user, make_token, bearer):
    caller = make_user()
    target = make_token(make_user())
    assign_perm("authentik_core.view_token_key", caller, target)
    assign_perm("authentik_core.change_token", caller, target)
    assert post_key(bearer(make_token(caller)), target.identifier, generate_key()).status_code == 403


def test_global_user_permission_allows_any_token(make_user, make_token, bearer):
    caller = make_user(perms=(SET_KEY,))
    target = make_token(make_user())
    assert post_key(bearer(make_token(caller)), target.identifier, generate_key()).status_code == 204


def test_global_group_permission_allows_any_token(make_user, make_token, make_group, bearer):
    caller = make_user()
    caller.groups.add(make_group(SET_KEY))
    target = make_token(make_user())
    assert post_key(bearer(make_token(caller)), target.identifier, generate_key()).status_code == 204


def test_permitted_caller_gets_404_for_unknown_identifier(bearer, admin_token):
    response = post_key(bearer(admin_token), "no-such-token", generate_key())
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found.", "code": "not_found"}
    assert Event.objects.count() == 0


def test_expired_token_cannot_be_rekeyed(bearer, admin_token, make_token, superuser, past):
    target = make_token(superuser, expires=past, expiring=True)
    response = post_key(bearer(admin_token), target.identifier, generate_key())
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert_unchanged(target)


def test_object_permission_on_expired_token_is_404(make_user, make_token, bearer, past):
    caller = make_user()
    target = make_token(make_user(), expires=past)
    assign_perm(SET_KEY, caller, target)
    assert post_key(bearer(make_token(caller)), target.identifier, generate_key()).status_code == 404
    assert_unchanged(target)


def test_token_with_future_expiry_can_be_rekeyed(bearer, admin_token, make_token, superuser):
    target = make_token(superuser, expires=timezone.now() + timedelta(hours=1))
    assert post_key(bearer(admin_token), target.identifier, generate_key()).status_code == 204


# --- body validation --------------------------------------------------------------------------------

INVALID_BODIES = {
    "missing": {},
    "null": {"key": None},
    "empty": {"key": ""},
    "integer": {"key": 123456},
    "float": {"key": 1.5},
    "true": {"key": True},
    "false": {"key": False},
    "list": {"key": ["abc"]},
    "object": {"key": {"a": "b"}},
    "leading-space": {"key": " abcdef"},
    "inner-space": {"key": "abc def"},
    "trailing-newline": {"key": "abcdef\n"},
    "tab": {"key": "\t"},
    "only-spaces": {"key": "   "},
    "control-char": {"key": "abc\x01def"},
    "delete-char": {"key": "abc\x7fdef"},
    "nul": {"key": "abc\x00def"},
    "non-ascii-latin": {"key": "k\u00e9y-secret"},
    "non-ascii-cyrillic": {"key": "\u043a\u043b\u044e\u0447"},
    "emoji": {"key": "key-\U0001f511"},
    "too-long": {"key": "a" * 1025},
}


@pytest.mark.parametrize("body", list(INVALID_BODIES.values()), ids=list(INVALID_BODIES))
def test_invalid_key_is_400_on_key_and_changes_nothing(body, bearer, admin_token, make_token, superuser):
    target = make_token(superuser)
    response = bearer(admin_token).post(set_key_url(target.identifier), body, format="json")
    assert response.status_code == 400
    data = response.json()
    assert list(data) == ["key"]
    assert all(isinstance(message, str) for message in data["key"])
    submitted = body.get("key")
    if isinstance(submitted, str) and len(submitted) > 2:
        assert submitted not in response.content.decode()
    assert_unchanged(target)


RAW_BODIES = {
    "json-array": b"[]",
    "json-string": b'"abc"',
    "json-number": b"42",
    "json-null": b"null",
    "malformed": b'{"key": "abc"',
    "not-json": b"key=abc",
    "duplicate-member": b'{"key": "first-value", "key": "second-value"}',
    "nan": b'{"key": NaN}',
    "deeply-nested": b'{"key": ' + b"[" * 20000 + b"]" * 20000 + b"}",
    "invalid-utf8": b'{"key": "\xff\xfe"}',
    "empty-body": b"",
}


@pytest.mark.parametrize("raw", list(RAW_BODIES.values()), ids=list(RAW_BODIES))
def test_malformed_json_is_400_and_changes_nothing(raw, bearer, admin_token, make_token, superuser):
    target = make_token(superuser)
    response = bearer(admin_token).generic("POST", set_key_url(target.identifier), raw, content_type="application/json")
    assert response.status_code == 400
    data = response.json()
    assert set(data) <= {"key", "non_field_errors", "code"}
    assert b"first-value" not in response.content
    assert b"second-value" not in response.content
    assert_unchanged(target)


def test_oversized_body_is_413_and_changes_nothing(bearer, admin_token, make_token, superuser):
    target = make_token(superuser)
    raw = json.dumps({"key": "k" * 200_000}).encode()
    response = bearer(admin_token).generic("POST", set_key_url(target.identifier), raw, content_type="application/json")
    assert response.status_code == 413
    assert response.json() == {"detail": "Request body too large.", "code": "request_too_large"}
    assert_unchanged(target)


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz", "text/plain", "application/xml"],
)
def test_non_json_media_types_are_415(content_type, bearer, admin_token, make_token, superuser):
    target = make_token(superuser)
    response = bearer(admin_token).generic(
        "POST", set_key_url(target.identifier), b"key=secret-value-123", content_type=content_type
    )
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"
    assert b"secret-value-123" not in response.content
    assert_unchanged(target)


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_other_methods_are_405(method, bearer, admin_token, make_token, superuser):
    target = make_token(superuser)
    response = getattr(bearer(admin_token), method)(set_key_url(target.identifier), {"key": "abc"}, format="json")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
    assert_unchanged(target)


def test_key_of_exactly_1024_characters_is_accepted(bearer, admin_token, make_token, superuser):
    target = make_token(superuser)
    key = "".join(chr(0x21 + (i % 94)) for i in range(1024))
    assert post_key(bearer(admin_token), target.identifier, key).status_code == 204
    target.refresh_from_db()
    assert target.key == key
    # Every visible ASCII character survives the round trip through a Bearer header.
    assert post_key(bearer(key), target.identifier, generate_key()).status_code == 204


@override_settings(TOKEN_KEY_MIN_LENGTH=32)
def test_minimum_length_setting_is_enforced(bearer, admin_token, make_token, superuser):
    target = make_token(superuser)
    response = post_key(bearer(admin_token), target.identifier, "x" * 31)
    assert response.status_code == 400
    assert "32" in response.json()["key"][0]
    assert_unchanged(target)
    assert post_key(bearer(admin_token), target.identifier, "x" * 32).status_code == 204


# --- uniqueness -------------------------------------------------------------------------------------


def test_key_held_by_another_token_is_400_and_both_unchanged(bearer, admin_token, make_token, make_user):
    holder = make_token(make_user(), identifier="secret-holder-name")
    target = make_token(make_user())
    response = post_key(bearer(admin_token), target.identifier, holder.key)
    assert response.status_code == 400
    body = response.content.decode()
    assert list(response.json()) == ["key"]
    assert holder.key not in body
    assert "secret-holder-name" not in body
    assert_unchanged(target)
    assert_unchanged(holder)


def test_caller_cannot_take_its_own_bearer_key_for_another_token(bearer, admin_token, make_token, superuser):
    target = make_token(superuser)
    assert post_key(bearer(admin_token), target.identifier, admin_token.key).status_code == 400
    assert_unchanged(target)


def test_setting_the_same_key_again_is_allowed(bearer, admin_token, make_token, superuser):
    target = make_token(superuser)
    assert post_key(bearer(admin_token), target.identifier, target.key).status_code == 204
    assert Event.objects.count() == 1


# --- success: effects -------------------------------------------------------------------------------


def test_new_key_authenticates_and_old_key_never_again(bearer, make_user, make_token):
    caller = make_user(superuser=True)
    token = make_token(caller)
    old_key, new_key = token.key, generate_key()
    assert post_key(bearer(old_key), token.identifier, new_key).status_code == 204
    response = post_key(bearer(old_key), token.identifier, generate_key())
    assert response.status_code == 403
    assert response.json()["code"] == "authentication_failed"
    assert post_key(bearer(new_key), token.identifier, generate_key()).status_code == 204


def test_success_writes_exactly_one_complete_event(bearer, admin_token, make_token, make_user, caplog):
    caplog.set_level(logging.DEBUG)
    owner = make_user()
    target = make_token(owner, identifier="ci-deploy")
    old_key, new_key = target.key, generate_key()
    response = bearer(admin_token).post(
        set_key_url(target.identifier, "v3") + "?token=query-secret&page=2",
        {"key": new_key},
        format="json",
        HTTP_USER_AGENT="rotator/1.0",
        REMOTE_ADDR="198.51.100.7",
        HTTP_X_REQUEST_ID="req-12345678",
    )
    assert response.status_code == 204
    assert response["X-Request-ID"] == "req-12345678"

    event = Event.objects.get()
    assert event.action == "model_updated"
    assert event.app == "authentik_core"
    assert event.user == {"pk": admin_token.user.pk, "username": "root", "email": "root@example.test"}
    assert event.client_ip == "198.51.100.7"
    assert event.expires > timezone.now() + timedelta(days=364)
    assert event.context["model"] == {
        "app": "authentik_core",
        "model_name": "token",
        "pk": target.pk.hex,
        "name": "ci-deploy",
    }
    assert event.context["changed_fields"] == ["key"]
    assert event.context["key_fingerprint"] == key_fingerprint(new_key)
    assert event.context["http_request"] == {
        "path": "/api/v3/core/tokens/ci-deploy/set_key/",
        "method": "POST",
        "user_agent": "rotator/1.0",
        "request_id": "req-12345678",
        "args": {"token": "********************", "page": "2"},
    }

    everything = json.dumps(list(Event.objects.values()), default=str) + caplog.text + response.content.decode()
    for secret in (old_key, new_key, admin_token.key, "query-secret"):
        assert secret not in everything


def test_rejected_requests_leave_no_key_in_logs(bearer, admin_token, make_token, superuser, caplog):
    caplog.set_level(logging.DEBUG)
    holder = make_token(superuser)
    target = make_token(superuser)
    client = bearer(admin_token)
    secrets = [holder.key, "bad key with spaces", "x" * 2000, admin_token.key]
    post_key(client, target.identifier, holder.key)
    post_key(client, target.identifier, "bad key with spaces")
    post_key(client, target.identifier, "x" * 2000)
    post_key(client, "missing-token", generate_key())
    post_key(bearer("Bearer-like-unknown-key"), target.identifier, generate_key())
    for secret in [*secrets, "Bearer-like-unknown-key"]:
        assert secret not in caplog.text


def test_only_the_key_columns_are_written(bearer, admin_token, make_token, superuser, django_assert_max_num_queries):
    target = make_token(superuser, description="before")
    from django.db import connection as conn
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(conn) as queries:
        assert post_key(bearer(admin_token), target.identifier, generate_key()).status_code == 204
    # On PostgreSQL the UPDATE sits inside the statement that also writes the event (WITH ... UPDATE).
    updates = [q["sql"] for q in queries.captured_queries if "UPDATE" in q["sql"]]
    assert len(updates) == 1
    assert "description" not in updates[0]
    assert '"key"' in updates[0]
    assert '"key_digest"' in updates[0]


# --- atomicity --------------------------------------------------------------------------------------


def test_failing_event_write_rolls_the_key_back(admin_token, make_token, superuser):
    target = make_token(superuser)
    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {admin_token.key}")
    # Building the audit record fails. On SQLite the key is already updated in the open transaction at
    # that point; on PostgreSQL key and event are one statement (a failure inside it: the trigger test).
    with mock.patch("core.services.key_fingerprint", side_effect=RuntimeError("audit store down")):
        response = post_key(client, target.identifier, generate_key())
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error.", "code": "server_error"}
    assert_unchanged(target)


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_database_trigger_rejecting_the_event_rolls_the_key_back(admin_token, make_token, superuser, bearer):
    target = make_token(superuser)
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION reject_event() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'no events'; END $$"
            " LANGUAGE plpgsql"
        )
        cursor.execute(
            "CREATE TRIGGER reject_event BEFORE INSERT ON authentik_events_event"
            " FOR EACH ROW EXECUTE FUNCTION reject_event()"
        )
    try:
        client = bearer(admin_token)
        client.raise_request_exception = False
        response = post_key(client, target.identifier, generate_key())
        # A raised exception is a bug, not an outage: 500, not 503.
        assert response.status_code == 500
        assert response.json()["code"] == "server_error"
        assert_unchanged(target)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER reject_event ON authentik_events_event")
            cursor.execute("DROP FUNCTION reject_event()")


# --- query counts -----------------------------------------------------------------------------------
# transaction=True: the service then runs in autocommit mode, as in production, instead of inside the
# test's transaction (where a savepoint would add SAVEPOINT/RELEASE statements that never run in
# production). Counts include BEGIN and COMMIT whenever they are sent. Targets (issue 7): at most 5
# statements on the superuser path and 6 on the object-permission path.
# Fast path (PostgreSQL): bearer lookup, one statement that locks, decides, writes and audits. Contract path
# (SQLite): bearer lookup, BEGIN, SELECT ... FOR UPDATE, [permission on the locked row], collision check,
# UPDATE, event insert, COMMIT. No up-front permission query: it is asked only when the body is refused.
WRITE_STATEMENTS = 1 if ON_POSTGRES else 6
ROW_PERMISSION = 0 if ON_POSTGRES else 1


@pytest.mark.django_db(transaction=True)
def test_query_count_superuser(bearer, admin_token, make_token, superuser, django_assert_num_queries):
    target = make_token(superuser)
    client = bearer(admin_token)
    with django_assert_num_queries(1 + WRITE_STATEMENTS):
        assert post_key(client, target.identifier, generate_key()).status_code == 204


@pytest.mark.django_db(transaction=True)
def test_query_count_global_permission(bearer, make_user, make_token, django_assert_num_queries):
    caller_token = make_token(make_user(perms=(SET_KEY,)))
    target = make_token(make_user())
    client = bearer(caller_token)
    with django_assert_num_queries(1 + WRITE_STATEMENTS + ROW_PERMISSION):
        assert post_key(client, target.identifier, generate_key()).status_code == 204


@pytest.mark.django_db(transaction=True)
def test_query_count_object_permission(bearer, make_user, make_token, django_assert_num_queries):
    caller = make_user()
    caller_token = make_token(caller)
    target = make_token(make_user())
    assign_perm(SET_KEY, caller, target)
    client = bearer(caller_token)
    with django_assert_num_queries(1 + WRITE_STATEMENTS + ROW_PERMISSION):
        assert post_key(client, target.identifier, generate_key()).status_code == 204


def test_intents_of_the_target_do_not_matter(bearer, admin_token, make_token, superuser):
    target = make_token(superuser, intent=TokenIntents.RECOVERY)
    assert post_key(bearer(admin_token), target.identifier, generate_key()).status_code == 204
