"""Fault scenarios against real gunicorn processes and a private PostgreSQL cluster.

The cluster is private (``private_pg``: initdb on a free port), so stopping it or holding its locks
disturbs no other test. It needs only the PostgreSQL binaries; the tests are marked
``requires_postgres`` so that they run once, in the PostgreSQL lane.
"""

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import requests
from django.db import connections
from django.urls import reverse
from psycopg import sql

from core.models import Token, TokenIntents, User, generate_key
from core.services import key_fingerprint
from events.models import Event
from tests.helpers import requires_postgres
from tests.support.live import LiveServer, migrate, register_database, start_server, unregister_database, worker_pids

pytestmark = [requires_postgres, pytest.mark.live, pytest.mark.fault]

ALIAS = "faults"
ADMIN_KEY = generate_key()
EVENT_TABLE = Event._meta.db_table
LOCK_TOKEN_ROW = sql.SQL("SELECT 1 FROM {} WHERE identifier = %s FOR UPDATE").format(
    sql.Identifier(Token._meta.db_table)
)
PAUSE = 4242  # advisory lock id
CREATE_PAUSE_TRIGGER = sql.SQL(
    """
    CREATE FUNCTION fault_pause() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN PERFORM pg_advisory_xact_lock({}); RETURN NEW; END $$;
    CREATE TRIGGER fault_pause BEFORE INSERT ON {} FOR EACH ROW EXECUTE FUNCTION fault_pause();
    """
).format(sql.Literal(PAUSE), sql.Identifier(EVENT_TABLE))
DROP_PAUSE_TRIGGER = sql.SQL("DROP TRIGGER fault_pause ON {}; DROP FUNCTION fault_pause();").format(
    sql.Identifier(EVENT_TABLE)
)
_ids = count()


@dataclass
class FaultDb:
    url: str
    admin: User


@pytest.fixture(scope="module")
def fault_db(private_pg: Any, django_db_blocker: Any) -> Iterator[FaultDb]:
    url = private_pg.create_database("faults")
    migrate(url)
    with django_db_blocker.unblock():
        register_database(ALIAS, url)
        admin = User.objects.db_manager(ALIAS).create_superuser("root", "root@example.test", None)
        Token.objects.using(ALIAS).create(
            identifier="fault-admin", user=admin, key=ADMIN_KEY, intent=TokenIntents.API, expiring=False
        )
        yield FaultDb(url=url, admin=admin)
        unregister_database(ALIAS)


@pytest.fixture
def orm(fault_db: FaultDb, django_db_blocker: Any) -> Iterator[FaultDb]:
    """The fault database through the ORM (alias ``faults``) for the duration of the test."""
    with django_db_blocker.unblock():
        yield fault_db
        connections[ALIAS].close()


@contextlib.contextmanager
def serving(db: FaultDb, tmp_path: Path, workers: int = 2, **env: str) -> Iterator[LiveServer]:
    # DB_CONN_MAX_AGE=600 is the production default: persistent, health-checked connections.
    server = start_server(
        tmp_path / f"server-{next(_ids)}.log",
        extra_env={"DATABASE_URL": db.url, "DB_CONN_MAX_AGE": "600", **env},
        workers=workers,
    )
    try:
        yield server
    finally:
        server.stop()
    log = server.log_text()
    assert ADMIN_KEY not in log


def new_token(db: FaultDb) -> Token:
    return Token.objects.using(ALIAS).create(identifier=f"fault-{next(_ids)}", user=db.admin, key=generate_key())


def set_key(server: LiveServer, identifier: str, key: str, timeout: float = 15) -> requests.Response:
    return requests.post(
        server.url + reverse("token-set-key", kwargs={"identifier": identifier}),
        json={"key": key},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=timeout,
    )


def is_service_unavailable(response: requests.Response) -> bool:
    return (
        response.status_code == 503
        and response.headers.get("Content-Type") == "application/json"
        and set(response.json()) == {"detail", "code"}
        and response.json()["code"] == "service_unavailable"
    )


def key_of(identifier: str) -> str:
    return Token.objects.using(ALIAS).get(identifier=identifier).key


def fingerprints(identifier: str) -> list[str]:
    """The key fingerprints of the set_key events of ``identifier``, oldest first."""
    events = Event.objects.using(ALIAS).filter(action="model_updated", context__model__name=identifier)
    return [event.context["key_fingerprint"] for event in events.order_by("created")]


def wait_until(condition: Callable[[], Any], timeout: float = 20, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def lock_waiters(observer: Any, query_prefix: str = "") -> list[tuple[Any, ...]]:
    """(pid, backend_xid) of the fault database's sessions waiting for a lock."""
    return observer.execute(
        "SELECT pid, backend_xid FROM pg_stat_activity"
        " WHERE datname = 'faults' AND wait_event_type = 'Lock' AND query LIKE %s",
        [query_prefix + "%"],
    ).fetchall()


@dataclass
class Attempt:
    sent: str  # phase when the request was sent
    received: str  # phase when the answer (or the error) arrived
    key: str
    response: requests.Response | None
    error: str = ""


def test_postgres_restart_while_requests_flow(orm, private_pg, tmp_path):
    tokens = [new_token(orm) for _ in range(2)]
    phase = ["up"]
    done = threading.Event()
    attempts: dict[str, list[Attempt]] = {token.identifier: [] for token in tokens}

    def client(identifier: str) -> None:
        while not done.is_set():
            sent, key = phase[0], generate_key()
            try:
                attempt = Attempt(sent, "", key, set_key(server, identifier, key))
            except requests.RequestException as exc:
                attempt = Attempt(sent, "", key, None, repr(exc))
            attempt.received = phase[0]
            attempts[identifier].append(attempt)
            time.sleep(0.02)

    def answered(status: int, in_phase: str, at_least: int) -> bool:
        return all(
            sum(1 for a in runs if a.sent == in_phase and a.response is not None and a.response.status_code == status)
            >= at_least
            for runs in attempts.values()
        )

    with serving(orm, tmp_path, DB_CONNECT_TIMEOUT="2") as server:
        clients = [threading.Thread(target=client, args=(token.identifier,)) for token in tokens]
        for thread in clients:
            thread.start()
        try:
            wait_until(lambda: answered(204, "up", 3))
            phase[0] = "stopping"
            private_pg.stop("fast")
            phase[0] = "down"
            wait_until(lambda: answered(503, "down", 3))
            phase[0] = "starting"
            private_pg.start()
            phase[0] = "back"
            wait_until(lambda: answered(204, "back", 10))
        finally:
            done.set()
            for thread in clients:
                thread.join(timeout=30)
            if phase[0] in {"stopping", "down", "starting"}:
                private_pg.start()
    connections[ALIAS].close()  # this process's connection did not survive the restart either

    for identifier, runs in attempts.items():
        assert not [a for a in runs if a.response is None], "every request got an answer, none hung or was dropped"
        for a in runs:
            assert a.response is not None
            assert a.response.status_code in {204, 503}, (a.sent, a.response.status_code, a.response.text)
            if a.response.status_code == 503:
                assert is_service_unavailable(a.response), a.response.text
        # Errors only while it is down; none once it is back.
        down = [a for a in runs if a.sent == a.received == "down"]
        assert down
        assert all(a.response is not None and a.response.status_code == 503 for a in down)
        assert all(a.response is not None and a.response.status_code == 204 for a in runs if a.sent == "back")
        # No key change without its event, no event without its key change.
        recorded = fingerprints(identifier)
        assert len(recorded) == len(set(recorded))
        succeeded = {key_fingerprint(a.key) for a in runs if a.response is not None and a.response.status_code == 204}
        assert succeeded <= set(recorded) <= {key_fingerprint(a.key) for a in runs}
        last = [a.key for a in runs if a.response is not None and a.response.status_code == 204][-1]
        assert key_of(identifier) == last
        assert recorded[-1] == key_fingerprint(last)


def test_row_lock_held_too_long_is_503_and_other_tokens_are_served(orm, private_pg, tmp_path):
    locked, free = new_token(orm), new_token(orm)
    attempted = generate_key()
    with (
        serving(orm, tmp_path, DB_LOCK_TIMEOUT_MS="2000") as server,
        private_pg.connect("faults") as holder,
        private_pg.connect("faults", autocommit=True) as observer,
        ThreadPoolExecutor(1) as pool,
    ):
        holder.execute(LOCK_TOKEN_ROW, [locked.identifier])
        pending = pool.submit(set_key, server, locked.identifier, attempted)
        wait_until(lambda: lock_waiters(observer))

        other = set_key(server, free.identifier, generate_key())
        assert other.status_code == 204
        assert lock_waiters(observer), "the locked call was still waiting while the other token was re-keyed"

        blocked = pending.result(timeout=20)
        assert is_service_unavailable(blocked)
        assert blocked.headers["Retry-After"]
        assert key_of(locked.identifier) == locked.key
        assert fingerprints(locked.identifier) == []

        holder.rollback()
        assert set_key(server, locked.identifier, attempted).status_code == 204
    assert key_of(locked.identifier) == attempted
    assert fingerprints(locked.identifier) == [key_fingerprint(attempted)]
    assert attempted not in (private_pg.root / "server.log").read_text()


@pytest.fixture
def pause_event_inserts(orm: FaultDb, private_pg: Any) -> Iterator[Any]:
    """While the yielded connection holds advisory lock PAUSE, every event insert waits in a trigger:
    set_key is then stopped after it has written the key and before its event exists."""
    with private_pg.connect("faults", autocommit=True) as admin:
        admin.execute(CREATE_PAUSE_TRIGGER)
        try:
            with private_pg.connect("faults", autocommit=True) as holder:
                holder.execute("SELECT pg_advisory_lock(%s)", [PAUSE])
                yield holder
        finally:
            admin.execute(DROP_PAUSE_TRIGGER)


def test_worker_killed_mid_write_leaves_all_or_nothing(orm, private_pg, pause_event_inserts, tmp_path):
    token = new_token(orm)
    attempted = generate_key()
    with (
        serving(orm, tmp_path, workers=1) as server,
        private_pg.connect("faults", autocommit=True) as observer,
        ThreadPoolExecutor(1) as pool,
    ):
        [worker] = worker_pids(server)
        pending = pool.submit(set_key, server, token.identifier, attempted)
        [(backend, xid)] = wait_until(lambda: lock_waiters(observer))
        assert xid is not None, "the key is already written, uncommitted, when the worker dies"

        os.kill(worker, signal.SIGKILL)
        with pytest.raises(requests.ConnectionError):
            pending.result(timeout=20)
        pause_event_inserts.execute("SELECT pg_advisory_unlock(%s)", [PAUSE])
        # The orphaned session runs on and ends: a transaction the client had to commit is rolled back
        # when the client is found gone; a single autocommit statement commits as a whole.
        wait_until(lambda: not observer.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [backend]).fetchone())
        outcome = (key_of(token.identifier), fingerprints(token.identifier))
        assert outcome in [(token.key, []), (attempted, [key_fingerprint(attempted)])]

        # gunicorn replaced the worker, and the row is not left locked.
        wait_until(lambda: worker_pids(server) not in ([], [worker]))
        replacement = generate_key()
        assert set_key(server, token.identifier, replacement).status_code == 204
    assert key_of(token.identifier) == replacement
    assert fingerprints(token.identifier)[-1] == key_fingerprint(replacement)


def test_sigterm_lets_the_request_in_flight_finish(orm, private_pg, tmp_path):
    token = new_token(orm)
    attempted = generate_key()
    with (
        serving(orm, tmp_path, workers=1, DB_LOCK_TIMEOUT_MS="20000") as server,
        private_pg.connect("faults") as holder,
        private_pg.connect("faults", autocommit=True) as observer,
        ThreadPoolExecutor(1) as pool,
    ):
        holder.execute(LOCK_TOKEN_ROW, [token.identifier])
        pending = pool.submit(set_key, server, token.identifier, attempted)
        wait_until(lambda: lock_waiters(observer))

        server.process.send_signal(signal.SIGTERM)
        wait_until(lambda: "Handling signal: term" in server.log_text())
        holder.rollback()

        assert pending.result(timeout=30).status_code == 204
        assert server.process.wait(timeout=30) == 0
    assert key_of(token.identifier) == attempted
    assert fingerprints(token.identifier) == [key_fingerprint(attempted)]


@pytest.fixture
def silent_database() -> Iterator[int]:
    """A port that accepts TCP connections and never answers: a database that hangs rather than refuses."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


def test_unreachable_database_is_503_json_within_connect_timeout(tmp_path, silent_database):
    url = f"postgres://postgres@127.0.0.1:{silent_database}/nowhere"
    server = start_server(
        tmp_path / "server.log", extra_env={"DATABASE_URL": url, "DB_CONNECT_TIMEOUT": "2"}, workers=3
    )
    set_key_url = reverse("token-set-key", kwargs={"identifier": "anything"})
    try:
        assert requests.get(server.url + reverse("health-live"), timeout=5).status_code == 200
        calls = {
            "ready": lambda: requests.get(server.url + reverse("health-ready"), timeout=10),
            # The bearer lookup inside DRF's authentication is the first query of an API call.
            "set_key": lambda: requests.post(
                server.url + set_key_url,
                json={"key": generate_key()},
                headers={"Authorization": f"Bearer {generate_key()}"},
                timeout=10,
            ),
            # A plain Django view (the admin) loading a session.
            "admin": lambda: requests.get(server.url + "/admin/", cookies={"sessionid": "x" * 32}, timeout=10),
        }
        with ThreadPoolExecutor(len(calls)) as pool:
            answers = {name: future.result() for name, future in [(n, pool.submit(c)) for n, c in calls.items()]}
    finally:
        server.stop()
    # requests' timeout (10 s) bounds each call: an answer at all means no hang.
    ready = answers.pop("ready")
    assert ready.status_code == 503
    assert ready.json() == {"status": "unavailable", "database": "unreachable"}
    for name, response in answers.items():
        assert is_service_unavailable(response), (name, response.status_code, response.text)
