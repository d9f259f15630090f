"""The outgoing email, its MIME form, and the transport registry (by EMAIL_URL scheme)."""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from urllib.parse import urlsplit

from encore.settings import get_settings

IDEMPOTENCY_HEADER = "X-Encore-Idempotency-Key"
TRANSPORT_ENTRY_POINT_GROUP = "encore.email_transports"

# EMAIL_URL scheme -> "module:Class"; a new transport is one module and one line here.
TRANSPORTS: dict[str, str] = {
    "file": "connectors.email.file:FileTransport",
    "smtp": "connectors.email.smtp:SMTPTransport",
    "smtps": "connectors.email.smtp:SMTPTransport",
    "smtp+starttls": "connectors.email.smtp:SMTPTransport",
}


class TransientEmailError(Exception):
    """The send may succeed later (connection refused, 4xx SMTP reply): retry with backoff."""


class PermanentEmailError(Exception):
    """The send will never succeed as is (5xx SMTP reply, bad address): record it, don't retry."""


@dataclass
class OutgoingEmail:
    """One rendered email, ready to send."""

    to: str
    subject: str
    html: str
    text: str
    idempotency_key: str
    marketing: bool = True
    from_addr: str | None = None
    reply_to: str | None = None
    preheader: str | None = None
    unsubscribe_url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    inline_css: bool = True


def build_message(email: OutgoingEmail) -> EmailMessage:
    """The MIME message: text and HTML alternatives, Message-ID, unsubscribe headers (RFC 8058)."""
    from connectors.email.html import prepare

    sender = email.from_addr or get_settings().EMAIL_FROM
    message = EmailMessage()
    message["From"] = sender
    message["To"] = email.to
    message["Subject"] = email.subject
    message["Date"] = formatdate(localtime=False, usegmt=True)
    domain = parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    message["Message-ID"] = make_msgid(domain=domain)
    message[IDEMPOTENCY_HEADER] = email.idempotency_key
    if email.reply_to:
        message["Reply-To"] = email.reply_to
    if email.unsubscribe_url:
        message["List-Unsubscribe"] = f"<{email.unsubscribe_url}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    for name, value in email.headers.items():
        message[name] = value
    message.set_content(email.text)
    message.add_alternative(prepare(email.html, email.preheader, inline=email.inline_css), subtype="html")
    return message


class Transport(abc.ABC):
    """Delivers MIME messages somewhere."""

    def __init__(self, url: str) -> None:
        self.url = url

    @abc.abstractmethod
    def deliver(self, message: EmailMessage) -> None:
        """Send one message; raise TransientEmailError or PermanentEmailError on failure."""


def available_transports() -> dict[str, str]:
    """Every EMAIL_URL scheme with its `module:Class`: built-in, then the `encore.email_transports` entry points."""
    from importlib.metadata import entry_points

    found = dict(TRANSPORTS)
    for entry in entry_points(group=TRANSPORT_ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry.value)
    return found


def get_transport(url: str | None = None) -> Transport:
    """The transport for `url` (default EMAIL_URL)."""
    url = url or get_settings().EMAIL_URL
    scheme = urlsplit(url).scheme.lower()
    known = available_transports()
    path = known.get(scheme)
    if path is None:
        raise ValueError(f"EMAIL_URL scheme {scheme!r} is not supported (expected one of: {', '.join(known)})")
    module_name, _, attr = path.partition(":")
    return getattr(importlib.import_module(module_name), attr)(url)


def send(email: OutgoingEmail, transport: Transport | None = None) -> str:
    """Build and deliver one email; returns its Message-ID."""
    message = build_message(email)
    (transport or get_transport()).deliver(message)
    return str(message["Message-ID"])
