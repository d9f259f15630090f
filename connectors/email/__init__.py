"""Email: the message the flow engine hands over, and the transports chosen by EMAIL_URL.

The engine builds an `OutgoingEmail` (already rendered HTML and text) and calls `send()`. This
package turns it into a MIME message (headers, unsubscribe, Message-ID, idempotency key; every
header on one line, every address one mailbox) and hands it to the transport EMAIL_URL names.
`TransientEmailError` is worth retrying; `PermanentEmailError` is recorded on the run and never retried.
"""

from __future__ import annotations

from encore_retention.connectors.email.base import (
    OutgoingEmail,
    PermanentEmailError,
    TransientEmailError,
    Transport,
    build_message,
    get_transport,
    header_text,
    mailbox,
    send,
)

__all__ = [
    "OutgoingEmail",
    "PermanentEmailError",
    "TransientEmailError",
    "Transport",
    "build_message",
    "get_transport",
    "header_text",
    "mailbox",
    "send",
]
