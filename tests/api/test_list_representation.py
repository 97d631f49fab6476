"""The token list's own read path (``core.listing``) against its contract, ``TokenSerializer``.

The list builds its JSON without DRF's serializer; these tests hold it to the serializer byte for byte,
after rendering, over varied rows (run on both database lanes), and check what it reads and how often.
"""

import itertools
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django import forms
from django.conf import settings
from django.contrib.auth.models import Group
from django.db import connection
from django.db.models import Prefetch, Q, QuerySet
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django_filters.rest_framework import DjangoFilterBackend
from rest_framework import ISO_8601, serializers
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.test import APIRequestFactory

from core.filters import QueriedFilterBackend, TokenFilter
from core.listing import TOKEN_COLUMNS, token_list_page
from core.models import Token, TokenIntents, User, UserTypes
from core.serializers import PartialGroupSerializer, TokenSerializer, UserSerializer
from tests.helpers import ON_POSTGRES
from tokens_service.pagination import _estimated_rows

LIST_URL = reverse("token-list")
ORDERINGS = [
    ("identifier", "expires", "pk"),
    ("-expires", "-pk"),
    ("user__username", "pk"),
    ("-last_used", "-pk"),
    ("description", "pk"),
    ("managed", "pk"),
]


def _render(data: Any) -> bytes:
    return JSONRenderer().render(data)


def _serialized(tokens: QuerySet[Token]) -> list[Any]:
    """The contract: what ``TokenSerializer`` makes of ``tokens``, read as the other actions read them."""
    with_groups = tokens.select_related("user").prefetch_related(
        Prefetch("user__groups", queryset=Group.objects.order_by("pk"))
    )
    return list(TokenSerializer(with_groups, many=True).data)


@pytest.fixture
def varied_tokens(db: Any) -> list[Token]:
    """Tokens of owners of every kind: with and without groups, names, logins, attributes; tokens expired,
    expiring, never expiring, used or not, with allowlists, managed, with non-ASCII and line-separator text."""
    rng = random.Random(20240611)
    groups = [Group.objects.create(name=name) for name in ("ops", "Zoë's team", "批处理", "a" * 150, "x y", "🛠 tools")]
    names = ["", "Ada Lovelace", "zoë ålander", "李 小龙", "@bob builder", "  spaced   out  ", "🙂 smile", "x"]
    attributes = [{}, {"note": "ünïcode", "nested": {"list": [1, 2.5, None, True, "\u2028"]}}, {"n": 0}]
    users = []
    for index in range(14):
        user = User.objects.create_user(
            username=f"owner{index}",
            email="" if index % 5 == 0 else f"owner{index}@example.test",
            name=names[index % len(names)],
            is_superuser=index % 4 == 0,
            is_active=index % 7 != 3,
            attributes=attributes[index % len(attributes)],
            type=[*UserTypes.values, "unlisted-type"][index % (len(UserTypes.values) + 1)],
            path="users" if index % 3 else "users/ünï/path",
        )
        if index % 3 == 1:
            user.last_login = datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)
        elif index % 3 == 2:
            user.last_login = timezone.now()
        user.save()
        # Added out of key order: the list must show them in key order, as the serializer's prefetch does.
        user.groups.add(*rng.sample(groups, k=index % 4)[::-1])
        users.append(user)
    now = timezone.now()
    moments = [
        None,
        now - timedelta(days=3),
        now + timedelta(days=30),
        datetime(2030, 1, 1, tzinfo=UTC),  # no microseconds: ISO 8601 without a fraction
        datetime(1999, 12, 31, 23, 0, 0, 1, tzinfo=UTC),
    ]
    allowlists = [None, None, ["10.0.0.0/8"], ["192.0.2.1/32", "2001:db8::/32"], []]
    descriptions = ["", "plain", "ünïcödé ✓", 'line\u2028separator\u2029and "quotes" <tags> \\', "x" * 300]
    tokens = []
    for index in range(90):
        tokens.append(
            Token.objects.create(
                identifier=f"t-{rng.randrange(10**6):06d}-{index}",
                user=users[rng.randrange(len(users))],
                intent=TokenIntents.values[index % len(TokenIntents.values)],
                description=descriptions[index % len(descriptions)],
                expires=moments[index % len(moments)],
                expiring=index % 6 != 0,
                managed=f"goauthentik.io/managed/{index}" if index % 9 == 0 else None,
                last_used=moments[(index + 1) % len(moments)],
                last_used_ip=[None, "203.0.113.9", "2001:db8::1", "::ffff:192.0.2.128"][index % 4],
                allowed_ips=allowlists[index % len(allowlists)],
            )
        )
    return tokens


def test_members_and_their_order_are_the_serializers(varied_tokens):
    tokens = Token.objects.order_by("pk")
    (first,) = token_list_page(tokens[:1])
    assert list(first) == list(TokenSerializer().fields)
    # roles: never in the serializer's output (optional, and users have no such attribute)
    assert list(first["user_obj"]) == [name for name in UserSerializer().fields if name != "roles"]
    grouped = next(row for row in token_list_page(tokens.all()) if row["user_obj"]["groups_obj"])
    assert list(grouped["user_obj"]["groups_obj"][0]) == list(PartialGroupSerializer().fields)
    assert TOKEN_COLUMNS[4] == "user_id"  # the owner's key, read by position


def test_the_datetime_settings_are_those_the_list_reproduces():
    # core.listing writes datetimes as DRF does with these settings (ISO 8601, aware, in the current zone).
    assert settings.USE_TZ is True
    assert api_settings.DATETIME_FORMAT == ISO_8601
    datetime_fields = [
        field
        for serializer in (TokenSerializer(), UserSerializer())
        for field in serializer.fields.values()
        if isinstance(field, serializers.DateTimeField)
    ]
    assert len(datetime_fields) == 6
    assert not any(hasattr(field, "format") or hasattr(field, "timezone") for field in datetime_fields)


@pytest.mark.parametrize("ordering", ORDERINGS)
def test_every_page_renders_byte_for_byte_as_the_serializer(varied_tokens, ordering):
    tokens = Token.objects.order_by(*ordering)
    for start in range(0, len(varied_tokens) + 10, 17):
        page = tokens[start : start + 17]
        assert _render(token_list_page(page)) == _render(_serialized(page))


@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris", "America/St_Johns", "Asia/Kathmandu"])
def test_datetimes_follow_the_current_time_zone_as_drf_does(varied_tokens, zone):
    tokens = Token.objects.order_by("pk")
    with timezone.override(zone):
        assert _render(token_list_page(tokens.all())) == _render(_serialized(tokens.all()))


def test_the_list_endpoint_answers_as_the_serializer_would(varied_tokens, make_token, bearer):
    root = User.objects.get(username="owner0")  # a superuser: sees every token
    client = bearer(make_token(root, identifier="zz-list-caller", last_used=None))
    for query in [
        {},
        {"page": "2", "page_size": "13"},
        {"ordering": "-expires", "page_size": "100"},
        {"search": "owner1", "ordering": "user__username"},
        {"expiring": "false", "intent": "verification"},
        {"last_used__isnull": "true", "page_size": "5", "page": "2"},
    ]:
        response = client.get(LIST_URL, query)
        assert response.status_code == 200
        body = response.json()
        identifiers = [row["identifier"] for row in body["results"]]
        assert identifiers
        page = Token.objects.filter(identifier__in=identifiers)
        expected = sorted(_serialized(page), key=lambda row: identifiers.index(row["identifier"]))
        envelope = {"pagination": body["pagination"], "results": expected, "autocomplete": {}}
        assert response.content == _render(envelope), query


def test_an_empty_page_costs_one_statement(db):
    with CaptureQueriesContext(connection) as queries:
        assert token_list_page(Token.objects.order_by("pk")[:20]) == []
    assert len(queries) == 1


def test_a_page_is_two_statements_that_read_no_key(varied_tokens):
    with CaptureQueriesContext(connection) as queries:
        page = token_list_page(Token.objects.order_by("pk")[:100])
    assert len(page) == len(varied_tokens)
    assert len(queries) == 2
    for query in queries:
        sql = query["sql"].lower()
        assert '"key"' not in sql
        assert "digest" not in sql
        assert '"password"' not in sql


def test_a_token_whose_owner_is_deleted_meanwhile_is_left_out(varied_tokens):
    tokens = Token.objects.order_by("pk")
    rows = list(tokens.values_list("identifier", "user_id"))
    victim = rows[0][1]
    deleted = []

    def delete_owner_before_the_owners_are_read(execute, sql, params, many, context):
        if not deleted and "UNION ALL" in sql:
            deleted.append(True)
            User.objects.filter(pk=victim).delete()  # with its tokens (cascade)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(delete_owner_before_the_owners_are_read):
        page = token_list_page(tokens.all())
    assert deleted
    assert [row["identifier"] for row in page] == [identifier for identifier, owner in rows if owner != victim]


@pytest.mark.skipif(not ON_POSTGRES, reason="count estimates are PostgreSQL's")
def test_without_the_owner_join_postgresql_estimates_the_same_rows(varied_tokens):
    # The list's queryset leaves out select_related("user") (core.listing reads the owners): the estimated
    # count above EXACT_COUNT_LIMIT must not change for it. The join follows the token's foreign key, so the
    # planner's estimate of the join is the estimate of the tokens.
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Token._meta.db_table}, {User._meta.db_table}")
    owners = list(User.objects.values_list("username", flat=True)[:3])
    visible = Token.objects.select_related("user")
    for tokens in [
        visible,
        visible.filter(intent="api"),
        visible.filter(expiring=False, last_used__isnull=True),
        visible.filter(Q(identifier__icontains="t-1") | Q(description__icontains="plain")),
        visible.filter(user__username__in=owners),
        visible.filter(user__username__icontains="owner1"),
        visible.exclude(managed=None),
    ]:
        assert _estimated_rows(tokens.select_related(None)) == _estimated_rows(tokens)


# --- the filter backend ---------------------------------------------------------------------------------


def test_each_filter_reads_the_one_parameter_of_its_name():
    # QueriedFilterBackend skips the filterset when no parameter names a filter: that is exact only if
    # every filter reads just the parameter of its own name (a multi-part widget reads name_0, name_min...).
    for name, token_filter in TokenFilter.base_filters.items():
        widget = token_filter.field.widget
        assert not isinstance(widget, forms.MultiWidget), name
        assert widget.value_from_datadict({name: "v"}, {}, name) == "v", name


@pytest.mark.parametrize(
    "query",
    [
        "",
        "page=2&page_size=5",
        "ordering=-expires&search=owner",
        "unknown=1",
        "expiring=false",
        "intent=api&user__username=owner3",
        "last_used__lt=2030-01-01T00:00:00Z",
    ],
)
def test_the_queried_backend_filters_as_django_filter_does(varied_tokens, query):
    class View:
        filterset_class = TokenFilter

    request = Request(APIRequestFactory().get(f"{LIST_URL}?{query}"))
    tokens = Token.objects.order_by("pk")
    ours = QueriedFilterBackend().filter_queryset(request, tokens, View())
    theirs = DjangoFilterBackend().filter_queryset(request, tokens, View())
    assert list(ours.values_list("pk", flat=True)) == list(theirs.values_list("pk", flat=True))


def test_an_invalid_filter_value_is_still_a_400(varied_tokens, bearer, make_token):
    client = bearer(make_token(User.objects.get(username="owner0"), identifier="zz-list-caller"))
    response = client.get(LIST_URL, {"expiring": "ture", "page": "1"})
    assert response.status_code == 400
    assert list(response.json()) == ["expiring"]


def test_names_and_groups_vary_in_the_fixture(varied_tokens):
    # Guards the equivalence tests above: the rows they compare do cover the cases they claim.
    owners = User.objects.filter(tokens__isnull=False).distinct()
    assert {len(owner.groups.all()) for owner in owners} >= {0, 1, 2, 3}
    assert {owner.is_superuser for owner in owners} == {True, False}
    assert {owner.last_login is None for owner in owners} == {True, False}
    tokens = Token.objects.all()
    assert {token.expires is None for token in tokens} == {True, False}
    assert {token.allowed_ips is None for token in tokens} == {True, False}
    assert {token.managed is None for token in tokens} == {True, False}
    assert set(itertools.chain.from_iterable(token.allowed_ips or [] for token in tokens))
