"""connectors.http: Retry-After parsing and the retry policy's decisions."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import requests

from encore_retention.connectors.base import PlatformError
from encore_retention.connectors.http import RetryPolicy, platform_message, retry_after


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


# ---- the flows' `http` step: only public addresses, unless listed ----------------------------------------

# URL forms from SecLists' Fuzzing/SSRF_hacktricks.txt (loopback written every way the resolver reads,
# userinfo and fragment tricks, decimal/octal/hex, IPv4-mapped IPv6, Unicode digits), then cloud
# metadata, the private, unique-local, multicast, reserved and tunnelled ranges, and this machine's Redis.
REFUSED = [
    ("http://127.0.0.1:80", "loopback"),
    ("http://127.1:80", "loopback"),
    ("http://0", "unspecified"),
    ("http://0.0.0.0:80", "unspecified"),
    ("http://localhost:80", "loopback"),
    ("http://[::]:80/", "unspecified"),
    ("http://[0000::1]:80/", "loopback"),
    ("http://[0:0:0:0:0:ffff:127.0.0.1]/thefile", "loopback (as 127.0.0.1)"),
    ("http://①②⑦.⓪.⓪.⓪", "loopback"),
    ("http://127.127.127.127", "loopback"),
    ("http://127.0.1.3", "loopback"),
    ("http://2130706433/", "loopback"),
    ("http://017700000001", "loopback"),
    ("http://3232235521/", "private"),
    ("http://0x7f000001/", "loopback"),
    ("http://0xc0a80014/", "private"),
    ("http://example.com@127.0.0.1", "loopback"),
    ("http://127.0.0.1#example.com", "loopback"),
    ("https://example.com@127.0.0.1", "loopback"),
    ("http://127.1.1.1:80\\@127.2.2.2:80/", "loopback"),
    ("http://localhost#example.com", "loopback"),
    ("http://LOCALHOST/", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[::ffff:169.254.169.254]/", "link-local (as 169.254.169.254)"),
    ("http://[::ffff:a9fe:a9fe]/", "link-local (as 169.254.169.254)"),
    ("http://10.0.0.1/", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://[fd00::1]/", "unique-local"),
    ("http://[fc00::1]/", "unique-local"),
    ("http://[fec0::1]/", "site-local"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://240.0.0.1/", "private"),
    ("http://255.255.255.255/", "private"),
    ("http://100.64.0.1/", "not globally reachable"),
    ("http://[::127.0.0.1]/", "reserved"),
    ("http://[64:ff9b::7f00:1]/", "loopback (as 127.0.0.1)"),
    ("http://[2002:7f00:1::]/", "loopback (as 127.0.0.1)"),
    ("http://127.0.0.1:6379/", "loopback"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED)
def test_an_address_that_is_not_public_is_refused_however_it_is_written(env, url: str, reason: str):
    from encore_retention.connectors.http import RefusedURL, post_json

    with pytest.raises(RefusedURL) as refused:
        post_json(url, b"{}", {}, timeout=2)
    assert (
        f" is {reason}; the http step reaches only public addresses unless HTTP_STEP_ALLOW_HOSTS lists the host"
        in str(refused.value)
    )


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "http:///nohost",
        "http://example.com:99999/",
        "http://exa mple.com/",
        "http://example.com/a b",
    ],
)
def test_a_url_that_is_not_one_is_refused(env, url: str):
    from encore_retention.connectors.http import RefusedURL, post_json

    with pytest.raises(RefusedURL):
        post_json(url, b"{}", {}, timeout=2)


@pytest.mark.parametrize("host", ["8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1"])
def test_a_public_address_passes(host: str):
    from encore_retention.connectors.http import AllowList, checked_addresses

    assert {found[4][0] for found in checked_addresses(host, 443, AllowList())} == {host}


def test_the_allow_list_takes_names_addresses_and_networks():
    from encore_retention.connectors.http import AllowList, RefusedURL, checked_addresses

    allowed = AllowList.parse(" localhost , 10.0.0.0/8,[::1], 169.254.169.254,")
    for host in ("localhost", "LocalHost", "10.1.2.3", "::1", "169.254.169.254"):
        assert checked_addresses(host, 80, allowed)
    assert allowed.allows("LOCALHOST.", ipaddress.ip_address("127.0.0.1"))
    for host in ("127.0.0.1", "192.168.0.1", "fe80::1"):  # localhost is listed by its name only
        with pytest.raises(RefusedURL):
            checked_addresses(host, 80, allowed)


def test_every_address_a_name_resolves_to_must_pass(monkeypatch: pytest.MonkeyPatch):
    import socket

    from encore_retention.connectors.http import AllowList, RefusedURL, checked_addresses

    answers = [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", 80)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", 80)),
    ]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: answers)
    with pytest.raises(RefusedURL, match=r"hooks.example \(10.0.0.7\) is private;"):
        checked_addresses("hooks.example", 80, AllowList())


def test_the_connection_goes_to_the_address_checked_not_to_a_second_answer(monkeypatch: pytest.MonkeyPatch):
    """A name answering a listed address when checked, then another one (DNS rebinding), still reaches the first."""
    import socket

    from encore_retention.connectors.http import AllowList, post_json
    from tests.flows.helpers import hook_server

    real = socket.getaddrinfo
    asked: list[str] = []

    def rebinding(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host != "hooks.example":
            return real(host, port, *args, **kwargs)
        asked.append(host)
        address = "127.0.0.1" if len(asked) == 1 else "127.0.0.2"  # the second answer: nothing listens there
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with hook_server() as (server, received):
        status, location = post_json(
            f"http://hooks.example:{server.server_port}/hook",
            b'{"a": 1}',
            {"Content-Type": "application/json"},
            5,
            AllowList.parse("127.0.0.1/32"),
        )
    assert (status, location) == (204, None) and asked == ["hooks.example"]
    assert received == [{"path": "/hook", "json": {"a": 1}, "headers": received[0]["headers"]}]
    assert received[0]["headers"]["Host"] == f"hooks.example:{server.server_port}"
