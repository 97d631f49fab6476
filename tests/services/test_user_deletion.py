"""Deleting a user (admin, ORM instance, ORM queryset) deletes its tokens through the token delete service:
one model_deleted event per token, and no object-permission row left behind, in the deletion's transaction."""

from unittest import mock

import pytest
from django.db import transaction
from django.urls import reverse
from guardian.models import GroupObjectPermission, UserObjectPermission
from guardian.shortcuts import assign_perm

from core.models import Token, User
from events.models import Event


@pytest.fixture
def doomed(make_user, make_token, make_group):
    """A user with two tokens (permissions on them held by others) and a permission on someone else's token."""
    user = make_user(username="doomed")
    tokens = [make_token(user, identifier="doomed-a"), make_token(user, identifier="doomed-b")]
    other = make_user(username="other")
    group = make_group()
    assign_perm("authentik_core.view_token_key", user, tokens[0])
    assign_perm("authentik_core.set_token_key", other, tokens[0])
    assign_perm("authentik_core.set_token_key", group, tokens[1])
    foreign = make_token(other, identifier="others-token")
    assign_perm("authentik_core.set_token_key", user, foreign)
    return user, tokens, foreign, other


def assert_tokens_deleted_with_events(tokens: list[Token], actor_username: str) -> None:
    assert not Token.objects.filter(pk__in=[token.pk for token in tokens]).exists()
    deleted = Event.objects.filter(action="model_deleted")
    assert sorted(event.context["model"]["name"] for event in deleted) == sorted(t.identifier for t in tokens)
    for event in deleted:
        assert event.context["model"]["app"] == "authentik_core"
        assert event.context["model"]["model_name"] == "token"
        assert event.user["username"] == actor_username
    object_pks = [str(token.pk) for token in tokens]
    assert not UserObjectPermission.objects.filter(object_pk__in=object_pks).exists()
    assert not GroupObjectPermission.objects.filter(object_pk__in=object_pks).exists()
    for token in tokens:
        assert token.key not in str(list(Event.objects.values()))


def assert_held_permission_revoked(user_pk: int, foreign: Token, actor_username: str) -> None:
    assert not UserObjectPermission.objects.filter(user_id=user_pk).exists()
    (revoked,) = Event.objects.filter(action="model_updated")
    assert revoked.context["model"]["name"] == foreign.identifier
    assert revoked.context["permission"] == "authentik_core.set_token_key"
    assert revoked.context["grantee"]["pk"] == user_pk
    assert revoked.context["granted"] is False
    assert revoked.user["username"] == actor_username
    assert Token.objects.filter(pk=foreign.pk).exists()


def test_orm_instance_delete(doomed):
    user, tokens, foreign, other = doomed
    user_pk = user.pk
    user.delete()
    assert not User.objects.filter(pk=user_pk).exists()
    assert_tokens_deleted_with_events(tokens, "AnonymousUser")
    assert_held_permission_revoked(user_pk, foreign, "AnonymousUser")
    assert Event.objects.count() == 3
    # Others' rows on the foreign token are untouched.
    assert UserObjectPermission.objects.filter(user=other).count() == 0
    assert other.tokens.count() == 1


def test_orm_queryset_delete_of_several_users(doomed, make_user, make_token):
    user, tokens, _, _ = doomed
    second = make_user(username="second")
    more = [make_token(second, identifier="second-a")]
    deleted, _ = User.objects.filter(pk__in=[user.pk, second.pk]).delete()
    assert deleted > 0
    assert not User.objects.filter(pk__in=[user.pk, second.pk]).exists()
    assert_tokens_deleted_with_events([*tokens, *more], "AnonymousUser")
    assert Event.objects.filter(action="model_deleted").count() == 3


def test_deletion_and_events_commit_together(doomed):
    user, tokens, _, _ = doomed
    with (
        mock.patch("core.services.event_create", side_effect=RuntimeError("audit store down")),
        pytest.raises(RuntimeError),
        transaction.atomic(),  # a savepoint in the test's transaction, as autocommit would be outside tests
    ):
        user.delete()
    assert User.objects.filter(pk=user.pk).exists()
    assert Token.objects.filter(pk__in=[token.pk for token in tokens]).count() == 2
    assert UserObjectPermission.objects.filter(user=user).count() == 2
    assert Event.objects.count() == 0


def test_admin_delete_page(doomed, client, superuser):
    user, tokens, foreign, _ = doomed
    client.force_login(superuser)
    url = reverse("admin:authentik_core_user_delete", args=[user.pk])
    assert client.get(url).status_code == 200
    response = client.post(url, {"post": "yes"})
    assert response.status_code == 302
    assert not User.objects.filter(pk=user.pk).exists()
    assert_tokens_deleted_with_events(tokens, superuser.username)
    assert_held_permission_revoked(user.pk, foreign, superuser.username)
    assert Event.objects.get(action="model_deleted", context__model__name="doomed-a").client_ip == "127.0.0.1"


def test_admin_bulk_delete_action(doomed, client, superuser, make_user, make_token):
    user, tokens, _, _ = doomed
    second = make_user(username="second")
    more = [make_token(second, identifier="second-a"), make_token(second, identifier="second-b")]
    client.force_login(superuser)
    response = client.post(
        reverse("admin:authentik_core_user_changelist"),
        {"action": "delete_selected", "_selected_action": [user.pk, second.pk], "post": "yes"},
    )
    assert response.status_code == 302
    assert not User.objects.filter(pk__in=[user.pk, second.pk]).exists()
    assert_tokens_deleted_with_events([*tokens, *more], superuser.username)
    assert Event.objects.filter(action="model_deleted").count() == 4
