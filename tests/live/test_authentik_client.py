"""authentik's official generated client (``authentik-client``, pinned) against a live server.

Its pydantic models are strict: a missing required field or a wrong type in any response fails the
call. Every token operation and the event endpoints run over both base paths (``/api/v3`` and the
root), and errors must surface as the client's own exception classes.
"""

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from authentik_client import (
    ApiClient,
    Configuration,
    CoreApi,
    EventActions,
    EventRequest,
    EventsApi,
    IntentEnum,
    PaginatedEventList,
    PaginatedTokenList,
    PatchedTokenRequest,
    TokenRequest,
    TokenSetKeyRequest,
)
from authentik_client import Token as ClientToken
from authentik_client.exceptions import ApiException, BadRequestException, ForbiddenException, NotFoundException
from django.contrib.auth.models import Group, Permission
from guardian.shortcuts import assign_perm

from core.models import Token, TokenIntents, User, generate_key
from events.models import Event, EventAction

pytestmark = [pytest.mark.compat, pytest.mark.live, pytest.mark.django_db(transaction=True)]


@pytest.fixture(params=["/api/v3", ""], ids=["api-v3", "root"])
def base_url(request, live_server) -> str:
    return live_server.url + request.param


@pytest.fixture
def connect(base_url) -> Callable[[str | None], ApiClient]:
    """An ``ApiClient`` for ``base_url`` that sends ``Bearer <key>`` (or nothing for ``None``)."""
    clients: list[ApiClient] = []

    def make(key: str | None) -> ApiClient:
        client = ApiClient(Configuration(host=base_url, access_token=key))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.rest_client.pool_manager.clear()  # drop kept-alive sockets to the live server


@pytest.fixture
def akadmin() -> User:
    # Seeded the way `manage.py shell` would: plain ORM calls, no service functions.
    user = User.objects.create_superuser("akadmin", "akadmin@example.test", None, name="authentik Default Admin")
    token = Token(identifier="akadmin-api", key=generate_key(), user=user, intent=TokenIntents.API, expiring=False)
    token.save()
    return user


@pytest.fixture
def core(connect, akadmin) -> CoreApi:
    return CoreApi(connect(Token.objects.get(identifier="akadmin-api").key))


@pytest.fixture
def events_api(connect, akadmin) -> EventsApi:
    return EventsApi(connect(Token.objects.get(identifier="akadmin-api").key))


def plain_user(username: str) -> tuple[User, str]:
    """A user without any permission and the key of its API token."""
    user = User.objects.create_user(username)
    key = generate_key()
    Token(identifier=f"{username}-api", key=key, user=user).save()
    return user, key


# --- tokens: every operation ------------------------------------------------------------------------


def test_token_lifecycle(core, connect, akadmin):
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
    created = core.core_tokens_create(
        TokenRequest(identifier="client-made", description="from the client", expires=expires, intent=IntentEnum.API)
    )
    assert isinstance(created, ClientToken)
    assert isinstance(created.pk, UUID)
    assert created.identifier == "client-made"
    assert created.user == akadmin.pk
    assert created.user_obj.username == "akadmin"
    assert created.user_obj.is_superuser is True
    assert created.user_obj.uuid == akadmin.uuid
    assert created.user_obj.avatar.startswith("data:image/svg+xml")
    assert created.expires == expires
    assert created.intent == IntentEnum.API

    page = core.core_tokens_list(identifier="client-made")
    assert isinstance(page, PaginatedTokenList)
    assert page.pagination.count == 1
    assert [t.identifier for t in page.results] == ["client-made"]

    assert core.core_tokens_retrieve("client-made").description == "from the client"

    updated = core.core_tokens_update("client-made", TokenRequest(identifier="client-made", description="put"))
    assert updated.description == "put"
    assert updated.user == akadmin.pk
    assert updated.expires == expires  # not sent, not reset

    patched = core.core_tokens_partial_update("client-made", PatchedTokenRequest(intent=IntentEnum.APP_PASSWORD))
    assert patched.intent == IntentEnum.APP_PASSWORD
    assert patched.description == "put"

    key = core.core_tokens_view_key_retrieve("client-made").key
    assert key == Token.objects.get(identifier="client-made").key

    new_key = generate_key()
    assert core.core_tokens_set_key_create("client-made", TokenSetKeyRequest(key=new_key)) is None
    assert Token.objects.get(identifier="client-made").key == new_key
    assert core.core_tokens_view_key_retrieve("client-made").key == new_key

    assert core.core_tokens_used_by_list("client-made") == []

    assert core.core_tokens_destroy("client-made") is None
    with pytest.raises(NotFoundException):
        core.core_tokens_retrieve("client-made")

    # The audited grant of view_token_key to the owner on create (README, "Object permissions").
    assert Event.objects.filter(context__has_key="permission").count() == 1
    actions = [e.action for e in Event.objects.exclude(context__has_key="permission").order_by("created")]
    assert actions == [
        "model_created",
        "model_updated",
        "model_updated",
        "secret_view",
        "model_updated",
        "secret_view",
        "model_deleted",
    ]


def test_a_rotated_key_authenticates_through_the_client(core, connect):
    core.core_tokens_create(TokenRequest(identifier="rotated"))
    new_key = generate_key()
    core.core_tokens_set_key_create("rotated", TokenSetKeyRequest(key=new_key))
    listing = CoreApi(connect(new_key)).core_tokens_list()
    assert "rotated" in [t.identifier for t in listing.results]


def test_list_parameters(core, akadmin):
    for name in ("b-token", "a-token", "c-token"):
        Token(identifier=name, key=generate_key(), user=akadmin, description=f"about {name}").save()
    page = core.core_tokens_list(page=1, page_size=2, ordering="-identifier")
    assert [t.identifier for t in page.results] == ["c-token", "b-token"]
    assert page.pagination.next == 2
    assert page.pagination.total_pages == 2
    assert [t.identifier for t in core.core_tokens_list(search="about a-token").results] == ["a-token"]
    assert core.core_tokens_list(user__username="akadmin", expiring=False).pagination.count == 1
    assert core.core_tokens_list(intent=IntentEnum.APP_PASSWORD).results == []
    moment = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    Token(identifier="dated", key=generate_key(), user=akadmin, expires=moment).save()
    assert [t.identifier for t in core.core_tokens_list(expires=moment).results] == ["dated"]


def test_tokens_of_users_with_groups_and_odd_fields_parse(core):
    owner = User.objects.create_user("grouped")  # no name, no email, never logged in
    group = Group.objects.create(name="ops")
    owner.groups.add(group)
    Token(
        identifier="grouped-token", key=generate_key(), user=owner, expires=datetime.now(UTC) - timedelta(days=1)
    ).save()
    Token(identifier="verify-me", key=generate_key(), user=owner, intent=TokenIntents.VERIFICATION).save()
    token = core.core_tokens_retrieve("grouped-token")
    assert token.user_obj.name == ""
    assert token.user_obj.last_login is None
    assert token.user_obj.roles_obj == []
    (partial_group,) = token.user_obj.groups_obj
    assert partial_group.name == "ops"
    assert partial_group.num_pk == group.pk
    assert isinstance(partial_group.pk, UUID)
    assert core.core_tokens_retrieve("verify-me").intent == IntentEnum.VERIFICATION
    assert core.core_tokens_list(page_size=100).pagination.count == 3


def test_non_superuser_own_tokens(connect, akadmin):
    alice, key = plain_user("alice")
    api = CoreApi(connect(key))
    created = api.core_tokens_create(TokenRequest(identifier="alice-cli"))
    assert created.user == alice.pk
    # The creator holds view_token_key on what it created.
    assert api.core_tokens_view_key_retrieve("alice-cli").key == Token.objects.get(identifier="alice-cli").key
    assert {t.identifier for t in api.core_tokens_list().results} == {"alice-api", "alice-cli"}
    assert api.core_tokens_partial_update("alice-cli", PatchedTokenRequest(description="mine")).description == "mine"
    api.core_tokens_destroy("alice-cli")
    assert not Token.objects.filter(identifier="alice-cli").exists()


# --- tokens: errors surface as the client's exceptions ---------------------------------------------


def test_anonymous_and_bad_credentials_are_forbidden(connect, akadmin):
    for key in (None, "not-a-real-key"):
        api = CoreApi(connect(key))
        with pytest.raises(ForbiddenException) as info:
            api.core_tokens_list()
        assert info.value.status == 403
        expected = "not_authenticated" if key is None else "authentication_failed"
        assert json.loads(info.value.body)["code"] == expected
        with pytest.raises(ForbiddenException):
            api.core_tokens_set_key_create("akadmin-api", TokenSetKeyRequest(key=generate_key()))
        with pytest.raises(ForbiddenException):
            EventsApi(connect(key)).events_events_list()


def test_unpermitted_user_errors(connect, akadmin):
    _, key = plain_user("mallory")
    visible = Token(identifier="shared", key=generate_key(), user=akadmin)
    visible.save()
    assign_perm("authentik_core.view_token", User.objects.get(username="mallory"), visible)
    api = CoreApi(connect(key))
    with pytest.raises(NotFoundException):
        api.core_tokens_retrieve("akadmin-api")
    with pytest.raises(NotFoundException):
        api.core_tokens_destroy("akadmin-api")
    assert api.core_tokens_retrieve("shared").identifier == "shared"
    with pytest.raises(ForbiddenException):
        api.core_tokens_partial_update("shared", PatchedTokenRequest(description="x"))
    with pytest.raises(ForbiddenException):
        api.core_tokens_update("shared", TokenRequest(identifier="shared"))
    with pytest.raises(ForbiddenException):
        api.core_tokens_destroy("shared")
    with pytest.raises(ForbiddenException):
        api.core_tokens_view_key_retrieve("shared")
    with pytest.raises(ForbiddenException):
        api.core_tokens_set_key_create("shared", TokenSetKeyRequest(key=generate_key()))
    with pytest.raises(BadRequestException):
        api.core_tokens_create(TokenRequest(identifier="for-admin", user=akadmin.pk))
    with pytest.raises(ForbiddenException):
        EventsApi(connect(key)).events_events_list()
    assert Event.objects.count() == 0


def test_bad_requests(core, akadmin):
    other = User.objects.create_user("other")
    with pytest.raises(BadRequestException) as info:
        core.core_tokens_create(TokenRequest(identifier="akadmin-api"))
    assert "identifier" in info.value.body
    with pytest.raises(BadRequestException):
        core.core_tokens_create(TokenRequest(identifier="recover", intent=IntentEnum.RECOVERY))
    with pytest.raises(BadRequestException):
        core.core_tokens_partial_update("akadmin-api", PatchedTokenRequest(user=other.pk))
    with pytest.raises(BadRequestException):
        core.core_tokens_set_key_create("akadmin-api", TokenSetKeyRequest(key="has a space"))
    assert Token.objects.get(identifier="akadmin-api").user == akadmin


def test_not_found(core, events_api, akadmin):
    Token(identifier="expired", key=generate_key(), user=akadmin, expires=datetime.now(UTC) - timedelta(hours=1)).save()
    with pytest.raises(NotFoundException):
        core.core_tokens_view_key_retrieve("expired")
    with pytest.raises(NotFoundException):
        core.core_tokens_set_key_create("expired", TokenSetKeyRequest(key=generate_key()))
    with pytest.raises(NotFoundException):
        core.core_tokens_set_key_create("missing", TokenSetKeyRequest(key=generate_key()))
    with pytest.raises(NotFoundException):
        core.core_tokens_used_by_list("missing")
    with pytest.raises(NotFoundException):
        events_api.events_events_retrieve(UUID(int=0))


# --- events -----------------------------------------------------------------------------------------


def test_events_list_retrieve_actions_volume(core, events_api):
    created = core.core_tokens_create(TokenRequest(identifier="audited"))
    core.core_tokens_partial_update("audited", PatchedTokenRequest(description="d"))
    core.core_tokens_view_key_retrieve("audited")

    page = events_api.events_events_list(context_model_pk=str(created.pk), ordering="created")
    assert isinstance(page, PaginatedEventList)
    # Leaving out the audited grant of view_token_key to the owner (README, "Object permissions").
    writes = [e for e in page.results if "permission" not in e.context]
    assert [e.action for e in writes] == [EventActions.MODEL_CREATED, EventActions.MODEL_UPDATED]
    assert len(page.results) == 3
    first = writes[0]
    assert first.user["username"] == "akadmin"
    assert first.app == "authentik_core"
    assert first.client_ip in {"127.0.0.1", "::1"}  # the live server listens on localhost

    assert events_api.events_events_retrieve(first.pk).pk == first.pk

    filtered = events_api.events_events_list(
        actions=[EventActions.SECRET_VIEW], username="akadmin", client_ip=first.client_ip, page_size=5
    )
    assert [e.action for e in filtered.results] == [EventActions.SECRET_VIEW]
    assert events_api.events_events_list(action="model", search="audited").pagination.count == 3

    actions = events_api.events_events_actions_list()
    # Every action of the reference schema; the pinned client knows a few newer ones too.
    assert [a.component for a in actions] == list(EventAction.values)
    assert set(EventAction.values) <= {e.value for e in EventActions}

    volume = events_api.events_events_volume_list(history_days=7)
    assert {(v.action, v.count) for v in volume} == {
        (EventActions.MODEL_CREATED, 1),
        (EventActions.MODEL_UPDATED, 2),  # the update and the grant
        (EventActions.SECRET_VIEW, 1),
    }
    assert all(v.time.tzinfo is not None for v in volume)
    assert events_api.events_events_volume_list(action="secret")[0].count == 1


def test_events_are_read_only_through_the_client(events_api):
    with pytest.raises(ApiException) as info:
        events_api.events_events_create(EventRequest(action=EventActions.LOGIN, app="x"))
    assert info.value.status == 405
    assert Event.objects.count() == 0


def test_view_event_holder_reads_events(connect, akadmin):
    user, key = plain_user("auditor")
    user.user_permissions.add(Permission.objects.get(codename="view_event"))
    Event.objects.create(action="login", app="authentik_core", user={"username": "someone"})
    page = EventsApi(connect(key)).events_events_list()
    assert page.pagination.count == 1
    assert page.results[0].action == EventActions.LOGIN


# --- additions (rotation, usage, IP allowlists): the unchanged client still works ------------------


def test_tokens_with_usage_and_allowlists_deserialize_and_client_writes_keep_them(core, akadmin):
    used = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    Token(
        identifier="tracked",
        key=generate_key(),
        user=akadmin,
        last_used=used,
        last_used_ip="2001:db8::7",
        allowed_ips=["127.0.0.0/8", "::1/128"],
    ).save()
    assert core.core_tokens_retrieve("tracked").identifier == "tracked"
    listed = core.core_tokens_list(identifier="tracked").results
    assert [t.identifier for t in listed] == ["tracked"]
    # The client's models do not know the new fields; its writes leave them alone.
    core.core_tokens_partial_update("tracked", PatchedTokenRequest(description="patched"))
    core.core_tokens_update("tracked", TokenRequest(identifier="tracked", description="put"))
    token = Token.objects.get(identifier="tracked")
    assert token.description == "put"
    assert token.allowed_ips == ["127.0.0.0/8", "::1/128"]


def test_rotate_over_plain_http_and_the_client_keeps_working(base_url, connect, core, akadmin):
    import requests

    core.core_tokens_create(TokenRequest(identifier="to-rotate"))
    old_key = core.core_tokens_view_key_retrieve("to-rotate").key
    admin_key = Token.objects.get(identifier="akadmin-api").key
    response = requests.post(
        f"{base_url}/core/tokens/to-rotate/rotate/",
        json={"grace_seconds": 600},
        headers={"Authorization": f"Bearer {admin_key}"},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    new_key = response.json()["key"]
    # Both keys authenticate through the client during the grace period; the new one can self-rotate.
    assert "to-rotate" in [t.identifier for t in CoreApi(connect(new_key)).core_tokens_list().results]
    assert "to-rotate" in [t.identifier for t in CoreApi(connect(old_key)).core_tokens_list().results]
    again = requests.post(
        f"{base_url}/core/tokens/to-rotate/rotate/", headers={"Authorization": f"Bearer {new_key}"}, timeout=10
    )
    assert again.status_code == 200
    with pytest.raises(ForbiddenException):
        CoreApi(connect(new_key)).core_tokens_list()  # replaced without grace
    assert core.core_tokens_retrieve("to-rotate").identifier == "to-rotate"
    assert Event.objects.filter(action=EventAction.SECRET_ROTATE).count() == 2
