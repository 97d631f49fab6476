"""A real server process for black-box tests: gunicorn serving the test database over a real socket."""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from django.db import connection

from tests.helpers import ROOT, RawResponse, free_port, parse_raw_response


def database_url() -> str:
    """A URL for the database the test process is using (the test database, after setup)."""
    params = connection.settings_dict
    if connection.vendor == "postgresql":
        user = params.get("USER") or "postgres"
        password = f":{params['PASSWORD']}" if params.get("PASSWORD") else ""
        host = params.get("HOST") or "127.0.0.1"
        port = params.get("PORT") or 5432
        return f"postgres://{user}{password}@{host}:{port}/{params['NAME']}"
    return f"sqlite:///{params['NAME']}"


# Called with (request bytes, response) after every LiveServer.raw exchange.
RAW_OBSERVERS: list[Callable[[bytes, RawResponse], None]] = []
# Every server started by start_server in this session (the leak check reads their logs).
STARTED_SERVERS: list["LiveServer"] = []


@dataclass
class LiveServer:
    """A gunicorn process. ``url`` is its base URL; ``log_text()`` is everything it printed."""

    host: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def raw(self, request: bytes, timeout: float = 10.0) -> RawResponse:
        """Send ``request`` byte for byte and read the whole response (the server closes the connection).

        A server may answer (413, 431, ...) and close before it has read everything sent; the
        answer is still read. A ``100 Continue`` interim answer is skipped and a chunked body decoded.
        Every exchange is passed to the functions in ``RAW_OBSERVERS`` (the leak check reads them).
        """
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(request)
            chunks = []
            while True:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        response = parse_raw_response(b"".join(chunks))
        for observer in RAW_OBSERVERS:
            observer(request, response)
        return response

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(log_path: Path, extra_env: dict[str, str] | None = None, workers: int = 2) -> LiveServer:
    """Start gunicorn on a free loopback port against the current test database and wait until it answers."""
    from django.conf import settings

    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,
        "DJANGO_DEBUG": "",
        "DJANGO_SECURE_SSL": "0",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DB_CONN_MAX_AGE": "0",
        "WEB_CONCURRENCY": str(workers),
        "LOG_LEVEL": "DEBUG",
        # Abuse limits off unless a test asks for them (test_throttling starts its own servers), so
        # tests sharing the session server cannot throttle one another; no Redis from the caller's env.
        "THROTTLE_AUTH_FAILURES": "off",
        "THROTTLE_SET_KEY": "off",
        "THROTTLE_KEY_COLLISIONS": "off",
        "REDIS_URL": "",
        **(extra_env or {}),
    }
    log = log_path.open("ab")
    process = subprocess.Popen(  # fixed argv, our own venv
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "-c",
            str(ROOT / "tokens_service" / "gunicorn_conf.py"),
            "--bind",
            f"127.0.0.1:{port}",
            "tokens_service.wsgi:application",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()  # the child process has its own copy of the descriptor
    server = LiveServer(host="127.0.0.1", port=port, log_path=log_path, process=process, env=env)
    STARTED_SERVERS.append(server)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited early:\n{server.log_text()}")
        try:
            if requests.get(f"{server.url}/-/health/live/", timeout=1).status_code == 200:
                return server
        except requests.RequestException:  # not listening yet, or a worker still booting (read timeout)
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"gunicorn did not answer within 30 s:\n{server.log_text()}")


def worker_pids(server: LiveServer) -> list[int]:
    """The pids of the gunicorn workers (children of the master process)."""
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    return [int(pid) for pid in children.read_text().split()]


def _postgres_bindir() -> Path:
    """PG_BINDIR, else ``pg_config --bindir``, else the newest /usr/lib/postgresql/*/bin."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True, timeout=10)
        bindir = Path(out.stdout.strip())
        if (bindir / "pg_ctl").exists():
            return bindir
    except (OSError, subprocess.SubprocessError):
        pass
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not candidates:
        raise RuntimeError("PostgreSQL server binaries not found; set PG_BINDIR")
    return candidates[-1]


@dataclass
class PrivatePostgres:
    """A throwaway PostgreSQL cluster on its own port (trust auth, loopback only) that tests may stop,
    start and break at will, unlike the shared server on 5432."""

    bindir: Path
    root: Path
    port: int

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def url(self, dbname: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *argv: str) -> None:
        # initdb and the server refuse to run as root: run them as the postgres system user then.
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        result = subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {result.stdout}{result.stderr}")

    def start(self) -> None:
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(self.root / "server.log"),
            "-o",
            # As in docker-compose.yml: failing statements (their text carries key literals) are not logged.
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c log_min_error_statement=panic",
            "-w",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop")

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> Any:
        import psycopg

        return psycopg.connect(self.url(dbname), connect_timeout=5, **kwargs)

    def create_database(self, name: str) -> str:
        with self.connect(autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError):  # already stopped
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def private_postgres() -> PrivatePostgres:
    """initdb and start a private cluster on a free port; call ``destroy()`` when done."""
    root = Path(tempfile.mkdtemp(prefix="tokens-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    cluster = PrivatePostgres(bindir=_postgres_bindir(), root=root, port=free_port())
    try:
        cluster._run(
            str(cluster.bindir / "initdb"), "-D", str(cluster.datadir), "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        cluster.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return cluster


def migrate(database_url: str) -> None:
    """Run ``manage.py migrate`` against ``database_url`` in a fresh process."""
    from django.conf import settings

    env = {**os.environ, "DATABASE_URL": database_url, "DJANGO_SECRET_KEY": settings.SECRET_KEY}
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"migrate failed: {result.stdout}{result.stderr}")


def register_database(alias: str, url: str) -> None:
    """Make ``url`` usable in this process as ``connections[alias]`` (``Token.objects.using(alias)``)."""
    import dj_database_url
    from django.db import connections

    connections.settings[alias] = {**dj_database_url.parse(url, conn_health_checks=True)}
    connections.configure_settings(connections.settings)


def unregister_database(alias: str) -> None:
    from django.db import connections

    connections[alias].close()
    del connections[alias]
    del connections.settings[alias]
