"""Django admin: keys are never shown, "Set key" uses the API's service and rules, events are read-only."""

import logging
import re

import pytest
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from guardian.models import UserObjectPermission
from guardian.shortcuts import assign_perm, get_perms

from core.forms import TOKEN_ADMIN_FIELDS
from core.models import DEFAULT_KEY_LENGTH, KEY_ALPHABET, Token, generate_key, key_digest
from core.selectors import user_has_token_perm
from core.serializers import TokenSetKeySerializer
from core.services import KEY_IN_USE, key_fingerprint
from events.models import Event, EventAction

SET_KEY = "authentik_core.set_token_key"


def admin_url(name: str, *args: object) -> str:
    return reverse(f"admin:{name}", args=args)


def set_key_url(token: Token) -> str:
    return admin_url("authentik_core_token_set_key", token.pk)


def change_url(token: Token) -> str:
    return admin_url("authentik_core_token_change", token.pk)


@pytest.fixture
def admin_client(client, superuser):
    client.force_login(superuser)
    return client


@pytest.fixture
def make_staff(make_user):
    def make(**fields):
        user = make_user(**fields)
        user.is_staff = True
        user.save(update_fields=["is_staff"])
        return user

    return make


@pytest.fixture
def staff(make_staff):
    """Staff who can list and edit tokens, but hold no permission on their keys."""
    return make_staff(perms=("authentik_core.view_token", "authentik_core.change_token"))


def assert_no_secret(html: str, token: Token) -> None:
    assert token.key not in html
    assert token.key_digest not in html


# --- repr, str, lists, forms, search ------------------------------------------------------------------


def test_str_and_repr_show_the_identifier_not_the_key(make_token, superuser):
    token = make_token(superuser, identifier="ci-token")
    for text in (str(token), repr(token)):
        assert "ci-token" in text
        assert token.key not in text
        assert token.key_digest not in text


def test_changelist_lists_tokens_without_keys(admin_client, make_token, superuser, make_user):
    tokens = [make_token(superuser), make_token(make_user(), description="deploy bot")]
    response = admin_client.get(admin_url("authentik_core_token_changelist"))
    assert response.status_code == 200
    html = response.content.decode()
    for token in tokens:
        assert token.identifier in html
        assert_no_secret(html, token)
    assert response.context["cl"].list_display == [
        "action_checkbox",
        "identifier",
        "user",
        "intent",
        "expires",
        "expiring",
    ]


@pytest.mark.parametrize("view", ["add", "change"])
def test_add_and_change_forms_have_no_key_field(view, admin_client, make_token, superuser):
    token = make_token(superuser)
    url = admin_url("authentik_core_token_add") if view == "add" else change_url(token)
    response = admin_client.get(url)
    assert response.status_code == 200
    fields = tuple(response.context["adminform"].form.fields)
    # On the change form the owner is shown read-only (owners never change).
    assert fields == (TOKEN_ADMIN_FIELDS if view == "add" else tuple(f for f in TOKEN_ADMIN_FIELDS if f != "user"))
    html = response.content.decode()
    assert 'name="key"' not in html
    assert 'name="key_digest"' not in html
    assert_no_secret(html, token)


def test_search_never_matches_a_key(admin_client, make_token, superuser):
    token = make_token(superuser, identifier="searchable-token")
    # A 30-character piece would match any searchable column that holds the key (searches are icontains).
    # Not the whole key: the admin echoes the query into the search box, which is not the point here.
    by_key = admin_client.get(admin_url("authentik_core_token_changelist"), {"q": token.key[10:40]})
    assert by_key.context["cl"].result_count == 0
    by_identifier = admin_client.get(admin_url("authentik_core_token_changelist"), {"q": "searchable"})
    assert by_identifier.context["cl"].result_count == 1
    assert_no_secret(by_identifier.content.decode(), token)


@pytest.mark.parametrize("lookup", ["key", "key__startswith", "key__regex", "key_digest", "key_digest__startswith"])
def test_changelist_refuses_query_string_lookups_on_the_key(lookup, admin_client, make_token, superuser):
    # Without the refusal, ?key__startswith=<guess> would be an oracle that reveals keys character by character.
    token = make_token(superuser)
    response = admin_client.get(admin_url("authentik_core_token_changelist"), {lookup: token.key[:1]})
    assert response.status_code == 400
    assert_no_secret(response.content.decode(), token)


def test_lookups_on_other_fields_still_work(admin_client, make_token, superuser):
    make_token(superuser, identifier="alpha")
    make_token(superuser, identifier="beta")
    response = admin_client.get(admin_url("authentik_core_token_changelist"), {"identifier__startswith": "al"})
    assert response.status_code == 200
    assert response.context["cl"].result_count == 1


# --- add and change -----------------------------------------------------------------------------------


def add_form_data(user, **overrides):
    data = {
        "identifier": "made-in-admin",
        "user": str(user.pk),
        "intent": "api",
        "description": "from the admin",
        "expires_0": "",
        "expires_1": "",
        "expiring": "on",
        "managed": "",
    }
    data.update(overrides)
    return data


def test_add_form_creates_token_with_random_key_and_created_event(admin_client, superuser, make_user, caplog):
    owner = make_user()
    caplog.set_level(logging.DEBUG)
    data = add_form_data(owner, _continue="Save and continue editing")
    response = admin_client.post(admin_url("authentik_core_token_add"), data, follow=True)
    assert response.status_code == 200
    token = Token.objects.get(identifier="made-in-admin")
    assert token.user == owner
    assert len(token.key) == DEFAULT_KEY_LENGTH
    assert set(token.key) <= set(KEY_ALPHABET)
    assert token.key_digest == key_digest(token.key)
    assert response.redirect_chain[-1][0] == change_url(token)
    (event,) = Event.objects.all()
    assert event.action == EventAction.MODEL_CREATED
    assert event.user["username"] == superuser.username
    assert event.context["model"]["name"] == "made-in-admin"
    assert event.context["model"]["pk"] == token.pk.hex
    assert token.key not in str(event.context)
    assert_no_secret(response.content.decode(), token)
    assert all(token.key not in record.getMessage() for record in caplog.records)
    assert all(token.key not in entry.change_message for entry in LogEntry.objects.all())


def test_add_form_reports_a_taken_identifier_and_creates_nothing(admin_client, superuser, make_token):
    make_token(superuser, identifier="taken")
    response = admin_client.post(admin_url("authentik_core_token_add"), add_form_data(superuser, identifier="taken"))
    assert response.status_code == 200
    assert "identifier" in response.context["adminform"].form.errors
    assert Token.objects.filter(identifier="taken").count() == 1
    assert Event.objects.count() == 0


def test_change_form_saves_only_the_changed_columns(admin_client, make_token, superuser):
    token = make_token(superuser, description="old")
    data = add_form_data(superuser, identifier=token.identifier, description="new")
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.post(change_url(token), data)
    assert response.status_code == 302
    updates = [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].startswith("UPDATE") and "authentik_core_token" in q["sql"]
    ]
    assert len(updates) == 1
    assert re.findall(r'"(\w+)" = ', updates[0].split(" WHERE ")[0]) == ["description"]
    token.refresh_from_db()
    assert token.description == "new"
    (event,) = Event.objects.all()
    assert event.action == EventAction.MODEL_UPDATED
    assert event.context["changed_fields"] == ["description"]
    assert event.user["username"] == superuser.username


def test_change_form_without_changes_writes_nothing(admin_client, make_token, superuser):
    token = make_token(superuser, description="same")
    data = add_form_data(superuser, identifier=token.identifier, description="same")
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.post(change_url(token), data)
    assert response.status_code == 302
    assert not [q for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert Event.objects.count() == 0


def test_change_form_keeps_the_owner_and_offers_only_api_intents(admin_client, make_token, make_user, superuser):
    token = make_token(superuser)
    form = admin_client.get(change_url(token)).context["adminform"].form
    assert "user" not in form.fields
    assert [value for value, _ in form.fields["intent"].choices] == ["api", "app_password"]
    data = add_form_data(make_user(), identifier=token.identifier, intent="app_password", description="")
    assert admin_client.post(change_url(token), data).status_code == 302
    token.refresh_from_db()
    assert token.user == superuser
    assert token.intent == "app_password"
    assert Event.objects.get().context["changed_fields"] == ["intent"]


def test_change_form_of_a_verification_token_keeps_its_intent(admin_client, make_token, superuser):
    token = make_token(superuser, intent="verification")
    form = admin_client.get(change_url(token)).context["adminform"].form
    assert "intent" not in form.fields
    admin_client.post(change_url(token), add_form_data(superuser, identifier=token.identifier, intent="api"))
    token.refresh_from_db()
    assert token.intent == "verification"


def test_delete_goes_through_the_service(admin_client, make_token, make_staff, superuser):
    token = make_token(superuser)
    holder = make_staff()
    assign_perm(SET_KEY, holder, token)
    response = admin_client.post(admin_url("authentik_core_token_delete", token.pk), {"post": "yes"})
    assert response.status_code == 302
    assert not Token.objects.filter(pk=token.pk).exists()
    assert not user_has_token_perm(holder, "set_token_key", token.identifier)
    assert UserObjectPermission.objects.count() == 0
    (event,) = Event.objects.all()
    assert event.action == EventAction.MODEL_DELETED
    assert event.context["model"]["name"] == token.identifier


def test_bulk_delete_action_writes_one_event_per_token(admin_client, make_token, superuser):
    tokens = [make_token(superuser) for _ in range(3)]
    response = admin_client.post(
        admin_url("authentik_core_token_changelist"),
        {"action": "delete_selected", "_selected_action": [str(t.pk) for t in tokens[:2]], "post": "yes"},
    )
    assert response.status_code == 302
    assert list(Token.objects.values_list("pk", flat=True)) == [tokens[2].pk]
    events = Event.objects.filter(action=EventAction.MODEL_DELETED)
    assert sorted(e.context["model"]["name"] for e in events) == sorted(t.identifier for t in tokens[:2])


# --- "Set key" ----------------------------------------------------------------------------------------


def test_change_page_links_to_set_key_and_object_permissions(admin_client, make_token, superuser):
    token = make_token(superuser)
    html = admin_client.get(change_url(token)).content.decode()
    assert f'href="{set_key_url(token)}"' in html
    assert f'href="{admin_url("authentik_core_token_permissions", token.pk)}"' in html


def test_set_key_page_has_an_empty_password_input(admin_client, make_token, superuser):
    token = make_token(superuser)
    response = admin_client.get(set_key_url(token))
    assert response.status_code == 200
    html = response.content.decode()
    (key_input,) = re.findall(r"<input[^>]*name=\"key\"[^>]*>", html)
    assert 'type="password"' in key_input
    assert "value=" not in key_input
    assert_no_secret(html, token)


def test_set_key_replaces_key_writes_one_event_and_never_shows_the_key(admin_client, make_token, superuser, caplog):
    token = make_token(superuser)
    old_key, new_key = token.key, generate_key()
    caplog.set_level(logging.DEBUG)
    response = admin_client.post(set_key_url(token), {"key": new_key}, follow=True, HTTP_USER_AGENT="admin-test")
    assert response.redirect_chain == [(change_url(token), 302)]
    token.refresh_from_db()
    assert token.key == new_key
    assert token.key_digest == key_digest(new_key)
    (event,) = Event.objects.all()
    assert event.action == EventAction.MODEL_UPDATED
    assert event.app == "authentik_core"
    assert event.user == {"pk": superuser.pk, "username": superuser.username, "email": superuser.email}
    assert event.client_ip == "127.0.0.1"
    assert event.context["changed_fields"] == ["key"]
    assert event.context["key_fingerprint"] == key_fingerprint(new_key)
    assert event.context["model"] == {
        "app": "authentik_core",
        "model_name": "token",
        "pk": token.pk.hex,
        "name": token.identifier,
    }
    assert event.context["http_request"]["path"] == set_key_url(token)
    assert event.context["http_request"]["user_agent"] == "admin-test"
    for secret in (old_key, new_key):
        assert secret not in str(event.context)
        assert secret not in response.content.decode()
        assert all(secret not in record.getMessage() for record in caplog.records)
        assert all(secret not in entry.change_message for entry in LogEntry.objects.all())
    assert LogEntry.objects.get(object_id=str(token.pk)).get_change_message() == "Changed key."


def api_key_errors(value: str) -> list[str]:
    serializer = TokenSetKeySerializer(data={"key": value})
    assert not serializer.is_valid()
    return [str(message) for message in serializer.errors["key"]]


@pytest.mark.parametrize(
    "value",
    ["", " ", "   ", " padded", "padded ", "two words", "tab\there", "line\nbreak", "caf\u00e9", "x" * 1025],
    ids=["empty", "space", "spaces", "leading", "trailing", "inner", "tab", "newline", "non-ascii", "too-long"],
)
def test_set_key_rejects_what_the_api_rejects_with_the_same_messages(value, admin_client, make_token, superuser):
    token = make_token(superuser)
    old_key = token.key
    response = admin_client.post(set_key_url(token), {"key": value})
    assert response.status_code == 200
    assert response.context["form"].errors["key"] == api_key_errors(value)
    token.refresh_from_db()
    assert token.key == old_key
    assert Event.objects.count() == 0
    if value.strip():
        assert value not in response.content.decode()


@override_settings(TOKEN_KEY_MIN_LENGTH=20)
def test_set_key_follows_the_minimum_length_setting(admin_client, make_token, superuser):
    token = make_token(superuser)
    response = admin_client.post(set_key_url(token), {"key": "short-key"})
    assert response.context["form"].errors["key"] == api_key_errors("short-key")
    assert Event.objects.count() == 0


def test_set_key_rejects_a_key_held_by_another_token(admin_client, make_token, superuser, make_user):
    other = make_token(make_user(), identifier="someone-elses-token")
    token = make_token(superuser)
    old_key = token.key
    response = admin_client.post(set_key_url(token), {"key": other.key})
    assert response.status_code == 200
    assert response.context["form"].errors["key"] == [KEY_IN_USE]
    html = response.content.decode()
    assert other.identifier not in html
    assert other.key not in html
    token.refresh_from_db()
    other.refresh_from_db()
    assert token.key == old_key
    assert other.key_digest == key_digest(other.key)
    # No change event; the collision itself is audited as a suspicious request.
    assert list(Event.objects.values_list("action", flat=True)) == ["suspicious_request"]


def test_set_key_on_an_expired_token_is_refused(admin_client, make_token, superuser, past):
    token = make_token(superuser, expires=past)
    old_key = token.key
    response = admin_client.post(set_key_url(token), {"key": generate_key()})
    assert response.status_code == 200
    assert response.context["form"].non_field_errors()
    token.refresh_from_db()
    assert token.key == old_key
    assert Event.objects.count() == 0


# --- "Set key" permissions ----------------------------------------------------------------------------


def test_staff_without_set_token_key_gets_403_and_no_link(client, staff, make_token, superuser):
    token = make_token(superuser)
    client.force_login(staff)
    assert client.get(set_key_url(token)).status_code == 403
    response = client.post(set_key_url(token), {"key": generate_key()})
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert Event.objects.count() == 0
    change_page = client.get(change_url(token))
    assert change_page.status_code == 200
    assert set_key_url(token) not in change_page.content.decode()


def test_unpermitted_staff_cannot_tell_whether_a_token_exists(client, staff):
    client.force_login(staff)
    missing = reverse("admin:authentik_core_token_set_key", args=["00000000-0000-4000-8000-000000000000"])
    assert client.get(missing).status_code == 403


def test_object_permission_allows_set_key_on_that_token_only(client, make_staff, make_token, superuser):
    holder = make_staff()
    token, other = make_token(superuser), make_token(superuser)
    assign_perm(SET_KEY, holder, token)
    client.force_login(holder)
    assert client.get(set_key_url(token)).status_code == 200
    new_key = generate_key()
    response = client.post(set_key_url(token), {"key": new_key})
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.key == new_key
    assert Event.objects.get().user["username"] == holder.username
    assert client.post(set_key_url(other), {"key": generate_key()}).status_code == 403


def test_global_permission_allows_set_key_on_any_token(client, make_staff, make_token, superuser):
    holder = make_staff(perms=(SET_KEY,))
    token = make_token(superuser)
    client.force_login(holder)
    assert client.post(set_key_url(token), {"key": generate_key()}).status_code == 302
    assert Event.objects.count() == 1


def test_non_staff_and_anonymous_are_sent_to_the_login_page(client, make_user, make_token, superuser):
    token = make_token(superuser)
    holder = make_user(perms=(SET_KEY,))
    for login in (None, holder):
        if login is not None:
            client.force_login(login)
        response = client.post(set_key_url(token), {"key": generate_key()})
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))
    assert Event.objects.count() == 0


def test_superuser_following_a_stale_link_is_redirected(admin_client):
    missing = reverse("admin:authentik_core_token_set_key", args=["00000000-0000-4000-8000-000000000000"])
    response = admin_client.get(missing)
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:index")


# --- object permissions (django-guardian) -------------------------------------------------------------


def test_object_permissions_are_granted_from_the_admin(admin_client, make_staff, make_token, superuser):
    grantee = make_staff()
    token = make_token(superuser)
    assert admin_client.get(admin_url("authentik_core_token_permissions", token.pk)).status_code == 200
    url = admin_url("authentik_core_token_permissions_manage_user", token.pk, grantee.pk)
    response = admin_client.post(url, {"permissions": ["set_token_key"]})
    assert response.status_code == 302
    assert get_perms(grantee, token) == ["set_token_key"]
    assert user_has_token_perm(grantee, "set_token_key", token.identifier)


def test_view_site_link_leads_to_the_api_docs(admin_client):
    html = admin_client.get(reverse("admin:index")).content.decode()
    assert f'href="{reverse("schema-swagger-ui")}"' in html


# --- users --------------------------------------------------------------------------------------------


def test_user_admin_shows_authentik_fields(admin_client, make_user):
    user = make_user(name="Alice Example")
    response = admin_client.get(admin_url("authentik_core_user_change", user.pk))
    assert response.status_code == 200
    html = response.content.decode()
    for field in ('name="name"', 'name="type"', 'name="path"', 'name="attributes"'):
        assert field in html
    assert str(user.uuid) in html


def test_user_admin_adds_a_user(admin_client):
    response = admin_client.post(
        admin_url("authentik_core_user_add"),
        {"username": "bob", "password1": "a-long-unusual-passphrase", "password2": "a-long-unusual-passphrase"},
    )
    assert response.status_code == 302
    from core.models import User

    assert User.objects.get(username="bob").check_password("a-long-unusual-passphrase")


# --- who may grant rights and administer accounts ---------------------------------------------------

USER_ADMIN = ("authentik_core.view_user", "authentik_core.change_user", "authentik_core.delete_user")


def user_form_data(client, account, **changes):
    """The user change form as the admin renders it for ``client``, with ``changes``, ready to POST."""
    response = client.get(admin_url("authentik_core_user_change", account.pk))
    assert response.status_code == 200
    form = response.context["adminform"].form
    data = {}
    for name, field in form.fields.items():
        value = form.initial.get(name, field.initial)
        if name in ("groups", "user_permissions"):
            data[name] = [getattr(item, "pk", item) for item in value or ()]
        elif name == "date_joined":
            data["date_joined_0"], data["date_joined_1"] = value.strftime("%Y-%m-%d"), value.strftime("%H:%M:%S")
        elif name == "last_login":
            data["last_login_0"] = data["last_login_1"] = ""
        elif name == "attributes":
            data[name] = "{}"
        elif name == "password":
            continue
        elif isinstance(value, bool):
            if value:
                data[name] = "on"
        else:
            data[name] = "" if value is None else value
    for name, value in changes.items():
        if value is False:
            data.pop(name, None)
        else:
            data[name] = value
    return data


def permission_pk(perm: str) -> int:
    from django.contrib.auth.models import Permission

    app_label, codename = perm.split(".")
    return Permission.objects.get(content_type__app_label=app_label, codename=codename).pk


def test_staff_user_admin_cannot_grant_itself_rights(client, make_staff, make_group):
    editor = make_staff(perms=USER_ADMIN)
    group = make_group(SET_KEY)
    client.force_login(editor)
    html = client.get(admin_url("authentik_core_user_change", editor.pk)).content.decode()
    for field in ("is_superuser", "is_staff", "groups", "user_permissions"):
        assert f'name="{field}"' not in html  # shown read-only, not as inputs
    data = user_form_data(
        client,
        editor,
        email="changed@example.test",
        is_superuser="on",
        groups=[group.pk],
        user_permissions=[permission_pk(SET_KEY)],
    )
    response = client.post(admin_url("authentik_core_user_change", editor.pk), data)
    assert response.status_code == 302
    editor.refresh_from_db()
    assert editor.email == "changed@example.test"  # the other fields still save
    assert not editor.is_superuser
    assert not editor.groups.exists()
    assert not editor.has_perm(SET_KEY)


def test_staff_user_admin_cannot_grant_rights_to_another_account(client, make_staff, make_user):
    editor = make_staff(perms=USER_ADMIN)
    account = make_user()
    client.force_login(editor)
    data = user_form_data(client, account, is_staff="on", user_permissions=[permission_pk(SET_KEY)])
    assert client.post(admin_url("authentik_core_user_change", account.pk), data).status_code == 302
    account.refresh_from_db()
    assert not account.is_staff
    assert not account.has_perm(SET_KEY)


def test_superuser_still_grants_rights(admin_client, make_user, make_group):
    account = make_user()
    group = make_group("authentik_core.view_token")
    data = user_form_data(
        admin_client, account, is_staff="on", groups=[group.pk], user_permissions=[permission_pk(SET_KEY)]
    )
    assert admin_client.post(admin_url("authentik_core_user_change", account.pk), data).status_code == 302
    account = type(account).objects.get(pk=account.pk)
    assert account.is_staff
    assert list(account.groups.all()) == [group]
    assert account.has_perm(SET_KEY)


def _password_data():
    return {"password1": "a-long-unusual-passphrase", "password2": "a-long-unusual-passphrase"}


@pytest.mark.parametrize("holds", ["superuser", "global", "group", "object"])
def test_staff_cannot_take_over_an_account_with_more_rights(
    holds, client, make_staff, make_user, make_group, make_token
):
    editor = make_staff(perms=USER_ADMIN)
    account = make_user(superuser=holds == "superuser", perms=(SET_KEY,) if holds == "global" else ())
    if holds == "group":
        account.groups.add(make_group(SET_KEY))
    if holds == "object":
        assign_perm("set_token_key", account, make_token(make_user()))
    before = type(account).objects.get(pk=account.pk)
    client.force_login(editor)
    change = admin_url("authentik_core_user_change", account.pk)
    response = client.post(change, {"username": "renamed", "email": "taken@example.test"})
    assert response.status_code == 403
    password = admin_url("auth_user_password_change", account.pk)
    assert client.post(password, _password_data()).status_code == 403
    delete = admin_url("authentik_core_user_delete", account.pk)
    assert client.post(delete, {"post": "yes"}).status_code == 403
    bulk = {"action": "delete_selected", "_selected_action": [account.pk], "post": "yes"}
    assert client.post(admin_url("authentik_core_user_changelist"), bulk).status_code == 403
    after = type(account).objects.get(pk=account.pk)
    assert (after.username, after.email, after.password) == (before.username, before.email, before.password)


@pytest.mark.parametrize("editor_holds", ["the same object permission", "the permissions globally"])
def test_staff_administers_an_account_whose_rights_it_holds(editor_holds, client, make_staff, make_user, make_token):
    token = make_token(make_user())
    globally = editor_holds == "the permissions globally"
    editor = make_staff(perms=(*USER_ADMIN, *((SET_KEY, "authentik_core.view_token") if globally else ())))
    if not globally:
        assign_perm("set_token_key", editor, token)
    account = make_user(perms=("authentik_core.view_token",) if globally else ())
    assign_perm("set_token_key", account, token)
    client.force_login(editor)
    password = admin_url("auth_user_password_change", account.pk)
    assert client.post(password, _password_data()).status_code == 302
    account.refresh_from_db()
    assert account.check_password("a-long-unusual-passphrase")


def test_staff_group_admin_cannot_grant_permissions(client, make_staff, make_group):
    editor = make_staff(perms=("auth.view_group", "auth.change_group"))
    group = make_group()
    editor.groups.add(group)
    client.force_login(editor)
    response = client.post(
        admin_url("auth_group_change", group.pk), {"name": "renamed", "permissions": [permission_pk(SET_KEY)]}
    )
    assert response.status_code == 302
    group.refresh_from_db()
    assert group.name == "renamed"
    assert not group.permissions.exists()


def test_superuser_grants_group_permissions(admin_client, make_group):
    group = make_group()
    response = admin_client.post(
        admin_url("auth_group_change", group.pk), {"name": group.name, "permissions": [permission_pk(SET_KEY)]}
    )
    assert response.status_code == 302
    assert [p.codename for p in group.permissions.all()] == ["set_token_key"]


# --- events -------------------------------------------------------------------------------------------


@pytest.fixture
def event(admin_client, make_token, superuser):
    token = make_token(superuser)
    admin_client.post(set_key_url(token), {"key": generate_key()})
    return Event.objects.get()


def test_event_admin_lists_and_filters_events(admin_client, event, superuser):
    response = admin_client.get(admin_url("authentik_events_event_changelist"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "model_updated" in html
    assert superuser.username in html
    assert "127.0.0.1" in html
    filtered = admin_client.get(admin_url("authentik_events_event_changelist"), {"action": "model_created"})
    assert filtered.context["cl"].result_count == 0
    filtered = admin_client.get(admin_url("authentik_events_event_changelist"), {"action": "model_updated"})
    assert filtered.context["cl"].result_count == 1


def test_event_admin_is_read_only_even_for_superusers(admin_client, event):
    assert admin_client.get(admin_url("authentik_events_event_add")).status_code == 403
    assert admin_client.get(admin_url("authentik_events_event_delete", event.pk)).status_code == 403
    detail = admin_client.get(admin_url("authentik_events_event_change", event.pk))
    assert detail.status_code == 200
    assert 'name="_save"' not in detail.content.decode()
    response = admin_client.post(admin_url("authentik_events_event_change", event.pk), {"action": "login", "app": "x"})
    assert response.status_code == 403
    changelist = admin_client.get(admin_url("authentik_events_event_changelist"))
    assert "delete_selected" not in changelist.content.decode()
    bulk = admin_client.post(
        admin_url("authentik_events_event_changelist"),
        {"action": "delete_selected", "_selected_action": [str(event.pk)], "post": "yes"},
    )
    assert bulk.status_code in (200, 302)
    event.refresh_from_db()
    assert event.action == "model_updated"
    assert Event.objects.count() == 1


def test_staff_without_view_event_cannot_see_events(client, staff, event):
    client.force_login(staff)
    assert client.get(admin_url("authentik_events_event_changelist")).status_code == 403
