"""The read-only audit-event API: list, retrieve, actions, volume; who may read it; filters."""

import uuid
from datetime import datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from guardian.shortcuts import assign_perm
from rest_framework.test import APIClient

from events.models import Event, EventAction

VIEW_EVENT = "authentik_events.view_event"
EVENT_FIELDS = {"pk", "user", "action", "app", "context", "client_ip", "created", "expires", "brand"}


def event_url(name: str, event_uuid: object = None, mount: str = "") -> str:
    prefix = "v3:" if mount == "v3" else ""
    kwargs = {"event_uuid": str(event_uuid)} if event_uuid is not None else {}
    return reverse(f"{prefix}event-{name}", kwargs=kwargs)


def make_event(action: str = EventAction.MODEL_UPDATED, *, created=None, **fields) -> Event:
    fields.setdefault("app", "authentik_core")
    fields.setdefault("user", {"pk": 1, "username": "root", "email": "root@example.test"})
    event = Event.objects.create(action=action, **fields)
    if created is not None:
        Event.objects.filter(pk=event.pk).update(created=created)
        event.refresh_from_db()
    return event


@pytest.fixture
def reader(make_user, make_token, bearer) -> APIClient:
    """A client of a user holding the global ``view_event`` permission (not a superuser)."""
    return bearer(make_token(make_user(perms=(VIEW_EVENT,)), identifier="reader"))


# --- routes and permissions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "arg", "path"),
    [
        ("list", None, "events/events/"),
        ("detail", "3f1e0c59-0000-4000-8000-000000000000", "events/events/3f1e0c59-0000-4000-8000-000000000000/"),
        ("actions", None, "events/events/actions/"),
        ("volume", None, "events/events/volume/"),
    ],
)
def test_routes_are_served_at_root_and_under_api_v3(name, arg, path):
    assert event_url(name, arg) == "/" + path
    assert event_url(name, arg, "v3") == "/api/v3/" + path


ENDPOINTS = ["list", "detail", "actions", "volume"]


def _get(client: APIClient, name: str, event: Event, mount: str = ""):
    return client.get(event_url(name, event.pk if name == "detail" else None, mount))


@pytest.mark.parametrize("name", ENDPOINTS)
def test_anonymous_is_403_not_authenticated(name, db):
    response = _get(APIClient(), name, make_event())
    assert response.status_code == 403
    assert response.json()["code"] == "not_authenticated"


@pytest.mark.parametrize("name", ENDPOINTS)
def test_authenticated_without_view_event_is_403(name, make_user, make_token, bearer):
    caller = make_user(perms=("authentik_core.view_token", "authentik_core.view_token_key"))
    response = _get(bearer(make_token(caller)), name, make_event())
    assert response.status_code == 403
    assert response.json() == {
        "detail": "You do not have permission to perform this action.",
        "code": "permission_denied",
    }


@pytest.mark.parametrize("name", ENDPOINTS)
def test_object_permission_on_an_event_is_not_enough(name, make_user, make_token, bearer):
    caller = make_user()
    event = make_event()
    assign_perm(VIEW_EVENT, caller, event)
    assert _get(bearer(make_token(caller)), name, event).status_code == 403


@pytest.mark.parametrize("mount", ["", "v3"])
@pytest.mark.parametrize("holder", ["superuser", "user-perm", "group-perm"])
@pytest.mark.parametrize("name", ENDPOINTS)
def test_superusers_and_view_event_holders_may_read(name, holder, mount, make_user, make_group, make_token, bearer):
    if holder == "superuser":
        caller = make_user(superuser=True)
    elif holder == "user-perm":
        caller = make_user(perms=(VIEW_EVENT,))
    else:
        caller = make_user()
        caller.groups.add(make_group(VIEW_EVENT))
    assert _get(bearer(make_token(caller)), name, make_event(), mount).status_code == 200


def test_inactive_user_session_is_refused(make_user):
    caller = make_user(superuser=True)
    client = APIClient()
    client.force_authenticate(caller)
    caller.is_active = False
    caller.save()
    assert client.get(event_url("list")).status_code == 403


@pytest.mark.parametrize(
    ("method", "name"),
    [("post", "list"), ("put", "detail"), ("patch", "detail"), ("delete", "detail"), ("post", "actions")],
)
def test_the_api_is_read_only(method, name, bearer, admin_token):
    event = make_event()
    url = event_url(name, event.pk if name == "detail" else None)
    response = getattr(bearer(admin_token), method)(url, {"action": "login", "app": "x"}, format="json")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
    assert Event.objects.count() == 1
    event.refresh_from_db()
    assert event.action == "model_updated"


@pytest.mark.parametrize(("method", "name"), [("post", "list"), ("delete", "detail")])
def test_writes_by_unpermitted_callers_are_403(method, name, make_user, make_token, bearer):
    event = make_event()
    url = event_url(name, event.pk if name == "detail" else None)
    assert getattr(bearer(make_token(make_user())), method)(url).status_code == 403
    assert Event.objects.filter(pk=event.pk).exists()


# --- list -------------------------------------------------------------------------------------------


def test_list_envelope_and_fields(reader):
    event = make_event(client_ip="192.0.2.1", context={"model": {"pk": "abc"}}, brand={"name": "b"})
    body = reader.get(event_url("list")).json()
    assert set(body) == {"pagination", "results", "autocomplete"}
    assert body["pagination"]["count"] == 1
    (row,) = body["results"]
    assert set(row) == EVENT_FIELDS
    assert row["pk"] == str(event.pk)
    assert row["action"] == "model_updated"
    assert row["client_ip"] == "192.0.2.1"
    assert row["context"] == {"model": {"pk": "abc"}}
    assert row["brand"] == {"name": "b"}
    assert row["user"] == {"pk": 1, "username": "root", "email": "root@example.test"}


def test_default_ordering_is_newest_first(reader):
    now = timezone.now()
    old = make_event(created=now - timedelta(hours=2))
    new = make_event(created=now - timedelta(hours=1))
    older = make_event(created=now - timedelta(hours=3))
    ids = [row["pk"] for row in reader.get(event_url("list")).json()["results"]]
    assert ids == [str(new.pk), str(old.pk), str(older.pk)]
    ids = [row["pk"] for row in reader.get(event_url("list"), {"ordering": "created"}).json()["results"]]
    assert ids == [str(older.pk), str(old.pk), str(new.pk)]


def test_equal_timestamps_page_without_duplicates(reader):
    moment = timezone.now()
    made = {str(make_event(created=moment).pk) for _ in range(7)}
    seen = []
    for page in (1, 2, 3):
        seen += [row["pk"] for row in reader.get(event_url("list"), {"page": page, "page_size": 3}).json()["results"]]
    assert sorted(seen) == sorted(made)


def test_filters(reader):
    token_pk = uuid.uuid4()
    make_event(EventAction.LOGIN, user={"pk": 2, "username": "alice"}, client_ip="203.0.113.5")
    make_event(
        EventAction.MODEL_CREATED,
        context={"model": {"app": "authentik_core", "model_name": "token", "pk": token_pk.hex, "name": "ci"}},
        brand={"name": "main"},
    )
    deleted = {"app": "other", "model_name": "thing", "pk": 42, "name": "Widget"}
    make_event(EventAction.MODEL_DELETED, context={"model": deleted})
    make_event(EventAction.SECRET_VIEW, context={"authorized_application": {"pk": "app1"}, "device": {"pk": "d1"}})

    def actions(**params):
        response = reader.get(event_url("list"), params)
        assert response.status_code == 200, response.json()
        return sorted(row["action"] for row in response.json()["results"])

    assert actions(action="model") == ["model_created", "model_deleted"]
    assert actions(action="LOGIN") == ["login"]
    assert actions(actions=["login", "secret_view"]) == ["login", "secret_view"]
    assert actions(username="alice") == ["login"]
    assert actions(client_ip="203.0.113.5") == ["login"]
    assert actions(context_model_app="authentik_core") == ["model_created"]
    assert actions(context_model_name="thing") == ["model_deleted"]
    assert actions(context_model_pk=str(token_pk)) == ["model_created"]
    assert actions(context_model_pk=token_pk.hex) == ["model_created"]
    assert actions(context_model_pk="42") == ["model_deleted"]
    assert actions(context_authorized_app="app1") == ["secret_view"]
    assert actions(context_device="d1") == ["secret_view"]
    assert actions(brand_name="main") == ["model_created"]
    assert actions(search="alice") == ["login"]
    # search: each term starts the action, username, client address or object name, in any case
    assert actions(search="wid") == ["model_deleted"]
    assert actions(search="ALI") == ["login"]
    assert actions(search="secret") == ["secret_view"]
    assert actions(search="model_c") == ["model_created"]
    assert actions(search="203.0.113") == ["login"]
    assert actions(search="thing") == []  # model_name is not searched (it is a filter)
    assert actions(search="lice") == []  # prefixes, not substrings
    assert actions(search="ci 100%_") == []


@pytest.mark.parametrize(
    ("name", "value"),
    [("client_ip", "not-an-ip"), ("client_ip", "999.1.1.1"), ("actions", "bogus"), ("page", "9")],
)
def test_malformed_filters_are_4xx_not_5xx(name, value, reader):
    make_event()
    response = reader.get(event_url("list"), {name: value})
    assert response.status_code in (400, 404)
    if response.status_code == 400:
        assert list(response.json()) == [name]


def test_huge_numeric_context_model_pk_is_harmless(reader):
    make_event(context={"model": {"pk": 1}})
    assert reader.get(event_url("list"), {"context_model_pk": "9" * 40}).json()["results"] == []


def test_token_writes_are_found_by_their_model_pk(bearer, admin_token):
    client = bearer(admin_token)
    client.post(reverse("token-list"), {"identifier": "tracked"}, format="json")
    client.patch(reverse("token-detail", kwargs={"identifier": "tracked"}), {"description": "x"}, format="json")
    pk = client.get(reverse("token-detail", kwargs={"identifier": "tracked"})).json()["pk"]
    rows = client.get(event_url("list"), {"context_model_pk": pk, "ordering": "created"}).json()["results"]
    # Leaving out the audited grant of view_token_key to the owner (README, "Object permissions").
    assert [row["action"] for row in rows if "permission" not in row["context"]] == ["model_created", "model_updated"]
    assert len(rows) == 3


@pytest.mark.parametrize("count", [2, 9])
def test_list_query_count_is_constant(count, reader, django_assert_num_queries):
    for _ in range(count):
        make_event()
    # bearer lookup, permission, COUNT, page
    with django_assert_num_queries(4):
        response = reader.get(event_url("list"))
    assert len(response.json()["results"]) == count


# --- retrieve ---------------------------------------------------------------------------------------


def test_retrieve(reader):
    event = make_event(client_ip="2001:db8::1")
    body = reader.get(event_url("detail", event.pk, "v3")).json()
    assert set(body) == EVENT_FIELDS
    assert body["pk"] == str(event.pk)
    assert body["client_ip"] == "2001:db8::1"


@pytest.mark.parametrize("event_uuid", [uuid.uuid4(), "not-a-uuid", "0"])
def test_retrieve_unknown_or_malformed_is_404(event_uuid, reader):
    response = reader.get(event_url("detail", event_uuid))
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found.", "code": "not_found"}


# --- actions ----------------------------------------------------------------------------------------


def test_actions_lists_every_action(reader):
    body = reader.get(event_url("actions")).json()
    assert [row["component"] for row in body] == list(EventAction.values)
    login = body[0]
    assert login == {
        "name": "Login",
        "description": "",
        "component": "login",
        "model_name": "",
        "requires_enterprise": False,
        "deprecated": False,
    }


# --- volume -----------------------------------------------------------------------------------------


def _day(value):
    return value.replace(hour=0, minute=0, second=0, microsecond=0)


def test_volume_counts_per_day_and_action(reader):
    now = timezone.now()
    yesterday = now - timedelta(days=1)
    make_event(EventAction.LOGIN, created=now)
    make_event(EventAction.LOGIN, created=now)
    make_event(EventAction.MODEL_CREATED, created=now)
    make_event(EventAction.LOGIN, created=yesterday)
    make_event(EventAction.LOGIN, created=now - timedelta(days=10))  # outside the default 7 days
    body = reader.get(event_url("volume")).json()
    expected = [
        {"action": "login", "time": _day(yesterday), "count": 1},
        {"action": "login", "time": _day(now), "count": 2},
        {"action": "model_created", "time": _day(now), "count": 1},
    ]
    assert [{**row, "time": datetime.fromisoformat(row["time"])} for row in body] == expected


def test_volume_history_days_and_filters(reader):
    now = timezone.now()
    make_event(EventAction.LOGIN, created=now - timedelta(days=10))
    make_event(EventAction.MODEL_CREATED, created=now - timedelta(days=10))
    make_event(EventAction.LOGIN, created=now)
    assert sum(row["count"] for row in reader.get(event_url("volume"), {"history_days": 1}).json()) == 1
    assert sum(row["count"] for row in reader.get(event_url("volume"), {"history_days": 30}).json()) == 3
    filtered = reader.get(event_url("volume"), {"history_days": 30, "action": "login"}).json()
    assert {row["action"] for row in filtered} == {"login"}
    assert sum(row["count"] for row in filtered) == 2


@pytest.mark.parametrize("value", ["0", "-1", "abc", "100000", "1.5"])
def test_volume_rejects_bad_history_days(value, reader):
    response = reader.get(event_url("volume"), {"history_days": value})
    assert response.status_code == 400
    assert list(response.json()) == ["history_days"]


def test_volume_ignores_ordering(reader):
    make_event(EventAction.LOGIN)
    make_event(EventAction.LOGIN)
    body = reader.get(event_url("volume"), {"ordering": "-created"}).json()
    assert [row["count"] for row in body] == [2]


# --- the list's representation -------------------------------------------------------------------------


def varied_events() -> None:
    now = timezone.now().replace(microsecond=0)
    make_event(EventAction.LOGIN, created=now, client_ip=None, user={"pk": 1, "username": "ann", "email": "a@x"})
    make_event(
        "custom_Über report",
        created=now - timedelta(days=2, microseconds=7),
        client_ip="2001:db8::1",
        user={"username": "AnonymousUser", "pk": -1, "is_anonymous": True},
        context={"model": {"pk": 42, "name": "tök"}, "list": [1, 2.5, None], "nested": {"a": {"b": None}}, "n": None},
        brand={"name": "main", "pk": "b1"},
    )
    make_event(EventAction.SECRET_VIEW, created=now - timedelta(hours=5), client_ip="10.0.0.1", context={})


@pytest.mark.parametrize("zone", [None, "Europe/Berlin", "America/St_Johns"])
def test_list_rows_are_the_serializers(reader, zone):
    from django.test.utils import override_settings
    from rest_framework.renderers import JSONRenderer

    from events.api import EventSerializer, event_list_rows

    varied_events()
    events = list(Event.objects.order_by("-created", "-pk"))
    with timezone.override(zone) if zone else timezone.override(timezone.get_default_timezone()):
        fast = JSONRenderer().render(event_list_rows(events))
        contract = JSONRenderer().render(EventSerializer(events, many=True).data)
    assert fast == contract
    with override_settings(TIME_ZONE=zone or "UTC"):
        body = reader.get(event_url("list")).content
    with timezone.override(zone or "UTC"):
        expected = JSONRenderer().render(EventSerializer(events, many=True).data)
    assert b'"results":' + expected + b',"autocomplete"' in body
