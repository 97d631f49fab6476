"""The token API besides set_key: list, create, retrieve, update, delete, view_key, used_by."""

import base64
import json
import logging
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from guardian.models import GroupObjectPermission, UserObjectPermission
from guardian.shortcuts import assign_perm, get_perms
from rest_framework.test import APIClient

from core import fastpath
from core.avatars import group_uuid
from core.models import Token, TokenIntents, generate_key
from events.models import Event

USER_REQUIRED = {
    "pk",
    "username",
    "name",
    "date_joined",
    "is_superuser",
    "avatar",
    "uid",
    "uuid",
    "password_change_date",
    "last_updated",
    "groups_obj",
    "roles_obj",
}
TOKEN_FIELDS = {"pk", "managed", "identifier", "intent", "user", "user_obj", "description", "expires", "expiring"}
# Additions to authentik's token (rotation, usage and IP allowlists).
TOKEN_FIELDS |= {"last_used", "last_used_ip", "allowed_ips"}


def token_url(name: str, identifier: str | None = None, mount: str = "") -> str:
    prefix = "v3:" if mount == "v3" else ""
    return reverse(f"{prefix}token-{name}", kwargs={"identifier": identifier} if identifier is not None else {})


def detail(identifier: str, mount: str = "") -> str:
    return token_url("detail", identifier, mount)


@pytest.fixture
def client_of(make_token, bearer):
    """An API client authenticated as ``user`` through a token ``login-<username>`` of its own."""

    def make(user) -> APIClient:
        return bearer(make_token(user, identifier=f"login-{user.username}"))

    return make


def events(action: str) -> list[Event]:
    return list(Event.objects.filter(action=action))


def listed(response) -> list[str]:
    return [row["identifier"] for row in response.json()["results"]]


# --- mounts -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "identifier", "path"),
    [
        ("list", None, "core/tokens/"),
        ("detail", "abc", "core/tokens/abc/"),
        ("view-key", "abc", "core/tokens/abc/view_key/"),
        ("used-by", "abc", "core/tokens/abc/used_by/"),
    ],
)
def test_routes_are_served_at_root_and_under_api_v3(name, identifier, path):
    assert token_url(name, identifier) == "/" + path
    assert token_url(name, identifier, "v3") == "/api/v3/" + path


@pytest.mark.parametrize("mount", ["", "v3"])
def test_every_operation_works_on_both_mounts(mount, bearer, admin_token):
    client = bearer(admin_token)
    assert client.get(token_url("list", mount=mount)).status_code == 200
    created = client.post(token_url("list", mount=mount), {"identifier": "mounted"}, format="json")
    assert created.status_code == 201
    assert client.get(detail("mounted", mount)).status_code == 200
    assert client.put(detail("mounted", mount), {"identifier": "mounted"}, format="json").status_code == 200
    assert client.patch(detail("mounted", mount), {"description": "d"}, format="json").status_code == 200
    assert client.get(token_url("view-key", "mounted", mount)).status_code == 200
    assert client.get(token_url("used-by", "mounted", mount)).json() == []
    assert client.delete(detail("mounted", mount)).status_code == 204


# --- list -------------------------------------------------------------------------------------------


def test_list_anonymous_is_403_not_authenticated(make_token, make_user):
    make_token(make_user())
    response = APIClient().get(token_url("list"))
    assert response.status_code == 403
    assert response.json()["code"] == "not_authenticated"


def test_list_shows_a_user_only_its_own_tokens(make_user, make_token, client_of):
    alice, bob = make_user(), make_user()
    make_token(alice, identifier="alice-ci")
    make_token(bob, identifier="bob-ci")
    assert sorted(listed(client_of(alice).get(token_url("list")))) == ["alice-ci", f"login-{alice.username}"]


@pytest.mark.parametrize("perm", ["view_token", "change_token", "delete_token", "view_token_key", "set_token_key"])
def test_any_object_permission_makes_a_token_visible(perm, make_user, make_token, client_of):
    alice = make_user()
    shared = make_token(make_user(), identifier="shared")
    make_token(make_user(), identifier="hidden")
    assign_perm(f"authentik_core.{perm}", alice, shared)
    assert sorted(listed(client_of(alice).get(token_url("list")))) == [f"login-{alice.username}", "shared"]


def test_group_object_permission_makes_a_token_visible(make_user, make_token, make_group, client_of):
    alice = make_user()
    group = make_group()
    alice.groups.add(group)
    shared = make_token(make_user(), identifier="shared")
    assign_perm("authentik_core.view_token", group, shared)
    assert "shared" in listed(client_of(alice).get(token_url("list")))


def test_an_object_permission_on_another_model_with_the_same_pk_does_not_leak(make_user, make_token, client_of):
    alice = make_user()
    target = make_token(make_user(), identifier="target")
    # A row for a different content type whose object_pk happens to equal the token's.
    view_event = Permission.objects.get(codename="view_event")
    # bulk_create: guardian's save() would insist on loading an event with that pk.
    UserObjectPermission.objects.bulk_create(
        [
            UserObjectPermission(
                user=alice, permission=view_event, content_type_id=view_event.content_type_id, object_pk=str(target.pk)
            )
        ]
    )
    assert "target" not in listed(client_of(alice).get(token_url("list")))


@pytest.mark.parametrize("holder", ["superuser", "user-perm", "group-perm"])
def test_superusers_and_global_view_token_holders_see_every_token(holder, make_user, make_group, make_token, client_of):
    if holder == "superuser":
        caller = make_user(superuser=True)
    elif holder == "user-perm":
        caller = make_user(perms=("authentik_core.view_token",))
    else:
        caller = make_user()
        caller.groups.add(make_group("authentik_core.view_token"))
    for _ in range(3):
        make_token(make_user())
    assert len(listed(client_of(caller).get(token_url("list")))) == Token.objects.count() == 4


def test_inactive_superuser_session_sees_nothing(make_user, make_token):
    # Bearer auth already refuses inactive users; a session of one must not see the list either.
    caller = make_user(superuser=True)
    make_token(make_user())
    client = APIClient()
    client.force_authenticate(caller)
    caller.is_active = False
    caller.save()
    assert client.get(token_url("list")).json()["results"] == []


def test_list_envelope_is_authentiks_pagination(bearer, admin_token):
    body = bearer(admin_token).get(token_url("list")).json()
    assert set(body) == {"pagination", "results", "autocomplete"}
    assert body["autocomplete"] == {}
    assert body["pagination"] == {
        "next": 0,
        "previous": 0,
        "count": 1,
        "current": 1,
        "total_pages": 1,
        "start_index": 1,
        "end_index": 1,
    }
    (row,) = body["results"]
    assert set(row) == TOKEN_FIELDS
    assert set(row["user_obj"]) >= USER_REQUIRED


def test_pages_default_to_20_and_link_by_number(bearer, admin_token, make_token, superuser):
    for number in range(24):
        make_token(superuser, identifier=f"t-{number:02d}")
    client = bearer(admin_token)
    first = client.get(token_url("list")).json()
    assert len(first["results"]) == 20
    assert first["pagination"] == {
        "next": 2,
        "previous": 0,
        "count": 25,
        "current": 1,
        "total_pages": 2,
        "start_index": 1,
        "end_index": 20,
    }
    second = client.get(token_url("list"), {"page": 2}).json()
    assert len(second["results"]) == 5
    assert second["pagination"]["next"] == 0
    assert second["pagination"]["previous"] == 1
    assert second["pagination"]["start_index"] == 21
    walked = [row["identifier"] for row in first["results"] + second["results"]]
    assert sorted(walked) == sorted(Token.objects.values_list("identifier", flat=True))


def test_page_size_is_capped_at_100(bearer, admin_token, make_token, superuser):
    for number in range(101):
        make_token(superuser, identifier=f"t-{number:03d}")
    client = bearer(admin_token)
    assert len(client.get(token_url("list"), {"page_size": 5}).json()["results"]) == 5
    capped = client.get(token_url("list"), {"page_size": 1000}).json()
    assert len(capped["results"]) == 100
    assert capped["pagination"]["total_pages"] == 2


@pytest.mark.parametrize("page", ["0", "3", "abc"])
def test_page_out_of_range_is_404(page, bearer, admin_token):
    response = bearer(admin_token).get(token_url("list"), {"page": page})
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_expired_tokens_are_listed(bearer, admin_token, make_token, superuser, past):
    make_token(superuser, identifier="old", expires=past)
    assert "old" in listed(bearer(admin_token).get(token_url("list")))


def test_default_ordering_is_identifier(bearer, admin_token, make_token, superuser):
    for identifier in ("charlie", "alpha", "bravo"):
        make_token(superuser, identifier=identifier)
    assert listed(bearer(admin_token).get(token_url("list"))) == ["admin-api", "alpha", "bravo", "charlie"]


def test_ordering_parameter(bearer, admin_token, make_token, superuser):
    now = timezone.now()
    make_token(superuser, identifier="late", expires=now + timedelta(days=2))
    make_token(superuser, identifier="soon", expires=now + timedelta(days=1))
    response = bearer(admin_token).get(token_url("list"), {"ordering": "-identifier"})
    assert listed(response) == ["soon", "late", "admin-api"]
    response = bearer(admin_token).get(token_url("list"), {"ordering": "expires"})
    # admin-api never expires; where NULL sorts differs between databases, so leave it out.
    assert [i for i in listed(response) if i != "admin-api"] == ["soon", "late"]


def test_filters(bearer, admin_token, make_token, make_user, superuser):
    alice = make_user(username="alice")
    moment = timezone.now().replace(microsecond=0) + timedelta(days=3)
    make_token(alice, identifier="a-app", intent=TokenIntents.APP_PASSWORD, description="laptop")
    make_token(alice, identifier="a-exp", expires=moment, managed="goauthentik.io/x")
    make_token(superuser, identifier="s-forever", expiring=False, description="deploy bot")
    client = bearer(admin_token)

    def ids(**params):
        response = client.get(token_url("list"), params)
        assert response.status_code == 200, response.json()
        return sorted(listed(response))

    assert ids(identifier="a-app") == ["a-app"]
    assert ids(intent="app_password") == ["a-app"]
    assert ids(user__username="alice") == ["a-app", "a-exp"]
    assert ids(description="laptop") == ["a-app"]
    assert ids(expires=moment.isoformat()) == ["a-exp"]
    assert ids(expiring="false") == ["s-forever"]
    assert ids(managed="goauthentik.io/x") == ["a-exp"]
    assert ids(search="deploy") == ["s-forever"]
    assert ids(search="alice") == ["a-app", "a-exp"]
    assert ids(search="LAPTOP") == ["a-app"]


@pytest.mark.parametrize(("name", "value"), [("intent", "bogus"), ("expires", "yesterday")])
def test_malformed_filter_is_400_on_that_field(name, value, bearer, admin_token):
    response = bearer(admin_token).get(token_url("list"), {name: value})
    assert response.status_code == 400
    assert list(response.json()) == [name]


def test_list_never_contains_a_key(bearer, admin_token, make_token, make_user):
    tokens = [make_token(make_user()) for _ in range(3)]
    body = bearer(admin_token).get(token_url("list")).content.decode()
    for token in [*tokens, admin_token]:
        assert token.key not in body
    assert '"key"' not in body


def _tokens_with_owners_in_groups(count, make_user, make_group, make_token):
    for _ in range(count):
        owner = make_user()
        owner.groups.add(make_group(), make_group())
        make_token(owner)


@pytest.mark.parametrize("count", [3, 12])
def test_list_query_count_is_constant_for_a_superuser(
    count, bearer, admin_token, make_user, make_group, make_token, django_assert_num_queries
):
    _tokens_with_owners_in_groups(count, make_user, make_group, make_token)
    client = bearer(admin_token)
    # bearer lookup, COUNT, page of tokens joined with owners, owners' groups
    with django_assert_num_queries(4):
        response = client.get(token_url("list"))
    assert len(response.json()["results"]) == count + 1


@pytest.mark.parametrize("count", [3, 12])
def test_list_query_count_is_constant_for_a_user_with_object_permissions(
    count, make_user, make_group, make_token, client_of, django_assert_num_queries
):
    caller = make_user()
    _tokens_with_owners_in_groups(count, make_user, make_group, make_token)
    for token in Token.objects.all():
        assign_perm("authentik_core.view_token", caller, token)
    client = client_of(caller)
    # bearer lookup, global-permission check, COUNT, page of tokens joined with owners, owners' groups
    with django_assert_num_queries(5):
        response = client.get(token_url("list"))
    assert len(response.json()["results"]) == count + 1


# --- user_obj ---------------------------------------------------------------------------------------


def test_user_obj_carries_every_required_field(bearer, admin_token, make_user, make_group, make_token):
    owner = make_user(username="ada", name="Ada Lovelace", email="ada@example.test")
    group = make_group()
    owner.groups.add(group)
    token = make_token(owner, identifier="ada-ci")
    user_obj = bearer(admin_token).get(detail(token.identifier)).json()["user_obj"]
    assert set(user_obj) >= USER_REQUIRED
    assert user_obj["pk"] == owner.pk
    assert user_obj["username"] == "ada"
    assert user_obj["name"] == "Ada Lovelace"
    assert user_obj["is_superuser"] is False
    assert user_obj["uuid"] == str(owner.uuid)
    assert user_obj["uid"] == owner.uid
    assert user_obj["roles_obj"] == []
    assert user_obj["groups"] == [str(group_uuid(group))]
    assert user_obj["groups_obj"] == [
        {"pk": str(group_uuid(group)), "num_pk": group.pk, "name": group.name, "is_superuser": False, "attributes": {}}
    ]
    for stamp in ("date_joined", "password_change_date", "last_updated"):
        assert user_obj[stamp].endswith("Z") or "+" in user_obj[stamp]
    assert "password" not in user_obj


def test_avatar_is_a_local_svg_with_initials(bearer, admin_token, make_user, make_token):
    owner = make_user(name="ada lo<script>velace")
    token = make_token(owner)
    avatar = bearer(admin_token).get(detail(token.identifier)).json()["user_obj"]["avatar"]
    prefix = "data:image/svg+xml;base64,"
    assert avatar.startswith(prefix)
    svg = base64.b64decode(avatar.removeprefix(prefix)).decode()
    assert svg.startswith("<svg")
    assert ">AL</text>" in svg
    assert "<script" not in svg
    assert "http://" not in svg.replace("http://www.w3.org/2000/svg", "")


# --- create -----------------------------------------------------------------------------------------


def test_create_anonymous_is_403_and_creates_nothing(db):
    response = APIClient().post(token_url("list"), {"identifier": "x"}, format="json")
    assert response.status_code == 403
    assert response.json()["code"] == "not_authenticated"
    assert not Token.objects.filter(identifier="x").exists()


def test_user_creates_a_token_for_itself(make_user, client_of):
    alice = make_user()
    response = client_of(alice).post(token_url("list"), {"identifier": "alice-new"}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert set(body) == TOKEN_FIELDS
    token = Token.objects.get(identifier="alice-new")
    assert body["pk"] == str(token.pk)
    assert body["user"] == alice.pk
    assert body["user_obj"]["username"] == alice.username
    assert body["intent"] == "api"
    assert body["expiring"] is True
    assert body["expires"] is None
    assert token.user == alice
    assert len(token.key) == 60
    assert token.key not in response.content.decode()
    # The owner may read the key of what it created, and holds nothing else on it.
    assert get_perms(alice, token) == ["view_token_key"]


def test_created_key_authenticates(make_user, client_of, bearer):
    alice = make_user()
    client_of(alice).post(token_url("list"), {"identifier": "fresh"}, format="json")
    key = Token.objects.get(identifier="fresh").key
    assert bearer(key).get(token_url("list")).status_code == 200


def test_create_writes_one_model_created_event(make_user, client_of):
    alice = make_user()
    response = client_of(alice).post(
        token_url("list", mount="v3"), {"identifier": "evented"}, format="json", REMOTE_ADDR="203.0.113.9"
    )
    token = Token.objects.get(identifier="evented")
    # Plus the audited grant of view_token_key to the owner (core.object_permissions).
    assert sorted(Event.objects.values_list("action", flat=True)) == ["model_created", "model_updated"]
    (event,) = Event.objects.filter(action="model_created")
    assert event.action == "model_created"
    assert event.app == "authentik_core"
    assert event.user == {"pk": alice.pk, "username": alice.username, "email": alice.email}
    assert event.client_ip == "203.0.113.9"
    assert event.context["model"] == {
        "app": "authentik_core",
        "model_name": "token",
        "pk": token.pk.hex,
        "name": "evented",
    }
    assert event.context["http_request"]["path"] == "/api/v3/core/tokens/"
    assert token.key not in json.dumps(event.context) + response.content.decode()


def test_create_keeps_every_sent_field(make_user, client_of):
    alice = make_user()
    expires = (timezone.now() + timedelta(days=30)).replace(microsecond=0)
    body = {
        "identifier": "full",
        "intent": "app_password",
        "description": "laptop",
        "expires": expires.isoformat(),
        "expiring": False,
        "managed": "example.org/full",
        "user": alice.pk,
    }
    response = client_of(alice).post(token_url("list"), body, format="json")
    assert response.status_code == 201
    token = Token.objects.get(identifier="full")
    assert (token.intent, token.description, token.expires, token.expiring, token.managed) == (
        "app_password",
        "laptop",
        expires,
        False,
        "example.org/full",
    )


def test_non_superuser_cannot_create_for_another_user(make_user, client_of):
    alice, bob = make_user(), make_user()
    response = client_of(alice).post(token_url("list"), {"identifier": "for-bob", "user": bob.pk}, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["user"]
    assert not Token.objects.filter(identifier="for-bob").exists()
    assert Event.objects.count() == 0


def test_another_users_pk_and_an_unknown_pk_get_the_same_answer(make_user, client_of):
    """No user-existence oracle for non-superusers: another user's pk and a pk nobody has are one 400."""
    alice, bob = make_user(), make_user()
    client = client_of(alice)
    answers = [
        client.post(token_url("list"), {"identifier": "probe", "user": pk}, format="json")
        for pk in (bob.pk, bob.pk + 100000)
    ]
    assert [response.status_code for response in answers] == [400, 400]
    assert answers[0].json() == answers[1].json() == {"user": ["You can only create tokens for yourself."]}
    assert not Token.objects.filter(identifier="probe").exists()
    # The caller's own pk still works.
    assert client.post(token_url("list"), {"identifier": "mine", "user": alice.pk}, format="json").status_code == 201


def test_global_add_token_does_not_allow_creating_for_others(make_user, client_of):
    alice = make_user(perms=("authentik_core.add_token",))
    bob = make_user()
    response = client_of(alice).post(token_url("list"), {"identifier": "for-bob", "user": bob.pk}, format="json")
    assert response.status_code == 400


def test_superuser_creates_for_another_user_who_gets_view_token_key(bearer, admin_token, make_user):
    bob = make_user()
    response = bearer(admin_token).post(token_url("list"), {"identifier": "for-bob", "user": bob.pk}, format="json")
    assert response.status_code == 201
    token = Token.objects.get(identifier="for-bob")
    assert token.user == bob
    assert get_perms(bob, token) == ["view_token_key"]
    assert Event.objects.get(action="model_created").user["username"] == "root"
    grant = Event.objects.get(action="model_updated")
    assert grant.user["username"] == "root"
    assert grant.context["permission"] == "authentik_core.view_token_key"
    assert grant.context["grantee"] == {"type": "user", "pk": bob.pk, "username": bob.username}
    assert grant.context["granted"] is True


@pytest.mark.parametrize("intent", ["verification", "recovery", "bogus"])
def test_only_api_and_app_password_can_be_created(intent, bearer, admin_token):
    response = bearer(admin_token).post(token_url("list"), {"identifier": "x", "intent": intent}, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["intent"]
    assert not Token.objects.filter(identifier="x").exists()


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"identifier": ""},
        {"identifier": "has space"},
        {"identifier": "slash/y"},
        {"identifier": "a" * 256},
        {"identifier": None},
        {"identifier": "ok", "expires": "soon"},
        {"identifier": "ok", "user": 999999},
        {"identifier": "ok", "user": True},
        {"identifier": "ok", "managed": ""},
    ],
)
def test_invalid_create_bodies_are_400_and_create_nothing(body, bearer, admin_token):
    response = bearer(admin_token).post(token_url("list"), body, format="json")
    assert response.status_code == 400
    assert isinstance(response.json(), dict)
    assert Token.objects.count() == 1
    assert Event.objects.count() == 0


def test_duplicate_identifier_is_400_on_identifier(bearer, admin_token, make_token, make_user):
    make_token(make_user(), identifier="taken")
    response = bearer(admin_token).post(token_url("list"), {"identifier": "taken"}, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["identifier"]
    assert Event.objects.count() == 0


def test_duplicate_managed_is_400_on_managed(bearer, admin_token, make_token, make_user):
    make_token(make_user(), managed="m")
    response = bearer(admin_token).post(token_url("list"), {"identifier": "y", "managed": "m"}, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["managed"]
    assert not Token.objects.filter(identifier="y").exists()


def test_a_key_in_the_create_body_is_ignored(bearer, admin_token):
    response = bearer(admin_token).post(token_url("list"), {"identifier": "k", "key": "chosen-key"}, format="json")
    assert response.status_code == 201
    assert Token.objects.get(identifier="k").key != "chosen-key"


# --- retrieve ---------------------------------------------------------------------------------------


def test_retrieve_anonymous_is_403(make_token, make_user):
    token = make_token(make_user())
    assert APIClient().get(detail(token.identifier)).json()["code"] == "not_authenticated"


@pytest.mark.parametrize(
    ("caller_kind", "status"),
    [
        ("owner", 200),
        ("other", 404),
        ("object-view", 200),
        ("group-object-view", 200),
        ("global-view", 200),
        ("global-change-only", 404),
        ("superuser", 200),
    ],
)
def test_retrieve_visibility(caller_kind, status, make_user, make_group, make_token, client_of):
    owner = make_user()
    token = make_token(owner, identifier="target")
    caller = {
        "owner": lambda: owner,
        "superuser": lambda: make_user(superuser=True),
        "global-view": lambda: make_user(perms=("authentik_core.view_token",)),
        "global-change-only": lambda: make_user(perms=("authentik_core.change_token",)),
    }.get(caller_kind, make_user)()
    if caller_kind == "object-view":
        assign_perm("authentik_core.view_token", caller, token)
    if caller_kind == "group-object-view":
        group = make_group()
        caller.groups.add(group)
        assign_perm("authentik_core.view_token", group, token)
    response = client_of(caller).get(detail("target"))
    assert response.status_code == status
    if status == 200:
        assert response.json()["identifier"] == "target"
        assert token.key not in response.content.decode()
    else:
        assert response.json() == {"detail": "Not found.", "code": "not_found"}


def test_retrieve_unknown_is_404(bearer, admin_token):
    assert bearer(admin_token).get(detail("nope")).status_code == 404


def test_retrieve_expired_token_works(bearer, admin_token, make_token, superuser, past):
    token = make_token(superuser, expires=past)
    assert bearer(admin_token).get(detail(token.identifier)).status_code == 200


# --- update -----------------------------------------------------------------------------------------


def _caller(kind, owner, token, make_user):
    """A caller of the given kind with respect to ``token`` (owned by ``owner``)."""
    if kind == "owner":
        return owner
    if kind == "superuser":
        return make_user(superuser=True)
    caller = make_user()
    if kind == "visible-only":
        assign_perm("authentik_core.view_token", caller, token)
    elif kind.startswith("object-"):
        assign_perm(f"authentik_core.{kind.removeprefix('object-')}", caller, token)
    elif kind.startswith("global-"):
        # Global write permissions need visibility too (global view_token): invisible stays 404.
        for codename in kind.removeprefix("global-").split("+"):
            assign_perm(f"authentik_core.{codename}", caller)
    return caller


def _snapshot(token: Token) -> dict:
    token.refresh_from_db()
    return {f: getattr(token, f) for f in ("identifier", "intent", "user_id", "description", "expires", "expiring")}


UPDATE_MATRIX = [
    ("owner", 200),
    ("superuser", 200),
    ("object-change_token", 200),
    ("global-view_token+change_token", 200),
    ("other", 404),
    ("global-change_token", 404),
    ("visible-only", 403),
    ("object-delete_token", 403),
    ("object-view_token_key", 403),
]


@pytest.mark.parametrize("method", ["put", "patch"])
@pytest.mark.parametrize(("caller_kind", "status"), UPDATE_MATRIX)
def test_update_permissions(method, caller_kind, status, make_user, make_token, client_of):
    owner = make_user()
    token = make_token(owner, identifier="target", description="before")
    caller = _caller(caller_kind, owner, token, make_user)
    before = _snapshot(token)
    client = client_of(caller)
    response = getattr(client, method)(
        detail("target"), {"identifier": "target", "description": "after"}, format="json"
    )
    assert response.status_code == status
    token.refresh_from_db()
    if status == 200:
        assert token.description == "after"
        assert response.json()["description"] == "after"
        assert len(events("model_updated")) == 1
    else:
        assert response.json()["code"] == ("not_found" if status == 404 else "permission_denied")
        assert _snapshot(token) == before
        assert Event.objects.count() == 0


def test_group_object_change_permission_allows_update(make_user, make_group, make_token, client_of):
    caller = make_user()
    group = make_group()
    caller.groups.add(group)
    token = make_token(make_user(), identifier="target")
    assign_perm("authentik_core.change_token", group, token)
    assert client_of(caller).patch(detail("target"), {"description": "x"}, format="json").status_code == 200


@pytest.mark.parametrize("method", ["put", "patch"])
def test_update_anonymous_is_403(method, make_user, make_token):
    token = make_token(make_user(), identifier="target")
    before = _snapshot(token)
    response = getattr(APIClient(), method)(detail("target"), {"identifier": "target"}, format="json")
    assert response.status_code == 403
    assert response.json()["code"] == "not_authenticated"
    assert _snapshot(token) == before


def test_unpermitted_update_is_403_even_with_a_malformed_body(make_user, make_token, client_of):
    caller = make_user()
    token = make_token(make_user(), identifier="target")
    assign_perm("authentik_core.view_token", caller, token)
    response = client_of(caller).patch(detail("target"), {"expires": "garbage"}, format="json")
    assert response.status_code == 403


def test_patch_that_omits_user_and_intent_keeps_them(make_user, make_token, bearer, admin_token):
    owner = make_user()
    token = make_token(owner, identifier="target", intent=TokenIntents.APP_PASSWORD)
    response = bearer(admin_token).patch(detail("target"), {"description": "new"}, format="json")
    assert response.status_code == 200
    token.refresh_from_db()
    assert token.user == owner  # not the caller, as authentik would make it
    assert token.intent == "app_password"  # not reset to api
    assert response.json()["user"] == owner.pk


def test_put_never_resets_fields_it_did_not_send(make_user, make_token, bearer, admin_token):
    owner = make_user()
    expires = timezone.now() + timedelta(days=9)
    token = make_token(
        owner,
        identifier="target",
        intent=TokenIntents.APP_PASSWORD,
        description="kept",
        expires=expires,
        expiring=False,
        managed="kept/managed",
    )
    before = _snapshot(token)
    response = bearer(admin_token).put(detail("target"), {"identifier": "target"}, format="json")
    assert response.status_code == 200
    assert _snapshot(token) == before
    assert token.managed == "kept/managed"


@pytest.mark.parametrize("caller_kind", ["owner", "superuser"])
@pytest.mark.parametrize("method", ["put", "patch"])
def test_explicit_different_user_is_400_and_changes_nothing(method, caller_kind, make_user, make_token, client_of):
    owner, other = make_user(), make_user()
    token = make_token(owner, identifier="target", description="before")
    caller = owner if caller_kind == "owner" else make_user(superuser=True)
    before = _snapshot(token)
    response = getattr(client_of(caller), method)(
        detail("target"), {"identifier": "target", "user": other.pk, "description": "after"}, format="json"
    )
    assert response.status_code == 400
    assert list(response.json()) == ["user"]
    assert _snapshot(token) == before
    assert Event.objects.count() == 0


def test_explicit_same_user_is_accepted(make_user, make_token, client_of):
    owner = make_user()
    make_token(owner, identifier="target")
    response = client_of(owner).patch(detail("target"), {"user": owner.pk, "description": "x"}, format="json")
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("current", "requested", "status"),
    [
        ("api", "app_password", 200),
        ("app_password", "api", 200),
        ("api", "verification", 400),
        ("api", "recovery", 400),
        ("recovery", "recovery", 200),
        ("recovery", "api", 400),
        ("verification", "app_password", 400),
    ],
)
def test_intent_changes_only_between_api_and_app_password(
    current, requested, status, make_token, superuser, bearer, admin_token
):
    token = make_token(superuser, identifier="target", intent=current)
    response = bearer(admin_token).patch(detail("target"), {"intent": requested}, format="json")
    assert response.status_code == status
    token.refresh_from_db()
    assert token.intent == (requested if status == 200 else current)
    if status == 400:
        assert list(response.json()) == ["intent"]
        assert Event.objects.count() == 0


def test_update_saves_only_changed_fields(bearer, admin_token, make_token, superuser):
    make_token(superuser, identifier="target", description="before")
    with CaptureQueriesContext(connection) as queries:
        response = bearer(admin_token).patch(
            detail("target"), {"description": "after", "identifier": "target", "expiring": True}, format="json"
        )
    assert response.status_code == 200
    updates = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert len(updates) == 1
    assert '"description"' in updates[0]
    for column in ('"identifier"', '"expiring"', '"key"', '"intent"', '"user_id"', '"expires"'):
        assert column not in updates[0]
    (event,) = events("model_updated")
    assert event.context["changed_fields"] == ["description"]


def test_update_without_changes_writes_no_row_but_one_event(bearer, admin_token, make_token, superuser):
    make_token(superuser, identifier="target", description="same")
    with CaptureQueriesContext(connection) as queries:
        response = bearer(admin_token).patch(detail("target"), {"description": "same"}, format="json")
    assert response.status_code == 200
    assert not [q for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    (event,) = events("model_updated")
    assert event.context["changed_fields"] == []


def test_update_event_content(make_user, make_token, client_of):
    owner = make_user()
    token = make_token(owner, identifier="target")
    response = client_of(owner).patch(
        detail("target", "v3"),
        {"description": "d", "expires": (timezone.now() + timedelta(days=1)).isoformat()},
        format="json",
        HTTP_USER_AGENT="script/2",
    )
    assert response.status_code == 200
    (event,) = Event.objects.all()
    assert event.action == "model_updated"
    assert event.user["username"] == owner.username
    assert event.context["model"] == {
        "app": "authentik_core",
        "model_name": "token",
        "pk": token.pk.hex,
        "name": "target",
    }
    assert event.context["changed_fields"] == ["description", "expires"]
    assert event.context["http_request"]["user_agent"] == "script/2"
    assert token.key not in json.dumps(event.context)


def test_rename_through_update(bearer, admin_token, make_token, make_user, client_of):
    holder = make_user()
    token = make_token(make_user(), identifier="old-name")
    assign_perm("authentik_core.view_token", holder, token)
    response = bearer(admin_token).patch(detail("old-name"), {"identifier": "new-name"}, format="json")
    assert response.status_code == 200
    assert response.json()["identifier"] == "new-name"
    assert bearer(admin_token).get(detail("old-name")).status_code == 404
    # Object permissions follow the token, not its name.
    assert client_of(holder).get(detail("new-name")).status_code == 200
    assert events("model_updated")[0].context["changed_fields"] == ["identifier"]


def test_rename_to_a_taken_identifier_is_400(bearer, admin_token, make_token, superuser):
    make_token(superuser, identifier="first")
    make_token(superuser, identifier="second")
    response = bearer(admin_token).patch(detail("second"), {"identifier": "first"}, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["identifier"]
    assert Token.objects.filter(identifier="second").exists()
    assert Event.objects.count() == 0


def test_managed_taken_on_update_is_400(bearer, admin_token, make_token, superuser):
    make_token(superuser, identifier="first", managed="m")
    make_token(superuser, identifier="second")
    response = bearer(admin_token).patch(detail("second"), {"managed": "m"}, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["managed"]


def test_update_cannot_touch_the_key_or_read_only_fields(bearer, admin_token, make_token, superuser):
    token = make_token(superuser, identifier="target")
    old_key, old_pk = token.key, token.pk
    response = bearer(admin_token).patch(
        detail("target"), {"key": "new-key-value", "pk": "00000000-0000-0000-0000-000000000000"}, format="json"
    )
    assert response.status_code == 200
    token.refresh_from_db()
    assert (token.key, token.pk) == (old_key, old_pk)


def test_expired_token_can_be_extended(bearer, admin_token, make_token, superuser, past):
    token = make_token(superuser, identifier="target", expires=past)
    later = timezone.now() + timedelta(days=1)
    response = bearer(admin_token).patch(detail("target"), {"expires": later.isoformat()}, format="json")
    assert response.status_code == 200
    token.refresh_from_db()
    assert not token.is_expired


def test_update_unknown_is_404(bearer, admin_token):
    assert bearer(admin_token).patch(detail("nope"), {"description": "x"}, format="json").status_code == 404


# --- delete -----------------------------------------------------------------------------------------

DELETE_MATRIX = [
    ("owner", 204),
    ("superuser", 204),
    ("object-delete_token", 204),
    ("global-view_token+delete_token", 204),
    ("other", 404),
    ("global-delete_token", 404),
    ("visible-only", 403),
    ("object-change_token", 403),
]


@pytest.mark.parametrize(("caller_kind", "status"), DELETE_MATRIX)
def test_delete_permissions(caller_kind, status, make_user, make_token, client_of):
    owner = make_user()
    token = make_token(owner, identifier="target")
    caller = _caller(caller_kind, owner, token, make_user)
    response = client_of(caller).delete(detail("target"))
    assert response.status_code == status
    exists = Token.objects.filter(identifier="target").exists()
    if status == 204:
        assert response.content == b""
        assert not exists
        assert len(events("model_deleted")) == 1
    else:
        assert exists
        assert response.json()["code"] == ("not_found" if status == 404 else "permission_denied")
        assert Event.objects.count() == 0


def test_delete_anonymous_is_403(make_user, make_token):
    make_token(make_user(), identifier="target")
    assert APIClient().delete(detail("target")).status_code == 403
    assert Token.objects.filter(identifier="target").exists()


def test_delete_removes_the_tokens_object_permissions_only(bearer, admin_token, make_user, make_group, make_token):
    holder, group = make_user(), make_group()
    doomed = make_token(make_user(), identifier="doomed")
    kept = make_token(make_user(), identifier="kept")
    for token in (doomed, kept):
        assign_perm("authentik_core.view_token_key", holder, token)
        assign_perm("authentik_core.set_token_key", group, token)
    assert bearer(admin_token).delete(detail("doomed")).status_code == 204
    assert not UserObjectPermission.objects.filter(object_pk=str(doomed.pk)).exists()
    assert not GroupObjectPermission.objects.filter(object_pk=str(doomed.pk)).exists()
    assert UserObjectPermission.objects.filter(object_pk=str(kept.pk)).count() == 1
    assert GroupObjectPermission.objects.filter(object_pk=str(kept.pk)).count() == 1


def test_delete_event_content(bearer, admin_token, make_token, make_user):
    token = make_token(make_user(), identifier="doomed")
    bearer(admin_token).delete(detail("doomed"), REMOTE_ADDR="192.0.2.4")
    (event,) = Event.objects.all()
    assert event.action == "model_deleted"
    assert event.client_ip == "192.0.2.4"
    assert event.user["username"] == "root"
    assert event.context["model"] == {
        "app": "authentik_core",
        "model_name": "token",
        "pk": token.pk.hex,
        "name": "doomed",
    }
    assert token.key not in json.dumps(event.context)


def test_failing_event_write_rolls_the_delete_back(admin_token, make_token, make_user):
    token = make_token(make_user(), identifier="doomed")
    assign_perm("authentik_core.view_token_key", make_user(), token)
    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {admin_token.key}")
    with mock.patch("core.services.event_create", side_effect=RuntimeError("audit store down")):
        response = client.delete(detail("doomed"))
    assert response.status_code == 500
    assert Token.objects.filter(identifier="doomed").exists()
    assert UserObjectPermission.objects.filter(object_pk=str(token.pk)).exists()


def test_failing_event_write_rolls_the_update_and_create_back(admin_token, make_token, superuser):
    make_token(superuser, identifier="target", description="before")
    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {admin_token.key}")
    with mock.patch("core.services.event_create", side_effect=RuntimeError("audit store down")):
        assert client.patch(detail("target"), {"description": "after"}, format="json").status_code == 500
        assert client.post(token_url("list"), {"identifier": "ghost"}, format="json").status_code == 500
    assert Token.objects.get(identifier="target").description == "before"
    assert not Token.objects.filter(identifier="ghost").exists()


# --- view_key ---------------------------------------------------------------------------------------

VIEW_KEY_MATRIX = [
    ("superuser", 200),
    ("object-view_token_key", 200),
    ("global-view_token_key", 200),
    ("owner", 403),  # ownership alone does not reveal keys; API-created tokens grant the permission
    ("visible-only", 403),
    ("object-change_token", 403),
    ("other", 403),
]


@pytest.mark.parametrize(("caller_kind", "status"), VIEW_KEY_MATRIX)
def test_view_key_permissions(caller_kind, status, make_user, make_token, client_of):
    owner = make_user()
    token = make_token(owner, identifier="target")
    caller = _caller(caller_kind, owner, token, make_user)
    response = client_of(caller).get(token_url("view-key", "target"))
    assert response.status_code == status
    if status == 200:
        assert response.json() == {"key": token.key}
        assert response["Cache-Control"] == "no-store"
        assert len(events("secret_view")) == 1
    else:
        assert response.json()["code"] == "permission_denied"
        assert token.key not in response.content.decode()
        assert Event.objects.count() == 0


def test_view_key_group_object_permission(make_user, make_group, make_token, client_of):
    caller, group = make_user(), make_group()
    caller.groups.add(group)
    token = make_token(make_user(), identifier="target")
    assign_perm("authentik_core.view_token_key", group, token)
    assert client_of(caller).get(token_url("view-key", "target")).json() == {"key": token.key}


def test_creator_can_view_the_key_of_what_it_created(make_user, client_of):
    alice = make_user()
    client = client_of(alice)
    client.post(token_url("list"), {"identifier": "mine"}, format="json")
    response = client.get(token_url("view-key", "mine"))
    assert response.status_code == 200
    assert response.json()["key"] == Token.objects.get(identifier="mine").key


def test_view_key_anonymous_is_403(make_user, make_token):
    make_token(make_user(), identifier="target")
    response = APIClient().get(token_url("view-key", "target"))
    assert response.status_code == 403
    assert response.json()["code"] == "not_authenticated"


def test_view_key_unpermitted_cannot_tell_whether_an_identifier_exists(make_user, make_token, client_of):
    make_token(make_user(), identifier="target")
    client = client_of(make_user())
    existing = client.get(token_url("view-key", "target"))
    missing = client.get(token_url("view-key", "missing"))
    assert existing.status_code == missing.status_code == 403
    assert existing.json() == missing.json()


def test_view_key_expired_or_unknown_is_404_without_event(bearer, admin_token, make_token, superuser, past):
    make_token(superuser, identifier="old", expires=past)
    for identifier in ("old", "missing"):
        response = bearer(admin_token).get(token_url("view-key", identifier))
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"
    assert Event.objects.count() == 0


def test_view_key_of_non_expiring_token_with_past_date_works(bearer, admin_token, make_token, superuser, past):
    token = make_token(superuser, identifier="kept", expires=past, expiring=False)
    assert bearer(admin_token).get(token_url("view-key", "kept")).json() == {"key": token.key}


def test_view_key_event_content(bearer, admin_token, make_token, make_user):
    token = make_token(make_user(), identifier="target")
    bearer(admin_token).get(token_url("view-key", "target", "v3"), REMOTE_ADDR="198.51.100.3")
    (event,) = Event.objects.all()
    assert event.action == "secret_view"
    assert event.app == "authentik_core"
    assert event.user["username"] == "root"
    assert event.client_ip == "198.51.100.3"
    assert event.context["secret"] == {
        "app": "authentik_core",
        "model_name": "token",
        "pk": token.pk.hex,
        "name": "target",
    }
    assert event.context["http_request"]["path"] == "/api/v3/core/tokens/target/view_key/"
    assert token.key not in json.dumps(event.context)


def test_view_key_without_its_event_returns_no_key(admin_token, make_token, superuser):
    token = make_token(superuser, identifier="target")
    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {admin_token.key}")
    if fastpath.enabled():
        # One statement inserts the event and reads the key: an INSERT that fails fails the statement.
        real = fastpath._event_params

        def failing(*args: Any, **kwargs: Any) -> dict[str, Any]:
            return {**real(*args, **kwargs), "event_client_ip": "not an address"}

        audit_down = mock.patch("core.fastpath._event_params", side_effect=failing)
    else:
        audit_down = mock.patch("core.services.event_create", side_effect=RuntimeError("audit store down"))
    with audit_down:
        response = client.get(token_url("view-key", "target"))
    assert response.status_code == 500
    assert token.key not in response.content.decode()
    assert not Event.objects.filter(action="secret_view").exists()


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_view_key_other_methods_are_405(method, bearer, admin_token):
    response = getattr(bearer(admin_token), method)(token_url("view-key", "admin-api"))
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


@pytest.mark.django_db(transaction=True)
@pytest.mark.django_db(transaction=True)  # autocommit, as in production: no SAVEPOINT statements
def test_view_key_query_count_with_object_permission(make_user, make_token, client_of, django_assert_num_queries):
    caller = make_user()
    make_token(make_user(), identifier="target")
    assign_perm("authentik_core.view_token_key", caller, Token.objects.get(identifier="target"))
    client = client_of(caller)
    # Fast path (PostgreSQL): bearer lookup, one statement that locks, decides, audits and reads the key.
    # Contract path: bearer lookup, BEGIN, token (locked), permission on it, event insert, COMMIT.
    with django_assert_num_queries(2 if fastpath.enabled() else 6):
        assert client.get(token_url("view-key", "target")).status_code == 200


# --- used_by ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("caller_kind", "status"), [("owner", 200), ("visible-only", 200), ("other", 404)])
def test_used_by(caller_kind, status, make_user, make_token, client_of):
    owner = make_user()
    token = make_token(owner, identifier="target")
    response = client_of(_caller(caller_kind, owner, token, make_user)).get(token_url("used-by", "target"))
    assert response.status_code == status
    if status == 200:
        assert response.json() == []


def test_used_by_anonymous_is_403(make_user, make_token):
    make_token(make_user(), identifier="target")
    assert APIClient().get(token_url("used-by", "target")).status_code == 403


# --- secrets never leak -----------------------------------------------------------------------------


def test_no_key_in_any_event_log_line_or_response_but_view_key(bearer, make_user, make_token, caplog):
    caplog.set_level(logging.DEBUG)
    caller = make_user(superuser=True)
    caller_token = make_token(caller, identifier="caller")
    client = bearer(caller_token)
    bodies = []
    bodies.append(client.post(token_url("list"), {"identifier": "life"}, format="json"))
    bodies.append(client.get(token_url("list")))
    bodies.append(client.get(detail("life")))
    bodies.append(client.put(detail("life"), {"identifier": "life", "description": "d"}, format="json"))
    bodies.append(client.patch(detail("life"), {"identifier": "life2"}, format="json"))
    life_key = Token.objects.get(identifier="life2").key
    revealed = client.get(token_url("view-key", "life2"))
    bodies.append(client.get(token_url("used-by", "life2")))
    bodies.append(client.post(token_url("list"), {"identifier": "life2"}, format="json"))  # 400
    bodies.append(client.patch(detail("life2"), {"user": make_user().pk}, format="json"))  # 400
    bodies.append(client.delete(detail("life2")))
    bodies.append(bearer(life_key).get(token_url("list")))  # 403: deleted key
    bodies.append(client.get(reverse("event-list")))

    assert revealed.json() == {"key": life_key}
    everything = (
        json.dumps(list(Event.objects.values()), default=str)
        + caplog.text
        + "".join(response.content.decode() for response in bodies)
    )
    for secret in (life_key, caller_token.key):
        assert secret not in everything
    assert Event.objects.count() == 6  # created, view_token_key granted, updated, updated, secret_view, deleted


def test_key_of_every_token_never_in_event_list(bearer, admin_token, make_token, make_user):
    token = make_token(make_user(), identifier="target")
    client = bearer(admin_token)
    client.post(reverse("token-set-key", kwargs={"identifier": "target"}), {"key": generate_key()}, format="json")
    client.get(token_url("view-key", "target"))
    token.refresh_from_db()
    body = client.get(reverse("event-list")).content.decode()
    assert token.key not in body
    assert admin_token.key not in body
