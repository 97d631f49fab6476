"""Slow clients cannot stall the server: against a real gunicorn process (tokens_service/gunicorn_conf.py),
fifty connections trickling request bodies do not keep a health check or a set_key from being answered, and
a body that never completes is answered 408 once REQUEST_BODY_TIMEOUT has passed."""

import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from core.models import Token, generate_key
from tests.helpers import ROOT, free_port, parse_raw_response
from tests.support.live import LiveServer, start_server
from tests.support.topology import INSTALL_COMMAND

SLOW_CLIENTS = 50
FAILSAFE_TIMEOUT = 30  # seconds: only so that a broken server fails the test instead of hanging it


@pytest.fixture(scope="module")
def slow_body_server(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[LiveServer]:
    """A server of its own: the default worker configuration (2 workers), a body timeout the test outlasts."""
    with django_db_blocker.unblock():
        server = start_server(
            tmp_path_factory.mktemp("slow") / "server.log",
            extra_env={"REQUEST_BODY_TIMEOUT": str(FAILSAFE_TIMEOUT * 2), "LOG_LEVEL": "INFO"},
            workers=2,
        )
    yield server
    server.stop()


def slow_request_head(server: LiveServer, identifier: str, body_length: int) -> bytes:
    return (
        f"POST /api/v3/core/tokens/{identifier}/set_key/ HTTP/1.1\r\n"
        f"Host: {server.host}:{server.port}\r\n"
        "Authorization: Bearer not-a-real-key-just-slow\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {body_length}\r\n\r\n"
    ).encode()


def still_waiting(sock: socket.socket) -> bool:
    """The server has neither answered nor closed this connection."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b"x"  # never true: b"" is a close, data an answer
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)


@pytest.mark.django_db(transaction=True)
def test_fifty_slow_bodies_do_not_stall_health_checks_or_set_key(slow_body_server, admin_token, make_token, superuser):

    def app_holds_the_slow_connections() -> None:
        if Path("/proc/net/tcp").exists():
            assert established_connections_to(slow_body_server.port) >= SLOW_CLIENTS

    assert_slow_bodies_do_not_stall(
        slow_body_server, admin_token, make_token(superuser), app_holds_the_slow_connections
    )


def assert_slow_bodies_do_not_stall(
    server: LiveServer, admin_token: Token, target: Token, while_waiting: Callable[[], None] = lambda: None
) -> None:
    """Fifty slow requests to ``server``, then a health check and a set_key that must be answered while the
    slow ones are all unfinished; ``while_waiting`` runs at that point too."""
    body = json.dumps({"key": generate_key()}).encode()
    slow: list[socket.socket] = []
    try:
        for number in range(SLOW_CLIENTS):
            sock = socket.create_connection((server.host, server.port), timeout=FAILSAFE_TIMEOUT)
            sock.sendall(slow_request_head(server, f"slow-{number}", len(body)) + body[:5])
            slow.append(sock)
        # Trickle: one more byte on every slow connection, so each is a request in progress, not an idle one.
        for sock in slow:
            sock.sendall(body[5:6])

        live = requests.get(f"{server.url}/-/health/live/", timeout=FAILSAFE_TIMEOUT)
        ready = requests.get(f"{server.url}/-/health/ready/", timeout=FAILSAFE_TIMEOUT)
        new_key = generate_key()
        rotated = requests.post(
            f"{server.url}/api/v3/core/tokens/{target.identifier}/set_key/",
            json={"key": new_key},
            headers={"Authorization": f"Bearer {admin_token.key}"},
            timeout=FAILSAFE_TIMEOUT,
        )
        # Answered while all fifty slow requests are still unfinished and unanswered.
        assert all(still_waiting(sock) for sock in slow)
        assert (live.status_code, ready.status_code, rotated.status_code) == (200, 200, 204)
        assert Token.objects.get(pk=target.pk).key == new_key
        while_waiting()

        # The slow requests are served normally once their bodies are complete (bad credentials: 403).
        for sock in slow[:3]:
            sock.sendall(body[6:])
            answer = parse_raw_response(_read_response(sock))
            assert answer.status == 403
    finally:
        for sock in slow:
            sock.close()


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        0,
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head + b"\r\n\r\n" + rest


@pytest.mark.django_db(transaction=True)
def test_a_body_that_never_completes_is_answered_408_and_closed(tmp_path):
    server = start_server(tmp_path / "server.log", extra_env={"REQUEST_BODY_TIMEOUT": "1"}, workers=1)
    try:
        with socket.create_connection((server.host, server.port), timeout=FAILSAFE_TIMEOUT) as sock:
            sock.sendall(slow_request_head(server, "never", 100) + b'{"key": "')
            answer = parse_raw_response(_read_response(sock))
            assert answer.status == 408
            assert answer.json() == {"detail": "The request body was not received in time.", "code": "request_timeout"}
            assert sock.recv(1) == b""  # closed: the rest of the body is never read as a request
    finally:
        server.stop()


def haproxy_binary() -> str:
    """Debian's haproxy, which `make test` installs (scripts/ensure-system-packages.sh): missing is a failure."""
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if found is None:
        pytest.fail(f"haproxy is missing; install it: {INSTALL_COMMAND}")
    return found


def balancer_config(lb_port: int, app_port: int) -> str:
    """deploy/haproxy.cfg as it is, pointed at one local app server instead of Docker's DNS."""
    config = (ROOT / "deploy" / "haproxy.cfg").read_text()
    config = re.sub(r"(?ms)^resolvers docker\n.*?(?=^\S|\Z)", "", config)
    config = config.replace("bind :8080", f"bind 127.0.0.1:{lb_port}")
    config, replaced = re.subn(
        r"(?m)^\s*server-template .*$", f"    server app1 127.0.0.1:{app_port} check inter 1s", config
    )
    assert replaced == 1
    return config


@pytest.fixture
def balancer(slow_body_server, tmp_path) -> Iterator[LiveServer]:
    haproxy = haproxy_binary()
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(balancer_config(port, slow_body_server.port))
    log_path = tmp_path / "haproxy.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # fixed argv: the system's haproxy with the project's configuration
            [haproxy, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    server = LiveServer(host="127.0.0.1", port=port, log_path=log_path, process=process)
    deadline = time.monotonic() + FAILSAFE_TIMEOUT
    try:
        while True:
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            try:
                if requests.get(f"{server.url}/-/health/live/", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        yield server
    finally:
        server.stop()


@pytest.mark.django_db(transaction=True)
def test_the_balancer_buffers_slow_bodies(balancer, slow_body_server, admin_token, make_token, superuser):
    """Behind deploy/haproxy.cfg the same fifty slow clients never even reach the app."""

    def app_connections_are_few() -> None:
        # The unfinished requests are held by the balancer: it has not opened a connection to the app for
        # them (only its health checks and the fast requests' connections, a handful at most).
        assert established_connections_to(slow_body_server.port) < 10

    assert_slow_bodies_do_not_stall(balancer, admin_token, make_token(superuser), app_connections_are_few)


def established_connections_to(port: int) -> int:
    """ESTABLISHED TCP connections whose local port is ``port`` (the server's side), from /proc/net/tcp*."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                count += 1
    return count


def test_balancer_configuration_is_valid(tmp_path):
    result = subprocess.run(  # fixed argv
        [haproxy_binary(), "-c", "-f", str(ROOT / "deploy" / "haproxy.cfg")], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
