"""Which statements PostgreSQL keeps prepared (tokens_service.db).

A prepared statement that has run ten times may get a generic plan, made for an average parameter value. The
fast path's lookups by unique key want that; a filter on a value of very uneven frequency does not (at
5,000,000 events a filter matching nothing took 830 ms with the generic plan, 3 ms without). These tests read
``pg_prepared_statements`` of the test's own connection after repeated requests.
"""

from datetime import timedelta

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from core.models import generate_key
from events.models import Event, EventAction
from tests.helpers import requires_postgres
from tokens_service import db as plans

pytestmark = requires_postgres

REPEAT = 12  # past psycopg's prepare_threshold (5) and PostgreSQL's five custom plans


def prepared_statements() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements WHERE NOT from_sql")
        return [row[0] for row in cursor.fetchall()]


def request_list_repeatedly(client, name: str, query: dict[str, str]) -> None:
    """``REPEAT`` times the same page of the event list (one event in it) or the token list."""
    Event.objects.create(action=EventAction.MODEL_UPDATED, app="authentik_core", context={}, expires=timezone.now())
    url = reverse("event-list") if name == "events" else reverse("token-list")
    for _ in range(REPEAT):
        assert client.get(url, query).status_code == 200


@pytest.fixture
def fresh_session(db: None) -> None:
    """Start from a connection that holds no prepared statement (psycopg forgets its own cache too)."""
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")
    connection.connection._prepared.clear()


@pytest.mark.usefixtures("fresh_session")
def test_set_key_and_the_bearer_lookup_are_prepared(admin_token, make_token, bearer):
    target = make_token(admin_token.user)
    client = bearer(admin_token)
    url = reverse("token-set-key", kwargs={"identifier": target.identifier})

    for _ in range(REPEAT):
        assert client.post(url, {"key": generate_key()}, format="json").status_code == 204

    statements = prepared_statements()
    assert any("FOR UPDATE" in sql and "INSERT INTO" in sql for sql in statements), statements
    assert any("key_digest IN" in sql and "previous_key_digest IN" in sql for sql in statements), statements


@pytest.mark.usefixtures("fresh_session")
@pytest.mark.parametrize(
    ("name", "query", "marker"),
    [
        ("events", {"context_model_name": "application"}, "'{model,model_name}'"),
        ("events", {"action": "model_updated"}, '"action" IN'),
        ("events", {"search": "login"}, "LIKE"),
        ("events", {"username": "nobody"}, "'{username}'"),
        ("tokens", {"description": "backup job"}, '"description" ='),
        ("tokens", {"search": "tok"}, "LIKE"),
        ("tokens", {"intent": "app_password", "page": "1"}, '"intent" ='),
    ],
)
def test_statements_of_a_filtered_list_are_never_prepared(name, query, marker, admin_token, bearer):
    request_list_repeatedly(bearer(admin_token), name, query)

    statements = prepared_statements()
    assert statements, "the bearer lookup at least is prepared"
    assert not [sql for sql in statements if marker in sql]


@pytest.mark.usefixtures("fresh_session")
@pytest.mark.parametrize(("name", "query"), [("events", {}), ("tokens", {"page": "1", "ordering": "-expires"})])
def test_statements_of_an_unfiltered_list_page_are_prepared(name, query, admin_token, bearer):
    request_list_repeatedly(bearer(admin_token), name, query)
    table = "authentik_events_event" if name == "events" else "authentik_core_token"

    assert [sql for sql in prepared_statements() if f'FROM "{table}"' in sql and "LIMIT" in sql]


@pytest.mark.usefixtures("fresh_session")
def test_statements_outside_the_allowed_paths_are_not_prepared(admin_token, make_token, bearer):
    target = make_token(admin_token.user, expires=timezone.now() + timedelta(days=1))
    client = bearer(admin_token)
    url = reverse("token-detail", kwargs={"identifier": target.identifier})

    for _ in range(REPEAT):
        assert client.get(url).status_code == 200
    for _ in range(REPEAT):
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM authentik_core_token WHERE description = %s", ["x"])

    statements = prepared_statements()
    assert not [sql for sql in statements if "description =" in sql]
    assert not [sql for sql in statements if '"identifier" = $1' in sql]


def test_prepared_plans_is_scoped_to_its_block():
    seen = []

    def fail_inside() -> None:
        with plans.prepared_plans():
            seen.append(plans._may_prepare.get())
            raise RuntimeError

    assert not plans._may_prepare.get()
    with pytest.raises(RuntimeError):
        fail_inside()
    assert seen == [True]
    assert not plans._may_prepare.get()
    with plans.prepared_plans(allowed=False):
        assert not plans._may_prepare.get()


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, True),
        ({"page": "2", "page_size": "50", "ordering": "-created"}, True),
        ({"page": "2", "search": "x"}, False),
        ({"format": "json"}, False),
        ({"identifier": "a"}, False),
    ],
)
def test_only_page_and_order_count_as_unfiltered(params, expected):
    assert plans.filters_nothing(params) is expected
