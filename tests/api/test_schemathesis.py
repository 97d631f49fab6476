"""Property-based API testing with schemathesis against the live schema of a real gunicorn process.

For each identity (a superuser, and a user without any permission) and each mount (``/api/v3`` and the
root), every operation of the schema the server publishes at ``/api/v3/schema/`` is called with cases
schemathesis generates from that schema: valid ones (positive mode) and ones that violate it (negative
mode). Every response must pass schemathesis' checks: no 5xx, a documented status, the documented
content type and headers, a body that matches the documented schema, a 4xx for every schema-violating
request, and (``ignored_auth``, for each 2xx) a 403 for the same request without credentials and with
invalid ones. In place of the built-in ``positive_data_acceptance``, ``positive_data_accepted`` below
lets a valid request get a 400 only for the semantic rules a schema cannot express (uniqueness, owner
and intent rules) or for a NUL in a string; any other rejection of valid data fails.

Reaching real objects: generated identifiers almost never name an existing token or event, so about
half of the cases get a seeded identifier in their path, a seeded user in the body's ``user``, and no
``page`` (a random page is past the last one). The two tokens used for authentication are never offered
as targets: set_key, PUT, PATCH and DELETE run against the other seeded tokens (including other tokens
of the same two users), the seeds a previous operation deleted or renamed are re-created before each
operation, and each run ends by asserting that both identities still authenticate and, on ``/api/v3``,
that seeded objects were reached (2xx answers); a generated identifier that names an authentication
token is replaced. Excluding set_key or DELETE from the run instead would leave the two most important
writes unfuzzed.

The runs start their own server after seeding: the session ``live`` server's workers cache content-type
ids, which the flush of any earlier transactional test renumbers, so the object-permission grant of a
token creation fails there with a 500 that has nothing to do with the API. Abuse limits are off in that
server (``start_server``'s default), so no 429 interferes. Hypothesis runs derandomized, each operation
with a seed derived from its label (the same cases on every run and in CI), with no example database and
no deadline (each example is a network round trip). Schemathesis' pytest integration for schemas that
exist only at run time (``schemathesis.pytest.from_fixture``) fails with the pinned pytest 9.2 (it
reads ``Item._nodeid``, which pytest no longer has), so the operations are driven here with
``APIOperation.as_strategy`` and ``@given``, the documented way to use schemathesis outside its plugin.
"""

import json
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
import schemathesis
import yaml
from django.conf import settings as django_settings
from django.contrib.auth.models import Group
from django.utils import timezone
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import Case, CheckContext, GenerationMode, Response
from schemathesis.schemas import APIOperation

from core.models import Token, TokenIntents, User, generate_key
from events.models import Event, EventAction
from tests.helpers import ROOT
from tests.support.leakcheck import LEDGER, trackable
from tests.support.live import LiveServer, start_server

pytestmark = pytest.mark.schemathesis

# Examples per operation, identity and generation mode. The root mount runs the same operations with
# fewer: it serves the same views, and the point there is that every route answers as documented.
MAX_EXAMPLES = {"api-v3": 30, "root": 6}
MOUNTS = {"api-v3": "/api/v3", "root": ""}
COMMITTED_SCHEMA = ROOT / "schema.yml"
HYPOTHESIS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    # No shrinking-phase explanation output (it re-runs failing cases to annotate them).
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    # Every example is an HTTP round trip (too_slow), and schema-shaped bodies are large
    # (data_too_large, large_base_example); neither says anything about the API.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
KEY_MAX_LENGTH = django_settings.TOKEN_KEY_MAX_LENGTH
# The tokens the two identities authenticate with: never the target of a generated request.
AUTH_IDENTIFIERS = {"superuser": "st-root-api", "unpermitted": "st-nobody-api"}
# Reads first and DELETE last, so a run sees the seeds in their original state as long as possible.
METHOD_ORDER = {"GET": 0, "POST": 1, "PUT": 2, "PATCH": 3, "DELETE": 4}

# 400s a valid request may get, by operation: the rules about other rows or the caller that a schema
# cannot express. The field names are those of the error body.
ALLOWED_IPS_RULE = "an entry the pattern admits but that is no network (octet or prefix out of range, host bits set)"
SEMANTIC_REJECTIONS: dict[str, dict[str, str]] = {
    "POST /core/tokens/": {
        "identifier": "another token holds this identifier",
        "managed": "another token holds this managed value",
        "intent": "only api and app_password tokens can be created through the API (the enum is shared)",
        "user": "an unknown user, or (for a non-superuser) another user than the caller",
        "allowed_ips": ALLOWED_IPS_RULE,
    },
    "PUT /core/tokens/{identifier}/": {
        "identifier": "another token holds this identifier",
        "managed": "another token holds this managed value",
        "intent": "the intent can only change between api and app_password",
        "user": "an unknown user, or another user than the owner: the owner never changes",
        "allowed_ips": ALLOWED_IPS_RULE,
    },
    "POST /core/tokens/{identifier}/set_key/": {"key": "another token holds this key"},
}
SEMANTIC_REJECTIONS["PATCH /core/tokens/{identifier}/"] = SEMANTIC_REJECTIONS["PUT /core/tokens/{identifier}/"]


# Any string, in any field or query parameter: PostgreSQL text cannot hold a NUL, and Django rejects one
# everywhere with this message. Saying so in the schema would take a pattern on every string.
NUL_REJECTION = ["Null characters are not allowed."]


def positive_data_accepted(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """A schema-valid request is not rejected with a 400, except for ``SEMANTIC_REJECTIONS`` and NULs."""
    if case.meta is None or not case.meta.generation.mode.is_positive or response.status_code != 400:
        return None
    allowed = SEMANTIC_REJECTIONS.get(case.operation.label, {})
    body = response.json()
    if not isinstance(body, dict) or not set(body) - {"code"}:
        raise AssertionError("a 400 without field errors")
    unexplained = sorted(name for name in set(body) - {"code"} if name not in allowed and body[name] != NUL_REJECTION)
    assert not unexplained, (
        f"a schema-valid request was rejected with 400 on {unexplained}, which is not one of the "
        f"semantic rules of this operation ({sorted(allowed) or 'none'})"
    )
    return True


# --- seeds ------------------------------------------------------------------------------------------


@dataclass
class Seeds:
    """The rows a run works on. ``tokens`` maps each target identifier to the fields it is (re)created with."""

    superuser: User
    unpermitted: User
    owner: User
    auth_keys: dict[str, str]  # identity -> key of its authentication token
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    event_ids: list[str] = field(default_factory=list)

    def identifiers(self, identity: str) -> tuple[list[str], list[str]]:
        """All target identifiers, and those the identity can see (all of them for the superuser)."""
        everything = sorted(self.tokens)
        if identity == "superuser":
            return everything, everything
        return everything, [name for name in everything if self.tokens[name]["user"] == self.unpermitted]

    @property
    def user_pks(self) -> list[int]:
        return [self.superuser.pk, self.unpermitted.pk, self.owner.pk]

    def reseed(self) -> None:
        """Re-create the target tokens a previous operation deleted or renamed (seeds only, never auth tokens)."""
        for identifier, fields in self.tokens.items():
            if Token.objects.filter(identifier=identifier).exists():
                continue
            fields = dict(fields)
            if fields.get("managed") and Token.objects.filter(managed=fields["managed"]).exists():
                fields["managed"] = None
            Token.objects.create(identifier=identifier, key=generate_key(), **fields)


def create_seeds() -> Seeds:
    now = timezone.now()
    superuser = User.objects.create_user(username="st-root", email="root@example.test", is_superuser=True)
    unpermitted = User.objects.create_user(username="st-nobody", email="nobody@example.test")
    owner = User.objects.create_user(username="st-alice", name="Alice Example", email="alice@example.test")
    owner.groups.add(Group.objects.create(name="st-group"))
    auth = {
        identity: Token.objects.create(identifier=AUTH_IDENTIFIERS[identity], user=user, key=generate_key())
        for identity, user in (("superuser", superuser), ("unpermitted", unpermitted))
    }
    seeds = Seeds(superuser, unpermitted, owner, {name: token.key for name, token in auth.items()})
    seeds.tokens = {
        "st-alice-api": {"user": owner, "description": "Alice's API token"},
        "st-alice-app": {"user": owner, "intent": TokenIntents.APP_PASSWORD, "expires": now + timedelta(days=30)},
        "st-alice-expired": {"user": owner, "expires": now - timedelta(days=1)},
        "st-alice-recovery": {"user": owner, "intent": TokenIntents.RECOVERY, "expiring": False},
        "st-managed": {"user": superuser, "managed": "goauthentik.io/st/managed", "expiring": False},
        "st-root-spare": {"user": superuser},
        "st-nobody-own": {"user": unpermitted, "description": "the unpermitted user's second token"},
        "st-nobody-app": {"user": unpermitted, "intent": TokenIntents.APP_PASSWORD},
    }
    for fields in seeds.tokens.values():
        fields.setdefault("intent", TokenIntents.API)
    seeds.reseed()
    snapshot = {"pk": owner.pk, "username": owner.username, "email": owner.email}
    anonymous = {"username": "AnonymousUser", "pk": -1, "is_anonymous": True}
    events: list[tuple[EventAction, dict[str, Any], str | None]] = [
        (EventAction.MODEL_UPDATED, snapshot, "198.51.100.7"),
        (EventAction.SECRET_VIEW, snapshot, "2001:db8::1"),
        (EventAction.MODEL_CREATED, snapshot, None),
        (EventAction.LOGIN_FAILED, anonymous, "203.0.113.9"),
    ]
    for action, user, client_ip in events:
        model = {"app": "authentik_core", "model_name": "token", "pk": uuid.uuid4().hex, "name": "st-alice-api"}
        event = Event.objects.create(
            action=action, app="authentik_core", user=user, client_ip=client_ip, context={"model": model}
        )
        seeds.event_ids.append(str(event.pk))
    return seeds


# --- generation ---------------------------------------------------------------------------------------


def with_seeded_targets(case: Case, seeds: Seeds, identity: str) -> st.SearchStrategy[Case]:
    """The case as generated, or with seeded values where generated ones would (almost) never hit anything.

    Each replacement happens about half of the time, in both modes: a path identifier by a seeded token
    (drawn from all seeds or from those the identity can see, so that the unpermitted user reaches its
    own tokens too) or a seeded event, the body's ``user`` by a seeded user, and a ``page`` number (nearly
    always past the last page) is dropped. Schemathesis re-validates a changed case, so a negative case
    whose only violation was replaced is judged as the positive case it has become.
    """
    everything, visible = seeds.identifiers(identity)
    path = case.path_parameters or {}
    if path.get("identifier") in AUTH_IDENTIFIERS.values():
        # Unlikely for a drawn string, but enforced rather than assumed.
        case = _set_path(case, "identifier")(everything[0])
    replacements: list[Callable[[Case], st.SearchStrategy[Case]]] = []
    if "identifier" in path:
        identifiers = st.one_of(st.sampled_from(everything), st.sampled_from(visible))
        replacements.append(lambda c: identifiers.map(_set_path(c, "identifier")))
    if "event_uuid" in path:
        replacements.append(lambda c: st.sampled_from(seeds.event_ids).map(_set_path(c, "event_uuid")))
    if isinstance(case.body, dict) and "user" in case.body:
        replacements.append(lambda c: st.sampled_from(seeds.user_pks).map(_set_body(c, "user")))
    if isinstance(case.query, dict) and "page" in case.query:
        replacements.append(lambda c: st.just(_without_query(c, "page")))
    strategy = st.just(as_sent(case))
    for replace in replacements:
        strategy = strategy.flatmap(_sometimes(replace))
    return strategy


def _sometimes(replace: Callable[[Case], st.SearchStrategy[Case]]) -> Callable[[Case], st.SearchStrategy[Case]]:
    return lambda case: st.one_of(st.just(case), replace(case))


def as_sent(case: Case) -> Case:
    """The case with each list or object value of a scalar query parameter replaced by what is sent for it.

    Negative cases put lists and objects in scalar query parameters. On the wire ``{}`` and ``[""]`` are
    ``?name=`` (an accepted empty value), ``[]`` is nothing and ``["a", "b"]`` a repeated parameter.
    Schemathesis judges a case by its typed values, so without this it calls such a request invalid
    although what the server received is valid.
    """
    query = case.query
    if not isinstance(query, dict) or not any(isinstance(value, list | dict) for value in query.values()):
        return case
    params = case.as_transport_kwargs(base_url="http://schemathesis.invalid")["params"]
    sent: dict[str, list[str]] = {}
    url = requests.Request("GET", "http://schemathesis.invalid/", params=params).prepare().url or ""
    for name, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        sent.setdefault(name, []).append(value)
    arrays = {param.name for param in case.operation.query if param.definition.get("schema", {}).get("type") == "array"}
    normalized = {}
    for name, value in query.items():
        if name in arrays or not isinstance(value, list | dict):
            normalized[name] = value
        elif name in sent:
            normalized[name] = sent[name][0] if len(sent[name]) == 1 else sent[name]
    case.query = normalized
    return case


def mark_keys(value: Any, suffix: str) -> Any:
    """``value`` with ``suffix`` appended to every string ``"key"`` member the leak check would track.

    The suite's leak check treats every ``"key"`` member a test sends as a secret, and fails when it shows
    up in a response or a log. Hypothesis mutates earlier examples into new ones, so a drawn key also turns
    up as (part of) an identifier in a later request's path, which the access log records by design: a
    leak only in appearance. A suffix that no other generated string carries ("~st12~") makes every key
    unique. It never makes an invalid key valid: it only appends (a key already over the length limit
    stays over it) visible ASCII; a valid key is shortened to stay within the limit.
    """
    if isinstance(value, list):
        return [mark_keys(item, suffix) for item in value]
    if not isinstance(value, dict):
        return value
    marked = {name: mark_keys(member, suffix) for name, member in value.items()}
    key = value.get("key")
    if isinstance(key, str) and key and trackable(key + suffix):
        valid = len(key) <= KEY_MAX_LENGTH and all("\x21" <= char <= "\x7e" for char in key)
        marked["key"] = (key[: KEY_MAX_LENGTH - len(suffix)] if valid else key) + suffix
    return marked


def _set_path(case: Case, name: str) -> Callable[[str], Case]:
    def apply(value: str) -> Case:
        # Assigning (not mutating) the container lets schemathesis re-validate the case's metadata.
        case.path_parameters = {**(case.path_parameters or {}), name: value}
        return case

    return apply


def _set_body(case: Case, name: str) -> Callable[[int], Case]:
    def apply(value: int) -> Case:
        assert isinstance(case.body, dict)
        case.body = {**case.body, name: value}
        return case

    return apply


def _without_query(case: Case, name: str) -> Case:
    case.query = {key: value for key, value in case.query.items() if key != name}
    return case


# --- the run ------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """Statuses seen per operation and mode, and the failures schemathesis reported."""

    statuses: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def cases(self) -> int:
        return self.statuses.total()

    def successes(self, label: str) -> int:
        return sum(n for (op, _, status), n in self.statuses.items() if op == label and 200 <= status < 300)

    def report(self) -> str:
        lines = [f"{op:<48} {mode:<9} {status}: {n}" for (op, mode, status), n in sorted(self.statuses.items())]
        return "\n".join(lines)


def run_operation(
    operation: APIOperation, mode: GenerationMode, *, identity: str, seeds: Seeds, max_examples: int, tally: Tally
) -> None:
    strategy = operation.as_strategy(generation_mode=mode).flatmap(
        lambda case: with_seeded_targets(case, seeds, identity)
    )

    # derandomize alone would give every operation the same random stream (the test function is the same);
    # a seed derived from what is tested keeps runs deterministic and operations independent.
    @seed(zlib.crc32(f"{identity} {operation.label} {mode.value}".encode()))
    @settings(HYPOTHESIS, max_examples=max_examples)
    @given(case=strategy)
    def check(case: Case) -> None:
        marked = mark_keys(case.body, f"~st{tally.cases()}~")
        if marked != case.body:
            case.body = marked
        response = case.call(timeout=30)
        # The mode of the case as sent (a replacement may have turned a negative case into a positive one).
        sent_mode = case.meta.generation.mode.value if case.meta is not None else mode.value
        tally.statuses[(operation.label, sent_mode, response.status_code)] += 1
        # Schemathesis reads responses as a stream, which the suite's leak check does not see: hand them over.
        path = response.request.path_url.split("?")[0]
        LEDGER.add_response(f"schemathesis {case.method} {path}", path, response.status_code, response.content)
        case.validate_response(response, additional_checks=[positive_data_accepted])

    try:
        check()
    except BaseException as exc:  # schemathesis' FailureGroup is a BaseExceptionGroup
        if not isinstance(exc, Exception | BaseExceptionGroup):
            raise
        tally.failures.append(f"{operation.label} ({mode.value}):\n{exc}")


@pytest.fixture
def seeds() -> Seeds:
    return create_seeds()


@pytest.fixture
def server(seeds: Seeds, tmp_path: Path) -> Iterator[LiveServer]:
    # Persistent connections, as in production (start_server's default opens one per request): fewer
    # connections to a shared PostgreSQL server, and a faster run. The server stops before the flush.
    server = start_server(tmp_path / "server.log", extra_env={"DB_CONN_MAX_AGE": "600"})
    yield server
    server.stop()


def load_schema(server: LiveServer, base_url: str, key: str) -> Any:
    config = schemathesis.Config.from_dict(
        {
            "base-url": base_url,
            # authentik's security scheme name; schemathesis sends it as "Authorization: Bearer <key>".
            "auth": {"openapi": {"authentik": {"bearer": key}}},
            # The Authorization header is not a generated parameter: negative cases spend themselves on
            # data, not on dropping the credential (ignored_auth probes every 2xx without and with a bad one).
            "generation": {"with-security-parameters": False},
            # Replaced by positive_data_accepted (see the module docstring).
            "checks": {"positive_data_acceptance": {"enabled": False}},
        }
    )
    return schemathesis.openapi.from_url(f"{server.url}/api/v3/schema/", config=config)


def operations(schema: Any) -> list[APIOperation]:
    found = [result.ok() for result in schema.get_all_operations()]
    return sorted(found, key=lambda op: (METHOD_ORDER[op.method.upper()], op.path))


def modes(operation: APIOperation) -> list[GenerationMode]:
    """Both modes, except for an operation without parameters or body: it has nothing to get wrong."""
    if not list(operation.iter_parameters()) and not operation.body:
        return [GenerationMode.POSITIVE]
    return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


def committed_operations() -> set[str]:
    """The operations of the committed ``schema.yml``, as schemathesis labels them."""
    spec = yaml.safe_load(COMMITTED_SCHEMA.read_text())
    return {
        f"{method.upper()} {path}" for path, item in spec["paths"].items() for method in item if method != "parameters"
    }


def authenticates(server: LiveServer, key: str) -> bool:
    response = requests.get(f"{server.url}/api/v3/core/tokens/", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    return response.status_code == 200


# What the unpermitted user must never be granted, whatever the input: these need a permission it lacks.
FORBIDDEN_TO_UNPERMITTED = {
    "POST /core/tokens/{identifier}/set_key/",
    # Without set_token_key a token can rotate only itself, and the authentication tokens are never targets.
    "POST /core/tokens/{identifier}/rotate/",
    "GET /events/events/",
    "GET /events/events/{event_uuid}/",
    "GET /events/events/actions/",
    "GET /events/events/volume/",
}


REACHABLE_BY_UNPERMITTED = {
    "GET /core/tokens/",
    "POST /core/tokens/",
    "GET /core/tokens/{identifier}/",
    "PUT /core/tokens/{identifier}/",
    "PATCH /core/tokens/{identifier}/",
    "DELETE /core/tokens/{identifier}/",
    "GET /core/tokens/{identifier}/used_by/",
}


@pytest.mark.live
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mount", ["api-v3", "root"])
@pytest.mark.parametrize("identity", ["superuser", "unpermitted"])
def test_every_response_conforms_to_the_schema(server: LiveServer, seeds: Seeds, identity: str, mount: str) -> None:
    key = seeds.auth_keys[identity]
    schema = load_schema(server, server.url + MOUNTS[mount], key)
    ops = operations(schema)
    assert {op.label for op in ops} == committed_operations()

    tally = Tally()
    for operation in ops:
        seeds.reseed()
        for mode in modes(operation):
            run_operation(
                operation, mode, identity=identity, seeds=seeds, max_examples=MAX_EXAMPLES[mount], tally=tally
            )

    print(f"{identity} on {mount}: {tally.cases()} cases\n{tally.report()}")  # shown with -s or on failure
    assert not tally.failures, "\n\n".join(tally.failures)
    # The run was not a run of 403s: both identities still authenticate, with their original keys.
    for name, auth_key in seeds.auth_keys.items():
        assert authenticates(server, auth_key), f"the {name}'s token stopped authenticating"
    if identity == "unpermitted":
        granted = [label for label in sorted(FORBIDDEN_TO_UNPERMITTED) if tally.successes(label)]
        assert not granted, f"the unpermitted user got a 2xx from {granted}"
    if mount == "root":
        return  # too few examples there to require that each operation reached a seeded object
    # Seeded targets were reached: the superuser got a 2xx from every operation, the unpermitted user
    # from what it may use (its own tokens).
    expected = {op.label for op in ops} if identity == "superuser" else REACHABLE_BY_UNPERMITTED
    unreached = sorted(label for label in expected if not tally.successes(label))
    assert not unreached, f"no 2xx for {unreached}"


# What the runs above found, pinned: (operation, query, body, status now, field of the 400 body). Before
# the fixes: a 500 (OverflowError), a 503 (PostgreSQL), silently ignored or coerced input (200/201), and
# 404s the schema did not document.
FOUND = [
    ("GET /core/tokens/", "?expires=0001-01-01T00:00:00%2B00:05", None, 400, "expires"),
    ("GET /core/tokens/", "?expires=9999-12-31T23:59:59-01:00", None, 400, "expires"),
    ("GET /core/tokens/", "?expiring=banana", None, 400, "expiring"),
    ("GET /core/tokens/", "?page_size=abc", None, 400, "page_size"),
    ("GET /core/tokens/", "?page_size=0", None, 400, "page_size"),
    ("GET /core/tokens/", "?description=a&description=b", None, 400, "description"),
    ("GET /core/tokens/", "?page=9", None, 404, None),
    ("GET /events/events/", "?action=login&action=logout", None, 400, "action"),
    ("GET /events/events/volume/", "?history_days=0", None, 400, "history_days"),
    ("POST /core/tokens/", "", {"identifier": "found", "managed": 5}, 400, "managed"),
    ("POST /core/tokens/", "", {"identifier": 5}, 400, "identifier"),
    ("POST /core/tokens/", "", {"identifier": "found", "expiring": "true"}, 400, "expiring"),
    ("POST /core/tokens/", "", {"identifier": "found", "user": "1"}, 400, "user"),
    ("POST /core/tokens/", "", {"identifier": "found", "description": 1.5}, 400, "description"),
    # Found while tracing a PostgreSQL 503: a value over the unique index's row limit.
    ("POST /core/tokens/", "", {"identifier": "found", "managed": "m" * 3000}, 400, "managed"),
    ("GET /core/tokens/{identifier}/", "", None, 404, None),
]


@pytest.mark.parametrize(("operation", "query", "body", "status", "field_name"), FOUND)
def test_what_fuzzing_found_is_a_documented_4xx(
    operation: str,
    query: str,
    body: dict[str, Any] | None,
    status: int,
    field_name: str | None,
    bearer: Callable[[Token], Any],
    admin_token: Token,
) -> None:
    method, template = operation.split(" ")
    path = "/api/v3" + template.replace("{identifier}", "missing") + query
    response = bearer(admin_token).generic(
        method, path, json.dumps(body) if body is not None else "", "application/json"
    )
    assert response.status_code == status, response.content
    if field_name is not None:
        assert list(response.json()) == [field_name]
    spec = yaml.safe_load(COMMITTED_SCHEMA.read_text())
    assert str(status) in spec["paths"][template][method.lower()]["responses"]
    assert Token.objects.count() == 1  # nothing was created
