"""DRF permission classes for token operations."""

from typing import Any

from rest_framework import exceptions
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from core.models import Token, User
from core.selectors import user_has_token_perm, user_has_token_perm_on_pk


def caller(request: Request) -> User:
    """The authenticated ``User`` making ``request``.

    Views call it after their permission classes admitted the request, which admit only real users; an
    anonymous caller is still refused (401/403) rather than passed on to a service.
    """
    user = request.user
    if isinstance(user, User):
        return user
    if user is None or not user.is_authenticated:
        raise exceptions.NotAuthenticated
    raise exceptions.PermissionDenied


class TokenPermission(BasePermission):
    """``authentik_core.<codename>`` globally or as an object permission on the URL's token.

    An early answer only, never the deciding check: between it and the write a rename may move the
    identifier to another token, so the service decides again on the row it locks
    (``core.services.token_set_key``). set_key asks it only when the body is refused, so that a caller
    without the permission gets 403 rather than 400 (whether or not the identifier exists).
    """

    codename = ""

    def has_permission(self, request: Request, view: Any) -> bool:
        identifier = view.kwargs.get(view.lookup_url_kwarg or view.lookup_field, "")
        user = request.user
        return isinstance(user, User) and user_has_token_perm(user, self.codename, identifier)


class CanSetTokenKey(TokenPermission):
    codename = "set_token_key"


class TokenObjectPermission(BasePermission):
    """Who may write to a token the caller can see (the queryset already hides the others: 404).

    Reads need nothing more than visibility. ``PUT``/``PATCH`` need ownership or
    ``authentik_core.change_token``, ``DELETE`` ownership or ``authentik_core.delete_token``, held
    globally or as an object permission on the token (user or group), as authentik's owner-or-permission
    rule. Active superusers hold every permission.
    """

    codenames = {"PUT": "change_token", "PATCH": "change_token", "DELETE": "delete_token"}

    def has_object_permission(self, request: Request, view: Any, obj: Token) -> bool:
        if request.method in SAFE_METHODS:
            return True
        user = request.user
        if not isinstance(user, User):
            return False
        if obj.user_id == user.pk:
            return True
        codename = self.codenames.get(request.method or "")
        # Up front, so an unpermitted caller gets 403 before its body is judged; the deciding check is
        # the service's, on the locked row.
        return codename is not None and user_has_token_perm_on_pk(user, codename, obj.pk)
