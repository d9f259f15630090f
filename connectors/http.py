"""Calling a platform's HTTP API politely: 429 waits as long as asked, 5xx and network errors back off.

Waits are short and in-process (the injectable `sleep`); when the platform asks for longer than
`max_wait`, or the attempts run out, a transient `PlatformError` carries `retry_after` up to the job,
which RQ retries later instead of holding a worker. A 4xx is the caller's to interpret (a 404 may
mean "gone"); `raise_for_status` turns it into a `PlatformError` with the platform's own message.

The flows' `http` step posts to URLs a flow file names, so `post_json` keeps it off this machine and
its network: loopback, link-local (cloud metadata at 169.254.169.254), private, unique-local,
multicast, unspecified and reserved addresses are refused, however the address is written or
whatever name resolves to it, unless HTTP_STEP_ALLOW_HOSTS lists it. The name is resolved once and
the connection made to the address checked; redirects are not followed.
"""

from __future__ import annotations

import email.utils
import http.client
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests

from encore_retention.connectors.base import PlatformError
from encore_retention.core.settings import get_settings

Sleep = Callable[[float], None]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def retry_after(response: requests.Response) -> float | None:
    """Seconds to wait from a `Retry-After` header (seconds or an HTTP date), if any."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def platform_message(response: requests.Response) -> str:
    """The platform's own error text from a response body (JSON `message`/`errors`, else the text)."""
    try:
        body = response.json()
    except ValueError:
        return (response.text or response.reason or "").strip()[:500]
    if isinstance(body, dict):
        for key in ("message", "errors", "error_description", "error"):
            if body.get(key):
                value = body[key]
                return value if isinstance(value, str) else str(value)[:500]
    return str(body)[:500]


def raise_for_status(response: requests.Response, what: str) -> None:
    """A PlatformError with the platform's message for a 4xx/5xx answer."""
    if response.status_code < 400:
        return
    transient = response.status_code == 429 or response.status_code >= 500
    raise PlatformError(
        f"{what}: HTTP {response.status_code}: {platform_message(response)}",
        status=response.status_code,
        transient=transient,
        retry_after=retry_after(response),
    )


_one_attempt: ContextVar[bool] = ContextVar("encore_one_attempt", default=False)


@contextmanager
def one_attempt() -> Iterator[None]:
    """Inside the block a platform call makes one attempt: a 429 or 5xx raises its transient PlatformError at once.

    For a job that RQ retries with backoff (`Retry`): the job's schedule is the backoff, no worker sleeps.
    """
    token = _one_attempt.set(True)
    try:
        yield
    finally:
        _one_attempt.reset(token)


class RetryPolicy:
    """How many times, and how long, to retry a call that failed for a reason that may pass."""

    def __init__(
        self, *, attempts: int = 4, backoff: float = 1.0, max_wait: float = 30.0, sleep: Sleep | None = None
    ) -> None:
        self.attempts = attempts
        self.backoff = backoff
        self.max_wait = max_wait
        self.sleep = sleep or time.sleep

    def delay(self, attempt: int) -> float:
        """The backoff before retry number `attempt + 1` (1, 2, 4, … times `backoff`)."""
        return self.backoff * (2**attempt)

    def call(self, request: Callable[[], requests.Response], what: str) -> requests.Response:
        """`request()` until it answers below 500 and not 429; raises a transient PlatformError when out of tries."""
        for attempt in range(self.attempts):
            try:
                response = request()
            except requests.RequestException as exc:
                error = PlatformError(f"{what}: {type(exc).__name__}: {exc}", transient=True)
                wait = self.delay(attempt)
            else:
                if response.status_code == 429:
                    asked = retry_after(response)
                    wait = asked if asked is not None else self.delay(attempt)
                    error = PlatformError(
                        f"{what}: rate limited (HTTP 429)", status=429, transient=True, retry_after=wait
                    )
                elif response.status_code >= 500:
                    wait = self.delay(attempt)
                    error = PlatformError(
                        f"{what}: HTTP {response.status_code}: {platform_message(response)}",
                        status=response.status_code,
                        transient=True,
                        retry_after=wait,
                    )
                else:
                    return response
            if attempt + 1 >= self.attempts or wait > self.max_wait or _one_attempt.get():
                error.retry_after = wait
                raise error
            self.sleep(wait)
        raise AssertionError("unreachable")

    def wait(self, seconds: float, error: PlatformError, attempt: int) -> None:
        """Sleep `seconds` before another attempt, or raise `error` when that is too long or too many."""
        if attempt + 1 >= self.attempts or seconds > self.max_wait or _one_attempt.get():
            error.retry_after = seconds
            raise error
        self.sleep(seconds)


def json_of(response: requests.Response, what: str) -> Any:
    """The JSON body, or a PlatformError when the platform answered something else."""
    try:
        return response.json()
    except ValueError as exc:
        raise PlatformError(
            f"{what}: the answer is not JSON: {response.text[:200]!r}", status=response.status_code, transient=True
        ) from exc


# ---- the flows' `http` step: URLs a flow file names, kept off this machine and its network -----------


class RefusedURL(Exception):
    """A URL the `http` step won't post to (not public, not http(s), malformed); never worth a retry."""


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_HOST_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")  # what http.client refuses in a request line


def refusal(address: IPAddress) -> str | None:
    """Why the `http` step may not reach an address (`loopback`, `private`…), or None for a public one.

    An IPv6 address standing for an IPv4 one (IPv4-mapped, NAT64) is judged by that one; one
    tunnelling to an IPv4 one (6to4, Teredo) must pass as itself and as that one.
    """
    if isinstance(address, ipaddress.IPv6Address):
        translated = address.ipv4_mapped or (
            ipaddress.IPv4Address(int(address) & 0xFFFFFFFF) if address in _NAT64 else None
        )
        if translated is not None:
            found = refusal(translated)
            return f"{found} (as {translated})" if found else None
        tunnelled = address.sixtofour or (address.teredo or (None, None))[1]
        if tunnelled is not None and refusal(tunnelled):
            return f"{refusal(tunnelled)} (as {tunnelled})"
        if address.is_site_local:
            return "site-local"
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("unique-local", address in _UNIQUE_LOCAL),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("not globally reachable", not address.is_global),
    )
    return next((reason for reason, hit in checks if hit), None)


def literal_address(host: str) -> IPAddress | None:
    """The address a host written as an IP stands for, in every form the resolver takes.

    `127.0.0.1`, `[::1]`, and the older IPv4 forms `127.1`, `2130706433`, `0x7f000001`,
    `017700000001` (what `inet_aton` reads); None for a host name.
    """
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, UnicodeError):
        return None


@dataclass(frozen=True)
class AllowList:
    """HTTP_STEP_ALLOW_HOSTS: host names, addresses and networks the `http` step may reach though not public."""

    names: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, value: str) -> AllowList:
        """From a comma-separated setting: `crm.internal, 10.0.0.5, 192.168.1.0/24, ::1`."""
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in (e.strip() for e in value.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                names.add(entry.lower().rstrip("."))
        return cls(frozenset(names), tuple(networks))

    def allows(self, host: str, address: IPAddress) -> bool:
        """Whether the URL's host is listed, or the address is in a listed network."""
        return host.lower().rstrip(".") in self.names or any(address in network for network in self.networks)


def allow_list() -> AllowList:
    """HTTP_STEP_ALLOW_HOSTS as an AllowList."""
    return AllowList.parse(get_settings().HTTP_STEP_ALLOW_HOSTS)


def checked_addresses(host: str, port: int, allowed: AllowList | None = None) -> list[tuple[Any, ...]]:
    """The host's addresses (getaddrinfo's 5-tuples), resolved once; RefusedURL when any is not public.

    Every address a name resolves to must pass, so a name answering with one public and one private
    address can't be used to reach the private one. The caller connects to exactly these.
    """
    allowed = allowed if allowed is not None else allow_list()
    try:
        if literal_address(host) is None and not _HOST_NAME.fullmatch(host.encode("idna").decode()):
            raise ValueError("only letters, digits, dots, hyphens and underscores")
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (UnicodeError, ValueError) as exc:
        raise RefusedURL(f"{host!r} is not a host name ({exc})") from None
    if not found:
        raise socket.gaierror(f"{host} has no address")
    for *_, sockaddr in found:
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        reason = refusal(address)
        if reason and not allowed.allows(host, address):
            shown = host if str(address) == host else f"{host} ({address})"
            raise RefusedURL(
                f"{shown} is {reason}; the http step reaches only public addresses unless "
                f"HTTP_STEP_ALLOW_HOSTS lists the host"
            )
    return found


def refused_without_resolving(url: str) -> str | None:
    """Why the `http` step will refuse a URL whose host is written as an address, told without resolving.

    For `encore flows lint`: `http://127.0.0.1/`, `http://[::1]/`, `http://2130706433/` or
    `http://localhost/` are known to be refused before any name is looked up; None otherwise.
    """
    host = urlsplit(url).hostname or ""
    address = literal_address(host)
    if address is None and host.rstrip(".") == "localhost":
        address = ipaddress.IPv4Address("127.0.0.1")
    reason = refusal(address) if address is not None else None
    if address is None or reason is None or allow_list().allows(host, address):
        return None
    return f"{host} is {reason}: the step will be refused unless HTTP_STEP_ALLOW_HOSTS lists the host"


def _pinned(connection: http.client.HTTPConnection, addresses: list[tuple[Any, ...]]) -> None:
    """Make `connection` connect to the checked addresses instead of resolving its host again."""

    def connect(_address: Any, timeout: Any = None, source_address: Any = None) -> socket.socket:
        error: OSError | None = None
        for family, kind, proto, _, sockaddr in addresses:
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
        raise error or OSError("no address to connect to")

    connection._create_connection = connect  # type: ignore[attr-defined]


def post_json(
    url: str, body: bytes, headers: dict[str, str], timeout: float, allowed: AllowList | None = None
) -> tuple[int, str | None]:
    """POST `body` to a URL a flow names; (status, Location of a redirect, which is not followed).

    The host is resolved once and every address checked (`checked_addresses`); the connection goes
    to those addresses, never to a second answer of the resolver, while the Host header and the TLS
    certificate check keep the URL's name. Raises RefusedURL for a URL the step may not post to
    (`refusal`), OSError or `http.client.HTTPException` for what a retry may fix.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise RefusedURL(f"{url!r} is not an http(s) URL with a host")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise RefusedURL(f"{url!r}: {exc}") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if _BAD_TARGET.search(target):
        raise RefusedURL(f"{url!r}: spaces and control characters must be percent-encoded")
    addresses = checked_addresses(parts.hostname, port, allowed)
    connection = (
        http.client.HTTPSConnection(parts.hostname, port, timeout=timeout, context=ssl.create_default_context())
        if scheme == "https"
        else http.client.HTTPConnection(parts.hostname, port, timeout=timeout)
    )
    _pinned(connection, addresses)
    try:
        connection.request("POST", target, body=body, headers=headers)
        response = connection.getresponse()
        response.read(65536)  # the answer's body is not used; a little is read so the server isn't cut off
        return response.status, response.getheader("Location") if 300 <= response.status < 400 else None
    finally:
        connection.close()
