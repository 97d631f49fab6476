"""gunicorn settings, all from the environment (see README, "Configuration" and "Running in production").

Timeouts nest so the innermost fires first: PostgreSQL's lock_timeout (3 s) and statement_timeout
(10 s) end a stuck query, which the app answers with a 503, well before gunicorn's worker
``timeout`` (30 s) kills the worker, which is before the load balancer gives up on the request.
"""

import mmap
import multiprocessing
import os
import time
from typing import Any

from gunicorn import glogging

from tokens_service.wsgi_hardening import install_json_error_pages


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


# A command-line --bind (as `make run` and the tests pass) takes precedence over this.
bind = [os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")]
workers = _int("WEB_CONCURRENCY", max(2, multiprocessing.cpu_count()))
# Threaded workers, so that slow clients cannot stall the server: a sync worker serves one connection at a
# time, and a client trickling its body (or just its headers) holds the worker until it is done, so a
# handful of slow connections would stop every other request. gthread waits for a connection's first
# bytes in its event loop and gives each request a thread of its own; a thread reading a slow body is
# freed after REQUEST_BODY_TIMEOUT at the latest (tokens_service.wsgi_hardening answers 408). Threads
# are started only when needed; each keeps its own persistent database connection (README, "Slow
# clients"). Behind the load balancer, HAProxy buffers whole requests before they reach a replica.
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
threads = _int("GUNICORN_THREADS", 64)
timeout = _int("GUNICORN_TIMEOUT", 30)
# On SIGTERM, workers finish the requests in flight for up to this long (keep the container's stop
# grace period longer than this).
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 20)
keepalive = _int("GUNICORN_KEEPALIVE", 5)
# Behind a balancer that health-checks readiness: on SIGTERM, first answer readiness with 503 for this
# many seconds while still serving everything else, so the balancer stops routing here, then stop
# gracefully. Without it a connection the balancer opens just before the stop waits in the listen
# backlog and is reset when the workers exit (a lost request). 0 (the default) stops at once.
drain_seconds = _int("GUNICORN_DRAIN_SECONDS", 0)
# One shared byte, set by the master and read by every worker forked from it.
_draining = mmap.mmap(-1, 1)
# Recycling workers bounds the damage of a slow leak; off unless configured.
max_requests = _int("GUNICORN_MAX_REQUESTS", 0)
max_requests_jitter = _int("GUNICORN_MAX_REQUESTS_JITTER", 0)
# The heartbeat file on a tmpfs: on a container's overlay filesystem a slow disk can stall workers
# into being killed as unresponsive.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108 - gunicorn's documented choice
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
# Client IPs come from the app's TRUSTED_PROXY_CIDRS, and HTTPS detection from Django's
# SECURE_PROXY_SSL_HEADER, so gunicorn itself trusts no forwarding header.
forwarded_allow_ips = ""
proc_name = "tokens-service"
# gunicorn's runtime control socket (gunicornc) is not used; it would be one fixed path per user,
# shared by every instance on the host.
control_socket_disable = True

# The app writes its own structured request log (tokens_service.logging.RequestLogMiddleware);
# gunicorn's own messages (worker boots, timeouts, kills) go to stderr in the same JSON format.
accesslog = None


class Logger(glogging.Logger):
    """gunicorn's logger without its access log, which the app's request log replaces.

    With ``logconfig_dict`` set, gunicorn would otherwise build every request's access-log fields
    (2-3% of a worker's CPU) only for its silenced ``gunicorn.access`` logger to drop them.
    """

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        return None


logger_class = Logger
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
_formatter = "plain" if os.environ.get("LOG_FORMAT", "json").lower() == "plain" else "json"
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "tokens_service.logging.JsonFormatter"},
        "plain": {"()": "tokens_service.logging.PlainFormatter"},
    },
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": _formatter, "stream": "ext://sys.stderr"}},
    "loggers": {
        "gunicorn.error": {"handlers": ["stderr"], "level": loglevel.upper(), "propagate": False},
        "gunicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
    },
    "root": {"handlers": [], "level": "WARNING"},
}

# gunicorn's own 400/414/431 answers become JSON that quotes nothing of the request (a malformed
# header line may hold a key). Patched in the master, so every forked worker inherits it.
install_json_error_pages()


def when_ready(server: Any) -> None:
    """In the master: make SIGTERM drain first (``GUNICORN_DRAIN_SECONDS``). A second SIGTERM stops at once."""
    if drain_seconds <= 0:
        return
    stop_at: list[float] = []
    graceful_stop, manage_workers = server.handle_term, server.manage_workers

    def handle_term() -> None:
        if stop_at:
            graceful_stop()
        _draining[0] = 1
        stop_at.append(time.monotonic() + drain_seconds)
        server.log.info("draining for %s s: readiness answers 503, then a graceful stop", drain_seconds)

    def manage_workers_until_drained() -> None:
        if stop_at and time.monotonic() >= stop_at[0]:
            graceful_stop()  # raises StopIteration: the master's usual graceful shutdown
        manage_workers()

    server.handle_term, server.manage_workers = handle_term, manage_workers_until_drained


def post_worker_init(worker: Any) -> None:
    """In each worker: while the master drains, readiness answers 503 (everything else is served)."""
    app = worker.wsgi

    def app_unless_draining(environ: dict[str, Any], start_response: Any) -> Any:
        if _draining[0] and environ.get("PATH_INFO") == "/-/health/ready/":
            start_response("503 Service Unavailable", [("Content-Type", "application/json"), ("Retry-After", "5")])
            return [b'{"status": "draining"}']
        return app(environ, start_response)

    worker.wsgi = app_unless_draining
