"""Key collisions are not an oracle: a key another token holds is a 400 that is audited, counted like a
failed authentication (per caller and per client address, with a low limit), and never a unique-constraint
error, whose message would carry the key's digest into PostgreSQL's log."""

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.urls import reverse
from guardian.shortcuts import assign_perm

from core.models import Token, User, generate_key, key_digest
from core.services import KEY_IN_USE, KeyInUse, token_create
from events.models import Event
from tests.helpers import parse_raw_response, requires_postgres
from tests.support.live import migrate, register_database, start_server, unregister_database
from tokens_service.request_meta import RequestMeta


def rates(**overrides: str | None) -> dict[str, Any]:
    return {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], **overrides},
    }


def set_key(client: Any, identifier: str, key: str, address: str = "198.51.100.7") -> Any:
    url = reverse("token-set-key", args=[identifier])
    return client.post(url, {"key": key}, format="json", REMOTE_ADDR=address)


def test_a_collision_is_400_with_a_suspicious_request_event_and_no_secret(bearer, admin_token, make_token, make_user):
    holder = make_token(make_user())
    target = make_token(make_user())
    response = set_key(bearer(admin_token), target.identifier, holder.key)
    assert response.status_code == 400
    assert response.json() == {"key": [KEY_IN_USE]}
    event = Event.objects.get()
    assert event.action == "suspicious_request"
    assert event.user["username"] == "root"
    assert event.client_ip == "198.51.100.7"
    assert event.context["reason"] == "key_in_use"
    assert event.context["model"]["pk"] == target.pk.hex
    text = json.dumps(event.context)
    assert holder.key not in text
    assert key_digest(holder.key) not in text
    assert holder.identifier not in text


def test_collisions_are_limited_per_caller(bearer, admin_token, make_token, make_user, settings):
    settings.REST_FRAMEWORK = rates(key_collisions="3/min")
    holder, target = make_token(make_user()), make_token(make_user())
    client = bearer(admin_token)
    statuses = [set_key(client, target.identifier, holder.key, f"198.51.100.{i}").status_code for i in range(3)]
    assert statuses == [400, 400, 400]
    # Over the limit, even a good key from a fresh address is refused, before the body is looked at.
    response = set_key(client, target.identifier, generate_key(), "198.51.100.99")
    assert response.status_code == 429
    assert "retry-after" in response.headers
    assert Event.objects.filter(action="model_updated").count() == 0


def test_collisions_are_limited_per_client_address(bearer, make_token, make_user, settings):
    settings.REST_FRAMEWORK = rates(key_collisions="3/min")
    holder, target = make_token(make_user()), make_token(make_user())
    callers = [bearer(make_token(make_user(superuser=True))) for _ in range(4)]
    assert [set_key(callers[i], target.identifier, holder.key).status_code for i in range(3)] == [400] * 3
    # Another caller from the same address.
    assert set_key(callers[3], target.identifier, generate_key()).status_code == 429


def test_a_collision_counts_as_a_failed_authentication_of_the_address(
    bearer, admin_token, make_token, make_user, settings
):
    settings.REST_FRAMEWORK = rates(auth_failures="2/min", key_collisions=None)
    holder, target = make_token(make_user()), make_token(make_user())
    client = bearer(admin_token)
    assert set_key(client, target.identifier, holder.key).status_code == 400
    assert set_key(client, target.identifier, holder.key).status_code == 400
    # The address has now "failed" twice: every bearer request from it is refused.
    assert set_key(client, target.identifier, generate_key()).status_code == 429
    assert set_key(client, target.identifier, generate_key(), "203.0.113.5").status_code == 204


def test_create_with_a_taken_key_is_refused_and_audited(make_user, make_token):
    holder = make_token(make_user())
    owner = make_user()
    with pytest.raises(KeyInUse):
        token_create(actor=owner, user=owner, identifier="new-one", request_meta=RequestMeta(), key=holder.key)
    assert not Token.objects.filter(identifier="new-one").exists()
    event = Event.objects.get()
    assert event.action == "suspicious_request"
    assert event.context == {
        "reason": "key_in_use",
        "model": {"name": "new-one"},
        "http_request": RequestMeta().as_context(),
    }


def test_an_object_permission_holder_colliding_is_counted_too(bearer, make_user, make_token, settings):
    settings.REST_FRAMEWORK = rates(key_collisions="1/min")
    caller = make_user()
    target, holder = make_token(make_user()), make_token(make_user())
    assign_perm("authentik_core.set_token_key", caller, target)
    client = bearer(make_token(caller))
    assert set_key(client, target.identifier, holder.key).status_code == 400
    assert set_key(client, target.identifier, generate_key(), "203.0.113.9").status_code == 429


# --- the PostgreSQL server log -------------------------------------------------------------------------

ALIAS = "collisions"


@pytest.fixture
def collision_db(private_pg: Any, django_db_blocker: Any) -> Iterator[str]:
    with django_db_blocker.unblock():
        url = private_pg.create_database("collisions")
        migrate(url)
        register_database(ALIAS, url)
        try:
            yield url
        finally:
            unregister_database(ALIAS)
            with private_pg.connect(autocommit=True) as admin:
                admin.execute('DROP DATABASE "collisions" WITH (FORCE)')


def raw_set_key(server: Any, bearer_key: str, identifier: str, key: str) -> int:
    body = json.dumps({"key": key}).encode()
    request = (
        f"POST /api/v3/core/tokens/{identifier}/set_key/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {bearer_key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    with socket.create_connection((server.host, server.port), timeout=15) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return parse_raw_response(b"".join(chunks)).status


@requires_postgres
@pytest.mark.parametrize("fast_path", ["1", "0"])
def test_collisions_write_no_digest_into_the_postgresql_log(fast_path, collision_db, private_pg, tmp_path):
    root = User.objects.db_manager(ALIAS).create_user(username="root", is_superuser=True, is_staff=True)
    caller = Token.objects.using(ALIAS).create(identifier="caller", user=root, key=generate_key())
    holders = [Token.objects.using(ALIAS).create(identifier=f"h{i}", user=root, key=generate_key()) for i in range(3)]
    target = Token.objects.using(ALIAS).create(identifier="target", user=root, key=generate_key())
    server = start_server(
        tmp_path / "server.log",
        extra_env={"DATABASE_URL": collision_db, "TOKENS_FAST_PATH": fast_path, "THROTTLE_KEY_COLLISIONS": "off"},
        workers=1,
    )
    try:
        statuses = [raw_set_key(server, caller.key, target.identifier, holder.key) for holder in holders]
    finally:
        server.stop()
    assert statuses == [400, 400, 400]

    # A control: a unique violation raised on purpose does put its digest into the log, so the log is
    # where such messages land and the search below would find one.
    control = generate_key()
    Token.objects.using(ALIAS).create(identifier="control", user=root, key=control)
    with private_pg.connect("collisions", autocommit=True) as conn, pytest.raises(Exception, match="duplicate"):
        conn.execute(
            "UPDATE authentik_core_token SET key_digest = %s WHERE identifier = 'target'", [key_digest(control)]
        )
    log = (private_pg.root / "server.log").read_text(errors="replace")
    assert key_digest(control) in log
    for holder in holders:
        assert key_digest(holder.key) not in log
        assert holder.key not in log
