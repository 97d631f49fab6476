"""Instructions per request, in process, counted by valgrind (a figure the machine's load does not move).

    .venv/bin/python bench/instructions.py [--endpoint set_key] [--caller root] [--log]

Run it after ``make bench`` (it reuses the seeded databases and callers, as ``bench/profile_request.py``
does). For the service and for the baseline it runs ``bench/profile_request.py``'s request loop under
``valgrind --tool=callgrind`` twice, with 100 and with 400 requests after the same warm-up, and prints
the difference divided by 300: the instructions one request costs in the Python process (the
interpreter, Django, DRF, the driver's client side), start-up excluded. PostgreSQL's work is not counted.
``--log`` keeps the access log line (``LOG_LEVEL=INFO``, written to a scratch file), as in production;
``--service-env NAME=VALUE`` (repeatable) adds to the service's environment, e.g. ``REDIS_URL`` for the
throttle counters in Redis, as deployed.
Needs valgrind (Debian package ``valgrind``); about 3 minutes.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMALL, LARGE = 100, 400


def _loop(args: argparse.Namespace, count: int, baseline: bool, out: Path) -> int:
    """Instructions of one process that serves ``count`` requests after 30 of warm-up."""
    code = (
        "import sys; sys.path[:0] = [{repo!r}, {bench!r}]\n"
        "import json, profile_request as p\n"
        "key = json.load(open({spec!r}))['callers'][{caller!r}]\n"
        "app = p.baseline.application if {baseline} else p.application\n"
        "for _ in range(30 + {count}): p.call(app, p.environ_for({endpoint!r}, key, 'bench-hot'))\n"
    ).format(
        repo=str(REPO),
        bench=str(REPO / "bench"),
        spec=str(REPO / "var" / "bench" / "spec.json"),
        caller=args.caller,
        baseline=baseline,
        count=count,
        endpoint=args.endpoint,
    )
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/"),
        "PYTHONHASHSEED": "0",
        "LOG_LEVEL": "INFO" if args.log else "WARNING",
        # Extra environment for the service only (e.g. REDIS_URL=redis://127.0.0.1:6379/5, as deployed).
        **({} if baseline else dict(item.split("=", 1) for item in args.service_env)),
    }
    with open(out, "w") as log:
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.cg", sys.executable, "-c", code],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
        )
    match = re.search(r"Collected : (\d+)", out.read_text())
    if match is None:
        raise SystemExit(f"valgrind printed no instruction count: see {out}")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", default="set_key", choices=["set_key", "view_key", "list"])
    parser.add_argument("--caller", default="root", choices=["root", "global", "object"])
    parser.add_argument("--log", action="store_true", help="keep the access log line (LOG_LEVEL=INFO)")
    parser.add_argument(
        "--service-env", action="append", default=[], metavar="NAME=VALUE", help="extra environment, service only"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        for name, baseline in (("service", False), ("baseline", True)):
            small = _loop(args, SMALL, baseline, Path(scratch) / f"{name}-small.txt")
            large = _loop(args, LARGE, baseline, Path(scratch) / f"{name}-large.txt")
            per_request = (large - small) / (LARGE - SMALL)
            who = f"{name:8} {args.endpoint} as {args.caller}"
            print(f"{who}: {per_request / 1e6:.2f} million instructions per request")


if __name__ == "__main__":
    main()
