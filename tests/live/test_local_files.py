"""Local files of `make run`: var/ is 0700; the SQLite database, its journals and the secret are 0600."""

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.helpers import ROOT, free_port

COPIED = ("Makefile", "manage.py", "requirements-dev.lock", "core", "events", "tokens_service")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _umask(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise AssertionError(f"no Umask line for {pid}")


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.skipif(shutil.which("make") is None or not Path("/proc/self/status").exists(), reason="needs make, /proc")
def test_make_run_creates_private_var_database_and_journals(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, app / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, app / name)
    port = free_port()
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"DATABASE_URL", "SQLITE_PATH", "DJANGO_SECRET_KEY", "REDIS_URL", "STATIC_ROOT"}
    }
    env.update({"WEB_CONCURRENCY": "1", "LOG_LEVEL": "WARNING", "AUTHENTIK_BOOTSTRAP_TOKEN": ""})
    log_path = tmp_path / "make.log"
    with log_path.open("wb") as log:
        make = subprocess.Popen(  # fixed argv: the project's own Makefile and virtualenv
            [
                "make",
                "--no-print-directory",
                "run",
                "STAMP=Makefile",  # the virtualenv is installed already
                f"BIN={Path(sys.executable).parent}",
                "HOST=127.0.0.1",
                f"PORT={port}",
            ],
            cwd=app,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120  # failsafe only: migrate, collectstatic and bootstrap run first
        while True:
            assert make.poll() is None, log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")
            try:
                if requests.get(f"http://127.0.0.1:{port}/-/health/ready/", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)

        var = app / "var"
        assert _mode(var) == 0o700
        database = var / "db.sqlite3"
        assert database.exists()
        files = [database, var / "secret_key", *var.glob("db.sqlite3-*")]
        assert {path.name: _mode(path) for path in files} == {path.name: 0o600 for path in files}
        # Journal files (-journal, -wal, -shm) come and go with transactions; whoever creates them, the
        # migrate step before or the server now, does so with umask 077, so they are 0600 too.
        (server,) = _children(make.pid)  # the recipe's shell, which exec'd gunicorn
        workers = _children(server)
        assert workers
        assert {pid: _umask(pid) for pid in [server, *workers]} == {pid: 0o077 for pid in [server, *workers]}
    finally:
        os.killpg(make.pid, signal.SIGTERM)
        try:
            make.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()


def test_settings_create_the_sqlite_directory_private(tmp_path):
    target = tmp_path / "nested" / "data" / "db.sqlite3"
    env = {
        **{name: value for name, value in os.environ.items() if name != "DATABASE_URL"},
        "SQLITE_PATH": str(target),
        "DJANGO_SECRET_KEY": "test-only-secret-key-not-for-production",
    }
    subprocess.run(  # fixed argv, our own interpreter
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "tokens_service.settings"},
        check=True,
        timeout=60,
    )
    assert _mode(target.parent) == 0o700
