"""Django's and WhiteNoise's browser middleware, skipped for bearer API requests (``tokens_service.middleware
.BrowserOnlyMiddleware``); ``MIDDLEWARE`` lists these instead of the originals.

The session and CSRF middleware stay Django's own classes: ``check --deploy`` looks for them by name to
check their cookies' settings, and for a bearer request they do next to nothing (no cookie to read, DRF's
views are CSRF-exempt, the session is never touched).
"""

from django.contrib.auth.middleware import AuthenticationMiddleware as _AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware as _MessageMiddleware
from whitenoise.middleware import WhiteNoiseMiddleware as _WhiteNoiseMiddleware

from tokens_service.middleware import BrowserOnlyMiddleware


class WhiteNoiseMiddleware(BrowserOnlyMiddleware, _WhiteNoiseMiddleware):
    pass


class AuthenticationMiddleware(BrowserOnlyMiddleware, _AuthenticationMiddleware):
    pass


class MessageMiddleware(BrowserOnlyMiddleware, _MessageMiddleware):
    pass
