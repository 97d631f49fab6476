"""Reads: bearer lookup, permission checks and visibility of tokens."""

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import DEFAULT_DB_ALIAS, connection, connections, models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import CharField, Exists, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.expressions import RawSQL
from django.db.models.functions import Cast, Replace
from django.utils import timezone
from guardian.models import GroupObjectPermission, UserObjectPermission

from core.models import Token, TokenIntents, User, key_digest

# The two selectors every API request runs (bearer lookup, permission check) send SQL written once
# instead of building a queryset per call: compiling these querysets costs several times more CPU than
# the database spends answering them. The SQL is plain enough for PostgreSQL and SQLite alike; table
# and column names come from the models' metadata, so they follow the models.
_M = TypeVar("_M", bound=models.Model)
_Converter = Callable[[Any, Any, BaseDatabaseWrapper], Any]
_CONVERTERS: WeakKeyDictionary[BaseDatabaseWrapper, dict[type[models.Model], list[tuple[int, Any, list[_Converter]]]]]
_CONVERTERS = WeakKeyDictionary()


def _columns(model: type[models.Model], alias: str) -> str:
    """The model's concrete columns, in field order, as ``alias."column"`` SQL."""
    quote = connections[DEFAULT_DB_ALIAS].ops.quote_name
    return ", ".join(f"{alias}.{quote(field.column)}" for field in model._meta.concrete_fields)  # type: ignore[arg-type]


@functools.cache
def _attnames(model: type[models.Model]) -> list[str]:
    return [field.attname for field in model._meta.concrete_fields]


def _from_row(db: BaseDatabaseWrapper, model: type[_M], values: Sequence[Any]) -> _M:
    """An instance of ``model`` from its ``_columns`` as the database ``db`` returned them.

    Applies the converters the ORM would (SQLite returns uuids and datetimes as text, JSON arrives
    as text), computed once per connection object, then builds the instance like a queryset does.
    """
    per_model = _CONVERTERS.get(db)
    if per_model is None:
        per_model = _CONVERTERS[db] = {}
    converters = per_model.get(model)
    if converters is None:
        converters = []
        for index, field in enumerate(model._meta.concrete_fields):
            column = field.get_col(model._meta.db_table)
            functions = [*db.ops.get_db_converters(column), *field.get_db_converters(db)]
            if functions:
                converters.append((index, column, functions))
        per_model[model] = converters
    row = list(values)
    for index, column, functions in converters:
        for function in functions:
            row[index] = function(row[index], column, db)
    return model.from_db(db.alias, _attnames(model), row)


@functools.cache
def _bearer_sql(vendor: str) -> str:
    token, user = Token._meta.db_table, User._meta.db_table
    # Only model metadata is formatted into the SQL; values are always parameters.
    return f"""
SELECT {_columns(Token, "t")}, {_columns(User, "u")}
FROM {token} t INNER JOIN {user} u ON u.id = t.user_id
WHERE t.key_digest = %s AND t.intent = %s AND u.is_active
  AND NOT (t.expiring AND t.expires IS NOT NULL AND t.expires <= %s)"""  # noqa: S608


def token_for_bearer_key(key: str) -> Token | None:
    """The token that ``key`` authenticates as, with its user, in one query; ``None`` if it does not.

    Only an unexpired ``api`` token of an active user authenticates. The key is matched through its
    digest (a unique-index lookup in SQL), never compared in Python.
    """
    db = connections[DEFAULT_DB_ALIAS]  # this thread's connection, looked up once (not through the proxy)
    now = db.ops.adapt_datetimefield_value(timezone.now())
    with db.cursor() as cursor:
        cursor.execute(_bearer_sql(db.vendor), [key_digest(key), TokenIntents.API.value, now])
        row = cursor.fetchone()
    if row is None:
        return None
    split = len(Token._meta.concrete_fields)
    token = _from_row(db, Token, row[:split])
    token.user = _from_row(db, User, row[split:])
    return token


def _object_pk_matches(token_pk: Subquery | OuterRef) -> tuple[dict[str, Any], Q]:
    """Annotation and filter matching guardian's text ``object_pk`` against a token's uuid.

    guardian stores ``str(uuid)`` (with dashes). PostgreSQL casts a uuid to exactly that text, which
    keeps guardian's (content_type, object_pk) index usable; SQLite stores uuids as 32 hex digits, so
    there the dashes are removed from ``object_pk`` instead.
    """
    if connection.vendor == "postgresql":
        return {}, Q(object_pk=Cast(token_pk, output_field=CharField()))
    return {"object_pk_hex": Replace("object_pk", Value("-"), Value(""))}, Q(object_pk_hex=token_pk)


@functools.cache
def _token_perm_sql(vendor: str) -> str:
    # Shaped for the planner: one IN over a UNION ALL of the permission ids the user holds in each of the
    # four ways plans about 2.5 times faster than four correlated EXISTS (planning cost PostgreSQL more
    # than running it), and the object branches are exact lookups in guardian's (user, content type,
    # object_pk) index. guardian stores object_pk as str(uuid), with dashes: PostgreSQL casts the uuid to
    # exactly that text; SQLite stores uuids as 32 hex digits, so there the dashes are removed instead.
    if vendor == "postgresql":
        object_pk, token_pk = "object_pk", "token_uuid::text"
    else:
        object_pk, token_pk = "replace(object_pk, '-', '')", "token_uuid"
    token_type = f"(SELECT id FROM {ContentType._meta.db_table} WHERE app_label = %s AND model = %s)"  # noqa: S608
    on_token = f"content_type_id = {token_type} AND {object_pk} = (SELECT {token_pk} FROM {Token._meta.db_table} WHERE identifier = %s)"  # noqa: E501, S608
    user_groups = User.groups.through._meta.db_table
    # Only model metadata is formatted into the SQL; values are always parameters.
    return f"""
SELECT EXISTS (
    SELECT 1 FROM {Permission._meta.db_table} WHERE codename = %s AND content_type_id = {token_type} AND id IN (
        SELECT permission_id FROM {User.user_permissions.through._meta.db_table} WHERE user_id = %s
        UNION ALL
        SELECT gp.permission_id FROM {user_groups} ug
        INNER JOIN {Group.permissions.through._meta.db_table} gp ON gp.group_id = ug.group_id WHERE ug.user_id = %s
        UNION ALL
        SELECT permission_id FROM {UserObjectPermission._meta.db_table} WHERE user_id = %s AND {on_token}
        UNION ALL
        SELECT go.permission_id FROM {user_groups} ug
        INNER JOIN {GroupObjectPermission._meta.db_table} go ON go.group_id = ug.group_id
        WHERE ug.user_id = %s AND {on_token}
    )
)"""  # noqa: S608


def user_has_token_perm(user: User, codename: str, identifier: str) -> bool:
    """Whether ``user`` holds ``authentik_core.<codename>`` globally or on the token ``identifier``.

    Active superusers always do (no query). Otherwise one query answers all four ways of holding it:
    a user permission, a group permission, a guardian object permission of the user or of one of its
    groups. An unknown identifier simply matches no object permission, so callers cannot probe for it.
    """
    if not user.is_active:
        return False
    if user.is_superuser:
        return True
    token_type = ["authentik_core", "token"]
    on_token = [*token_type, identifier]
    db = connections[DEFAULT_DB_ALIAS]
    with db.cursor() as cursor:
        cursor.execute(
            _token_perm_sql(db.vendor),
            [codename, *token_type, user.pk, user.pk, user.pk, *on_token, user.pk, *on_token],
        )
        row = cursor.fetchone()
    return bool(row and row[0])


def user_has_global_perm(user: User, app_label: str, codename: str) -> bool:
    """Whether ``user`` holds ``<app_label>.<codename>`` globally (user or group permission), in one query.

    Active superusers always do; inactive users never do. Object permissions are not consulted.
    """
    if not user.is_active:
        return False
    if user.is_superuser:
        return True
    perm = OuterRef("pk")
    user_global = User.user_permissions.through.objects.filter(user_id=user.pk, permission_id=perm)
    group_global = Group.permissions.through.objects.filter(permission_id=perm, group__user=user.pk)
    return (
        Permission.objects.filter(content_type__app_label=app_label, codename=codename)
        .filter(Exists(user_global) | Exists(group_global))
        .exists()
    )


def tokens_visible_to(user: User) -> QuerySet[Token]:
    """Tokens ``user`` may see, with their owners.

    Everything for active superusers and holders of the global ``authentik_core.view_token``;
    otherwise the user's own tokens plus those on which the user, or one of its groups, holds any
    guardian object permission (holding ``change_token`` or ``view_token_key`` on a token implies
    seeing it). Inactive users see nothing.

    The visible set is one ``pk IN (... UNION ...)`` of three index lookups (tokens by owner, the user's
    and its groups' object permissions by user or group), so the database reads only the user's own
    rows, however many tokens exist; an ``OR`` of ``EXISTS`` would be tested against every token.
    """
    tokens = Token.objects.select_related("user")
    if not user.is_active:
        return tokens.none()
    if user_has_global_perm(user, "authentik_core", "view_token"):
        return tokens
    params = [user.pk, user.pk, "authentik_core", "token", user.pk, "authentik_core", "token"]
    # The SQL is built from model metadata only; every value is a parameter.
    return tokens.filter(pk__in=RawSQL(_visible_sql(connections[DEFAULT_DB_ALIAS].vendor), params))  # noqa: S611


@functools.cache
def _visible_sql(vendor: str) -> str:
    # guardian stores object_pk as str(uuid), with dashes. PostgreSQL: cast it to uuid to compare with
    # the token's key through its index (object permissions on tokens are only ever written by this
    # service, from a token's pk; a malformed one would fail the query, a 503, never widen it).
    # SQLite stores uuids as 32 hex digits: remove the dashes.
    as_pk = "object_pk::uuid" if vendor == "postgresql" else "replace(object_pk, '-', '')"
    user_groups = User.groups.through._meta.db_table
    token_type = f"(SELECT id FROM {ContentType._meta.db_table} WHERE app_label = %s AND model = %s)"  # noqa: S608
    # Only model metadata is formatted into the SQL; values are always parameters.
    return f"""
SELECT token_uuid FROM {Token._meta.db_table} WHERE user_id = %s
UNION
SELECT {as_pk} FROM {UserObjectPermission._meta.db_table} WHERE user_id = %s AND content_type_id = {token_type}
UNION
SELECT {as_pk.replace("object_pk", "go.object_pk")} FROM {GroupObjectPermission._meta.db_table} go
INNER JOIN {user_groups} ug ON ug.group_id = go.group_id
WHERE ug.user_id = %s AND go.content_type_id = {token_type}"""  # noqa: S608


_ON_DELETE_ACTIONS = {
    models.CASCADE: "cascade",
    models.SET_NULL: "set_null",
    models.SET_DEFAULT: "set_default",
}


def objects_using(instance: models.Model) -> list[dict[str, str]]:
    """Every object that references ``instance`` through a foreign key, one-to-one or many-to-many.

    Each entry names the referencing object (``app``, ``model_name``, ``pk``, ``name``) and what deleting
    ``instance`` does to it (``action``, authentik's ``UsedByActionEnum``). One query per reverse
    relation; a model nothing points to (a token, today) costs none and yields ``[]``.
    """
    used_by: list[dict[str, str]] = []
    for relation in instance._meta.related_objects:
        accessor = relation.get_accessor_name()
        if accessor is None:
            continue
        if relation.many_to_many:
            action = "cascade_many"
        else:
            on_delete = getattr(relation, "on_delete", None)
            action = _ON_DELETE_ACTIONS.get(on_delete, "left_dangling")  # type: ignore[arg-type]
        if relation.one_to_one:
            related = getattr(instance, accessor, None)
            referencing = [related] if related is not None else []
        else:
            referencing = list(getattr(instance, accessor).all())
        for obj in referencing:
            used_by.append(
                {
                    "app": obj._meta.app_label,
                    "model_name": obj._meta.model_name or "",
                    "pk": str(obj.pk),
                    "name": str(obj),
                    "action": action,
                }
            )
    return used_by
