"""Operations, in process: client IP behind proxies, security headers, health, 503s for database outages,
the deployment check and the gunicorn configuration."""

import ipaddress
import os
import runpy
import secrets
import subprocess
import sys
from typing import Any
from unittest import mock

import pytest
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.middleware import SessionMiddleware
from django.db import DataError, IntegrityError, InterfaceError, InternalError, OperationalError, ProgrammingError
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from core.models import generate_key
from events.models import Event
from tests.helpers import ROOT, requires_postgres
from tokens_service.request_meta import client_ip

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
SERVICE_UNAVAILABLE = "service_unavailable"


def set_key_url(identifier: str) -> str:
    return reverse("token-set-key", kwargs={"identifier": identifier})


# --- client IP (docs/contract.md, "Audit trail") ----------------------------------------------------


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded", "expected"),
    [
        pytest.param([], "203.0.113.9", "198.51.100.1", "203.0.113.9", id="no-trusted-proxies-header-ignored"),
        pytest.param(["10.0.0.0/8"], "203.0.113.9", "198.51.100.1", "203.0.113.9", id="peer-not-a-proxy"),
        pytest.param(["10.0.0.0/8"], "10.0.0.2", "198.51.100.1", "198.51.100.1", id="one-proxy"),
        pytest.param(["10.0.0.0/8"], "10.0.0.2", "", "10.0.0.2", id="proxy-without-header"),
        pytest.param(["10.0.0.0/8"], "10.0.0.2", "6.6.6.6, 198.51.100.1", "198.51.100.1", id="forged-left-ignored"),
        pytest.param(["10.0.0.0/8"], "10.0.0.2", "198.51.100.1, 10.0.0.7", "198.51.100.1", id="proxy-chain"),
        pytest.param(["10.0.0.0/8"], "10.0.0.2", "10.1.1.1,10.0.0.7", "10.1.1.1", id="all-trusted-left-most"),
        pytest.param(["10.0.0.0/8"], "10.0.0.2", "  198.51.100.1  ", "198.51.100.1", id="whitespace"),
        pytest.param(["10.0.0.0/8"], "10.0.0.2", "garbage", "10.0.0.2", id="garbage"),
        pytest.param(["10.0.0.0/8"], "10.0.0.2", "198.51.100.1, <script>", "10.0.0.2", id="garbage-right-of-client"),
        pytest.param(["10.0.0.0/8"], "10.0.0.2", "198.51.100.1:4711", "10.0.0.2", id="port-is-not-an-address"),
        pytest.param(["10.0.0.0/8"], "10.0.0.2", "fe80::1%eth0", "10.0.0.2", id="ipv6-zone-rejected"),
        pytest.param(["10.0.0.0/8"], "10.0.0.2", "1.2.3.4" * 1000, "10.0.0.2", id="huge"),
        pytest.param(["10.0.0.0/8"], "not-an-ip", "198.51.100.1", None, id="unparsable-peer"),
        pytest.param(["10.0.0.0/8"], "::ffff:10.0.0.2", "198.51.100.1", "198.51.100.1", id="ipv4-mapped-peer"),
        pytest.param(
            ["2001:db8::/32"], "2001:db8::1", "2001:db8:ffff::2, 2606:4700::1111", "2606:4700::1111", id="ipv6-chain"
        ),
        pytest.param(["2001:db8::/32"], "2001:db8::1", "[2606:4700::1111]", "2606:4700::1111", id="ipv6-bracketed"),
        pytest.param(
            ["10.0.0.0/8", "2001:db8::/32"], "2001:db8::1", "198.51.100.1, 10.0.0.3", "198.51.100.1", id="mixed"
        ),
        pytest.param(["0.0.0.0/0"], "10.0.0.2", "198.51.100.1, 10.0.0.7", "198.51.100.1", id="trust-all-v4"),
    ],
)
def test_client_ip_comes_from_trusted_proxies_only(settings, trusted, peer, forwarded, expected):
    settings.TRUSTED_PROXY_CIDRS = [ipaddress.ip_network(cidr) for cidr in trusted]
    assert client_ip({"REMOTE_ADDR": peer, "HTTP_X_FORWARDED_FOR": forwarded}) == expected


@pytest.mark.django_db
def test_set_key_behind_a_trusted_proxy_records_the_client(settings, bearer, admin_token, make_token, superuser):
    settings.TRUSTED_PROXY_CIDRS = [ipaddress.ip_network("10.0.0.0/8")]
    target = make_token(superuser)
    response = bearer(admin_token).post(
        set_key_url(target.identifier),
        {"key": generate_key()},
        format="json",
        REMOTE_ADDR="10.0.0.2",
        HTTP_X_FORWARDED_FOR="6.6.6.6, 198.51.100.1, fe80::1%eth0",
    )
    assert response.status_code == 204
    # The zone-scoped entry is garbage, so the walk stops at the proxy itself: stored, not a 503.
    assert Event.objects.get(action="model_updated").client_ip == "10.0.0.2"


# --- security headers ------------------------------------------------------------------------------


@pytest.fixture
def answers(db, bearer, admin_token, make_token, superuser, settings, monkeypatch) -> dict[str, Any]:
    """One response of every kind the service gives: API success and errors, health, admin, static, 404,
    503 and 500."""
    settings.WHITENOISE_USE_FINDERS = True  # serve static files without collectstatic
    target = make_token(superuser)
    client = Client(raise_request_exception=False)
    result = {
        "health-live": client.get(reverse("health-live")),
        "health-ready": client.get(reverse("health-ready")),
        "set_key-204": bearer(admin_token).post(set_key_url(target.identifier), {"key": generate_key()}),
        "set_key-400": bearer(admin_token).post(set_key_url(target.identifier), {"key": 7}),
        "set_key-403": APIClient().post(set_key_url(target.identifier), {"key": generate_key()}, format="json"),
        "set_key-405": bearer(admin_token).get(set_key_url(target.identifier)),
        "unknown-url-404": client.get("/no/such/page/"),
        "admin-login": client.get(reverse("admin:login")),
        "static-file": client.get("/static/admin/css/base.css"),
    }
    monkeypatch.setattr("core.api.token_set_key", _raise(OperationalError("server closed the connection")))
    result["set_key-503"] = bearer(admin_token).post(set_key_url(target.identifier), {"key": generate_key()})
    monkeypatch.setattr("core.api.token_set_key", _raise(RuntimeError("bug")))
    api = bearer(admin_token)
    api.raise_request_exception = False
    result["set_key-500"] = api.post(set_key_url(target.identifier), {"key": generate_key()})
    return result


def _raise(exc: Exception) -> Any:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return fail


def test_security_headers_on_every_response(answers):
    statuses = {name: response.status_code for name, response in answers.items()}
    assert statuses == {
        "health-live": 200,
        "health-ready": 200,
        "set_key-204": 204,
        "set_key-400": 400,
        "set_key-403": 403,
        "set_key-405": 405,
        "unknown-url-404": 404,
        "admin-login": 200,
        "static-file": 200,
        "set_key-503": 503,
        "set_key-500": 500,
    }
    for name, response in answers.items():
        for header, value in SECURITY_HEADERS.items():
            assert response.headers.get(header) == value, (name, header)
        assert response.headers["X-Request-ID"], name


@pytest.mark.django_db
def test_hsts_when_served_over_https(settings):
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    response = Client().get(reverse("health-live"), secure=True)
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


def test_ssl_redirect_spares_the_health_probes(settings, db):
    settings.SECURE_SSL_REDIRECT = True
    client = Client()
    assert client.get(reverse("health-live")).status_code == 200
    assert client.get(reverse("health-ready")).status_code == 200
    assert client.get(set_key_url("x")).status_code == 301


# --- health ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_liveness_touches_no_database(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get(reverse("health-live"))
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_health_needs_no_credentials_and_ignores_bad_ones(client):
    for url in (reverse("health-live"), reverse("health-ready")):
        assert client.get(url).status_code == 200
        assert client.get(url, HTTP_AUTHORIZATION="Bearer not-a-key").status_code == 200
        assert client.get(url, HTTP_AUTHORIZATION="garbage \xff").status_code == 200


@pytest.mark.django_db
def test_readiness_is_503_json_when_the_database_fails(client, monkeypatch):
    class Broken:
        def cursor(self) -> Any:
            raise OperationalError("connection refused")

    assert client.get(reverse("health-ready")).json() == {"status": "ok", "database": "ok"}
    monkeypatch.setattr("tokens_service.views.connection", Broken())
    response = client.get(reverse("health-ready"))
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "unreachable"}
    assert response.headers["Retry-After"]


@pytest.mark.django_db
def test_request_id_is_echoed_when_sane_and_replaced_otherwise(client):
    assert client.get(reverse("health-live"), HTTP_X_REQUEST_ID="abc-123.XYZ_9").headers["X-Request-ID"] == (
        "abc-123.XYZ_9"
    )
    replaced = client.get(reverse("health-live"), HTTP_X_REQUEST_ID="bad id\r\nInjected: 1").headers["X-Request-ID"]
    assert len(replaced) == 32
    assert "bad" not in replaced


# --- 503 for database outages, on every path -------------------------------------------------------


def assert_service_unavailable(response: Any) -> None:
    assert response.status_code == 503
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"detail", "code"}
    assert body["code"] == SERVICE_UNAVAILABLE
    assert response.headers["Retry-After"]


@pytest.mark.django_db
def test_database_down_during_bearer_authentication_is_503(bearer, monkeypatch):
    monkeypatch.setattr("core.authentication.bearer_match", _raise(OperationalError("timeout expired")))
    assert_service_unavailable(bearer(generate_key()).post(set_key_url("x"), {"key": generate_key()}))


@pytest.mark.django_db
@pytest.mark.parametrize("error", [OperationalError, InterfaceError], ids=["operational", "interface"])
def test_database_down_inside_an_api_view_is_503(bearer, admin_token, monkeypatch, error):
    # InterfaceError ("connection already closed") is not a DatabaseError: DRF re-raises it, and the
    # middleware answers.
    monkeypatch.setattr("core.api.token_set_key", _raise(error("connection already closed")))
    assert_service_unavailable(bearer(admin_token).post(set_key_url("x"), {"key": generate_key()}))


@pytest.mark.django_db
def test_database_down_in_a_django_view_is_503(client, monkeypatch):
    monkeypatch.setattr(SessionStore, "load", _raise(OperationalError("could not connect")))
    client.cookies["sessionid"] = "x" * 32
    assert_service_unavailable(client.get("/admin/"))


@pytest.mark.django_db
def test_database_down_in_middleware_is_503(monkeypatch):
    monkeypatch.setattr(SessionMiddleware, "process_response", _raise(OperationalError("terminating connection")))
    response = Client(raise_request_exception=False).get(reverse("health-live"))
    assert_service_unavailable(response)


@pytest.mark.django_db
def test_other_errors_are_a_500_json_not_a_page(bearer, admin_token, monkeypatch):
    monkeypatch.setattr("core.api.token_set_key", _raise(RuntimeError("bug")))
    api = bearer(admin_token)
    api.raise_request_exception = False
    response = api.post(set_key_url("x"), {"key": generate_key()})
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error.", "code": "server_error"}


# --- other database errors are bugs: a logged 500, never a 503 ---------------------------------------

DATABASE_BUGS = [
    pytest.param(IntegrityError, id="integrity"),
    pytest.param(DataError, id="data"),
    pytest.param(ProgrammingError, id="programming"),
    pytest.param(InternalError, id="internal"),
]


def _database_bug(error: type[Exception], secret: str) -> Exception:
    # Drivers quote statement parameters in their messages; the message must reach neither log nor body.
    exc = error(f"value violates something: DETAIL (key)=({secret})")
    exc.__cause__ = RuntimeError(secret)
    return exc


def assert_server_error(response: Any, caplog: pytest.LogCaptureFixture, error: type[Exception], secret: str) -> None:
    assert response.status_code == 500
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Internal server error.", "code": "server_error"}
    assert "Retry-After" not in response.headers
    logged = [record for record in caplog.records if record.getMessage() == f"database error: {error.__name__}"]
    assert len(logged) == 1
    assert logged[0].levelname == "ERROR"
    assert logged[0].db_error == error.__name__  # type: ignore[attr-defined]
    for record in caplog.records:
        assert secret not in record.getMessage()
        assert secret not in repr(vars(record))
    assert secret not in response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("error", DATABASE_BUGS)
def test_database_bug_inside_an_api_view_is_a_logged_500(bearer, admin_token, monkeypatch, caplog, error):
    secret = generate_key()
    monkeypatch.setattr("core.api.token_set_key", _raise(_database_bug(error, secret)))
    api = bearer(admin_token)
    api.raise_request_exception = False
    response = api.post(set_key_url("x"), {"key": generate_key()})
    assert_server_error(response, caplog, error, secret)


@pytest.mark.django_db
@pytest.mark.parametrize("error", DATABASE_BUGS)
def test_database_bug_in_a_django_view_is_a_logged_500(client, monkeypatch, caplog, error):
    secret = generate_key()
    monkeypatch.setattr(SessionStore, "load", _raise(_database_bug(error, secret)))
    client.raise_request_exception = False
    client.cookies["sessionid"] = "x" * 32
    assert_server_error(client.get("/admin/"), caplog, error, secret)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "error",
    [pytest.param(OperationalError, id="operational"), pytest.param(InterfaceError, id="interface")],
)
def test_only_connection_level_errors_are_503_in_a_django_view(client, monkeypatch, error):
    monkeypatch.setattr(SessionStore, "load", _raise(error("server closed the connection")))
    client.cookies["sessionid"] = "x" * 32
    assert_service_unavailable(client.get("/admin/"))


@requires_postgres
@pytest.mark.django_db
@pytest.mark.parametrize(
    ("sql", "status"),
    [
        pytest.param("SELECT 1/0", 500, id="division-by-zero-data-error"),
        pytest.param("SELECT * FROM no_such_table", 500, id="undefined-table-programming-error"),
        pytest.param("SET LOCAL statement_timeout = 1; SELECT pg_sleep(1)", 503, id="statement-timeout"),
    ],
)
def test_real_postgresql_errors_map_by_class(bearer, admin_token, monkeypatch, sql, status):
    from django.db import connection

    def run_sql(**kwargs: Any) -> None:
        with connection.cursor() as cursor:
            for statement in sql.split("; "):
                cursor.execute(statement)

    monkeypatch.setattr("core.api.token_set_key", run_sql)
    api = bearer(admin_token)
    api.raise_request_exception = False
    response = api.post(set_key_url("x"), {"key": generate_key()})
    assert response.status_code == status
    assert response.json()["code"] == {500: "server_error", 503: SERVICE_UNAVAILABLE}[status]


# --- manage.py check --deploy ----------------------------------------------------------------------

PRODUCTION_ENV = {
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    "DJANGO_DEBUG": "",
    "DJANGO_SECURE_SSL": "1",
    "DJANGO_SECURE_SSL_REDIRECT": "1",
    "DJANGO_BEHIND_TLS_PROXY": "1",
    "DJANGO_HSTS_SECONDS": "31536000",
    "DJANGO_HSTS_INCLUDE_SUBDOMAINS": "1",
    "DJANGO_HSTS_PRELOAD": "1",
    "DJANGO_ALLOWED_HOSTS": "tokens.example.com",
    "DATABASE_URL": "",
}


def check_deploy(**overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={**os.environ, **PRODUCTION_ENV, "SQLITE_PATH": os.devnull, **overrides},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_deploy_passes_with_a_production_environment():
    result = check_deploy()
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_deploy_fails_without_https_settings():
    result = check_deploy(DJANGO_SECURE_SSL="0", DJANGO_HSTS_SECONDS="0")
    assert result.returncode != 0
    assert "security.W004" in result.stderr  # no HSTS
    assert "security.W012" in result.stderr  # session cookie not secure


# --- gunicorn --------------------------------------------------------------------------------------


def gunicorn_conf(monkeypatch: Any, **env: str) -> dict[str, Any]:
    for name in ("WEB_CONCURRENCY", "GUNICORN_THREADS", "GUNICORN_TIMEOUT", "GUNICORN_GRACEFUL_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(ROOT / "tokens_service" / "gunicorn_conf.py"))


def test_gunicorn_settings_come_from_the_environment(monkeypatch):
    conf = gunicorn_conf(
        monkeypatch,
        WEB_CONCURRENCY="5",
        GUNICORN_THREADS="4",
        GUNICORN_TIMEOUT="45",
        GUNICORN_GRACEFUL_TIMEOUT="25",
        GUNICORN_BIND="0.0.0.0:9000",
        LOG_FORMAT="plain",
    )
    assert (conf["workers"], conf["threads"], conf["timeout"], conf["graceful_timeout"]) == (5, 4, 45, 25)
    assert conf["bind"] == ["0.0.0.0:9000"]
    assert conf["logconfig_dict"]["handlers"]["stderr"]["formatter"] == "plain"


def test_gunicorn_builds_no_access_log_of_its_own(monkeypatch):
    from gunicorn.config import Config
    from gunicorn.glogging import Logger

    conf = gunicorn_conf(monkeypatch)
    config = Config()
    config.set("logger_class", conf["logger_class"])
    config.set("logconfig_dict", conf["logconfig_dict"])
    logger = config.logger_class(config)
    assert isinstance(logger, Logger)
    # Called by gunicorn for every request: it must not even build the access-log fields.
    with mock.patch.object(Logger, "atoms", side_effect=AssertionError("access-log fields built")):
        logger.access(mock.Mock(), mock.Mock(), {}, mock.Mock())


def test_gunicorn_defaults_outlast_the_database_timeouts(monkeypatch, settings):
    conf = gunicorn_conf(monkeypatch)
    assert conf["workers"] >= 2
    # Threaded workers with room for many slow clients (tests/live/test_slow_clients.py).
    assert conf["worker_class"] == "gthread"
    assert conf["threads"] == 64
    assert conf["accesslog"] is None  # the app writes the request log
    assert conf["forwarded_allow_ips"] == ""  # TRUSTED_PROXY_CIDRS decides, not gunicorn
    assert conf["control_socket_disable"] is True
    # A stuck query ends in a 503 (statement_timeout) before gunicorn kills the worker.
    assert conf["timeout"] * 1000 > 10000  # DB_STATEMENT_TIMEOUT_MS default
    assert conf["graceful_timeout"] < conf["timeout"]


def test_the_wsgi_module_freezes_what_loading_the_app_created():
    # gc.freeze() at the end of tokens_service.wsgi: the app's import-time objects are left out of collections.
    code = "import gc, tokens_service.wsgi; print(gc.get_freeze_count())"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tokens_service.settings"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert int(done.stdout) > 10_000
