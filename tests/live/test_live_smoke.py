"""The real server process: a bearer set_key over a socket, as a client sends it."""

import json

import pytest
import requests

from core.models import Token, generate_key
from events.models import Event

pytestmark = pytest.mark.live


@pytest.mark.django_db(transaction=True)
def test_set_key_through_a_real_server(live, admin_token, make_token, superuser):
    target = make_token(superuser)
    new_key = generate_key()
    response = requests.post(
        f"{live.url}/api/v3/core/tokens/{target.identifier}/set_key/",
        json={"key": new_key},
        headers={"Authorization": f"Bearer {admin_token.key}"},
        timeout=10,
    )
    assert response.status_code == 204
    assert Token.objects.get(pk=target.pk).key == new_key
    assert Event.objects.filter(action="model_updated").count() == 1
    assert new_key not in live.log_text()
    assert admin_token.key not in live.log_text()


@pytest.mark.django_db(transaction=True)
def test_raw_socket_request_with_non_utf8_authorization(live, make_token, superuser):
    target = make_token(superuser)
    body = json.dumps({"key": generate_key()}).encode()
    request = (
        f"POST /core/tokens/{target.identifier}/set_key/ HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
        + b"Authorization: Bearer \xff\xfe\xfd\r\n"
        + b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    response = live.raw(request)
    assert response.status == 403
    assert response.json()["code"] == "authentication_failed"
    old_key = target.key
    target.refresh_from_db()
    assert target.key == old_key
