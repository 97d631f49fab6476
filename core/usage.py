"""Token usage: when and from where a token was last used, its IP allowlist, and reports of suspicious use."""

import functools
import ipaddress
import logging
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.core.cache import cache
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Q

from core import fastpath
from core.models import Token
from events.models import EventAction
from events.services import event_create, model_summary
from tokens_service.request_meta import RequestMeta
from tokens_service.throttling import CachePause

logger = logging.getLogger(__name__)

# last_used is written at most once per token in this interval: the bearer lookup already returns it,
# so a token used within the interval costs no write at all.
USAGE_INTERVAL = timedelta(seconds=60)
# At most one suspicious_request event per token and reason in this interval, so that a client hammering
# with a replaced key or from a refused address cannot flood the audit log.
SUSPICIOUS_EVENT_INTERVAL = timedelta(seconds=60)
MAX_ALLOWED_IPS = 100

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def normalize_cidr(value: str) -> str:
    """The canonical text of the network ``value`` (a CIDR, or a single address meaning /32 or /128).

    Raises ``ValueError`` with a message safe to show for anything else, including a CIDR with host
    bits set (``10.0.0.5/24``): silently widening it to its network would grant more than was written.
    """
    text = value.strip()
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError("Enter a valid IPv4 or IPv6 network (CIDR) or address.") from None
        raise ValueError(f"Host bits are set; did you mean {loose}?") from None
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.scope_id is not None:
        raise ValueError("Enter a valid IPv4 or IPv6 network (CIDR) or address.")
    return str(network)


@functools.lru_cache(maxsize=1024)
def _networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def ip_allowed(ip: str | None, allowed_ips: Iterable[str] | None) -> bool:
    """Whether the client address ``ip`` may use a token whose allowlist is ``allowed_ips``.

    No allowlist (null or empty) allows everyone; an allowlist refuses a request whose address is
    unknown. IPv4-mapped IPv6 clients arrive here as IPv4 (``tokens_service.request_meta.client_ip``).
    """
    if not allowed_ips:
        return True
    if ip is None:
        return False
    address = ipaddress.ip_address(ip)
    return any(address in network for network in _networks(tuple(allowed_ips)) if network.version == address.version)


def usage_due(token: Token, now: datetime) -> bool:
    """Whether a use of ``token`` at ``now`` should be recorded (the stored one is older than the interval)."""
    return token.last_used is None or token.last_used <= now - USAGE_INTERVAL


def _record_use(
    *, token_pk: uuid.UUID, ip: str | None, now: datetime, stale_before: datetime, db: BaseDatabaseWrapper
) -> bool:
    """The contract path of ``token_record_use``: a row locked by a writer (set_key, rotate, an update) is
    skipped rather than waited for (``SKIP LOCKED`` where the database has it), so recording a use never
    delays or fails the request; the next request records it."""
    stale = Q(last_used__isnull=True) | Q(last_used__lte=stale_before)
    unlocked = Token.objects.filter(stale, pk=token_pk)
    if not db.features.has_select_for_update_skip_locked:
        return unlocked.update(last_used=now, last_used_ip=ip) == 1
    with transaction.atomic():
        pks = unlocked.select_for_update(skip_locked=True).values("pk")
        return Token.objects.filter(pk__in=pks).update(last_used=now, last_used_ip=ip) == 1


def token_record_use(*, token: Token, ip: str | None, now: datetime) -> bool:
    """Store ``now`` and ``ip`` as the last use of ``token`` unless a use was stored within the interval.

    One conditional ``UPDATE`` (concurrent requests of other workers write at most once); locks nothing
    it has to wait for. A database error is logged (by class) and swallowed outside a transaction:
    usage tracking must never fail an authenticated request. Returns whether a row was written.
    """
    db = connections[DEFAULT_DB_ALIAS]
    try:
        if fastpath.enabled():
            written = fastpath.token_record_use(token_pk=token.pk, ip=ip, now=now, stale_before=now - USAGE_INTERVAL)
        else:
            written = _record_use(token_pk=token.pk, ip=ip, now=now, stale_before=now - USAGE_INTERVAL, db=db)
    except DatabaseError as exc:
        if db.in_atomic_block:
            raise  # the caller's transaction is broken anyway: let it fail as a whole
        logger.warning("token usage not recorded (%s)", type(exc).__name__)
        return False
    if written:
        token.last_used, token.last_used_ip = now, ip
    return written


def report_suspicious_use(*, token: Token, reason: str, request_meta: RequestMeta) -> bool:
    """Write a ``suspicious_request`` event about ``token`` unless one with ``reason`` was written lately.

    At most one event per token and reason per ``SUSPICIOUS_EVENT_INTERVAL`` (a cache ``add``, shared by
    every worker with Redis). The caller is unknown, so the actor is anonymous; the context names the
    token and the reason, never the key that was presented. When the cache is unreachable the event is
    written anyway (the failed-authentication throttle still bounds the rate per client address).
    Returns whether an event was written.
    """
    marker = f"suspicious:{token.pk.hex}:{reason}"
    if CachePause.active():  # the cache failed lately (tokens_service.throttling): not asked meanwhile
        first = True
    else:
        try:
            first = cache.add(marker, 1, timeout=int(SUSPICIOUS_EVENT_INTERVAL.total_seconds()))
        except Exception as exc:  # noqa: BLE001 - any cache failure: audit rather than stay silent
            CachePause.start(exc, "suspicious-request event written unthrottled")
            first = True
    if not first:
        return False
    # In autocommit mode the INSERT commits on its own, before the 403 is answered.
    event_create(
        action=EventAction.SUSPICIOUS_REQUEST,
        actor=None,
        request_meta=request_meta,
        app="authentik_core",
        context={"model": model_summary(token), "reason": reason, "owner": token.user.get_username()},
    )
    return True
