"""The leak check (tests/support/leakcheck.py) itself: it finds a key in every encoding it claims, and only there."""

import base64
import json
import logging
import re
from collections.abc import Callable
from urllib.parse import quote

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from core.models import Token, User, generate_key
from events.models import Event
from tests.support.leakcheck import LEDGER, Ledger, _scan_database, encodings, trackable

KEY = 'Zq8/+x"<k&ey>%Secret-42'


def found(key: str, text: str) -> list[str]:
    ledger = Ledger()
    ledger.learn(key)
    return [label for label, _ in ledger.find(text)]


@pytest.mark.parametrize("prefix", [b"", b"a", b"ab", b"abc", b"Basic user:", b"\x00\xff"])
@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
def test_a_key_inside_base64_is_found_at_every_alignment(prefix: bytes, encode: Callable[[bytes], bytes]) -> None:
    blob = encode(prefix + KEY.encode() + b"trailing bytes").decode()
    assert "base64" in found(KEY, f"Authorization: Basic {blob}")


@pytest.mark.parametrize(
    ("text", "label"),
    [
        (f"GET /x?token={quote(KEY, safe='')} HTTP/1.1", "url-encoded"),
        (f"GET /x?token={re.sub('%[0-9A-F]{2}', lambda m: m.group().lower(), quote(KEY, safe=''))}", "url-encoded"),
        (json.dumps({"echo": KEY}), "json-escaped"),
        ("<input value='Zq8/+x&quot;&lt;k&amp;ey&gt;%Secret-42'>", "html-escaped"),
        (f"plain {KEY} text", "plain"),
    ],
)
def test_a_key_is_found_encoded(text: str, label: str) -> None:
    assert label in found(KEY, text)


def test_other_text_is_not_a_hit() -> None:
    assert found(KEY, "Zq8/+x<k&ey>%Secret-43 " + base64.b64encode(b"unrelated").decode()) == []


def test_policy_probes_are_not_tracked_as_secrets() -> None:
    assert not trackable("x" * 1024)
    assert not trackable("new-key")
    assert not trackable("abababab")
    assert trackable(generate_key())
    assert all(len(form) >= 8 for form in encodings(generate_key()))


def test_the_view_key_answer_is_excluded_and_others_are_not() -> None:
    ledger = Ledger()
    key = generate_key()
    ledger.learn(key)
    ledger.add_response("view_key 200", "/api/v3/core/tokens/t/view_key/", 200, json.dumps({"key": key}).encode())
    ledger.add_response("view_key 403", "/api/v3/core/tokens/t/view_key/", 403, json.dumps({"key": key}).encode())
    ledger.add_response("detail", "/core/tokens/t/", 200, key.encode())
    hits = ledger.check_pending("probe")
    assert [hit.where for hit in hits] == ["view_key 403", "detail"]
    assert ledger.counts["view_key answers (excluded)"] == 1


def test_keys_are_learned_from_bearer_words_and_json_members() -> None:
    ledger = Ledger()
    first, second, third = generate_key(), generate_key(), generate_key()
    ledger.learn_from_bytes(f"Authorization: bearer\t{first}\r\n".encode())
    ledger.learn_from_bytes(json.dumps({"key": second, "other": third}).encode())
    assert ledger.keys == {first, second}


def test_a_hit_names_the_key_only_by_a_hint() -> None:
    ledger = Ledger()
    key = generate_key()
    ledger.learn(key)
    (hit,) = ledger.check("probe", "log record", "demo", f"oops {key}")
    assert key not in str(hit)
    assert key[:4] in str(hit)


@pytest.mark.django_db
def test_the_database_scan_learns_token_keys_and_searches_events(
    make_user: Callable[..., User], make_token: Callable[..., Token]
) -> None:
    token = make_token(make_user())
    planted = Event.objects.create(action="model_updated", app="probe", user={}, context={"oops": token.key})
    ledger = Ledger()
    _scan_database(ledger)
    planted.delete()  # or the suite-wide check would rightly report it at this test's teardown
    assert token.key in ledger.keys
    hits = ledger.check_pending("probe")
    assert [(hit.kind, hit.form) for hit in hits] == [("event", "plain")]


@pytest.mark.django_db
def test_the_suite_wide_ledger_sees_what_the_tests_do(admin_token: Token, make_token: Callable[..., Token]) -> None:
    generated = generate_key()
    assert generated in LEDGER.keys  # generate_key is wrapped for the session
    target = make_token(User.objects.get(username="root"))
    assert target.key in LEDGER.keys  # every saved token
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {admin_token.key}")
    sent = "Sent-" + generate_key()[:20] + " with a space"
    responses = LEDGER.counts["response"]
    client.post(reverse("token-set-key", kwargs={"identifier": target.identifier}), {"key": sent}, format="json")
    assert sent in LEDGER.keys  # what a test sends as a key, even one the policy rejects
    assert LEDGER.counts["response"] == responses + 1
    logging.getLogger("tests.leak-probe").info("probe record %s", "not-a-secret")
    assert any(record.name == "tests.leak-probe" for record in LEDGER.records)
