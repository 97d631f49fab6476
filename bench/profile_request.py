"""Where one request's time goes: the service's WSGI application called in a loop, in-process.

    .venv/bin/python bench/profile_request.py [--endpoint set_key] [--caller root|global|object] [-n 2000] [--cprofile]

Run it after ``make bench``: it uses the databases that run seeded (``bench_service``, and
``bench_baseline`` for the comparison) and the callers' keys it left in ``var/bench/spec.json``.
It calls ``tokens_service.wsgi.application`` exactly as gunicorn does (same middleware, same
signals, no HTTP server), then the baseline's ``application``, and prints the time per request,
wall and CPU, split into authentication, permission check, the service call (the database write)
and the rest (Django, DRF, middleware), plus all SQL; with ``--cprofile``, the top of a CPU profile.
"""

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokens_service.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-profile")
# Keys at rest: the fixed values bench/run.py seeded the databases with.
os.environ.setdefault("TOKEN_KEYS_ENCRYPTION_KEYS", "bench:YmVuY2gtb25seS1rZXktZW5jcnlwdGlvbi1rZXktMzI=")
os.environ.setdefault("TOKEN_KEYS_PEPPERS", "bench:YmVuY2gtb25seS1sb29rdXAtZGlnZXN0LXBlcHBlciE=")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bench_service")
os.environ.setdefault("BASELINE_DSN", "postgresql://postgres@127.0.0.1:5432/bench_baseline")
os.environ.setdefault("THROTTLE_SET_KEY", "1000000000/min")  # as in bench/run.py

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402

from bench import baseline  # noqa: E402
from tokens_service.wsgi import application  # noqa: E402

_seq = iter(range(10**9))


def environ_for(endpoint: str, key: str, identifier: str) -> dict[str, Any]:
    body = b""
    method, path = "GET", "/core/tokens/"
    if endpoint == "set_key":
        method, path = "POST", f"/core/tokens/{identifier}/set_key/"
        body = json.dumps({"key": f"profile-{os.getpid()}-{next(_seq):09d}-0123456789abcdefghijklmnopq"}).encode()
    elif endpoint == "view_key":
        path = f"/core/tokens/{identifier}/view_key/"
    return {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8501",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8501",
        "HTTP_USER_AGENT": "wrk",
        "CONTENT_TYPE": "application/json" if body else "",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_AUTHORIZATION": f"Bearer {key}",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def call(app: Callable[..., Any], environ: dict[str, Any]) -> str:
    status: list[str] = []
    result = app(environ, lambda s, h, exc_info=None: status.append(s))
    for _ in result:
        pass
    if hasattr(result, "close"):
        result.close()
    return status[0]


class Timer:
    """Accumulated wall and CPU time spent inside a wrapped callable (outermost calls only)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.cpu = 0.0
        self.depth = 0

    def wrap(self, func: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.depth += 1
            start, cpu_start = time.perf_counter(), time.process_time()
            try:
                return func(*args, **kwargs)
            finally:
                self.depth -= 1
                if self.depth == 0:
                    self.total += time.perf_counter() - start
                    self.cpu += time.process_time() - cpu_start

        return wrapper


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", type=Path, default=REPO / "var" / "bench" / "spec.json")
    parser.add_argument("--endpoint", default="set_key")
    parser.add_argument("--caller", default="root")
    parser.add_argument("--target", default="bench-hot")
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--cprofile", action="store_true")
    args = parser.parse_args()
    spec = json.loads(args.spec.read_text())
    key = spec["callers"][args.caller]

    from rest_framework.views import APIView

    import core.api
    import core.authentication
    import core.permissions
    import tokens_service.logging
    import tokens_service.throttling

    names = ("bearer", "throttles", "permission", "service", "log", "sql")
    timers = {name: Timer() for name in names}
    core.authentication.bearer_match = timers["bearer"].wrap(core.authentication.bearer_match)
    failures = tokens_service.throttling.FailedAuthenticationThrottle
    failures.check = timers["throttles"].wrap(failures.check)  # type: ignore[method-assign]
    APIView.check_throttles = timers["throttles"].wrap(APIView.check_throttles)  # type: ignore[method-assign]
    core.permissions.user_has_token_perm = timers["permission"].wrap(core.permissions.user_has_token_perm)
    for name in ("token_set_key", "token_view_key"):
        if hasattr(core.api, name):
            setattr(core.api, name, timers["service"].wrap(getattr(core.api, name)))
    access = tokens_service.logging.access_logger
    access.log = timers["log"].wrap(access.log)  # type: ignore[method-assign]

    def sql_timer(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        return timers["sql"].wrap(execute)(sql, params, many, context)

    for _ in range(50):
        status = call(application, environ_for(args.endpoint, key, args.target))
    print(f"service answers {status}")
    for timer in timers.values():
        timer.total = timer.cpu = 0.0
    with connection.execute_wrapper(sql_timer):
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(args.n):
            call(application, environ_for(args.endpoint, key, args.target))
        total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    wall = {name: timer.total / args.n * 1e6 for name, timer in timers.items()}
    wall["total"] = total / args.n * 1e6
    used = {name: timer.cpu / args.n * 1e6 for name, timer in timers.items()}
    used["total"] = cpu / args.n * 1e6
    for split in (wall, used):
        split["rest"] = split["total"] - sum(split[name] for name in names if name != "sql")
    print(f"service, {args.endpoint} as {args.caller}, in-process (no HTTP server), per request:")
    print(f"  {'':44} {'wall us':>8} {'CPU us':>8}")
    for name, label in (
        ("total", "whole request"),
        ("bearer", "bearer lookup (one query)"),
        ("permission", "permission query (refused bodies only)"),
        ("service", "service call (the write: one statement)"),
        ("throttles", "throttles (auth failures, per-user rate)"),
        ("log", "access log line"),
        ("rest", "the rest: Django, DRF, middleware, JSON"),
        ("sql", "of all this, SQL statements (wall: round trips)"),
    ):
        print(f"  {label:44} {wall[name]:8.0f} {used[name]:8.0f}")

    for _ in range(50):
        bstatus = call(baseline.application, environ_for(args.endpoint, key, args.target))
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(args.n):
        call(baseline.application, environ_for(args.endpoint, key, args.target))
    btotal = (time.perf_counter() - start) / args.n * 1e6
    bcpu = (time.process_time() - cpu_start) / args.n * 1e6
    print(f"baseline answers {bstatus}: {btotal:.0f} us per request (wall), {bcpu:.0f} us of CPU")

    if args.cprofile:
        profiler = cProfile.Profile(time.process_time)  # CPU time: robust on a busy machine
        profiler.enable()
        for _ in range(args.n):
            call(application, environ_for(args.endpoint, key, args.target))
        profiler.disable()
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream)
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(30)
        print(stream.getvalue())


if __name__ == "__main__":
    main()
