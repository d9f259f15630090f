"""Who gets into /admin: no pass for loopback, one-time sign-in links, the throttle, server-side sign-out,
RQ's dashboard behind a CSRF token, and bad ids answered 404/400 on SQLite and PostgreSQL."""

from __future__ import annotations

import importlib.util
import logging
import re
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from redis import Redis

from encore_retention.core import access
from encore_retention.core import queue as encore_queue
from encore_retention.core.queue import PROCESS_EVENT
from encore_retention.core.settings import reset_settings
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import Customer
from tests.conftest import SHOP, drain, free_port, sign_in, use_database

LOCAL = {"REMOTE_ADDR": "127.0.0.1"}
PASSWORD = "correct horse battery"


def _customer(email: str = "ada.personal@example.com") -> int:
    from encore_retention.core.store.ledger import get_or_create_shop

    with session_scope() as session:
        shop = get_or_create_shop(session, "shopify", SHOP)
        session.flush()
        row = Customer(shop_id=shop.id, platform_id="1", email=email, first_name="Ada")
        session.add(row)
        session.flush()
        return row.id


def _password_client(env, redis):  # type: ignore[no-untyped-def]
    env.setenv("ADMIN_PASSWORD", PASSWORD)
    reset_settings()
    from encore_retention.web import create_app

    return create_app().test_client()


def _form_token(client, path: str = "/admin/failures") -> str:  # type: ignore[no-untyped-def]
    page = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]


# ---- no pass for coming from this machine ----------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},  # what a same-host proxy adding no header (nginx's plain proxy_pass) looks like
        {"X-Real-IP": "8.8.8.8"},
        {"Via": "1.1 vegur"},
        {"X-Forwarded-For": "198.51.100.7"},
    ],
)
def test_loopback_without_a_password_is_not_a_sign_in(client, redis, headers):
    ada = _customer()
    for path in ("/admin/", f"/admin/customers/{ada}", "/admin/customers?q=ada"):
        answer = client.get(path, environ_base=LOCAL, headers=headers)
        assert answer.status_code == 302 and "/admin/login" in answer.headers["Location"], path
        assert b"ada.personal@example.com" not in answer.data
    assert client.post("/admin/store", data={"store": ""}, environ_base=LOCAL, headers=headers).status_code == 401
    login = client.get("/admin/login", environ_base=LOCAL)
    assert "encore admin link" in login.get_data(as_text=True)  # where a newcomer finds the way in


def test_only_encores_own_host_names_are_answered(client, redis, env, sandbox_key):
    env.setenv("APP_URL", "https://encore.example.com")
    reset_settings()
    sign_in(client)
    assert client.get("/admin/").status_code == 200  # the test client's Host: localhost
    for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000", "Encore.Example.com", "encore.example.com:443"):
        assert client.get("/admin/login", headers={"Host": host}).status_code == 200, host
    # a DNS-rebinding page's requests name its own host: turned away before anything else
    for host in ("evil.example", "evil.example:8000", "localhost.evil.example", "user@localhost", "[::2]"):
        assert client.get("/admin/", headers={"Host": host}).status_code == 400, host
        assert client.get("/admin/login", headers={"Host": host}).status_code == 400, host
    assert client.get(access.sign_in_url(""), headers={"Host": "evil.example"}).status_code == 400
    assert (
        client.get(
            "/sandbox/woocommerce/wp-json/wc/v3/coupons",
            environ_base=LOCAL,
            query_string=sandbox_key,
            headers={"Host": "evil.example"},
        ).status_code
        == 403
    )


def test_the_sandbox_refuses_any_forwarded_request(client, redis, sandbox_key):
    base = "/sandbox/woocommerce/wp-json/wc/v3"
    assert client.get(f"{base}/coupons", environ_base=LOCAL, query_string=sandbox_key).status_code == 200
    for header in ("X-Real-IP", "Via", "X-Forwarded-Proto", "Forwarded", "X-Request-Start"):
        assert (
            client.get(
                f"{base}/coupons", environ_base=LOCAL, query_string=sandbox_key, headers={header: "x"}
            ).status_code
            == 403
        ), header


# ---- one-time sign-in links ------------------------------------------------------------------------


def test_a_sign_in_link_signs_in_once(client, redis, app):
    ada = _customer()
    link = access.sign_in_url("http://localhost:8000")
    assert link.startswith("http://localhost:8000/admin/sign-in?token=")
    path = link.removeprefix("http://localhost:8000")
    answer = client.get(path, environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert answer.status_code == 302 and answer.headers["Location"].endswith("/admin/")
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    page = client.get(f"/admin/customers/{ada}")
    assert page.status_code == 200 and "ada.personal@example.com" in page.get_data(as_text=True)
    # spent: nobody else signs in with it, not even in another process of the app
    from encore_retention.web import create_app

    for other in (app.test_client(), create_app().test_client()):
        again = other.get(path)
        assert again.status_code == 401 and "already used" in again.get_data(as_text=True)
        assert other.get("/admin/").status_code == 302


def test_a_sign_in_link_expires_and_cant_be_forged(client, redis, monkeypatch):
    from itsdangerous import TimestampSigner

    real = TimestampSigner.get_timestamp
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: real(self) - access.LINK_MAX_AGE - 5)
    old = access.make_link_token()
    monkeypatch.setattr(TimestampSigner, "get_timestamp", real)
    expired = client.get(f"/admin/sign-in?token={old}")
    assert expired.status_code == 401 and "expired" in expired.get_data(as_text=True)
    forged = access.make_link_token(secret_key="not-this-servers-key")
    for token in (forged, "", "x" * 300, quote("\u00b2")):
        answer = client.get(f"/admin/sign-in?token={token}")
        assert answer.status_code == 401 and "not valid" in answer.get_data(as_text=True)
    assert client.get("/admin/").status_code == 302


def test_encore_admin_link_prints_a_link_the_server_accepts(client, redis, env):
    from encore_retention.cli import main

    env.setenv("APP_URL", "https://encore.example.com")
    reset_settings()
    printed = CliRunner().invoke(main, ["admin", "link"])
    assert printed.exit_code == 0, printed.output
    link = printed.output.strip()
    assert link.startswith("https://encore.example.com/admin/sign-in?token=")
    answer = client.get(link.removeprefix("https://encore.example.com"), headers={"Host": "encore.example.com"})
    assert answer.status_code == 302
    assert client.get("/admin/", headers={"Host": "encore.example.com"}).status_code == 200


# ---- signing out ends the session on the server ----------------------------------------------------


@pytest.mark.parametrize("how", ["password", "link"])
def test_a_copy_of_the_cookie_is_worth_nothing_after_signing_out(env, redis, how):
    from encore_retention.web import create_app

    client = _password_client(env, redis)
    if how == "password":
        assert client.post("/admin/login", data={"password": PASSWORD}).status_code == 302
    else:
        sign_in(client)
    assert client.get("/admin/").status_code == 200
    stolen = client.get_cookie("session")
    assert stolen is not None
    thief = create_app().test_client()
    thief.set_cookie("session", stolen.value)
    assert thief.get("/admin/").status_code == 200  # the same cookie, before signing out
    assert client.post("/admin/logout", data={"csrf": _form_token(client)}).status_code == 302
    assert client.get("/admin/").status_code == 302
    assert thief.get("/admin/").status_code == 302  # ended on the server, for every copy
    assert thief.get("/admin/customers").status_code == 302


def test_a_new_sign_in_gets_a_new_session_and_form_token(client, redis):
    sign_in(client)
    first_cookie, first_token = client.get_cookie("session").value, _form_token(client)  # type: ignore[union-attr]
    sign_in(client)
    assert _form_token(client) != first_token
    old = client.application.test_client()
    old.set_cookie("session", first_cookie)
    assert old.get("/admin/").status_code == 302  # the previous session ended with the new sign-in


def test_without_redis_the_admin_page_answers_503(client, redis):
    sign_in(client)
    encore_queue.set_redis(Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1))
    try:
        answer = client.get("/admin/")
        login = client.post("/admin/login", data={"password": "x"})
    finally:
        encore_queue.set_redis(redis)
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    assert login.status_code == 503


# ---- the sign-in throttle --------------------------------------------------------------------------


def _login(client, password: str, address: str, **headers: str):  # type: ignore[no-untyped-def]
    return client.post(
        "/admin/login", data={"password": password}, environ_base={"REMOTE_ADDR": address}, headers=headers
    )


def test_sign_in_is_throttled_per_client_and_logged_without_the_password(env, redis, caplog):
    from encore_retention.web import create_app

    client = _password_client(env, redis)
    caplog.set_level(logging.INFO)
    answers = [_login(client, f"guess-{n}", "203.0.113.9").status_code for n in range(access.CLIENT_LIMIT + 5)]
    assert answers == [401] * access.CLIENT_LIMIT + [429] * 5
    throttled = _login(client, PASSWORD, "203.0.113.9")  # even the right password waits
    assert throttled.status_code == 429
    assert 0 < int(throttled.headers["Retry-After"]) <= access.THROTTLE_WINDOW
    assert "Too many sign-in attempts" in throttled.get_data(as_text=True)
    # the count is in Redis: another process of the app (another gunicorn worker) refuses too
    assert _login(create_app().test_client(), PASSWORD, "203.0.113.9").status_code == 429
    # another client is not held up by this one
    assert _login(client, PASSWORD, "198.51.100.20").status_code == 302
    records = [r for r in caplog.records if r.name == "encore.admin"]
    assert any(
        r.getMessage() == "admin sign-in throttled"
        and getattr(r, "client", None) == "203.0.113.9"
        and getattr(r, "scope", None) == "client"
        for r in records
    )
    assert any(r.getMessage() == "admin sign-in refused" for r in records)
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "guess-" not in logged and PASSWORD not in logged


def test_sign_in_is_throttled_per_account_across_clients(env, redis):
    client = _password_client(env, redis)
    for n in range(access.ACCOUNT_LIMIT):
        assert _login(client, "wrong", f"198.51.100.{n + 1}").status_code == 401
    refused = _login(client, PASSWORD, "192.0.2.77")  # a client never seen before: the account waits
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0


def test_one_client_hammering_does_not_lock_the_account(env, redis):
    client = _password_client(env, redis)
    for _ in range(access.ACCOUNT_LIMIT + 20):
        _login(client, "wrong", "203.0.113.9")
    assert _login(client, PASSWORD, "198.51.100.20").status_code == 302


def test_behind_a_proxy_the_client_is_the_address_the_proxy_added(env, redis):
    client = _password_client(env, redis)
    # through a proxy on this machine: counted per X-Forwarded-For's last entry, not per proxy
    for _ in range(access.CLIENT_LIMIT):
        _login(client, "wrong", "127.0.0.1", **{"X-Forwarded-For": "203.0.113.9"})
    assert _login(client, "wrong", "127.0.0.1", **{"X-Forwarded-For": "203.0.113.9"}).status_code == 429
    assert _login(client, PASSWORD, "127.0.0.1", **{"X-Forwarded-For": "198.51.100.4"}).status_code == 302
    # a client reaching Encore directly from a public address can't pick its own bucket with the header
    for _ in range(access.CLIENT_LIMIT):
        _login(client, "wrong", "8.8.4.4", **{"X-Forwarded-For": "192.0.2.200"})
    assert _login(client, PASSWORD, "8.8.4.4", **{"X-Forwarded-For": "192.0.2.201"}).status_code == 429


# ---- RQ's dashboard --------------------------------------------------------------------------------


def test_rq_dashboard_changes_need_the_session_and_its_csrf_token(client, redis):
    pytest.importorskip("rq_dashboard")
    from encore_retention.core.queue import EVENTS, queue

    queue(EVENTS).enqueue_call(PROCESS_EVENT, args=({"id": "broken"},), job_id="broken-rq")
    drain(redis)
    queue(EVENTS).enqueue_call(PROCESS_EVENT, args=({"id": "waiting"},), job_id="waiting-rq")
    empty = "/admin/rq/queue/events/queued/empty"
    cross_site = {"Origin": "https://evil.example", "Referer": "https://evil.example/", "Sec-Fetch-Site": "cross-site"}
    # a cross-site form post with no cookie, even from this machine
    assert client.post(empty, environ_base=LOCAL, headers=cross_site).status_code == 401
    # the operator's browser carries the cookie; the other site can't know the token
    sign_in(client)
    assert client.post(empty, headers=cross_site).status_code == 403
    assert client.post(empty, headers={**cross_site, "X-CSRFToken": "guess"}).status_code == 403
    assert "waiting-rq" in queue(EVENTS).job_ids
    # a GET that would change state is no longer one
    assert client.get("/admin/rq/requeue/events").status_code == 405
    assert "broken-rq" in queue(EVENTS).failed_job_registry.get_job_ids()
    # the dashboard's own page hands its script the token (cookie -> X-CSRFToken): its buttons work
    page = client.get("/admin/rq/")
    assert page.status_code == 200 and "RQ dashboard" in page.get_data(as_text=True)
    token = client.get_cookie("_csrf_token", path="/admin/rq")
    assert token is not None and token.value
    done = client.post("/admin/rq/requeue/events", headers={"X-CSRFToken": token.value})
    assert done.status_code == 200 and done.get_json() == {"status": "OK", "count": 1}
    assert "broken-rq" in queue(EVENTS).job_ids
    assert client.post(empty, headers={"X-CSRFToken": token.value}).get_json() == {"status": "OK"}
    assert queue(EVENTS).job_ids == []


# ---- bad ids and numbers: 404 or 400, never 500 ----------------------------------------------------


def test_parse_id_reads_ascii_digits_within_the_store_ids():
    from encore_retention.core.store.models import MAX_ID, parse_id

    assert parse_id("42") == 42 and parse_id(str(MAX_ID)) == MAX_ID and parse_id("0") == 0
    for bad in (str(MAX_ID + 1), "9" * 400, "\u00b2", "\u0663", "-1", "+1", " 1", "1.0", "", "1e3", None, 7):
        assert parse_id(bad) is None, bad


def test_bad_ids_answer_404_or_400_on_sqlite_and_postgresql(db_url, env, redis, request):
    use_database(env, db_url)
    from encore_retention.web import create_app

    client = create_app().test_client()
    sign_in(client)
    ada = _customer()
    assert client.get(f"/admin/customers/{ada}").status_code == 200
    assert client.get(f"/admin/preview/email?flow=welcome&customer={ada}").status_code == 200
    expected = {
        "/admin/customers/99999999999999999999999": 404,
        "/admin/customers/9223372036854775808": 404,
        "/admin/customers/9223372036854775807": 404,
        f"/admin/customers/{quote(chr(0xB2))}": 404,
        f"/admin/customers/{quote(chr(0x663))}": 404,
        f"/admin/preview?customer={quote(chr(0xB2))}": 404,
        "/admin/preview?flow=welcome&customer=99999999999999999999999": 404,
        f"/admin/preview/email?flow=welcome&customer={quote(chr(0xB2))}": 404,
        "/admin/preview/email?flow=welcome&customer=-1": 404,
        "/admin/messages/a%00b": 400,
        "/admin/flows/a%00b": 400,
        "/admin/flows/welcome?status=a%00b": 400,
        "/admin/customers?q=a%00b": 400,
        "/admin/preview?flow=a%00b": 400,
    }
    if importlib.util.find_spec("rq_dashboard"):
        expected.update(
            {
                "/admin/rq/99999999999999999999999/view": 404,
                "/admin/rq/1/view": 404,
                "/admin/rq/0/data/jobs/events/failed/x/asc/1.json": 404,
                f"/admin/rq/0/data/jobs/events/failed/8/asc/{quote(chr(0xB2))}.json": 404,
                "/admin/rq/0/data/jobs/events/failed/8/asc/0.json": 404,
            }
        )
    answers = {path: client.get(path).status_code for path in expected}
    assert answers == expected
    token = _form_token(client)
    for store in (chr(0xB2), "99999999999999999999999", "-1", "abc"):
        assert client.post("/admin/store", data={"store": store, "csrf": token}).status_code == 302
    assert client.post("/admin/store", data={"store": "a\x00b", "csrf": token}).status_code == 400
    sandbox = client.get(
        f"/sandbox/woocommerce/wp-json/wc/v3/customers/{quote(chr(0xB2))}",
        environ_base=LOCAL,
        query_string=request.getfixturevalue("sandbox_key"),
    )  # registered in this database
    assert sandbox.status_code == 200 and sandbox.get_json()["id"] == chr(0xB2)
