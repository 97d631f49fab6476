"""Shared fixtures: users, tokens, an API client that speaks Bearer, and database-lane markers."""

import itertools
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, Permission
from django.utils import timezone
from rest_framework.test import APIClient

from core.models import Token, TokenIntents, User, generate_key
from tests.helpers import ON_POSTGRES

# The suite-wide leak check: every key the tests handle is searched for in responses, logs and events.
pytest_plugins = ["tests.support.leakcheck"]

_counter = itertools.count()


@pytest.fixture(autouse=True)
def _fresh_throttle_counters() -> None:
    """Each test starts with no throttle counts, so tests cannot throttle each other.

    Only an in-process cache is cleared: clearing a Redis cache would empty the whole Redis database.
    """
    from django.core.cache import caches
    from django.core.cache.backends.locmem import LocMemCache

    if isinstance(caches["default"], LocMemCache):
        caches["default"].clear()


@pytest.fixture(autouse=True)
def _throttle_cache_not_paused(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test inherits another's pause of the throttle cache (``tokens_service.throttling.CachePause``)."""
    from tokens_service.throttling import CachePause

    monkeypatch.setattr(CachePause, "until", 0.0)


@pytest.fixture(autouse=True)
def _throttle_clock_in_one_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """The abuse limits' clock (in this process) stands still in the middle of a one-minute window.

    A test that counts attempts up to a limit and straddled the start of a new minute would see its earlier
    attempts partly discounted (a sliding window) and fail by chance; seen once. Tests of the window itself
    set their own clock (``tests/api/test_throttling.py``); servers the live tests start keep real time.
    """
    from tokens_service.throttling import SlidingWindowThrottle

    monkeypatch.setattr(SlidingWindowThrottle, "timer", lambda self: 630.0)


@pytest.fixture
def make_user(db: Any) -> Callable[..., User]:
    def make(*, superuser: bool = False, perms: tuple[str, ...] = (), **fields: Any) -> User:
        username = fields.pop("username", f"user{next(_counter)}")
        fields.setdefault("email", f"{username}@example.test")
        user = User.objects.create_user(username=username, is_superuser=superuser, is_staff=superuser, **fields)
        for perm in perms:
            app_label, codename = perm.split(".")
            user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
        return user

    return make


@pytest.fixture
def make_token(db: Any) -> Callable[..., Token]:
    def make(user: User, **fields: Any) -> Token:
        fields.setdefault("identifier", f"token-{next(_counter)}")
        fields.setdefault("intent", TokenIntents.API)
        fields.setdefault("key", generate_key())
        # "In use": a use was recorded just now, the common case of an authenticated request, which then
        # costs no usage write. The first use in a minute costs one statement more (tests/services/test_usage.py).
        fields.setdefault("last_used", timezone.now())
        return Token.objects.create(user=user, **fields)

    return make


@pytest.fixture
def make_group(db: Any) -> Callable[..., Group]:
    def make(*perms: str) -> Group:
        group = Group.objects.create(name=f"group{next(_counter)}")
        for perm in perms:
            app_label, codename = perm.split(".")
            group.permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
        return group

    return make


@pytest.fixture
def bearer() -> Callable[[Token | str | None], APIClient]:
    """An API client that sends ``Authorization: Bearer <key>`` (or nothing for ``None``)."""

    def make(token: Token | str | None) -> APIClient:
        client = APIClient()
        if token is not None:
            key = token.key if isinstance(token, Token) else token
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
        return client

    return make


@pytest.fixture
def superuser(make_user: Callable[..., User]) -> User:
    return make_user(superuser=True, username="root")


@pytest.fixture
def admin_token(superuser: User, make_token: Callable[..., Token]) -> Token:
    return make_token(superuser, identifier="admin-api")


@pytest.fixture
def past() -> Any:
    return timezone.now() - timedelta(minutes=1)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None, tmp_path_factory: Any) -> None:
    """On SQLite, put the test database in a file, so a server process (``live``) can open it too.

    On PostgreSQL, ``TEST_DATABASE_NAME`` names the test database instead of ``test_<name>``: pytest-django
    drops an existing test database of that name, so two runs against one server need two names.
    """
    db = settings.DATABASES["default"]
    if not ON_POSTGRES:
        db.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("sqlite") / "test.sqlite3")
    elif os.environ.get("TEST_DATABASE_NAME"):
        db.setdefault("TEST", {})["NAME"] = os.environ["TEST_DATABASE_NAME"]


@pytest.fixture(scope="session", autouse=True)
def _flush_postgresql_by_delete() -> Any:
    """On PostgreSQL, a transactional test's flush empties the tables with DELETE instead of TRUNCATE.

    The tables end as empty either way (no triggers; every foreign key is deferred to the commit), but
    TRUNCATE rebuilds the ~190 files of the tables and their indexes, each index with an fsync: 0.15-0.45 s
    per flush on a quiet host, over 1 s under load, 241 times per run. DELETE of the few rows a test
    leaves takes a few milliseconds. A flush that resets sequences or cascades keeps Django's TRUNCATE.
    """
    if not ON_POSTGRES:
        yield
        return
    from django.db.backends.postgresql.operations import DatabaseOperations

    truncate = DatabaseOperations.sql_flush

    def sql_flush(
        self: Any, style: Any, tables: Any, *, reset_sequences: bool = False, allow_cascade: bool = False
    ) -> list[str]:
        if reset_sequences or allow_cascade:
            return truncate(self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
        return [f"{style.SQL_KEYWORD('DELETE FROM')} {style.SQL_FIELD(self.quote_name(table))};" for table in tables]

    DatabaseOperations.sql_flush = sql_flush  # type: ignore[method-assign]
    yield
    DatabaseOperations.sql_flush = truncate  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def live(django_db_setup: None, django_db_blocker: Any, tmp_path_factory: Any) -> Any:
    """A gunicorn process serving the test database on a free loopback port, for the whole session.

    Tests that seed data for it must use ``@pytest.mark.django_db(transaction=True)`` so their rows are
    committed and visible to the server.
    """
    from tests.support.live import start_server

    with django_db_blocker.unblock():
        server = start_server(tmp_path_factory.mktemp("live") / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def private_pg() -> Any:
    """A private PostgreSQL cluster (initdb on a free port) that fault tests may stop and break.

    It needs only the PostgreSQL binaries, not the lane's database; the tests using it are marked
    ``requires_postgres`` so they run once, in the PostgreSQL lane.
    """
    from tests.support.live import private_postgres

    cluster = private_postgres()
    yield cluster
    cluster.destroy()
