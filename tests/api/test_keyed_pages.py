"""The token list finds a small result once (tokens_service.pagination.KeyedPaginator): the count fetches
the matching keys and the page is read by them, with the same rows, order and envelope as counting and
filtering twice (the plain ``Pagination``), and bounds and errors unchanged."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from guardian.models import GroupObjectPermission, UserObjectPermission
from guardian.shortcuts import assign_perm

from core.api import TokenViewSet
from core.models import Token, TokenIntents
from tokens_service import pagination

GUARDIAN_TABLES = (UserObjectPermission._meta.db_table, GroupObjectPermission._meta.db_table)


@pytest.fixture
def member(make_user, make_group, make_token, bearer):
    """A client for a caller without the global permission who sees 10 of 14 tokens: 4 own (one is the
    client's), 3 through its own object permissions, 3 through its group's; descriptions, expiry and owners
    vary, and some tie."""
    caller = make_user(username="member")
    group = make_group()
    caller.groups.add(group)
    others = [make_user(username=f"owner-{n}") for n in range(3)]
    soon = timezone.now() + timedelta(days=3)
    specs = [
        (caller, "own-b", "backup", soon),
        (caller, "own-a", "", None),
        (caller, "own-c", "deploy key", soon),
        (others[0], "shared-z", "backup", soon),
        (others[1], "shared-y", "backup", None),
        (others[2], "shared-x", "metrics", soon),
        (others[0], "group-q", "deploy key", None),
        (others[1], "group-r", "backup", soon),
        (others[2], "group-p", "", soon),
    ]
    tokens = [
        make_token(owner, identifier=identifier, description=description, expires=expires, expiring=bool(expires))
        for owner, identifier, description, expires in specs
    ]
    for token in tokens[3:6]:
        assign_perm("authentik_core.view_token", caller, token)
    for token in tokens[6:]:
        assign_perm("authentik_core.change_token", group, token)
    for n in range(4):
        make_token(others[n % 3], identifier=f"hidden-{n}", description="backup")
    return bearer(make_token(caller, identifier="member-key", intent=TokenIntents.API))


def listed(client, **params):
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse("token-list"), params)
    return response, [query["sql"] for query in queries.captured_queries]


def visibility_statements(statements):
    return [sql for sql in statements if any(table in sql for table in GUARDIAN_TABLES)]


QUERIES = [
    {},
    {"search": "backup"},
    {"search": "shared"},
    {"search": "OWN", "ordering": "-expires"},
    {"ordering": "user__username", "page_size": 2},
    {"ordering": "-description", "page_size": 2, "page": 3},
    {"ordering": "expiring", "page_size": 4, "page": 2},
    {"ordering": "-managed", "search": "backup", "page_size": 1, "page": 4},
    {"ordering": "last_used", "page_size": 3, "page": 4},
    {"search": "nothing-like-it"},
    {"intent": "api", "description": "backup"},
]


def page_statement(statements):
    """The statement that read the page's tokens (core.listing: the shown columns, ordered)."""
    return next(
        sql
        for sql in statements
        if '"authentik_core_token"."managed" AS' in sql and "ORDER BY" in sql and not sql.startswith("WITH")
    )


@pytest.mark.parametrize("params", QUERIES)
def test_pages_are_those_of_counting_and_filtering_twice(member, monkeypatch, params):
    keyed, keyed_sql = listed(member, **params)
    monkeypatch.setattr(TokenViewSet, "pagination_class", pagination.Pagination)
    plain, plain_sql = listed(member, **params)
    assert keyed.status_code == plain.status_code == 200
    assert keyed.content == plain.content  # the whole envelope, byte for byte
    assert len(keyed_sql) == len(plain_sql)
    # Counting and filtering twice ran the visibility rule twice; the keyed page ran it once (the count).
    # (An empty result has no page to read either way.)
    assert len(visibility_statements(keyed_sql)) == 1
    if keyed.json()["results"]:
        assert len(visibility_statements(plain_sql)) == 2
        assert not visibility_statements([page_statement(keyed_sql)])


def test_the_count_fetches_every_matching_key_and_the_page_reads_them(member):
    response, statements = listed(member, search="backup", page_size=2)
    body = response.json()
    assert body["pagination"]["count"] == 4
    assert [row["identifier"] for row in body["results"]] == ["group-r", "own-b"]
    count_sql = visibility_statements(statements)[0].upper()
    # PostgreSQL: the count and the keys in one row; SQLite: the keys (at most EXACT_COUNT_LIMIT + 1 rows).
    assert "ARRAY_AGG" in count_sql if connection.vendor == "postgresql" else "COUNT(" not in count_sql
    page_sql = page_statement(statements)
    assert "backup" not in page_sql.lower()  # neither the search nor the visibility: the keys
    second = member.get(reverse("token-list"), {"search": "backup", "page_size": 2, "page": 2}).json()
    assert [row["identifier"] for row in second["results"]] == ["shared-y", "shared-z"]


@pytest.mark.parametrize("bound", [10_000, 3])
@pytest.mark.parametrize("params", QUERIES)
def test_a_result_above_the_exact_count_is_the_same_page(member, monkeypatch, params, bound):
    """Above ``EXACT_COUNT_LIMIT`` no key comes with the count. On PostgreSQL the caller's matches (fewer
    than the pages' bound) are counted and paged in one statement, and the page is read by its keys; with
    more matches than the bound (3 here), or on SQLite, the page is read by the filters, and, in an order
    that core migration 0009's index holds (identifier, expires, pk), as ``pk IN (the page's keys)``.
    Either way the same envelope, byte for byte, as counting and filtering twice."""
    monkeypatch.setattr(pagination, "EXACT_COUNT_LIMIT", 1)
    monkeypatch.setattr(pagination, "MAX_PAGINATED_ROWS", bound)
    keyed, keyed_sql = listed(member, **params)
    monkeypatch.setattr(TokenViewSet, "pagination_class", pagination.Pagination)
    plain, _ = listed(member, **params)
    assert keyed.status_code == plain.status_code
    assert keyed.content == plain.content
    if keyed.status_code != 200 or not keyed.json()["results"] or keyed.json()["pagination"]["count"] <= 1:
        return
    page_sql = page_statement(keyed_sql)
    one_pass = [sql for sql in keyed_sql if sql.startswith("WITH")]
    if connection.vendor == "postgresql" and (bound > 3 or not visibility_statements([page_sql])):
        # The visibility rule ran once (plus the estimate's plan), and the page was read by its keys.
        assert [sql for sql in visibility_statements(keyed_sql) if not sql.startswith("EXPLAIN")] == one_pass
        assert not visibility_statements([page_sql])
        return
    keys_first = set(params.get("ordering", "identifier").lstrip("-").split(",")) <= {"identifier", "expires"}
    assert ("IN (SELECT" in page_sql and " LIMIT " in page_sql.split("IN (SELECT", 1)[1]) == keys_first
    assert visibility_statements([page_sql])  # the filters ran for the page (in the keys' subquery)


def test_a_larger_default_ordered_page_reads_its_keys_first(member, monkeypatch):
    monkeypatch.setattr(pagination, "EXACT_COUNT_LIMIT", 3)
    monkeypatch.setattr(pagination, "MAX_PAGINATED_ROWS", 4)  # more matches than pages reach: no one pass
    response, statements = listed(member, page_size=2, page=2)
    assert response.json()["pagination"]["count"] >= 4
    page_sql = page_statement(statements)
    outer, keys = page_sql.split("IN (SELECT", 1)
    # The slice is the keys' query's; on PostgreSQL the count is an estimate, so the page reads the first key of
    # the next page too (tests/api/test_estimated_pages.py).
    assert f"LIMIT {3 if connection.vendor == 'postgresql' else 2} OFFSET 2" in keys
    assert "LIMIT" not in outer
    assert [row["identifier"] for row in response.json()["results"]] == ["group-r", "member-key"]


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"page": 99}, 404),
        ({"page": 0}, 404),
        ({"page": "abc"}, 404),
        ({"page": "last", "page_size": 4}, 200),
        ({"page_size": 0}, 400),
        ({"page_size": "-1"}, 400),
        ({"page": 2, "search": "nothing-like-it"}, 404),
        ({"ordering": "key"}, 200),  # not an ordering field: ignored, as DRF does
        ({"search": "\x00"}, 400),  # a NUL: refused before any query
    ],
)
def test_bad_pages_answer_as_before(member, monkeypatch, params, status):
    keyed = member.get(reverse("token-list"), params)
    monkeypatch.setattr(TokenViewSet, "pagination_class", pagination.Pagination)
    plain = member.get(reverse("token-list"), params)
    assert keyed.status_code == plain.status_code == status
    assert keyed.content == plain.content


def test_a_token_deleted_between_the_count_and_the_page_is_left_out(member, monkeypatch):
    counted = pagination.KeyedPaginator._count_up_to

    def count_then_delete(self, rows, limit):
        result = counted(self, rows, limit)
        Token.objects.filter(identifier="own-b").delete()
        return result

    monkeypatch.setattr(pagination.KeyedPaginator, "_count_up_to", count_then_delete)
    body = member.get(reverse("token-list"), {"search": "backup"}).json()
    assert body["pagination"]["count"] == 4  # as counted
    assert [row["identifier"] for row in body["results"]] == ["group-r", "shared-y", "shared-z"]


def test_other_querysets_are_counted_and_paged_as_before(member):
    """A queryset the keys cannot stand for (annotated, distinct) is counted and paged by ``BoundedPaginator``."""
    from django.db.models import Value

    rows = Token.objects.annotate(marker=Value(1)).order_by("identifier")
    paginator = pagination.KeyedPaginator(rows, 2)
    assert paginator.count == Token.objects.count()
    assert paginator._keys is None
    assert [token.identifier for token in paginator.page(1).object_list] == list(
        Token.objects.order_by("identifier").values_list("identifier", flat=True)[:2]
    )
    distinct = pagination.KeyedPaginator(Token.objects.order_by("identifier").distinct(), 2)
    assert distinct.count == Token.objects.count()
    assert distinct._keys is None
    keyed = pagination.KeyedPaginator(Token.objects.order_by("-identifier"), 2)
    assert keyed.count == Token.objects.count()
    assert keyed._keys is not None
    assert [token.identifier for token in keyed.page(2).object_list] == list(
        Token.objects.order_by("-identifier").values_list("identifier", flat=True)[2:4]
    )


def test_a_queryset_that_matches_nothing_costs_no_statement(db, django_assert_num_queries):
    with django_assert_num_queries(0):
        paginator = pagination.KeyedPaginator(Token.objects.none().order_by("identifier"), 20)
        assert paginator.count == 0
        assert list(paginator.page(1).object_list) == []


@pytest.fixture
def admin_client(make_user, make_token, bearer):
    """A superuser's client over 12 tokens: 9 of owners named ``carol-*`` (3 each), 3 of ``dave``."""
    for n in range(3):
        owner = make_user(username=f"carol-{n}")
        for m in range(3):
            make_token(owner, identifier=f"c{n}-{m}", description="backup" if m else "")
    dave = make_user(username="dave")
    for m in range(3):
        make_token(dave, identifier=f"d-{m}", description="carol's")
    return bearer(make_token(make_user(username="root", superuser=True), identifier="zz-admin"))


@pytest.mark.parametrize("limit", [2, 8, 9, 10, 1000])
@pytest.mark.parametrize(
    "params",
    [
        {"search": "carol"},
        {"search": "CAROL-1"},
        {"search": "carol 1"},
        {"search": "carol", "page": 2, "page_size": 3},
        {"search": "carol", "ordering": "-description"},
        {"search": "carol", "description": "backup"},
        {"search": "arol nothing-like-it"},
    ],
)
def test_counting_the_owners_tokens_first_answers_as_counting_the_search(admin_client, monkeypatch, params, limit):
    """A search matching owners, by a caller who sees every token: their tokens are counted first
    (``BoundedPaginator.part``); the envelope is the same, byte for byte, as counting the search itself."""
    monkeypatch.setattr(pagination, "EXACT_COUNT_LIMIT", limit)
    with_part, statements = listed(admin_client, **params)
    monkeypatch.setattr(TokenViewSet, "_owners_tokens", lambda self, request: None)
    without, _ = listed(admin_client, **params)
    assert with_part.status_code == without.status_code
    assert with_part.content == without.content
    counted_owners = [sql for sql in statements if "COUNT(" in sql.upper() and "LIKE" not in sql.upper()]
    expected = "description" not in params and "nothing-like-it" not in params["search"]
    assert bool(counted_owners) == expected


def test_the_owners_tokens_are_not_counted_first_for_a_caller_who_sees_some(member, make_user, make_token):
    owner = make_user(username="carol")
    make_token(owner, identifier="c-1")
    _, statements = listed(member, search="carol")
    assert not [sql for sql in statements if "COUNT(" in sql.upper() and "LIKE" not in sql.upper()]
