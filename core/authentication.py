"""Bearer-token authentication with authentik's semantics (403, never 401)."""

import re
from typing import Any

from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from core.selectors import bearer_match
from core.usage import ip_allowed, report_suspicious_use, token_record_use, usage_due
from tokens_service.request_meta import client_ip, request_meta
from tokens_service.throttling import FailedAuthenticationThrottle

_INVALID = "Invalid or expired token."
# The scheme in any ASCII case, spaces or tabs, then one word of visible ASCII (what a key may hold).
# Only ASCII separators: str.split() would also split on bytes such as 0x1C, 0x85 or 0xA0 (WSGI hands
# headers over as latin-1), which no proxy in front of us would read as a separator.
_BEARER = re.compile(r"(?i:bearer)[ \t]+([\x21-\x7e]{1,1024})", re.ASCII)


class BearerTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer <key>``: an active user's unexpired ``api`` token.

    Any Authorization header that is not exactly that is a failed credential (403
    ``authentication_failed``), counted per client address by ``FailedAuthenticationThrottle``. So are a
    key replaced by a rotation once its grace period is over, and a token used from an address outside
    its ``allowed_ips``; both also write a (throttled) ``suspicious_request`` event. A success records
    the token's last use when the stored one is over a minute old (``core.usage``). No
    ``authenticate_header`` is offered, so DRF answers 403 rather than 401, as authentik does and its
    clients expect.
    """

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        header = request.META.get("HTTP_AUTHORIZATION")
        if header is None:
            return None
        throttle = FailedAuthenticationThrottle()
        # 429 before any lookup while this client address is over its failure limit.
        throttle.check(request)
        word = _BEARER.fullmatch(header.strip(" \t"))
        match = bearer_match(word.group(1)) if word else None
        if match is None:
            throttle.record_failure(request)
            raise exceptions.AuthenticationFailed(_INVALID)
        token = match.token
        if not match.authenticates:
            self._refuse(request, throttle, token, "previous_key_after_grace")
        now = timezone.now()
        # The client address is worked out only when it is needed: for an allowlist, or once a minute.
        due = usage_due(token, now)
        ip = client_ip(request.META) if token.allowed_ips or due else None
        if not ip_allowed(ip, token.allowed_ips):
            self._refuse(request, throttle, token, "ip_not_allowed")
        if due:
            token_record_use(token=token, ip=ip, now=now)
        return token.user, token

    @staticmethod
    def _refuse(request: Request, throttle: FailedAuthenticationThrottle, token: Any, reason: str) -> None:
        """A known key used where it must not be: the same 403 as a wrong key, plus an audit event."""
        throttle.record_failure(request)
        report_suspicious_use(token=token, reason=reason, request_meta=request_meta(request))  # type: ignore[arg-type]
        raise exceptions.AuthenticationFailed(_INVALID)
