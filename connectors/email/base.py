"""The outgoing email, its MIME form, and the transport registry (by EMAIL_URL scheme)."""

from __future__ import annotations

import abc
import binascii
import hashlib
import hmac
import importlib
import re
from dataclasses import dataclass, field
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.policy import SMTPUTF8, Compat32
from email.utils import formataddr, formatdate, unquote
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import urlsplit

from encore_retention.connectors.email.html import prepare
from encore_retention.core.settings import get_settings

IDEMPOTENCY_HEADER = "X-Encore-Idempotency-Key"
TRANSPORT_ENTRY_POINT_GROUP = "encore.email_transports"

# EMAIL_URL scheme -> "module:Class"; a new transport is one module and one line here.
TRANSPORTS: dict[str, str] = {
    "file": "encore_retention.connectors.email.file:FileTransport",
    "smtp": "encore_retention.connectors.email.smtp:SMTPTransport",
    "smtps": "encore_retention.connectors.email.smtp:SMTPTransport",
    "smtp+starttls": "encore_retention.connectors.email.smtp:SMTPTransport",
}


class TransientEmailError(Exception):
    """The send may succeed later (connection refused, 4xx SMTP reply): retry with backoff."""


class PermanentEmailError(Exception):
    """The send will never succeed as is (5xx SMTP reply, bad address): record it, don't retry.

    `bounce` is true when the receiving side refused the recipient or the message (a 5xx at RCPT or DATA):
    the address bounced, and is suppressed. A refused sign-in, sender or certificate is ours to fix, not theirs.
    """

    bounce: bool = False


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


# Header lines are not folded (a List-Unsubscribe URL stays on its line); encoded words keep RFC 2047's 75.
class _Policy(Compat32):
    """compat32 that writes an ASCII one-line header as it is (our headers are ASCII: RFC 2047 is applied first).

    The stock policy runs every header through `email.header.Header` to fold it, a third of the cost
    of writing a message; a line within `max_line_length` needs none of that.
    """

    def _fold(self, name: str, value: Any, sanitize: bool) -> str:
        if (
            isinstance(value, str)
            and value.isascii()
            and "\n" not in value
            and "\r" not in value
            and len(name) + len(value) + 2 <= (self.max_line_length or 998)
        ):
            return f"{name}: {value}{self.linesep}"
        return super()._fold(name, value, sanitize)  # type: ignore[misc]


# No ">From " mangling either: that is for mbox files, not for SMTP or .eml files.
_POLICY = _Policy(max_line_length=998, mangle_from_=False)


# Line breaks of every kind a mail or HTTP parser may honour (CR, LF, VT, FF, the file separators,
# NEL, U+2028/U+2029) and the other control characters: none may reach a header line.
_CONTROLS = re.compile(r"[ \t]*[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029][\x00-\x1f\x7f-\x9f\u2028\u2029 ]*")
# One addr-spec: a local part and a domain, with none of the characters that separate or quote addresses.
_ADDR_SPEC = re.compile(r'[^\s@<>,;:"()\[\]\\]+@[^\s@<>,;:"()\[\]\\]+')
# Headers the message sets itself (or whose change would change who receives it): `headers` can't set them.
RESERVED_HEADERS = frozenset(
    name.lower()
    for name in (
        "From",
        "To",
        "Cc",
        "Bcc",
        "Reply-To",
        "Sender",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Content-Disposition",
        "Return-Path",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        IDEMPOTENCY_HEADER,
    )
)
_FIELD_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322: printable ASCII but the colon


def header_text(value: str) -> str:
    """A header value on one line: each run of line breaks and other control characters becomes one space.

    A customer's name rendered into a subject or a display name can't start a header of its own
    (`Bcc:`) or end the header section early (pushing Date, Message-ID and List-Unsubscribe into the
    body); what was written around the break stays readable.
    """
    if value.isprintable():  # no control character nor line break: nothing to replace
        return value.strip()
    return _CONTROLS.sub(" ", value).strip()


def mailbox(value: str) -> tuple[str, str]:
    """(display name, address) of one mailbox, written `address` or `Name <address>`; ValueError otherwise.

    The display name is whatever stands before the last `<`, so commas, colons or quotes in a name
    never make a second recipient; a value that is not exactly one address (a list, an address with
    spaces) is refused rather than guessed at.
    """
    text = header_text(value)
    name, address = "", text
    if text.endswith(">") and "<" in text:
        name, _, address = text[:-1].rpartition("<")
        name = unquote(name.strip())
    address = address.strip()
    if not _ADDR_SPEC.fullmatch(address):
        raise ValueError(f"not one email address: {text!r}")
    return name.strip(), address


def addressed(to: str) -> tuple[str, str]:
    """`to` on one line (`header_text`), and the address it names: consent, suppressions and unsubscribing go
    by it (`to` itself when it is not one mailbox; refused when the message is built)."""
    if to.isprintable() and "<" not in to:  # the common case, a bare address
        to = to.strip()
        return to, to
    text = header_text(to)
    try:
        return text, mailbox(text)[1]
    except ValueError:
        return text, text


def build_message(email: OutgoingEmail) -> Message:
    """The MIME message: text and HTML alternatives, Message-ID, unsubscribe headers (RFC 8058).

    Every header value is put on one line (`header_text`), and From and To must each be one mailbox
    (`mailbox`; PermanentEmailError otherwise; a Reply-To that is not is left out), written out again
    with its display name quoted, so that no rendered value can add a header, end the header section
    or add a recipient.
    Built with the stdlib's `email.mime` classes, three times faster than `EmailMessage`'s header
    registry; headers with non-ASCII text are RFC 2047 encoded (display names apart from their
    address). An address that is not ASCII itself (SMTPUTF8) takes the `EmailMessage` path.
    """

    mailboxes: dict[str, tuple[str, str]] = {}
    for header, value in (
        ("From", email.from_addr or get_settings().EMAIL_FROM),
        ("To", email.to),
        ("Reply-To", email.reply_to),
    ):
        if value or header != "Reply-To":
            try:
                mailboxes[header] = mailbox(value or "")
            except ValueError as exc:
                if header == "Reply-To":  # optional: replies then go to From (`{{ shop.email }}` of a shop without one)
                    continue
                raise PermanentEmailError(f"{header}: {exc}") from None
    extra = _extra_headers(email.headers)
    html = prepare(email.html, email.preheader, inline=email.inline_css)
    sender = mailboxes["From"][1]
    if not all(address.isascii() for _, address in mailboxes.values()):
        return _build_international(email, mailboxes, extra, html)
    message = MIMEMultipart("alternative", policy=_POLICY)
    for header, (name, address) in mailboxes.items():
        message[header] = _address(name, address)
    message["Subject"] = _text(header_text(email.subject))
    for name, value in _common_headers(email, sender) + extra:
        message[name] = _text(value)
    message.attach(_text_part(email.text, "plain"))
    message.attach(_text_part(html, "html"))
    return message


def _extra_headers(headers: dict[str, str]) -> list[tuple[str, str]]:
    """The caller's own headers, one line each; a name that is not a header name, or is reserved, is refused."""
    found = []
    for name, value in headers.items():
        if not _FIELD_NAME.fullmatch(name) or name.lower() in RESERVED_HEADERS:
            raise ValueError(f"{name!r} can't be set as an extra header")
        found.append((name, header_text(value)))
    return found


def _text_part(body: str, subtype: str) -> MIMENonMultipart:
    """A UTF-8 text part, quoted-printable (readable, unlike base64) by binascii's C encoder."""
    part = MIMENonMultipart("text", subtype, policy=_POLICY, charset="utf-8")
    part["Content-Transfer-Encoding"] = "quoted-printable"
    part.set_payload(binascii.b2a_qp(body.encode("utf-8"), istext=True).decode("ascii"))
    return part


def _address(name: str, address: str) -> str:
    if not name:
        return address
    if name.isascii():
        return formataddr((name, address))
    return _one_line(formataddr((name, address), charset="utf-8"))


def _text(value: str) -> str:
    return value if value.isascii() else _one_line(Header(value, "utf-8").encode(maxlinelen=76))


def _one_line(encoded: str) -> str:
    """Encoded words (each within RFC 2047's 75 characters) side by side on one header line."""
    return " ".join(encoded.split())


def message_id(idempotency_key: str, domain: str) -> str:
    """The Message-ID of the email with this idempotency key: the same for every attempt to send it.

    A send interrupted before the server's answer is sent again under the same key, so with the same
    Message-ID; mailbox providers show copies that share one as one email. It is keyed with
    SECRET_KEY, so two installations never make the same one and the key itself is not shown.
    """
    secret = get_settings().secret_key
    key = _message_id_keys.get(secret)
    if key is None:
        key = _message_id_keys[secret] = hmac.new(secret.encode(), b"encore message-id", hashlib.sha256).digest()
    digest = hmac.new(key, idempotency_key.encode(), hashlib.sha256).hexdigest()[:40]
    return f"<{digest}@{domain}>"


_message_id_keys: dict[str, bytes] = {}


def _common_headers(email: OutgoingEmail, sender: str) -> list[tuple[str, str]]:
    """Date, Message-ID, the idempotency key and the unsubscribe headers; `sender` is the From address."""
    domain = sender.rpartition("@")[2] or "localhost"
    key = header_text(email.idempotency_key)
    headers = [
        ("Date", formatdate(localtime=False, usegmt=True)),
        ("Message-ID", message_id(key, domain)),
        (IDEMPOTENCY_HEADER, key),
    ]
    if email.unsubscribe_url:
        headers.append(("List-Unsubscribe", f"<{header_text(email.unsubscribe_url)}>"))
        headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    return headers


def _build_international(
    email: OutgoingEmail, mailboxes: dict[str, tuple[str, str]], extra: list[tuple[str, str]], html: str
) -> EmailMessage:
    message = EmailMessage(policy=SMTPUTF8)
    for header, (name, address) in mailboxes.items():
        local, _, domain = address.rpartition("@")
        message[header] = Address(display_name=name, username=local, domain=domain)
    message["Subject"] = header_text(email.subject)
    for name, value in _common_headers(email, mailboxes["From"][1]) + extra:
        message[name] = value
    message.set_content(email.text)
    message.add_alternative(html, subtype="html")
    return message


class Transport(abc.ABC):
    """Delivers MIME messages somewhere."""

    def __init__(self, url: str) -> None:
        self.url = url

    @abc.abstractmethod
    def deliver(self, message: Message) -> None:
        """Send one message; raise TransientEmailError or PermanentEmailError on failure."""


def available_transports() -> dict[str, str]:
    """Every EMAIL_URL scheme with its `module:Class`: built-in, then the `encore.email_transports` entry points."""

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
