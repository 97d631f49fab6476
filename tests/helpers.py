"""Small helpers shared by test modules of every folder. Fixtures are in ``tests/conftest.py``; the
real-server harness is ``tests/support/live.py``, the leak check ``tests/support/leakcheck.py``, the proxy topology
``tests/support/topology.py``."""

import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

# The repository root, wherever a test module sits below tests/.
ROOT = Path(__file__).resolve().parent.parent

ON_POSTGRES = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
requires_postgres = pytest.mark.skipif(not ON_POSTGRES, reason="row locks and races need PostgreSQL")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
