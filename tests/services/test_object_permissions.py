"""Object permissions on tokens: who may manage them in the admin, and one audit event per grant or revocation
from the admin, the API and the management commands, in the same transaction as the change."""

from io import StringIO
from unittest import mock

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.urls import reverse
from guardian.models import GroupObjectPermission, UserObjectPermission
from guardian.shortcuts import get_group_perms, get_perms

from core.models import Token
from core.object_permissions import MANAGE_PERMISSION, can_manage_token_permissions, token_perm_grant
from events.models import Event
from tokens_service.errors import ObjectNotFound
from tokens_service.request_meta import SYSTEM_REQUEST

TOKEN_EDITOR = ("authentik_core.view_token", "authentik_core.change_token")


def permissions_url(token: Token) -> str:
    return reverse("admin:authentik_core_token_permissions", args=[token.pk])


def manage_user_url(token: Token, user_pk: int) -> str:
    return reverse("admin:authentik_core_token_permissions_manage_user", args=[token.pk, user_pk])


def manage_group_url(token: Token, group_pk: int) -> str:
    return reverse("admin:authentik_core_token_permissions_manage_group", args=[token.pk, group_pk])


@pytest.fixture
def make_staff(make_user):
    def make(*perms: str, **fields):
        user = make_user(perms=perms, **fields)
        user.is_staff = True
        user.save(update_fields=["is_staff"])
        return user

    return make


@pytest.fixture
def logged_in(client):
    def login(user):
        client.force_login(user)
        return client

    return login


def permission_rows() -> int:
    return UserObjectPermission.objects.count() + GroupObjectPermission.objects.count()


def assert_grant_event(event: Event, *, token: Token, permission: str, grantee: dict, granted: bool, actor) -> None:
    assert event.action == "model_updated"
    assert event.app == "authentik_core"
    assert event.context["model"] == {
        "app": "authentik_core",
        "model_name": "token",
        "pk": token.pk.hex,
        "name": token.identifier,
    }
    assert event.context["permission"] == f"authentik_core.{permission}"
    assert event.context["grantee"] == grantee
    assert event.context["granted"] is granted
    assert event.context["changed"] is True
    assert event.user["username"] == (actor.username if actor else "AnonymousUser")
    assert token.key not in str(event.context)


# --- who may manage object permissions in the admin -------------------------------------------------


def test_change_token_alone_cannot_open_or_post_the_permission_pages(
    make_staff, logged_in, make_token, make_user, make_group
):
    editor = make_staff(*TOKEN_EDITOR)
    token = make_token(make_user())
    group = make_group()
    client = logged_in(editor)
    assert client.get(permissions_url(token)).status_code == 403
    assert client.get(manage_user_url(token, editor.pk)).status_code == 403
    assert client.get(manage_group_url(token, group.pk)).status_code == 403
    for url in (manage_user_url(token, editor.pk), manage_group_url(token, group.pk)):
        response = client.post(url, {"permissions": ["set_token_key", "view_token_key"]})
        assert response.status_code == 403
    # guardian's own selection form on the main page, too.
    response = client.post(permissions_url(token), {"user": editor.username, "submit_manage_user": "1"})
    assert response.status_code == 403
    assert permission_rows() == 0
    assert Event.objects.count() == 0
    assert get_perms(editor, token) == []
    # No link to pages it cannot use.
    html = client.get(reverse("admin:authentik_core_token_change", args=[token.pk])).content.decode()
    assert "permissionslink" not in html


@pytest.mark.parametrize("holder", ["user", "group"])
def test_manage_token_permissions_holder_grants_and_revokes_with_one_event_each(
    holder, make_staff, make_group, logged_in, make_token, make_user
):
    if holder == "user":
        manager = make_staff(*TOKEN_EDITOR, "authentik_core.manage_token_permissions")
    else:
        manager = make_staff(*TOKEN_EDITOR)
        manager.groups.add(make_group("authentik_core.manage_token_permissions"))
    assert can_manage_token_permissions(manager)
    grantee = make_user()
    token = make_token(make_user())
    client = logged_in(manager)
    assert client.get(permissions_url(token)).status_code == 200
    change_page = client.get(reverse("admin:authentik_core_token_change", args=[token.pk]))
    assert "permissionslink" in change_page.content.decode()

    response = client.post(manage_user_url(token, grantee.pk), {"permissions": ["set_token_key"]})
    assert response.status_code == 302
    assert get_perms(grantee, token) == ["set_token_key"]
    (granted,) = Event.objects.all()
    grantee_summary = {"type": "user", "pk": grantee.pk, "username": grantee.username}
    assert_grant_event(
        granted, token=token, permission="set_token_key", grantee=grantee_summary, granted=True, actor=manager
    )

    # A browser always sends the CSRF field; with no box ticked guardian would otherwise see an unbound form.
    response = client.post(manage_user_url(token, grantee.pk), {"permissions": [], "csrfmiddlewaretoken": "x"})
    assert response.status_code == 302
    assert get_perms(grantee, token) == []
    (revoked,) = Event.objects.exclude(pk=granted.pk)
    assert_grant_event(
        revoked, token=token, permission="set_token_key", grantee=grantee_summary, granted=False, actor=manager
    )


def test_superuser_grants_to_a_group_one_event_per_changed_permission(logged_in, superuser, make_token, make_group):
    token = make_token(superuser)
    group = make_group()
    client = logged_in(superuser)
    response = client.post(manage_group_url(token, group.pk), {"permissions": ["set_token_key", "view_token_key"]})
    assert response.status_code == 302
    assert sorted(get_group_perms(group, token).values_list("codename", flat=True)) == [
        "set_token_key",
        "view_token_key",
    ]
    events = list(Event.objects.order_by("context__permission"))
    assert [event.context["permission"] for event in events] == [
        "authentik_core.set_token_key",
        "authentik_core.view_token_key",
    ]
    for event, codename in zip(events, ["set_token_key", "view_token_key"], strict=True):
        summary = {"type": "group", "pk": group.pk, "name": group.name}
        assert_grant_event(event, token=token, permission=codename, grantee=summary, granted=True, actor=superuser)
    # Saving the same boxes again changes nothing and writes nothing.
    client.post(manage_group_url(token, group.pk), {"permissions": ["set_token_key", "view_token_key"]})
    assert Event.objects.count() == 2


def test_manage_permission_is_not_offered_per_token(logged_in, superuser, make_token, make_user):
    token = make_token(superuser)
    html = logged_in(superuser).get(manage_user_url(token, make_user().pk)).content.decode()
    assert 'value="set_token_key"' in html
    assert 'value="manage_token_permissions"' not in html


def test_inactive_or_staff_without_the_permission_cannot_manage(make_user):
    assert not can_manage_token_permissions(make_user(perms=TOKEN_EDITOR))
    inactive = make_user(superuser=True)
    inactive.is_active = False
    assert not can_manage_token_permissions(inactive)


def test_grant_and_event_commit_together(logged_in, superuser, make_token, make_user, client):
    token = make_token(superuser)
    grantee = make_user()
    client.raise_request_exception = False
    with mock.patch("core.object_permissions.event_create", side_effect=RuntimeError("audit store down")):
        response = logged_in(superuser).post(manage_user_url(token, grantee.pk), {"permissions": ["set_token_key"]})
    assert response.status_code == 500
    assert get_perms(grantee, token) == []
    assert Event.objects.count() == 0


def test_grant_on_a_deleted_token_writes_nothing(superuser, make_token, make_user):
    token = make_token(superuser)
    Token.objects.filter(pk=token.pk).delete()
    with pytest.raises(ObjectNotFound):
        token_perm_grant(
            token=token, codename="set_token_key", grantee=make_user(), actor=None, request_meta=SYSTEM_REQUEST
        )
    assert permission_rows() == 0
    assert Event.objects.count() == 0


# --- management commands -----------------------------------------------------------------------------


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_commands_audit_object_grants_and_revocations(make_user, make_token, make_group):
    bob = make_user(username="bob")
    group = make_group()
    token = make_token(make_user())
    run("grant_perm", "set_token_key", "--user", "bob", "--token", token.identifier)
    run("grant_perm", "view_token_key", "--group", group.name, "--token", token.identifier)
    run("revoke_perm", "set_token_key", "--user", "bob", "--token", token.identifier)
    first, second, third = Event.objects.order_by("created")
    bob_summary = {"type": "user", "pk": bob.pk, "username": "bob"}
    group_summary = {"type": "group", "pk": group.pk, "name": group.name}
    assert_grant_event(first, token=token, permission="set_token_key", grantee=bob_summary, granted=True, actor=None)
    assert_grant_event(
        second, token=token, permission="view_token_key", grantee=group_summary, granted=True, actor=None
    )
    assert_grant_event(third, token=token, permission="set_token_key", grantee=bob_summary, granted=False, actor=None)
    assert third.context["http_request"]["user_agent"] == "system"


def test_commands_audit_global_grants(make_user):
    bob = make_user(username="bob")
    run("grant_perm", "manage_token_permissions", "--user", "bob")
    assert bob.__class__.objects.get(pk=bob.pk).has_perm(MANAGE_PERMISSION)
    run("revoke_perm", "manage_token_permissions", "--user", "bob")
    granted, revoked = Event.objects.order_by("created")
    for event, direction in ((granted, True), (revoked, False)):
        assert event.action == "model_updated"
        assert event.context["scope"] == "global"
        assert event.context["permission"] == MANAGE_PERMISSION
        assert event.context["grantee"] == {"type": "user", "pk": bob.pk, "username": "bob"}
        assert event.context["granted"] is direction
    assert not Permission.objects.filter(user=bob, codename="manage_token_permissions").exists()


def test_manage_permission_cannot_be_granted_per_token(make_user, make_token):
    from django.core.management import CommandError

    make_user(username="bob")
    token = make_token(make_user())
    with pytest.raises(CommandError):
        run("grant_perm", "manage_token_permissions", "--user", "bob", "--token", token.identifier)
    assert permission_rows() == 0


# --- API -----------------------------------------------------------------------------------------------


def test_api_create_audits_the_owners_view_token_key_grant(make_user, make_token, bearer):
    alice = make_user()
    response = bearer(make_token(alice)).post(reverse("token-list"), {"identifier": "audited"}, format="json")
    assert response.status_code == 201
    token = Token.objects.get(identifier="audited")
    (grant,) = Event.objects.filter(action="model_updated")
    summary = {"type": "user", "pk": alice.pk, "username": alice.username}
    assert_grant_event(grant, token=token, permission="view_token_key", grantee=summary, granted=True, actor=alice)
