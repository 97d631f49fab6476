"""Persistent connections are checked by polling their socket, not by a ``SELECT 1`` round trip per request."""

import select
import time
from unittest import mock

import psycopg
import pytest
from django.db import close_old_connections, connection
from django.test.utils import CaptureQueriesContext

from core.models import generate_key
from tests.helpers import ON_POSTGRES
from tokens_service.middleware import close_connections_the_server_ended

pytestmark = [
    pytest.mark.skipif(not ON_POSTGRES, reason="the socket check applies to PostgreSQL connections"),
    pytest.mark.django_db(transaction=True),
]


def _server_url() -> str:
    params = connection.settings_dict
    user, host, port = params.get("USER") or "postgres", params.get("HOST") or "127.0.0.1", params.get("PORT") or 5432
    return f"postgres://{user}@{host}:{port}/postgres"


def _wait_readable(fd: int) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + 10
    while not poller.poll(100):
        assert time.monotonic() < deadline, "the server never closed the connection"


def test_a_request_sends_no_health_check_round_trip(bearer, admin_token, make_token, superuser):
    target = make_token(superuser)
    client = bearer(admin_token)
    connection.ensure_connection()
    health_checks = mock.Mock(wraps=connection.is_usable)
    with mock.patch.object(connection, "is_usable", health_checks):
        close_old_connections()  # what the server does at request_started
        with CaptureQueriesContext(connection) as queries:
            response = client.post(f"/core/tokens/{target.identifier}/set_key/", {"key": generate_key()}, format="json")
    assert response.status_code == 204
    assert health_checks.call_count == 0
    assert not any(query["sql"].strip().upper() == "SELECT 1" for query in queries.captured_queries)


def test_a_connection_the_server_ended_is_replaced_before_the_request_uses_it(bearer, admin_token):
    client = bearer(admin_token)
    assert client.get("/core/tokens/").status_code == 200
    old_pid = connection.connection.info.backend_pid
    fd = connection.connection.pgconn.socket
    # What a PostgreSQL restart does to every connection: the server ends the backend.
    with psycopg.connect(_server_url(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [old_pid])
    _wait_readable(fd)
    # The next request is answered normally, on a new connection (no 503 for the dead one).
    response = client.get("/core/tokens/")
    assert response.status_code == 200
    assert connection.connection.info.backend_pid != old_pid


def test_a_live_idle_connection_is_kept(bearer, admin_token):
    client = bearer(admin_token)
    assert client.get("/core/tokens/").status_code == 200
    pid = connection.connection.info.backend_pid
    close_connections_the_server_ended()
    assert client.get("/core/tokens/").status_code == 200
    assert connection.connection.info.backend_pid == pid
