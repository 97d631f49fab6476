"""Latency of every typical token and event list request, on a small and a big database, side by side.

Usage (databases built by bench/seed_big.py)::

    python bench/scale.py --small postgres://postgres@127.0.0.1:5432/hf_small \
        --big postgres://postgres@127.0.0.1:5432/hf_big [--repeat 7]

Each database is measured in its own process (Django binds one database per process) with Django's
in-process test client: the full middleware, authentication (a real ``Authorization: Bearer`` header),
permission checks, filters, pagination and serialization run, but no HTTP server and no network. Each
request runs once to warm caches, then ``--repeat`` times; the table shows the median and the maximum
of those runs, and every status code seen.
"""

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKEN_PK = hashlib.md5(b"tok-32", usedforsecurity=False).hexdigest()  # seed_big's numbering
TOKEN_PK_DASHED = f"{TOKEN_PK[:8]}-{TOKEN_PK[8:12]}-{TOKEN_PK[12:16]}-{TOKEN_PK[16:20]}-{TOKEN_PK[20:]}"

E = "/api/v3/events/events/"
T = "/api/v3/core/tokens/"
# Times relative to the run (seed_big.py spreads expiry dates and last uses around the seeding time).
_NOW = datetime.now(UTC).replace(microsecond=0)
EXPIRES = (_NOW + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
DAYS_AGO_7 = (_NOW - timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%SZ")
DAYS_AGO_90 = (_NOW - timedelta(days=90)).strftime("%Y-%m-%dT%H:%M:%SZ")
# (name, caller, path): every list, filter, search, ordering, deep page and volume request.
REQUESTS = [
    ("events list", "super", E),
    ("events ?action=model", "super", E + "?action=model"),
    ("events ?action=rotate (rare)", "super", E + "?action=rotate"),
    ("events ?actions= x2", "super", E + "?actions=model_deleted&actions=secret_rotate"),
    ("events ?actions=suspicious_request", "super", E + "?actions=suspicious_request"),
    ("events ?username=", "super", E + "?username=user13"),
    ("events ?client_ip=", "super", E + "?client_ip=10.1.0.1"),
    ("events ?client_ip= (none)", "super", E + "?client_ip=192.0.2.1"),
    ("events ?context_model_pk=", "super", E + f"?context_model_pk={TOKEN_PK_DASHED}"),
    ("events ?context_model_app&name", "super", E + "?context_model_app=authentik_core&context_model_name=token"),
    ("events ?context_model_name (none)", "super", E + "?context_model_name=application"),
    ("events ?brand_name= (none)", "super", E + "?brand_name=main"),
    ("events ?context_device= (none)", "super", E + "?context_device=d1"),
    ("events ?context_authorized_app=", "super", E + "?context_authorized_app=app1"),
    ("events ?search=user13", "super", E + "?search=user13"),
    ("events ?search=login", "super", E + "?search=login"),
    ("events ?search=10.1.0.1", "super", E + "?search=10.1.0.1"),
    ("events ?search=tok-32", "super", E + "?search=tok-32"),
    ("events ?search=nothing", "super", E + "?search=zzzznothing"),
    ("events ?ordering=created", "super", E + "?ordering=created"),
    ("events ?ordering=action", "super", E + "?ordering=action"),
    ("events ?ordering=-client_ip", "super", E + "?ordering=-client_ip"),
    ("events ?ordering=expires", "super", E + "?ordering=expires"),
    ("events ?ordering=app", "super", E + "?ordering=app"),
    ("events ?page=100&page_size=100", "super", E + "?page=100&page_size=100"),
    ("events ?page=5000 (beyond the bound)", "super", E + "?page=5000"),
    ("events ?username&page=2", "super", E + "?username=user13&page=2"),
    ("events /volume/ (7 days)", "super", E + "volume/"),
    ("events /volume/?history_days=90", "super", E + "volume/?history_days=90"),
    ("events /volume/?history_days=366", "super", E + "volume/?history_days=366"),
    ("events /volume/ ?action=model 90d", "super", E + "volume/?history_days=90&action=model"),
    ("events /actions/", "super", E + "actions/"),
    ("tokens list (superuser)", "super", T),
    ("tokens list (non-superuser)", "user", T),
    ("tokens ?search= (non-superuser)", "user", T + "?search=tok-10"),
    ("tokens ?search=tok-4242", "super", T + "?search=tok-4242"),
    ("tokens ?search=backup", "super", T + "?search=backup"),
    ("tokens ?search=user13", "super", T + "?search=user13"),
    ("tokens ?identifier=", "super", T + "?identifier=tok-4242"),
    ("tokens ?user__username=", "super", T + "?user__username=user13"),
    ("tokens ?intent=app_password", "super", T + "?intent=app_password"),
    ("tokens ?description=backup job", "super", T + "?description=backup%20job"),
    ("tokens ?managed=", "super", T + "?managed=goauthentik.io/managed/5000"),
    ("tokens ?expiring=false", "super", T + "?expiring=false"),
    ("tokens ?ordering=-expires", "super", T + "?ordering=-expires"),
    ("tokens ?ordering=user__username", "super", T + "?ordering=user__username"),
    ("tokens ?ordering=description", "super", T + "?ordering=description"),
    ("tokens ?ordering=-intent", "super", T + "?ordering=-intent"),
    ("tokens ?ordering=managed", "super", T + "?ordering=managed"),
    ("tokens ?ordering=expiring", "super", T + "?ordering=expiring"),
    ("tokens ?ordering=-identifier", "super", T + "?ordering=-identifier"),
    ("tokens ?ordering=last_used", "super", T + "?ordering=last_used"),
    ("tokens ?ordering=-last_used", "super", T + "?ordering=-last_used"),
    ("tokens ?expires=", "super", T + "?expires=" + EXPIRES),
    ("tokens ?last_used__lt= (90 days)", "super", T + "?last_used__lt=" + DAYS_AGO_90),
    ("tokens ?last_used__gte= (7 days)", "super", T + "?last_used__gte=" + DAYS_AGO_7),
    ("tokens ?last_used__isnull=true", "super", T + "?last_used__isnull=true"),
    ("tokens ?unused_since= (90 days)", "super", T + "?unused_since=" + DAYS_AGO_90),
    ("tokens ?unused_since= (non-superuser)", "user", T + "?unused_since=" + DAYS_AGO_90),
    ("tokens ?page=10&page_size=100", "super", T + "?page=10&page_size=100"),
    ("tokens ?page=5000 (beyond the bound)", "super", T + "?page=5000"),
    ("tokens ?page=3 (non-superuser)", "user", T + "?page=3"),
    ("tokens detail (non-superuser)", "user", T + "tok-100/"),
]


def selected(only: list[str] | None) -> list[tuple[str, str, str]]:
    """The requests whose name contains one of ``only`` (every request when ``only`` is empty)."""
    return [request for request in REQUESTS if not only or any(part in request[0] for part in only)]


def measure(repeat: int, only: list[str] | None) -> list[dict]:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokens_service.settings")
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-secret-key-not-for-production")
    import django

    django.setup()
    from django.test import Client

    from bench.seed_big import CALLER_KEYS

    clients = {
        "super": Client(
            HTTP_AUTHORIZATION=f"Bearer {CALLER_KEYS['bench-super']}",
            HTTP_HOST="127.0.0.1",
            raise_request_exception=False,
        ),
        "user": Client(
            HTTP_AUTHORIZATION=f"Bearer {CALLER_KEYS['bench-user']}",
            HTTP_HOST="127.0.0.1",
            raise_request_exception=False,
        ),
    }
    results = []
    for name, caller, path in selected(only):
        client = clients[caller]
        statuses = set()
        timings = []
        for attempt in range(repeat + 1):
            started = time.perf_counter()
            response = client.get(path)
            elapsed = (time.perf_counter() - started) * 1000
            statuses.add(response.status_code)
            if attempt:  # the first run warms caches
                timings.append(elapsed)
        results.append(
            {
                "name": name,
                "median": statistics.median(timings),
                "max": max(timings),
                "statuses": sorted(statuses),
            }
        )
        print(f"  {name}: {results[-1]['median']:.1f} ms {sorted(statuses)}", file=sys.stderr, flush=True)
    return results


def run_child(url: str, repeat: int, only: list[str] | None) -> list[dict]:
    env = {**os.environ, "DATABASE_URL": url, "LOG_LEVEL": "WARNING"}
    print(f"measuring {url.rsplit('/', 1)[-1]} ...", file=sys.stderr, flush=True)
    out = subprocess.run(
        [sys.executable, __file__, "--measure", "--repeat", str(repeat), *(f"--only={part}" for part in only or [])],
        env=env,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", help="DATABASE_URL of the small database")
    parser.add_argument("--big", help="DATABASE_URL of the big database")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--only", action="append", help="measure only the requests whose name contains this (repeatable)"
    )
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.repeat, args.only)))
        return
    requests = selected(args.only)
    sizes = {
        label: run_child(url, args.repeat, args.only)
        for label, url in (("small", args.small), ("big", args.big))
        if url
    }
    labels = list(sizes)
    header = f"{'request':40}" + "".join(f" | {label + ' median / max ms (status)':32}" for label in labels)
    print(header)
    print("-" * len(header))
    over = []
    for index, (name, _, _) in enumerate(requests):
        cells = []
        for label in labels:
            row = sizes[label][index]
            status = ",".join(str(code) for code in row["statuses"])
            cells.append(f" | {row['median']:8.1f} / {row['max']:7.1f} ({status})".ljust(35))
            if label == labels[-1] and (row["median"] >= 50 or row["max"] >= 200 or max(row["statuses"]) >= 500):
                over.append(name)
        print(f"{name:40}" + "".join(cells))
    print(
        f"\n{len(requests)} requests; over budget on the last size (median >= 50 ms, max >= 200 ms or 5xx): {len(over)}"
    )
    for name in over:
        print(f"  {name}")


if __name__ == "__main__":
    main()
