"""The soak's mail server: an aiosmtpd sink that defers some first attempts and records what it accepts.

A message is known by its `X-Encore-Idempotency-Key` header (the same on every attempt of one email,
while the Message-ID is made anew for each attempt), else by its recipients and subject. The first
time a message is seen, a fixed share of them (chosen by a hash of the key and a seed, so a run can be
repeated) is answered `451 4.3.0 try again later`; every later attempt of the same message is accepted.
Each accepted message is recorded with its time, recipients, Message-ID, key and subject.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from typing import Any

from aiosmtpd.controller import Controller

KEY_HEADER = "X-Encore-Idempotency-Key"
DEFERRED_REPLY = "451 4.3.0 try again later"


@dataclass
class Accepted:
    """One message the server took."""

    at: float  # time.time() when the server answered 250
    recipients: tuple[str, ...]
    message_id: str
    key: str
    subject: str


class Sink:
    """aiosmtpd handler: defers a share of first attempts, records every accepted message."""

    def __init__(self, defer_rate: float, seed: str = "") -> None:
        self.defer_rate = defer_rate
        self.seed = seed
        self.lock = threading.Lock()
        self.accepted: list[Accepted] = []
        self.deferred: dict[str, tuple[float, tuple[str, ...]]] = {}  # message key -> (time, recipients)
        self.seen: set[str] = set()
        self.attempts = 0

    def defers(self, key: str) -> bool:
        """Whether the first attempt of the message with this key is deferred (a stable choice)."""
        digest = hashlib.sha256(f"{self.seed}\0{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.defer_rate

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        """Answer one message: 451 for a deferred first attempt, else 250 and a record."""
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        headers = BytesHeaderParser().parsebytes(content)
        recipients = tuple(sorted(str(r).lower() for r in envelope.rcpt_tos))
        subject = str(headers.get("Subject", ""))
        key = str(headers.get(KEY_HEADER) or "") or f"{','.join(recipients)}|{subject}"
        with self.lock:
            self.attempts += 1
            first = key not in self.seen
            self.seen.add(key)
            if first and self.defers(key):
                self.deferred[key] = (time.time(), recipients)
                return DEFERRED_REPLY
            self.accepted.append(
                Accepted(
                    at=time.time(),
                    recipients=recipients,
                    message_id=str(headers.get("Message-ID", "")).strip(),
                    key=key,
                    subject=subject,
                )
            )
        return "250 OK"

    def snapshot(self) -> tuple[list[Accepted], dict[str, tuple[float, tuple[str, ...]]], int]:
        """A consistent copy of what was accepted and deferred so far, and the number of DATA attempts."""
        with self.lock:
            return list(self.accepted), dict(self.deferred), self.attempts


class MailServer:
    """The sink served on 127.0.0.1:`port` from a thread of this process, until `stop()`."""

    def __init__(self, port: int, defer_rate: float, seed: str = "") -> None:
        self.sink = Sink(defer_rate, seed)
        self.port = port
        self.controller = Controller(self.sink, hostname="127.0.0.1", port=port, ready_timeout=10)

    def start(self) -> None:
        """Serve from a background thread."""
        self.controller.start()

    def stop(self) -> None:
        """Stop serving (safe to call twice)."""
        try:
            self.controller.stop()
        except (AssertionError, RuntimeError):  # never started, or stopped already
            pass
