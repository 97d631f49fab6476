"""Small helpers shared by test modules of every folder. Fixtures are in ``tests/conftest.py``; the
real-server harness is ``tests/support/live.py``, the leak check ``tests/support/leakcheck.py``, the proxy topology
``tests/support/topology.py``."""

import itertools
import json
import os
import random
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

# The repository root, wherever a test module sits below tests/.
ROOT = Path(__file__).resolve().parent.parent

ON_POSTGRES = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
requires_postgres = pytest.mark.skipif(not ON_POSTGRES, reason="row locks and races need PostgreSQL")


def _lane_ports() -> Iterator[int]:
    """With ``TEST_PORTS=low-high`` (``make test-sqlite`` and ``make test-postgres`` each set their own range,
    below the kernel's ephemeral ports), every port of the range in turn, from a random start; otherwise 0,
    the kernel's choice, forever. A port found free is only bound later by the server it is for: in a range
    of its own, neither the other lane nor an outgoing connection's ephemeral port can take it meanwhile."""
    low, _, high = os.environ.get("TEST_PORTS", "").partition("-")
    if not low:
        yield from itertools.repeat(0)
        return
    ports = range(int(low), int(high) + 1)
    start = random.randrange(len(ports))
    while True:
        yield from ports[start:]
        yield from ports[:start]
        start = 0


_PORTS = _lane_ports()
_PORTS_LOCK = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on or holds on ``host`` now (see ``_lane_ports`` for which)."""
    for _ in range(10_000):
        with _PORTS_LOCK:
            port = next(_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError(f"no free port on {host} (TEST_PORTS={os.environ.get('TEST_PORTS', '')})")


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse_raw_response(data: bytes) -> RawResponse:
    """Status, lower-cased headers and (de-chunked) body of the last response in ``data``."""
    while data.startswith(b"HTTP/1.1 100"):
        data = data.partition(b"\r\n\r\n")[2]
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        decoded, rest = [], body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            decoded.append(rest[:size])
            rest = rest[size + 2 :]
        body = b"".join(decoded)
    return RawResponse(status=status, headers=headers, body=body)


def migrate_to_latest() -> None:
    """Apply every migration (after a test that migrated the test database back)."""
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
