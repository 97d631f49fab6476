"""Management commands: bootstrap, create_user, create_token, grant_perm and revoke_perm."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from guardian.shortcuts import get_perms

from core.models import Token, User, key_digest
from core.selectors import user_has_token_perm
from events.models import Event


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_bootstrap_with_supplied_key(monkeypatch):
    monkeypatch.setenv("AUTHENTIK_BOOTSTRAP_TOKEN", "bootstrap-key-from-env")
    output = run("bootstrap")
    admin = User.objects.get(username="akadmin")
    assert admin.is_superuser
    token = Token.objects.get(identifier="authentik-bootstrap-token")
    assert token.user == admin
    assert token.intent == "api"
    assert token.key_digest == key_digest("bootstrap-key-from-env")
    assert not token.expiring
    # The supplied key is not printed; the example curl refers to the variable instead.
    assert "bootstrap-key-from-env" not in output
    assert "$AUTHENTIK_BOOTSTRAP_TOKEN" in output
    assert "set_key" in output
    assert Event.objects.filter(action="model_created").count() == 1


@pytest.mark.django_db
def test_bootstrap_generates_and_prints_the_key_once(monkeypatch):
    monkeypatch.delenv("AUTHENTIK_BOOTSTRAP_TOKEN", raising=False)
    output = run("bootstrap")
    token = Token.objects.get(identifier="authentik-bootstrap-token")
    assert output.count(token.key) == 2  # the key line and the example curl
    second = run("bootstrap")
    assert token.key not in second
    assert "skipped" in second
    assert Token.objects.count() == 1


@pytest.mark.django_db
def test_bootstrap_rejects_an_invalid_supplied_key(monkeypatch):
    monkeypatch.setenv("AUTHENTIK_BOOTSTRAP_TOKEN", "has a space")
    with pytest.raises(CommandError):
        run("bootstrap")
    assert not User.objects.exists()


@pytest.mark.django_db
def test_create_user_and_token_print_the_key_once(monkeypatch):
    monkeypatch.setenv("ALICE_PW", "correct horse battery staple")
    out = run("create_user", "alice", "--email", "alice@example.test", "--password-env", "ALICE_PW")
    assert "correct horse" not in out
    alice = User.objects.get(username="alice")
    assert alice.check_password("correct horse battery staple")
    out = run("create_token", "alice-ci", "--user", "alice")
    token = Token.objects.get(identifier="alice-ci")
    assert out.count(token.key) == 1
    assert token.user == alice
    assert token.intent == "api"


@pytest.mark.django_db
def test_create_token_rejects_duplicates_and_naive_dates():
    User.objects.create_user("bob")
    run("create_token", "bob-1", "--user", "bob")
    with pytest.raises(CommandError, match="identifier"):
        run("create_token", "bob-1", "--user", "bob")
    with pytest.raises(CommandError, match="offset"):
        run("create_token", "bob-2", "--user", "bob", "--expires", "2030-01-01T00:00:00")
    with pytest.raises(CommandError):
        run("create_token", "bob-3", "--user", "nobody")


@pytest.mark.django_db
def test_grant_and_revoke_global_and_object_permissions(make_user, make_token):
    bob = make_user(username="bob")
    target = make_token(make_user())
    other = make_token(make_user())

    run("grant_perm", "set_token_key", "--user", "bob", "--token", target.identifier)
    assert "set_token_key" in get_perms(bob, target)
    assert user_has_token_perm(User.objects.get(pk=bob.pk), "set_token_key", target.identifier)
    assert not user_has_token_perm(User.objects.get(pk=bob.pk), "set_token_key", other.identifier)

    run("revoke_perm", "authentik_core.set_token_key", "--user", "bob", "--token", target.identifier)
    assert not user_has_token_perm(User.objects.get(pk=bob.pk), "set_token_key", target.identifier)

    run("grant_perm", "view_token_key", "--user", "bob")
    assert User.objects.get(pk=bob.pk).has_perm("authentik_core.view_token_key")
    run("revoke_perm", "view_token_key", "--user", "bob")
    assert not User.objects.get(pk=bob.pk).has_perm("authentik_core.view_token_key")


@pytest.mark.django_db
def test_grant_to_a_group(make_user, make_token, make_group):
    group = make_group()
    member = make_user()
    member.groups.add(group)
    target = make_token(make_user())
    run("grant_perm", "set_token_key", "--group", group.name, "--token", target.identifier)
    assert user_has_token_perm(member, "set_token_key", target.identifier)


@pytest.mark.django_db
def test_grant_rejects_unknown_permission_and_token(make_user):
    make_user(username="carol")
    with pytest.raises(CommandError):
        run("grant_perm", "delete_everything", "--user", "carol")
    with pytest.raises(CommandError):
        run("grant_perm", "set_token_key", "--user", "carol", "--token", "missing")
