"""Amazon SES bounce, complaint and delivery notifications, delivered by Amazon SNS to `POST /webhooks/email/ses`.

Every SNS message is signed: `Signature` is an RSA signature (SHA1 for `SignatureVersion` 1, SHA256 for 2)
over the message's fields in a fixed order, checked against the certificate at `SigningCertURL`. That URL
must be https on an `sns.<region>.amazonaws.com` host, or the message is refused before anything is
fetched; certificates are kept per URL. A valid signature proves SNS sent the message, not that it is
from this installation's topic (anyone can make a topic), so only topics listed in SES_SNS_TOPIC_ARNS
are taken; unset, this receiver is off.

- `SubscriptionConfirmation`: confirmed by fetching its `SubscribeURL` (also an SNS host), at once.
- `Notification`: its `Message` is SES's notification JSON (`notificationType`, or `eventType` for a
  configuration set's event publishing): `Bounce` (`Permanent` is a hard bounce, `Transient` and
  `Undetermined` soft), `Complaint`, `Delivery`. Other types are acknowledged and dropped.
- `UnsubscribeConfirmation`: acknowledged.

The sender is the message's From (`mail.commonHeaders.from`), else its `mail.source`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

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
)

SNS_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com")
NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
CONFIRMATION_FIELDS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}
FETCH_TIMEOUT = 10
_certificates: dict[str, x509.Certificate] = {}


def sns_url(url: Any) -> str | None:
    """`url` when it is an https URL on an SNS host (no user, no other port), else None."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname or ""
    if parts.scheme != "https" or parts.username or port not in (None, 443) or not SNS_HOST.fullmatch(host):
        return None
    return url


def string_to_sign(message: dict[str, Any]) -> bytes:
    """The text SNS signs: `name\\nvalue\\n` for each field of the message's type, in order, absent ones left out."""
    names = NOTIFICATION_FIELDS if message.get("Type") == "Notification" else CONFIRMATION_FIELDS
    lines = []
    for name in names:
        value = message.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise Rejected(400, "malformed", f"{name} is not a string")
        lines.append(f"{name}\n{value}\n")
    return "".join(lines).encode()


def certificate(url: str) -> x509.Certificate:
    """The signing certificate at `url` (an SNS URL), fetched once per process; Rejected(503) when it can't be."""
    found = _certificates.get(url)
    if found is not None:
        return found
    try:
        response = requests.get(url, timeout=FETCH_TIMEOUT, allow_redirects=False)
    except requests.RequestException as exc:
        raise Rejected(503, "certificate_unavailable", f"the signing certificate could not be fetched: {exc}") from exc
    if response.status_code != 200:
        raise Rejected(503, "certificate_unavailable", f"the signing certificate answered HTTP {response.status_code}")
    try:
        found = x509.load_pem_x509_certificate(response.content)
    except ValueError as exc:
        raise Rejected(401, "bad_certificate", "SigningCertURL holds no PEM certificate") from exc
    if len(_certificates) > 50:
        _certificates.clear()
    _certificates[url] = found
    return found


def verify(message: dict[str, Any]) -> None:
    """Check an SNS message's signature against its certificate; Rejected(401) when it does not check out."""
    version = message.get("SignatureVersion")
    algorithm = HASHES.get(version) if isinstance(version, str) else None
    if algorithm is None:
        raise Rejected(401, "bad_signature", f"unknown SignatureVersion {str(version)[:10]!r}")
    url = sns_url(message.get("SigningCertURL"))
    if url is None:
        raise Rejected(
            401, "bad_certificate", "SigningCertURL is not an https URL on an sns.<region>.amazonaws.com host"
        )
    try:
        signature = base64.b64decode(str(message.get("Signature") or ""), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Rejected(401, "bad_signature", "Signature is not base64") from exc
    signed = string_to_sign(message)
    cert = certificate(url)
    now = datetime.now(UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise Rejected(401, "bad_certificate", "the signing certificate is not valid now")
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise Rejected(401, "bad_certificate", "the signing certificate holds no RSA key")
    try:
        key.verify(signature, signed, padding.PKCS1v15(), algorithm())
    except InvalidSignature as exc:
        raise Rejected(401, "bad_signature", "the SNS signature does not match") from exc


def confirm(message: dict[str, Any]) -> None:
    """Confirm a subscription by fetching its SubscribeURL (an SNS URL); Rejected(503) when SNS does not answer."""
    url = sns_url(message.get("SubscribeURL"))
    if url is None:
        raise Rejected(400, "malformed", "SubscribeURL is not an https URL on an SNS host")
    try:
        response = requests.get(url, timeout=FETCH_TIMEOUT, allow_redirects=False)
    except requests.RequestException as exc:
        raise Rejected(503, "confirmation_failed", f"SNS did not answer the confirmation: {exc}") from exc
    if response.status_code != 200:
        raise Rejected(503, "confirmation_failed", f"SNS answered the confirmation with HTTP {response.status_code}")


def sender_of(mail: dict[str, Any]) -> str | None:
    """The From of the message the notification is about, else its envelope source."""
    common = mail.get("commonHeaders")
    senders = common.get("from") if isinstance(common, dict) else None
    if isinstance(senders, list):
        for value in senders:
            if found := address(value):
                return found
    return address(mail.get("source"))


def _recipients(items: Any, field_name: str = "emailAddress") -> list[str]:
    found = []
    for item in items if isinstance(items, list) else []:
        value = item.get(field_name) if isinstance(item, dict) else item
        if recipient := address(value):
            found.append(recipient)
    return found


def events_of(notification: dict[str, Any]) -> list[MailEvent]:
    """The events of one SES notification (a bounce, a complaint or a delivery; others none)."""
    kind = notification.get("notificationType") or notification.get("eventType")
    mail = mapping(notification.get("mail"), "mail")
    sender = sender_of(mail)
    if kind == "Bounce":
        bounce = mapping(notification.get("bounce"), "bounce")
        hard = bounce.get("bounceType") == "Permanent"
        base = f"{bounce.get('bounceType')}/{bounce.get('bounceSubType')}"
        events = []
        for item in bounce.get("bouncedRecipients") or []:
            recipient = address(item.get("emailAddress")) if isinstance(item, dict) else None
            if recipient is None:
                continue
            diagnostic = item.get("diagnosticCode") or item.get("status") or ""
            detail = f"{base}: {diagnostic}".strip(": ")[:500]
            events.append(MailEvent(HARD_BOUNCE if hard else SOFT_BOUNCE, recipient, sender, "ses", detail))
        return events
    if kind == "Complaint":
        complaint = mapping(notification.get("complaint"), "complaint")
        detail = str(complaint.get("complaintFeedbackType") or "complaint")[:500]
        return [
            MailEvent(COMPLAINT, r, sender, "ses", detail) for r in _recipients(complaint.get("complainedRecipients"))
        ]
    if kind == "Delivery":
        delivery = mapping(notification.get("delivery"), "delivery")
        return [MailEvent(DELIVERED, r, sender, "ses", "") for r in _recipients(delivery.get("recipients"), "")]
    return []


class SES:
    """Amazon SES through SNS."""

    name = "ses"

    def configured(self) -> bool:
        """On when SES_SNS_TOPIC_ARNS names at least one topic."""
        return bool(get_settings().ses_topics)

    def receive(self, headers: Headers, body: bytes) -> Received:
        """Verify the SNS message, confirm a subscription, read a notification's events."""
        message = json_body(body)
        kind = message.get("Type")
        if kind not in ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"):
            raise Rejected(400, "malformed", f"unknown SNS message Type {str(kind)[:40]!r}")
        message_id = message.get("MessageId")
        if not isinstance(message_id, str) or not message_id:
            raise Rejected(400, "malformed", "no MessageId")
        if message.get("TopicArn") not in get_settings().ses_topics:  # checked first: nothing is fetched for it
            raise Rejected(401, "unknown_topic", "the message's TopicArn is not in SES_SNS_TOPIC_ARNS")
        verify(message)
        if kind == "SubscriptionConfirmation":
            confirm(message)
            return Received(message_id, status="confirmed")
        if kind == "UnsubscribeConfirmation":
            return Received(message_id, status="ignored")
        try:
            notification = json.loads(str(message.get("Message")))
        except ValueError as exc:
            raise Rejected(400, "malformed", "the notification's Message is not JSON") from exc
        events = events_of(mapping(notification, "Message"))
        return Received(message_id, events, "queued" if events else "ignored")


provider = SES()
