"""docker-compose.yml, its Dockerfile and load balancer config, checked without Docker.

Docker cannot run here, so the file is parsed (with Compose's variable interpolation reimplemented for
the forms it uses) and checked for structure, and the exact commands it runs (migrate and bootstrap,
the app server, its health check) are run locally against a scratch database on the private cluster.
"""

import ipaddress
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from django.urls import reverse

from core.models import generate_key
from tests.helpers import ROOT, free_port, requires_postgres

COMPOSE = ROOT / "docker-compose.yml"
HAPROXY = ROOT / "deploy" / "haproxy.cfg"
DOCKERFILE = ROOT / "Dockerfile"
# What an operator must provide (the file's ":?" variables); everything else has a default.
REQUIRED = {
    "DJANGO_SECRET_KEY": "s" * 50,
    "POSTGRES_PASSWORD": "pg-password",
    "TOKEN_KEYS_ENCRYPTION_KEYS": "k1:" + "a" * 43,  # base64 of 32 bytes
    "TOKEN_KEYS_PEPPERS": "p1:" + "b" * 43,
}

_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


class MissingVariable(Exception):
    pass


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    """Compose's interpolation: ``${X}``, ``${X:-default}``, ``${X-default}``, ``${X:?error}``, ``$$``."""
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env) for value in node]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg") or ""
        value = env.get(name)
        missing = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in {":-", "-"} and missing:
            return arg
        if op in {":?", "?"} and missing:
            raise MissingVariable(f"{name}: {arg}")
        return value or ""

    return _VARIABLE.sub(substitute, node)


def compose(env: Mapping[str, str] = REQUIRED) -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), env)


def haproxy() -> dict[str, list[list[str]]]:
    """Section header ("backend app") -> its directive lines, split like a shell would."""
    sections: dict[str, list[list[str]]] = {}
    current: list[list[str]] = []
    for raw in HAPROXY.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip() if not raw.strip().startswith("log-format") else raw.rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            current = sections.setdefault(line.strip(), [])
        else:
            current.append(shlex.split(line))
    return sections


def directive(section: list[list[str]], *prefix: str) -> list[str]:
    [line] = [words for words in section if words[: len(prefix)] == list(prefix)]
    return line


def seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m)?", value).groups()  # type: ignore[union-attr]
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[unit]


def test_operator_secrets_are_required_not_defaulted():
    for name in REQUIRED:
        with pytest.raises(MissingVariable, match=name):
            compose({key: value for key, value in REQUIRED.items() if key != name})


def test_services_health_checks_and_start_order():
    services = compose()["services"]
    assert set(services) == {"db", "redis", "migrate", "app", "lb"}

    db = services["db"]
    assert db["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert "log_min_error_statement=panic" in db["command"]

    migrate = services["migrate"]
    assert migrate["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert migrate["restart"] == "no"

    app = services["app"]
    assert app["depends_on"] == {
        "db": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
        "redis": {"condition": "service_healthy"},
    }
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    assert int(app["deploy"]["replicas"]) >= 2
    # Replicas are reached through the balancer only.
    assert "container_name" not in app
    assert "ports" not in app
    assert reverse("health-ready") in " ".join(app["healthcheck"]["test"])
    assert migrate["image"] == app["image"]
    assert migrate["build"] == app["build"] == "."
    # `docker compose stop` waits longer than gunicorn drains and then lets requests in flight finish.
    app_env = app["environment"]
    drain_and_finish = int(app_env["GUNICORN_DRAIN_SECONDS"]) + int(app_env["GUNICORN_GRACEFUL_TIMEOUT"])
    assert seconds(app["stop_grace_period"]) > drain_and_finish

    lb = services["lb"]
    assert lb["depends_on"] == {"app": {"condition": "service_healthy"}}
    assert lb["image"].startswith("haproxy:")
    assert any(volume.startswith("./deploy/haproxy.cfg:") for volume in lb["volumes"])


def test_app_environment_is_complete_and_names_only_real_settings():
    file = compose()
    services = file["services"]
    app_env, migrate_env = services["app"]["environment"], services["migrate"]["environment"]
    db_env = services["db"]["environment"]

    assert app_env["DATABASE_URL"] == (
        f"postgres://{db_env['POSTGRES_USER']}:{db_env['POSTGRES_PASSWORD']}@db:5432/{db_env['POSTGRES_DB']}"
    )
    assert migrate_env["DATABASE_URL"] == app_env["DATABASE_URL"]
    assert app_env["DJANGO_SECRET_KEY"] == migrate_env["DJANGO_SECRET_KEY"] == REQUIRED["DJANGO_SECRET_KEY"]
    assert app_env["GUNICORN_BIND"] == "0.0.0.0:8000"
    # Throttle counters shared by every replica.
    assert app_env["REDIS_URL"] == "redis://redis:6379/0"
    assert "localhost" in app_env["DJANGO_ALLOWED_HOSTS"].split(",")
    assert migrate_env["DB_STATEMENT_TIMEOUT_MS"] == "0"
    # The balancer's fixed address is the one trusted proxy, inside the network's subnet.
    lb_address = services["lb"]["networks"]["backend"]["ipv4_address"]
    assert app_env["TRUSTED_PROXY_CIDRS"] == f"{lb_address}/32"
    subnet = file["networks"]["backend"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(lb_address) in ipaddress.ip_network(subnet)

    # Every variable the file sets is one the code reads: a typo would be silently ignored otherwise.
    code = "".join(
        path.read_text()
        for path in [
            ROOT / "tokens_service" / "settings.py",
            ROOT / "tokens_service" / "gunicorn_conf.py",
            *(ROOT / "core" / "management" / "commands").glob("*.py"),
        ]
    )
    for name in {*app_env, *migrate_env}:
        assert f'"{name}"' in code or f"'{name}'" in code, name


def test_load_balancer_points_at_the_app_replicas():
    services = compose()["services"]
    config = haproxy()
    frontend, backend = config["frontend http"], config["backend app"]

    # server-template app 10 app:8000 ...: every replica of the "app" service, on gunicorn's port.
    template = directive(backend, "server-template")
    app_port = services["app"]["environment"]["GUNICORN_BIND"].rsplit(":", 1)[1]
    assert template[3] == f"app:{app_port}"
    assert int(template[2]) >= int(services["app"]["deploy"]["replicas"])
    assert "check" in template
    assert "resolvers" in template
    # A stopping replica drains longer than the balancer takes to take it out of rotation.
    detect = seconds(template[template.index("inter") + 1]) * int(template[template.index("fall") + 1])
    assert int(services["app"]["environment"]["GUNICORN_DRAIN_SECONDS"]) > detect

    # Active health checks on readiness, with a Host the app allows.
    check = directive(backend, "http-check", "send")
    assert check[check.index("uri") + 1] == reverse("health-ready")
    assert check[check.index("Host") + 1] in services["app"]["environment"]["DJANGO_ALLOWED_HOSTS"].split(",")
    assert ["option", "forwardfor"] in frontend

    # The published port is the frontend's.
    [published] = services["lb"]["ports"]
    assert directive(frontend, "bind")[1] == ":" + published.rsplit(":", 1)[1]
    # The app answers a slow request (503) before the balancer gives up on it.
    timeout_server = seconds(directive(config["defaults"], "timeout", "server")[2])
    assert timeout_server > int(services["app"]["environment"]["GUNICORN_TIMEOUT"])


def test_dockerfile_builds_the_locked_app_on_python_slim():
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines() if line.strip() and line[0] != "#"]
    assert lines[0] == "FROM python:3.11-slim"
    assert "RUN pip install -r requirements.lock" in lines
    assert any(line.startswith("RUN ") and "collectstatic" in line for line in lines)
    assert any(line.startswith("USER ") and line != "USER root" for line in lines)
    cmd = [line for line in lines if line.startswith("CMD ")][-1]
    assert yaml.safe_load(cmd.removeprefix("CMD ")) == compose()["services"]["app"]["command"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "var", ".git"} <= set(ignored)


def _environ(env: Mapping[str, str]) -> dict[str, str]:
    """A container's environment here: ``python`` and ``gunicorn`` resolve to this virtualenv."""
    return {**os.environ, **env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def _local(command: list[str], env: Mapping[str, str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, env=_environ(env), capture_output=True, text=True, **kwargs)


@requires_postgres
def test_the_commands_compose_runs_work(private_pg, tmp_path):
    bootstrap_key = generate_key()
    file = compose({**REQUIRED, "AUTHENTIK_BOOTSTRAP_TOKEN": bootstrap_key})
    services = file["services"]
    # The only substitutions: the scratch database, a loopback port, a scratch static directory, and no
    # Redis (there is none here; the throttles then count per process).
    database_url = private_pg.create_database("compose")
    port = free_port()
    static_root = tmp_path / "static"
    local = {"DATABASE_URL": database_url, "STATIC_ROOT": str(static_root), "REDIS_URL": ""}

    # The Dockerfile's build step that collects static files.
    [collect] = [line for line in DOCKERFILE.read_text().splitlines() if "collectstatic" in line]
    assert _local(["sh", "-c", collect.removeprefix("RUN ")], local, timeout=120).returncode == 0

    # The one-shot step, twice: `docker compose up` runs it on every start.
    migrate_env = {**services["migrate"]["environment"], **local}
    first = _local(services["migrate"]["command"], migrate_env, timeout=180)
    assert first.returncode == 0, first.stderr
    assert "Created superuser akadmin" in first.stdout
    again = _local(services["migrate"]["command"], migrate_env, timeout=180)
    assert again.returncode == 0, again.stderr
    assert "Bootstrap skipped" in again.stdout

    app_env = {**services["app"]["environment"], **local, "GUNICORN_BIND": f"127.0.0.1:{port}"}
    healthcheck = [part.replace(":8000/", f":{port}/") for part in services["app"]["healthcheck"]["test"][1:]]
    server = subprocess.Popen(  # the app service's command, as is
        services["app"]["command"],
        cwd=ROOT,
        env=_environ(app_env),
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "app.log").open("w"),
    )
    try:
        for _ in range(100):
            if _local(healthcheck, app_env, timeout=10).returncode == 0:
                break
            assert server.poll() is None, (tmp_path / "app.log").read_text()
            time.sleep(0.2)
        else:
            pytest.fail("the app never became healthy")
        base = f"http://127.0.0.1:{port}"
        static = requests.get(f"{base}/static/admin/css/base.css", timeout=10)
        assert static.status_code == 200
        assert static.headers["Content-Type"].startswith("text/css")
        rotated = requests.post(
            base + reverse("token-set-key", kwargs={"identifier": "authentik-bootstrap-token"}),
            json={"key": generate_key()},
            headers={"Authorization": f"Bearer {bootstrap_key}", "Host": "localhost"},
            timeout=10,
        )
        assert rotated.status_code == 204
    finally:
        server.terminate()
        exit_code = server.wait(timeout=30)
    assert exit_code == 0
    log = (tmp_path / "app.log").read_text()
    assert bootstrap_key not in log
    assert REQUIRED["DJANGO_SECRET_KEY"] not in log
