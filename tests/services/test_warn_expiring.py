"""manage.py warn_expiring: configuration_warning events 7 days and 1 day before a token expires, once each."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from core.expiry import tokens_warn_expiring
from core.models import Token, TokenIntents
from events.models import Event, EventAction
from tokens_service.request_meta import SYSTEM_REQUEST


def run() -> str:
    out = StringIO()
    call_command("warn_expiring", stdout=out)
    return out.getvalue()


def warnings() -> list[tuple[str, int]]:
    return sorted(
        (event.context["model"]["name"], event.context["within_days"])
        for event in Event.objects.filter(action=EventAction.CONFIGURATION_WARNING)
    )


def test_warns_within_7_days_and_within_1_day_once_each(make_user, make_token):
    owner = make_user(username="ada")
    now = timezone.now()
    make_token(owner, identifier="in-3-days", expires=now + timedelta(days=3))
    make_token(owner, identifier="in-5-hours", expires=now + timedelta(hours=5))
    make_token(owner, identifier="in-30-days", expires=now + timedelta(days=30))
    make_token(owner, identifier="expired", expires=now - timedelta(hours=1))
    make_token(owner, identifier="not-expiring", expires=now + timedelta(days=2), expiring=False)
    make_token(owner, identifier="never")
    make_token(owner, identifier="recovery", intent=TokenIntents.RECOVERY, expires=now + timedelta(days=2))

    assert "Wrote 2 expiry warnings." in run()
    assert warnings() == [("in-3-days", 7), ("in-5-hours", 1)]
    event = Event.objects.get(context__model__name="in-3-days")
    assert event.user["is_anonymous"] is True
    assert event.context["owner"] == "ada"
    assert event.context["message"] == "Token in-3-days expires within 7 days."
    assert event.app == "authentik_core"

    # Idempotent: a second run writes nothing.
    assert "Wrote 0 expiry warnings." in run()
    assert len(warnings()) == 2


def test_the_1_day_warning_follows_the_7_day_one(make_user, make_token):
    now = timezone.now()
    token = make_token(make_user(), identifier="t", expires=now + timedelta(days=1, hours=12))
    assert tokens_warn_expiring(now=now, request_meta=SYSTEM_REQUEST) == 1
    # A day later (the clock is a parameter; nothing sleeps).
    later = now + timedelta(days=1)
    assert tokens_warn_expiring(now=later, request_meta=SYSTEM_REQUEST) == 1
    assert tokens_warn_expiring(now=later + timedelta(hours=1), request_meta=SYSTEM_REQUEST) == 0
    assert warnings() == [("t", 1), ("t", 7)]
    token.refresh_from_db()
    assert token.expiry_warned_days == 1


def test_an_extended_token_is_warned_again_when_it_comes_close(make_user, make_token):
    now = timezone.now()
    token = make_token(make_user(), identifier="t", expires=now + timedelta(days=3))
    assert tokens_warn_expiring(now=now, request_meta=SYSTEM_REQUEST) == 1
    Token.objects.filter(pk=token.pk).update(expires=now + timedelta(days=5))
    assert tokens_warn_expiring(now=now, request_meta=SYSTEM_REQUEST) == 1
    assert warnings() == [("t", 7), ("t", 7)]


def test_inactive_owners_get_no_warning(make_user, make_token):
    make_token(make_user(is_active=False), expires=timezone.now() + timedelta(days=2))
    assert tokens_warn_expiring(now=timezone.now(), request_meta=SYSTEM_REQUEST) == 0


def test_batches_cover_every_token(make_user, make_token):
    owner = make_user()
    for number in range(5):
        make_token(owner, identifier=f"t{number}", expires=timezone.now() + timedelta(days=2))
    assert tokens_warn_expiring(now=timezone.now(), request_meta=SYSTEM_REQUEST, batch_size=2) == 5
    assert tokens_warn_expiring(now=timezone.now(), request_meta=SYSTEM_REQUEST, batch_size=2) == 0


@pytest.mark.django_db
def test_bad_batch_size_is_an_error():
    with pytest.raises(CommandError):
        call_command("warn_expiring", "--batch-size", "0")
