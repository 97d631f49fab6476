"""What a service knows of the request that caused a write (``RequestMeta``), and the client address.

``request_meta(request)`` is the immutable summary views hand to services instead of the request;
``SYSTEM_REQUEST`` stands for commands and other work no HTTP request caused.
"""

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.http import HttpRequest

from events.utils import cleanse_args, clip


@dataclass(frozen=True, slots=True)
class RequestMeta:
    """What the services need to know about the request that caused a write. Holds no secret."""

    client_ip: str | None = None
    path: str = ""
    method: str = ""
    user_agent: str = ""
    request_id: str = ""
    args: Mapping[str, str] = field(default_factory=dict)

    def as_context(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "method": self.method,
            "user_agent": self.user_agent,
            "request_id": self.request_id,
            "args": dict(self.args),
        }


SYSTEM_REQUEST = RequestMeta(method="", path="", user_agent="system")


def _parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(value.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            return None  # a zone (fe80::1%eth0) means nothing off the host, and inet columns reject it
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return ip


def _trusted(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: Iterable[Any]) -> bool:
    return any(ip in net for net in networks if ip.version == net.version)


# Where client_ip keeps its answer in a request's META: the throttles, the usage record, the event and the
# access log all ask for it, and parsing addresses is not free.
_CLIENT_IP_KEY = "tokens_service.client_ip"


def client_ip(meta: Mapping[str, Any]) -> str | None:
    """The socket peer, or, behind a trusted proxy, the right-most untrusted ``X-Forwarded-For`` entry.

    Entries are walked from the right because only the part appended by our own proxies is reliable;
    anything a client wrote itself sits further left. Garbage never fails the request: it yields the
    last address that could be trusted. Worked out once per request (kept in ``META``).
    """
    if _CLIENT_IP_KEY in meta:
        return meta[_CLIENT_IP_KEY]  # type: ignore[no-any-return]
    ip = _client_ip(meta)
    if isinstance(meta, dict):
        meta[_CLIENT_IP_KEY] = ip
    return ip


def _client_ip(meta: Mapping[str, Any]) -> str | None:
    peer = _parse_ip(str(meta.get("REMOTE_ADDR", "")))
    if peer is None:
        return None
    proxies = settings.TRUSTED_PROXY_CIDRS
    if not proxies or not _trusted(peer, proxies):
        return str(peer)
    candidate = peer
    for entry in reversed(str(meta.get("HTTP_X_FORWARDED_FOR", "")).split(",")):
        ip = _parse_ip(entry)
        if ip is None:
            break
        candidate = ip
        if not _trusted(ip, proxies):
            break
    return str(candidate)


def request_meta(request: HttpRequest) -> RequestMeta:
    """The immutable summary of ``request`` that services receive instead of the request itself."""
    return RequestMeta(
        client_ip=client_ip(request.META),
        path=clip(request.path),
        method=request.method or "",
        user_agent=clip(str(request.META.get("HTTP_USER_AGENT", ""))),
        request_id=getattr(request, "request_id", ""),
        args=cleanse_args(request.GET),
    )
