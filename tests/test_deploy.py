"""Deploying: migrations that processes run together, a web app on a new or unreachable database, Redis durability."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from redis import Redis

from encore_retention.core import health
from encore_retention.core import queue as encore_queue
from encore_retention.core.settings import reset_settings
from encore_retention.core.store import MIGRATION_LOCK_KEY, alembic_config, get_engine, migrate
from encore_retention.webhooks import secrets as webhook_secrets
from tests.conftest import (
    SHOP,
    SHOPIFY_SECRET,
    WC_URL,
    free_port,
    fresh_postgres,
    http_status,
    payload,
    redis_url_of,
    shopify_headers,
    sign_in,
    stop_group,
    wait_for,
    woo_headers,
)

ROOT = Path(__file__).resolve().parent.parent
HEAD = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/encore"  # nothing listens on port 1
CUSTOM_SHOP = "custom-app.myshopify.com"
CUSTOM_SECRET = "custom-app-secret-0123"


def _revision(url: str) -> str | None:
    with get_engine(url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _migrate_in(url: str) -> subprocess.Popen:
    """`migrate(url)` in a process of its own."""
    code = f"from encore_retention.core.store import migrate; migrate({url!r})"
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.fixture
def empty_postgres() -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards."""
    with fresh_postgres("encore_deploy") as url:
        if url is None:
            pytest.skip("no PostgreSQL server answers on 127.0.0.1:5432")
        yield url


# ---- migrations run by many processes at once ------------------------------------------------------


def test_processes_migrating_a_new_postgresql_database_together_all_succeed(empty_postgres):
    processes = [_migrate_in(empty_postgres) for _ in range(6)]
    results = [(p.wait(timeout=120), p.stderr.read().decode() if p.stderr else "") for p in processes]
    assert [code for code, _ in results] == [0] * 6, "\n".join(err[-800:] for _, err in results)
    assert _revision(empty_postgres) == HEAD


def test_postgresql_migration_waits_for_the_advisory_lock_and_releases_it(empty_postgres):
    import psycopg

    with psycopg.connect(empty_postgres, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        process = _migrate_in(empty_postgres)
        time.sleep(1.5)
        assert process.poll() is None, "migrated while another process held the lock"
        holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
        assert process.wait(timeout=60) == 0
    migrate(empty_postgres)  # in this process: the lock is let go on the pooled connection too
    with psycopg.connect(empty_postgres, autocommit=True) as conn:
        held = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
    assert held == (0,)
    assert _revision(empty_postgres) == HEAD


def test_sqlite_migration_waits_for_the_lock_file_beside_the_database(tmp_path):
    import fcntl

    url = f"sqlite:///{tmp_path / 'encore.db'}"
    lock_path = tmp_path / "encore.db.migrate-lock"
    with open(lock_path, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        process = _migrate_in(url)
        time.sleep(1.5)
        assert process.poll() is None, "migrated while another process held the lock"
        fcntl.flock(lock, fcntl.LOCK_UN)
        assert process.wait(timeout=60) == 0
    assert _revision(url) == HEAD


def test_processes_migrating_a_new_sqlite_database_together_all_succeed(tmp_path):
    url = f"sqlite:///{tmp_path / 'encore.db'}"
    processes = [_migrate_in(url) for _ in range(6)]
    results = [(p.wait(timeout=120), p.stderr.read().decode() if p.stderr else "") for p in processes]
    assert [code for code, _ in results] == [0] * 6, "\n".join(err[-800:] for _, err in results)
    assert _revision(url) == HEAD


def test_in_memory_sqlite_migrates_without_a_lock_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    migrate("sqlite://")
    assert list(tmp_path.iterdir()) == []


# ---- the release step ------------------------------------------------------------------------------


def test_procfile_has_a_release_step_and_keeps_the_other_processes():
    lines = (ROOT / "Procfile").read_text().splitlines()
    assert "release: encore migrate" in lines
    assert (
        "web: gunicorn --config python:encore_retention.web.server --workers 4 --bind 0.0.0.0:${PORT:-8000} "
        '"webhooks:create_app()"'
    ) in lines
    assert "worker: python worker.py" in lines
    assert "cron: encore cron" in lines


def test_encore_migrate_brings_a_new_database_to_head(env, tmp_path):
    from encore_retention.cli import main

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    env.setenv("DATABASE_URL", url)
    reset_settings()
    result = CliRunner().invoke(main, ["migrate"])
    assert result.exit_code == 0, result.output
    assert _revision(url) == HEAD


# ---- the web app on a new database -----------------------------------------------------------------


def _app(env: pytest.MonkeyPatch, url: str):  # type: ignore[no-untyped-def]
    from encore_retention.web import create_app

    env.setenv("DATABASE_URL", url)
    reset_settings()
    webhook_secrets.forget()
    application = create_app()
    application.testing = True
    return application


def _order() -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload("shopify", "orders_create")).encode()
    return body, shopify_headers(body, "orders/create")


def test_the_web_app_brings_a_new_database_to_head_at_start(env, redis: Redis, tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    client = _app(env, url).test_client()
    assert _revision(url) == HEAD
    body, headers = _order()
    assert client.post("/webhooks/shopify", data=body, headers=headers).status_code == 200
    sign_in(client)
    assert client.get("/admin/").status_code == 200
    install = client.get(f"/shopify/install?shop={SHOP}")
    assert install.status_code == 302
    assert client.get("/healthz").status_code == 200


def test_the_web_app_starts_without_its_database_and_recovers(env, redis: Redis, tmp_path):
    folder = tmp_path / "later"
    url = f"sqlite:///{folder / 'encore.db'}"  # its folder does not exist yet: SQLite can't open it
    app = _app(env, url)
    client = app.test_client()
    admin = client.get("/admin/", headers={"Accept": "text/html"})
    assert admin.status_code == 503
    assert "database unavailable" in admin.get_data(as_text=True)
    install = client.get(f"/shopify/install?shop={SHOP}")
    assert install.status_code == 503
    assert install.get_json()["error"] == "database_unavailable"
    health_answer = client.get("/healthz")
    assert health_answer.status_code == 503 and "database" in health_answer.get_json()["failing"]
    body, headers = _order()
    assert client.post("/webhooks/shopify", data=body, headers=headers).status_code == 200  # ingest needs Redis only

    folder.mkdir()
    app.extensions["encore.schema"].retry_seconds = 0  # the next request tries again
    sign_in(client)
    assert client.get("/admin/").status_code == 200
    assert _revision(url) == HEAD
    assert client.get("/healthz").status_code == 200


def test_a_schema_behind_head_fails_healthz_and_database_pages(env, redis: Redis, tmp_path, monkeypatch):
    from alembic import command

    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0003")
    old = _revision(url)

    def refused(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("permission denied for schema public")

    monkeypatch.setattr("encore_retention.core.health.migrate", refused)
    app = _app(env, url)
    client = app.test_client()
    answer = client.get("/healthz")
    assert answer.status_code == 503
    assert answer.get_json()["failing"] == {"schema": f"behind: at {old}, head is {HEAD}"}
    page = client.get("/admin/")
    assert page.status_code == 503
    assert page.get_json()["error"] == "schema_not_up_to_date"
    assert "database schema is not up to date" in page.get_json()["detail"]

    monkeypatch.undo()
    app.extensions["encore.schema"].retry_seconds = 0
    assert client.get("/healthz").status_code == 200
    assert _revision(url) == HEAD
    sign_in(client)
    assert client.get("/admin/").status_code == 200


def test_healthz_remembers_a_schema_at_head(client, redis: Redis, monkeypatch):
    assert client.get("/healthz").status_code == 200
    calls: list[str | None] = []
    monkeypatch.setattr("encore_retention.core.health.revisions", lambda url=None: calls.append(url) or ((), ()))
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    assert calls == []


def test_a_database_error_inside_a_page_answers_503(client, redis: Redis, env):
    sign_in(client)
    assert client.get("/admin/").status_code == 200
    env.setenv("DATABASE_URL", UNREACHABLE)
    reset_settings()
    answer = client.get("/admin/")
    assert answer.status_code == 503
    assert answer.get_json()["error"] == "database_unavailable"


def _gunicorn(tmp_path: Path, port: int, redis: Redis, database_url: str) -> subprocess.Popen:
    process_env = {k: v for k, v in os.environ.items() if k not in ("SHOPIFY_API_SECRET_PREVIOUS", "ADMIN_PASSWORD")}
    process_env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url_of(redis),
        SHOPIFY_API_SECRET=SHOPIFY_SECRET,
        SHOPIFY_API_KEY="test-api-key",
        SECRET_KEY="test-secret-key",
        PYTHONPATH=str(ROOT),
        ENCORE_DATA_DIR=str(tmp_path / "data"),
        EMAIL_URL=f"file://{tmp_path / 'outbox'}",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", "2", "--bind", f"127.0.0.1:{port}", "webhooks:create_app()"],
        env=process_env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def test_gunicorn_alone_on_a_new_sqlite_database(tmp_path, redis: Redis):
    port = free_port()
    url = f"sqlite:///{tmp_path / 'encore.db'}"
    server = _gunicorn(tmp_path, port, redis, url)
    try:
        assert wait_for(lambda: http_status(f"http://127.0.0.1:{port}/healthz") == 200, timeout=60), "never healthy"
        body, headers = _order()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/webhooks/shopify", data=body, headers=headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            assert json.loads(response.read())["status"] == "queued"
        from encore_retention.core.access import sign_in_url

        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(sign_in_url(f"http://127.0.0.1:{port}", secret_key="test-secret-key"), timeout=10) as page:
            assert page.status == 200 and page.url.endswith("/admin/")  # signed in with a one-time link
        assert _revision(url) == HEAD
    finally:
        stop_group(server)
    errors = server.stderr.read().decode() if server.stderr else ""
    assert "Traceback" not in errors, errors[-2000:]


# ---- ingest while the database is down -------------------------------------------------------------


def _database_down(env: pytest.MonkeyPatch, url: str = UNREACHABLE) -> None:
    """Point DATABASE_URL somewhere nothing answers, keeping what the web process has cached."""
    env.setenv("DATABASE_URL", url)
    reset_settings()


def _custom_shop(env: pytest.MonkeyPatch) -> None:
    from encore_retention.cli import main

    result = CliRunner().invoke(
        main,
        ["stores", "add", "shopify", CUSTOM_SHOP, "--access-token", "shpat_custom", "--webhook-secret", CUSTOM_SECRET],
    )
    assert result.exit_code == 0, result.output
    webhook_secrets.forget()


def _custom_order(secret: str = CUSTOM_SECRET) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload("shopify", "orders_create")).encode()
    return body, shopify_headers(body, "orders/create", secret=secret, shop=CUSTOM_SHOP)


@pytest.mark.parametrize("down", [UNREACHABLE, "sqlite:////nonexistent-encore-dir/encore.db"])
def test_shopify_ingest_with_the_app_secret_needs_no_database(client, redis: Redis, env, down):
    _database_down(env, down)
    body, headers = _order()
    answer = client.post("/webhooks/shopify", data=body, headers=headers)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.get_json()["status"] == "queued"


def test_shopify_checks_the_app_secret_before_asking_the_store(client, redis: Redis, monkeypatch):
    def no_store(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the store was asked")

    monkeypatch.setattr(webhook_secrets, "session_scope", no_store)
    body, headers = _order()
    assert client.post("/webhooks/shopify", data=body, headers=headers).status_code == 200
    previous = "shpss_previous_secret"
    monkeypatch.setenv("SHOPIFY_API_SECRET_PREVIOUS", previous)
    reset_settings()
    body, headers = _order()
    headers = shopify_headers(body, "orders/create", secret=previous)
    assert client.post("/webhooks/shopify", data=body, headers=headers).status_code == 200


def test_a_custom_shop_secret_is_served_from_the_cache_while_the_database_is_down(client, redis: Redis, env):
    _custom_shop(env)
    env.setattr(webhook_secrets, "TTL_SECONDS", 0.0)  # what the store said is stale at once, but still known
    body, headers = _custom_order()
    assert client.post("/webhooks/shopify", data=body, headers=headers).status_code == 200  # warms the cache
    _database_down(env)
    body, headers = _custom_order()
    assert client.post("/webhooks/shopify", data=body, headers=headers).status_code == 200
    bad_body, bad_headers = _custom_order(secret="wrong")
    assert client.post("/webhooks/shopify", data=bad_body, headers=bad_headers).status_code == 401


def test_a_custom_shop_with_a_cold_cache_and_no_database_answers_503(client, redis: Redis, env):
    _custom_shop(env)
    _database_down(env)
    body, headers = _custom_order()
    answer = client.post("/webhooks/shopify", data=body, headers=headers)
    assert answer.status_code == 503
    assert answer.get_json()["error"] == "database_unavailable"


def test_unknown_shopify_shops_are_remembered_briefly(client, redis: Redis, env):
    body, headers = _custom_order(secret="not-the-app-secret")
    assert client.post("/webhooks/shopify", data=body, headers=headers).status_code == 401
    _database_down(env)
    assert client.post("/webhooks/shopify", data=body, headers=headers).status_code == 401  # negative answer cached


def test_bad_shop_domains_never_reach_the_store(client, redis: Redis, monkeypatch):
    def no_store(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the store was asked")

    monkeypatch.setattr(webhook_secrets, "session_scope", no_store)
    body = json.dumps(payload("shopify", "orders_create")).encode()
    for shop in ("evil.example.com", "x" * 5000, "bad\u00e9.myshopify.com", ""):
        headers = shopify_headers(body, "orders/create", secret="wrong")
        headers["X-Shopify-Shop-Domain"] = shop.encode("utf-8").decode("latin-1")
        assert client.post("/webhooks/shopify", data=body, headers=headers).status_code == 401


def test_the_secret_cache_is_bounded(env, monkeypatch):
    monkeypatch.setattr(webhook_secrets, "MAX_ENTRIES", 50)
    for number in range(200):
        webhook_secrets.lookup("woocommerce", f"shop{number}.example.com")
    assert len(webhook_secrets._cache) <= 50


def _woo_order() -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload("woocommerce", "order_created")).encode()
    return body, woo_headers(body, "order.created")


def test_woocommerce_ingest_for_a_known_store_survives_a_short_database_outage(client, redis: Redis, env, woo_store):
    env.setattr(webhook_secrets, "TTL_SECONDS", 0.0)  # what the store said is stale at once, but still known
    body, headers = _woo_order()
    assert client.post("/webhooks/woocommerce", data=body, headers=headers).status_code == 200  # warms the cache
    _database_down(env)
    body, headers = _woo_order()
    assert client.post("/webhooks/woocommerce", data=body, headers=headers).status_code == 200


def test_woocommerce_answers_503_for_a_store_it_cannot_look_up(client, redis: Redis, env, woo_store):
    _database_down(env, "sqlite:////nonexistent-encore-dir/encore.db")
    body, headers = _woo_order()
    answer = client.post("/webhooks/woocommerce", data=body, headers=headers)
    assert answer.status_code == 503
    assert answer.get_json()["error"] == "database_unavailable"
    other = woo_headers(body, "order.created", source="https://unknown.example.com")
    assert client.post("/webhooks/woocommerce", data=body, headers=other).status_code == 503
    assert WC_URL.startswith("https://")


# ---- Redis durability ------------------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path) -> Iterator[Redis]:  # type: ignore[no-untyped-def]
    """A redis-server of this test's own (no snapshots, no AOF), whose configuration it may change."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    server = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    connection = Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)

    def answers() -> bool:
        try:
            return bool(connection.ping())
        except Exception:  # noqa: BLE001 - still starting
            return False

    try:
        assert wait_for(answers, timeout=10), "redis-server did not start"
        yield connection
    finally:
        server.kill()  # a throwaway: nothing in it is worth a clean shutdown
        server.wait(timeout=10)


def test_redis_without_aof_or_snapshots_is_a_warning(own_redis: Redis):
    warning = health.redis_persistence(own_redis)
    assert warning and "appendonly" in warning and "save" in warning


def test_redis_with_aof_or_snapshots_is_fine(own_redis: Redis):
    own_redis.config_set("appendonly", "yes")
    assert health.redis_persistence(own_redis) is None
    own_redis.config_set("appendonly", "no")
    own_redis.config_set("save", "900 1")
    assert health.redis_persistence(own_redis) is None


def test_redis_that_may_evict_is_a_warning(own_redis: Redis):
    own_redis.config_set("appendonly", "yes")
    own_redis.config_set("maxmemory-policy", "allkeys-lru")
    warning = health.redis_persistence(own_redis)
    assert warning and "allkeys-lru" in warning and "noeviction" in warning


def test_redis_without_config_falls_back_to_info(own_redis: Redis, caplog):
    port = own_redis.connection_pool.connection_kwargs["port"]
    own_redis.execute_command("ACL", "SETUSER", "app", "on", ">pw", "~*", "&*", "+@all", "-config")
    limited = Redis(host="127.0.0.1", port=port, username="app", password="pw")
    with caplog.at_level(logging.DEBUG, logger=health.log.name):
        assert health.redis_persistence(limited) is None  # AOF off, snapshots unknown: no warning
    assert any("unknown" in record.getMessage() for record in caplog.records)
    own_redis.config_set("maxmemory-policy", "volatile-lru")
    assert "volatile-lru" in (health.redis_persistence(limited) or "")
    own_redis.config_set("maxmemory-policy", "noeviction")
    own_redis.config_set("appendonly", "yes")
    assert wait_for(lambda: health.redis_persistence(limited) is None, timeout=10)


def test_the_web_app_warns_about_redis_durability_once_and_healthz_shows_it(
    env, redis: Redis, own_redis: Redis, caplog
):
    from encore_retention.web import create_app

    encore_queue.set_redis(own_redis)
    with caplog.at_level(logging.WARNING):
        app = create_app()
    warnings = [r for r in caplog.records if "appendonly" in r.getMessage()]
    assert len(warnings) == 1
    client = app.test_client()
    answer = client.get("/healthz")
    assert answer.status_code == 200
    assert "appendonly" in answer.get_json()["warnings"]["redis_persistence"]
    own_redis.config_set("appendonly", "yes")
    assert client.get("/healthz").status_code == 200


def test_encore_version_names_the_installed_distribution():
    from importlib.metadata import version

    from encore_retention.cli import main

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0, result.output
    assert version("encore-retention") in result.output
