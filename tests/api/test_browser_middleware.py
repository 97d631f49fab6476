"""Browser-only middleware (Django's request user, messages, static files) is skipped for API
requests authenticated by their ``Authorization`` header alone, and for nothing else."""

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware
from django.http import HttpResponse
from django.test import Client, RequestFactory
from django.urls import reverse
from rest_framework.test import APIClient

from core.models import generate_key
from events.models import Event
from tokens_service.middleware import is_bearer_api_request

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("path", "headers", "bearer_api"),
    [
        ("/core/tokens/", {"HTTP_AUTHORIZATION": "Bearer k"}, True),
        ("/core/tokens/x/set_key/", {"HTTP_AUTHORIZATION": "Bearer k"}, True),
        ("/api/v3/core/tokens/x/view_key/", {"HTTP_AUTHORIZATION": "Bearer k"}, True),
        ("/events/events/", {"HTTP_AUTHORIZATION": "anything at all"}, True),
        ("/api/v3/events/events/volume/", {"HTTP_AUTHORIZATION": "Bearer k"}, True),
        # A cookie may carry a session: the full chain.
        ("/core/tokens/", {"HTTP_AUTHORIZATION": "Bearer k", "HTTP_COOKIE": "sessionid=abc"}, False),
        ("/core/tokens/", {"HTTP_AUTHORIZATION": "Bearer k", "HTTP_COOKIE": "a=1"}, False),
        # An empty Cookie header carries no cookie.
        ("/core/tokens/", {"HTTP_AUTHORIZATION": "Bearer k", "HTTP_COOKIE": ""}, True),
        # No Authorization header: DRF falls back to the session authenticator.
        ("/core/tokens/", {}, False),
        # Not the API.
        ("/admin/", {"HTTP_AUTHORIZATION": "Bearer k"}, False),
        ("/admin/core/tokens/", {"HTTP_AUTHORIZATION": "Bearer k"}, False),
        ("/api/v3/schema/", {"HTTP_AUTHORIZATION": "Bearer k"}, False),
        ("/static/admin/css/base.css", {"HTTP_AUTHORIZATION": "Bearer k"}, False),
        ("/-/health/live/", {"HTTP_AUTHORIZATION": "Bearer k"}, False),
        ("/xcore/tokens/", {"HTTP_AUTHORIZATION": "Bearer k"}, False),
    ],
)
def test_which_requests_skip_the_browser_middleware(path, headers, bearer_api):
    assert is_bearer_api_request(RequestFactory().get(path, **headers)) is bearer_api


@pytest.fixture
def browser_calls(monkeypatch) -> dict[str, int]:
    """How often each browser middleware ran its own code."""
    calls = {"user": 0, "messages": 0}

    def counting(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: Any, request: Any, *args: Any) -> Any:
            calls[name] += 1
            return original(self, request, *args)

        return wrapper

    monkeypatch.setattr(
        AuthenticationMiddleware, "process_request", counting("user", AuthenticationMiddleware.process_request)
    )
    monkeypatch.setattr(MessageMiddleware, "process_request", counting("messages", MessageMiddleware.process_request))
    return calls


def test_a_bearer_call_skips_them_and_changes_the_key(bearer, admin_token, browser_calls):
    response = bearer(admin_token).post(
        reverse("token-set-key", kwargs={"identifier": admin_token.identifier}), {"key": generate_key()}, format="json"
    )
    assert response.status_code == 204
    assert browser_calls == {"user": 0, "messages": 0}
    assert Event.objects.filter(action="model_updated").count() == 1


def test_a_call_with_a_cookie_gets_them_all(bearer, admin_token, browser_calls):
    client = bearer(admin_token)
    client.cookies["unrelated"] = "1"
    assert client.get(reverse("token-list")).status_code == 200
    assert browser_calls == {"user": 1, "messages": 1}


def test_the_admin_gets_them_all(browser_calls):
    assert Client().get("/admin/login/", HTTP_AUTHORIZATION="Bearer k").status_code == 200
    assert browser_calls == {"user": 1, "messages": 1}


def test_a_session_still_authenticates_the_api(superuser):
    client = APIClient()
    client.force_login(superuser)  # a real session cookie, read by the session middleware
    response = client.get(reverse("token-list"))
    assert response.status_code == 200
    assert "Cookie" in response.headers.get("Vary", "")


@pytest.mark.parametrize("method", ["list", "set_key", "view_key", "bad_key", "wrong_bearer"])
def test_both_chains_answer_alike(bearer, admin_token, make_token, superuser, method):
    # The same bearer request through the short chain (no cookie) and the full one (a cookie nobody reads):
    # same status, same body, same headers but the request id.
    target = make_token(superuser, identifier="target")

    def send(client: APIClient) -> HttpResponse:
        if method == "wrong_bearer":
            client.credentials(HTTP_AUTHORIZATION="Bearer not-a-key")
        if method in ("list", "wrong_bearer"):
            return client.get(reverse("token-list"))
        url = reverse(f"token-{method.replace('bad_key', 'set-key').replace('_', '-')}", args=[target.identifier])
        if method == "view_key":
            return client.get(url)
        return client.post(url, {"key": "" if method == "bad_key" else generate_key()}, format="json")

    short = send(bearer(admin_token))
    full_client = bearer(admin_token)
    full_client.cookies["unrelated"] = "1"
    full = send(full_client)
    assert short.status_code == full.status_code
    if method not in ("view_key", "list"):  # their bodies name the (changing) key or last use
        assert short.content == full.content
    headers = {name: value for name, value in short.headers.items() if name != "X-Request-ID"}
    assert headers == {name: value for name, value in full.headers.items() if name != "X-Request-ID"}
    assert "Set-Cookie" not in short.headers
