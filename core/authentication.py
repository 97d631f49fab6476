"""Bearer-token authentication with authentik's semantics (403, never 401)."""

import re
from typing import Any

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from core.selectors import token_for_bearer_key
from tokens_service.throttling import FailedAuthenticationThrottle

_INVALID = "Invalid or expired token."
# The scheme in any ASCII case, spaces or tabs, then one word of visible ASCII (what a key may hold).
# Only ASCII separators: str.split() would also split on bytes such as 0x1C, 0x85 or 0xA0 (WSGI hands
# headers over as latin-1), which no proxy in front of us would read as a separator.
_BEARER = re.compile(r"(?i:bearer)[ \t]+([\x21-\x7e]{1,1024})", re.ASCII)


class BearerTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer <key>``: an active user's unexpired ``api`` token.

    Any Authorization header that is not exactly that is a failed credential (403
    ``authentication_failed``), counted per client address by ``FailedAuthenticationThrottle``. No
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
        match = _BEARER.fullmatch(header.strip(" \t"))
        token = token_for_bearer_key(match.group(1)) if match else None
        if token is None:
            throttle.record_failure(request)
            raise exceptions.AuthenticationFailed(_INVALID)
        return token.user, token
