"""Abuse limits: failed bearer authentications per client IP, and per-caller rates on chosen actions.

Counters live in Django's default cache. With ``REDIS_URL`` set that is Redis, shared by every worker
process and every replica, so a limit means the same thing however many processes serve; without it,
each worker process counts on its own (see README, "Abuse limits").
"""

import functools
import ipaddress
import logging
import math
import time
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from rest_framework.exceptions import Throttled
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from tokens_service.request_meta import client_ip

logger = logging.getLogger(__name__)


def seconds_until_allowed(previous: int, current: int, elapsed: float, limit: int, duration: int) -> float:
    """When a sliding-window estimate at or over ``limit`` falls below it, if nothing more is counted.

    ``previous`` and ``current`` are the counts of the last and the current window, ``elapsed`` the
    seconds since the current window began.
    """
    if current < limit:
        # Within this window: previous * (1 - t / duration) + current < limit (so previous > 0).
        until = duration * (1 - (limit - current) / previous) - elapsed
    else:
        # In the next window, where this one is "previous": current * (1 - t / duration) < limit.
        until = duration - elapsed + duration * (1 - limit / current)
    # The first whole second after that instant (Retry-After counts whole seconds, and at the instant
    # itself the estimate still equals the limit); at least 1, as DRF sends no header for 0.
    return float(max(math.floor(until) + 1, 1))


# After a cache failure, the throttles of this process leave the cache alone for this long and fail open at
# once. A Redis that hangs (rather than refusing connections) would otherwise cost every request its 0.5 s
# timeout once per counter it reads or writes (three on a set_key).
CACHE_PAUSE_SECONDS = 5.0


class CachePause:
    """Process-wide: until when (``time.monotonic()``) the throttles leave their cache alone."""

    until = 0.0

    @classmethod
    def active(cls) -> bool:
        return time.monotonic() < cls.until

    @classmethod
    def start(cls, exc: Exception, consequence: str) -> None:
        cls.until = time.monotonic() + CACHE_PAUSE_SECONDS
        logger.warning(
            "throttle cache unavailable, %s; not asked again for %g s (%s)",
            consequence,
            CACHE_PAUSE_SECONDS,
            type(exc).__name__,
        )


@functools.lru_cache(maxsize=4096)
def client_network(ip: str | None) -> str:
    """What one client controls: its IPv4 address, or the /64 of its IPv6 address.

    An IPv6 host is usually handed a whole /64, so counting single addresses would let it rotate
    through 2**64 of them.
    """
    if ip is None:
        return "unknown"
    address = ipaddress.ip_address(ip)
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class SlidingWindowThrottle(SimpleRateThrottle):
    """DRF's rate throttle, counted with two fixed-window counters instead of a list of timestamps.

    The number of requests in the last ``duration`` seconds is estimated as
    ``previous_window * (1 - elapsed / duration) + current_window``. Counters are incremented with the
    cache's atomic ``incr`` (Redis ``INCR``), so concurrent workers never lose a count, which DRF's
    read-modify-write of a timestamp list does; and a cache value stays one integer whatever the rate.

    Rates are read from ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]`` on every request (a rate of
    ``None`` switches the throttle off). A cache that cannot be reached fails open: the request is
    allowed and a warning logged, because an outage of the counters must not take authentication down;
    then the throttles of this process leave the cache alone for ``CACHE_PAUSE_SECONDS`` (``CachePause``).
    """

    cache_format = "throttle:%(scope)s:%(ident)s"

    def __init__(self) -> None:
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        self._wait: float | None = None
        self._counted: str | None = None

    def get_rate(self) -> str | None:
        # Read at request time (not DRF's import-time copy), so settings overrides apply at once.
        rates = api_settings.DEFAULT_THROTTLE_RATES
        if self.scope not in rates:
            raise ImproperlyConfigured(f"No throttle rate set for the {self.scope!r} scope.")
        rate = rates[self.scope]
        return None if rate is None else str(rate)

    def allow_request(self, request: Any, view: Any) -> bool:
        """Allow and count the request, or refuse it (without counting it) when its key is at the limit."""
        key = self.get_cache_key(request, view)
        if key is None or self.rate is None:
            return True
        if self.exceeded(key, request=request):
            return False
        self.hit(key)
        return True

    def window_names(self, *keys: str, now: float | None = None) -> list[str]:
        """The counters ``exceeded`` reads for ``keys`` at ``now`` (default: the throttle's clock), each key's
        previous and current window in turn."""
        if self.num_requests is None or self.duration is None:
            return []
        window = int((self.timer() if now is None else now) // self.duration)
        return [name for key in keys for name in (f"{key}:{window - 1}", f"{key}:{window}")]

    def exceeded(self, *keys: str, request: Any = None) -> bool:
        """Whether any of ``keys`` has used up its rate; if so, ``wait()`` says for how long. One cache read.

        With ``request``, the read also fetches the counters named in ``request.throttle_read_ahead`` and
        remembers what it read on the request, so a later check of those counters in the same request
        reads nothing (``read_counters``).
        """
        limit, duration = self.num_requests, self.duration
        if limit is None or duration is None:
            return False
        if CachePause.active():
            return False
        now = self.timer()
        elapsed = now % duration
        names = self.window_names(*keys, now=now)
        try:
            counts = self.read_counters(names, request)
        except Exception as exc:  # noqa: BLE001 - any cache failure: fail open (class docstring)
            CachePause.start(exc, "allowing the request")
            return False
        for previous_key, current_key in zip(names[::2], names[1::2], strict=True):
            previous, current = int(counts.get(previous_key, 0)), int(counts.get(current_key, 0))
            if previous * (1 - elapsed / duration) + current >= limit:
                self._wait = seconds_until_allowed(previous, current, elapsed, limit, duration)
                return True
        return False

    def read_counters(self, names: list[str], request: Any = None) -> dict[str, Any]:
        """The counters ``names`` (absent ones left out), in one cache read, or none when ``request`` already
        holds all of them from an earlier read of this request (as they were then: this request's own
        counts since are not in them). That read also fetched ``request.throttle_read_ahead``."""
        held: dict[str, Any] | None = getattr(request, "throttle_counters", None)
        if held is not None and all(name in held for name in names):
            return held
        wanted = list(dict.fromkeys([*names, *getattr(request, "throttle_read_ahead", [])]))
        counts = self.cache.get_many(wanted)
        if request is not None:
            # Absent counters are remembered as 0, so that they are not asked for again.
            request.throttle_counters = {**(held or {}), **dict.fromkeys(wanted, 0), **counts}
        return counts

    def hit(self, key: str) -> None:
        """Count one request against ``key`` in the current window."""
        names, duration = self.window_names(key), self.duration
        if not names or duration is None or CachePause.active():
            return
        current_key = names[1]
        # The counter must outlive the next window, which reads it as "previous": ``timeout`` after its last
        # count does. It is only ever counted during its own window, so it cannot expire between the EXISTS
        # and INCR of Django's ``incr`` either.
        timeout = 2 * duration + 1
        try:
            counter = getattr(self.cache, "incr_expiring", None)  # Redis (tokens_service.cache): one round trip
            if counter is not None:
                counter(current_key, timeout)
            else:
                try:
                    self.cache.incr(current_key)
                except ValueError:  # no counter yet in this window
                    if not self.cache.add(current_key, 1, timeout=timeout):
                        self.cache.incr(current_key)  # another worker created it in between
        except Exception as exc:  # noqa: BLE001 - any cache failure: fail open (class docstring)
            CachePause.start(exc, "request not counted")
        else:
            self._counted = current_key

    def refund(self) -> None:
        """Take back the count of the last ``hit``: the request turned out not to be one this limit is about.

        Decrements the very counter that was incremented, atomically, so the counts of concurrent
        requests are never lost; a counter that has expired meanwhile is left alone.
        """
        counted, self._counted = self._counted, None
        if counted is None or CachePause.active():
            return
        try:
            self.cache.decr(counted)
        except ValueError:  # the counter expired
            pass
        except Exception as exc:  # noqa: BLE001 - any cache failure: fail open (class docstring)
            CachePause.start(exc, "count not taken back")

    def wait(self) -> float | None:
        return self._wait


class FailedAuthenticationThrottle(SlidingWindowThrottle):
    """Failed bearer authentications per client address (``tokens_service.request_meta.client_ip``).

    ``BearerTokenAuthentication`` calls ``check`` before looking a key up and ``record_failure`` after a
    credential fails. While an address is over the limit every bearer attempt from it, right or wrong,
    is refused with 429 before any lookup: answering a correct guess normally would let a guesser go on.
    The address is the socket peer unless a trusted proxy forwarded the request, so a client cannot
    escape its count by writing its own ``X-Forwarded-For``; IPv6 clients are counted per /64.
    """

    scope = "auth_failures"

    def get_cache_key(self, request: Any, view: Any = None) -> str:
        return self.cache_format % {"scope": self.scope, "ident": client_network(client_ip(request.META))}

    def check(self, request: Request) -> None:
        """Raise ``Throttled`` (429 with Retry-After) when this address has failed too often."""
        if self.rate is not None and self.exceeded(self.get_cache_key(request)):
            raise Throttled(wait=self.wait())

    def record_failure(self, request: Request) -> None:
        if self.rate is not None:
            self.hit(self.get_cache_key(request))


class UserActionThrottle(SlidingWindowThrottle):
    """Per authenticated caller, for every viewset action that has a rate named after it.

    ``DEFAULT_THROTTLE_RATES = {"set_key": "6000/min"}`` limits ``set_key`` for each user; actions without
    a rate are not throttled. It runs after authentication and permission checks (DRF's order), so only
    callers allowed to perform the action are counted; where the permission is decided later, on the
    row the action writes (``set_key``), the view takes a refused request's count back (``refund``). It
    adds no database query: the counters are in the cache, and the caller is the already-authenticated
    user.
    """

    def __init__(self) -> None:
        # The scope is the view's action, known only in allow_request.
        self._wait = None
        self._counted = None

    def allow_request(self, request: Any, view: Any) -> bool:
        action = getattr(view, "action", None)
        if not action or action not in api_settings.DEFAULT_THROTTLE_RATES:
            return True
        self.scope = action
        super().__init__()
        return super().allow_request(request, view)

    def get_cache_key(self, request: Any, view: Any) -> str | None:
        user = request.user
        if not getattr(user, "is_authenticated", False):
            return None  # anonymous callers never reach an action that has a rate; nothing to count
        return self.cache_format % {"scope": self.scope, "ident": user.pk}


class KeyCollisionThrottle(SlidingWindowThrottle):
    """Keys that collided with another token's key, per caller and per client address.

    A ``set_key`` or create whose key another token holds tells the caller that some token has that
    key: it is a guess that hit, so it is counted like a failed authentication. ``record`` counts it
    three times: against the caller, against the client address (both with the low ``key_collisions``
    rate) and as a failed authentication of the address (``FailedAuthenticationThrottle``). ``check``,
    called by ``set_key`` and create before the body is read, refuses with 429 while the caller or the
    address is over the rate.
    """

    scope = "key_collisions"

    def get_rate(self) -> str | None:
        # A rates setting without this scope (an older override) leaves the limit off rather than failing.
        rate = api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)
        return None if rate is None else str(rate)

    def get_cache_key(self, request: Any, view: Any = None) -> str:
        return self._keys(request)[0]

    def _keys(self, request: Any) -> list[str]:
        keys = [self.cache_format % {"scope": self.scope, "ident": f"ip:{client_network(client_ip(request.META))}"}]
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            keys.append(self.cache_format % {"scope": self.scope, "ident": f"user:{user.pk}"})
        return keys

    def check(self, request: Any) -> None:
        """Raise ``Throttled`` (429 with Retry-After) when this caller or this address collided too often."""
        if self.rate is not None and self.exceeded(*self._keys(request), request=request):
            raise Throttled(wait=self.wait())

    def read_ahead(self, request: Any) -> None:
        """Have the request's next counter read (``set_key``'s rate, in ``check_throttles``) fetch this
        throttle's counters too, so that ``check`` finds them there: one cache read less per request."""
        if self.rate is not None:
            request.throttle_read_ahead = self.window_names(*self._keys(request))

    def record(self, request: Any) -> None:
        if self.rate is not None:
            for key in self._keys(request):
                self.hit(key)
        FailedAuthenticationThrottle().record_failure(request)
