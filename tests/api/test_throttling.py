"""Abuse limits: failed bearer authentications per client IP, set_key per caller, 429 with Retry-After."""

import ipaddress
import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from guardian.shortcuts import assign_perm
from rest_framework.test import APIClient

from core.models import Token, User, generate_key
from events.models import Event
from tests.support.live import start_server
from tokens_service.settings import env_rate
from tokens_service.throttling import SlidingWindowThrottle, seconds_until_allowed

REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


# Like the PostgreSQL lane: skipped where no Redis answers, unless REQUIRE_REDIS=1 makes that a failure.
requires_redis = pytest.mark.skipif(
    not redis_reachable() and os.environ.get("REQUIRE_REDIS") != "1", reason="needs Redis on 127.0.0.1:6379"
)


@contextmanager
def rates(**scoped: str | None) -> Iterator[None]:
    """Override throttle rates, e.g. ``rates(auth_failures="3/min", set_key=None)``."""
    merged = {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], **scoped}
    with override_settings(REST_FRAMEWORK={**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": merged}):
        yield


def set_key(client: APIClient, identifier: str, key: str | None = None, **extra: Any) -> Any:
    url = reverse("token-set-key", kwargs={"identifier": identifier})
    return client.post(url, {"key": key or generate_key()}, format="json", **extra)


def with_header(header: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    return client


def assert_throttled(response: Any) -> None:
    assert response.status_code == 429
    body = response.json()
    assert body["code"] == "throttled"
    assert isinstance(body["detail"], str)
    assert set(body) == {"detail", "code"}
    assert int(response["Retry-After"]) >= 1


# --- the sliding-window arithmetic -------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock(600.0)  # the start of a one-minute window
    monkeypatch.setattr(SlidingWindowThrottle, "timer", fake)
    return fake


class Probe(SlidingWindowThrottle):
    scope = "probe"

    def attempt(self) -> bool:
        return self.allow_request(None, None)

    def get_cache_key(self, request: Any, view: Any) -> str:
        return "throttle:probe:someone"


def test_a_window_allows_exactly_the_rate_then_waits_it_out(clock: FakeClock) -> None:
    with rates(probe="3/min"):
        throttle = Probe()
        assert [throttle.attempt() for _ in range(4)] == [True, True, True, False]
        # The 3 requests count fully until the window ends and fade over the next one.
        assert throttle.wait() == 61
        clock.now += 60
        assert not Probe().attempt()
        clock.now += 1
        assert Probe().attempt()


def test_the_previous_window_is_weighted_by_what_is_left_of_it(clock: FakeClock) -> None:
    with rates(probe="10/min"):
        assert all(Probe().attempt() for _ in range(10))
        clock.now += 90  # half-way through the next window: the last 10 count as 5
        allowed = [Probe().attempt() for _ in range(6)]
        assert allowed == [True] * 5 + [False]
        clock.now += 1
        assert Probe().attempt()


def test_refused_requests_are_not_counted(clock: FakeClock) -> None:
    with rates(probe="2/min"):
        for _ in range(50):
            Probe().attempt()
        clock.now += 61  # the 2 counted requests weigh 2 * 59/60 < 2 now; 48 refusals would not
        assert Probe().attempt()


@pytest.mark.parametrize(
    ("previous", "current", "elapsed", "expected"),
    [
        (0, 3, 0.0, 61),  # all in this window: wait for it to end and fade by a second
        (0, 3, 59.5, 1),  # the next window starts in half a second and fades the 3 at once
        (0, 6, 0.0, 91),  # twice the rate: half of the next window too
        (10, 5, 30.0, 1),  # at the limit right now: the previous window fades below it at once
        (10, 0, 0.0, 1),
        (20, 5, 0.0, 46),  # 20 * (1 - t/60) + 5 < 10  <=>  t > 45
    ],
)
def test_retry_after_is_when_the_estimate_drops_below_the_limit(
    previous: int, current: int, elapsed: float, expected: int
) -> None:
    assert seconds_until_allowed(previous, current, elapsed, 10 if previous else 3, 60) == expected


def test_rates_are_read_at_request_time_and_off_disables() -> None:
    with rates(probe=None):
        assert all(Probe().attempt() for _ in range(100))


# --- failed bearer authentications --------------------------------------------------------------------


@pytest.fixture
def target(make_token: Callable[..., Token], superuser: User) -> Token:
    return make_token(superuser, identifier="target")


def test_failed_authentications_are_throttled_per_client_ip(admin_token: Token, target: Token) -> None:
    with rates(auth_failures="3/min"):
        for _ in range(3):
            response = set_key(with_header("Bearer wrong-key-value"), target.identifier)
            assert response.status_code == 403
            assert response.json()["code"] == "authentication_failed"
        assert_throttled(set_key(with_header("Bearer wrong-key-value"), target.identifier))
        # Malformed credentials count and are refused alike.
        assert_throttled(set_key(with_header("Basic dXNlcjpwYXNz"), target.identifier))
        # While the address is over its limit even the right key is refused: a guesser learns nothing.
        old_key = target.key
        assert_throttled(set_key(with_header(f"Bearer {admin_token.key}"), target.identifier))
        target.refresh_from_db()
        assert target.key == old_key
        assert Event.objects.count() == 0
        # Another address is not affected.
        assert (
            set_key(with_header(f"Bearer {admin_token.key}"), target.identifier, REMOTE_ADDR="10.9.8.7").status_code
            == 204
        )


def test_rotating_x_forwarded_for_does_not_escape_the_count(admin_token: Token, target: Token) -> None:
    with rates(auth_failures="3/min"):
        statuses = [
            set_key(
                with_header("Bearer wrong-key-value"), target.identifier, HTTP_X_FORWARDED_FOR=f"203.0.113.{n}"
            ).status_code
            for n in range(6)
        ]
        assert statuses == [403, 403, 403, 429, 429, 429]


@override_settings(TRUSTED_PROXY_CIDRS=[ipaddress.ip_network("127.0.0.0/8")])
def test_behind_a_trusted_proxy_each_forwarded_client_is_counted_on_its_own(admin_token: Token, target: Token) -> None:
    with rates(auth_failures="2/min"):
        bad = with_header("Bearer wrong-key-value")
        assert [set_key(bad, target.identifier, HTTP_X_FORWARDED_FOR="198.51.100.1").status_code for _ in range(3)] == [
            403,
            403,
            429,
        ]
        # A client that writes its own X-Forwarded-For still ends up as the address our proxy appended.
        spoofed = set_key(bad, target.identifier, HTTP_X_FORWARDED_FOR="203.0.113.50, 198.51.100.1")
        assert spoofed.status_code == 429
        assert set_key(bad, target.identifier, HTTP_X_FORWARDED_FOR="198.51.100.2").status_code == 403


def test_ipv6_clients_are_counted_per_slash_64(target: Token) -> None:
    bad = with_header("Bearer wrong-key-value")
    with rates(auth_failures="2/min"):
        statuses = [
            set_key(bad, target.identifier, REMOTE_ADDR=f"2001:db8:0:7::{n:x}").status_code for n in range(1, 4)
        ]
        assert statuses == [403, 403, 429]
        assert set_key(bad, target.identifier, REMOTE_ADDR="2001:db8:0:8::1").status_code == 403


def test_requests_without_credentials_are_not_counted(target: Token) -> None:
    with rates(auth_failures="2/min"):
        for _ in range(5):
            assert set_key(APIClient(), target.identifier).json()["code"] == "not_authenticated"


def test_successful_authentications_are_not_counted(admin_token: Token, target: Token) -> None:
    with rates(auth_failures="2/min"):
        for _ in range(5):
            assert set_key(with_header(f"Bearer {admin_token.key}"), target.identifier).status_code == 204
        assert set_key(with_header("Bearer wrong-key-value"), target.identifier).status_code == 403


def test_the_failure_throttle_covers_every_bearer_endpoint(admin_token: Token) -> None:
    with rates(auth_failures="1/min"):
        bad = with_header("Bearer wrong-key-value")
        assert bad.get(reverse("token-list")).status_code == 403
        assert_throttled(bad.get(reverse("token-list")))
        assert_throttled(with_header(f"Bearer {admin_token.key}").get(reverse("event-list")))


# --- set_key per caller ---------------------------------------------------------------------------------


def test_set_key_is_throttled_per_caller(
    admin_token: Token, target: Token, make_user: Callable[..., User], make_token: Callable[..., Token]
) -> None:
    other = make_token(make_user(superuser=True))
    with rates(set_key="2/min"):
        root = with_header(f"Bearer {admin_token.key}")
        assert [set_key(root, target.identifier).status_code for _ in range(2)] == [204, 204]
        key_before = Token.objects.get(pk=target.pk).key
        events_before = Event.objects.count()
        refused = set_key(root, target.identifier)
        assert_throttled(refused)
        assert Token.objects.get(pk=target.pk).key == key_before
        assert Event.objects.count() == events_before
        # Rotating X-Forwarded-For or the source address changes nothing: the count is the caller's.
        assert_throttled(set_key(root, target.identifier, HTTP_X_FORWARDED_FOR="203.0.113.8", REMOTE_ADDR="10.1.1.1"))
        # Another caller has its own count.
        assert set_key(with_header(f"Bearer {other.key}"), target.identifier).status_code == 204


def test_set_key_throttle_counts_only_callers_allowed_to_set_keys(
    make_user: Callable[..., User], make_token: Callable[..., Token], target: Token
) -> None:
    nobody = make_token(make_user())
    with rates(set_key="1/min"):
        for _ in range(3):
            assert set_key(with_header(f"Bearer {nobody.key}"), target.identifier).json()["code"] == "permission_denied"


def test_set_key_throttle_counts_no_refused_caller_whatever_the_body(
    make_user: Callable[..., User], make_token: Callable[..., Token], target: Token
) -> None:
    nobody = with_header(f"Bearer {make_token(make_user()).key}")
    with rates(set_key="1/min"):
        for key in ("has a space", "", generate_key()):
            assert set_key(nobody, target.identifier, key=key).json()["code"] == "permission_denied"


def test_set_key_throttle_takes_back_the_count_of_a_token_the_caller_may_not_rekey(
    make_user: Callable[..., User], make_token: Callable[..., Token], target: Token
) -> None:
    # An object permission on one token: requests on another token are refused (403) and not counted.
    holder = make_user()
    assign_perm("authentik_core.set_token_key", holder, target)
    elsewhere = make_token(make_user())
    client = with_header(f"Bearer {make_token(holder).key}")
    with rates(set_key="1/min"):
        assert set_key(client, elsewhere.identifier).json()["code"] == "permission_denied"
        assert set_key(client, target.identifier).status_code == 204
        assert_throttled(set_key(client, target.identifier))


def test_set_key_throttle_applies_to_invalid_bodies_too(admin_token: Token, target: Token) -> None:
    with rates(set_key="1/min"):
        root = with_header(f"Bearer {admin_token.key}")
        assert set_key(root, target.identifier, key="has a space").status_code == 400
        assert_throttled(set_key(root, target.identifier))


def test_other_actions_are_not_throttled_by_the_set_key_rate(admin_token: Token, target: Token) -> None:
    with rates(set_key="1/min"):
        root = with_header(f"Bearer {admin_token.key}")
        for _ in range(3):
            assert root.get(reverse("token-list")).status_code == 200


def test_throttles_add_no_database_query_to_a_successful_set_key(admin_token: Token, target: Token) -> None:
    root = with_header(f"Bearer {admin_token.key}")
    counts = {}
    for label, scoped in (("off", {"auth_failures": None, "set_key": None}), ("on", {})):
        with rates(**scoped), CaptureQueriesContext(connection) as queries:
            assert set_key(root, target.identifier).status_code == 204
        counts[label] = len(queries)
    assert counts["on"] == counts["off"]


@pytest.mark.parametrize("backend", ["tokens_service.cache.RedisCache", "django.core.cache.backends.redis.RedisCache"])
def test_an_unreachable_cache_fails_open(
    backend: str, admin_token: Token, target: Token, caplog: pytest.LogCaptureFixture
) -> None:
    dead = {"default": {"BACKEND": backend, "LOCATION": "redis://127.0.0.1:1/0"}}
    with (
        override_settings(CACHES=dead),
        rates(auth_failures="1/min", set_key="1/min"),
        caplog.at_level(logging.WARNING),
    ):
        for _ in range(3):
            assert set_key(with_header("Bearer wrong-key-value"), target.identifier).status_code == 403
            assert set_key(with_header(f"Bearer {admin_token.key}"), target.identifier).status_code == 204
    assert "throttle cache unavailable" in caplog.text


# --- configuration ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", "20/min"), ("5/s", "5/s"), ("100/hour", "100/hour"), ("7/day", "7/day"), ("off", None), ("OFF", None)],
)
def test_rates_come_from_the_environment(value: str, expected: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THROTTLE_TEST", value)
    assert env_rate("THROTTLE_TEST", "20/min") == expected


@pytest.mark.parametrize("value", ["20", "0/min", "-1/min", "20/fortnight", "twenty/min", "20/min; drop"])
def test_malformed_rates_stop_the_start(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THROTTLE_TEST", value)
    with pytest.raises(ImproperlyConfigured):
        env_rate("THROTTLE_TEST", "20/min")


def test_defaults_are_documented_values() -> None:
    assert settings.THROTTLE_AUTH_FAILURES == "600/min"
    assert settings.THROTTLE_SET_KEY == "6000/min"


# --- a real server: counts shared by every worker process through Redis -------------------------------------


@pytest.fixture
def redis_server(tmp_path: Any, django_db_blocker: Any) -> Iterator[Any]:
    """Two gunicorn workers sharing Redis counters under a key prefix of their own; low rates."""
    import redis

    prefix = f"tokens-service-test-{uuid.uuid4().hex}"
    with django_db_blocker.unblock():
        server = start_server(
            tmp_path / "server.log",
            extra_env={
                "REDIS_URL": REDIS_URL,
                "CACHE_KEY_PREFIX": prefix,
                "THROTTLE_AUTH_FAILURES": "5/min",
                "THROTTLE_SET_KEY": "3/min",
            },
            workers=2,
        )
    yield server
    server.stop()
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


def raw_set_key(server: Any, identifier: str, authorization: bytes, forwarded: bytes = b"") -> Any:
    body = b'{"key": "' + generate_key().encode() + b'"}'
    request = (
        f"POST /core/tokens/{identifier}/set_key/ HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
        + b"Authorization: "
        + authorization
        + b"\r\nX-Forwarded-For: "
        + forwarded
        + b"\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    return server.raw(request)


@requires_redis
@pytest.mark.live
@pytest.mark.django_db(transaction=True)
def test_live_failure_throttle_is_shared_by_all_workers(redis_server: Any, admin_token: Token, target: Token) -> None:
    # Each request is a new connection, so the two sync workers take turns; with per-process counters
    # up to 10 failures would pass before a 429.
    responses = [raw_set_key(redis_server, "target", b"Bearer wrong-key-value", b"203.0.113.%d" % n) for n in range(12)]
    assert [r.status for r in responses] == [403] * 5 + [429] * 7
    last = responses[-1]
    assert last.json()["code"] == "throttled"
    assert 1 <= int(last.headers["retry-after"]) <= 121
    assert raw_set_key(redis_server, "target", b"Bearer " + admin_token.key.encode()).status == 429
    assert Event.objects.count() == 0


@requires_redis
@pytest.mark.live
@pytest.mark.django_db(transaction=True)
def test_live_set_key_throttle_is_per_caller(redis_server: Any, admin_token: Token, target: Token) -> None:
    statuses = [raw_set_key(redis_server, "target", b"Bearer " + admin_token.key.encode()).status for _ in range(5)]
    assert statuses == [204, 204, 204, 429, 429]
    assert Event.objects.filter(action="model_updated").count() == 3


# --- the Redis cache backend (tokens_service.cache) ----------------------------------------------------------


class ProbeThrottle(SlidingWindowThrottle):
    scope = "probe"

    def get_rate(self) -> str | None:
        return "5/min"


@pytest.fixture
def redis_cache() -> Iterator[Any]:
    """The service's Redis cache backend on the local Redis, under a key prefix of its own."""
    import redis

    from tokens_service.cache import RedisCache

    prefix = f"tokens-service-test-{uuid.uuid4().hex}"
    # A pool option of its own (the connections' name), so that this cache's client is not one that an earlier
    # test made: the process keeps one client per server and pool options (tokens_service.cache).
    yield RedisCache(REDIS_URL, {"KEY_PREFIX": prefix, "OPTIONS": {"client_name": prefix}})
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


@requires_redis
def test_the_redis_cache_shares_one_client_between_calls_and_threads(
    redis_cache: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import redis

    built = []
    real_init = redis.Redis.__init__

    def counting_init(self: Any, *args: Any, **kwargs: Any) -> None:
        built.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "__init__", counting_init)
    redis_cache.set("a", 1)
    for count in range(1, 6):
        assert redis_cache.get_many(["a", "b"]) == {"a": count}
        redis_cache.incr("a")
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(redis_cache._cache.get_client())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 1  # Django's own client class builds one per call: 11 here
    assert all(client is built[0] for client in seen)
    assert redis_cache.get("a") == 6


@requires_redis
def test_the_threads_of_a_process_share_one_redis_client_and_its_connections() -> None:
    """Django makes a cache object (and, in its backend, a connection pool) for every thread; here every thread's
    cache uses the process's one client, so threads that use the cache in turn open one connection between them
    (Django's backend opens one per thread: 6 here, kept while the threads live)."""
    import threading

    import redis
    from django.core.cache import caches

    name = f"tokens-service-test-{uuid.uuid4().hex}"
    config = {
        "default": {
            "BACKEND": "tokens_service.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": name,
            "OPTIONS": {"client_name": name},  # names the connections, to count them on the server
        }
    }
    turn = threading.Lock()
    used = threading.Barrier(7)
    seen: list[tuple[Any, Any]] = []

    def use_the_cache() -> None:
        cache = caches["default"]
        with turn:
            cache.get_many(["a", "b"])
            cache.incr_expiring("a", 5)
            seen.append((cache, cache._cache.get_client()))
        used.wait(timeout=10)

    admin = redis.Redis.from_url(REDIS_URL)
    with override_settings(CACHES=config):
        threads = [threading.Thread(target=use_the_cache) for _ in range(6)]
        for thread in threads:
            thread.start()
        used.wait(timeout=10)  # every thread has used its cache and is still alive
        connections = [client for client in admin.client_list() if client.get("name") == name]
        for thread in threads:
            thread.join()
    count = admin.get(f"{name}:1:a")
    for key in admin.scan_iter(f"{name}*"):
        admin.delete(key)
    assert len({id(cache) for cache, _ in seen}) == 6  # a cache object per thread, as Django makes them
    assert len({id(client) for _, client in seen}) == 1
    assert len(connections) == 1
    assert count == b"6"  # every thread's count landed on the one counter


@requires_redis
def test_a_throttle_count_in_redis_is_one_round_trip_and_keeps_a_lifetime(
    redis_cache: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    throttle = ProbeThrottle()
    throttle.cache = redis_cache
    redis_cache.get("warm-up")  # the connection's opening handshake is not the count's
    sent = []
    real_send = redis.connection.Connection.send_packed_command

    def counting_send(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(command)
        real_send(self, command, check_health)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting_send)
    throttle.hit("probe-key")
    assert len(sent) == 1  # one EVAL (Django's incr and add: EXISTS, INCRBY or SET)
    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", real_send)
    counted = throttle._counted
    assert counted is not None
    assert redis_cache.get(counted) == 1
    client = redis_cache._cache.get_client()
    lifetime = client.ttl(redis_cache.make_key(counted))
    assert 0 < lifetime <= 2 * 60 + 1
    # The sliding window over Redis: at the rate's limit the next request is refused, a refund frees it.
    for _ in range(4):
        throttle.hit("probe-key")
    assert redis_cache.get(counted) == 5
    assert throttle.exceeded("probe-key")
    throttle.refund()
    assert not throttle.exceeded("probe-key")


@requires_redis
def test_a_set_key_sends_redis_three_commands(
    admin_token: Token, target: Token, redis_cache: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    import redis

    backend = {
        "BACKEND": "tokens_service.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": redis_cache.key_prefix,
    }
    sent: list[bytes] = []
    real_send = redis.connection.Connection.send_packed_command

    def counting_send(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(b"".join(command) if isinstance(command, list) else command)
        real_send(self, command, check_health)

    root = with_header(f"Bearer {admin_token.key}")
    with override_settings(CACHES={"default": backend}):
        assert set_key(root, target.identifier).status_code == 204  # opens the connection (its handshake)
        monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting_send)
        assert set_key(root, target.identifier).status_code == 204
    names = [re.match(rb"\*\d+\r\n\$\d+\r\n([A-Za-z]+)\r\n", command)[1].upper() for command in sent]  # type: ignore[index]
    # The failure limit before the lookup; the set_key rate read with the collision limit's counters; the count.
    assert names == [b"MGET", b"MGET", b"EVAL"]
    assert sent[1].count(b"key_collisions") == 4  # the caller's and the address's, two windows each


@pytest.fixture
def hung_redis() -> Iterator[tuple[str, list[socket.socket]]]:
    """A server that accepts connections and never answers, as a hung Redis (or a host behind a black hole)."""
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with suppress(TimeoutError):
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=accept)
    thread.start()
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0", accepted
    stop.set()
    thread.join()
    for connection_ in [*accepted, server]:
        connection_.close()


def test_a_hung_cache_costs_one_timeout_then_is_left_alone_for_a_while(
    admin_token: Token,
    target: Token,
    hung_redis: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    from tokens_service.throttling import CachePause

    url, accepted = hung_redis
    options = {"socket_connect_timeout": 0.5, "socket_timeout": 0.2}
    hung = {"default": {"BACKEND": "tokens_service.cache.RedisCache", "LOCATION": url, "OPTIONS": options}}
    root = with_header(f"Bearer {admin_token.key}")
    with override_settings(CACHES=hung), caplog.at_level(logging.WARNING):
        statuses = [set_key(root, target.identifier).status_code for _ in range(4)]
        statuses.append(set_key(with_header("Bearer wrong-key-value"), target.identifier).status_code)
        time.sleep(0.1)  # let the fake server's accepting thread catch up
        # One connection, whose first read timed out; the other requests (3 counters each) asked nothing.
        assert len(accepted) == 1
        assert statuses == [204, 204, 204, 204, 403]
        assert caplog.text.count("throttle cache unavailable") == 1
        assert "not asked again for 5 s" in caplog.text
        # Once the pause is over, the cache is asked again (and paused again, being still hung).
        monkeypatch.setattr(CachePause, "until", time.monotonic() - 1)
        assert set_key(root, target.identifier).status_code == 204
        time.sleep(0.1)
        assert len(accepted) == 2
