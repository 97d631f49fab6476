"""Request framing that neither Django nor gunicorn handles as this service needs.

``ChunkedBodyMiddleware`` lets Django see bodies sent with ``Transfer-Encoding: chunked`` under the
same size limit as any other body; ``install_json_error_pages`` makes the errors gunicorn answers
itself (malformed request line or headers, limits) JSON that repeats nothing of the request.

Importing this module reads no setting, so gunicorn's master process can import it.
"""

import io
import json
from collections.abc import Callable, Iterable
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_READ_BLOCK = 16 * 1024


class ChunkedBodyMiddleware:
    """Give Django a ``Content-Length`` for chunked request bodies, reading at most the limit plus one byte.

    Django reads a WSGI body only as far as ``CONTENT_LENGTH`` says, so a chunked body (gunicorn
    de-chunks it and sets ``wsgi.input_terminated``) would look empty. This reads at most
    ``DATA_UPLOAD_MAX_MEMORY_SIZE + 1`` bytes into memory and announces their length. A longer body
    is therefore announced as one byte over the limit, and Django's own check answers 413 at the
    point it would for a ``Content-Length`` body; the rest is never read (gunicorn closes the
    connection after the response).
    """

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if (
            not environ.get("CONTENT_LENGTH")
            and environ.get("wsgi.input_terminated")
            and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        ):
            from django.conf import settings

            limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            body = _read_at_most(environ["wsgi.input"], None if limit is None else limit + 1)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return self.app(environ, start_response)


def _read_at_most(stream: Any, cap: int | None) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while cap is None or size < cap:
        chunk = stream.read(_READ_BLOCK if cap is None else min(_READ_BLOCK, cap - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


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
