"""SQL statements per request, counted in-process on the code path the servers run.

Service: Django's test client drives the real middleware stack, views and services against the
benchmark database, inside ``CaptureQueriesContext`` (which also records the BEGIN and COMMIT that
Django sends). Django's connection health check (``CONN_HEALTH_CHECKS``: a ``SELECT 1`` sent before
the first query of a request, outside Django's query log) is counted separately, so nothing is hidden.
Baseline: its single ``run`` function is wrapped with a counter.

Usage (run by bench/run.py): DATABASE_URL=... BASELINE_DSN=... python bench/count_queries.py PLAN.json
Prints one JSON object.
"""

import json
import os
import sys
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokens_service.settings")

import django

django.setup()

from django.db import close_old_connections, connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from bench import baseline  # noqa: E402

_fresh = iter(range(10**9))


def fresh_key() -> str:
    return f"count-queries-{os.getpid()}-{next(_fresh):08d}-0123456789abcdefghijklmnopqrstuvwxyz"


def requests_for(spec: dict[str, Any]) -> dict[str, Callable[[], tuple[str, str, bytes]]]:
    """name -> a function giving (method, path, body) for a fresh request."""
    hot = spec["hot"]
    return {
        "set_key": lambda: ("POST", f"/core/tokens/{hot}/set_key/", json.dumps({"key": fresh_key()}).encode()),
        "view_key": lambda: ("GET", f"/core/tokens/{hot}/view_key/", b""),
        "list": lambda: ("GET", "/core/tokens/", b""),
    }


def count_service(spec: dict[str, Any]) -> dict[str, Any]:
    client = Client(HTTP_HOST="127.0.0.1")
    health_checks = 0
    is_usable = connection.is_usable

    def counting_is_usable() -> bool:
        nonlocal health_checks
        health_checks += 1
        return is_usable()

    connection.is_usable = counting_is_usable  # type: ignore[method-assign]
    results: dict[str, Any] = {}
    for name, make in requests_for(spec).items():
        for caller, key in spec["callers"].items():
            headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
            for _ in range(3):  # warm: one-time work (content types, caches) is not per request
                method, path, body = make()
                client.generic(method, path, body, content_type="application/json", **headers)
            method, path, body = make()
            # What WSGIHandler does at request_started (the test client skips it): with CONN_HEALTH_CHECKS
            # it makes the next query of the request first send a health check.
            close_old_connections()
            health_checks = 0
            with CaptureQueriesContext(connection) as queries:
                response = client.generic(method, path, body, content_type="application/json", **headers)
            results[f"{name}/{caller}"] = {
                "status": response.status_code,
                "statements": len(queries.captured_queries),
                "health_checks": health_checks,
                "sql": [query["sql"].split()[0] for query in queries.captured_queries],
            }
    return results


def count_baseline(spec: dict[str, Any]) -> dict[str, Any]:
    statements: list[str] = []
    run = baseline.run

    def counting_run(sql: str, params: dict[str, Any]) -> Any:
        statements.append(sql.split()[0])
        return run(sql, params)

    baseline.run = counting_run  # type: ignore[assignment]
    results: dict[str, Any] = {}
    for name, make in requests_for(spec).items():
        for caller, key in spec["callers"].items():
            method, path, body = make()
            environ = {
                "REQUEST_METHOD": method,
                "PATH_INFO": path,
                "QUERY_STRING": "",
                "REMOTE_ADDR": "127.0.0.1",
                "CONTENT_TYPE": "application/json",
                "CONTENT_LENGTH": str(len(body)),
                "HTTP_AUTHORIZATION": f"Bearer {key}",
                "wsgi.input": BytesIO(body),
            }
            status: list[str] = []
            statements.clear()
            baseline.application(environ, lambda s, h, status=status: status.append(s))
            results[f"{name}/{caller}"] = {
                "status": int(status[0].split()[0]),
                "statements": len(statements),
                "health_checks": 0,
                "sql": list(statements),
            }
    return results


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    print(json.dumps({"service": count_service(spec), "baseline": count_baseline(spec)}))
