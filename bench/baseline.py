"""The benchmark's yardstick: a framework-free WSGI app doing the service's database work with psycopg.

For the requests the benchmark sends (set_key, view_key, the token list) it honours the service's
contract: the Bearer rules, the four ways of holding a permission, 403 before any lookup, the strict
JSON and key policy, 404 for unknown or expired tokens, 400 on a key clash, one audit event in the
same transaction, the same JSON bodies, no key in any response but ``view_key``'s. It does not
implement the list's filters, search or ordering parameters, nor the other endpoints.

It is as lean as honest code allows: one SQL statement per request, on one persistent connection per
process, with psycopg's automatic prepared statements. bench/run.py serves it with gunicorn and the
service's own gunicorn_conf.py, against its own copy of the data (``BASELINE_DSN``). It is not part
of the service and is never deployed.
"""

import base64
import hashlib
import hmac
import json
import os
import re
import uuid
from collections.abc import Callable
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import parse_qs, parse_qsl

import psycopg
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg.types.json import Jsonb

DSN = os.environ.get("BASELINE_DSN", "postgresql://postgres@127.0.0.1:5432/bench_baseline")
# The same derivation as django.utils.crypto.salted_hmac, so fingerprints match the service's.
_FINGERPRINT_KEY = hashlib.sha256(
    b"tokens-service.key-fingerprint" + os.environ.get("DJANGO_SECRET_KEY", "").encode()
).digest()


def _current_secret(name: str) -> tuple[str, bytes]:
    """The first ``id:base64`` entry of ``name``, as the service reads it (README, "Keys at rest")."""
    key_id, _, encoded = os.environ.get(name, "").split(",")[0].strip().partition(":")
    return key_id, base64.urlsafe_b64decode(encoded.replace("+", "-").replace("/", "_") + "==")


# Keys at rest, the same work as core.crypto: the stored key is AES-256-GCM ciphertext, the digest an HMAC.
_KEK_ID, _KEK = _current_secret("TOKEN_KEYS_ENCRYPTION_KEYS")
_PEPPER_ID, _PEPPER = _current_secret("TOKEN_KEYS_PEPPERS")
_AEAD = AESGCM(_KEK) if len(_KEK) == 32 else None
_AAD = b"tokens-service:token-key:v1"


def _digest(key: str) -> str:
    return f"hmac${_PEPPER_ID}$" + hmac.new(_PEPPER, key.encode(), hashlib.sha256).hexdigest()


def _encrypt(key: str) -> str:
    assert _AEAD is not None, "TOKEN_KEYS_ENCRYPTION_KEYS is required"
    nonce = os.urandom(12)
    sealed = base64.urlsafe_b64encode(nonce + _AEAD.encrypt(nonce, key.encode(), _AAD)).decode().rstrip("=")
    return f"gcm${_KEK_ID}${sealed}"


def _decrypt(stored: str) -> str:
    assert _AEAD is not None, "TOKEN_KEYS_ENCRYPTION_KEYS is required"
    data = base64.urlsafe_b64decode(stored.split("$", 2)[2] + "==")
    return _AEAD.decrypt(data[:12], data[12:], _AAD).decode()


KEY_MIN_LENGTH = int(os.environ.get("TOKEN_KEY_MIN_LENGTH", "") or 1)
RETENTION_DAYS = int(os.environ.get("EVENT_RETENTION_DAYS", "") or 365)
MAX_BODY = 64 * 1024
MASK = "********************"
GROUP_UUID_NAMESPACE = uuid.UUID("5f0c1a52-3d4e-4c1b-9a57-6f4c2b8e1d90")  # as core.avatars
_AVATAR_COLOURS = ("#3949ab", "#00897b", "#6d4c41", "#8e24aa", "#c62828", "#2e7d32", "#ef6c00", "#546e7a")

_SET_KEY = re.compile(r"^/(?:api/v3/)?core/tokens/([-a-zA-Z0-9_]+)/set_key/$")
_VIEW_KEY = re.compile(r"^/(?:api/v3/)?core/tokens/([-a-zA-Z0-9_]+)/view_key/$")
_LIST = re.compile(r"^/(?:api/v3/)?core/tokens/()$")
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
_SECRET_NAME = re.compile(r"key|token|secret|pass|auth|sig|cred|session|cookie", re.IGNORECASE)
_VISIBLE = re.compile(r"^[\x21-\x7e]+$")

Response = tuple[str, list[tuple[str, str]], bytes]

# --- SQL ----------------------------------------------------------------------------------------------
# The caller: an unexpired api token of an active user, found by the digest of the Bearer key.
_CALLER = """
caller AS (
    SELECT u.id, u.username, u.email, u.is_superuser
    FROM authentik_core_token ct JOIN authentik_core_user u ON u.id = ct.user_id
    WHERE ct.key_digest = %(digest)s AND ct.intent = 'api' AND u.is_active
      AND NOT (ct.expiring AND ct.expires IS NOT NULL AND ct.expires <= now())
)"""

# Whether the caller holds authentik_core.<codename>: superuser, user or group permission, or a user or
# group object permission on the token %(identifier)s.
_ALLOWED = """
perm AS (
    SELECT p.id FROM auth_permission p JOIN django_content_type t ON t.id = p.content_type_id
    WHERE t.app_label = 'authentik_core' AND t.model = 'token' AND p.codename = %(codename)s
),
target_pk AS (SELECT token_uuid::text AS pk FROM authentik_core_token WHERE identifier = %(identifier)s),
allowed AS (
    SELECT c.id, c.username, c.email FROM caller c
    WHERE c.is_superuser
       OR EXISTS (SELECT FROM authentik_core_user_user_permissions x JOIN perm ON perm.id = x.permission_id
                  WHERE x.user_id = c.id)
       OR EXISTS (SELECT FROM authentik_core_user_groups g
                  JOIN auth_group_permissions x ON x.group_id = g.group_id JOIN perm ON perm.id = x.permission_id
                  WHERE g.user_id = c.id)
       OR EXISTS (SELECT FROM guardian_userobjectpermission x JOIN perm ON perm.id = x.permission_id
                  JOIN target_pk ON target_pk.pk = x.object_pk WHERE x.user_id = c.id)
       OR EXISTS (SELECT FROM authentik_core_user_groups g
                  JOIN guardian_groupobjectpermission x ON x.group_id = g.group_id
                  JOIN perm ON perm.id = x.permission_id JOIN target_pk ON target_pk.pk = x.object_pk
                  WHERE g.user_id = c.id)
)"""

_NOT_EXPIRED = "NOT (tok.expiring AND tok.expires IS NOT NULL AND tok.expires <= now())"
_EVENT_INSERT = f"""
INSERT INTO authentik_events_event
    (event_uuid, "user", action, app, context, client_ip, created, expires, brand)
SELECT %(event_uuid)s::uuid, jsonb_build_object('pk', a.id, 'username', a.username, 'email', a.email),
    %(action)s::text, 'authentik_core',
    jsonb_build_object(%(summary_key)s::text, jsonb_build_object('app', 'authentik_core', 'model_name', 'token',
                       'pk', replace(t.token_uuid::text, '-', ''), 'name', t.identifier)) || %(context)s,
    %(client_ip)s::inet, clock_timestamp(), clock_timestamp() + interval '{RETENTION_DAYS} days', '{{}}'"""

# One statement, hence one implicit transaction in autocommit mode: the UPDATE takes the row lock, the
# INSERT reads the UPDATE's RETURNING, and both commit together or the statement fails as a whole.
SET_KEY_SQL = f"""
WITH {_CALLER}, {_ALLOWED},
updated AS (
    UPDATE authentik_core_token tok SET key = %(key)s, key_digest = %(new_digest)s
    FROM allowed
    WHERE tok.identifier = %(identifier)s AND {_NOT_EXPIRED}
    RETURNING tok.token_uuid, tok.identifier
),
event AS ({_EVENT_INSERT} FROM updated t, allowed a RETURNING 1)
SELECT EXISTS (SELECT FROM caller), EXISTS (SELECT FROM allowed), EXISTS (SELECT FROM event)"""

# The key is returned only together with its secret_view event, from the same statement.
VIEW_KEY_SQL = f"""
WITH {_CALLER}, {_ALLOWED},
target AS (
    SELECT tok.token_uuid, tok.identifier, tok.key FROM authentik_core_token tok
    WHERE tok.identifier = %(identifier)s AND {_NOT_EXPIRED} AND EXISTS (SELECT FROM allowed)
),
event AS ({_EVENT_INSERT} FROM target t, allowed a RETURNING 1)
SELECT EXISTS (SELECT FROM caller), EXISTS (SELECT FROM allowed),
       (SELECT t.key FROM target t WHERE EXISTS (SELECT FROM event))"""

CHECK_SQL = f"""
WITH {_CALLER}, {_ALLOWED}
SELECT EXISTS (SELECT FROM caller), EXISTS (SELECT FROM allowed), true"""

# Visibility as tokens_visible_to: everything for superusers and global view_token holders, otherwise
# the caller's own tokens and those it (or one of its groups) holds any object permission on. The count
# and the page come from one pass over the visible tokens; owners and their groups (as a JSON array) are
# read for the page's rows only.
LIST_SQL = """
WITH caller AS (
    SELECT u.id, u.is_superuser
    FROM authentik_core_token ct JOIN authentik_core_user u ON u.id = ct.user_id
    WHERE ct.key_digest = %(digest)s AND ct.intent = 'api' AND u.is_active
      AND NOT (ct.expiring AND ct.expires IS NOT NULL AND ct.expires <= now())
),
token_type AS (SELECT id FROM django_content_type WHERE app_label = 'authentik_core' AND model = 'token'),
sees_all AS (
    SELECT FROM caller c, auth_permission p, token_type
    WHERE p.content_type_id = token_type.id AND p.codename = 'view_token' AND (
        c.is_superuser
        OR EXISTS (SELECT FROM authentik_core_user_user_permissions x WHERE x.user_id = c.id AND x.permission_id = p.id)
        OR EXISTS (SELECT FROM authentik_core_user_groups g JOIN auth_group_permissions x ON x.group_id = g.group_id
                   WHERE g.user_id = c.id AND x.permission_id = p.id))
),
visible AS (
    SELECT tok.token_uuid, tok.managed, tok.identifier, tok.intent, tok.description, tok.expires, tok.expiring,
           tok.last_used, tok.last_used_ip, tok.allowed_ips, tok.user_id
    FROM authentik_core_token tok, caller c
    WHERE EXISTS (SELECT FROM sees_all) OR tok.user_id = c.id
       OR EXISTS (SELECT FROM guardian_userobjectpermission x, token_type
                  WHERE x.content_type_id = token_type.id AND x.user_id = c.id AND x.object_pk = tok.token_uuid::text)
       OR EXISTS (SELECT FROM authentik_core_user_groups g, guardian_groupobjectpermission x, token_type
                  WHERE x.group_id = g.group_id AND g.user_id = c.id AND x.content_type_id = token_type.id
                    AND x.object_pk = tok.token_uuid::text)
),
page AS (
    SELECT v.* FROM visible v
    ORDER BY v.identifier, v.expires, v.token_uuid
    LIMIT %(limit)s OFFSET %(offset)s
)
SELECT EXISTS (SELECT FROM caller), (SELECT count(*) FROM visible),
       p.token_uuid, p.managed, p.identifier, p.intent, p.description, p.expires, p.expiring,
       p.last_used, host(p.last_used_ip), p.allowed_ips,
       u.id, u.username, u.name, u.is_active, u.last_login, u.date_joined, u.is_superuser, u.email, u.attributes,
       u.path, u.type, u.uuid, u.password_change_date, u.last_updated,
       (SELECT coalesce(json_agg(json_build_array(g.id, g.name) ORDER BY g.id), '[]')
        FROM authentik_core_user_groups ug JOIN auth_group g ON g.id = ug.group_id WHERE ug.user_id = u.id)
FROM (SELECT) AS one LEFT JOIN (page p JOIN authentik_core_user u ON u.id = p.user_id) ON true
ORDER BY p.identifier, p.expires, p.token_uuid"""

# --- the database connection: one per process, reopened after a failure -------------------------------

_conn: psycopg.Connection[Any] | None = None


def _connection() -> psycopg.Connection[Any]:
    global _conn
    if _conn is None or _conn.closed:
        _conn = psycopg.connect(
            DSN,
            autocommit=True,
            connect_timeout=3,
            options="-c TimeZone=UTC -c lock_timeout=3000 -c statement_timeout=10000",
        )
    return _conn


def run(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Execute one statement (bench/count_queries.py wraps this function to count statements)."""
    return _connection().execute(sql, params).fetchall()


# --- responses ----------------------------------------------------------------------------------------


def _json(status: str, body: Any, request_id: str, *headers: tuple[str, str]) -> Response:
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return status, [("Content-Type", "application/json"), ("X-Request-ID", request_id), *headers], data


def _error(status: str, detail: str, code: str, request_id: str) -> Response:
    return _json(status, {"detail": detail, "code": code}, request_id)


_NOT_AUTHENTICATED = ("403 Forbidden", "Authentication credentials were not provided.", "not_authenticated")
_AUTH_FAILED = ("403 Forbidden", "Invalid or expired token.", "authentication_failed")
_DENIED = ("403 Forbidden", "You do not have permission to perform this action.", "permission_denied")
_NOT_FOUND = ("404 Not Found", "Not found.", "not_found")
_UNAVAILABLE = ("503 Service Unavailable", "The database is unavailable or busy; retry shortly.", "service_unavailable")


def _verdict(row: tuple[Any, ...], request_id: str, success: Callable[[], Response]) -> Response:
    authenticated, allowed, done = row
    if not authenticated:
        return _error(*_AUTH_FAILED, request_id)
    if not allowed:
        return _error(*_DENIED, request_id)
    if done is None or done is False:
        return _error(*_NOT_FOUND, request_id)
    return success()


# --- request parsing ----------------------------------------------------------------------------------


def _bearer_digest(environ: dict[str, Any]) -> str | bool | None:
    """The digest of the Bearer key; ``None`` without a header, ``False`` for a malformed credential."""
    header = environ.get("HTTP_AUTHORIZATION")
    if header is None:
        return None
    parts = header.split()
    if len(parts) != 2 or parts[0].lower() != "bearer" or len(parts[1]) > 1024 or not _VISIBLE.match(parts[1]):
        return False
    return _digest(parts[1])


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member")
    return result


def _reject_constant(_: str) -> None:
    raise ValueError("NaN and Infinity are not JSON")


def _key_or_errors(body: bytes) -> tuple[str | None, dict[str, list[str]] | None]:
    """The submitted key, or the 400 body (which never quotes the value)."""
    try:
        data = json.loads(body.decode(), object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None, {"non_field_errors": ["Malformed JSON."]}
    if not isinstance(data, dict):
        return None, {"non_field_errors": ["Invalid data. Expected a dictionary."]}
    if "key" not in data:
        return None, {"key": ["This field is required."]}
    key = data["key"]
    if not isinstance(key, str):
        return None, {"key": ["Not a valid string."]}
    if not key:
        return None, {"key": ["This field may not be blank."]}
    if len(key) > 1024:
        return None, {"key": ["Ensure this field has no more than 1024 characters."]}
    if not _VISIBLE.match(key):
        return None, {"key": ["Only visible ASCII characters (0x21-0x7E) are allowed."]}
    if len(key) < KEY_MIN_LENGTH:
        return None, {"key": [f"Ensure this field has at least {KEY_MIN_LENGTH} characters."]}
    return key, None


def _request_context(environ: dict[str, Any], request_id: str) -> dict[str, Any]:
    args = {
        name[:512]: MASK if _SECRET_NAME.search(name) else value[:512]
        for name, value in parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    }
    return {
        "path": environ.get("PATH_INFO", "")[:512],
        "method": environ["REQUEST_METHOD"],
        "user_agent": environ.get("HTTP_USER_AGENT", "")[:512],
        "request_id": request_id,
        "args": args,
    }


def _event_params(environ: dict[str, Any], request_id: str, action: str, summary_key: str) -> dict[str, Any]:
    return {
        "event_uuid": uuid.uuid4(),
        "action": action,
        "summary_key": summary_key,
        "client_ip": environ.get("REMOTE_ADDR") or None,
    }


# --- endpoints ----------------------------------------------------------------------------------------


def set_key(environ: dict[str, Any], identifier: str, digest: str, request_id: str) -> Response:
    if environ["REQUEST_METHOD"] != "POST":
        return _error("405 Method Not Allowed", "Method not allowed.", "method_not_allowed", request_id)
    params: dict[str, Any] = {"digest": digest, "codename": "set_token_key", "identifier": identifier}
    length = int(environ.get("CONTENT_LENGTH") or 0)
    problem: tuple[str, Any] | None = None
    key: str | None = None
    if length > MAX_BODY:
        problem = ("413 Request Entity Too Large", {"detail": "Request body too large.", "code": "request_too_large"})
    elif environ.get("CONTENT_TYPE", "").split(";")[0].strip() != "application/json":
        problem = (
            "415 Unsupported Media Type",
            {"detail": "Unsupported media type.", "code": "unsupported_media_type"},
        )
    else:
        key, errors = _key_or_errors(environ["wsgi.input"].read(length))
        if errors is not None:
            problem = ("400 Bad Request", errors)
    if problem is not None or key is None:
        # Authentication and authorization come first: without the permission the answer is 403,
        # whatever the body.
        row = run(CHECK_SQL, params)[0]
        return _verdict(row, request_id, lambda: _json(problem[0], problem[1], request_id))  # type: ignore[index]
    params.update(_event_params(environ, request_id, "model_updated", "model"))
    params["key"] = _encrypt(key)
    params["new_digest"] = _digest(key)
    params["context"] = Jsonb(
        {
            "changed_fields": ["key"],
            "key_fingerprint": hmac.new(_FINGERPRINT_KEY, key.encode(), hashlib.sha256).hexdigest(),
            "http_request": _request_context(environ, request_id),
        }
    )
    try:
        row = run(SET_KEY_SQL, params)[0]
    except psycopg.errors.UniqueViolation:
        return _json("400 Bad Request", {"key": ["This key cannot be used; choose another."]}, request_id)
    no_content = ("204 No Content", [("Cache-Control", "no-store"), ("X-Request-ID", request_id)], b"")
    return _verdict(row, request_id, lambda: no_content)


def view_key(environ: dict[str, Any], identifier: str, digest: str, request_id: str) -> Response:
    if environ["REQUEST_METHOD"] != "GET":
        return _error("405 Method Not Allowed", "Method not allowed.", "method_not_allowed", request_id)
    params: dict[str, Any] = {"digest": digest, "codename": "view_token_key", "identifier": identifier}
    params.update(_event_params(environ, request_id, "secret_view", "secret"))
    params["context"] = Jsonb({"http_request": _request_context(environ, request_id)})
    row = run(VIEW_KEY_SQL, params)[0]
    return _verdict(
        row, request_id, lambda: _json("200 OK", {"key": _decrypt(row[2])}, request_id, ("Cache-Control", "no-store"))
    )


def _when(value: datetime | None) -> str | None:
    """As DRF renders a datetime: ISO 8601, UTC as ``Z``."""
    if value is None:
        return None
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _avatar(name: str, username: str, user_uuid: uuid.UUID) -> str:
    """As core.avatars.avatar_data_uri."""
    words = (name or username).split()
    initials = "".join(word[0] for word in words[:2] if word[0].isalnum()).upper() or "?"
    colour = _AVATAR_COLOURS[user_uuid.int % len(_AVATAR_COLOURS)]
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64" viewBox="0 0 64 64">'
        f'<rect width="64" height="64" fill="{colour}"/>'
        '<text x="32" y="32" dy=".35em" text-anchor="middle" font-family="sans-serif" font-size="26" '
        f'fill="#ffffff">{escape(initials)}</text></svg>'
    )
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode("ascii")


def _token_json(row: tuple[Any, ...]) -> dict[str, Any]:
    (
        _,
        token_uuid,
        managed,
        identifier,
        intent,
        description,
        expires,
        expiring,
        last_used,
        last_used_ip,
        allowed_ips,
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
        groups,
    ) = row
    return {
        "pk": str(token_uuid),
        "managed": managed,
        "identifier": identifier,
        "intent": intent,
        "user": user_id,
        "user_obj": {
            "pk": user_id,
            "username": username,
            "name": name,
            "is_active": is_active,
            "last_login": _when(last_login),
            "date_joined": _when(date_joined),
            "is_superuser": is_superuser,
            "groups": [str(uuid.uuid5(GROUP_UUID_NAMESPACE, str(pk))) for pk, _ in groups],
            "groups_obj": [
                {
                    "pk": str(uuid.uuid5(GROUP_UUID_NAMESPACE, str(pk))),
                    "num_pk": pk,
                    "name": group_name,
                    "is_superuser": False,
                    "attributes": {},
                }
                for pk, group_name in groups
            ],
            "roles_obj": [],
            "email": email,
            "avatar": _avatar(name, username, user_uuid),
            "attributes": attributes,
            "uid": hashlib.sha256(f"tokens-service:user:{user_uuid}".encode()).hexdigest(),
            "path": path,
            "type": user_type,
            "uuid": str(user_uuid),
            "password_change_date": _when(password_change_date),
            "last_updated": _when(last_updated),
        },
        "description": description,
        "expires": _when(expires),
        "expiring": expiring,
        "last_used": _when(last_used),
        "last_used_ip": last_used_ip,
        "allowed_ips": allowed_ips,
    }


def token_list(environ: dict[str, Any], _: str, digest: str, request_id: str) -> Response:
    if environ["REQUEST_METHOD"] != "GET":
        return _error("405 Method Not Allowed", "Method not allowed.", "method_not_allowed", request_id)
    query = parse_qs(environ.get("QUERY_STRING", ""))
    try:
        page = int(query.get("page", ["1"])[0])
        size = min(max(int(query.get("page_size", ["20"])[0]), 1), 100)
    except ValueError:
        page, size = 0, 20
    if page < 1:
        return _error("404 Not Found", "Invalid page.", "not_found", request_id)
    rows = run(LIST_SQL, {"digest": digest, "limit": size, "offset": (page - 1) * size})
    if not rows[0][0]:
        return _error(*_AUTH_FAILED, request_id)
    results = [_token_json(row[1:]) for row in rows if row[2] is not None]
    count = rows[0][1] or 0
    if not results and page > 1:
        return _error("404 Not Found", "Invalid page.", "not_found", request_id)
    pages = max(1, -(-count // size))
    body = {
        "pagination": {
            "next": page + 1 if page < pages else 0,
            "previous": page - 1 if page > 1 else 0,
            "count": count,
            "current": page,
            "total_pages": pages,
            "start_index": (page - 1) * size + 1 if count else 0,
            "end_index": (page - 1) * size + len(results),
        },
        "results": results,
        "autocomplete": {},
    }
    return _json("200 OK", body, request_id)


ROUTES: tuple[tuple[re.Pattern[str], Callable[[dict[str, Any], str, str, str], Response]], ...] = (
    (_SET_KEY, set_key),
    (_VIEW_KEY, view_key),
    (_LIST, token_list),
)


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    global _conn
    supplied = environ.get("HTTP_X_REQUEST_ID", "")
    request_id = supplied if _SAFE_REQUEST_ID.match(supplied) else uuid.uuid4().hex
    path = environ.get("PATH_INFO", "")
    status, headers, body = _error(*_NOT_FOUND, request_id)
    if path == "/-/health/ready/":
        status, headers, body = "200 OK", [("Content-Type", "text/plain")], b"ok"
    for pattern, endpoint in ROUTES:
        match = pattern.match(path)
        if match is None:
            continue
        digest = _bearer_digest(environ)
        if digest is None:
            status, headers, body = _error(*_NOT_AUTHENTICATED, request_id)
        elif digest is False:
            status, headers, body = _error(*_AUTH_FAILED, request_id)
        else:
            try:
                status, headers, body = endpoint(environ, match.group(1), str(digest), request_id)
            except psycopg.OperationalError:
                if _conn is not None:
                    _conn.close()
                _conn = None
                status, headers, body = _error(*_UNAVAILABLE, request_id)
        break
    start_response(status, [*headers, ("Content-Length", str(len(body)))])
    return [body]
