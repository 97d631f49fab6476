"""The token list's read path: a page of tokens as ``TokenSerializer`` represents them, without its machinery.

DRF's serializer spent most of a list request's CPU on a page of 20 tokens: a deep copy of its fields
per request, and per row and field an attribute lookup, a ``None`` check and a ``to_representation``
call, twice over for the nested owner and its groups. Here a page is two statements: the tokens' columns
that are shown (never a key or a digest), then their owners with their groups, each owner once however
many of the page's tokens it owns. Each row becomes the dictionary the serializer makes: same members in
the same order, same values.

``TokenSerializer`` stays the contract (schema, writes, the other actions). This module is held to it
byte for byte, after JSON rendering, over varied rows on both databases (tests/api/test_list_representation.py),
and its member names and order are compared there with the serializer's fields.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any
from weakref import WeakKeyDictionary

from django.contrib.auth.models import Group
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, ManyToManyField, QuerySet
from django.utils import timezone

from core.avatars import avatar_data_uri_of, group_uuid_of_pk
from core.fastpath import orm_converters
from core.models import Token, User, user_uid

# The token's columns that the list shows, in the serializer's order (its owner comes from ``OWNER_FIELDS``).
TOKEN_COLUMNS = (
    "pk",
    "managed",
    "identifier",
    "intent",
    "user_id",
    "description",
    "expires",
    "expiring",
    "last_used",
    "last_used_ip",
    "allowed_ips",
)
# The owner's fields that ``UserSerializer`` reads (``avatar`` and ``uid`` are made from name, username, uuid).
OWNER_FIELDS = (
    "id",
    "username",
    "name",
    "is_active",
    "last_login",
    "date_joined",
    "is_superuser",
    "email",
    "attributes",
    "path",
    "type",
    "uuid",
    "password_change_date",
    "last_updated",
)

# The owners' rows (no group), then one row per membership (the user's key, NULLs, the group), each value
# read once however many groups an owner has. Memberships in group key order: the order of the serializer's
# ``Prefetch("user__groups", queryset=Group.objects.order_by("pk"))``. ``{among}`` is the test on the ids.
_OWNERS_SQL = (
    "SELECT {columns}, NULL, NULL FROM {users} u WHERE u.{user_pk} {among} "
    "UNION ALL "
    "SELECT ug.{through_user}, {nulls}, g.{group_pk}, g.{group_name} "
    "FROM {through} ug INNER JOIN {groups} g ON g.{group_pk} = ug.{through_group} "
    "WHERE ug.{through_user} {among} ORDER BY {group_position}"
)

DateTimeText = Callable[[datetime | None], str | None]
GroupRow = tuple[int, str]  # a group's key and name
# A column's position in ``OWNER_FIELDS``, the column, and the functions that convert its values.
_Converters = tuple[int, Any, list[Callable[[Any, Any, BaseDatabaseWrapper], Any]]]


@dataclass(frozen=True, slots=True)
class _OwnersQuery:
    """``_OWNERS_SQL`` for one connection, and the converters the ORM applies to each of ``OWNER_FIELDS``."""

    sql: str
    converters: list[_Converters]
    # PostgreSQL: the ids are one array parameter, so the statement's text is the same for any number of
    # owners and the server prepares it once per connection. Elsewhere: ``IN`` and a placeholder per id.
    array: bool

    def statement(self, ids: list[int]) -> tuple[str, list[Any]]:
        if self.array:
            return self.sql, [ids, ids]
        return self.sql.format(ids=", ".join(["%s"] * len(ids))), [*ids, *ids]


_OWNERS_QUERIES: WeakKeyDictionary[BaseDatabaseWrapper, _OwnersQuery] = WeakKeyDictionary()


def token_list_page(rows: QuerySet[Token]) -> list[dict[str, Any]]:
    """The representation of the tokens ``rows`` selects (a page: ordered and sliced), as ``TokenSerializer``
    gives it for each, in order. Two statements (one for an empty page).

    A token whose owner is gone by the second statement (deleted, with its tokens, in between) is left out,
    as the next request would not show it either.
    """
    page = list(rows.values_list(*TOKEN_COLUMNS))
    when = iso_8601(timezone.get_current_timezone())
    owners = _owners({row[4] for row in page}, rows.db, when)
    return [
        {
            "pk": str(pk),
            "managed": managed,
            "identifier": identifier,
            "intent": intent,
            "user": user_id,
            "user_obj": owners[user_id],
            "description": description,
            "expires": when(expires),
            "expiring": expiring,
            "last_used": when(last_used),
            "last_used_ip": None if last_used_ip is None else str(last_used_ip),
            "allowed_ips": None if allowed_ips is None else [_text(network) for network in allowed_ips],
        }
        for (
            pk,
            managed,
            identifier,
            intent,
            user_id,
            description,
            expires,
            expiring,
            last_used,
            last_used_ip,
            allowed_ips,
        ) in page
        if user_id in owners
    ]


def _owners(user_ids: Iterable[int], using: str, when: DateTimeText) -> dict[int, dict[str, Any]]:
    """``UserSerializer``'s representation of each of ``user_ids`` that exists, with its groups, in one statement.

    Plain SQL: building this query with the ORM cost several times its round trip. The values go through
    the converters the ORM applies to these fields, so they are what a queryset would give.
    """
    ids = sorted(user_ids)
    if not ids:
        return {}
    db = connections[using]
    query = _owners_query(db)
    width = len(OWNER_FIELDS)
    users: dict[int, list[Any]] = {}
    groups: dict[int, list[GroupRow]] = {}
    with db.cursor() as cursor:
        cursor.execute(*query.statement(ids))
        for row in cursor.fetchall():
            group_pk, group_name = row[width:]
            if group_pk is not None:
                groups.setdefault(row[0], []).append((group_pk, group_name))
                continue
            values = users[row[0]] = list(row[:width])
            for index, column, functions in query.converters:
                for function in functions:
                    values[index] = function(values[index], column, db)
    return {user_id: _user_obj(values, groups.get(user_id, []), when) for user_id, values in users.items()}


def _user_obj(values: list[Any], groups: list[GroupRow], when: DateTimeText) -> dict[str, Any]:
    """``UserSerializer``'s representation of a user from its ``OWNER_FIELDS`` values and its groups.

    ``roles`` is absent as it is from the serializer's output (the user has no such attribute, and the
    field is optional, so DRF skips it); ``roles_obj`` is its default, an empty list.
    """
    (
        user_id,
        username,
        name,
        is_active,
        last_login,
        date_joined,
        is_superuser,
        email,
        attributes,
        path,
        user_type,
        user_uuid,
        password_change_date,
        last_updated,
    ) = values
    group_uuids = [str(group_uuid_of_pk(group_pk)) for group_pk, _ in groups]
    return {
        "pk": user_id,
        "username": username,
        "name": name,
        "is_active": is_active,
        "last_login": when(last_login),
        "date_joined": when(date_joined),
        "is_superuser": is_superuser,
        "groups": group_uuids,
        "groups_obj": [
            # PartialGroupSerializer: Django groups have no superuser flag or attributes.
            {"pk": group_uuid, "num_pk": group_pk, "name": group_name, "is_superuser": False, "attributes": {}}
            for group_uuid, (group_pk, group_name) in zip(group_uuids, groups, strict=True)
        ],
        "roles_obj": [],
        "email": email,
        "avatar": avatar_data_uri_of(name, username, user_uuid),
        # DictField: a copy with string keys (an attributes value that is not an object fails as in DRF).
        "attributes": {str(key): value for key, value in attributes.items()},
        "uid": user_uid(user_uuid),
        "path": path,
        "type": user_type,
        "uuid": str(user_uuid),
        "password_change_date": when(password_change_date),
        "last_updated": when(last_updated),
    }


def _owners_query(db: BaseDatabaseWrapper) -> _OwnersQuery:
    """The owners statement for ``db``, with the table and column names of the models' metadata, and the
    converters of its columns; made once per connection.

    SQLite returns datetimes as text, uuids as hex and booleans as integers, and JSON arrives as text on
    both databases: the converters are the functions a queryset would call on each value.
    """
    query = _OWNERS_QUERIES.get(db)
    if query is not None:
        return query
    quote = db.ops.quote_name
    membership = User._meta.get_field("groups")
    assert isinstance(membership, ManyToManyField)
    array = db.vendor == "postgresql"
    sql = _OWNERS_SQL.format(
        columns=", ".join(f"u.{quote(_column(User, name))}" for name in OWNER_FIELDS),
        users=quote(User._meta.db_table),
        user_pk=quote(_column(User, "id")),
        through=quote(membership.m2m_db_table()),
        through_user=quote(membership.m2m_column_name()),
        through_group=quote(membership.m2m_reverse_name()),
        groups=quote(Group._meta.db_table),
        group_pk=quote(_column(Group, "id")),
        group_name=quote(_column(Group, "name")),
        nulls=", ".join(["NULL"] * (len(OWNER_FIELDS) - 1)),
        group_position=len(OWNER_FIELDS) + 1,
        among="= ANY(%s)" if array else "IN ({ids})",
    )
    converters = orm_converters(db, User, [User._meta.get_field(name) for name in OWNER_FIELDS])
    query = _OWNERS_QUERIES[db] = _OwnersQuery(sql=sql, converters=converters, array=array)
    return query


def _column(model: type[User] | type[Group], field_name: str) -> str:
    field = model._meta.get_field(field_name)
    assert isinstance(field, Field)
    assert field.column is not None  # a concrete field
    return field.column


def iso_8601(zone: tzinfo) -> DateTimeText:
    """DRF's ``DateTimeField.to_representation`` (ISO 8601 output, ``USE_TZ``) in ``zone``, DRF's field time
    zone (the current one), looked up once per page instead of once per value; UTC is written ``Z``."""

    def text(value: datetime | None) -> str | None:
        if value is None:
            return None
        iso = value.astimezone(zone).isoformat()
        return iso[:-6] + "Z" if iso.endswith("+00:00") else iso

    return text


def _text(value: Any) -> str | None:
    """A list member as ``ListField`` with a ``CharField`` child gives it: ``None`` kept, anything else ``str``."""
    return None if value is None else str(value)
