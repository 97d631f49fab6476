"""Structured logs: one JSON object per line with secrets redacted, and one access line per request.

Importing this module reads no setting, so gunicorn's master process can use the formatter (see
``gunicorn_conf.logconfig_dict``) without configuring Django.
"""

import contextvars
import json
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.utils.functional import LazyObject, empty
from django.views.debug import SafeExceptionReporterFilter

from tokens_service.request_meta import client_ip

# The id of the request being served, so every record logged while serving it can be correlated.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

access_logger = logging.getLogger("tokens_service.request")

REDACTED = "[redacted]"
# Defence in depth: the code never logs a secret on purpose, but a message, an exception or a traceback
# written by a library might quote a header, a query string or a JSON body. The value classes stop at
# quotes and backslashes so a redaction can never break the JSON encoding of the line around it.
_SCHEMES = "bearer|basic"
_SECRET_NAMES = "key|new_key|password|passwd|secret|authorization|cookie|sessionid|csrftoken"  # noqa: S105 - names, not a secret
_REDACTIONS = (
    (re.compile(rf"(?i)\b({_SCHEMES})(\s+)[^\s\"'\\,;]+"), r"\1\2" + REDACTED),
    (
        re.compile(rf"(?i)([\"']?\b(?:{_SECRET_NAMES})[\"']?\s*[:=]\s*[\"']?)[^\s\"'\\,;&}}]+"),
        r"\1" + REDACTED,
    ),
)

# LogRecord attributes that are not "extra" fields.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# Extras never rendered: Django attaches the request object (its repr has the query string) and the
# error-response machinery may attach the response.
_NEVER_RENDERED = frozenset({"request", "response", "server_time"})


# Every text a redaction could change contains one of the words they look for: one search clears the usual
# log string (a method, an address, a request id) without running the redactions themselves.
_SUSPECT = re.compile(rf"(?i){_SCHEMES}|{_SECRET_NAMES}")
_SUSPECT_SCHEME = re.compile(_SCHEMES)
_SUSPECT_NAME = re.compile(_SECRET_NAMES)


def _suspect(text: str) -> bool:
    """Whether a redaction might change ``text``: it names a scheme, or a secret name and then ``:`` or ``=``.

    ASCII text (nearly every log string) is searched lower-cased, without the regex's case folding, which
    made the check most of an access line's cost; other text goes through ``_SUSPECT``, whose case folding
    also matches non-ASCII letters (the long s, the Kelvin sign) that ``str.lower`` leaves alone.
    """
    if not text.isascii():
        return _SUSPECT.search(text) is not None
    lowered = text.lower()
    if _SUSPECT_SCHEME.search(lowered):
        return True
    return ("=" in text or ":" in text) and _SUSPECT_NAME.search(lowered) is not None


def redact(text: str) -> str:
    """``text`` with Bearer/Basic credentials and ``key=...``-style values replaced by ``[redacted]``."""
    if not _suspect(text):
        return text
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def _plain(value: Any) -> Any:
    """``value`` if it is plain JSON data (strings redacted), else ``None`` to leave it out."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict) and all(isinstance(name, str) for name in value):
        return {name: _plain(item) for name, item in value.items()}
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``message``, the request id, plain extras,
    and ``exc_type``/``exc`` for exceptions. Every string passes through ``redact``.

    Extras that are not plain JSON data (request objects, for instance) are left out rather than
    stringified, because their ``repr`` may carry what the caller sent.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for name, value in vars(record).items():
            if name in _RECORD_ATTRS or name in _NEVER_RENDERED or name.startswith("_") or name in entry:
                continue
            plain = _plain(value)
            if plain is not None or value is None:
                entry[name] = plain
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
            entry["exc"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=True, separators=(",", ":"))


class PlainFormatter(logging.Formatter):
    """Human-readable lines for a terminal (``LOG_FORMAT=plain``), redacted like the JSON ones."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class SecretSafeExceptionReporterFilter(SafeExceptionReporterFilter):
    """What Django's error reports (the DEBUG 500 page, ``AdminEmailHandler``) may show of a request.

    Django's filter hides settings and ``HTTP_AUTHORIZATION`` but shows request bodies and the local
    variables of every frame unless DEBUG is off and the view is decorated. Here it is always on, every
    POST value is masked and frame variables are masked wholesale: a frame of ``set_key`` holds the new
    key in more than one variable.
    """

    def is_active(self, request: HttpRequest | None) -> bool:
        return True

    def get_post_parameters(self, request: HttpRequest | None) -> Any:
        if request is None:
            return {}
        cleansed = request.POST.copy()
        for name in cleansed:
            cleansed[name] = self.cleansed_substitute
        return cleansed

    def get_traceback_frame_variables(self, request: HttpRequest | None, tb_frame: Any) -> Any:
        return [(name, self.cleansed_substitute) for name in tb_frame.f_locals]


def _actor(request: HttpRequest) -> str | None:
    """The username the request acted as, or ``None``; never triggers a database query.

    DRF's ``Request.user`` setter copies the authenticated user onto the Django request, so bearer
    callers are visible here. A lazy session user that nothing evaluated means nothing acted as anyone.
    """
    user = vars(request).get("user")
    if user is None or (isinstance(user, LazyObject) and user._wrapped is empty):
        return None
    return str(user.get_username()) if getattr(user, "is_authenticated", False) else None


class RequestLogMiddleware:
    """Logs one line per request to ``tokens_service.request``: method, path (no query string), status,
    duration_ms, request_id, client_ip and actor. INFO, or ERROR for a 5xx.

    Placed right after ``RequestIdMiddleware`` so that it sees the request id and every response,
    including those the inner middleware turned errors into.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        request_id = getattr(request, "request_id", None)
        context_token = request_id_var.set(request_id)
        try:
            response = self.get_response(request)
            status = response.status_code
            access_logger.log(
                logging.ERROR if status >= 500 else logging.INFO,
                "%s %s %s",
                request.method,
                request.path[:512],
                status,
                extra={
                    "method": request.method,
                    "path": request.path[:512],
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "request_id": request_id,
                    "client_ip": client_ip(request.META),
                    "actor": _actor(request),
                },
            )
            return response
        finally:
            request_id_var.reset(context_token)
