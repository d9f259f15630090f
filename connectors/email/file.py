"""`file:///dir`: one .eml file per message (the default outbox, `file://./outbox`)."""

from __future__ import annotations

import os
import re
from email.message import Message
from pathlib import Path
from urllib.parse import urlsplit

from connectors.email.base import IDEMPOTENCY_HEADER, Transport


def outbox_path(url: str) -> Path:
    """The folder a `file://` URL names (`file://./outbox` is relative to the working directory)."""
    parts = urlsplit(url)
    return Path((parts.netloc + parts.path) if parts.netloc else parts.path)


class FileTransport(Transport):
    """Writes each message as `<idempotency key>.eml`, atomically."""

    def deliver(self, message: Message) -> None:
        """Write one message; a message with the same idempotency key replaces the earlier file."""
        folder = outbox_path(self.url)
        key = str(message.get(IDEMPOTENCY_HEADER) or message["Message-ID"])
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)[:180] + ".eml"
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        data = message.as_bytes()
        try:
            tmp.write_bytes(data)
        except FileNotFoundError:  # the first message, or the folder was removed meanwhile
            folder.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
        os.replace(tmp, folder / name)
