"""The fast paths of every API request: hand-written SQL that must behave exactly like the ORM it replaces."""

from datetime import timedelta
from unittest import mock

import pytest
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.forms.models import model_to_dict
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from guardian.shortcuts import assign_perm

from core.models import Token, TokenIntents, User, generate_key
from core.selectors import token_for_bearer_key, user_has_token_perm
from core.services import token_set_key
from events.models import Event
from tokens_service.errors import FieldConflict, ObjectNotFound
from tokens_service.request_meta import RequestMeta

SET_KEY = "authentik_core.set_token_key"


def set_key_url(identifier: str) -> str:
    return reverse("token-set-key", kwargs={"identifier": identifier})


def concrete_values(instance: Token | User) -> dict:
    return {field.attname: getattr(instance, field.attname) for field in type(instance)._meta.concrete_fields}


# --- bearer lookup ------------------------------------------------------------------------------------


def test_bearer_lookup_loads_token_and_user_exactly_as_the_orm(make_user, make_token, make_group):
    user = make_user(attributes={"team": "ops", "n": [1, 2]}, name="Ada Lovelace", last_login=timezone.now())
    user.groups.add(make_group())
    token = make_token(user, expires=timezone.now() + timedelta(days=3), managed="goauthentik.io/x", description="ci")

    found = token_for_bearer_key(token.key)

    assert found is not None
    assert concrete_values(found) == concrete_values(Token.objects.get(pk=token.pk))
    assert concrete_values(found.user) == concrete_values(User.objects.get(pk=user.pk))
    assert model_to_dict(found.user) == model_to_dict(User.objects.get(pk=user.pk))
    # Typed values, not database text (SQLite returns uuids, datetimes and JSON as strings).
    assert found.pk == token.pk
    assert found.expires == Token.objects.get(pk=token.pk).expires
    assert found.user.attributes == {"team": "ops", "n": [1, 2]}
    assert not found._state.adding
    with CaptureQueriesContext(connection) as queries:
        assert found.user.username == user.username
    assert queries.captured_queries == []


@pytest.mark.parametrize("case", ["unknown", "expired", "verification", "recovery", "app_password", "inactive"])
def test_bearer_lookup_finds_only_live_api_tokens_of_active_users(case, make_user, make_token, past):
    user = make_user(is_active=case != "inactive")
    fields: dict = {}
    if case == "expired":
        fields = {"expires": past, "expiring": True}
    elif case in ("verification", "recovery", "app_password"):
        fields = {"intent": case}
    token = make_token(user, **fields)
    assert token_for_bearer_key(generate_key() if case == "unknown" else token.key) is None


def test_bearer_lookup_ignores_expiry_when_expiring_is_off(make_user, make_token, past):
    token = make_token(make_user(), expires=past, expiring=False)
    found = token_for_bearer_key(token.key)
    assert found is not None
    assert found.pk == token.pk


# --- permission check ---------------------------------------------------------------------------------

GRANTS = ["user-global", "group-global", "user-object", "group-object"]


def grant(kind: str, caller: User, target: Token, make_group, codename: str = SET_KEY) -> None:
    if kind == "user-global":
        caller.user_permissions.add(permission(codename))
    elif kind == "group-global":
        caller.groups.add(make_group(codename))
    elif kind == "user-object":
        assign_perm(codename, caller, target)
    else:
        group = make_group()
        caller.groups.add(group)
        assign_perm(codename, group, target)


def permission(codename: str):
    from django.contrib.auth.models import Permission

    app_label, name = codename.split(".")
    return Permission.objects.get(content_type__app_label=app_label, codename=name)


@pytest.mark.parametrize("kind", GRANTS)
def test_each_way_of_holding_the_permission_allows(kind, make_user, make_token, make_group):
    caller = make_user()
    target, other = make_token(make_user()), make_token(make_user())
    grant(kind, caller, target, make_group)
    caller = User.objects.get(pk=caller.pk)

    assert user_has_token_perm(caller, "set_token_key", target.identifier)
    # Global grants cover every token (and unknown identifiers); object grants only their token.
    is_global = kind.endswith("global")
    assert user_has_token_perm(caller, "set_token_key", other.identifier) is is_global
    assert user_has_token_perm(caller, "set_token_key", "no-such-token") is is_global
    assert not user_has_token_perm(caller, "view_token_key", target.identifier)


@pytest.mark.parametrize("kind", GRANTS)
def test_a_permission_of_another_user_or_group_does_not_allow(kind, make_user, make_token, make_group):
    caller, stranger = make_user(), make_user()
    target = make_token(make_user())
    grant(kind, stranger, target, make_group)
    assert not user_has_token_perm(caller, "set_token_key", target.identifier)


def test_superusers_need_no_query_and_inactive_users_hold_nothing(make_user, make_token):
    target = make_token(make_user())
    root = make_user(superuser=True)
    inactive = make_user(perms=(SET_KEY,), superuser=True, is_active=False)
    with CaptureQueriesContext(connection) as queries:
        assert user_has_token_perm(root, "set_token_key", target.identifier)
        assert not user_has_token_perm(inactive, "set_token_key", target.identifier)
    assert queries.captured_queries == []


# --- the write ----------------------------------------------------------------------------------------


def test_key_clash_inside_a_callers_transaction_leaves_that_transaction_usable(make_user, make_token):
    owner = make_user(superuser=True)
    holder, target = make_token(owner), make_token(owner)
    with transaction.atomic():
        with pytest.raises(FieldConflict):
            token_set_key(token_identifier=target.identifier, key=holder.key, actor=owner, request_meta=RequestMeta())
        # The failed statement was undone by its savepoint, not the whole transaction.
        new_key = generate_key()
        token_set_key(token_identifier=target.identifier, key=new_key, actor=owner, request_meta=RequestMeta())
    target.refresh_from_db()
    assert target.key == new_key
    assert sorted(Event.objects.values_list("action", flat=True)) == ["model_updated", "suspicious_request"]


def test_unknown_and_expired_tokens_raise_not_found_and_write_nothing(make_user, make_token, past):
    owner = make_user(superuser=True)
    expired = make_token(owner, expires=past)
    for identifier in ("no-such-token", expired.identifier):
        with pytest.raises(ObjectNotFound):
            token_set_key(token_identifier=identifier, key=generate_key(), actor=owner, request_meta=RequestMeta())
    assert Event.objects.count() == 0
    assert Token.objects.get(pk=expired.pk).key == expired.key


def test_the_event_is_stamped_when_written_and_kept_for_the_retention_period(make_user, make_token):
    owner = make_user(superuser=True)
    target = make_token(owner)
    before = timezone.now()
    token_set_key(token_identifier=target.identifier, key=generate_key(), actor=owner, request_meta=RequestMeta())
    event = Event.objects.get()
    # PostgreSQL stamps it with its own clock, so allow for a little skew between the two clocks.
    assert before - timedelta(seconds=5) <= event.created <= timezone.now() + timedelta(seconds=5)
    assert abs(event.expires - event.created - settings.EVENT_RETENTION) < timedelta(seconds=1)
    assert event.brand == {}
    assert event.context["model"]["pk"] == target.pk.hex


# --- the whole request --------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("caller_kind", ["superuser", "object-permission"])
def test_statements_per_set_key_including_the_connection_health_check(caller_kind, make_user, make_token, bearer):
    """Issue 7's targets, counted as the server sends them: Django's query log (BEGIN/COMMIT included)
    plus the health check Django runs outside it at a request's first query (CONN_HEALTH_CHECKS)."""
    caller = make_user(superuser=caller_kind == "superuser")
    target = make_token(make_user())
    if caller_kind == "object-permission":
        assign_perm(SET_KEY, caller, target)
    client = bearer(make_token(caller))
    health_checks = mock.Mock(wraps=connection.is_usable)
    with mock.patch.object(connection, "is_usable", health_checks):
        # What WSGIHandler does at request_started (the test client skips it).
        close_old_connections()
        with CaptureQueriesContext(connection) as queries:
            response = client.post(set_key_url(target.identifier), {"key": generate_key()}, format="json")
    assert response.status_code == 204
    # SQLite's is_usable() sends nothing; PostgreSQL's sends SELECT 1.
    sent = len(queries.captured_queries) + (health_checks.call_count if connection.vendor == "postgresql" else 0)
    if connection.vendor == "postgresql":  # the fast path
        assert sent <= (5 if caller_kind == "superuser" else 6)
    else:  # the contract path (see test_set_key.py's query counts)
        assert sent <= (7 if caller_kind == "superuser" else 9)


def test_bearer_requests_do_no_session_or_csrf_work(bearer, admin_token, make_token, superuser):
    target = make_token(superuser)
    response = bearer(admin_token).post(set_key_url(target.identifier), {"key": generate_key()}, format="json")
    assert response.status_code == 204
    assert not response.cookies  # no session or CSRF cookie
    assert "Cookie" not in response.get("Vary", "")  # the session was never read


def test_bearer_lookup_of_a_rotated_key_fails_at_once(make_user, make_token):
    owner = make_user(superuser=True)
    token = make_token(owner, intent=TokenIntents.API)
    old_key, new_key = token.key, generate_key()
    token_set_key(token_identifier=token.identifier, key=new_key, actor=owner, request_meta=RequestMeta())
    assert token_for_bearer_key(old_key) is None
    found = token_for_bearer_key(new_key)
    assert found is not None
    assert found.pk == token.pk
