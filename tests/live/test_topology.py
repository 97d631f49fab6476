"""The deployed topology as a whole, on loopback: HAProxy with ``deploy/haproxy.cfg`` (changed only in its
addresses), three gunicorn replicas, PgBouncer in transaction mode in front of PostgreSQL, and Redis.

Under a bounded set_key load one replica is SIGKILLed and another restarted with SIGTERM; the tests check
that no request is lost beyond those in flight at the kill, that every 204 has exactly one event, that
the abuse-limit counters are shared by the replicas, and that events record the client's own address.
``make topology`` runs this file alone; ``make test`` runs it in the PostgreSQL lane.
"""

import http.client
import os
import re
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import requests
from django.conf import settings

from core.crypto import decrypt_key
from core.models import Token, TokenIntents, User, generate_key
from core.services import key_fingerprint
from events.models import Event
from tests.helpers import ON_POSTGRES
from tests.support import topology as topo
from tests.support.live import migrate, register_database, start_server, unregister_database

REPLICA_HOSTS = ["127.0.0.21", "127.0.0.22", "127.0.0.23"]
# The load's source address: not the balancer's (127.0.0.1), so a recorded 127.0.0.2 can only have
# come from the balancer's X-Forwarded-For entry for the real peer.
CLIENT = "127.0.0.2"
GUESSER = "127.0.0.3"
FAILED_AUTH_LIMIT = 6
REDIS_DB = 9
TOKENS = [f"topology-{n}" for n in range(4)]
ADMIN_KEY = generate_key()
ALIAS = "topology"
REPO_CONFIG = topo.ROOT / "deploy" / "haproxy.cfg"
# PgBouncer fronts a PostgreSQL server, the lane's: the topology runs once, in the PostgreSQL lane.
requires_postgres = pytest.mark.skipif(not ON_POSTGRES, reason="the topology runs in the PostgreSQL lane")


@dataclass
class Topology:
    url: str
    db_url: str
    dbname: str
    replicas: list[topo.Process]
    balancer: topo.Process
    bouncer: topo.Process
    pool_size: int
    workdir: Path


def _database_server() -> tuple[str, int]:
    params = settings.DATABASES["default"]
    return str(params.get("HOST") or "127.0.0.1"), int(params.get("PORT") or 5432)


@pytest.fixture(scope="module")
def topology(tmp_path_factory: Any, django_db_blocker: Any) -> Iterator[Topology]:
    missing = topo.missing_programs()
    if missing:
        pytest.fail(f"the topology test needs {', '.join(missing)}: {topo.INSTALL_COMMAND}")
    workdir = tmp_path_factory.mktemp("topology")
    pg_host, pg_port = _database_server()
    dbname = f"topology_{uuid.uuid4().hex[:12]}"
    admin_url = f"postgres://postgres@{pg_host}:{pg_port}/postgres"
    db_url = f"postgres://postgres@{pg_host}:{pg_port}/{dbname}"
    cache_prefix = f"topology-{uuid.uuid4().hex}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
        # PgBouncer drops the app's "options" startup parameter: the timeouts go on the database.
        for name, value in (("lock_timeout", "3s"), ("statement_timeout", "10s"),
                            ("idle_in_transaction_session_timeout", "60s")):  # fmt: skip
            conn.execute(f"ALTER DATABASE \"{dbname}\" SET {name} = '{value}'")
    dns: topo.StaticDns | None = None
    procs: list[topo.Process] = []
    try:
        migrate(db_url)
        with django_db_blocker.unblock():
            register_database(ALIAS, db_url)
            try:
                admin = User.objects.db_manager(ALIAS).create_superuser("root", "root@example.test", None)
                Token.objects.using(ALIAS).create(
                    identifier="topology-admin", user=admin, key=ADMIN_KEY, intent=TokenIntents.API, expiring=False
                )
                for identifier in TOKENS:
                    Token.objects.using(ALIAS).create(identifier=identifier, user=admin, key=generate_key())
            finally:
                unregister_database(ALIAS)

        pool_size = 3  # server connections for six app workers: transactions share them
        bouncer_dir = workdir / "pgbouncer"
        bouncer_dir.mkdir()
        bouncer_port = topo.free_port("127.0.0.1")
        bouncer = topo.pgbouncer(
            bouncer_dir, port=bouncer_port, pg_host=pg_host, pg_port=pg_port, dbname=dbname, pool_size=pool_size
        )
        procs.append(bouncer)
        bouncer.start()

        app_port = topo.free_port(*REPLICA_HOSTS)
        env = {
            **os.environ,
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:{bouncer_port}/{dbname}",
            "DJANGO_SECRET_KEY": settings.SECRET_KEY,
            "DJANGO_DEBUG": "",
            "DJANGO_SECURE_SSL": "0",
            "DJANGO_ALLOWED_HOSTS": "localhost,127.0.0.1",
            # What transaction-mode PgBouncer 1.18 needs (README, "Running at scale").
            "DB_DISABLE_SERVER_SIDE_CURSORS": "1",
            "DB_PREPARED_STATEMENTS": "0",
            "DB_CONN_MAX_AGE": "600",
            "WEB_CONCURRENCY": "2",
            "GUNICORN_GRACEFUL_TIMEOUT": "15",
            # As in docker-compose.yml: longer than the balancer takes to see readiness fail (2 x 2 s).
            "GUNICORN_DRAIN_SECONDS": "6",
            "TRUSTED_PROXY_CIDRS": f"{topo.BALANCER_SOURCE}/32",
            "REDIS_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
            "CACHE_KEY_PREFIX": cache_prefix,
            # Per day: the sliding window's edge cannot fall inside the test's few seconds.
            "THROTTLE_AUTH_FAILURES": f"{FAILED_AUTH_LIMIT}/day",
            "THROTTLE_SET_KEY": "100000/min",
            "LOG_LEVEL": "INFO",
        }
        replicas = [topo.replica(workdir, n, host, app_port, env) for n, host in enumerate(REPLICA_HOSTS)]
        procs.extend(replicas)
        for proc in replicas:
            proc.start()
        for proc, host in zip(replicas, REPLICA_HOSTS, strict=True):
            ready = f"http://{host}:{app_port}/-/health/ready/"
            topo.wait_for(f"{proc.name} ready", lambda url=ready: topo.http_ok(url), 60, procs=(proc, bouncer))

        dns = topo.StaticDns("app", REPLICA_HOSTS)
        lb_port = topo.free_port("127.0.0.1")
        config = topo.adapt_haproxy_config(
            REPO_CONFIG.read_text(),
            bind=f"127.0.0.1:{lb_port}",
            nameserver=f"127.0.0.1:{dns.port}",
            app_port=app_port,
        )
        balancer = topo.haproxy(workdir, config)
        procs.append(balancer)
        balancer.start()
        url = f"http://127.0.0.1:{lb_port}"
        topo.wait_for(
            "the balancer to resolve all three replicas",
            lambda: (
                len(set(re.findall(r"Server app/(app\d+) administratively READY", balancer.log_text())))
                >= len(REPLICA_HOSTS)
            ),
            30,
            procs=(balancer,),
        )
        topo.wait_for("the balancer to answer", lambda: topo.http_ok(f"{url}/-/health/ready/", "127.0.0.1"), 30)
        yield Topology(url, db_url, dbname, replicas, balancer, bouncer, pool_size, workdir)
    finally:
        for proc in reversed(procs):
            proc.stop()
        if dns is not None:
            dns.close()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        client = redis.Redis.from_url(f"redis://127.0.0.1:6379/{REDIS_DB}")
        for name in client.scan_iter(match=f"{cache_prefix}*"):
            client.delete(name)
        client.close()


def _request(url: str, source: str, method: str, path: str, headers: dict[str, str]) -> int:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30, source_address=(source, 0))
    try:
        conn.request(method, path, headers={**headers, "Connection": "close"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _assert_no_key_in_logs(top: Topology, keys: list[str]) -> None:
    logs = "".join(proc.log_text() for proc in [*top.replicas, top.balancer, top.bouncer])
    leaked = [key for key in keys if key in logs]
    assert not leaked, f"{len(leaked)} keys appear in a log"


def test_adapted_config_differs_from_the_repository_only_in_addresses() -> None:
    original = REPO_CONFIG.read_text()
    adapted = topo.adapt_haproxy_config(original, bind="127.0.0.1:18080", nameserver="127.0.0.1:10053", app_port=18000)
    before, after = original.splitlines(), adapted.splitlines()
    assert len(before) == len(after)
    changed = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert len(changed) == 3
    for old, new in changed:
        old_words, new_words = old.split(), new.split()
        assert len(old_words) == len(new_words)
        diffs = [(a, b) for a, b in zip(old_words, new_words, strict=True) if a != b]
        assert len(diffs) == 1, (old, new)
        assert all(topo.is_address(word) for word in diffs[0]), diffs
    assert "bind 127.0.0.1:18080" in adapted
    assert "nameserver dns 127.0.0.1:10053" in adapted
    # The replicas keep their service name, resolved through the nameserver; only the port moves.
    assert re.search(r"server-template app 10 app:18000 ", adapted)
    with pytest.raises(ValueError, match="exactly once"):
        topo.adapt_haproxy_config(
            original + "\nfrontend other\n    bind :9090\n", bind="x:1", nameserver="y:2", app_port=3
        )


@requires_postgres
@pytest.mark.live
@pytest.mark.topology
def test_failed_authentications_are_counted_once_across_replicas(topology: Topology) -> None:
    statuses = [
        _request(
            topology.url,
            GUESSER,
            "GET",
            "/api/v3/core/tokens/",
            # A fresh forged X-Forwarded-For each time: the count is still per real peer.
            {"Authorization": f"Bearer wrong-{n}", "X-Forwarded-For": f"198.51.100.{n + 1}"},
        )
        for n in range(3 * FAILED_AUTH_LIMIT)
    ]
    # One shared counter: the limit holds across the replicas, not per replica.
    assert statuses == [403] * FAILED_AUTH_LIMIT + [429] * (2 * FAILED_AUTH_LIMIT)
    answered = defaultdict(set)
    for proc in topology.replicas:
        for record in topo.request_log(proc.log_text()):
            if record.get("client_ip") == GUESSER:
                answered[proc.name].add(record["status"])
    # Round robin spread the attempts: every replica refused some and throttled some, so each one saw
    # the failures counted by the others.
    assert {name: sorted(codes) for name, codes in answered.items()} == {
        proc.name: [403, 429] for proc in topology.replicas
    }


@requires_postgres
@pytest.mark.live
@pytest.mark.topology
def test_replica_crash_and_graceful_restart_under_load(topology: Topology) -> None:
    victim, restarted, _survivor = topology.replicas
    load = topo.Load(
        url=topology.url,
        admin_key=ADMIN_KEY,
        tokens=TOKENS,
        source=CLIENT,
        threads=4,
        max_calls=1500,
        new_key=generate_key,
    )
    load.start()
    try:
        topo.wait_until_completed(load, 30, timeout=60)
        # The crash, from SIGKILL until the port refuses connections: no call starts or finishes meanwhile.
        # At a moment when calls are in flight (it may take a few tries: threads pause between calls).
        deadline = time.monotonic() + 10
        while True:
            with load.lock:
                if load.in_flight or time.monotonic() > deadline:
                    in_flight_at_kill = set(load.in_flight)
                    victim.crash()
                    break
            time.sleep(0.002)
        # Health checks (inter 2s, fall 2) take the dead replica out of rotation; until then the
        # balancer's retries and redispatch carry new requests to the others.
        topo.wait_for(
            "the balancer to mark the killed replica DOWN",
            lambda: " is DOWN" in topology.balancer.log_text(),
            30,
            procs=(topology.balancer,),
        )
        topo.wait_until_completed(load, load.completed() + 20, timeout=60)
        # docker stop: SIGTERM; the replica drains (readiness 503 until the balancer routes elsewhere),
        # finishes what is in flight, exits; then it starts again.
        restarted.graceful_stop(timeout=40)
        restarted.start()
        topo.wait_for(
            "the restarted replica to serve set_key through the balancer",
            lambda: any(
                str(record.get("path", "")).endswith("/set_key/") and record.get("status") == 204
                for record in topo.request_log(restarted.log_text(current_run_only=True))
            ),
            40,
            procs=(restarted, topology.balancer),
        )
        topo.wait_until_completed(load, load.completed() + 20, timeout=60)
    finally:
        load.finish()

    calls = load.calls
    assert all(call.status is not None or call.error is not None for call in calls), "a call got no outcome"
    failed = [call for call in calls if call.status != 204]
    succeeded = [call for call in calls if call.status == 204]
    # Nothing lost beyond the requests in flight when the replica died; those end as a 502 from the
    # balancer (the connection reset after the request was sent) or a client-side connection error.
    assert {call.number for call in failed} <= in_flight_at_kill, [(c.number, c.status, c.error) for c in failed]
    assert all(call.status in (None, 502) for call in failed), [(c.status, c.error) for c in failed]
    assert len(succeeded) >= 60

    with psycopg.connect(topology.db_url, autocommit=True) as conn:
        events = conn.execute(
            f"SELECT context->>'key_fingerprint', context->'model'->>'name', host(client_ip) "  # noqa: S608
            f'FROM "{Event._meta.db_table}" WHERE action = %s',
            ["model_updated"],
        ).fetchall()
        stored = conn.execute(f'SELECT identifier, key FROM "{Token._meta.db_table}"').fetchall()  # noqa: S608
        # Stored keys are ciphertext (core.crypto); the replicas share the test process's encryption keys.
        keys = {identifier: decrypt_key(ciphertext) for identifier, ciphertext in stored}
        server_connections = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [topology.dbname],
        ).fetchone()
    print(  # the figures `make topology` shows (-s)
        f"\ntopology: {len(calls)} set_key calls, {len(succeeded)} answered 204, {len(failed)} failed"
        f" ({len(in_flight_at_kill)} in flight at the SIGKILL), {len(events)} events,"
        f" {server_connections[0] if server_connections else '?'} PostgreSQL connections behind PgBouncer"
    )
    by_fingerprint: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for fingerprint, name, ip in events:
        by_fingerprint[fingerprint].append((name, ip))
    # Every 204 has exactly one event, naming its token and the client's own address (not the
    # balancer's, not the forged X-Forwarded-For entry).
    for call in succeeded:
        assert by_fingerprint.get(key_fingerprint(call.key)) == [(call.token, CLIENT)], call.number
    # No other events, except at most one for each call cut off by the crash (written, answer lost).
    sent = {key_fingerprint(call.key) for call in calls}
    assert set(by_fingerprint) <= sent
    assert len(events) - len(succeeded) <= len(failed)
    assert all(len(found) == 1 for found in by_fingerprint.values())
    # Each token holds a key that was sent for it: the last write, whichever replica made it.
    for identifier in TOKENS:
        assert keys[identifier] in {call.key for call in calls if call.token == identifier}
    # Transaction pooling: the six app workers share at most pool_size server connections.
    assert server_connections is not None
    assert server_connections[0] <= topology.pool_size
    # The replicas never answered 5xx themselves, and no key reached any log.
    for proc in topology.replicas:
        assert all(int(str(record["status"])) < 500 for record in topo.request_log(proc.log_text())), proc.name
    _assert_no_key_in_logs(topology, [ADMIN_KEY, *(call.key for call in calls)])


@pytest.mark.live
def test_sigterm_first_drains_readiness_then_stops(
    django_db_setup: None, django_db_blocker: Any, tmp_path: Path
) -> None:
    """GUNICORN_DRAIN_SECONDS: after SIGTERM readiness answers 503 while the rest is served, then gunicorn exits."""
    with django_db_blocker.unblock():
        server = start_server(tmp_path / "drain.log", extra_env={"GUNICORN_DRAIN_SECONDS": "3"})
    try:
        assert requests.get(f"{server.url}/-/health/ready/", timeout=5).status_code == 200
        server.process.send_signal(signal.SIGTERM)
        topo.wait_for(
            "readiness to answer 503",
            lambda: requests.get(f"{server.url}/-/health/ready/", timeout=5).status_code == 503,
            10,
        )
        drained = requests.get(f"{server.url}/-/health/ready/", timeout=5)
        assert drained.json() == {"status": "draining"}
        assert drained.headers["Retry-After"] == "5"
        # Still serving everything else: the balancer moves away before anything is refused.
        assert requests.get(f"{server.url}/-/health/live/", timeout=5).status_code == 200
        assert server.process.wait(timeout=30) == 0
        assert "draining for 3 s" in server.log_text()
    finally:
        server.stop()
