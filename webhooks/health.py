"""Health checks: does Redis answer, does the database answer."""

from __future__ import annotations

from sqlalchemy import text

from encore.queue import get_redis
from encore.store import get_engine


def check() -> dict[str, str]:
    """The failing parts with a short reason; empty when all is well."""
    failing: dict[str, str] = {}
    try:
        get_redis().ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "not healthy"
        failing["redis"] = type(exc).__name__
    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        failing["database"] = type(exc).__name__
    return failing
