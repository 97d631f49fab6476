"""The benchmark: the service versus a framework-free baseline, on PostgreSQL, under gunicorn, driven by wrk.

    make bench                       # or: .venv/bin/python bench/run.py [--duration 10] [--out FILE]

What it does, in one run (about 7 minutes with the defaults):
1. Creates two databases, ``bench_service`` and ``bench_baseline``: migrated, seeded with a superuser, a
   global-permission user and an object-permission user (each with an api token), one "hot" target
   token and ``--spread`` more (bench/seed.py). The baseline's copy is a template copy of the
   service's, so both start from identical data.
2. Counts SQL statements per request in-process on the same code path (bench/count_queries.py).
3. Starts the service (``tokens_service.wsgi``) and the baseline (``bench.baseline``) under gunicorn
   with the same ``tokens_service/gunicorn_conf.py`` and environment, on 127.0.0.1.
4. For every point (endpoint, caller, target, connections) drives each server with wrk for
   ``--duration`` seconds in total, split into ``--rounds`` slices that alternate between the two
   servers (so a burst of load from elsewhere on the machine hits both alike), every set_key request
   with a fresh key; each slice starts after a ``VACUUM`` of that server's token table, as autovacuum
   would clean a live database (it may be off on the machine). Prints requests/s (all requests / all
   time), the median over the rounds of the p50/p95/p99 latencies, the non-2xx count, the CPU time per
   request of the server's gunicorn workers and PostgreSQL backends (from /proc), and the ratios
   service / baseline.
5. Counts database transactions per request on the server side (``pg_stat_database``), prints the
   peak RSS (VmHWM) of every gunicorn worker, and checks the targets of issue 7.

The machine is shared and absolute numbers drift; the ratio measured within one run is the figure
that counts. Load goes to 127.0.0.1 only, bounded in time.
"""

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import psycopg
from psycopg import sql

# tokens_service/pagination.py: `count` is exact up to this many rows (the benchmark does not import the app).
EXACT_COUNT_LIMIT = 1_000

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LUA = REPO / "bench" / "wrk.lua"
GUNICORN_CONF = REPO / "tokens_service" / "gunicorn_conf.py"
HOT = "bench-hot"
SPREAD_PREFIX = "bench-t-"
CALLERS = ("root", "global", "object")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Point:
    endpoint: str  # set_key | view_key | list
    caller: str  # root | global | object
    target: str  # hot | spread | - (list)
    connections: int

    @property
    def label(self) -> str:
        return f"{self.endpoint:<8} {self.caller:<6} {self.target:<6} c={self.connections:<2}"


def plan(connections: list[int]) -> list[Point]:
    points = [Point("set_key", "root", target, c) for target in ("hot", "spread") for c in connections]
    points += [Point("set_key", caller, "hot", 8) for caller in ("global", "object")]
    points += [Point("set_key", "object", "spread", 8)]
    points += [Point("view_key", "root", "hot", c) for c in connections]
    points += [Point("list", "root", "-", c) for c in connections]
    return points


class Tee:
    """Everything printed goes to the terminal and to the results file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file: TextIO = path.open("w")

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


# --- setup --------------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """wrk from Debian's packages; installed with apt-get when missing."""
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk is not installed; installing Debian's package 'wrk' with apt-get ...", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run([*sudo, "apt-get", "install", "-y", "-q", "wrk"], check=True, stdout=subprocess.DEVNULL)
    found = shutil.which("wrk")
    if not found:
        sys.exit("wrk could not be installed: apt-get install wrk, then run again")
    return found


def recreate_databases(admin_url: str, service_db: str, baseline_db: str, env: dict[str, str], spec_path: Path) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name in (baseline_db, service_db):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(service_db)))
    python = str(BIN / "python")
    subprocess.run([python, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=REPO, env=env, check=True)
    subprocess.run([python, "bench/seed.py", str(spec_path)], cwd=REPO, env=env, check=True)
    # Planner statistics, as autovacuum would have gathered them on a live database.
    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("ANALYZE")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(baseline_db), sql.Identifier(service_db))
        )


def vacuum_tokens(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM authentik_core_token")


def db_url(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


@contextmanager
def gunicorn(app: str, port: int, env: dict[str, str], log: Path) -> Any:
    """A gunicorn master with the production configuration; stopped (by its pid) on exit."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", str(GUNICORN_CONF), "--bind", f"127.0.0.1:{port}", app],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/health/ready/", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{app} did not start; see {log}")
                time.sleep(0.2)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def workers_of(master_pid: int) -> list[int]:
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    return [int(pid) for pid in children]


def memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            fields[name] = int(value.split()[0])
    return fields


def cpu_ticks(pids: list[int]) -> int:
    """User plus system CPU time of ``pids`` so far, in clock ticks (processes that are gone count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def backends_of(admin: psycopg.Connection[Any], db: str) -> list[int]:
    rows = admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (db,)).fetchall()
    return [int(row[0]) for row in rows]


def request(port: int, method: str, path: str, bearer: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    req.add_header("Authorization", f"Bearer {bearer}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# --- measuring ----------------------------------------------------------------------------------------


def xacts(admin_url: str, db: str) -> int:
    """Committed plus rolled-back transactions of ``db`` (each autocommit statement is one)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (db,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def wrk(wrk_bin: str, port: int, point: Point, bearer: str, spread: int, duration: int, prefix: str) -> dict[str, Any]:
    target = f"hot:{HOT}" if point.target != "spread" else f"spread:{SPREAD_PREFIX}:{spread}"
    threads = min(point.connections, 2)
    cmd = [
        wrk_bin,
        f"-t{threads}",
        f"-c{point.connections}",
        f"-d{int(duration)}s",
        "--timeout",
        "5s",
        "-s",
        str(LUA),
        f"http://127.0.0.1:{port}",
        "--",
        point.endpoint,
        bearer,
        target,
        prefix,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("BENCH_RESULT "))
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            result["errors"] = (
                result["client_errors"]
                + result["server_errors"]
                + result["other"]
                + result["socket_errors"]
                + result["timeouts"]
            )
            return result
    raise RuntimeError(f"wrk gave no result: {out.stdout}\n{out.stderr}")


def merge(slices: list[dict[str, Any]]) -> dict[str, Any]:
    """One figure from alternating slices: throughput over all of them, the median slice's percentiles."""
    merged: dict[str, Any] = {
        "requests": sum(r["requests"] for r in slices),
        "errors": sum(r["errors"] for r in slices),
        "last_bad_status": max(r["last_bad_status"] for r in slices),
    }
    merged["rps"] = merged["requests"] / (sum(r["duration_us"] for r in slices) / 1e6)
    for name in ("app_cpu_us", "db_cpu_us"):
        merged[name] = sum(r[name] * r["requests"] for r in slices) / max(merged["requests"], 1)
    for name in ("p50_us", "p95_us", "p99_us"):
        merged[name] = statistics.median(r[name] for r in slices)
    return merged


def ms(us: float) -> str:
    return f"{us / 1000:.2f}"


# --- main ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per point and server (default 10)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating slices per point (default 5)")
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the service's gunicorn only (experiments, e.g. DB_CONN_MAX_AGE=0)",
    )
    parser.add_argument("--connections", default="1,8,32", help="concurrency levels (default 1,8,32)")
    parser.add_argument("--spread", type=int, default=1000, help="number of spread target tokens (default 1000)")
    parser.add_argument("--only", default="", help="comma-separated endpoints to run (set_key,view_key,list)")
    parser.add_argument("--pg", default=os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432"))
    parser.add_argument("--service-db", default="bench_service")
    parser.add_argument("--baseline-db", default="bench_baseline")
    parser.add_argument("--service-port", type=int, default=8501)
    parser.add_argument("--baseline-port", type=int, default=8502)
    parser.add_argument("--out", type=Path, default=REPO / "var" / "bench" / "last-run.txt")
    args = parser.parse_args()
    connections = [int(c) for c in args.connections.split(",")]
    only = {e for e in args.only.split(",") if e}

    wrk_bin = ensure_wrk()
    out = Tee(args.out)
    # Working files (the seeded callers' keys, server logs) stay out of the repository, in var/.
    tmp = REPO / "var" / "bench"
    tmp.mkdir(parents=True, exist_ok=True)
    admin_url = db_url(args.pg, "postgres")
    spec = {
        "callers": {name: f"bench-{name}-" + secrets.token_urlsafe(40) for name in CALLERS},
        "hot": HOT,
        "spread": args.spread,
        "spread_prefix": SPREAD_PREFIX,
    }
    spec_path = tmp / "spec.json"
    spec_path.write_text(json.dumps(spec))
    spec_path.chmod(0o600)

    env = {
        **os.environ,
        "DJANGO_SECRET_KEY": "bench-" + secrets.token_urlsafe(40),
        # Keys at rest: fixed public values (the bench data protects nothing), shared by the seeding, both
        # servers and bench/profile_request.py, which reuses the seeded databases.
        "TOKEN_KEYS_ENCRYPTION_KEYS": "bench:YmVuY2gtb25seS1rZXktZW5jcnlwdGlvbi1rZXktMzI=",
        "TOKEN_KEYS_PEPPERS": "bench:YmVuY2gtb25seS1sb29rdXAtZGlnZXN0LXBlcHBlciE=",
        "DATABASE_URL": db_url(args.pg, args.service_db),
        "BASELINE_DSN": db_url(args.pg, args.baseline_db).replace("postgres://", "postgresql://", 1),
        "PYTHONPATH": str(REPO),
        # The per-caller abuse limit would cap set_key at a few hundred requests a minute; a huge rate keeps
        # the throttle's work in every request while never refusing one.
        "THROTTLE_SET_KEY": "1000000000/min",
    }
    env.pop("DJANGO_DEBUG", None)
    git = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True)
    out(f"# tokens-service benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M UTC}, commit {git.stdout.strip() or '?'}")
    workers = subprocess.run(
        [str(BIN / "python"), "-c", f"exec(open({str(GUNICORN_CONF)!r}).read()); print(workers, threads)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    with psycopg.connect(admin_url) as conn:
        pg_version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    out(
        f"# {os.cpu_count()} CPUs, PostgreSQL {pg_version}, Python {sys.version.split()[0]}, gunicorn "
        f"{workers[0]} workers x {workers[1]} threads (tokens_service/gunicorn_conf.py) for both servers, "
        f"{args.duration:g} s per point and server, wrk with bench/wrk.lua, {args.spread} spread tokens"
    )

    print("creating and seeding the databases ...", flush=True)
    recreate_databases(admin_url, args.service_db, args.baseline_db, env, spec_path)

    counted = subprocess.run(
        [str(BIN / "python"), "bench/count_queries.py", str(spec_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    counts = json.loads(counted.stdout.strip().splitlines()[-1])
    out()
    out("## SQL statements per request (in-process, same code path; BEGIN/COMMIT included when sent)")
    out(f"{'request':<16} {'service':>8} {'+health':>8} {'baseline':>8}   service statements")
    for name, svc in counts["service"].items():
        base = counts["baseline"].get(name, {})
        out(
            f"{name:<16} {svc['statements']:>8} {svc['health_checks']:>8} {base.get('statements', '-'):>8}   "
            f"{' '.join(svc['sql'])} (HTTP {svc['status']} / baseline {base.get('status', '-')})"
        )

    results: dict[tuple[Point, str], dict[str, Any]] = {}
    memory: dict[str, list[dict[str, int]]] = {}
    service_env = {**env, **dict(item.split("=", 1) for item in args.service_env)}
    for item in args.service_env:
        out(f"# service environment: {item}")
    baseline_env = {**env, "DATABASE_URL": ""}
    with ExitStack() as stack:
        monitor = stack.enter_context(psycopg.connect(admin_url, autocommit=True))
        servers = {
            "service": (
                args.service_port,
                args.service_db,
                stack.enter_context(
                    gunicorn("tokens_service.wsgi:application", args.service_port, service_env, tmp / "service.log")
                ),
            ),
            "baseline": (
                args.baseline_port,
                args.baseline_db,
                stack.enter_context(
                    gunicorn("bench.baseline:application", args.baseline_port, baseline_env, tmp / "baseline.log")
                ),
            ),
        }
        # Which endpoints both servers answer (the list and view_key may not be built yet), and whether
        # the baseline answers what the service answers: the same list, a key from view_key, 204s.
        available = []
        for endpoint, method, path, body in (
            ("set_key", "POST", f"/core/tokens/{HOT}/set_key/", json.dumps({"key": "probe-" + "x" * 40}).encode()),
            ("view_key", "GET", f"/core/tokens/{HOT}/view_key/", None),
            ("list", "GET", "/core/tokens/?page_size=50", None),
        ):
            answers = {
                (caller, name): request(port, method, path, spec["callers"][caller], body)
                for caller in CALLERS
                for name, (port, _, _) in servers.items()
            }
            statuses = {f"{name}/{caller}": status for (caller, name), (status, _) in answers.items()}
            if not all(200 <= s < 300 for s in statuses.values()) or (only and endpoint not in only):
                out(f"# skipping {endpoint}: probe answered {statuses}" + (" (--only)" if only else ""))
                continue
            for caller in CALLERS:
                bodies = [answers[(caller, name)][1] for name in servers]
                parsed = [json.loads(content) if content else None for content in bodies]
                if endpoint == "view_key":  # different keys (each server re-keyed its own copy)
                    parsed = [sorted(body) for body in parsed]
                if endpoint == "list":  # each copy records the use of its own caller tokens (the service only)
                    for body in parsed:
                        for row in body["results"]:
                            row.pop("last_used", None)
                            row.pop("last_used_ip", None)
                        # Past the exact-count bound the service reports the planner's estimate (README,
                        # "Scale"); the baseline counts exactly. Everything else must match.
                        if body["pagination"]["count"] > EXACT_COUNT_LIMIT:
                            body["pagination"]["count"] = body["pagination"]["total_pages"] = "estimated"
                if parsed[0] != parsed[1]:
                    sys.exit(
                        f"the baseline's {endpoint} answer to {caller} differs from the service's:\n"
                        f"service:  {json.dumps(parsed[0], sort_keys=True)[:3000]}\n"
                        f"baseline: {json.dumps(parsed[1], sort_keys=True)[:3000]}"
                    )
            available.append(endpoint)
        out(f"# baseline answers checked against the service's: {', '.join(available)}")
        points = [p for p in plan(connections) if p.endpoint in available]

        print("warming up ...", flush=True)
        for endpoint in available:
            for port, _, _ in servers.values():
                wrk(wrk_bin, port, Point(endpoint, "root", "spread", 8), spec["callers"]["root"], args.spread, 2, "w")

        out()
        out(
            f"## Throughput and latency ({args.rounds} alternating rounds per point; req/s = all requests / all"
            " time; latencies in ms, median of the rounds)"
        )
        out("   CPU/req: microseconds of CPU per request in the server's gunicorn workers (app) and PostgreSQL")
        out("   backends (db), measured from /proc, so unaffected by whatever else runs on the machine.")
        out(
            f"{'point':<30} {'server':<8} {'req/s':>8} {'p50':>7} {'p95':>7} {'p99':>7} {'errors':>7}"
            f" {'CPU/req app':>12} {'db':>6}"
        )
        run_id = secrets.token_hex(3)
        slice_seconds = max(1, round(args.duration / args.rounds))
        for index, point in enumerate(points):
            slices: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
            for round_no in range(args.rounds):
                order = ["service", "baseline"] if (index + round_no) % 2 == 0 else ["baseline", "service"]
                for name in order:
                    port = servers[name][0]
                    # The dead row versions left by the slices before, removed as autovacuum would on a live
                    # database (here it may be off: then each set_key slice would pay for all earlier ones).
                    vacuum_tokens(db_url(args.pg, servers[name][1]))
                    bearer = spec["callers"][point.caller]
                    prefix = f"{run_id}{index:02d}{round_no}{name[0]}"
                    # CPU spent per request by this server's gunicorn workers and PostgreSQL backends,
                    # whatever else runs on the machine meanwhile.
                    workers, backends = workers_of(servers[name][2].pid), backends_of(monitor, servers[name][1])
                    before = cpu_ticks(workers), cpu_ticks(backends)
                    result = wrk(wrk_bin, port, point, bearer, args.spread, slice_seconds, prefix)
                    done = max(result["requests"], 1) * CLOCK_TICKS / 1e6
                    result["app_cpu_us"] = (cpu_ticks(workers) - before[0]) / done
                    result["db_cpu_us"] = (cpu_ticks(backends) - before[1]) / done
                    slices[name].append(result)
            for name in ("service", "baseline"):
                r = results[(point, name)] = merge(slices[name])
                bad = f" (last bad status {r['last_bad_status']})" if r["errors"] else ""
                out(
                    f"{point.label:<30} {name:<8} {r['rps']:>8.0f} {ms(r['p50_us']):>7} {ms(r['p95_us']):>7} "
                    f"{ms(r['p99_us']):>7} {r['errors']:>7} {r['app_cpu_us']:>12.0f} {r['db_cpu_us']:>6.0f}{bad}"
                )
            svc, base = results[(point, "service")], results[(point, "baseline")]
            out(
                f"{'':<30} {'ratio':<8} {svc['rps'] / base['rps']:>8.2f} "
                f"{svc['p50_us'] / max(base['p50_us'], 1):>6.2f}x {svc['p95_us'] / max(base['p95_us'], 1):>6.2f}x "
                f"{svc['p99_us'] / max(base['p99_us'], 1):>6.2f}x {'':>7}"
                f" {svc['app_cpu_us'] / base['app_cpu_us']:>11.2f}x {svc['db_cpu_us'] / base['db_cpu_us']:>5.2f}x"
            )

        # Server-side check of the in-process statement counts: transactions per request from
        # pg_stat_database (every autocommit statement is a transaction). Idle backends publish their
        # counters up to 10 s late, hence the pause before reading them.
        out()
        out("## Database transactions per request (server side: pg_stat_database, 2 s at 1 connection)")
        out(f"{'request':<16} {'service':>8} {'baseline':>8}")
        time.sleep(11)  # let the counters of the last measurement settle first
        for endpoint, caller in (("set_key", "root"), ("set_key", "object"), ("view_key", "root"), ("list", "root")):
            if endpoint not in available:
                continue
            before = {name: xacts(admin_url, db) for name, (_, db, _) in servers.items()}
            requests = {}
            for name, (port, _, _) in servers.items():
                point = Point(endpoint, caller, "spread", 1)
                done = wrk(wrk_bin, port, point, spec["callers"][caller], args.spread, 2, f"{run_id}x{name[0]}")
                requests[name] = done["requests"]
            time.sleep(11)
            per = {
                name: (xacts(admin_url, db) - before[name]) / max(requests[name], 1)
                for name, (_, db, _) in servers.items()
            }
            out(f"{endpoint + '/' + caller:<16} {per['service']:>8.2f} {per['baseline']:>8.2f}")

        for name, (_, _, proc) in servers.items():
            memory[name] = [{"pid": pid, **memory_kib(pid)} for pid in workers_of(proc.pid)]
            memory[name].insert(0, {"pid": proc.pid, "master": 1, **memory_kib(proc.pid)})

    out()
    out("## Memory per gunicorn process (peak = VmHWM)")
    for name, procs in memory.items():
        for p in procs:
            role = "master" if p.get("master") else "worker"
            peak, now = p["VmHWM"] / 1024, p["VmRSS"] / 1024
            out(f"{name:<8} {role:<6} pid {p['pid']:<8} peak {peak:6.1f} MB   now {now:6.1f} MB")

    out()
    out("## Targets (issue 7)")
    checks = []
    key_point = Point("set_key", "root", "hot", 8)
    if (key_point, "service") in results:
        svc, base = results[(key_point, "service")], results[(key_point, "baseline")]
        checks.append(("set_key throughput >= 0.4 x baseline (hot, c=8)", svc["rps"] / base["rps"], ">=", 0.4))
        checks.append(("set_key p50 <= 2.5 x baseline (hot, c=8)", svc["p50_us"] / base["p50_us"], "<=", 2.5))
    statements = {name: c["statements"] + c["health_checks"] for name, c in counts["service"].items()}
    checks.append(("SQL statements (+ health check), superuser set_key", statements["set_key/root"], "<=", 5))
    checks.append(("SQL statements (+ health check), object set_key", statements["set_key/object"], "<=", 6))
    peak = max(p["VmHWM"] for p in memory["service"] if not p.get("master")) / 1024
    checks.append(("peak worker memory, MB", peak, "<", 120))
    errors = sum(r["errors"] for r in results.values())
    checks.append(("non-2xx responses and socket errors, all points", errors, "<=", 0))
    for label, value, op, limit in checks:
        passed = {">=": value >= limit, "<=": value <= limit, "<": value < limit}[op]
        out(f"{'PASS' if passed else 'FAIL'}  {label}: {value:.2f} (target {op} {limit})")
    out()
    out(f"# server logs: {tmp}; results: {args.out}")


if __name__ == "__main__":
    main()
