"""The fast path (``core.fastpath``, hand-written SQL) against the contract path (``core.services`` and
``core.selectors`` in plain ORM), on PostgreSQL: the same scenario, run once on each path from the same
state, must leave identical rows and events (uuids and timestamps aside) and raise identical errors."""

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied
from django.db import connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from guardian.shortcuts import assign_perm

from core import fastpath, selectors, services
from core.models import Token, User, generate_key
from events.models import Event
from tests.helpers import requires_postgres
from tokens_service.errors import ServiceError
from tokens_service.request_meta import RequestMeta

pytestmark = [requires_postgres, pytest.mark.django_db]

META = RequestMeta(client_ip="192.0.2.1", path="/p/", method="POST", user_agent="diff", request_id="r1")


class _Undo(Exception):
    """Rolls a run back so that the other path starts from the same state."""


def snapshot() -> dict[str, Any]:
    tokens = sorted(
        (
            *(str(t.pk), t.identifier, t.key, t.key_digest, t.intent, t.user_id, t.description, t.expires),
            *(t.expiring, t.previous_key_digest, t.previous_key_expires),
        )
        for t in Token.objects.all()
    )
    events = sorted(
        json.dumps([e.action, e.app, e.user, e.context, e.client_ip, e.brand], sort_keys=True)
        for e in Event.objects.all()
    )
    return {"tokens": tokens, "events": events}


def run(fast: bool, action: Callable[[], Any]) -> dict[str, Any]:
    """Run ``action`` on one path, record its result or error and the database, then undo everything."""
    observed: dict[str, Any] = {}
    try:
        with transaction.atomic(), override_settings(TOKENS_FAST_PATH=fast):
            assert fastpath.enabled() is fast
            try:
                observed["result"] = action()
            except (ServiceError, PermissionDenied) as exc:
                observed["error"] = (type(exc).__name__, getattr(exc, "field", None), getattr(exc, "message", None))
            observed.update(snapshot())
            raise _Undo
    except _Undo:
        pass
    return observed


def both(action: Callable[[], Any]) -> dict[str, Any]:
    fast, contract = run(True, action), run(False, action)
    assert fast == contract
    return fast


CALLERS = ["superuser", "user-global", "group-global", "user-object", "group-object", "none", "inactive"]
# The callers that hold the permission on every token.
GLOBAL_CALLERS = ("superuser", "user-global", "group-global")


@pytest.fixture
def world(make_user, make_token, make_group):
    owner = make_user()
    target = make_token(owner, identifier="target")
    other = make_token(owner, identifier="other")
    expired = make_token(owner, identifier="expired", expires=timezone.now() - timedelta(minutes=1))
    kept = make_token(owner, identifier="kept", expires=timezone.now() - timedelta(days=1), expiring=False)
    return {"owner": owner, "target": target, "other": other, "expired": expired, "kept": kept}


def caller_of(kind: str, world: dict[str, Any], make_user, make_group, codename: str) -> User:
    perm = f"authentik_core.{codename}"
    user = make_user(superuser=kind == "superuser", is_active=kind != "inactive")
    if kind == "user-global":
        user = make_user(perms=(perm,))
    elif kind == "group-global":
        user.groups.add(make_group(perm))
    elif kind in ("user-object", "inactive"):
        for name in ("target", "expired", "kept"):
            assign_perm(perm, user, world[name])
    elif kind == "group-object":
        group = make_group()
        user.groups.add(group)
        for name in ("target", "expired", "kept"):
            assign_perm(perm, group, world[name])
    return User.objects.get(pk=user.pk)


CASES = ["success", "unknown", "expired", "not-expiring", "collision", "own-key", "renamed-old", "renamed-new"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", CALLERS)
def test_set_key_paths_agree(kind, case, world, make_user, make_group):
    caller = caller_of(kind, world, make_user, make_group, "set_token_key")
    identifier = {"unknown": "no-such", "expired": "expired", "not-expiring": "kept"}.get(case, "target")
    key = {"collision": world["other"].key, "own-key": world["target"].key}.get(case, generate_key())
    if case.startswith("renamed"):
        Token.objects.filter(pk=world["target"].pk).update(identifier="renamed")
        Token.objects.filter(pk=world["other"].pk).update(identifier="target")
        identifier = "target" if case == "renamed-old" else "renamed"

    def action() -> None:
        services.token_set_key(token_identifier=identifier, key=key, actor=caller, request_meta=META)

    observed = both(action)
    # And the answer both give is the rule's.
    is_global = kind in GLOBAL_CALLERS
    if (
        kind in ("none", "inactive")
        or (case == "unknown" and not is_global)
        or (case == "renamed-old" and not is_global)
    ):
        expected = "PermissionDenied"  # no permission on the row the identifier names (or on any row)
    elif case in ("unknown", "expired"):
        expected = "ObjectNotFound"
    elif case == "collision":
        expected = "KeyInUse"
    else:
        expected = None
    assert observed.get("error", (None,))[0] == expected
    actions = sorted(json.loads(event)[0] for event in observed["events"])
    assert actions == {None: ["model_updated"], "KeyInUse": ["suspicious_request"]}.get(expected, [])


@pytest.mark.parametrize("kind", CALLERS)
@pytest.mark.parametrize("identifier", ["target", "other", "expired", "no-such"])
def test_permission_checks_agree(kind, identifier, world, make_user, make_group):
    caller = caller_of(kind, world, make_user, make_group, "set_token_key")
    pk = world[identifier].pk if identifier in world else Token._meta.pk.default()  # type: ignore[union-attr]
    for codename in ("set_token_key", "view_token_key"):
        both(lambda codename=codename: selectors.user_has_token_perm(caller, codename, identifier))
        both(lambda codename=codename: selectors.user_has_token_perm_on_pk(caller, codename, pk))


@pytest.mark.parametrize("kind", CALLERS)
@pytest.mark.parametrize("held", ["view_token", "set_token_key", "change_token"])
def test_global_permission_checks_agree(kind, held, world, make_user, make_group):
    caller = caller_of(kind, world, make_user, make_group, held)
    for codename in ("view_token", "set_token_key", "change_token", "view_token_key", "view_user"):
        observed = both(lambda codename=codename: selectors.user_has_global_perm(caller, "authentik_core", codename))
        holds = kind == "superuser" or (kind in ("user-global", "group-global") and codename == held)
        assert observed["result"] is holds, codename
    both(lambda: selectors.user_has_global_perm(caller, "authentik_events", "view_event"))


def test_a_global_token_permission_check_is_one_statement(make_user):
    caller = make_user(perms=("authentik_core.view_token",))
    with CaptureQueriesContext(connection) as queries:
        assert selectors.user_has_global_perm(caller, "authentik_core", "view_token")
    assert len(queries) == 1
    assert "UNION ALL" in queries[0]["sql"]  # the fast path's statement


@pytest.mark.parametrize("case", ["live", "expired", "not-expiring", "inactive-user", "recovery", "unknown"])
def test_bearer_lookups_agree(case, make_user, make_token, past):
    user = make_user(is_active=case != "inactive-user", attributes={"a": [1]})
    fields: dict[str, Any] = {"expires": past} if case == "expired" else {}
    if case == "not-expiring":
        fields = {"expires": past, "expiring": False}
    if case == "recovery":
        fields = {"intent": "recovery"}
    token = make_token(user, **fields)
    key = generate_key() if case == "unknown" else token.key

    def action() -> Any:
        found = selectors.token_for_bearer_key(key)
        if found is None:
            return None
        return (
            {f.attname: getattr(found, f.attname) for f in Token._meta.concrete_fields},
            {f.attname: getattr(found.user, f.attname) for f in User._meta.concrete_fields},
        )

    observed = both(action)
    assert (observed["result"] is None) is (case not in ("live", "not-expiring"))


@pytest.mark.parametrize("kind", CALLERS)
@pytest.mark.parametrize("identifier", ["target", "other", "expired", "kept", "no-such"])
def test_view_key_paths_agree(kind, identifier, world, make_user, make_group):
    caller = caller_of(kind, world, make_user, make_group, "view_token_key")
    observed = both(lambda: services.token_view_key(token_identifier=identifier, actor=caller, request_meta=META))
    is_global = kind in GLOBAL_CALLERS
    on_row = is_global or (kind in ("user-object", "group-object") and identifier != "other")
    if identifier == "no-such":
        expected = "ObjectNotFound" if is_global else "PermissionDenied"
    elif not on_row:
        expected = "PermissionDenied"
    elif identifier == "expired":
        expected = "ObjectNotFound"
    else:
        expected = None
    assert observed.get("error", (None,))[0] == expected
    # A key is returned exactly when its secret_view event was written.
    assert observed.get("result") == (world[identifier].key if expected is None else None)
    assert [json.loads(event)[0] for event in observed["events"]] == (["secret_view"] if expected is None else [])


# --- statements per set_key (the service alone; a request adds the bearer lookup and, for callers that
# are not superusers, the up-front permission check) -----------------------------------------------------


@pytest.mark.parametrize(("kind", "fast", "statements"), [
    ("superuser", True, 1),
    ("user-global", True, 1),
    ("user-object", True, 1),
    ("superuser", False, 4),  # SELECT ... FOR UPDATE, collision check, UPDATE, event INSERT
    ("user-global", False, 5),  # + the permission on the locked row
    ("user-object", False, 5),
])  # fmt: skip
def test_statements_per_set_key(kind, fast, statements, world, make_user, make_group):
    caller = caller_of(kind, world, make_user, make_group, "set_token_key")
    with override_settings(TOKENS_FAST_PATH=fast), CaptureQueriesContext(connection) as queries:
        services.token_set_key(token_identifier="target", key=generate_key(), actor=caller, request_meta=META)
    sent = [q["sql"] for q in queries.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]
    assert len(sent) == statements


@pytest.mark.parametrize("kind", [*CALLERS, "owner"])
def test_visible_tokens_agree(kind, world, make_user, make_group, make_token):
    # A token seen through "view_token_key" only, and one through a group's object permission of another kind.
    caller = world["owner"] if kind == "owner" else caller_of(kind, world, make_user, make_group, "view_token_key")
    unrelated = make_token(make_user(), identifier="unrelated")
    if kind == "none":
        group = make_group()
        caller.groups.add(group)
        assign_perm("authentik_core.change_token", group, unrelated)
    visible = both(lambda: sorted(token.identifier for token in selectors.tokens_visible_to(caller)))
    world_tokens = ["expired", "kept", "other", "target"]
    expected = {
        "superuser": sorted([*world_tokens, "unrelated"]),
        "owner": world_tokens,
        "user-object": ["expired", "kept", "target"],
        "group-object": ["expired", "kept", "target"],
        "none": ["unrelated"],  # through its group's object permission (of another codename)
        # A global view_token_key is not view_token: it shows no token by itself.
        "user-global": [],
        "group-global": [],
        "inactive": [],
    }
    assert visible["result"] == expected[kind]


@pytest.mark.parametrize("last_used", ["never", "stale", "recent"])
def test_usage_recording_paths_agree(last_used, make_user, make_token):
    from core import usage

    now = timezone.now()
    stored = {"never": None, "stale": now - timedelta(minutes=5), "recent": now - timedelta(seconds=5)}[last_used]
    token = make_token(make_user(), last_used=stored)

    def record() -> Any:
        written = usage.token_record_use(token=Token.objects.get(pk=token.pk), ip="192.0.2.9", now=now)
        row = Token.objects.values_list("last_used", "last_used_ip").get(pk=token.pk)
        return written, row

    observed = both(record)
    assert observed["result"] == ((True, (now, "192.0.2.9")) if last_used != "recent" else (False, (stored, None)))
