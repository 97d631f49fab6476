"""Request framing that neither Django nor gunicorn handles as this service needs.

``ChunkedBodyMiddleware`` reads every request body (``Content-Length`` or ``Transfer-Encoding: chunked``)
completely, under the body size limit and within ``REQUEST_BODY_TIMEOUT``, before Django runs, so a client
trickling its body holds a server thread for a bounded time and then gets 408; ``install_json_error_pages``
makes the errors gunicorn answers itself (malformed request line or headers, limits) JSON that repeats
nothing of the request.

Importing this module reads no setting, so gunicorn's master process can import it.
"""

import contextlib
import io
import json
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_READ_BLOCK = 16 * 1024


class BodyTimeout(Exception):
    """The client did not send its body within ``REQUEST_BODY_TIMEOUT``."""


class ChunkedBodyMiddleware:
    """Read the request body before the app runs: under the size limit and within a deadline.

    Chunked bodies: Django reads a WSGI body only as far as ``CONTENT_LENGTH`` says, so a chunked body
    (gunicorn de-chunks it and sets ``wsgi.input_terminated``) would look empty. This reads at most
    ``DATA_UPLOAD_MAX_MEMORY_SIZE + 1`` bytes into memory and announces their length. A longer body
    is therefore announced as one byte over the limit, and Django's own check answers 413 at the
    point it would for a ``Content-Length`` body; the rest is never read (gunicorn closes the
    connection after the response).

    Slow bodies: a ``Content-Length`` body within the limit is read here too. Every read waits at most
    until ``REQUEST_BODY_TIMEOUT`` seconds after the body's first read (a socket timeout on gunicorn's
    connection, ``environ["gunicorn.socket"]``); a body not complete by then is answered 408 JSON and the
    connection closed, so a client trickling its body cannot hold a server thread longer than that.
    Bodies over the limit are not read at all (Django answers 413).
    """

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        from django.conf import settings

        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        length = environ.get("CONTENT_LENGTH")
        cap: int | None
        if not length and environ.get("wsgi.input_terminated"):
            if "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
                return self.app(environ, start_response)
            cap = None if limit is None else limit + 1
        else:
            try:
                cap = int(length or "0")
            except ValueError:
                return self.app(environ, start_response)  # Django treats it as no body
            if cap <= 0 or (limit is not None and cap > limit):
                return self.app(environ, start_response)
        try:
            body = _read_within(environ, cap, float(settings.REQUEST_BODY_TIMEOUT))
        except BodyTimeout:
            return _request_timeout(start_response)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return self.app(environ, start_response)


def _read_within(environ: dict[str, Any], cap: int | None, timeout: float) -> bytes:
    """Up to ``cap`` bytes of the body (all of it for ``None``), or ``BodyTimeout`` after ``timeout`` s."""
    stream = environ["wsgi.input"]
    sock = environ.get("gunicorn.socket")
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    try:
        while cap is None or size < cap:
            if sock is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BodyTimeout
                sock.settimeout(remaining)
            try:
                chunk = stream.read(_READ_BLOCK if cap is None else min(_READ_BLOCK, cap - size))
            except TimeoutError as exc:
                if sock is not None:
                    # gunicorn ignores an application's "Connection: close"; with the read side shut it
                    # finds no more bytes after the answer and closes the connection instead of waiting
                    # for the rest of the body (or reading it as the next request).
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RD)
                raise BodyTimeout from exc
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.settimeout(None)  # back to blocking, as gunicorn's worker left it
    return b"".join(chunks)


def _request_timeout(start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = json.dumps({"detail": "The request body was not received in time.", "code": "request_timeout"}).encode()
    start_response(
        "408 Request Timeout",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("X-Content-Type-Options", "nosniff"),
        ],
    )
    return [body]


# Codes in the service's error vocabulary for the statuses gunicorn answers by itself.
_GUNICORN_ERROR_CODES = {
    400: "bad_request",
    403: "permission_denied",
    414: "request_line_too_long",
    417: "expectation_failed",
    431: "request_headers_too_large",
    500: "server_error",
    501: "not_implemented",
}


def json_error_response(status: int, reason: str) -> bytes:
    """The bytes of a gunicorn-level error answer: ``{"detail", "code"}``, closing the connection."""
    reason = reason.replace("\r", " ").replace("\n", " ")
    body = json.dumps({"detail": f"{reason}.", "code": _GUNICORN_ERROR_CODES.get(status, "bad_request")}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def install_json_error_pages() -> None:
    """Replace gunicorn's HTML error page, which quotes the offending request line or header.

    That quote can hold a credential (``Authorization Bearer <key>`` without its colon is an invalid
    header line), and the contract (docs/contract.md, "Wire format") wants JSON error bodies that never
    echo what was sent. gunicorn writes these pages through ``gunicorn.util.write_error`` only; its log
    line is redacted by ``tokens_service.logging``.
    """
    from gunicorn import util

    def write_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
        util.write_nonblock(sock, json_error_response(status_int, reason))

    util.write_error = write_error
