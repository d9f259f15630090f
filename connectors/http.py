"""Calling a platform's HTTP API politely: 429 waits as long as asked, 5xx and network errors back off.

Waits are short and in-process (the injectable `sleep`); when the platform asks for longer than
`max_wait`, or the attempts run out, a transient `PlatformError` carries `retry_after` up to the job,
which RQ retries later instead of holding a worker. A 4xx is the caller's to interpret (a 404 may
mean "gone"); `raise_for_status` turns it into a `PlatformError` with the platform's own message.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import requests

from connectors.base import PlatformError

Sleep = Callable[[float], None]


def retry_after(response: requests.Response) -> float | None:
    """Seconds to wait from a `Retry-After` header (seconds or an HTTP date), if any."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def platform_message(response: requests.Response) -> str:
    """The platform's own error text from a response body (JSON `message`/`errors`, else the text)."""
    try:
        body = response.json()
    except ValueError:
        return (response.text or response.reason or "").strip()[:500]
    if isinstance(body, dict):
        for key in ("message", "errors", "error_description", "error"):
            if body.get(key):
                value = body[key]
                return value if isinstance(value, str) else str(value)[:500]
    return str(body)[:500]


def raise_for_status(response: requests.Response, what: str) -> None:
    """A PlatformError with the platform's message for a 4xx/5xx answer."""
    if response.status_code < 400:
        return
    transient = response.status_code == 429 or response.status_code >= 500
    raise PlatformError(f"{what}: HTTP {response.status_code}: {platform_message(response)}",
                        status=response.status_code, transient=transient, retry_after=retry_after(response))


class RetryPolicy:
    """How many times, and how long, to retry a call that failed for a reason that may pass."""

    def __init__(self, *, attempts: int = 4, backoff: float = 1.0, max_wait: float = 30.0,
                 sleep: Sleep | None = None) -> None:
        self.attempts = attempts
        self.backoff = backoff
        self.max_wait = max_wait
        self.sleep = sleep or time.sleep

    def delay(self, attempt: int) -> float:
        """The backoff before retry number `attempt + 1` (1, 2, 4, … times `backoff`)."""
        return self.backoff * (2 ** attempt)

    def call(self, request: Callable[[], requests.Response], what: str) -> requests.Response:
        """`request()` until it answers below 500 and not 429; raises a transient PlatformError when out of tries."""
        for attempt in range(self.attempts):
            try:
                response = request()
            except requests.RequestException as exc:
                error = PlatformError(f"{what}: {type(exc).__name__}: {exc}", transient=True)
                wait = self.delay(attempt)
            else:
                if response.status_code == 429:
                    asked = retry_after(response)
                    wait = asked if asked is not None else self.delay(attempt)
                    error = PlatformError(f"{what}: rate limited (HTTP 429)", status=429, transient=True,
                                          retry_after=wait)
                elif response.status_code >= 500:
                    wait = self.delay(attempt)
                    error = PlatformError(f"{what}: HTTP {response.status_code}: {platform_message(response)}",
                                          status=response.status_code, transient=True, retry_after=wait)
                else:
                    return response
            if attempt + 1 >= self.attempts or wait > self.max_wait:
                error.retry_after = wait
                raise error
            self.sleep(wait)
        raise AssertionError("unreachable")

    def wait(self, seconds: float, error: PlatformError, attempt: int) -> None:
        """Sleep `seconds` before another attempt, or raise `error` when that is too long or too many."""
        if attempt + 1 >= self.attempts or seconds > self.max_wait:
            error.retry_after = seconds
            raise error
        self.sleep(seconds)


def json_of(response: requests.Response, what: str) -> Any:
    """The JSON body, or a PlatformError when the platform answered something else."""
    try:
        return response.json()
    except ValueError as exc:
        raise PlatformError(f"{what}: the answer is not JSON: {response.text[:200]!r}", status=response.status_code,
                            transient=True) from exc
