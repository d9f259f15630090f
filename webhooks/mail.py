"""Delivery webhooks of sending services: what every provider's receiver shares, and the providers' registry.

Like the store platforms' receivers: one module per provider (`ses`, `mailgun`), each of the same shape.
A `MailProvider` checks the provider's own signature over the raw body (`receive`), answers what the
provider needs answered at once (SNS's subscription confirmation), and maps the provider's events to
`MailEvent`s: a small, stable vocabulary (`HARD_BOUNCE`, `SOFT_BOUNCE`, `COMPLAINT`, `DELIVERED`) that
the worker applies (`encore_retention.jobs.process_mail_events` -> `core.bounces`). Events of other
kinds are dropped here. None of it needs Flask; the web app's view (`encore_retention.web.mail`)
maps `Rejected` to its status: 400 malformed, 401 a signature that does not check out, 404 a
provider that is not configured, 503 when the provider's certificate or Redis can't be reached.

A new provider is one module with a `provider` object and one line in `PROVIDERS`; copy `mailgun.py`
for an HMAC-signed provider, `ses.py` for one that signs with a certificate.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass, field
from email.utils import parseaddr
from typing import Any, Protocol

from encore_retention.core.queue import get_redis
from encore_retention.webhooks.base import Headers, Rejected

HARD_BOUNCE = "hard_bounce"
SOFT_BOUNCE = "soft_bounce"
COMPLAINT = "complaint"
DELIVERED = "delivered"
KINDS = frozenset({HARD_BOUNCE, SOFT_BOUNCE, COMPLAINT, DELIVERED})

# provider name (the URL's last part) -> "module:attribute"
PROVIDERS: dict[str, str] = {
    "ses": "encore_retention.webhooks.ses:provider",
    "mailgun": "encore_retention.webhooks.mailgun:provider",
}
SEEN_PREFIX = "encore:mail-token:"


@dataclass(frozen=True)
class MailEvent:
    """One thing a sending service reports about one recipient of one message."""

    kind: str
    recipient: str
    sender: str | None
    provider: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown mail event kind {self.kind!r} (expected one of: {', '.join(sorted(KINDS))})")
        if "@" not in self.recipient:
            raise ValueError(f"not an email address: {self.recipient[:100]!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, for the job that applies it."""
        return {
            "kind": self.kind,
            "recipient": self.recipient,
            "sender": self.sender,
            "provider": self.provider,
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MailEvent:
        """Rebuild an event from `to_dict`'s output."""
        return cls(
            kind=str(data["kind"]),
            recipient=str(data["recipient"]),
            sender=data.get("sender"),
            provider=str(data["provider"]),
            detail=str(data.get("detail") or ""),
        )


@dataclass
class Received:
    """What a verified delivery holds: its events (keyed, for the queue's dedupe) or an answer given now."""

    key: str
    events: list[MailEvent] = field(default_factory=list)
    status: str = "queued"
    """What the view answers: `queued` (when there are events), `ignored`, `confirmed`, `duplicate`."""


class MailProvider(Protocol):
    """A sending service's delivery webhook."""

    name: str

    def configured(self) -> bool:
        """Whether the settings this provider's signature check needs are set (else its URL is a 404)."""

    def receive(self, headers: Headers, body: bytes) -> Received:
        """Verify the delivery and read its events; raises `Rejected` with the answer for a bad one."""


def get_provider(name: str) -> MailProvider | None:
    """The provider called `name`, None for a name no provider has."""
    path = PROVIDERS.get(name)
    if path is None:
        return None
    module, _, attribute = path.partition(":")
    found: MailProvider = getattr(importlib.import_module(module), attribute)
    return found


def address(value: Any) -> str | None:
    """The bare address of `value` (`a@b` or `Name <a@b>`), None when it is not one."""
    if not isinstance(value, str):
        return None
    _, parsed = parseaddr(value)
    return parsed.strip() if "@" in parsed else None


def mapping(value: Any, what: str) -> dict[str, Any]:
    """`value` when it is a JSON object, else Rejected(400) naming `what`."""
    if not isinstance(value, dict):
        raise Rejected(400, "malformed", f"{what} is not an object")
    return value


def json_body(body: bytes) -> dict[str, Any]:
    """A delivery webhook's body as a JSON object, else Rejected(400)."""
    try:
        parsed = json.loads(body)
    except ValueError as exc:
        raise Rejected(400, "malformed", "the body is not JSON") from exc
    return mapping(parsed, "the body")


def refuse_replay(provider: str, token: str, body: bytes, ttl: int) -> None:
    """Remember a signed token with the body it came with, for `ttl` seconds; Rejected(401) when it comes back with
    another body (a replay of a captured signature). The same body again is the provider's own retry: let through
    (the queue's dedupe makes it one job)."""
    fingerprint = hashlib.sha256(body).hexdigest()
    key = f"{SEEN_PREFIX}{provider}:{hashlib.sha256(token.encode()).hexdigest()}"
    connection = get_redis()
    if connection.set(key, fingerprint, nx=True, ex=ttl):
        return
    seen = connection.get(key)
    seen = seen.decode() if isinstance(seen, bytes) else seen
    if seen != fingerprint:
        raise Rejected(401, "replayed", "this signature was already used for another delivery")
