"""Suite-wide leak check (a pytest plugin): no key the tests handle may show up where the contract forbids it.

Keys are learned from every token saved in this process, from every token row at each database
test's teardown (keys set through a live server), and from what the tests send: Bearer words and JSON
``"key"`` members, through the test client, ``requests`` and raw sockets (``tests.support.live.RAW_OBSERVERS``).

Searched in: every response body the tests receive that way (not the ``view_key`` and ``rotate``
answers, which return a key by design), every log record emitted in this process, every Event row at each database
test's teardown, and the logs of every live server. The token table itself is where keys belong and
is not searched. Each key is looked for plain, URL-encoded, JSON- and HTML-escaped, and in base64 at
every byte alignment. A hit fails the test that produced the artifact (as a teardown error), or the
session when only the final pass over everything finds it.

Keys shorter than ``MIN_KEY_LENGTH`` or with fewer than ``MIN_DISTINCT`` distinct characters are not
tracked: ``"x" * 1024`` or ``"new-key"`` are policy probes, not secrets, and would match innocent text.
The session summary (printed at the end) also carries the hostile suite's tally of cases.
"""

import base64
import functools
import html
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

import pytest

MIN_KEY_LENGTH = 8
MIN_DISTINCT = 4
_ANCHOR = MIN_KEY_LENGTH

_BEARER_WORD = re.compile(rb"[Bb][Ee][Aa][Rr][Ee][Rr][ \t]+([\x21-\x7e]+)")
_JSON_KEY = re.compile(rb'"key"\s*:\s*"((?:[^"\\]|\\.)*)"')


def encodings(key: str) -> dict[str, str]:
    """The forms a leaked ``key`` could take in text, each mapped to a label for the report."""
    forms: dict[str, str] = {}

    def add(form: str, label: str) -> None:
        if len(form) >= MIN_KEY_LENGTH:
            forms.setdefault(form, label)

    raw = key.encode("utf-8", "surrogatepass")
    add(key, "plain")
    for url_form in (quote(raw, safe=""), quote_plus(raw), quote(raw)):
        add(url_form, "url-encoded")
        add(re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), url_form), "url-encoded")
    add(json.dumps(key)[1:-1], "json-escaped")
    add(html.escape(key), "html-escaped")
    for shift in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * shift + raw).decode("ascii")
            # Only the characters that depend on the key's bytes alone: drop the first group when
            # filler bytes share it and the last group when bytes after the key would.
            start = 4 if shift else 0
            end = len(text) - (4 if (shift + len(raw)) % 3 else 0)
            add(text[start:end], "base64")
    return forms


def trackable(key: str) -> bool:
    return len(key) >= MIN_KEY_LENGTH and len(set(key)) >= MIN_DISTINCT


@dataclass
class Hit:
    test: str
    kind: str
    where: str
    form: str
    key_hint: str

    def __str__(self) -> str:
        return f"{self.test}: a key ({self.key_hint}) {self.form} in {self.kind} {self.where}"


@dataclass
class Ledger:
    """Keys seen, artifacts produced, and the hits found among them."""

    keys: set[str] = field(default_factory=set)
    _anchors: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    artifacts: list[tuple[str, str, str, str]] = field(default_factory=list)  # (test, kind, where, text)
    pending: list[tuple[str, str, str]] = field(default_factory=list)  # this test's (kind, where, text)
    records: list[logging.LogRecord] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    scanned_bytes: int = 0
    hits: list[Hit] = field(default_factory=list)
    db_scans_skipped: int = 0

    def learn(self, key: str) -> None:
        if key in self.keys or not trackable(key):
            return
        self.keys.add(key)
        for form, label in encodings(key).items():
            self._anchors.setdefault(form[:_ANCHOR], []).append((form, label, key))

    def learn_from_bytes(self, data: bytes) -> None:
        """Bearer words and JSON ``"key"`` string members in request bytes."""
        for match in _BEARER_WORD.finditer(data):
            self.learn(match.group(1).decode("ascii"))
        for match in _JSON_KEY.finditer(data):
            try:
                value = json.loads(b'"' + match.group(1) + b'"')
            except ValueError:
                continue
            if isinstance(value, str):
                self.learn(value)

    def add(self, kind: str, where: str, text: str) -> None:
        self.counts[kind] += 1
        self.pending.append((kind, where, text))

    def add_response(self, where: str, path: str, status: int, body: bytes, headers: Iterable[str] = ()) -> None:
        if status == 200 and path.rstrip("/").endswith("/view_key"):
            self.counts["view_key answers (excluded)"] += 1
            return
        if status == 200 and path.rstrip("/").endswith("/rotate"):
            self.counts["rotate answers (excluded)"] += 1
            return
        text = body.decode("latin-1") + "\n" + "\n".join(headers)
        self.add("response", where, text)

    def find(self, text: str) -> Iterator[tuple[str, str]]:
        anchors = self._anchors
        if not anchors:
            return
        for index in range(len(text) - _ANCHOR + 1):
            bucket = anchors.get(text[index : index + _ANCHOR])
            if bucket:
                for form, label, key in bucket:
                    if text.startswith(form, index):
                        yield label, key

    def check(self, test: str, kind: str, where: str, text: str) -> list[Hit]:
        self.scanned_bytes += len(text)
        found = []
        for label, key in self.find(text):
            hit = Hit(test, kind, where, label, f"{key[:4]}... {len(key)} chars")
            if not any(str(hit) == str(seen) for seen in self.hits):
                self.hits.append(hit)
                found.append(hit)
        return found

    def flush_records(self) -> None:
        formatter = logging.Formatter()
        for record in self.records:
            try:
                text = record.getMessage()
            except Exception:  # a malformed log call; its raw parts are what would be printed
                text = f"{record.msg} {record.args}"
            if record.exc_info:
                text += "\n" + formatter.formatException(record.exc_info)
            self.add("log record", record.name, text)
        self.records.clear()

    def check_pending(self, test: str) -> list[Hit]:
        """Search this test's artifacts for every key known so far; keep them for the final pass."""
        self.flush_records()
        found = []
        for kind, where, text in self.pending:
            found += self.check(test, kind, where, text)
            self.artifacts.append((test, kind, where, text))
        self.pending.clear()
        return found


LEDGER = Ledger()


@dataclass
class Tally:
    """The hostile suite's cases per class: how many, how many 5xx, how many changed tokens or events."""

    cases: Counter[str] = field(default_factory=Counter)
    server_errors: Counter[str] = field(default_factory=Counter)
    writes: Counter[str] = field(default_factory=Counter)

    def record(self, case_class: str, status: int, changed: bool) -> None:
        self.cases[case_class] += 1
        self.server_errors[case_class] += status >= 500
        self.writes[case_class] += changed


TALLY = Tally()


# --- collection points --------------------------------------------------------------------------


def _install() -> None:
    import requests
    from django.db.models.signals import pre_save
    from django.test import Client, RequestFactory, TransactionTestCase

    from core import models as core_models
    from core.models import Token
    from tests.support import live

    def on_token_save(sender: Any, instance: Token, **kwargs: Any) -> None:
        LEDGER.learn(instance.key)

    # Test modules import generate_key after this runs (collection follows configuration), so every
    # key they generate is learned, even one that is only ever sent in a query string.
    original_generate_key = core_models.generate_key

    @functools.wraps(original_generate_key)
    def generate_key() -> str:
        key = original_generate_key()
        LEDGER.learn(key)
        return key

    core_models.generate_key = generate_key

    pre_save.connect(on_token_save, sender=Token, weak=False, dispatch_uid="leakcheck-token-keys")

    original_send = requests.Session.send

    def send(self: requests.Session, request: Any, **kwargs: Any) -> Any:
        LEDGER.learn_from_bytes(str(request.headers.get("Authorization", "")).encode("latin-1", "replace"))
        body = request.body
        if body:
            LEDGER.learn_from_bytes(body if isinstance(body, bytes) else str(body).encode("utf-8", "replace"))
        response = original_send(self, request, **kwargs)
        if not kwargs.get("stream"):
            headers = [f"{name}: {value}" for name, value in response.headers.items()]
            path = urlsplit(request.url).path
            LEDGER.add_response(f"{request.method} {path}", path, response.status_code, response.content, headers)
        return response

    requests.Session.send = send  # type: ignore[method-assign]

    original_generic = RequestFactory.generic

    def generic(self: Any, method: str, path: str, data: Any = "", *args: Any, **kwargs: Any) -> Any:
        if data:
            LEDGER.learn_from_bytes(data if isinstance(data, bytes) else str(data).encode("utf-8", "replace"))
        return original_generic(self, method, path, data, *args, **kwargs)

    RequestFactory.generic = generic  # type: ignore[method-assign]

    original_request = Client.request

    def client_request(self: Any, **request: Any) -> Any:
        auth = request.get("HTTP_AUTHORIZATION") or getattr(self, "defaults", {}).get("HTTP_AUTHORIZATION")
        if auth:
            LEDGER.learn_from_bytes(str(auth).encode("latin-1", "replace"))
        response = original_request(self, **request)
        if not getattr(response, "streaming", False):
            path = request.get("PATH_INFO", "")
            headers = [f"{name}: {value}" for name, value in response.items()]
            LEDGER.add_response(
                f"{request.get('REQUEST_METHOD')} {path}", path, response.status_code, response.content, headers
            )
        return response

    Client.request = client_request  # type: ignore[method-assign]

    def observe_raw(request_bytes: bytes, response: Any) -> None:
        LEDGER.learn_from_bytes(request_bytes)
        request_line = request_bytes.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        path = parts[1] if len(parts) > 1 else ""
        headers = [f"{name}: {value}" for name, value in response.headers.items()]
        LEDGER.add_response(f"raw {request_line[:80]!r}", path, response.status, response.body, headers)

    live.RAW_OBSERVERS.append(observe_raw)

    original_post_teardown = TransactionTestCase._post_teardown

    def post_teardown(self: Any) -> None:
        # pytest-django tears a database test down here, with database access still allowed: read
        # what the test left before the rollback or flush removes it.
        try:
            _scan_database()
        except Exception:  # a test that broke its transaction; nothing can be read now
            LEDGER.db_scans_skipped += 1
        original_post_teardown(self)

    TransactionTestCase._post_teardown = post_teardown  # type: ignore[method-assign]

    original_factory = logging.getLogRecordFactory()

    def record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = original_factory(*args, **kwargs)
        LEDGER.records.append(record)
        return record

    logging.setLogRecordFactory(record_factory)


def _scan_database(ledger: Ledger = LEDGER) -> None:
    """Learn every token's key; queue every event for the search."""
    from core.models import Token
    from events.models import Event

    for key in Token.objects.values_list("key", flat=True):
        ledger.learn(key)
    for row in Event.objects.values():
        ledger.add("event", str(row.get("action")), json.dumps(row, default=str))


# --- hooks ----------------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    _install()


_log_offsets: dict[int, int] = {}


def _server_logs(whole: bool = False) -> Iterator[tuple[Any, str]]:
    """(server, log text) for every live server: what it wrote since the last call, or everything."""
    from tests.support import live

    for server in live.STARTED_SERVERS:
        start = 0 if whole else _log_offsets.get(id(server), 0)
        try:
            with server.log_path.open("rb") as log:
                log.seek(start)
                data = log.read()
        except OSError:
            continue
        if not whole:
            _log_offsets[id(server)] = start + len(data)
        yield server, data.decode("utf-8", "replace")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    result = yield
    for server, text in _server_logs():
        if text:
            LEDGER.add("server log", f"port {server.port}", text)
    found = LEDGER.check_pending(item.nodeid)
    if found:
        raise AssertionError("secret leak:\n" + "\n".join(str(hit) for hit in found))
    return result


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Final pass: everything against every key, including keys learned after an artifact was made,
    # and the server logs in full (a line written after a test ended is caught here).
    final = []
    for test, kind, where, text in LEDGER.artifacts:
        final += LEDGER.check(test, kind, where, text)
    LEDGER.flush_records()
    for kind, where, text in LEDGER.pending:
        final += LEDGER.check("(session)", kind, where, text)
    for server, text in _server_logs(whole=True):
        final += LEDGER.check("(session)", "server log", f"port {server.port} (whole)", text)
    if final and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def summary_lines() -> list[str]:
    lines = []
    if TALLY.cases:
        lines.append(f"{'class':<28}{'cases':>7}{'5xx':>6}{'unintended writes':>19}")
        for name in sorted(TALLY.cases):
            lines.append(f"{name:<28}{TALLY.cases[name]:>7}{TALLY.server_errors[name]:>6}{TALLY.writes[name]:>19}")
        total = TALLY.cases.total()
        lines.append(f"{'total':<28}{total:>7}{TALLY.server_errors.total():>6}{TALLY.writes.total():>19}")
    counted = ", ".join(f"{kind}: {count}" for kind, count in sorted(LEDGER.counts.items()))
    lines.append(
        f"leak check: {len(LEDGER.keys)} keys (plain, URL-encoded, JSON/HTML-escaped, base64 at every alignment) "
        f"searched in [{counted}], {LEDGER.scanned_bytes} characters scanned; hits: {len(LEDGER.hits)}"
    )
    if LEDGER.db_scans_skipped:
        lines.append(f"leak check: {LEDGER.db_scans_skipped} database scans skipped (broken transaction)")
    lines += [f"LEAK {hit}" for hit in LEDGER.hits]
    return lines


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    terminalreporter.write_sep("-", "hostile input and leak check")
    for line in summary_lines():
        terminalreporter.write_line(line)
