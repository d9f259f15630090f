"""Alembic environment: runs the shipped migrations against the configured URL."""

from __future__ import annotations

import importlib

from alembic import context

from encore_retention.core.store import get_engine
from encore_retention.core.store.models import Base

config = context.config
# Each room keeps its tables in its own `models` module on the same Base; load them for autogenerate.
for _room in ("encore_retention.flows.models", "encore_retention.connectors.models", "encore_retention.core.archive"):
    try:
        importlib.import_module(_room)
    except ModuleNotFoundError as exc:
        if exc.name != _room:
            raise
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    connectable = get_engine(url)
    with connectable.connect() as connection:
        context.configure(
            connection=connection, target_metadata=target_metadata, render_as_batch=connection.dialect.name == "sqlite"
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
