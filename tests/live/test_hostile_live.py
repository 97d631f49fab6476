"""Hostile requests, byte for byte, against a real gunicorn process: exact status, never a 5xx, no writes.

Every case snapshots the tokens and events before and after and is counted in the session tally
(``tests.support.leakcheck.TALLY``) that the README's table quotes. The leak check (``tests.support.leakcheck``)
searches every answer and the server's log for the keys used here.
"""

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.conf import settings

from core.models import Token, TokenIntents, User, generate_key, key_digest
from events.models import Event
from tests.helpers import RawResponse
from tests.support.leakcheck import TALLY
from tests.support.live import LiveServer, start_server

pytestmark = [pytest.mark.live, pytest.mark.hostile, pytest.mark.django_db(transaction=True)]

LIMIT = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
CT_JSON = b"Content-Type: application/json"


@dataclass(frozen=True)
class World:
    admin_key: str  # a superuser's api token
    user_key: str  # a user without any permission
    target: str  # identifier of a token owned by the superuser
    target_key: str
    other_key: str  # held by another token: a collision for set_key


@pytest.fixture
def world(make_user: Callable[..., User], make_token: Callable[..., Token]) -> World:
    root = make_user(superuser=True, username="root")
    admin = make_token(root, identifier="admin-api")
    plain = make_token(make_user(username="plain"), identifier="plain-api")
    target = make_token(root, identifier="target")
    other = make_token(root, identifier="other")
    return World(admin.key, plain.key, target.identifier, target.key, other.key)


def http(
    *,
    method: bytes = b"POST",
    path: bytes = b"/core/tokens/target/set_key/",
    headers: tuple[bytes, ...] = (),
    body: bytes = b"",
    length: bool = True,
    version: bytes = b"HTTP/1.1",
    host: bytes | None = b"127.0.0.1",
) -> bytes:
    """An HTTP/1.1 request as raw bytes; ``Content-Length`` is added unless ``length`` is false."""
    lines = [method + b" " + path + b" " + version]
    if host is not None:
        lines.append(b"Host: " + host)
    lines += headers
    if length:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def bearer(key: str | bytes) -> bytes:
    return b"Authorization: Bearer " + (key.encode() if isinstance(key, str) else key)


def json_body(value: Any) -> bytes:
    return json.dumps(value).encode()


def chunked(body: bytes, size: int = 1000) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n\r\n"


def snapshot() -> tuple[Any, ...]:
    """Everything a hostile request must leave as it was: every token column and every event."""
    tokens = tuple(
        Token.objects.order_by("identifier").values_list(
            "identifier", "key_digest", "intent", "user_id", "description", "expires", "expiring", "managed"
        )
    )
    # A refused key collision is audited (suspicious_request): a record of the refusal, not a change.
    events = tuple(
        Event.objects.exclude(action="suspicious_request").order_by("event_uuid").values_list("event_uuid", "action")
    )
    return tokens, events, User.objects.count()


def exchange(live: LiveServer, case_class: str, request: bytes, *, intended_write: bool = False) -> RawResponse:
    """Send ``request``; tally it; assert no 5xx and, unless a write is intended, no change at all."""
    before = snapshot()
    response = live.raw(request, timeout=20)
    changed = snapshot() != before
    TALLY.record(case_class, response.status, changed and not intended_write)
    assert response.status != 0, "no HTTP answer"
    assert response.status < 500, response.body[:300]
    if not intended_write:
        assert not changed, "a rejected request changed tokens or events"
    return response


def assert_answer(response: RawResponse, status: int, expect: str | None) -> None:
    """``expect`` is ``code:<code>`` for ``{"detail", "code"}`` bodies or ``field:<name>`` for 400 field errors."""
    assert response.status == status, response.body[:300]
    if expect is None:
        return
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    kind, _, value = expect.partition(":")
    if kind == "code":
        assert body["code"] == value, body
        assert isinstance(body["detail"], str)
    else:
        assert value in body, body
        assert all(isinstance(message, str) for message in body[value]), body


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[World], bytes]
    status: int
    expect: str | None

    def __str__(self) -> str:
        return self.name


def cases(*items: Case) -> Iterator[Any]:
    for case in items:
        yield pytest.param(case, id=case.name)


FAILED = "code:authentication_failed"
NOT_AUTH = "code:not_authenticated"
BAD_REQUEST = "code:bad_request"
# Authenticated, then rejected on the (empty) body: the credential was accepted, nothing was written.
ACCEPTED = "field:key"

# --- headers --------------------------------------------------------------------------------------

HEADER_CASES = list(
    cases(
        Case("non-utf8-bytes", lambda w: http(headers=(bearer(b"\xff\xfe\xfd"), CT_JSON), body=b"{}"), 403, FAILED),
        Case(
            "valid-key-then-latin1-byte",
            lambda w: http(headers=(bearer(w.admin_key.encode() + b"\xe9"), CT_JSON), body=b"{}"),
            403,
            FAILED,
        ),
        Case(
            "utf8-encoded-unicode-key",
            lambda w: http(headers=(bearer("kéy-ünïcode-★".encode()), CT_JSON), body=b"{}"),
            403,
            FAILED,
        ),
        Case(
            "nbsp-separator-0xA0",
            lambda w: http(headers=(b"Authorization: Bearer\xa0" + w.admin_key.encode(), CT_JSON), body=b"{}"),
            403,
            FAILED,
        ),
        Case(
            "nel-separator-0x85",
            lambda w: http(headers=(b"Authorization: Bearer\x85" + w.admin_key.encode(), CT_JSON), body=b"{}"),
            403,
            FAILED,
        ),
        Case(
            "vertical-tab-separator",
            lambda w: http(headers=(b"Authorization: Bearer\x0b" + w.admin_key.encode(), CT_JSON), body=b"{}"),
            400,
            BAD_REQUEST,
        ),
        Case(
            "tab-separator-accepted",
            lambda w: http(headers=(b"Authorization: Bearer\t" + w.admin_key.encode(), CT_JSON), body=b"{}"),
            400,
            ACCEPTED,
        ),
        Case(
            "many-spaces-accepted",
            lambda w: http(
                headers=(b"Authorization:    Bearer     " + w.admin_key.encode() + b"   ", CT_JSON), body=b"{}"
            ),
            400,
            ACCEPTED,
        ),
        Case(
            "lowercase-scheme-accepted",
            lambda w: http(headers=(b"Authorization: bearer " + w.admin_key.encode(), CT_JSON), body=b"{}"),
            400,
            ACCEPTED,
        ),
        Case(
            "uppercase-scheme-accepted",
            lambda w: http(headers=(b"Authorization: BEARER " + w.admin_key.encode(), CT_JSON), body=b"{}"),
            400,
            ACCEPTED,
        ),
        Case(
            "scheme-glued-to-key",
            lambda w: http(headers=(b"Authorization: Bearer" + w.admin_key.encode(), CT_JSON), body=b"{}"),
            403,
            FAILED,
        ),
        Case("scheme-only", lambda w: http(headers=(b"Authorization: Bearer", CT_JSON), body=b"{}"), 403, FAILED),
        Case("empty-authorization", lambda w: http(headers=(b"Authorization:", CT_JSON), body=b"{}"), 403, FAILED),
        Case(
            "key-then-second-word",
            lambda w: http(headers=(bearer(w.admin_key + " extra"), CT_JSON), body=b"{}"),
            403,
            FAILED,
        ),
        Case(
            "basic-scheme-with-key",
            lambda w: http(headers=(b"Authorization: Basic " + w.admin_key.encode(), CT_JSON), body=b"{}"),
            403,
            FAILED,
        ),
        Case(
            "token-scheme-with-key",
            lambda w: http(headers=(b"Authorization: Token " + w.admin_key.encode(), CT_JSON), body=b"{}"),
            403,
            FAILED,
        ),
        Case(
            "unicode-lookalike-scheme",
            lambda w: http(
                headers=("Authorization: Bearer\u017f ".encode() + w.admin_key.encode(), CT_JSON), body=b"{}"
            ),
            403,
            FAILED,
        ),
        Case(
            "repeated-authorization-valid-twice",
            lambda w: http(headers=(bearer(w.admin_key), bearer(w.admin_key), CT_JSON), body=b"{}"),
            403,
            FAILED,
        ),
        Case(
            "repeated-authorization-invalid-then-valid",
            lambda w: http(headers=(bearer("wrong-key-value-1"), bearer(w.admin_key), CT_JSON), body=b"{}"),
            403,
            FAILED,
        ),
        Case(
            "repeated-authorization-valid-then-invalid",
            lambda w: http(headers=(bearer(w.admin_key), bearer("wrong-key-value-2"), CT_JSON), body=b"{}"),
            403,
            FAILED,
        ),
        Case(
            "comma-joined-keys",
            lambda w: http(headers=(bearer(w.admin_key + "," + w.user_key), CT_JSON), body=b"{}"),
            403,
            FAILED,
        ),
        Case("key-1025-chars", lambda w: http(headers=(bearer("k" * 1025), CT_JSON), body=b"{}"), 403, FAILED),
        Case("header-8000-bytes", lambda w: http(headers=(bearer("k" * 8000), CT_JSON), body=b"{}"), 403, FAILED),
        Case(
            "header-over-gunicorn-limit",
            lambda w: http(headers=(bearer("k" * 9000), CT_JSON), body=b"{}"),
            431,
            "code:request_headers_too_large",
        ),
        Case(
            "too-many-headers",
            lambda w: http(headers=(*(b"X-Pad-%d: v" % i for i in range(120)), CT_JSON), body=b"{}"),
            431,
            "code:request_headers_too_large",
        ),
        Case(
            "nul-in-authorization",
            lambda w: http(headers=(bearer(b"abc\x00def"), CT_JSON), body=b"{}"),
            400,
            BAD_REQUEST,
        ),
        Case(
            "bare-cr-in-authorization",
            lambda w: http(headers=(bearer(b"abc\rdef"), CT_JSON), body=b"{}"),
            400,
            BAD_REQUEST,
        ),
        Case(
            "space-before-colon",
            lambda w: http(headers=(b"Authorization : Bearer " + w.admin_key.encode(), CT_JSON), body=b"{}"),
            400,
            BAD_REQUEST,
        ),
        Case(
            "missing-colon-with-key",
            # gunicorn rejects the line; its error page must not quote it (the key is in it).
            lambda w: http(headers=(b"Authorization Bearer " + w.admin_key.encode(), CT_JSON), body=b"{}"),
            400,
            BAD_REQUEST,
        ),
        Case(
            "obsolete-line-folding",
            lambda w: http(headers=(b"Authorization: Bearer", b" " + w.admin_key.encode(), CT_JSON), body=b"{}"),
            400,
            BAD_REQUEST,
        ),
        Case(
            "non-ascii-header-name",
            lambda w: http(headers=("Authörization: Bearer ".encode() + w.admin_key.encode(), CT_JSON), body=b"{}"),
            400,
            BAD_REQUEST,
        ),
        Case("no-credentials", lambda w: http(headers=(CT_JSON,), body=b"{}"), 403, NOT_AUTH),
        Case(
            "garbage-session-cookie",
            lambda w: http(headers=(b"Cookie: sessionid=\xff\xfe; csrftoken=x", CT_JSON), body=b"{}"),
            403,
            NOT_AUTH,
        ),
        Case(
            "key-in-cookie-not-a-credential",
            lambda w: http(headers=(b"Cookie: Authorization=Bearer " + w.admin_key.encode(), CT_JSON), body=b"{}"),
            403,
            NOT_AUTH,
        ),
        Case(
            "key-in-query-not-a-credential",
            lambda w: http(path=b"/core/tokens/target/set_key/?access_token=" + w.admin_key.encode(), body=b"{}"),
            403,
            NOT_AUTH,
        ),
        Case(
            "unpermitted-caller",
            lambda w: http(headers=(bearer(w.user_key), CT_JSON), body=json_body({"key": generate_key()})),
            403,
            "code:permission_denied",
        ),
        Case(
            "hostile-request-id",
            lambda w: http(headers=(b"X-Request-ID: \xff\xfe<script>" + b"x" * 500, CT_JSON), body=b"{}"),
            403,
            NOT_AUTH,
        ),
        Case(
            "disallowed-host",
            lambda w: http(headers=(bearer(w.admin_key), CT_JSON), body=b"{}", host=b"evil.example"),
            400,
            BAD_REQUEST,
        ),
        Case(
            "nul-in-host", lambda w: http(headers=(CT_JSON,), body=b"{}", host=b"127.0.0.1\x00evil"), 400, BAD_REQUEST
        ),
    )
)


@pytest.mark.parametrize("case", HEADER_CASES)
def test_hostile_headers(case: Case, live: LiveServer, world: World) -> None:
    assert_answer(exchange(live, "headers", case.build(world)), case.status, case.expect)


def test_gunicorn_error_answers_are_json_and_quote_nothing(live: LiveServer, world: World) -> None:
    request = http(headers=(b"Authorization Bearer " + world.admin_key.encode(), CT_JSON), body=b"{}")
    response = exchange(live, "headers", request)
    assert response.status == 400
    assert response.json() == {"detail": "Bad Request.", "code": "bad_request"}
    assert world.admin_key.encode() not in response.body
    assert b"Authorization" not in response.body


def test_hostile_request_id_is_replaced(live: LiveServer, world: World) -> None:
    response = exchange(live, "headers", http(headers=(b"X-Request-ID: ../../etc/passwd%0a",), body=b"{}"))
    assert response.status == 403
    assert len(response.headers["x-request-id"]) == 32
    assert "passwd" not in response.headers["x-request-id"]


# --- paths ------------------------------------------------------------------------------------------

NOT_FOUND = "code:not_found"


def set_key_with(path: bytes) -> Callable[[World], bytes]:
    """A superuser's set_key with a valid new key at ``path``: only the path can make it fail."""
    return lambda w: http(path=path, headers=(bearer(w.admin_key), CT_JSON), body=json_body({"key": generate_key()}))


PATH_CASES = list(
    cases(
        Case("percent-encoded-nul", set_key_with(b"/core/tokens/tar%00get/set_key/"), 404, NOT_FOUND),
        Case("raw-nul-in-request-line", set_key_with(b"/core/tokens/tar\x00get/set_key/"), 400, BAD_REQUEST),
        Case("encoded-slash", set_key_with(b"/core/tokens/tar%2Fget/set_key/"), 404, NOT_FOUND),
        Case("encoded-slash-lowercase", set_key_with(b"/core/tokens/tar%2fget/set_key/"), 404, NOT_FOUND),
        Case("encoded-backslash", set_key_with(b"/core/tokens/tar%5Cget/set_key/"), 404, NOT_FOUND),
        Case("invalid-utf8-escapes", set_key_with(b"/core/tokens/%ff%fe/set_key/"), 404, NOT_FOUND),
        Case("overlong-utf8-slash", set_key_with(b"/core/tokens/%c0%af/set_key/"), 404, NOT_FOUND),
        Case("lone-surrogate-utf8", set_key_with(b"/core/tokens/%ed%a0%80/set_key/"), 404, NOT_FOUND),
        Case("raw-high-bytes", set_key_with(b"/core/tokens/\xc3\xa9t\xe9/set_key/"), 400, BAD_REQUEST),
        Case("encoded-dot-dot", set_key_with(b"/core/tokens/%2e%2e/set_key/"), 404, NOT_FOUND),
        Case("dot-dot-segments", set_key_with(b"/core/tokens/../tokens/target/set_key/"), 404, NOT_FOUND),
        Case("sql-metacharacters", set_key_with(b"/core/tokens/%27%20OR%20%271%27=%271/set_key/"), 404, NOT_FOUND),
        Case("like-wildcards", set_key_with(b"/core/tokens/%25/set_key/"), 404, NOT_FOUND),
        Case("identifier-256-chars", set_key_with(b"/core/tokens/" + b"t" * 256 + b"/set_key/"), 404, NOT_FOUND),
        Case("identifier-7000-chars", set_key_with(b"/core/tokens/" + b"t" * 7000 + b"/set_key/"), 404, NOT_FOUND),
        Case(
            "request-line-over-limit",
            set_key_with(b"/core/tokens/" + b"t" * 9000 + b"/set_key/"),
            414,
            "code:request_line_too_long",
        ),
        Case("double-slash", set_key_with(b"/core/tokens//set_key/"), 404, NOT_FOUND),
        # Django's APPEND_SLASH: a redirect to the same path with a slash; the POST body is not replayed.
        Case("no-trailing-slash", set_key_with(b"/core/tokens/target/set_key"), 301, None),
        Case("protocol-relative-path", set_key_with(b"//evil.example/core/tokens/target/set_key"), 404, NOT_FOUND),
        Case("nul-in-query", set_key_with(b"/core/tokens/target/set_key/?a=%00&%00=b"), 204, None),
        Case(
            "detail-route-nul",
            lambda w: http(method=b"GET", path=b"/core/tokens/tar%00get/", headers=(bearer(w.admin_key),)),
            404,
            NOT_FOUND,
        ),
        Case(
            "options-with-nul",
            lambda w: http(method=b"OPTIONS", path=b"/core/tokens/tar%00get/", headers=(bearer(w.admin_key),)),
            404,
            NOT_FOUND,
        ),
        Case(
            "view-key-with-nul",
            lambda w: http(method=b"GET", path=b"/core/tokens/tar%00get/view_key/", headers=(bearer(w.admin_key),)),
            404,
            NOT_FOUND,
        ),
        Case(
            "filter-with-nul",
            lambda w: http(method=b"GET", path=b"/core/tokens/?identifier=a%00b", headers=(bearer(w.admin_key),)),
            400,
            "field:identifier",
        ),
        Case(
            "search-with-nul",
            lambda w: http(method=b"GET", path=b"/core/tokens/?search=%00", headers=(bearer(w.admin_key),)),
            400,
            "field:non_field_errors",
        ),
        Case(
            "event-detail-not-a-uuid",
            lambda w: http(method=b"GET", path=b"/events/events/%00/", headers=(bearer(w.admin_key),)),
            404,
            NOT_FOUND,
        ),
        Case(
            "event-filter-bad-ip",
            lambda w: http(method=b"GET", path=b"/events/events/?client_ip=%00zz", headers=(bearer(w.admin_key),)),
            400,
            "field:client_ip",
        ),
        Case("asterisk-target", lambda w: http(method=b"OPTIONS", path=b"*"), 404, NOT_FOUND),
        Case(
            "absolute-form-target",
            lambda w: http(
                path=b"http://127.0.0.1/core/tokens/target/set_key/", headers=(bearer(w.admin_key), CT_JSON), body=b"{}"
            ),
            400,
            ACCEPTED,
        ),
    )
)


@pytest.mark.parametrize("case", PATH_CASES)
def test_hostile_paths(case: Case, live: LiveServer, world: World) -> None:
    intended = case.status == 204
    response = exchange(live, "paths", case.build(world), intended_write=intended)
    assert_answer(response, case.status, case.expect)


def test_nul_in_query_arguments_is_recorded_replaced(live: LiveServer, world: World) -> None:
    request = set_key_with(b"/core/tokens/target/set_key/?a=%00x&%00=b")(world)
    assert exchange(live, "paths", request, intended_write=True).status == 204
    args = Event.objects.get(action="model_updated").context["http_request"]["args"]
    assert args == {"a": "\ufffdx", "\ufffd": "b"}


# --- methods and request framing (answered by gunicorn or the router) ---------------------------------

FRAMING_CASES = list(
    cases(
        Case("garbage-request-line", lambda w: b"GARBAGE\r\n\r\n", 400, BAD_REQUEST),
        Case("empty-request-line", lambda w: b"\r\n\r\n\r\n", 400, BAD_REQUEST),
        Case("http-9.9", lambda w: http(version=b"HTTP/9.9", body=b"{}"), 400, BAD_REQUEST),
        Case("lowercase-method", lambda w: http(method=b"post", body=b"{}"), 400, BAD_REQUEST),
        Case("nul-in-method", lambda w: http(method=b"PO\x00ST", body=b"{}"), 400, BAD_REQUEST),
        Case(
            "unknown-method",
            lambda w: http(method=b"BREW", headers=(bearer(w.admin_key), CT_JSON), body=b"{}"),
            405,
            "code:method_not_allowed",
        ),
        Case(
            "get-on-set-key",
            lambda w: http(method=b"GET", headers=(bearer(w.admin_key),)),
            405,
            "code:method_not_allowed",
        ),
        Case(
            "put-on-set-key",
            lambda w: http(
                method=b"PUT", headers=(bearer(w.admin_key), CT_JSON), body=json_body({"key": generate_key()})
            ),
            405,
            "code:method_not_allowed",
        ),
        Case(
            "delete-on-set-key",
            lambda w: http(method=b"DELETE", headers=(bearer(w.admin_key),)),
            405,
            "code:method_not_allowed",
        ),
        Case("trace", lambda w: http(method=b"TRACE", headers=(bearer(w.admin_key),)), 405, "code:method_not_allowed"),
        Case("head-on-set-key", lambda w: http(method=b"HEAD", headers=(bearer(w.admin_key),)), 405, None),
        Case(
            "method-override-header-ignored",
            lambda w: http(
                method=b"GET", headers=(bearer(w.admin_key), b"X-HTTP-Method-Override: POST", CT_JSON), body=b"{}"
            ),
            405,
            "code:method_not_allowed",
        ),
        Case("options-anonymous", lambda w: http(method=b"OPTIONS"), 403, NOT_AUTH),
        Case("options-authenticated", lambda w: http(method=b"OPTIONS", headers=(bearer(w.admin_key),)), 200, None),
        Case(
            "content-length-not-a-number",
            lambda w: http(headers=(bearer(w.admin_key), CT_JSON, b"Content-Length: abc"), body=b"{}", length=False),
            400,
            BAD_REQUEST,
        ),
        Case(
            "content-length-negative",
            lambda w: http(headers=(bearer(w.admin_key), CT_JSON, b"Content-Length: -2"), body=b"{}", length=False),
            400,
            BAD_REQUEST,
        ),
        Case(
            "two-different-content-lengths",
            lambda w: http(
                headers=(bearer(w.admin_key), CT_JSON, b"Content-Length: 2", b"Content-Length: 3"),
                body=b"{}",
                length=False,
            ),
            400,
            BAD_REQUEST,
        ),
        Case(
            "content-length-and-chunked",
            lambda w: http(
                headers=(bearer(w.admin_key), CT_JSON, b"Content-Length: 10", b"Transfer-Encoding: chunked"),
                body=chunked(b"{}"),
                length=False,
            ),
            400,
            BAD_REQUEST,
        ),
        Case(
            "unknown-transfer-coding",
            lambda w: http(
                headers=(bearer(w.admin_key), CT_JSON, b"Transfer-Encoding: gzip"), body=chunked(b"{}"), length=False
            ),
            400,
            BAD_REQUEST,
        ),
        Case(
            "invalid-chunk-size",
            lambda w: http(
                headers=(bearer(w.admin_key), CT_JSON, b"Transfer-Encoding: chunked"),
                body=b"zz\r\n{}\r\n0\r\n\r\n",
                length=False,
            ),
            400,
            BAD_REQUEST,
        ),
        Case(
            "content-length-shorter-than-body",
            lambda w: http(
                headers=(bearer(w.admin_key), CT_JSON, b"Content-Length: 5"),
                body=json_body({"key": generate_key()}),
                length=False,
            ),
            400,
            "field:non_field_errors",
        ),
        Case(
            "request-smuggling-second-request",
            lambda w: (
                http(headers=(bearer(w.user_key), CT_JSON), body=b"{}")
                + http(headers=(bearer(w.admin_key), CT_JSON), body=json_body({"key": generate_key()}))
            ),
            403,
            "code:permission_denied",
        ),
    )
)


@pytest.mark.parametrize("case", FRAMING_CASES)
def test_hostile_methods_and_framing(case: Case, live: LiveServer, world: World) -> None:
    assert_answer(exchange(live, "methods and framing", case.build(world)), case.status, case.expect)


# --- bodies -----------------------------------------------------------------------------------------


def set_key_body(body: bytes, *extra: bytes, content_type: bytes | None = CT_JSON) -> Callable[[World], bytes]:
    """A superuser's set_key on an existing token: only the body (or its type) can make it fail."""

    def build(w: World) -> bytes:
        headers = (bearer(w.admin_key), *((content_type,) if content_type else ()), *extra)
        return http(headers=headers, body=body)

    return build


def fresh_key_body(template: str) -> Callable[[World], bytes]:
    """A body built from a fresh key each time, so a last-member-wins parser would have changed the key."""
    return lambda w: http(headers=(bearer(w.admin_key), CT_JSON), body=template.replace("NEW", generate_key()).encode())


TOO_LARGE = "code:request_too_large"
UNSUPPORTED = "code:unsupported_media_type"
MALFORMED = "field:non_field_errors"

BODY_CASES = list(
    cases(
        Case(
            "content-length-1GB-small-body",
            lambda w: http(
                headers=(bearer(w.admin_key), CT_JSON, b"Content-Length: 1000000000"), body=b"{}", length=False
            ),
            413,
            TOO_LARGE,
        ),
        Case("body-limit-plus-one", set_key_body(b"{" + b" " * (LIMIT - 1) + b"}"), 413, TOO_LARGE),
        Case("body-8MiB", set_key_body(b'{"key": "' + b"x" * (8 * 1024 * 1024) + b'"}'), 413, TOO_LARGE),
        Case(
            "chunked-over-limit",
            lambda w: http(
                headers=(bearer(w.admin_key), CT_JSON, b"Transfer-Encoding: chunked"),
                body=chunked(b'{"key": "' + b"x" * (2 * LIMIT) + b'"}', size=4096),
                length=False,
            ),
            413,
            TOO_LARGE,
        ),
        Case(
            "chunked-over-limit-anonymous",
            lambda w: http(
                headers=(CT_JSON, b"Transfer-Encoding: chunked"), body=chunked(b"x" * (2 * LIMIT)), length=False
            ),
            403,
            NOT_AUTH,
        ),
        Case(
            "chunked-duplicate-members",
            lambda w: http(
                headers=(bearer(w.admin_key), CT_JSON, b"Transfer-Encoding: chunked"),
                body=chunked(json.dumps({"key": generate_key()})[:-1].encode() + b', "key": "second-value"}', size=7),
                length=False,
            ),
            400,
            MALFORMED,
        ),
        Case("nesting-60000-arrays", set_key_body(b"[" * 60000), 400, MALFORMED),
        Case("nesting-60000-objects", set_key_body(b'{"a":' * 12000), 400, MALFORMED),
        Case("key-nested-50-deep", set_key_body(b'{"key": ' + b"[" * 50 + b"]" * 50 + b"}"), 400, ACCEPTED),
        Case("duplicate-key-member", fresh_key_body('{"key": "NEW", "key": "NEW"}'), 400, MALFORMED),
        Case("duplicate-member-escaped-name", fresh_key_body('{"key": "NEW", "\\u006bey": "NEW"}'), 400, MALFORMED),
        Case("duplicate-member-nested", fresh_key_body('{"key": "NEW", "x": {"a": 1, "a": 2}}'), 400, MALFORMED),
        Case("nan", set_key_body(b'{"key": NaN}'), 400, MALFORMED),
        Case("infinity", set_key_body(b'{"key": -Infinity}'), 400, MALFORMED),
        # Python refuses to convert integers of more than 4300 digits: a parse error, not a slow parse.
        Case("huge-number", set_key_body(b'{"key": 1' + b"0" * 5000 + b"}"), 400, MALFORMED),
        Case("invalid-utf8", set_key_body(b'{"key": "abc\xff\xfedef"}'), 400, MALFORMED),
        Case("utf8-bom", set_key_body(b'\xef\xbb\xbf{"key": "abcdefgh"}'), 400, MALFORMED),
        Case("utf16-body", set_key_body('{"key": "abcdefgh"}'.encode("utf-16")), 400, MALFORMED),
        Case("trailing-garbage", fresh_key_body('{"key": "NEW"} trailing'), 400, MALFORMED),
        Case("two-json-documents", fresh_key_body('{"key": "NEW"}{"key": "NEW"}'), 400, MALFORMED),
        Case("truncated-json", fresh_key_body('{"key": "NEW"'), 400, MALFORMED),
        Case("empty-body", set_key_body(b""), 400, ACCEPTED),
        Case("json-null", set_key_body(b"null"), 400, "field:non_field_errors"),
        Case("json-array", set_key_body(b'["key"]'), 400, "field:non_field_errors"),
        Case("json-string", set_key_body(b'"key"'), 400, "field:non_field_errors"),
        Case("key-number", set_key_body(b'{"key": 12345678901234}'), 400, ACCEPTED),
        Case("key-true", set_key_body(b'{"key": true}'), 400, ACCEPTED),
        Case("key-null", set_key_body(b'{"key": null}'), 400, ACCEPTED),
        Case("key-object", set_key_body(b'{"key": {"key": "abcdefgh"}}'), 400, ACCEPTED),
        Case("key-list", set_key_body(b'{"key": ["abcdefgh"]}'), 400, ACCEPTED),
        Case("key-empty", set_key_body(b'{"key": ""}'), 400, ACCEPTED),
        Case("key-with-space", fresh_key_body('{"key": "NEW NEW"}'), 400, ACCEPTED),
        Case("key-with-nul", fresh_key_body('{"key": "NEW\\u0000"}'), 400, ACCEPTED),
        Case("key-with-tab", fresh_key_body('{"key": "\\tNEW"}'), 400, ACCEPTED),
        Case("key-with-newline", fresh_key_body('{"key": "NEW\\r\\nX-Injected: 1"}'), 400, ACCEPTED),
        Case("key-non-ascii", fresh_key_body('{"key": "NEW\\u00e9"}'), 400, ACCEPTED),
        Case("key-lone-surrogate", fresh_key_body('{"key": "NEW\\ud800"}'), 400, ACCEPTED),
        Case("key-1025-chars", set_key_body(json_body({"key": "k" * 1025})), 400, ACCEPTED),
        Case("key-held-by-other-token", lambda w: set_key_body(json_body({"key": w.other_key}))(w), 400, ACCEPTED),
        Case(
            "key-in-form-field",
            set_key_body(b"key=abcdefgh", content_type=b"Content-Type: application/x-www-form-urlencoded"),
            415,
            UNSUPPORTED,
        ),
        Case(
            "multipart",
            set_key_body(
                b'--b\r\nContent-Disposition: form-data; name="key"\r\n\r\nabcdefgh\r\n--b--\r\n',
                content_type=b"Content-Type: multipart/form-data; boundary=b",
            ),
            415,
            UNSUPPORTED,
        ),
        Case(
            "text-plain",
            set_key_body(b'{"key": "abcdefgh"}', content_type=b"Content-Type: text/plain"),
            415,
            UNSUPPORTED,
        ),
        Case("no-content-type", set_key_body(b'{"key": "abcdefgh"}', content_type=None), 415, UNSUPPORTED),
        Case(
            "empty-content-type", set_key_body(b'{"key": "abcdefgh"}', content_type=b"Content-Type:"), 415, UNSUPPORTED
        ),
        Case(
            "json-lookalike-type",
            set_key_body(b'{"key": "abcdefgh"}', content_type=b"Content-Type: application/jsonx"),
            415,
            UNSUPPORTED,
        ),
        Case(
            "xml",
            set_key_body(b"<key>abcdefgh</key>", content_type=b"Content-Type: application/xml"),
            415,
            UNSUPPORTED,
        ),
        Case(
            "garbage-content-type",
            set_key_body(b'{"key": "abcdefgh"}', content_type=b"Content-Type: \xff\xfe/;;;=="),
            415,
            UNSUPPORTED,
        ),
    )
)


@pytest.mark.parametrize("case", BODY_CASES)
def test_hostile_bodies(case: Case, live: LiveServer, world: World) -> None:
    assert_answer(exchange(live, "bodies", case.build(world)), case.status, case.expect)


def test_duplicate_members_do_not_let_the_last_one_win(live: LiveServer, world: World) -> None:
    second = generate_key()
    body = f'{{"key": "{generate_key()}", "key": "{second}"}}'.encode()
    response = exchange(live, "bodies", http(headers=(bearer(world.admin_key), CT_JSON), body=body))
    assert response.status == 400
    assert Token.objects.get(identifier="target").key == world.target_key
    assert not Token.objects.filter(key_digest=key_digest(second)).exists()


# Positive controls: the limits above reject only what they should.


def test_body_of_exactly_the_limit_is_accepted(live: LiveServer, world: World) -> None:
    new_key = generate_key()
    document = json_body({"key": new_key})
    body = document[:-1] + b" " * (LIMIT - len(document)) + b"}"
    assert len(body) == LIMIT
    response = exchange(
        live, "bodies", http(headers=(bearer(world.admin_key), CT_JSON), body=body), intended_write=True
    )
    assert response.status == 204
    assert Token.objects.get(identifier="target").key == new_key


def test_chunked_body_is_read_and_applied(live: LiveServer, world: World) -> None:
    new_key = generate_key()
    request = http(
        headers=(bearer(world.admin_key), CT_JSON, b"Transfer-Encoding: chunked"),
        body=chunked(json_body({"key": new_key}), size=5),
        length=False,
    )
    response = exchange(live, "bodies", request, intended_write=True)
    assert response.status == 204
    assert Token.objects.get(identifier="target").key == new_key
    assert Event.objects.filter(action="model_updated").count() == 1


def test_chunked_body_of_exactly_the_limit_is_accepted(live: LiveServer, world: World) -> None:
    new_key = generate_key()
    document = json_body({"key": new_key})
    body = document[:-1] + b" " * (LIMIT - len(document)) + b"}"
    request = http(
        headers=(bearer(world.admin_key), CT_JSON, b"Transfer-Encoding: chunked"),
        body=chunked(body, size=4096),
        length=False,
    )
    assert exchange(live, "bodies", request, intended_write=True).status == 204
    assert Token.objects.get(identifier="target").key == new_key


def test_media_type_parameters_and_case_are_tolerated(live: LiveServer, world: World) -> None:
    new_key = generate_key()
    request = http(
        headers=(bearer(world.admin_key), b"Content-Type: Application/JSON; charset=utf-8"),
        body=json_body({"key": new_key}),
    )
    assert exchange(live, "bodies", request, intended_write=True).status == 204
    assert Token.objects.get(identifier="target").key == new_key


# --- X-Forwarded-For ----------------------------------------------------------------------------------

SPOOFS = [
    b"203.0.113.9",
    b"203.0.113.9, 198.51.100.2",
    b"not-an-ip, , ::::, 999.1.1.1",
    b"\xff\xfe, 10.0.0.1",
    b"[2001:db8::1]",
    b"unknown",
    b"127.0.0.1",
    b"1.1.1.1, " * 800,
    b"",
]


@pytest.mark.parametrize("spoof", SPOOFS, ids=[f"xff-{i}" for i in range(len(SPOOFS))])
def test_forwarded_for_is_not_trusted_without_a_trusted_proxy(spoof: bytes, live: LiveServer, world: World) -> None:
    new_key = generate_key()
    request = http(
        headers=(
            bearer(world.admin_key),
            CT_JSON,
            b"X-Forwarded-For: " + spoof,
            b"X-Real-IP: 203.0.113.10",
            b"Forwarded: for=203.0.113.11",
        ),
        body=json_body({"key": new_key}),
    )
    response = exchange(live, "x-forwarded-for", request, intended_write=True)
    assert response.status == 204
    event = Event.objects.get(action="model_updated")
    assert event.client_ip == "127.0.0.1"


@pytest.mark.parametrize("spoof", SPOOFS[:4], ids=[f"xff-rejected-{i}" for i in range(4)])
def test_forwarded_for_garbage_on_rejected_requests(spoof: bytes, live: LiveServer, world: World) -> None:
    request = http(headers=(bearer("no-such-key-value"), CT_JSON, b"X-Forwarded-For: " + spoof), body=b"{}")
    assert_answer(exchange(live, "x-forwarded-for", request), 403, FAILED)


@pytest.fixture(scope="module")
def proxied_live(django_db_setup: None, django_db_blocker: Any, tmp_path_factory: Any) -> Iterator[LiveServer]:
    """A second server that trusts 127.0.0.0/8 (where the test client sits) as its proxy."""
    with django_db_blocker.unblock():
        server = start_server(
            tmp_path_factory.mktemp("proxied") / "server.log", extra_env={"TRUSTED_PROXY_CIDRS": "127.0.0.0/8"}
        )
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("forwarded", "recorded"),
    [
        (b"198.51.100.7", "198.51.100.7"),
        (b"spoofed-by-client, 198.51.100.7", "198.51.100.7"),
        (b"203.0.113.1, 198.51.100.7", "198.51.100.7"),
        (b"198.51.100.7, 127.0.0.2", "198.51.100.7"),
        (b"198.51.100.7, 127.0.0.9, 127.0.0.2", "198.51.100.7"),
        (b"[2001:db8::7]", "2001:db8::7"),
        (b"198.51.100.7, garbage", "127.0.0.1"),
        (b"garbage", "127.0.0.1"),
        (b"\xff\xfe", "127.0.0.1"),
        (b"", "127.0.0.1"),
    ],
)
def test_trusted_proxy_records_the_rightmost_untrusted_address(
    forwarded: bytes, recorded: str, proxied_live: LiveServer, world: World
) -> None:
    request = http(
        headers=(bearer(world.admin_key), CT_JSON, b"X-Forwarded-For: " + forwarded),
        body=json_body({"key": generate_key()}),
    )
    response = exchange(proxied_live, "x-forwarded-for", request, intended_write=True)
    assert response.status == 204
    assert Event.objects.get(action="model_updated").client_ip == recorded


# --- secrets in places they do not belong --------------------------------------------------------------


def test_secrets_in_the_query_string_are_masked_in_the_event(live: LiveServer, world: World) -> None:
    query_secret = generate_key()
    request = http(
        path=b"/core/tokens/target/set_key/?api_key=" + query_secret.encode() + b"&page=2",
        headers=(bearer(world.admin_key), CT_JSON),
        body=json_body({"key": generate_key()}),
    )
    assert exchange(live, "secrets in odd places", request, intended_write=True).status == 204
    event = Event.objects.get(action="model_updated")
    assert event.context["http_request"]["args"] == {"api_key": "********************", "page": "2"}
    assert query_secret not in json.dumps(event.context)


def test_a_rejected_key_is_never_echoed(live: LiveServer, world: World) -> None:
    rejected = generate_key() + " with-a-space"
    request = http(headers=(bearer(world.admin_key), CT_JSON), body=json_body({"key": rejected}))
    response = exchange(live, "secrets in odd places", request)
    assert response.status == 400
    assert rejected.split()[0].encode() not in response.body


def test_anything_but_an_api_token_is_refused(live: LiveServer, world: World, make_token: Callable[..., Token]) -> None:
    owner = User.objects.get(username="root")
    for intent in (TokenIntents.VERIFICATION, TokenIntents.RECOVERY, TokenIntents.APP_PASSWORD):
        token = make_token(owner, intent=intent)
        request = http(headers=(bearer(token.key), CT_JSON), body=json_body({"key": generate_key()}))
        assert_answer(exchange(live, "headers", request), 403, FAILED)
