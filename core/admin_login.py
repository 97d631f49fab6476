"""The admin's login form: failed logins are rate-limited per client address and per username, and every
attempt the form decides writes a ``login`` or ``login_failed`` event (never the password)."""

import hashlib
import logging
from typing import Any

from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.exceptions import ValidationError

from events.models import EventAction
from events.services import event_create
from tokens_service.request_meta import request_meta
from tokens_service.throttling import SlidingWindowThrottle, client_network

logger = logging.getLogger(__name__)

THROTTLED_MESSAGE = "Too many failed login attempts. Try again in %(seconds)d seconds."


class AdminLoginThrottle(SlidingWindowThrottle):
    """Failed admin logins for one identity (a client network or a username) in the scope's window.

    Reuses the API's sliding-window counters (same cache, Redis when ``REDIS_URL`` is set, fail-open when
    it is unreachable); the rates are ``THROTTLE_ADMIN_LOGIN_ADDRESS`` and ``THROTTLE_ADMIN_LOGIN_USERNAME``.
    """

    def __init__(self, scope: str, ident: str) -> None:
        self.scope = scope
        super().__init__()
        self.counter_key = self.cache_format % {"scope": scope, "ident": ident}

    def over_limit(self) -> bool:
        return self.rate is not None and self.exceeded(self.counter_key)

    def record_failure(self) -> None:
        if self.rate is not None:
            self.hit(self.counter_key)


def _username_ident(username: str) -> str:
    # Hashed: a username is caller-chosen text (any length, any characters) and the cache key must be plain.
    return hashlib.sha256(username.strip().casefold().encode("utf-8", "replace")).hexdigest()


class ThrottledAdminAuthenticationForm(AdminAuthenticationForm):
    """Django's admin login form, plus abuse limits and audit events.

    While the client's address (IPv6: its /64) or the submitted username is over its limit of failed
    logins, every attempt is refused with a form error before any password is checked, a right one
    included: answering a correct guess normally would let a guesser go on. A failed attempt (unknown
    user, wrong password, inactive or non-staff account) counts against both and writes ``login_failed``
    with the submitted username; a successful one writes ``login`` with the user as actor. Refused
    (throttled) attempts write no event, so a flood cannot grow the audit table; they are logged.
    """

    error_messages = {**AdminAuthenticationForm.error_messages, "throttled": THROTTLED_MESSAGE}

    def clean(self) -> dict[str, Any]:
        username = str(self.cleaned_data.get("username") or "")[:150]
        meta = request_meta(self.request) if self.request is not None else None
        throttles = [
            AdminLoginThrottle("admin_login_address", client_network(meta.client_ip if meta else None)),
            AdminLoginThrottle("admin_login_username", _username_ident(username)),
        ]
        for throttle in throttles:
            if throttle.over_limit():
                logger.warning("admin login refused: too many failures (%s)", throttle.scope)
                raise ValidationError(
                    self.error_messages["throttled"],
                    code="throttled",
                    params={"seconds": int(throttle.wait() or 1)},
                )
        try:
            cleaned = super().clean()
        except ValidationError:
            for throttle in throttles:
                throttle.record_failure()
            if meta is not None:
                event_create(
                    action=EventAction.LOGIN_FAILED,
                    actor=None,
                    request_meta=meta,
                    app="authentik_core",
                    context={"username": username, "source": "admin"},
                )
            raise
        if meta is not None and self.get_user() is not None:
            event_create(
                action=EventAction.LOGIN,
                actor=self.get_user(),
                request_meta=meta,
                app="authentik_core",
                context={"source": "admin"},
            )
        return cleaned
