"""Bearer-token authentication with authentik's semantics (403, never 401)."""

from typing import Any

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from core.selectors import token_for_bearer_key

_INVALID = "Invalid or expired token."
_PRINTABLE_ASCII = frozenset(chr(c) for c in range(0x21, 0x7F))


class BearerTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer <key>``: an active user's unexpired ``api`` token.

    Any Authorization header that is not exactly that is a failed credential (403
    ``authentication_failed``). No ``authenticate_header`` is offered, so DRF answers 403 rather than
    401, as authentik does and its clients expect.
    """

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        header = request.META.get("HTTP_AUTHORIZATION")
        if header is None:
            return None
        parts = header.split()
        if len(parts) != 2 or parts[0].lower() != "bearer":
            raise exceptions.AuthenticationFailed(_INVALID)
        key = parts[1]
        # WSGI decodes header bytes as latin-1, so non-ASCII arrives as characters above 0x7E.
        if len(key) > 1024 or not _PRINTABLE_ASCII.issuperset(key):
            raise exceptions.AuthenticationFailed(_INVALID)
        token = token_for_bearer_key(key)
        if token is None:
            raise exceptions.AuthenticationFailed(_INVALID)
        return token.user, token
