"""`file:///dir`: one .eml file per message (the default outbox, `file://./outbox`)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from pathlib import Path
from urllib.parse import urlsplit

from encore_retention.connectors.email.base import IDEMPOTENCY_HEADER, Transport

HEADER_LIMIT = 64 * 1024  # a message's header block is read at most this far when looking for an address


def outbox_path(url: str) -> Path:
    """The folder a `file://` URL names (`file://./outbox` is relative to the working directory)."""
    parts = urlsplit(url)
    return Path((parts.netloc + parts.path) if parts.netloc else parts.path)


def file_name(key: str) -> str:
    """The outbox file of the message with this idempotency key."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)[:180] + ".eml"


class FileTransport(Transport):
    """Writes each message as `<idempotency key>.eml`, atomically."""

    def deliver(self, message: Message) -> None:
        """Write one message; a message with the same idempotency key replaces the earlier file."""
        folder = outbox_path(self.url)
        name = file_name(str(message.get(IDEMPOTENCY_HEADER) or message["Message-ID"]))
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        data = message.as_bytes()
        try:
            tmp.write_bytes(data)
        except FileNotFoundError:  # the first message, or the folder was removed meanwhile
            folder.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
        os.replace(tmp, folder / name)

    def forget(self, addresses: Iterable[str] = (), keys: Iterable[str] = ()) -> int:
        """Delete the copies of the messages with these idempotency keys, and of every message whose headers
        name one of these addresses (in any case); a redaction's last step here. Returns how many went.

        The keys find what was sent about a person to someone else (a notification to the shop); the
        addresses find what was sent to them whatever its key. Half-written files count as copies.
        """
        folder = outbox_path(self.url)
        names = {file_name(key) for key in keys}
        wanted = {address.strip().lower() for address in addresses if address.strip()}
        if not folder.is_dir() or not (names or wanted):
            return 0
        removed = 0
        for path in folder.iterdir():
            name = path.name
            written = name[1:].rsplit(".", 2)[0] if name.startswith(".") and name.endswith(".tmp") else name
            if not written.endswith(".eml") or not path.is_file():
                continue
            if written in names or (wanted and _names_any(path, wanted)):
                path.unlink(missing_ok=True)
                removed += 1
        return removed


ADDRESS_HEADERS = ("To", "Cc", "Bcc", "Reply-To", "From", "Sender", "Delivered-To")


def _names_any(path: Path, addresses: set[str]) -> bool:
    """Whether one of the message's address headers (To, Cc, Reply-To, …) holds one of the addresses."""
    try:
        with path.open("rb") as handle:
            head = handle.read(HEADER_LIMIT)
    except FileNotFoundError:  # replaced or removed meanwhile
        return False
    headers = BytesHeaderParser(policy=compat32).parsebytes(head)
    values = [str(value) for name in ADDRESS_HEADERS for value in headers.get_all(name, [])]
    return any(address.strip().lower() in addresses for _, address in getaddresses(values))
