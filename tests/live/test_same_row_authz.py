"""One decision, one row: the permission that allows a write or a read is decided on the row written or read.

Each test makes a concurrent change (a rename that moves an identifier to another token, or a revoked
permission) land after the request's early checks and before its write, and requires that the request
never acts on a token it was not authorized for. The live tests hold a real request's body back on a
socket while the rename happens; the in-process tests inject the change right before the service runs.
"""

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
from django.db import connection, transaction
from django.urls import reverse
from guardian.shortcuts import assign_perm, remove_perm
from rest_framework.test import APIClient

from core.models import Token, User, generate_key
from events.models import Event
from tests.helpers import parse_raw_response, requires_postgres

SET_KEY = "authentik_core.set_token_key"
VIEW_KEY = "authentik_core.view_token_key"


def rename_swap(a: Token, b: Token) -> None:
    """What a concurrent admin does: ``a`` is renamed away and ``b`` takes ``a``'s identifier."""
    original = a.identifier
    with transaction.atomic():
        Token.objects.filter(pk=a.pk).update(identifier=f"{original}-moved")
        Token.objects.filter(pk=b.pk).update(identifier=original)


@pytest.fixture
def two_tokens(make_user: Callable[..., User], make_token: Callable[..., Token]) -> tuple[Token, Token]:
    owner = make_user()
    return make_token(owner, identifier="row-a"), make_token(owner, identifier="row-b")


def client_for(user: User, make_token: Callable[..., Token]) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {make_token(user).key}")
    return client


def assert_key_unchanged(token: Token) -> None:
    assert Token.objects.get(pk=token.pk).key == token.key


# --- in process: the change lands right before the service -------------------------------------------


@contextmanager
def before(target: str, change: Callable[[], None]) -> Iterator[None]:
    """Run ``change`` when the view calls ``target`` (a service imported by a view module), then call it."""
    module, name = target.rsplit(".", 1)
    original = getattr(__import__(module, fromlist=[name]), name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        change()
        return original(*args, **kwargs)

    with mock.patch(target, wrapper):
        yield


@pytest.mark.parametrize("caller_kind", ["object-permission", "global-permission"])
def test_set_key_after_a_rename_never_writes_the_other_token(caller_kind, two_tokens, make_user, make_token):
    a, b = two_tokens
    caller = make_user(perms=(SET_KEY,) if caller_kind == "global-permission" else ())
    if caller_kind == "object-permission":
        assign_perm(SET_KEY, caller, a)
    client = client_for(caller, make_token)
    with before("core.api.token_set_key", lambda: rename_swap(a, b)):
        response = client.post(reverse("token-set-key", args=["row-a"]), {"key": generate_key()}, format="json")
    if caller_kind == "object-permission":
        # The identifier now names B, on which the caller holds nothing: 403, never 404, never B written.
        assert response.status_code == 403
        assert_key_unchanged(b)
        assert not Event.objects.exists()
    else:
        # A holder of the global permission may re-key any token: B, which the identifier names now.
        assert response.status_code == 204
    assert_key_unchanged(a)


def test_view_key_after_a_rename_never_returns_the_other_tokens_key(two_tokens, make_user, make_token):
    a, b = two_tokens
    caller = make_user()
    assign_perm(VIEW_KEY, caller, a)
    client = client_for(caller, make_token)
    with before("core.api.token_view_key", lambda: rename_swap(a, b)):
        response = client.get(reverse("token-view-key", args=["row-a"]))
    assert response.status_code == 403
    assert b.key not in response.content.decode()
    assert not Event.objects.filter(action="secret_view").exists()


@pytest.mark.parametrize("method", ["patch", "delete"])
def test_update_and_delete_decide_on_the_locked_row(method, two_tokens, make_user, make_token):
    """A permission revoked after the view's early check, before the service locks the row: 403, nothing changed."""
    a, _ = two_tokens
    caller = make_user()
    codename = "authentik_core.change_token" if method == "patch" else "authentik_core.delete_token"
    assign_perm(codename, caller, a)
    client = client_for(caller, make_token)
    service = "core.api.token_update" if method == "patch" else "core.api.token_delete"
    with before(service, lambda: remove_perm(codename, caller, a)):
        if method == "patch":
            response = client.patch(reverse("token-detail", args=["row-a"]), {"description": "x"}, format="json")
        else:
            response = client.delete(reverse("token-detail", args=["row-a"]))
    assert response.status_code == 403
    assert Token.objects.get(pk=a.pk).description == a.description
    assert not Event.objects.exists()


def test_the_owner_needs_no_permission_to_update_or_delete(make_user, make_token):
    owner = make_user()
    token = make_token(owner, identifier="mine")
    client = client_for(owner, make_token)
    assert client.patch(reverse("token-detail", args=["mine"]), {"description": "x"}, format="json").status_code == 200
    assert client.delete(reverse("token-detail", args=["mine"])).status_code == 204
    assert not Token.objects.filter(pk=token.pk).exists()


@pytest.mark.parametrize("caller_kind", ["staff-object-permission", "superuser"])
def test_admin_set_key_page_writes_only_its_own_token(caller_kind, client, two_tokens, make_user):
    a, b = two_tokens
    user = make_user(superuser=caller_kind == "superuser")
    if caller_kind != "superuser":
        User.objects.filter(pk=user.pk).update(is_staff=True)
        assign_perm(SET_KEY, user, a)
        assign_perm("authentik_core.view_token", user)
    client.force_login(user)
    url = reverse("admin:authentik_core_token_set_key", args=[a.pk])
    with before("core.admin.token_set_key", lambda: rename_swap(a, b)):
        response = client.post(url, {"key": generate_key()})
    # The page names A by pk; the identifier it read now names B, so the service finds no such row:
    # 403 for the object-permission holder, "no longer exists" for the superuser; B is never written.
    assert response.status_code == (403 if caller_kind != "superuser" else 200)
    assert_key_unchanged(a)
    assert_key_unchanged(b)
    assert not Event.objects.filter(action="model_updated").exists()


@pytest.mark.parametrize("caller_kind", ["none", "object-permission-elsewhere"])
def test_unknown_identifiers_are_403_for_callers_without_the_global_permission(caller_kind, make_user, make_token):
    caller = make_user()
    if caller_kind != "none":
        assign_perm(SET_KEY, caller, make_token(make_user()))
        assign_perm(VIEW_KEY, caller, make_token(make_user()))
    client = client_for(caller, make_token)
    assert client.post(reverse("token-set-key", args=["nope"]), {"key": "k"}, format="json").status_code == 403
    assert client.get(reverse("token-view-key", args=["nope"])).status_code == 403


def test_unknown_identifiers_are_404_for_holders_of_the_global_permission(make_user, make_token):
    client = client_for(make_user(perms=(SET_KEY, VIEW_KEY)), make_token)
    assert client.post(reverse("token-set-key", args=["nope"]), {"key": "k"}, format="json").status_code == 404
    assert client.get(reverse("token-view-key", args=["nope"])).status_code == 404


# --- live: a real server, a request whose body arrives after the rename --------------------------------


def wait_until_idle_after(query_fragment: str, timeout: float = 2.0) -> None:
    """Wait until a server connection has run a query containing ``query_fragment`` and is idle again
    (the request's up-front permission check is done and it waits for its body). Not an assertion: if it
    is not seen, the test goes on and still requires the same outcome. The server reads whole bodies
    before Django runs (``tokens_service.wsgi_hardening``), so the query is usually not seen; the short
    wait stays well under ``REQUEST_BODY_TIMEOUT`` so the held-back body still arrives in time."""
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND state = 'idle' AND query LIKE %s",
                [f"%{query_fragment}%"],
            )
            if cursor.fetchone()[0]:
                return
            time.sleep(0.05)


def held_back_request(
    live: Any, method: str, path: str, bearer_key: str, body: dict[str, Any]
) -> tuple[socket.socket, bytes]:
    """Send a request's headers and the first half of its JSON body; return the open socket and the rest."""
    payload = json.dumps(body).encode()
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {bearer_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode()
    sock = socket.create_connection((live.host, live.port), timeout=30)
    sock.sendall(head + payload[: len(payload) // 2])
    return sock, payload[len(payload) // 2 :]


def finish(sock: socket.socket, rest: bytes) -> Any:
    with sock:
        sock.sendall(rest)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return parse_raw_response(b"".join(chunks))


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_live_set_key_with_a_held_back_body_after_a_rename(live, two_tokens, make_user, make_token):
    a, b = two_tokens
    caller = make_user()
    assign_perm(SET_KEY, caller, a)
    bearer_key = make_token(caller).key
    sock, rest = held_back_request(
        live, "POST", "/api/v3/core/tokens/row-a/set_key/", bearer_key, {"key": generate_key()}
    )
    wait_until_idle_after("guardian_userobjectpermission")
    rename_swap(a, b)
    response = finish(sock, rest)
    assert response.status == 403
    assert_key_unchanged(a)
    assert_key_unchanged(b)
    assert not Event.objects.filter(action="model_updated").exists()


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_live_update_with_a_held_back_body_writes_only_the_row_it_authorized(live, two_tokens, make_user, make_token):
    a, b = two_tokens
    caller = make_user()
    assign_perm("authentik_core.change_token", caller, a)
    bearer_key = make_token(caller).key
    sock, rest = held_back_request(live, "PATCH", "/api/v3/core/tokens/row-a/", bearer_key, {"description": "edited"})
    wait_until_idle_after("guardian_userobjectpermission")
    rename_swap(a, b)
    response = finish(sock, rest)
    # B, which now answers to "row-a", is never written. Either the row was loaded and authorized before
    # the body arrived (A, now "row-a-moved", is written), or, as the server reads whole bodies before
    # Django runs (tokens_service.wsgi_hardening), the request is resolved after the rename: "row-a" is B,
    # invisible to this caller, so 404 and nothing is written.
    assert response.status in (200, 404)
    assert Token.objects.get(pk=b.pk).description == b.description
    events = list(Event.objects.filter(action="model_updated"))
    if response.status == 200:
        assert Token.objects.get(pk=a.pk).description == "edited"
        assert [event.context["model"]["pk"] for event in events] == [a.pk.hex]
    else:
        assert Token.objects.get(pk=a.pk).description == a.description
        assert events == []


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_live_view_key_racing_renames_never_returns_the_other_key(live, two_tokens, make_user, make_token):
    """Threads swap the two identifiers back and forth while the caller, permitted on A only, asks for
    ``row-a``'s key: every answer is A's key or 403."""
    a, b = two_tokens
    caller = make_user()
    assign_perm(VIEW_KEY, caller, a)
    bearer_key = make_token(caller).key
    stop = threading.Event()

    def swapper() -> None:
        try:
            while not stop.is_set():
                for first, second in ((a, b), (b, a)):
                    with transaction.atomic():
                        Token.objects.filter(pk=first.pk).update(identifier="row-tmp")
                        Token.objects.filter(pk=second.pk).update(identifier="row-a")
                        Token.objects.filter(pk=first.pk).update(identifier="row-b")
        finally:
            connection.close()

    thread = threading.Thread(target=swapper)
    thread.start()
    statuses = []
    try:
        for _ in range(60):
            response = live.raw(
                f"GET /api/v3/core/tokens/row-a/view_key/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {bearer_key}\r\nConnection: close\r\n\r\n".encode()
            )
            statuses.append(response.status)
            if response.status == 200:
                assert response.json() == {"key": a.key}
            else:
                assert response.status == 403
                assert b.key not in response.body.decode()
    finally:
        stop.set()
        thread.join(timeout=30)
    # Every secret_view event names A.
    assert {event.context["secret"]["pk"] for event in Event.objects.filter(action="secret_view")} <= {a.pk.hex}
