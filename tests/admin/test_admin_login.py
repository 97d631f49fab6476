"""The admin login: login / login_failed events without the password, and limits on failed attempts per
client address and per username."""

import pytest
from django.test import Client, override_settings
from django.urls import reverse
from rest_framework.settings import api_settings

from events.models import Event

PASSWORD = "correct horse battery staple 42"
WRONG = "Tr0ub4dor&3-wrong-guess"
LOGIN_URL = reverse("admin:login")


def rates(address: str | None, username: str | None):
    return override_settings(
        REST_FRAMEWORK={
            **api_settings.user_settings,
            "DEFAULT_THROTTLE_RATES": {
                **api_settings.DEFAULT_THROTTLE_RATES,
                "admin_login_address": address,
                "admin_login_username": username,
            },
        }
    )


@pytest.fixture
def staff_user(make_user):
    user = make_user(username="operator")
    user.is_staff = True
    user.set_password(PASSWORD)
    user.save()
    return user


def login(client: Client, username: str, password: str, address: str = "203.0.113.5"):
    return client.post(LOGIN_URL, {"username": username, "password": password}, REMOTE_ADDR=address)


def all_event_text() -> str:
    return str(list(Event.objects.values()))


def test_successful_login_writes_a_login_event(client, staff_user):
    response = login(client, "operator", PASSWORD)
    assert response.status_code == 302
    (event,) = Event.objects.all()
    assert event.action == "login"
    assert event.user == {"pk": staff_user.pk, "username": "operator", "email": staff_user.email}
    assert event.client_ip == "203.0.113.5"
    assert event.context["http_request"]["path"] == LOGIN_URL
    assert PASSWORD not in all_event_text()


@pytest.mark.parametrize(
    ("username", "password"),
    [("operator", WRONG), ("nobody-here", WRONG), ("plain-user", PASSWORD)],
    ids=["wrong-password", "unknown-user", "not-staff"],
)
def test_failed_login_writes_login_failed_without_the_password(client, staff_user, make_user, username, password):
    plain = make_user(username="plain-user")
    plain.set_password(PASSWORD)
    plain.save()
    response = login(client, username, password)
    assert response.status_code == 200  # the form again, with its error
    (event,) = Event.objects.all()
    assert event.action == "login_failed"
    assert event.user["username"] == "AnonymousUser"
    assert event.context["username"] == username
    assert event.client_ip == "203.0.113.5"
    assert WRONG not in all_event_text()
    assert PASSWORD not in all_event_text()
    assert "_auth_user_id" not in client.session


def test_failures_over_the_username_limit_are_refused_even_with_the_right_password(client, staff_user):
    with rates(address=None, username="3/min"):
        for attempt in range(3):
            # From different addresses: only the username's counter can stop these.
            assert login(client, "operator", WRONG, address=f"198.51.100.{attempt}").status_code == 200
        response = login(client, "Operator", PASSWORD, address="198.51.100.99")  # case does not matter
        html = response.content.decode()
    assert response.status_code == 200
    assert "Too many failed login attempts" in html
    assert "_auth_user_id" not in client.session
    assert Event.objects.filter(action="login_failed").count() == 3
    assert not Event.objects.filter(action="login").exists()  # refused attempts write no event
    assert PASSWORD not in all_event_text()
    assert WRONG not in all_event_text()


def test_failures_over_the_address_limit_are_refused_for_every_username(client, staff_user):
    with rates(address="3/min", username=None):
        for attempt in range(3):
            assert login(client, f"guess{attempt}", WRONG).status_code == 200
        refused = login(client, "operator", PASSWORD)
        other_address = login(Client(), "operator", PASSWORD, address="192.0.2.77")
    assert "Too many failed login attempts" in refused.content.decode()
    assert "_auth_user_id" not in client.session
    assert other_address.status_code == 302  # another client is unaffected
    assert Event.objects.filter(action="login_failed").count() == 3
    assert Event.objects.filter(action="login").count() == 1


def test_default_limits_are_on(settings):
    assert api_settings.DEFAULT_THROTTLE_RATES["admin_login_address"] == "20/min"
    assert api_settings.DEFAULT_THROTTLE_RATES["admin_login_username"] == "5/min"
