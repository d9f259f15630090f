"""The store: migrations build exactly the models' schema on SQLite and PostgreSQL; secrets are encrypted."""

from __future__ import annotations

import importlib

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import select

from encore_retention.cli import main
from encore_retention.core.crypto import decrypt
from encore_retention.core.store import get_engine, migrate, session_scope
from encore_retention.core.store.models import Base, Shop
from tests.conftest import use_database


def _load_room_models() -> None:
    for name in (
        "encore_retention.flows.models",
        "encore_retention.flows.controls",
        "encore_retention.connectors.models",
    ):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


def test_migrations_match_the_models(db_url):
    _load_room_models()
    with get_engine(db_url).connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_migrate_is_idempotent(db_url):
    """Migrating a database already at head again leaves it at head, with its rows and the models' schema."""
    from encore_retention.core.health import revisions

    with session_scope(db_url) as session:
        session.add(Shop(platform="shopify", domain="kept.myshopify.com"))
    migrate(db_url)
    migrate(db_url)
    current, heads = revisions(db_url)
    assert current == heads and len(heads) == 1
    with session_scope(db_url) as session:
        assert session.execute(select(Shop.domain)).scalars().all() == ["kept.myshopify.com"]
    _load_room_models()
    with get_engine(db_url).connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def test_stores_add_and_list(env, db_url):
    use_database(env, db_url)
    runner = CliRunner()
    added = runner.invoke(
        main,
        [
            "stores",
            "add",
            "woocommerce",
            "https://Shop.Example.com/store/",
            "--consumer-key",
            "ck_1",
            "--consumer-secret",
            "cs_1",
            "--webhook-secret",
            "whsec",
            "--no-verify",
        ],
    )
    assert added.exit_code == 0, added.output
    assert "woocommerce shop.example.com/store" in added.output
    shopify = runner.invoke(main, ["stores", "add", "shopify", "demo.myshopify.com", "--access-token", "shpat_x"])
    assert shopify.exit_code == 0, shopify.output
    bad = runner.invoke(main, ["stores", "add", "shopify", "demo.example.com", "--access-token", "shpat_x"])
    assert bad.exit_code == 2 and "myshopify.com" in bad.output
    listed = runner.invoke(main, ["stores", "list"])
    assert "shop.example.com/store" in listed.output and "demo.myshopify.com" in listed.output
    assert "shpat_x" not in listed.output and "cs_1" not in listed.output
    with session_scope() as session:
        shop = session.execute(select(Shop).where(Shop.platform == "shopify")).scalar_one()
        assert shop.access_token_enc != "shpat_x" and decrypt(shop.access_token_enc) == "shpat_x"


def test_a_pooled_postgresql_connection_closed_by_the_server_is_replaced(postgres_url, monkeypatch):
    """A connection that rested (the server restarted, or closed it) is checked at checkout and replaced."""
    if postgres_url is None:
        pytest.skip("no PostgreSQL server answers on 127.0.0.1:5432")
    from sqlalchemy import text

    from encore_retention.core import store

    engine = store.get_engine(postgres_url)
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    with engine.connect() as other:  # a second connection of the pool ends the first, as a restart would
        other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    monkeypatch.setattr(store, "PING_AFTER_IDLE", 0.0)
    for _ in range(3):  # whichever pooled connection is checked out, the query works
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")  # raises inside a transaction: the check left none
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
    engine.dispose()  # a killed connection the checkouts above did not meet must not meet the tests after
