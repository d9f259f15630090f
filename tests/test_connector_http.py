"""connectors.http: Retry-After parsing and the retry policy's decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import requests

from connectors.base import PlatformError
from connectors.http import RetryPolicy, platform_message, retry_after


def _response(status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers or {})
    response._content = body
    return response


def test_retry_after_in_seconds_as_a_date_or_missing():
    assert retry_after(_response(429, {"Retry-After": "2.5"})) == 2.5
    later = datetime.now(UTC) + timedelta(seconds=30)
    assert 25 <= retry_after(_response(429, {"Retry-After": format_datetime(later, usegmt=True)})) <= 30
    assert retry_after(_response(429, {"Retry-After": "soon"})) is None
    assert retry_after(_response(429)) is None


def test_platform_message_prefers_the_json_message():
    assert platform_message(_response(400, body=b'{"code": "x", "message": "Bad coupon"}')) == "Bad coupon"
    assert platform_message(_response(400, body=b'{"errors": {"code": ["is taken"]}}')) == "{'code': ['is taken']}"
    assert platform_message(_response(502, body=b"<html>Bad Gateway</html>")) == "<html>Bad Gateway</html>"


def test_policy_gives_up_after_its_attempts_with_a_transient_error():
    slept: list[float] = []
    answers = iter([_response(503), _response(503), _response(503)])
    policy = RetryPolicy(attempts=3, backoff=0.5, sleep=slept.append)
    with pytest.raises(PlatformError) as caught:
        policy.call(lambda: next(answers), "GET x")
    assert slept == [0.5, 1.0] and caught.value.transient and caught.value.status == 503


def test_policy_returns_4xx_to_the_caller_without_retrying():
    slept: list[float] = []
    assert RetryPolicy(sleep=slept.append).call(lambda: _response(404), "GET x").status_code == 404
    assert slept == []
