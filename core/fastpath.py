"""The fast path: every hand-written SQL statement of the service, for PostgreSQL only.

``core.selectors`` and ``core.services`` are the contract, in plain ORM. The few operations every request
makes (bearer lookup, permission check, ``set_key``'s write) also exist here as SQL written once, behind
the same signatures, because building their querysets costs more CPU than the database spends answering
them and ``set_key`` fits in one statement. ``enabled()`` chooses this path (setting ``TOKENS_FAST_PATH``,
default on; it applies on PostgreSQL only). ``tests/services/test_fastpath_differential.py`` runs both paths over
the same scenarios and requires identical rows, events and errors.

Rules are not restated here where they can be derived: table and column names come from the models'
metadata, the expiry condition is compiled from ``TokenQuerySet.expired_q``, the event's values come from
``events.services.event_values`` and the outcome of ``set_key`` is decided by the same function as the ORM
path (``core.services.set_key_outcome``). Only model metadata is formatted into SQL; values are always
parameters.
"""

import functools
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from weakref import WeakKeyDictionary

from django.conf import settings
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, models, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.expressions import RawSQL
from django.utils import timezone
from guardian.models import GroupObjectPermission, UserObjectPermission

from core.crypto import decrypt_key, encrypt_key, key_lookup_digests
from core.models import Token, TokenIntents, User
from events.models import Event, EventAction
from events.services import event_values
from tokens_service.db import prepared_plans
from tokens_service.request_meta import RequestMeta

if TYPE_CHECKING:
    from core.selectors import BearerMatch

_M = TypeVar("_M", bound=models.Model)
_Converter = Callable[[Any, Any, BaseDatabaseWrapper], Any]
_ConverterKey = tuple[type[models.Model], frozenset[str]]
_CONVERTERS: WeakKeyDictionary[BaseDatabaseWrapper, dict[_ConverterKey, list[tuple[int, Any, list[_Converter]]]]]
_CONVERTERS = WeakKeyDictionary()
# Stands for "now" while the expiry rule is compiled once; replaced by the real time at each call.
_NOW_PLACEHOLDER = datetime(1, 1, 2, tzinfo=UTC)


def enabled() -> bool:
    """Whether the hand-written SQL serves (``TOKENS_FAST_PATH``, default on) on this database (PostgreSQL)."""
    return bool(getattr(settings, "TOKENS_FAST_PATH", True)) and connections[DEFAULT_DB_ALIAS].vendor == "postgresql"


def _db() -> BaseDatabaseWrapper:
    return connections[DEFAULT_DB_ALIAS]  # this thread's connection, looked up once (not through the proxy)


@contextmanager
def _cursor(db: BaseDatabaseWrapper) -> Iterator[Any]:
    """A cursor whose statements may be prepared: each looks rows up by a unique key or by the caller, so
    one plan suits every value (``tokens_service.db``)."""
    with prepared_plans(), db.cursor() as cursor:
        yield cursor


def _q(name: str) -> str:
    return _db().ops.quote_name(name)


@functools.cache
def _expired_sql() -> str:
    """``TokenQuerySet.expired_q`` compiled to SQL on the token table, with ``%(now)s`` for the time.

    Derived from the queryset method, so the SQL cannot drift from the rule the ORM applies.
    """
    db = _db()
    query = Token.objects.filter(Token.objects.expired_q(_NOW_PLACEHOLDER)).query
    sql, params = query.where.as_sql(query.get_compiler(connection=db), db)
    placeholder = db.ops.adapt_datetimefield_value(_NOW_PLACEHOLDER)
    if list(params) != [placeholder] or sql.count("%s") != 1:
        raise AssertionError(f"the expiry rule no longer compiles to one time comparison: {sql}")
    return sql.replace("%s", "%(now)s")


def _now() -> Any:
    return _db().ops.adapt_datetimefield_value(timezone.now())


# Columns the bearer lookup does not read: the key itself (ciphertext; authentication matches digests, and
# decrypting it on every request would be wasted work). The contract path defers it too.
BEARER_DEFERRED = frozenset({"key"})


@functools.cache
def _fields(model: type[models.Model], deferred: frozenset[str] = frozenset()) -> list[Any]:
    return [field for field in model._meta.concrete_fields if field.attname not in deferred]


def _columns(model: type[models.Model], alias: str, deferred: frozenset[str] = frozenset()) -> str:
    """The model's concrete columns but ``deferred``, in field order, as ``alias."column"`` SQL."""
    return ", ".join(f"{alias}.{_q(field.column)}" for field in _fields(model, deferred))


@functools.cache
def _attnames(model: type[models.Model], deferred: frozenset[str] = frozenset()) -> list[str]:
    return [field.attname for field in _fields(model, deferred)]


def orm_converters(
    db: BaseDatabaseWrapper, model: type[models.Model], fields: Sequence[Any]
) -> list[tuple[int, Any, list[_Converter]]]:
    """The functions a queryset applies to the values of ``fields`` of ``model`` read from ``db``, by the
    field's position in ``fields`` (fields without any are left out)."""
    converters = []
    for index, field in enumerate(fields):
        column = field.get_col(model._meta.db_table)
        functions = [*db.ops.get_db_converters(column), *field.get_db_converters(db)]
        if functions:
            converters.append((index, column, functions))
    return converters


def _from_row(
    db: BaseDatabaseWrapper, model: type[_M], values: Sequence[Any], deferred: frozenset[str] = frozenset()
) -> _M:
    """An instance of ``model`` from its ``_columns`` (the same ``deferred``) as the database returned them.

    Applies the converters the ORM would (JSON arrives as text), computed once per connection object,
    then builds the instance like a queryset does (deferred fields are loaded if ever read).
    """
    per_model = _CONVERTERS.get(db)
    if per_model is None:
        per_model = _CONVERTERS[db] = {}
    converters = per_model.get((model, deferred))
    if converters is None:
        converters = per_model[(model, deferred)] = orm_converters(db, model, _fields(model, deferred))
    row = list(values)
    for index, column, functions in converters:
        for function in functions:
            row[index] = function(row[index], column, db)
    return model.from_db(db.alias, _attnames(model, deferred), row)


# --- bearer lookup --------------------------------------------------------------------------------------


def _digest_params(digests: Sequence[str]) -> dict[str, str]:
    return {f"digest{index}": digest for index, digest in enumerate(digests)}


@functools.cache
def _digests_sql(count: int) -> str:
    """``IN`` list of ``count`` scalar parameters (``_digest_params``).

    Scalars rather than one array parameter: PostgreSQL then estimates a prepared statement's generic plan
    as well as a custom one and keeps reusing it. With ``= ANY(array)`` it guesses ten elements, finds the
    generic plan dearer than the custom ones and plans the statement again on every execution (measured:
    the bearer lookup took 330 us per execution instead of 140).
    """
    return "(" + ", ".join(f"%(digest{index})s" for index in range(count)) + ")"


@functools.cache
def _bearer_sql(count: int) -> str:
    token, user = _q(Token._meta.db_table), _q(User._meta.db_table)
    digests = _digests_sql(count)
    return f"""
SELECT {_columns(Token, token, BEARER_DEFERRED)}, {_columns(User, "u")}
FROM {token} INNER JOIN {user} u ON u.id = {token}.user_id
WHERE ({token}.key_digest IN {digests} OR {token}.previous_key_digest IN {digests})
  AND {token}.intent = %(intent)s AND u.is_active AND NOT {_expired_sql()}"""  # noqa: S608


def bearer_match(key: str) -> "BearerMatch | None":
    """``core.selectors.bearer_match`` in one hand-written query; the same function picks the answer."""
    from core.selectors import choose_bearer_match  # the contract module imports this one

    db = _db()
    digests = key_lookup_digests(key)
    now = timezone.now()
    with _cursor(db) as cursor:
        params: dict[str, Any] = {"intent": TokenIntents.API.value, "now": db.ops.adapt_datetimefield_value(now)}
        cursor.execute(_bearer_sql(len(digests)), params | _digest_params(digests))
        rows = cursor.fetchall()
    split = len(_fields(Token, BEARER_DEFERRED))
    candidates = []
    for row in rows:
        token = _from_row(db, Token, row[:split], BEARER_DEFERRED)
        token.user = _from_row(db, User, row[split:])
        candidates.append(token)
    return choose_bearer_match(candidates, digests, now)


# --- permission checks ----------------------------------------------------------------------------------


@functools.cache
def _token_type_sql() -> str:
    return f"(SELECT id FROM {ContentType._meta.db_table} WHERE app_label = 'authentik_core' AND model = 'token')"  # noqa: S608


@functools.cache
def _perm_sql(object_pk: str | None) -> str:
    """An SQL boolean: the user ``%(user_id)s`` holds ``authentik_core.%(codename)s`` as a user or group
    permission, or (unless ``object_pk`` is None) as an object permission of the user or one of its
    groups on the token whose ``str(pk)`` is the SQL expression ``object_pk``.

    One IN over a UNION ALL of the permission ids held in each way plans about 2.5 times faster than
    four correlated EXISTS, and the object branches are exact lookups in guardian's (user, content type,
    object_pk) index (guardian stores ``str(uuid)``, which is what PostgreSQL's ``uuid::text`` gives).
    """
    token_type = _token_type_sql()
    user_groups = User.groups.through._meta.db_table
    user_perms, group_perms = User.user_permissions.through._meta.db_table, Group.permissions.through._meta.db_table
    user_objects, group_objects = UserObjectPermission._meta.db_table, GroupObjectPermission._meta.db_table
    branches = [
        f"SELECT permission_id FROM {user_perms} WHERE user_id = %(user_id)s",  # noqa: S608
        f"SELECT gp.permission_id FROM {user_groups} ug INNER JOIN {group_perms} gp"  # noqa: S608
        " ON gp.group_id = ug.group_id WHERE ug.user_id = %(user_id)s",
    ]
    if object_pk is not None:
        on_token = f"content_type_id = {token_type} AND object_pk = {object_pk}"
        branches += [
            f"SELECT permission_id FROM {user_objects} WHERE user_id = %(user_id)s AND {on_token}",  # noqa: S608
            f"SELECT go.permission_id FROM {user_groups} ug INNER JOIN {group_objects} go"  # noqa: S608
            f" ON go.group_id = ug.group_id WHERE ug.user_id = %(user_id)s AND go.{on_token}",
        ]
    union = "\n        UNION ALL ".join(branches)
    return f"""EXISTS (
    SELECT 1 FROM {Permission._meta.db_table}
    WHERE codename = %(codename)s AND content_type_id = {token_type} AND id IN (
        {union}
    )
)"""  # noqa: S608


def _exists(sql: str, params: dict[str, Any]) -> bool:
    with _cursor(_db()) as cursor:
        cursor.execute(f"SELECT {sql}", params)
        row = cursor.fetchone()
    return bool(row and row[0])


@functools.cache
def _pk_of_identifier_sql() -> str:
    return f"(SELECT token_uuid::text FROM {Token._meta.db_table} WHERE identifier = %(identifier)s)"  # noqa: S608


def user_has_token_perm(user: User, codename: str, identifier: str) -> bool:
    """``core.selectors.user_has_token_perm`` for an active non-superuser, in one query."""
    sql = _perm_sql(_pk_of_identifier_sql())
    return _exists(sql, {"codename": codename, "user_id": user.pk, "identifier": identifier})


def user_has_token_perm_on_pk(user: User, codename: str, token_pk: uuid.UUID) -> bool:
    """``core.selectors.user_has_token_perm_on_pk`` for an active non-superuser, in one query."""
    sql = _perm_sql("%(object_pk)s")
    return _exists(sql, {"codename": codename, "user_id": user.pk, "object_pk": str(token_pk)})


def user_has_global_token_perm(user: User, codename: str) -> bool:
    """``core.selectors.user_has_global_perm`` for a token permission of an active non-superuser, in one query
    (the user and group branches of ``_perm_sql``). Every token list of such a caller asks it: building the
    ORM version cost about 1 ms of CPU, more than the rest of the visibility rule."""
    return _exists(_perm_sql(None), {"codename": codename, "user_id": user.pk})


# --- visibility -----------------------------------------------------------------------------------------


@functools.cache
def _visible_sql() -> str:
    # guardian stores object_pk as str(uuid), with dashes: cast it to uuid to compare with the token's key
    # through its index (object permissions on tokens are only ever written by this service, from a token's
    # pk; a malformed one would fail the query, a 503, never widen it).
    user_groups = User.groups.through._meta.db_table
    token_type = f"(SELECT id FROM {ContentType._meta.db_table} WHERE app_label = %s AND model = %s)"  # noqa: S608
    return f"""
SELECT token_uuid FROM {Token._meta.db_table} WHERE user_id = %s
UNION
SELECT object_pk::uuid FROM {UserObjectPermission._meta.db_table} WHERE user_id = %s AND content_type_id = {token_type}
UNION
SELECT go.object_pk::uuid FROM {GroupObjectPermission._meta.db_table} go
INNER JOIN {user_groups} ug ON ug.group_id = go.group_id
WHERE ug.user_id = %s AND go.content_type_id = {token_type}"""  # noqa: S608


def visible_token_pks(user: User) -> RawSQL:
    """The pks of the tokens ``core.selectors.tokens_visible_to`` lets an active user without the global
    ``view_token`` see, as a subquery for ``pk__in``: one ``UNION`` of three index lookups (own tokens, the
    user's and its groups' object permissions)."""
    params = [user.pk, user.pk, "authentik_core", "token", user.pk, "authentik_core", "token"]
    return RawSQL(_visible_sql(), params)  # noqa: S611 - model metadata only; every value is a parameter


# --- usage ----------------------------------------------------------------------------------------------


@functools.cache
def _record_use_sql() -> str:
    token = _q(Token._meta.db_table)
    # A row locked by a writer (set_key, rotate, an update) is skipped rather than waited for; one
    # statement in autocommit mode, so no BEGIN/COMMIT round trips.
    return f"""
UPDATE {token} SET last_used = %(now)s, last_used_ip = %(ip)s
WHERE token_uuid = (
    SELECT token_uuid FROM {token}
    WHERE token_uuid = %(token_pk)s AND (last_used IS NULL OR last_used <= %(stale_before)s)
    FOR UPDATE SKIP LOCKED
)"""  # noqa: S608


def token_record_use(*, token_pk: uuid.UUID, ip: str | None, now: datetime, stale_before: datetime) -> bool:
    """``core.usage``'s recording of a token's use, in one statement; whether a row was written."""
    db = _db()
    with _cursor(db) as cursor:
        cursor.execute(_record_use_sql(), {"now": now, "ip": ip, "token_pk": token_pk, "stale_before": stale_before})
        return cursor.rowcount == 1


# --- set_key --------------------------------------------------------------------------------------------


def _caller_kind(actor: User) -> str:
    return "inactive" if not actor.is_active else "superuser" if actor.is_superuser else "user"


def _caller_perm_sql(caller: str) -> tuple[str, str]:
    """SQL booleans for a caller of kind ``caller`` (``_caller_kind``): whether it holds
    ``%(codename)s`` on the locked ``target`` row, and whether it holds it globally."""
    if caller == "superuser":
        return "TRUE", "TRUE"
    if caller == "inactive":
        return "FALSE", "FALSE"
    return _perm_sql("target.token_uuid::text"), _perm_sql(None)


def _event_insert_sql(summary_key: str) -> str:
    """An ``INSERT`` of one event from the ``%(event_...)s`` parameters (``_event_params``), with the token's
    pk, which only the statement knows, written into ``context[summary_key].pk`` from a ``token_uuid``."""
    event = _q(Event._meta.db_table)
    return f"""INSERT INTO {event} (event_uuid, "user", action, app, context, client_ip, created, expires, brand)
    SELECT %(event_uuid)s::uuid, %(event_user)s::jsonb, %(event_action)s, %(event_app)s,
        jsonb_set(%(event_context)s::jsonb, '{{{summary_key},pk}}', to_jsonb(replace(token_uuid::text, '-', ''))),
        %(event_client_ip)s::inet, clock_timestamp(), clock_timestamp() + %(event_retention)s::interval,
        '{{}}'::jsonb"""


def _event_params(
    action: EventAction, actor: User, request_meta: RequestMeta, context: dict[str, Any]
) -> dict[str, Any]:
    """The parameters of ``_event_insert_sql``, from ``events.services.event_values`` as every event is built."""
    values = event_values(action=action, actor=actor, request_meta=request_meta, app="authentik_core", context=context)
    return {
        "event_uuid": uuid.uuid4(),
        "event_user": json.dumps(values["user"]),
        "event_action": values["action"].value,
        "event_app": values["app"],
        "event_context": json.dumps(values["context"]),
        "event_client_ip": values["client_ip"],
        "event_retention": settings.EVENT_RETENTION,
    }


@functools.cache
def _set_key_sql(caller: str, digest_count: int) -> str:
    """One statement that locks the token named by the identifier, decides, writes and audits.

    ``target`` locks the row (``FOR UPDATE``; a concurrent writer is waited for and the row re-read, so a
    rename in between makes it miss, never hit another token). ``decision`` judges that locked row: the
    permission on its own pk (``caller``: ``superuser`` holds it, ``inactive`` never does, ``user``
    asks the four permission sources), the expiry rule, and whether another token holds the new key's
    digest (checked here, so a collision is an answer and not a unique-constraint error in the server
    log; the constraint still catches a concurrent commit of the same key). ``updated`` writes only when
    all three allow, and ``audited`` inserts the event from ``updated``'s row, so there is an event
    exactly when the key changed. The final row reports the decision for
    ``core.services.set_key_outcome``; ``global_perm`` matters only when no token was found, and only then
    is it evaluated (``CASE`` runs its subquery lazily).
    """
    token = _q(Token._meta.db_table)
    permitted, global_perm = _caller_perm_sql(caller)
    return f"""
WITH target AS (
    SELECT token_uuid, {_expired_sql()} AS expired FROM {token}
    WHERE identifier = %(identifier)s AND (%(token_pk)s::uuid IS NULL OR token_uuid = %(token_pk)s::uuid)
    FOR UPDATE
), decision AS (
    SELECT target.token_uuid, target.expired, {permitted} AS permitted,
        EXISTS (SELECT 1 FROM {token} other WHERE other.key_digest IN {_digests_sql(digest_count)}
                AND other.token_uuid <> target.token_uuid) AS collides
    FROM target
), updated AS (
    UPDATE {token} SET {_q("key")} = %(key)s, {_q("key_digest")} = %(digest)s,
        previous_key_digest = NULL, previous_key_expires = NULL
    FROM decision
    WHERE {token}.token_uuid = decision.token_uuid AND decision.permitted
        AND NOT decision.expired AND NOT decision.collides
    RETURNING {token}.token_uuid
), audited AS (
    {_event_insert_sql("model")}
    FROM updated
    RETURNING 1
)
SELECT decision.token_uuid, decision.permitted, decision.expired, decision.collides,
    (SELECT count(*) FROM audited) > 0 AS written,
    CASE WHEN decision.token_uuid IS NULL THEN {global_perm} END AS global_perm
FROM (SELECT 1) AS one LEFT JOIN decision ON TRUE"""  # noqa: S608


def token_set_key(
    *, token_identifier: str, key: str, actor: User, request_meta: RequestMeta, token_pk: uuid.UUID | None = None
) -> None:
    """``core.services.token_set_key`` in one statement (see ``_set_key_sql``).

    In autocommit mode the statement is its own transaction: no BEGIN/COMMIT round trips, and the row
    lock is held only while it runs. The event's timestamps come from ``clock_timestamp()``, read after
    the lock is granted, so the events of one token are ordered as their changes were committed.
    """
    from core import services  # the contract module imports this one

    # "pk" is filled in by the statement, from the row it updated.
    context = services.set_key_event_context(token_identifier=token_identifier, token_pk=None, key=key)
    digests = key_lookup_digests(key)  # the current one first (core.crypto)
    params = {
        "identifier": token_identifier,
        "token_pk": token_pk,
        "now": _now(),
        "digest": digests[0],  # the current pepper's: what is stored
        # The stored key is ciphertext (core.crypto): CPU only, no extra statement.
        "key": encrypt_key(key),
        "codename": "set_token_key",
        "user_id": actor.pk,
        **_event_params(EventAction.MODEL_UPDATED, actor, request_meta, context),
    }
    db = _db()
    try:
        # Inside a caller's transaction (the admin, tests), a savepoint lets a failure undo just this
        # statement; in autocommit mode the statement is its own transaction already.
        with transaction.atomic() if db.in_atomic_block else nullcontext(), _cursor(db) as cursor:
            # Every digest the key may be stored under (each configured pepper, the legacy one): a collision
            # with a row not yet re-digested during a pepper rotation is still found.
            cursor.execute(_set_key_sql(_caller_kind(actor), len(digests)), params | _digest_params(digests))
            token_pk, permitted, expired, collides, written, global_perm = cursor.fetchone()
    except IntegrityError as exc:
        # The last line of defence: another transaction committed the same key after this statement's
        # snapshot. Nothing of the statement was kept.
        services.report_key_collision(actor=actor, request_meta=request_meta, token_summary={"name": token_identifier})
        raise services.KeyInUse from exc
    services.set_key_outcome(
        token_pk=token_pk,
        permitted=bool(permitted),
        global_perm=bool(global_perm),
        expired=bool(expired),
        collides=bool(collides),
        written=bool(written),
        token_identifier=token_identifier,
        actor=actor,
        request_meta=request_meta,
    )


# --- view_key -------------------------------------------------------------------------------------------


@functools.cache
def _view_key_sql(caller: str) -> str:
    """One statement that locks the token named by the identifier, decides, audits and reads its key.

    As ``_set_key_sql``: ``target`` locks the row, ``decision`` judges that row (the permission on its own
    pk, the expiry rule), ``audited`` writes the ``secret_view`` event only when both allow, and the key is
    returned only when that event was written, so no key leaves without its audit record.
    """
    token = _q(Token._meta.db_table)
    permitted, global_perm = _caller_perm_sql(caller)
    return f"""
WITH target AS (
    SELECT token_uuid, {_q("key")} AS stored_key, {_expired_sql()} AS expired FROM {token}
    WHERE identifier = %(identifier)s
    FOR UPDATE
), decision AS (
    SELECT target.token_uuid, target.stored_key, target.expired, {permitted} AS permitted FROM target
), audited AS (
    {_event_insert_sql("secret")}
    FROM decision
    WHERE decision.permitted AND NOT decision.expired
    RETURNING 1
)
SELECT decision.token_uuid, decision.permitted, decision.expired,
    CASE WHEN (SELECT count(*) FROM audited) > 0 THEN decision.stored_key END,
    CASE WHEN decision.token_uuid IS NULL THEN {global_perm} END AS global_perm
FROM (SELECT 1) AS one LEFT JOIN decision ON TRUE"""  # noqa: S608


def token_view_key(*, token_identifier: str, actor: User, request_meta: RequestMeta) -> str:
    """``core.services.token_view_key`` in one statement (see ``_view_key_sql``); the same refusals."""
    from core import services  # the contract module imports this one

    # "pk" is filled in by the statement, from the row it read.
    summary = services.token_summary(token_identifier=token_identifier, token_pk=None)
    params = {
        "identifier": token_identifier,
        "now": _now(),
        "codename": "view_token_key",
        "user_id": actor.pk,
        **_event_params(EventAction.SECRET_VIEW, actor, request_meta, {"secret": summary}),
    }
    db = _db()
    with transaction.atomic() if db.in_atomic_block else nullcontext(), _cursor(db) as cursor:
        cursor.execute(_view_key_sql(_caller_kind(actor)), params)
        token_pk, permitted, expired, stored_key, global_perm = cursor.fetchone()
    services.refuse_unless_allowed(
        token_pk=token_pk, permitted=bool(permitted), global_perm=bool(global_perm), expired=bool(expired)
    )
    # The column holds ciphertext (core.crypto), as EncryptedKeyField reads it.
    return decrypt_key(stored_key)
