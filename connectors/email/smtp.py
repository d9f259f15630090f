"""SMTP transport: `smtp://` (plain, or STARTTLS when asked), `smtp+starttls://`, `smtps://` (implicit TLS).

    smtp://user:pass@mail.example.com:25
    smtp+starttls://user:pass@mail.example.com:587
    smtps://user:pass@mail.example.com:465?timeout=20

User and password are percent-decoded, so `%40` in a user name is an `@`. Query options:
`timeout` (seconds, default 30), `cafile` (a CA bundle to trust, e.g. a private relay's),
`verify=0` (don't verify the server's certificate; for a relay on localhost only), `starttls=1` on
plain `smtp://` to upgrade the connection, `keepalive` (seconds an idle connection is kept for the
next message, default 60; 0 closes it after each message). A failure is sorted into what a retry may fix (a 4xx reply,
a refused or dropped connection, a timeout) and what it won't (a 5xx reply, failed authentication,
a certificate that doesn't verify), so the flow engine retries the first kind with backoff and
records the second on the run.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import threading
import time
from email.message import Message
from urllib.parse import parse_qs, unquote, urlsplit

from encore_retention.connectors.email.base import PermanentEmailError, TransientEmailError, Transport

DEFAULT_PORTS = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}
KEEPALIVE_CHECK = 5.0  # idle seconds after which a kept connection is checked with NOOP before use


class SMTPTransientError(TransientEmailError):
    """A 4xx reply or a connection problem; `code` is the SMTP reply code when there was one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class SMTPPermanentError(PermanentEmailError):
    """A 5xx reply, failed authentication or a bad certificate; `code` is the SMTP reply code if any.

    `bounce`: the reply refused the recipient (RCPT) or the message (DATA), not our sign-in or sender.
    """

    def __init__(self, message: str, code: int | None = None, *, bounce: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.bounce = bounce


def _reply(code: int, text: bytes | str) -> str:
    body = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    return f"{code} {body}".strip()


def classify(exc: BaseException) -> TransientEmailError | PermanentEmailError:
    """The Encore error for an smtplib/socket failure: transient (retry) or permanent (record)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        replies = {rcpt: _reply(code, text) for rcpt, (code, text) in exc.recipients.items()}
        detail = "; ".join(f"{rcpt}: {reply}" for rcpt, reply in replies.items())
        codes = [code for code, _text in exc.recipients.values()]
        if codes and all(400 <= code < 500 for code in codes):
            return SMTPTransientError(f"recipient deferred: {detail}", codes[0])
        return SMTPPermanentError(f"recipient refused: {detail}", codes[0] if codes else None, bounce=True)
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return SMTPPermanentError(f"authentication failed: {_reply(exc.smtp_code, exc.smtp_error)}", exc.smtp_code)
    if isinstance(exc, smtplib.SMTPResponseException):
        reply = _reply(exc.smtp_code, exc.smtp_error)
        if 400 <= exc.smtp_code < 500:
            return SMTPTransientError(f"server deferred the message: {reply}", exc.smtp_code)
        bounced = isinstance(exc, smtplib.SMTPDataError)  # at DATA: the recipient's side refused this message
        return SMTPPermanentError(f"server refused the message: {reply}", exc.smtp_code, bounce=bounced)
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return SMTPPermanentError(f"server does not support what EMAIL_URL asks: {exc}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return SMTPPermanentError(f"the server's certificate does not verify: {exc.verify_message or exc}")
    if isinstance(exc, (smtplib.SMTPServerDisconnected, smtplib.SMTPException, socket.timeout, OSError)):
        return SMTPTransientError(f"could not reach the mail server: {type(exc).__name__}: {exc}")
    return SMTPPermanentError(f"{type(exc).__name__}: {exc}")


class SMTPTransport(Transport):
    """Delivers each message over one SMTP connection (short-lived: workers are many and idle often)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parts = urlsplit(url)
        self.scheme = parts.scheme.lower()
        if self.scheme not in DEFAULT_PORTS:
            raise ValueError(f"not an SMTP URL: {self.scheme}://")
        if not parts.hostname:
            raise ValueError("EMAIL_URL names no mail server host")
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.host = parts.hostname
        self.port = parts.port or DEFAULT_PORTS[self.scheme]
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.timeout = float(options.get("timeout", 30))
        self.cafile = options.get("cafile")
        self.verify = options.get("verify", "1").lower() not in ("0", "false", "no")
        self.starttls = self.scheme == "smtp+starttls" or options.get("starttls", "0").lower() in ("1", "true", "yes")
        self.keepalive = float(options.get("keepalive", 60))
        self._client: smtplib.SMTP | None = None
        self._last_used = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never show the password
        return f"<SMTPTransport {self.scheme}://{self.host}:{self.port}>"

    def tls_context(self) -> ssl.SSLContext:
        """The TLS context for STARTTLS and smtps: system CAs (or `cafile`), verified unless `verify=0`."""
        context = ssl.create_default_context(cafile=self.cafile)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def connect(self) -> smtplib.SMTP:
        """An open, authenticated SMTP connection as EMAIL_URL describes it."""
        if self.scheme == "smtps":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout, context=self.tls_context()
            )
        else:
            client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            client.ehlo()
            if self.starttls:
                client.starttls(context=self.tls_context())
                client.ehlo()
            if self.username:
                client.login(self.username, self.password or "")
        except BaseException:
            client.close()
            raise
        return client

    def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()

    def _connection(self) -> smtplib.SMTP:
        """The kept connection if it still answers (NOOP after `KEEPALIVE_CHECK` idle seconds), else a new one."""
        client = self._client
        if client is not None:
            idle = time.monotonic() - self._last_used
            if idle > self.keepalive:
                self._close()
            elif idle > KEEPALIVE_CHECK:
                try:
                    if client.noop()[0] != 250:
                        raise smtplib.SMTPServerDisconnected("NOOP refused")
                except (smtplib.SMTPException, OSError):
                    self._client = None
                    client.close()
        if self._client is None:
            self._client = self.connect()
        return self._client

    def close(self) -> None:
        """Close the kept connection (it reopens on the next message)."""
        with self._lock:
            self._close()

    def deliver(self, message: Message) -> None:
        """Send one message; raises SMTPTransientError or SMTPPermanentError.

        The connection is kept for the next message (`keepalive` idle seconds, 0 to close it after
        each); after any error it is closed, and the message is never resent here: whether the
        server took it is then unknown, and the caller decides what a retry means.
        """
        with self._lock:
            try:
                client = self._connection()
                refused = client.send_message(message)
            except (smtplib.SMTPException, OSError) as exc:
                self._close()
                raise classify(exc) from exc
            self._last_used = time.monotonic()
            if not self.keepalive:
                self._close()
        if refused:  # some recipients accepted it: a retry would send them a second copy
            detail = "; ".join(f"{rcpt}: {_reply(code, text)}" for rcpt, (code, text) in refused.items())
            raise SMTPPermanentError(f"some recipients refused: {detail}", bounce=True)
