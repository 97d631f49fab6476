#!/bin/sh
# The machine packages `make test` needs beyond Python, installed from Debian when missing.
#   required: chromium, chromium-driver (the browser tests drive /usr/bin/chromium; they fail without it)
#             python3-venv (only while .venv does not exist yet: `python3 -m venv` needs ensurepip)
#             haproxy, pgbouncer (the topology and slow-client tests put the repository's load balancer and
#             a connection pooler in front of the service; they fail without them)
# As root, missing packages are installed with apt-get. Otherwise a missing required package stops the
# run at once with the exact command to run; a missing optional one is only reported.
set -eu

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
required=""
optional=""
[ -x /usr/bin/chromium ] || required="$required chromium"
[ -x /usr/bin/chromedriver ] || required="$required chromium-driver"
if [ ! -x "$VENV/bin/python" ] && ! "$PYTHON" -c "import ensurepip, venv" >/dev/null 2>&1; then
    required="$required python3-venv"
fi
[ -x /usr/sbin/haproxy ] || required="$required haproxy"
[ -x /usr/sbin/pgbouncer ] || required="$required pgbouncer"

missing="$required$optional"
[ -n "$missing" ] || exit 0
command="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y$missing"

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing from Debian:$missing"
    apt-get update -q
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
    exit 0
fi

if [ -n "$required" ]; then
    echo "make test needs Debian packages that are missing:$required" >&2
    if command -v apt-get >/dev/null 2>&1; then
        echo "Run as root:  $command" >&2
    else
        echo "This system has no apt-get: install the equivalent packages, then run make test again." >&2
    fi
    exit 1
fi
echo "Optional packages missing:$optional (needed only by the load balancer and pooler tests)."
echo "To install them, run as root:  $command"
