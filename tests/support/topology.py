"""The deployed topology on loopback addresses: HAProxy, app replicas, PgBouncer, PostgreSQL and Redis.

Everything here runs the real programs: Debian's ``haproxy`` with ``deploy/haproxy.cfg`` changed only in
its addresses (``adapt_haproxy_config``), gunicorn with ``tokens_service/gunicorn_conf.py``, Debian's
``pgbouncer`` in transaction mode, the PostgreSQL and Redis servers the suite already uses. The one
stand-in is ``StaticDns``: the repository's balancer finds replicas through Docker's DNS server, so a
tiny DNS server on loopback answers the replicas' name with their addresses, as Docker's would.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests import helpers
from tests.helpers import ROOT

HAPROXY = Path("/usr/sbin/haproxy")
PGBOUNCER = Path("/usr/sbin/pgbouncer")
INSTALL_COMMAND = "sudo apt-get install -y haproxy pgbouncer"
# The address the balancer connects to replicas from (the kernel's source address on lo): the one
# trusted proxy, as the compose file trusts exactly the balancer's address.
BALANCER_SOURCE = "127.0.0.1"

# A token is one whitespace-free word; "#" starts a comment.
_ADDRESS = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]*):[0-9]+$")


def missing_programs() -> list[str]:
    return [str(path) for path in (HAPROXY, PGBOUNCER) if not os.access(path, os.X_OK)]


def is_address(token: str) -> bool:
    """``host:port``, ``:port`` or ``[v6]:port``: the only kind of word ``adapt_haproxy_config`` changes."""
    return bool(_ADDRESS.match(token))


def adapt_haproxy_config(text: str, *, bind: str, nameserver: str, app_port: int) -> str:
    """``deploy/haproxy.cfg`` for a loopback run, changed only in three address words.

    - ``bind :8080`` listens on ``bind`` instead (``host:port``);
    - ``nameserver dns 127.0.0.11:53`` (Docker's embedded DNS) asks ``nameserver`` instead;
    - ``server-template app 10 app:8000`` keeps the name ``app`` (resolved through that nameserver)
      and takes ``app_port`` as the replicas' port.

    Every other byte, timeouts, retries, health checks and forwarding headers included, stays as
    committed. Each directive must occur exactly once, so a reshaped file fails here, not silently.
    """
    replacements: dict[str, tuple[int, Callable[[str], str]]] = {
        "bind": (1, lambda _old: bind),
        "nameserver": (2, lambda _old: nameserver),
        "server-template": (3, lambda old: f"{old.rsplit(':', 1)[0]}:{app_port}"),
    }
    seen: dict[str, int] = dict.fromkeys(replacements, 0)
    out = []
    for line in text.splitlines(keepends=True):
        words = line.split()
        if words and words[0] in replacements:
            position, new = replacements[words[0]]
            old = words[position]
            if not is_address(old):
                raise ValueError(f"{words[0]}: expected an address in word {position}, found {old!r}")
            seen[words[0]] += 1
            # Replace that one word in place, keeping the line's spacing.
            spans = [m.span() for m in re.finditer(r"\S+", line)]
            start, end = spans[position]
            line = line[:start] + new(old) + line[end:]
        out.append(line)
    if any(count != 1 for count in seen.values()):
        raise ValueError(f"expected each of {sorted(seen)} exactly once, found {seen}")
    return "".join(out)


def free_port(*hosts: str) -> int:
    """A TCP port free on every one of ``hosts`` (loopback addresses)."""
    for _ in range(50):
        port = helpers.free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket() as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free on all of {hosts}")


class StaticDns:
    """A UDP DNS server on loopback answering A queries for one name with fixed addresses.

    It stands in for Docker's embedded DNS, which answers a service name with its replicas' addresses.
    Other names get NXDOMAIN; other record types of the name get an empty answer (so a resolver that
    prefers IPv6 falls back to A).
    """

    def __init__(self, name: str, addresses: list[str]) -> None:
        self.name = name.lower().rstrip(".")
        self.addresses = addresses
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="static-dns", daemon=True)
        self._thread.start()

    def answer(self, query: bytes) -> bytes | None:
        if len(query) < 17:
            return None
        ident, flags, qdcount = struct.unpack("!HHH", query[:6])
        if qdcount != 1 or flags & 0x8000:  # one question, and a query, not a response
            return None
        labels, pos = [], 12
        while pos < len(query) and query[pos]:
            length = query[pos]
            labels.append(query[pos + 1 : pos + 1 + length].decode("ascii", "replace").lower())
            pos += 1 + length
        pos += 1
        if pos + 4 > len(query):
            return None
        qtype, _qclass = struct.unpack("!HH", query[pos : pos + 4])
        question = query[12 : pos + 4]
        known = ".".join(labels) == self.name
        records = [
            b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 1, 4) + socket.inet_aton(address)
            for address in (self.addresses if known and qtype == 1 else [])
        ]
        rcode = 0 if known else 3
        # QR, AA, the query's RD, RA.
        header = struct.pack("!HHHHHH", ident, 0x8480 | (flags & 0x0100) | rcode, 1, len(records), 0, 0)
        return header + question + b"".join(records)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self.answer(query)
            if reply is not None:
                self.queries += 1
                self.sock.sendto(reply, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@dataclass
class Process:
    """A program this module started, in its own process group, its output in ``log_path``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    # Where the current run's output begins in the log (a restarted replica appends).
    log_offset: int = 0
    # The address it listens on, if any.
    address: tuple[str, int] | None = None
    # How ``stop`` ends it (a replica: SIGQUIT, gunicorn's quick shutdown, skipping the drain).
    stop_signal: int = signal.SIGTERM

    def start(self) -> None:
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # fixed argv: programs this module names
                self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.starts += 1

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self, current_run_only: bool = False) -> str:
        if not self.log_path.exists():
            return ""
        data = self.log_path.read_bytes()
        return data[self.log_offset if current_run_only else 0 :].decode("utf-8", "replace")

    def crash(self) -> None:
        """SIGKILL to the whole process group (master and workers), like a container killed outright.

        Returns once its port refuses connections: until the last process of the group is gone the
        kernel still queues connections on the listening socket (then resets them).
        """
        os.killpg(self.pid, signal.SIGKILL)
        assert self.process is not None
        self.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while self.address is not None and time.monotonic() < deadline:
            try:
                socket.create_connection(self.address, timeout=1).close()
            except ConnectionRefusedError:
                return
            except OSError:
                pass
            time.sleep(0.01)
        if self.address is not None:
            raise RuntimeError(f"{self.name} still accepts connections 10 s after SIGKILL")

    def graceful_stop(self, timeout: float = 30) -> None:
        """SIGTERM to the main process only, as ``docker stop`` does, and wait for it to finish."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(self.stop_signal)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def wait_for(what: str, check: Callable[[], bool], timeout: float, procs: tuple[Process, ...] = ()) -> None:
    """Poll ``check`` until it holds; fail with ``what`` (and the logs of ``procs``) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited while waiting for {what}:\n{proc.log_text()[-4000:]}")
        if check():
            return
        time.sleep(0.1)
    logs = "\n".join(f"--- {proc.name}\n{proc.log_text()[-3000:]}" for proc in procs)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}\n{logs}")


def http_ok(url: str, host: str = "localhost") -> bool:
    try:
        return requests.get(url, headers={"Host": host}, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def pgbouncer(workdir: Path, *, port: int, pg_host: str, pg_port: int, dbname: str, pool_size: int) -> Process:
    """PgBouncer in transaction mode on 127.0.0.1:``port``, database ``dbname`` on the given server.

    ``options`` (the app's lock/statement timeouts) is a startup parameter PgBouncer cannot pass on: it
    is ignored here and the timeouts are set on the database instead (README, "Running at scale").
    """
    ini = workdir / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"{dbname} = host={pg_host} port={pg_port} dbname={dbname} user=postgres\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = any\n"
        "pool_mode = transaction\n"
        # Fewer server connections than app workers: transactions of different workers share them.
        f"default_pool_size = {pool_size}\n"
        "max_client_conn = 200\n"
        "ignore_startup_parameters = options,extra_float_digits\n"
    )
    argv = [str(PGBOUNCER), str(ini)]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        shutil.chown(workdir, "postgres", "postgres")
        shutil.chown(ini, "postgres", "postgres")
        argv[1:1] = ["-u", "postgres"]
    return Process("pgbouncer", argv, dict(os.environ), workdir / "pgbouncer.log")


def replica(workdir: Path, index: int, host: str, port: int, env: dict[str, str]) -> Process:
    """One app replica: gunicorn with the repository's config, listening on ``host:port``."""
    argv = [
        str(Path(sys.executable).parent / "gunicorn"),
        "-c",
        str(ROOT / "tokens_service" / "gunicorn_conf.py"),
        "--bind",
        f"{host}:{port}",
        "tokens_service.wsgi:application",
    ]
    log_path = workdir / f"replica-{index}.log"
    return Process(f"replica-{index}@{host}", argv, env, log_path, address=(host, port), stop_signal=signal.SIGQUIT)


def haproxy(workdir: Path, config_text: str) -> Process:
    cfg = workdir / "haproxy.cfg"
    cfg.write_text(config_text)
    check = subprocess.run([str(HAPROXY), "-c", "-q", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        raise RuntimeError(f"haproxy rejects the adapted config: {check.stdout}{check.stderr}")
    # -db: stay in the foreground (a command-line switch; the config is untouched).
    return Process("haproxy", [str(HAPROXY), "-db", "-f", str(cfg)], dict(os.environ), workdir / "haproxy.log")


def request_log(text: str) -> list[dict[str, object]]:
    """The app's request-log records (``tokens_service.request``) in a replica's output."""
    records = []
    for line in text.splitlines():
        if '"tokens_service.request"' not in line:
            continue
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return records


@dataclass
class Call:
    """One set_key request of the load: what was sent, when, and what came back."""

    number: int
    token: str
    key: str
    status: int | None = None
    error: str | None = None


@dataclass
class Load:
    """Threads rotating keys through the balancer, one fresh connection per request from ``source``.

    ``in_flight`` holds the numbers of calls between their registration and their answer; both
    transitions happen under ``lock``, so a snapshot taken under it is exact.
    """

    url: str
    admin_key: str
    tokens: list[str]
    source: str
    threads: int
    max_calls: int
    new_key: Callable[[], str]
    # Between one answer and the next request of a thread: keeps the load steady and the count bounded.
    pause: float = 0.1
    lock: threading.Lock = field(default_factory=threading.Lock)
    calls: list[Call] = field(default_factory=list)
    in_flight: set[int] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def completed(self) -> int:
        with self.lock:
            return len(self.calls) - len(self.in_flight)

    def _next(self, worker: int) -> Call | None:
        with self.lock:
            if self.stop.is_set() or len(self.calls) >= self.max_calls:
                return None
            number = len(self.calls)
            call = Call(number=number, token=self.tokens[(number + worker) % len(self.tokens)], key=self.new_key())
            self.calls.append(call)
            self.in_flight.add(number)
            return call

    def _run(self, worker: int) -> None:
        import http.client

        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        while (call := self._next(worker)) is not None:
            body = json.dumps({"key": call.key})
            conn = http.client.HTTPConnection(host, int(port), timeout=60, source_address=(self.source, 0))
            try:
                conn.request(
                    "POST",
                    f"/api/v3/core/tokens/{call.token}/set_key/",
                    body=body,
                    headers={
                        "Authorization": f"Bearer {self.admin_key}",
                        "Content-Type": "application/json",
                        # A client's own claim: the balancer appends the real peer, the app believes only that.
                        "X-Forwarded-For": "203.0.113.66",
                        "Connection": "close",
                    },
                )
                response = conn.getresponse()
                response.read()
                status, error = response.status, None
            except (OSError, http.client.HTTPException) as exc:
                status, error = None, type(exc).__name__
            finally:
                conn.close()
            with self.lock:
                call.status, call.error = status, error
                self.in_flight.discard(call.number)
            self.stop.wait(self.pause)

    def start(self) -> None:
        for worker in range(self.threads):
            thread = threading.Thread(target=self._run, args=(worker,), name=f"load-{worker}", daemon=True)
            thread.start()
            self._workers.append(thread)

    def finish(self, timeout: float = 90) -> None:
        self.stop.set()
        for thread in self._workers:
            thread.join(timeout=timeout)
        assert not any(thread.is_alive() for thread in self._workers), "a load thread never got an answer"


def wait_until_completed(load: Load, count: int, timeout: float) -> None:
    wait_for(f"{count} answered set_key calls", lambda: load.completed() >= count, timeout)


@contextlib.contextmanager
def running(*procs: Process) -> Iterator[None]:
    """Stop every process on the way out, whatever happened."""
    try:
        yield
    finally:
        for proc in reversed(procs):
            proc.stop()
