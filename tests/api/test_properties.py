"""Property-based tests (Hypothesis) of the key policy and the Bearer parser.

In process: the set_key serializer accepts exactly the contract's keys; the parser hands exactly the sent
key to the lookup and rejects everything else without one. Over a real socket: every accepted key,
once set, authenticates through a raw ``Authorization`` header, and nothing rejected writes anything.
Example counts are bounded so the whole module runs in seconds.
"""

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.test import APIClient, APIRequestFactory

from core import authentication
from core.models import Token, User, generate_key
from core.serializers import TokenSetKeySerializer
from events.models import Event
from tests.support.live import LiveServer

pytestmark = pytest.mark.property

VISIBLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
ACCEPTED_KEYS = st.text(VISIBLE, min_size=1, max_size=1024)
LONG_VISIBLE = st.text(VISIBLE, min_size=1010, max_size=1040)
SCHEMES = st.sampled_from(["Bearer", "bearer", "BEARER", "bEaReR"])
SEPARATORS = st.text(st.sampled_from(" \t"), min_size=1, max_size=3)
PADDING = st.text(st.sampled_from(" \t"), max_size=2)
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False))
ANY_JSON = st.recursive(
    JSON_SCALARS | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
# Any text a key field might be sent: every plane, control characters, lone surrogates.
ANY_TEXT = st.text(st.characters(blacklist_categories=()), max_size=40)

# Fixtures here (a seeded database, a lookup recorder) are meant to be shared by a test's examples.
FAST = hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# A request through the whole Django stack costs about 20 ms in process.
REQUESTS = hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
LIVE = hypothesis_settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


def policy_accepts(value: Any, min_length: int = 1) -> bool:
    """The key policy (docs/contract.md, "Setting a key") stated independently of the code.

    A JSON string of 1..1024 visible ASCII characters, at least ``min_length`` long.
    """
    return (
        isinstance(value, str)
        and max(1, min_length) <= len(value) <= 1024
        and all(0x21 <= ord(char) <= 0x7E for char in value)
    )


@contextmanager
def no_throttles() -> Iterator[None]:
    rates = {"auth_failures": None, "set_key": None}
    with override_settings(REST_FRAMEWORK={**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}):
        yield


# --- the key policy ----------------------------------------------------------------------------------


@FAST
@given(st.one_of(ANY_TEXT, ACCEPTED_KEYS, LONG_VISIBLE, ANY_JSON))
def test_the_serializer_accepts_exactly_the_policy(value: Any) -> None:
    serializer = TokenSetKeySerializer(data={"key": value})
    assert serializer.is_valid() == policy_accepts(value)
    if serializer.is_valid():
        assert serializer.validated_data["key"] == value  # no trimming, no coercion
    else:
        assert set(serializer.errors) == {"key"}


@FAST
@given(st.one_of(ACCEPTED_KEYS, st.text(VISIBLE, max_size=40)), st.integers(min_value=1, max_value=64))
def test_the_minimum_length_setting_is_part_of_the_policy(value: str, minimum: int) -> None:
    with override_settings(TOKEN_KEY_MIN_LENGTH=minimum):
        assert TokenSetKeySerializer(data={"key": value}).is_valid() == policy_accepts(value, minimum)


# --- the Bearer parser ----------------------------------------------------------------------------------


class Lookup:
    """Stands in for the database lookup: records what the parser asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, key: str) -> Any:
        self.asked.append(key)
        # A current key of a token that was used a moment ago and has no allowlist: nothing else is looked up.
        token = type("FakeToken", (), {"user": "someone", "allowed_ips": None, "last_used": timezone.now()})()
        return type("FakeMatch", (), {"token": token, "authenticates": True})()


@pytest.fixture
def lookup(monkeypatch: pytest.MonkeyPatch) -> Lookup:
    recorder = Lookup()
    monkeypatch.setattr(authentication, "bearer_match", recorder)
    return recorder


def parse(header: str) -> Any:
    request = Request(APIRequestFactory().get("/", HTTP_AUTHORIZATION=header))
    return authentication.BearerTokenAuthentication().authenticate(request)


def reference_parse(header: str) -> str | None:
    """An independent reading of the header grammar: ``bearer`` (ASCII, any case), blanks, one key."""
    words = [word for word in re.split(r"[ \t]+", header.strip(" \t")) if word]
    if len(words) != 2 or not words[0].isascii() or words[0].lower() != "bearer":
        return None
    return words[1] if policy_accepts(words[1]) else None


@FAST
@given(PADDING, SCHEMES, SEPARATORS, ACCEPTED_KEYS, PADDING)
def test_any_accepted_key_reaches_the_lookup_unchanged(
    lookup: Lookup, left: str, scheme: str, blank: str, key: str, right: str
) -> None:
    lookup.asked.clear()
    with no_throttles():
        parse(f"{left}{scheme}{blank}{key}{right}")
    assert lookup.asked == [key]


@FAST
@given(st.text(st.characters(max_codepoint=0xFF), max_size=60) | st.builds("{} {}".format, SCHEMES, ANY_TEXT))
def test_the_parser_agrees_with_the_grammar_and_never_looks_up_junk(lookup: Lookup, header: str) -> None:
    lookup.asked.clear()
    expected = reference_parse(header)
    with no_throttles():
        if expected is None:
            with pytest.raises(exceptions.AuthenticationFailed):
                parse(header)
            assert lookup.asked == []
        else:
            parse(header)
            assert lookup.asked == [expected]


# --- rejected input never writes (in process) ---------------------------------------------------------


def snapshot() -> tuple[Any, ...]:
    return (
        tuple(Token.objects.order_by("identifier").values_list("identifier", "key_digest")),
        Event.objects.count(),
    )


@pytest.fixture
def seeded(make_user: Callable[..., User], make_token: Callable[..., Token]) -> tuple[Token, Token]:
    root = make_user(superuser=True, username="root")
    return make_token(root, identifier="admin-api"), make_token(root, identifier="target")


@REQUESTS
@given(st.one_of(ANY_TEXT, LONG_VISIBLE, ANY_JSON))
def test_a_rejected_key_changes_nothing(seeded: tuple[Token, Token], value: Any) -> None:
    assume(not policy_accepts(value))
    admin, _ = seeded
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {admin.key}")
    before = snapshot()
    body = json.dumps({"key": value}).encode()  # ASCII-escaped, so lone surrogates travel too
    with no_throttles():
        response = client.generic(
            "POST", reverse("token-set-key", kwargs={"identifier": "target"}), body, content_type="application/json"
        )
    assert response.status_code == 400
    assert set(response.json()) == {"key"}
    assert snapshot() == before


@REQUESTS
@given(st.binary(max_size=120) | st.text(max_size=60).map(str.encode))
def test_a_body_that_is_not_a_valid_document_changes_nothing(seeded: tuple[Token, Token], body: bytes) -> None:
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    assume(not (isinstance(document, dict) and policy_accepts(document.get("key"))))
    admin, _ = seeded
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {admin.key}")
    before = snapshot()
    with no_throttles():
        response = client.generic(
            "POST", reverse("token-set-key", kwargs={"identifier": "target"}), body, content_type="application/json"
        )
    assert response.status_code == 400
    assert snapshot() == before


# --- through a real server ---------------------------------------------------------------------------


def raw_post(live: LiveServer, authorization: bytes, body: bytes, identifier: str = "target") -> Any:
    request = (
        f"POST /core/tokens/{identifier}/set_key/ HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
        + b"Authorization: "
        + authorization
        + b"\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    return live.raw(request)


@pytest.mark.live
@pytest.mark.django_db(transaction=True)
@LIVE
@given(key=ACCEPTED_KEYS, scheme=SCHEMES, blank=SEPARATORS)
def test_any_accepted_key_round_trips_through_a_real_authorization_header(
    live: LiveServer, seeded: tuple[Token, Token], key: str, scheme: str, blank: str
) -> None:
    admin, target = seeded
    assume(key != admin.key)
    # Hypothesis also draws string constants from the project's source, such as "model_updated": as a
    # key, the leak check would then find it in every event's action. Such words are not secrets.
    assume(not re.fullmatch(r"[a-z_]+", key))
    previous = Token.objects.get(pk=target.pk).key
    events = Event.objects.count()
    response = raw_post(live, b"Bearer " + admin.key.encode(), json.dumps({"key": key}).encode())
    assert response.status == 204, response.body
    assert Event.objects.count() == events + 1
    # The new key authenticates as the target's owner (a superuser): an empty body is then a 400 on
    # "key", which only an authenticated, permitted caller can reach; nothing is written.
    authenticated = raw_post(live, scheme.encode() + blank.encode() + key.encode(), b"{}")
    assert authenticated.status == 400, authenticated.body
    assert "key" in authenticated.json()
    if previous != key:
        refused = raw_post(live, b"Bearer " + previous.encode(), b"{}")
        assert refused.status == 403
        assert refused.json()["code"] == "authentication_failed"
    assert Event.objects.count() == events + 1


_GUNICORN_REJECTS = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


@pytest.mark.live
@pytest.mark.django_db(transaction=True)
@LIVE
@given(value=st.binary(max_size=200).filter(lambda value: b"\r" not in value and b"\n" not in value))
def test_any_other_authorization_bytes_are_refused_and_change_nothing(
    live: LiveServer, seeded: tuple[Token, Token], value: bytes
) -> None:
    before = snapshot()
    response = raw_post(live, value, json.dumps({"key": generate_key()}).encode())
    if _GUNICORN_REJECTS.search(value):
        assert response.status == 400  # control characters in a header: refused by the HTTP parser
    else:
        assert response.status == 403
        assert response.json()["code"] == "authentication_failed"
    assert snapshot() == before
