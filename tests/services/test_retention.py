"""The retention command ``prune_expired``: expired events and expired non-API tokens, in batches."""

import io
import json
import threading
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from guardian.models import GroupObjectPermission, UserObjectPermission
from guardian.shortcuts import assign_perm

from core.models import Token, TokenIntents
from events.models import Event
from tests.helpers import requires_postgres


def prune(**options) -> str:
    out = io.StringIO()
    call_command("prune_expired", stdout=out, **options)
    return out.getvalue()


def make_event(expires) -> Event:
    return Event.objects.create(action="login", app="authentik_core", expires=expires)


def test_deletes_expired_events_only(db, past):
    expired = [make_event(past), make_event(timezone.now() - timedelta(days=400))]
    kept = make_event(timezone.now() + timedelta(days=1))
    output = prune()
    assert not Event.objects.filter(pk__in=[e.pk for e in expired]).exists()
    assert Event.objects.filter(pk=kept.pk).exists()
    assert "Deleted 2 expired events and 0 expired tokens." in output


@pytest.mark.parametrize("intent", [TokenIntents.VERIFICATION, TokenIntents.RECOVERY, TokenIntents.APP_PASSWORD])
def test_deletes_expired_tokens_of_non_api_intents(intent, make_user, make_token, past):
    token = make_token(make_user(), intent=intent, expires=past)
    assert "0 expired events and 1 expired tokens" in prune()
    assert not Token.objects.filter(pk=token.pk).exists()


def test_keeps_api_tokens_unexpired_tokens_and_tokens_that_do_not_expire(make_user, make_token, past):
    owner = make_user()
    kept = [
        make_token(owner, intent=TokenIntents.API, expires=past),
        make_token(owner, intent=TokenIntents.RECOVERY, expires=past, expiring=False),
        make_token(owner, intent=TokenIntents.RECOVERY, expires=timezone.now() + timedelta(minutes=5)),
        make_token(owner, intent=TokenIntents.RECOVERY, expires=None),
    ]
    prune()
    assert Token.objects.filter(pk__in=[t.pk for t in kept]).count() == 4
    assert Event.objects.count() == 0


def test_deleted_tokens_lose_their_object_permissions_and_get_an_event(make_user, make_group, make_token, past):
    holder, group = make_user(), make_group()
    doomed = make_token(make_user(), identifier="old-recovery", intent=TokenIntents.RECOVERY, expires=past)
    kept = make_token(make_user(), identifier="kept")
    for token in (doomed, kept):
        assign_perm("authentik_core.view_token_key", holder, token)
        assign_perm("authentik_core.view_token", group, token)
    prune()
    assert not UserObjectPermission.objects.filter(object_pk=str(doomed.pk)).exists()
    assert not GroupObjectPermission.objects.filter(object_pk=str(doomed.pk)).exists()
    assert UserObjectPermission.objects.filter(object_pk=str(kept.pk)).exists()
    assert GroupObjectPermission.objects.filter(object_pk=str(kept.pk)).exists()
    (event,) = Event.objects.all()
    assert event.action == "model_deleted"
    assert event.context["model"] == {
        "app": "authentik_core",
        "model_name": "token",
        "pk": doomed.pk.hex,
        "name": "old-recovery",
    }
    assert event.context["reason"] == "expired"
    assert event.context["http_request"]["user_agent"] == "system"
    assert doomed.key not in json.dumps(event.context)


def test_works_in_batches(make_user, make_token, past):
    owner = make_user()
    for _ in range(5):
        make_event(past)
        make_token(owner, intent=TokenIntents.VERIFICATION, expires=past)
    with CaptureQueriesContext(connection) as queries:
        output = prune(batch_size=2)
    assert "Deleted 5 expired events and 5 expired tokens." in output
    assert Token.objects.filter(intent=TokenIntents.VERIFICATION).count() == 0
    # The audit events of the five deletions remain; the expired ones are gone.
    assert Event.objects.filter(expires__lte=timezone.now()).count() == 0
    assert Event.objects.filter(action="model_deleted").count() == 5
    event_deletes = [q for q in queries.captured_queries if q["sql"].startswith('DELETE FROM "authentik_events_event"')]
    token_deletes = [q for q in queries.captured_queries if q["sql"].startswith('DELETE FROM "authentik_core_token"')]
    assert len(event_deletes) == 3  # 2 + 2 + 1
    assert len(token_deletes) == 3


def test_second_run_finds_nothing(make_user, make_token, past):
    make_token(make_user(), intent=TokenIntents.RECOVERY, expires=past)
    make_event(past)
    prune()
    assert "Deleted 0 expired events and 0 expired tokens." in prune()


def test_each_app_prunes_its_own_rows(make_user, make_token, past):
    token = make_token(make_user(), intent=TokenIntents.RECOVERY, expires=past)
    event = make_event(past)
    events_out, tokens_out = io.StringIO(), io.StringIO()
    call_command("prune_expired_events", "--batch-size", "1", stdout=events_out)
    assert "Deleted 1 expired events." in events_out.getvalue()
    assert not Event.objects.filter(pk=event.pk).exists()
    assert Token.objects.filter(pk=token.pk).exists()
    call_command("prune_expired_tokens", "--batch-size", "1", stdout=tokens_out)
    assert "Deleted 1 expired tokens." in tokens_out.getvalue()
    assert not Token.objects.filter(pk=token.pk).exists()


@pytest.mark.parametrize("command", ["prune_expired", "prune_expired_events", "prune_expired_tokens"])
@pytest.mark.parametrize("size", ["0", "-3"])
def test_batch_size_must_be_positive(command, size, db):
    with pytest.raises(CommandError):
        call_command(command, "--batch-size", size)


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_a_token_locked_by_a_request_is_skipped_not_waited_for(make_user, make_token, past):
    owner = make_user()
    locked = make_token(owner, intent=TokenIntents.RECOVERY, expires=past)
    free = make_token(owner, intent=TokenIntents.RECOVERY, expires=past)
    holding, release = threading.Event(), threading.Event()

    def hold_row_lock() -> None:
        # What an in-flight update or set_key does: hold the row lock inside its transaction.
        try:
            with transaction.atomic():
                Token.objects.select_for_update().get(pk=locked.pk)
                holding.set()
                release.wait(timeout=30)
        finally:
            connection.close()

    worker = threading.Thread(target=hold_row_lock)
    worker.start()
    try:
        assert holding.wait(timeout=10)
        # Without SKIP LOCKED this would wait for the lock and fail after DB_LOCK_TIMEOUT_MS.
        output = prune()
    finally:
        release.set()
        worker.join(timeout=30)
    assert "1 expired tokens" in output
    assert Token.objects.filter(pk=locked.pk).exists()
    assert not Token.objects.filter(pk=free.pk).exists()
    prune()
    assert not Token.objects.filter(pk=locked.pk).exists()
