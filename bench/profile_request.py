"""Where one request's time goes: the service's WSGI application called in a loop, in-process.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_service DJANGO_SECRET_KEY=... \
        .venv/bin/python bench/profile_request.py [--endpoint set_key] [--caller root] [-n 2000] [--cprofile]

Needs a database seeded by bench/run.py (it prints the seeded callers' keys into the spec file it keeps
in a temporary directory; pass it with --spec), or --spec pointing at such a file. Calls
``tokens_service.wsgi.application`` exactly as gunicorn does (same middleware, same signals), then the
baseline's ``application`` on ``BASELINE_DSN``, and prints the mean time per request split into
authentication, permission, service (the database write), SQL time and the rest (framework), plus
optionally the top of a cProfile.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokens_service.settings")

import django

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
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--endpoint", default="set_key")
    parser.add_argument("--caller", default="root")
    parser.add_argument("--target", default="bench-hot")
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--cprofile", action="store_true")
    args = parser.parse_args()
    spec = json.loads(args.spec.read_text())
    key = spec["callers"][args.caller]

    import core.api
    import core.authentication
    import core.permissions
    import core.services

    timers = {name: Timer() for name in ("authentication", "permission", "service", "sql")}
    auth_cls = core.authentication.BearerTokenAuthentication
    auth_cls.authenticate = timers["authentication"].wrap(auth_cls.authenticate)  # type: ignore[method-assign]
    core.permissions.user_has_token_perm = timers["permission"].wrap(core.permissions.user_has_token_perm)
    for name in ("token_set_key", "token_view_key"):
        if hasattr(core.api, name):
            setattr(core.api, name, timers["service"].wrap(getattr(core.api, name)))

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
        split["framework"] = split["total"] - split["authentication"] - split["permission"] - split["service"]
    print(f"service, {args.endpoint} as {args.caller}, in-process (no HTTP server), per request:")
    print(f"  {'':34} {'wall us':>8} {'CPU us':>8}")
    for name, label in (
        ("total", "whole request"),
        ("authentication", "authentication (incl. its SQL)"),
        ("permission", "permission (incl. its SQL)"),
        ("service", "service call (incl. its SQL)"),
        ("framework", "the rest: Django, DRF, middleware"),
        ("sql", "all SQL (Django cursor calls)"),
    ):
        print(f"  {label:34} {wall[name]:8.0f} {used[name]:8.0f}")

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
