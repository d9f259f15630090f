"""Mailgun's delivery webhooks, at `POST /webhooks/email/mailgun`.

Mailgun posts JSON: `signature` (`timestamp`, `token`, `signature`) beside `event-data`. The signature is
the hex HMAC-SHA256 of the timestamp and the token, concatenated, keyed with the webhook signing key
(MAILGUN_WEBHOOK_SIGNING_KEY; unset, this receiver is off). It does not cover `event-data`, so a captured
signature could carry another event: a timestamp more than MAX_AGE seconds away from now is refused,
and a token seen before with another body is refused as a replay (tokens are kept in Redis for longer
than MAX_AGE).

Events: `failed` with `severity: permanent` is a hard bounce, `temporary` a soft one; `complained`;
`delivered`. Others are acknowledged and dropped. The sender is the message's From header, else the
envelope sender.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from encore_retention.core.settings import get_settings
from encore_retention.webhooks.base import Headers, Rejected
from encore_retention.webhooks.mail import (
    COMPLAINT,
    DELIVERED,
    HARD_BOUNCE,
    SOFT_BOUNCE,
    MailEvent,
    Received,
    address,
    json_body,
    mapping,
    refuse_replay,
)

MAX_AGE = 300  # seconds a signed timestamp may be away from now
TOKEN_TTL = 2 * MAX_AGE + 60  # a token outlives the window in which its timestamp is accepted


def expected_signature(key: str, timestamp: str, token: str) -> str:
    """Mailgun's signature of a timestamp and token: hex HMAC-SHA256 of both, concatenated."""
    return hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()


def verify(signature: dict[str, Any], body: bytes, now: float | None = None) -> None:
    """Check the signature, the timestamp's age and the token's first use; Rejected(401) otherwise."""
    key = get_settings().MAILGUN_WEBHOOK_SIGNING_KEY or ""
    timestamp, token, given = (signature.get(name) for name in ("timestamp", "token", "signature"))
    timestamp = str(timestamp) if isinstance(timestamp, (str, int)) else None
    if not (timestamp and isinstance(token, str) and token and isinstance(given, str)):
        raise Rejected(401, "bad_signature", "signature needs timestamp, token and signature")
    if not hmac.compare_digest(expected_signature(key, timestamp, token), given.lower()):
        raise Rejected(401, "bad_signature", "the Mailgun signature does not match")
    try:
        age = abs((now if now is not None else time.time()) - float(timestamp))
    except ValueError as exc:
        raise Rejected(401, "bad_signature", "the timestamp is not a number") from exc
    if age > MAX_AGE:
        raise Rejected(401, "stale", f"the signed timestamp is {int(age)} s away from now (at most {MAX_AGE})")
    refuse_replay("mailgun", token, body, TOKEN_TTL)


def sender_of(data: dict[str, Any]) -> str | None:
    """The message's From header, else the envelope sender."""
    message, envelope = data.get("message"), data.get("envelope")
    headers = message.get("headers") if isinstance(message, dict) else None
    found = address(headers.get("from")) if isinstance(headers, dict) else None
    return found or (address(envelope.get("sender")) if isinstance(envelope, dict) else None)


def detail_of(data: dict[str, Any]) -> str:
    """Why a delivery failed, as Mailgun says it: reason, SMTP code and message."""
    status = data.get("delivery-status")
    status = status if isinstance(status, dict) else {}
    parts = [data.get("reason"), status.get("code"), status.get("message") or status.get("description")]
    return " ".join(str(part) for part in parts if part not in (None, ""))[:500]


def event_of(data: dict[str, Any]) -> MailEvent | None:
    """The event of one `event-data`, None for kinds Encore does not act on."""
    name, recipient = data.get("event"), address(data.get("recipient"))
    if recipient is None:
        return None
    sender = sender_of(data)
    if name == "failed":
        hard = data.get("severity") == "permanent"
        return MailEvent(HARD_BOUNCE if hard else SOFT_BOUNCE, recipient, sender, "mailgun", detail_of(data))
    if name == "complained":
        return MailEvent(COMPLAINT, recipient, sender, "mailgun", "complaint")
    if name == "delivered":
        return MailEvent(DELIVERED, recipient, sender, "mailgun", "")
    return None


class Mailgun:
    """Mailgun's webhooks (the JSON ones)."""

    name = "mailgun"

    def configured(self) -> bool:
        """On when MAILGUN_WEBHOOK_SIGNING_KEY is set."""
        return bool(get_settings().MAILGUN_WEBHOOK_SIGNING_KEY)

    def receive(self, headers: Headers, body: bytes) -> Received:
        """Verify the signature (age, replay) and read the event."""
        payload = json_body(body)
        signature = mapping(payload.get("signature"), "signature")
        verify(signature, body)
        event = event_of(mapping(payload.get("event-data"), "event-data"))
        token = str(signature["token"])
        if event is None:
            return Received(token, status="ignored")
        return Received(token, [event])


provider = Mailgun()
