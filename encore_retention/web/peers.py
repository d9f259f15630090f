"""Who is asking: the Host a request names, whether a proxy forwarded it, and the client's address.

A reverse proxy on the same machine connects from a loopback address, and one that adds no header
(nginx's plain `proxy_pass`) can't be told from a local browser at all. So a loopback address is
never taken as a sign-in here; these answers only decide:
- which `Host` names the admin page and the sandbox answer to (APP_URL's host and this machine's
  names), so that a DNS-rebinding page, whose requests name the attacker's host, is refused;
- whether a request is this machine's own (loopback, and no header any proxy or router adds), for
  the sandbox store;
- which address a failed sign-in is counted against.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from flask import Request

from encore_retention.core.settings import get_settings

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# Headers proxies, load balancers and platform routers add; any one of them means "forwarded".
FORWARDING_HEADERS = frozenset(
    {
        "forwarded",
        "via",
        "x-real-ip",
        "x-client-ip",
        "x-cluster-client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-original-forwarded-for",
        "x-request-start",
    }
)
_HOST = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9.-]+))(?::\d{1,5})?")


def host_name(host: str) -> str | None:
    """The lower-case name of a `Host` header's value (no port, no brackets), or None when malformed."""
    match = _HOST.fullmatch(host or "")
    if match is None:
        return None
    return (match.group("v6") or match.group("name")).lower().rstrip(".")


def known_hosts() -> frozenset[str]:
    """The host names the admin page answers to: APP_URL's host, and this machine's own names."""
    public = (urlsplit(get_settings().APP_URL).hostname or "").lower()
    return LOCAL_HOSTS | ({public} if public else set())


def known_host(request: Request) -> bool:
    """True when the request's `Host` names this app (a DNS-rebinding page names another)."""
    return host_name(request.host) in known_hosts()


def forwarded(request: Request) -> bool:
    """True when any header a proxy or router adds is present (Forwarded, X-Forwarded-*, X-Real-IP, Via, …)."""
    return any(
        name.lower() in FORWARDING_HEADERS or name.lower().startswith("x-forwarded-") for name in request.headers.keys()
    )


def _address(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address((value or "").strip())
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:  # ::ffff:127.0.0.1 on a dual-stack socket
        return address.ipv4_mapped
    return address


def from_this_machine(request: Request) -> bool:
    """A loopback peer that no proxy forwarded. A proxy that adds no header still passes: use it for
    conveniences that expose nothing (the sandbox store), never for a sign-in."""
    address = _address(request.remote_addr)
    return address is not None and address.is_loopback and not forwarded(request)


def client_address(request: Request) -> str:
    """The address a request is counted against: its peer, or, when the peer is not a public address
    (a proxy on this machine or a private network), the last `X-Forwarded-For` entry (the one that
    proxy added).

    A proxy that adds no X-Forwarded-For passes the client's own header through, so behind one the
    client chooses this value: it keys the sign-in throttle, which also counts per account, and never
    decides access. IPv6 clients are counted by their /64, which one client usually holds whole.
    """
    peer = _address(request.remote_addr)
    address = peer
    if peer is not None and not peer.is_global:
        hops = [hop for hop in request.headers.get("X-Forwarded-For", "").split(",") if hop.strip()]
        address = _address(hops[-1]) if hops else peer
        address = address or peer
    if address is None:
        return request.remote_addr or "unknown"
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)
