"""Structured logs: one JSON line per request with its fields, and no key at any level, in process and
from a real server running at DEBUG."""

import json
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from django.db import OperationalError
from django.urls import reverse
from hypothesis import example, given, settings
from hypothesis import strategies as st

from core.models import Token, generate_key
from tests.support.live import LiveServer, start_server
from tokens_service.logging import (
    _REDACTIONS,
    JsonFormatter,
    PlainFormatter,
    SecretSafeExceptionReporterFilter,
    _suspect,
    redact,
)

ACCESS_FIELDS = {"method", "path", "status", "duration_ms", "request_id", "client_ip", "actor"}


def set_key_url(identifier: str) -> str:
    return reverse("token-set-key", kwargs={"identifier": identifier})


def rendered(records: list[logging.LogRecord]) -> str:
    """Every record as production writes it (JSON and plain), plus its raw message and arguments."""
    json_formatter, plain_formatter = JsonFormatter(), PlainFormatter()
    return "\n".join(
        f"{json_formatter.format(r)}\n{plain_formatter.format(r)}\n{r.msg}\n{r.args!r}\n{vars(r)!r}" for r in records
    )


def exercise_set_key(post: Callable[..., Any], admin_key: str, target: Token, other: Token) -> list[str]:
    """Drive set_key through success and every failure path; return the secrets that were in play."""
    new_key, invalid, stranger = generate_key(), generate_key() + " x", generate_key()
    answers = [
        (post(target.identifier, new_key, admin_key), 204),
        (post(target.identifier, invalid, admin_key), 400),  # not visible ASCII only
        (post(target.identifier, other.key, admin_key), 400),  # held by another token
        (post(target.identifier, generate_key(), stranger), 403),  # unknown bearer key
        (post("no-such-token", generate_key(), admin_key), 404),
    ]
    assert [status for status, _ in answers] == [expected for _, expected in answers]
    return [admin_key, target.key, new_key, invalid, other.key, stranger]


# --- in process ------------------------------------------------------------------------------------


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Everything at DEBUG, as with LOG_LEVEL=DEBUG: the root and Django's loggers. The SQL and template
    loggers keep the levels the settings pin them at, which is the protection under test."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django")
    return caplog


@pytest.mark.django_db
def test_no_key_in_any_log_record_at_debug(debug_logs, bearer, admin_token, make_token, superuser, monkeypatch):
    target, other = make_token(superuser), make_token(superuser)

    def post(identifier: str, key: str, auth: str) -> int:
        return bearer(auth).post(set_key_url(identifier), {"key": key}).status_code

    secrets = exercise_set_key(post, admin_token.key, target, other)
    # A database outage and a bug in the service: logged, the bug with its traceback.
    failing_key = generate_key()
    monkeypatch.setattr("core.api.token_set_key", _raise(OperationalError("could not receive data")))
    assert post(target.identifier, failing_key, admin_token.key) == 503
    monkeypatch.setattr("core.api.token_set_key", _raise(RuntimeError("unexpected")))
    api = bearer(admin_token)
    api.raise_request_exception = False
    crash_key = generate_key()
    assert api.post(set_key_url(target.identifier), {"key": crash_key}).status_code == 500
    secrets += [failing_key, crash_key]

    assert any(r.exc_info for r in debug_logs.records), "the 500 was logged with its traceback"
    output = debug_logs.text + rendered(debug_logs.records)
    for secret in secrets:
        assert secret not in output


@pytest.mark.django_db
def test_request_log_fields(debug_logs, bearer, admin_token, make_token, superuser):
    target = make_token(superuser)
    bearer(admin_token).post(set_key_url(target.identifier), {"key": generate_key()}, HTTP_X_REQUEST_ID="req-ok-0001")
    bearer(generate_key()).post(set_key_url(target.identifier), {"key": generate_key()}, HTTP_X_REQUEST_ID="req-403-01")

    lines = {r.request_id: r for r in debug_logs.records if r.name == "tokens_service.request"}  # type: ignore[attr-defined]
    ok, denied = lines["req-ok-0001"], lines["req-403-01"]
    assert {name: getattr(ok, name) for name in ACCESS_FIELDS - {"duration_ms"}} == {
        "method": "POST",
        "path": set_key_url(target.identifier),
        "status": 204,
        "request_id": "req-ok-0001",
        "client_ip": "127.0.0.1",
        "actor": "root",  # set by DRF's bearer authentication, visible to Django middleware
    }
    assert isinstance(ok.duration_ms, float)  # type: ignore[attr-defined]
    assert ok.duration_ms >= 0  # type: ignore[attr-defined]
    assert (denied.status, denied.actor) == (403, None)  # type: ignore[attr-defined]
    entry = json.loads(JsonFormatter().format(ok))
    assert set(entry) >= ACCESS_FIELDS
    assert entry["level"] == "INFO"


def test_sql_and_template_debug_logging_stay_off_whatever_the_level():
    # Django's SQL log carries query parameters (the new key, in set_key's UPDATE).
    assert logging.getLogger("django.db.backends").getEffectiveLevel() >= logging.WARNING
    # Template lookups at DEBUG quote the template context.
    assert logging.getLogger("django.template").getEffectiveLevel() >= logging.INFO


# --- the redacting formatter and error reports -----------------------------------------------------


def test_formatter_redacts_credentials_a_library_might_quote():
    key = generate_key()
    try:
        raise ValueError(f'bad header "Authorization: Bearer {key}" in {{"key": "{key}"}} ?key={key}')
    except ValueError:
        record = logging.LogRecord("lib", logging.ERROR, __file__, 1, "got %s", (f"bearer {key}",), sys.exc_info())
    for output in (JsonFormatter().format(record), PlainFormatter().format(record)):
        assert key not in output
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "got bearer [redacted]"
    assert entry["exc_type"] == "ValueError"
    # The database's own wording stays readable: a digest is not a key.
    assert redact("Key (key_digest)=(ab12) already exists.") == "Key (key_digest)=(ab12) already exists."


@pytest.mark.parametrize(
    "name",
    ["key", "new_key", "password", "passwd", "secret", "authorization", "cookie", "sessionid", "csrftoken"],
)
@pytest.mark.parametrize("spelling", [str.lower, str.upper, str.title])
def test_every_secret_name_is_redacted_in_any_case(name, spelling):
    # The quick pre-check in redact() must let every name the redactions know through, in any case.
    for text in (f"{spelling(name)}=s3cr3t-value", f'{{"{spelling(name)}": "s3cr3t-value"}}'):
        assert "s3cr3t-value" not in redact(text)
    assert "s3cr3t-value" not in redact(f"{spelling('bearer')} s3cr3t-value")
    assert "s3cr3t-value" not in redact(f"{spelling('basic')} s3cr3t-value")


def _redact_without_precheck(text: str) -> str:
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


# Text built from the words the redactions look for, their separators and letters that case-fold onto
# ASCII ones (the long s, the Kelvin sign, the dotless i, the Angstrom sign), plus anything else.
_LOG_TEXT = st.lists(
    st.sampled_from(
        [
            "key",
            "KEY",
            "new_key",
            "Password",
            "passwd",
            "secret",
            "authorization",
            "Cookie",
            "sessionid",
            "csrftoken",
            "bearer",
            "BASIC",
            ":",
            "=",
            " ",
            "\t",
            '"',
            "'",
            ",",
            "/",
            "set_key",
            "pa\u017fsword",
            "\u212aey",
            "\u017fecret",
            "\u0131",
            "\u212b",
            "value",
            "x",
        ]
    )
    | st.text(max_size=4),
    max_size=12,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(_LOG_TEXT)
@example("pa\u017fsword: value")  # the long s folds onto "s"
@example("\u212aEY=value")  # the Kelvin sign folds onto "k"
@example("/core/tokens/x/set_key/ key")
def test_the_quick_precheck_never_skips_a_redaction(text):
    # redact() skips the redactions when _suspect() says they cannot change the text: it must say so only
    # when that is true, for any text, ASCII or not.
    assert redact(text) == _redact_without_precheck(text)
    if not _suspect(text):
        assert _redact_without_precheck(text) == text


def test_paths_and_ordinary_access_fields_are_not_suspect():
    # The set_key path names "key" but cannot be redacted (no ':' or '='): the access line skips the regexes.
    for text in ("/core/tokens/bench-hot/set_key/", "POST /api/v3/core/tokens/x/view_key/ 200", "127.0.0.1"):
        assert not _suspect(text)
    for text in ("key=abc", "Bearer abc", "pa\u017fsword: abc"):
        assert _suspect(text)


def test_formatter_leaves_out_request_objects_and_keeps_plain_extras(rf):
    request = rf.get("/x/?key=secret-in-query", HTTP_AUTHORIZATION="Bearer abcdefgh")
    record = logging.LogRecord("django.request", logging.ERROR, __file__, 1, "Forbidden: /x/", (), None)
    record.request = request
    record.status_code = 403
    entry = json.loads(JsonFormatter().format(record))
    assert entry["status_code"] == 403
    assert "request" not in entry
    assert "secret-in-query" not in json.dumps(entry)


@pytest.mark.django_db
def test_error_reports_mask_bodies_headers_and_frame_variables(rf):
    request = rf.post("/core/tokens/x/set_key/", {"key": "form-posted-key"}, HTTP_AUTHORIZATION="Bearer abcdefgh")
    reporter = SecretSafeExceptionReporterFilter()
    assert reporter.get_post_parameters(request)["key"] == reporter.cleansed_substitute
    assert reporter.get_safe_request_meta(request)["HTTP_AUTHORIZATION"] == reporter.cleansed_substitute
    key = "frame-local-key"  # noqa: F841 - inspected through the frame below
    frame = sys._getframe()
    assert dict(reporter.get_traceback_frame_variables(request, frame))["key"] == reporter.cleansed_substitute


def _raise(exc: Exception) -> Any:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return fail


# --- a real server at DEBUG ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def debug_server(django_db_setup: None, django_db_blocker: Any, tmp_path_factory: Any) -> Iterator[LiveServer]:
    with django_db_blocker.unblock():
        server = start_server(
            tmp_path_factory.mktemp("debug-server") / "server.log",
            extra_env={"LOG_LEVEL": "DEBUG", "GUNICORN_LOG_LEVEL": "debug"},
            workers=1,
        )
    yield server
    server.stop()


@pytest.mark.live
@pytest.mark.django_db(transaction=True)
def test_real_server_at_debug_logs_json_lines_and_no_key(debug_server, admin_token, make_token, superuser):
    target, other = make_token(superuser), make_token(superuser)
    request_ids: list[str] = []

    def post(identifier: str, key: str, auth: str) -> int:
        request_ids.append(f"debug-run-{len(request_ids):04d}")
        return requests.post(
            debug_server.url + set_key_url(identifier),
            json={"key": key},
            headers={"Authorization": f"Bearer {auth}", "X-Request-ID": request_ids[-1]},
            timeout=10,
        ).status_code

    secrets = exercise_set_key(post, admin_token.key, target, other)

    log = debug_server.log_text()
    for secret in secrets:
        assert secret not in log
    entries = [json.loads(line) for line in log.splitlines() if line.strip()]  # every line is JSON
    assert any(entry["logger"] == "gunicorn.error" and entry["level"] == "DEBUG" for entry in entries)
    access = [entry for entry in entries if entry["logger"] == "tokens_service.request"]
    for request_id, (status, actor) in zip(
        request_ids, [(204, "root"), (400, "root"), (400, "root"), (403, None), (404, "root")], strict=True
    ):
        [line] = [entry for entry in access if entry["request_id"] == request_id]  # exactly one per request
        assert set(line) >= ACCESS_FIELDS
        assert (line["method"], line["status"], line["actor"], line["client_ip"]) == (
            "POST",
            status,
            actor,
            "127.0.0.1",
        )
        assert line["path"].endswith("/set_key/")
        assert line["duration_ms"] >= 0
