"""What keeps the lists fast at millions of rows: bounded counts and pages, the volume rollup, query shapes."""

import io
import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection, reset_queries
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from guardian.shortcuts import assign_perm

from core.models import Token
from core.selectors import tokens_visible_to
from events.models import Event, EventAction, EventVolume
from events.selectors import event_volume
from tests.helpers import migrate_to_latest
from tokens_service import pagination

VIEW_EVENT = "authentik_events.view_event"


@pytest.fixture
def reader(make_user, make_token, bearer):
    return bearer(make_token(make_user(perms=(VIEW_EVENT,)), identifier="reader"))


def make_events(count: int, *, action: str = EventAction.LOGIN, created=None, **fields) -> None:
    fields.setdefault("user", {"pk": 1, "username": "root"})
    Event.objects.bulk_create(
        [Event(action=action, app="test", created=created or timezone.now(), **fields) for _ in range(count)]
    )


# --- bounded counts and pages ------------------------------------------------------------------------


def test_count_is_exact_up_to_the_limit(reader, monkeypatch):
    monkeypatch.setattr(pagination, "EXACT_COUNT_LIMIT", 5)
    make_events(5)
    body = reader.get(reverse("event-list")).json()
    assert body["pagination"]["count"] == 5


def test_count_beyond_the_limit_is_at_least_what_was_counted(reader, monkeypatch):
    monkeypatch.setattr(pagination, "EXACT_COUNT_LIMIT", 5)
    make_events(12)
    body = reader.get(reverse("event-list"), {"page_size": 3}).json()
    # PostgreSQL: the planner's estimate (never below the rows counted); SQLite: counted up to the page bound.
    assert body["pagination"]["count"] >= 6
    if connection.vendor != "postgresql":
        assert body["pagination"]["count"] == 12


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's planner estimate")
def test_the_estimate_is_that_of_every_match_from_the_plan_of_one(reader, monkeypatch):
    # The plan of one row stays under jit_above_cost; its input's estimate is the plan of every match's.
    monkeypatch.setattr(pagination, "EXACT_COUNT_LIMIT", 5)
    make_events(12)
    events = Event.objects.filter(action=EventAction.LOGIN)
    with CaptureQueriesContext(connection) as queries:
        estimate = pagination._estimated_rows(events)
    [explain] = [query["sql"] for query in queries.captured_queries]
    assert explain.startswith("EXPLAIN")
    assert explain.endswith("LIMIT 1")
    full = json.loads(events.explain(format="json"))[0]["Plan"]["Plan Rows"]
    assert estimate == full


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a PostgreSQL setting")
def test_connections_plan_without_parallel_workers(db):
    with connection.cursor() as cursor:
        cursor.execute("SHOW max_parallel_workers_per_gather")
        assert cursor.fetchone()[0] == "0"


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's planner statistics")
def test_searched_expressions_keep_fine_statistics(db):
    # Without them a rare search term is estimated at 1% of the tokens and the planner walks the identifier
    # index through most of the table (migration authentik_core.0008).
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, a.attstattarget FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
            " WHERE c.relname IN ('token_identifier_trgm_idx', 'token_description_trgm_idx', 'user_username_trgm_idx')"
        )
        indexes = dict(cursor.fetchall())
        cursor.execute("SELECT stxname, stxstattarget FROM pg_statistic_ext WHERE stxname LIKE 'token_%_upper_stats'")
        statistics = dict(cursor.fetchall())
    assert indexes == dict.fromkeys(
        ["token_identifier_trgm_idx", "token_description_trgm_idx", "user_username_trgm_idx"], 10_000
    )
    assert statistics == dict.fromkeys(["token_identifier_upper_stats", "token_description_upper_stats"], 10_000)


def test_pages_end_at_the_row_bound(reader, monkeypatch):
    monkeypatch.setattr(pagination, "MAX_PAGINATED_ROWS", 7)
    make_events(12)
    first = reader.get(reverse("event-list"), {"page_size": 3}).json()["pagination"]
    assert first["total_pages"] == 3  # pages starting at rows 1, 4 and 7
    last = reader.get(reverse("event-list"), {"page_size": 3, "page": 3}).json()
    assert last["pagination"]["next"] == 0
    assert len(last["results"]) == 3
    beyond = reader.get(reverse("event-list"), {"page_size": 3, "page": 4})
    assert beyond.status_code == 404
    assert beyond.json()["code"] == "not_found"


def test_the_page_parameter_documents_the_bound():
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    for path in ("/core/tokens/", "/events/events/"):
        page = next(p for p in schema["paths"][path]["get"]["parameters"] if p["name"] == "page")
        assert f"first {pagination.MAX_PAGINATED_ROWS} rows" in page["description"]
        assert f"exact up to {pagination.EXACT_COUNT_LIMIT}" in page["description"]


# --- query shapes ------------------------------------------------------------------------------------


def test_actions_filter_is_one_in_without_distinct(reader):
    make_events(2, action=EventAction.LOGIN)
    make_events(1, action=EventAction.LOGOUT)
    with CaptureQueriesContext(connection) as queries:
        response = reader.get(reverse("event-list"), {"actions": ["login", "logout"]})
    assert response.json()["pagination"]["count"] == 3
    assert not [q for q in queries.captured_queries if "DISTINCT" in q["sql"].upper()]


def test_action_substring_also_finds_custom_actions(reader):
    make_events(1, action="custom_rotation_report")
    make_events(1, action=EventAction.SECRET_ROTATE)
    make_events(1, action=EventAction.LOGIN)
    rows = reader.get(reverse("event-list"), {"action": "ROTAT"}).json()["results"]
    assert sorted(row["action"] for row in rows) == ["custom_rotation_report", "secret_rotate"]


def test_descending_order_breaks_ties_descending(reader):
    now = timezone.now()
    make_events(4, created=now)
    with CaptureQueriesContext(connection) as queries:
        rows = reader.get(reverse("event-list"), {"ordering": "-created", "page_size": 2}).json()["results"]
    page_sql = queries.captured_queries[-1]["sql"]
    assert page_sql.rstrip().split("ORDER BY", 1)[1].count("DESC") == 2
    assert [row["pk"] for row in rows] == sorted((row["pk"] for row in rows), reverse=True)


def test_visibility_is_one_subquery_of_owned_and_permitted_tokens(make_user, make_group, make_token):
    caller = make_user()
    own = make_token(caller, identifier="own")
    shared = make_token(make_user(), identifier="shared")
    group_shared = make_token(make_user(), identifier="group-shared")
    make_token(make_user(), identifier="hidden")
    assign_perm("authentik_core.change_token", caller, shared)
    group = make_group()
    caller.groups.add(group)
    assign_perm("authentik_core.view_token_key", group, group_shared)
    visible = tokens_visible_to(caller)
    assert sorted(visible.values_list("identifier", flat=True)) == ["group-shared", "own", "shared"]
    assert str(visible.query).count(Token._meta.db_table) >= 2  # the page query and its subquery
    assert own in visible


# --- volume rollup -----------------------------------------------------------------------------------


def test_volume_rolls_past_days_up_and_reads_them_back(reader, django_assert_max_num_queries):
    now = timezone.now()
    make_events(3, created=now - timedelta(days=3))
    make_events(2, action=EventAction.LOGOUT, created=now - timedelta(days=2))
    make_events(1, created=now)
    first = reader.get(reverse("event-volume")).json()
    assert sum(row["count"] for row in first) == 6
    assert EventVolume.objects.exclude(action="").count() == 2
    assert EventVolume.objects.filter(action="").count() >= 6  # every settled day is marked counted
    # A second request counts nothing again: the marks, the rollup rows, and two index ranges of events.
    with django_assert_max_num_queries(6):
        second = reader.get(reverse("event-volume")).json()
    assert second == first


def test_volume_with_an_action_filter_uses_the_rollup_rows_of_that_action(reader):
    now = timezone.now()
    make_events(3, created=now - timedelta(days=3))
    make_events(2, action=EventAction.LOGOUT, created=now - timedelta(days=3))
    reader.get(reverse("event-volume"))  # fills the rollup
    rows = reader.get(reverse("event-volume"), {"action": "OUT"}).json()
    assert [(row["action"], row["count"]) for row in rows] == [("logout", 2)]
    rows = reader.get(reverse("event-volume"), {"actions": ["login"]}).json()
    assert [(row["action"], row["count"]) for row in rows] == [("login", 3)]


def test_volume_with_other_filters_counts_the_events(reader):
    now = timezone.now()
    make_events(3, created=now - timedelta(days=3), user={"username": "alice"})
    make_events(2, created=now - timedelta(days=3), user={"username": "bob"})
    reader.get(reverse("event-volume"))  # fills the rollup with 5 logins that day
    rows = reader.get(reverse("event-volume"), {"username": "alice"}).json()
    assert [row["count"] for row in rows] == [3]


def test_volume_matches_a_plain_group_by_whatever_the_window(db):
    now = timezone.now()
    for days in (0, 1, 5, 9, 30):
        make_events(days + 1, created=now - timedelta(days=days, hours=1))
    for history_days in (1, 2, 7, 10, 31):
        rolled = event_volume(Event.objects.all(), history_days=history_days, now=now, action_filter=lambda a: True)
        live = event_volume(Event.objects.all(), history_days=history_days, now=now)
        assert rolled == live


def test_prune_forgets_the_rolled_up_days_it_deleted_events_from(reader):
    now = timezone.now()
    day = now - timedelta(days=3)
    make_events(2, created=day)
    Event.objects.create(action=EventAction.LOGIN, app="test", created=day, expires=now - timedelta(seconds=1))
    assert sum(row["count"] for row in reader.get(reverse("event-volume")).json()) == 3
    call_command("prune_expired", stdout=io.StringIO())
    assert sum(row["count"] for row in reader.get(reverse("event-volume")).json()) == 2


@pytest.mark.parametrize("max_owner_ids", [0, 1000])
def test_token_search_matches_identifier_description_intent_and_owner(
    max_owner_ids, make_user, make_token, bearer, monkeypatch
):
    from core.filters import TokenSearchFilter

    monkeypatch.setattr(TokenSearchFilter, "max_owner_ids", max_owner_ids)  # 0: the join path
    admin = make_user(superuser=True)
    client = bearer(make_token(admin, identifier="zz-admin"))
    make_token(make_user(username="Carol"), identifier="c-1")
    make_token(make_user(), identifier="Deploy-Key")
    make_token(make_user(), identifier="d-2", description="nightly BACKUP")
    make_token(make_user(), identifier="d-3", intent="app_password")

    def found(term):
        rows = client.get(reverse("token-list"), {"search": term}).json()["results"]
        return sorted(row["identifier"] for row in rows)

    assert found("arol") == ["c-1"]
    assert found("deploy") == ["Deploy-Key"]
    assert found("backup") == ["d-2"]
    assert found("PASSWORD") == ["d-3"]
    assert found("nightly backup") == ["d-2"]
    assert found("nothing-like-it") == []


def test_volume_from_the_rollup_is_the_serializers_output_of_a_plain_group_by(reader):
    # The rollup's days are read as dates and their rows without the queryset's converters; the response
    # must still be, byte for byte, EventVolumeSerializer over every event counted with a GROUP BY.
    from rest_framework.renderers import JSONRenderer

    from events.api import EventVolumeSerializer

    now = timezone.now()
    for days, action, count in [
        (1, EventAction.LOGIN, 2),
        (1, EventAction.LOGIN_FAILED, 1),
        (1, "custom_Report", 1),
        (3, EventAction.MODEL_UPDATED, 3),
        (3, EventAction.MODEL_CREATED, 1),
        (20, EventAction.SECRET_VIEW, 2),
        (35, EventAction.LOGOUT, 1),
    ]:
        make_events(count, action=action, created=now - timedelta(days=days, hours=2))
    make_events(2, created=now)  # today, counted from the events
    reader.get(reverse("event-volume"), {"history_days": 40})  # fills the rollup
    for params, action_filter in [
        ({"history_days": 40}, {}),
        ({"history_days": 21}, {}),
        ({"history_days": 40, "action": "LOGIN"}, {"action__icontains": "login"}),
        ({"history_days": 40, "actions": ["model_updated", "logout"]}, {"action__in": ["model_updated", "logout"]}),
    ]:
        response = reader.get(reverse("event-volume"), params)
        live = event_volume(Event.objects.filter(**action_filter), history_days=params["history_days"], now=now)
        assert response.content == JSONRenderer().render(EventVolumeSerializer(live, many=True).data)
    assert len(response.json()) == 2


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a PostgreSQL array literal")
def test_owner_ids_are_one_array_literal_with_the_rows_of_an_in_list(make_user, make_token, bearer):
    from core.filters import AmongIntegers

    owners = [make_user(username=f"carol-{n}") for n in range(3)]
    for n, owner in enumerate(owners):
        make_token(owner, identifier=f"c-{n}")
    make_token(make_user(username="dave"), identifier="d-1")
    client = bearer(make_token(make_user(superuser=True), identifier="zz-admin"))
    ids = [owner.pk for owner in owners]
    for among in ([], ids[:1], ids, [*ids, 10**12]):
        expected = sorted(Token.objects.filter(user_id__in=among).values_list("pk", flat=True))
        assert sorted(Token.objects.filter(AmongIntegers("user_id", among)).values_list("pk", flat=True)) == expected
    with CaptureQueriesContext(connection) as queries:
        rows = client.get(reverse("token-list"), {"search": "carol"}).json()["results"]
    assert [row["identifier"] for row in rows] == ["c-0", "c-1", "c-2"]
    literal = "{" + ",".join(str(pk) for pk in sorted(ids)) + "}"
    searched = [q["sql"] for q in queries.captured_queries if "LIKE" in q["sql"] and "authentik_core_token" in q["sql"]]
    assert searched
    assert all(f"= ANY('{literal}'::bigint[])" in sql for sql in searched)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a PostgreSQL-only index")
@pytest.mark.django_db(transaction=True)
def test_the_page_keys_index_migration_is_reversible():
    from django.db.migrations.executor import MigrationExecutor

    def index() -> str | None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'token_pk_order_idx'")
            row = cursor.fetchone()
        return row[0] if row else None

    def migrate(target: str) -> None:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate([("authentik_core", target)])

    assert index().endswith("(token_uuid) INCLUDE (identifier, expires)")
    try:
        migrate("0008_search_statistics")
        assert index() is None
    finally:
        migrate_to_latest()
    assert index().endswith("(token_uuid) INCLUDE (identifier, expires)")


def token_indexes() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'authentik_core_token'")
        return {name for (name,) in cursor.fetchall()}


REDUNDANT = {
    "token_expires_idx",
    "authentik_core_token_key_digest_65908419_like",
    "authentik_core_token_managed_20a845a1_like",
}


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's pattern-ops twins")
@pytest.mark.django_db(transaction=True)
def test_redundant_token_indexes_are_dropped_reversibly():
    from django.db.migrations.executor import MigrationExecutor

    assert not token_indexes() & REDUNDANT
    # What serves in their place: the unique indexes and (expires, token_uuid).
    assert {"authentik_core_token_key_digest_key", "authentik_core_token_managed_key", "token_expires_pk_idx"} <= (
        token_indexes()
    )
    try:
        MigrationExecutor(connection).migrate([("authentik_core", "0009_token_page_keys_index")])
        assert token_indexes() >= REDUNDANT  # the names are Django's own: going back restores them exactly
    finally:
        migrate_to_latest()
    assert not token_indexes() & REDUNDANT


def last_used_indexes() -> dict[str, list[str]]:
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, "authentik_core_token")
    return {name: spec["columns"] for name, spec in constraints.items() if name.startswith("token_last_used")}


@pytest.mark.django_db(transaction=True)
def test_the_last_used_index_ends_in_the_pk_and_its_migration_is_reversible():
    from django.db.migrations.executor import MigrationExecutor

    assert last_used_indexes() == {"token_last_used_pk_idx": ["last_used", "token_uuid"]}
    try:
        MigrationExecutor(connection).migrate([("authentik_core", "0010_drop_redundant_token_indexes")])
        assert last_used_indexes() == {"token_last_used_idx": ["last_used"]}
    finally:
        migrate_to_latest()
    assert last_used_indexes() == {"token_last_used_pk_idx": ["last_used", "token_uuid"]}


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL plans")
@pytest.mark.parametrize("ordering", ["last_used", "-last_used"])
def test_a_page_ordered_by_last_use_is_an_index_range_without_a_sort(ordering, admin_token, make_token, bearer):
    """Never-used tokens (NULL) sort first in descending order: with an index on ``last_used`` alone, the
    first page of ``-last_used`` sorted every one of them by pk."""
    now = timezone.now()
    used = [make_token(admin_token.user, identifier=f"lu-{n}") for n in range(2)]
    never = [make_token(admin_token.user, identifier=f"lu-never-{n}", last_used=None) for n in range(3)]
    never.sort(key=lambda token: token.pk)
    for days, token in zip((2, 1), used, strict=True):
        Token.objects.filter(pk=token.pk).update(last_used=now - timedelta(days=days))
    # The list orders by last_used, then by the pk in the same direction (core.filters.StableOrderingFilter).
    expected = [*used, *never] if ordering == "last_used" else [*reversed(never), *reversed(used)]
    rows = bearer(admin_token).get(reverse("token-list"), {"ordering": ordering, "search": "lu-"}).json()["results"]
    assert [row["identifier"] for row in rows] == [token.identifier for token in expected]
    # A page of a large result is that ordering read from the index (few rows here, so seqscan is off).
    sql, params = Token.objects.order_by(ordering, ordering.replace("last_used", "pk"))[:20].query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + sql, params)
        plan = " ".join(row[0] for row in cursor.fetchall())
    assert "token_last_used_pk_idx" in plan
    assert "Sort" not in plan


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL plans")
def test_the_bearer_lookup_and_the_expiry_range_use_the_remaining_indexes(db):
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN SELECT 1 FROM authentik_core_token WHERE key_digest IN ('hmac$a', 'hmac$b')")
        digest_plan = " ".join(row[0] for row in cursor.fetchall())
        cursor.execute("EXPLAIN SELECT token_uuid FROM authentik_core_token WHERE expires < now() ORDER BY expires")
        expiry_plan = " ".join(row[0] for row in cursor.fetchall())
    assert "authentik_core_token_key_digest_key" in digest_plan
    assert "token_expires_pk_idx" in expiry_plan


@pytest.mark.parametrize("limit", [2, 5, 6, 1000])
@pytest.mark.parametrize(
    "params",
    [
        {"search": "login"},
        {"search": "LOGIN_F"},
        {"search": "log"},
        {"search": "login", "page": 2, "page_size": 2, "ordering": "action"},
        {"search": "login", "username": "alice"},
        {"search": "login alice"},
        {"search": "10.0"},
    ],
)
def test_counting_the_searched_actions_first_answers_as_counting_the_search(reader, monkeypatch, params, limit):
    """A search whose terms start known actions: the events of those actions are counted first
    (``BoundedPaginator.part``); the envelope is the same, byte for byte, as counting the search itself."""
    from events.api import EventViewSet

    monkeypatch.setattr(pagination, "EXACT_COUNT_LIMIT", limit)
    now = timezone.now()
    make_events(3, created=now - timedelta(minutes=1), user={"username": "alice"}, client_ip="10.0.0.1")
    make_events(2, action=EventAction.LOGIN_FAILED, created=now - timedelta(minutes=2), user={"username": "bob"})
    make_events(2, action=EventAction.LOGOUT, created=now - timedelta(minutes=3), user={"username": "login-bot"})
    reset_queries()  # each request clears the log (request_started): capture from an empty one
    with CaptureQueriesContext(connection) as queries:
        with_part = reader.get(reverse("event-list"), params)
    # (Read before the next request clears the log.)
    statements = [query["sql"].upper() for query in queries.captured_queries]
    monkeypatch.setattr(EventViewSet, "_searched_actions_events", lambda self, request: None)
    without = reader.get(reverse("event-list"), params)
    assert with_part.status_code == without.status_code == 200
    assert with_part.content == without.content
    counted_actions = [sql for sql in statements if "COUNT(" in sql and "LIKE" not in sql]
    only_actions = params["search"].lower() in ("login", "login_f", "log") and "username" not in params
    assert bool(counted_actions) == only_actions


def test_the_scale_benchmark_sends_every_filter_search_and_ordering():
    """bench/scale.py is the evidence for the latency budget: it must send each filter and ordering of both
    lists (the last_used orderings and filters were missing, and -last_used took 73 ms)."""
    from urllib.parse import parse_qs, urlsplit

    from bench import scale
    from core.api import TokenViewSet
    from events.api import EventViewSet

    for viewset, prefix in ((TokenViewSet, scale.T), (EventViewSet, scale.E)):
        queries = [parse_qs(urlsplit(path).query) for _, _, path in scale.REQUESTS if urlsplit(path).path == prefix]
        sent = {name for query in queries for name in query}
        assert set(viewset.filterset_class.base_filters) | {"search", "page", "page_size", "ordering"} <= sent
        orderings = {value.lstrip("-") for query in queries for value in query.get("ordering", [])}
        assert set(viewset.ordering_fields) <= orderings
