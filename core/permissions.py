"""DRF permission classes for token operations."""

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from core.models import User
from core.selectors import user_has_token_perm


class TokenPermission(BasePermission):
    """Up front: ``authentik_core.<codename>`` globally or as an object permission on the URL's token.

    Runs before the body is read, so a caller without the permission gets 403 (whether or not the
    identifier exists) without its body being judged. It is an early answer only, never the deciding
    check: between it and the write a rename may move the identifier to another token, so the service
    decides again on the row it locks (``core.services.token_set_key``).
    """

    codename = ""

    def has_permission(self, request: Request, view: Any) -> bool:
        identifier = view.kwargs.get(view.lookup_url_kwarg or view.lookup_field, "")
        user = request.user
        return isinstance(user, User) and user_has_token_perm(user, self.codename, identifier)


class CanSetTokenKey(TokenPermission):
    codename = "set_token_key"


class CanViewTokenKey(TokenPermission):
    codename = "view_token_key"
