"""The seam between what Encore decides and what it does outside its store: the effects a rehearsal swaps.

A real run acts through each room's own functions: the shop's platform connector (codes, tags, redemptions),
the engine's RQ wake-up jobs, Redis when a person is forgotten. `encore replay --dry-run` runs the same
pipeline (receivers, ledger, flow engine, the same step rules) inside `acting(Effects(...))`, whose fields
stand in for those effects; a field left None keeps the real one. Nothing else differs between the two.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from encore_retention.core.store.models import Shop


@dataclass(frozen=True)
class Effects:
    """Stand-ins for the effects outside the store; None keeps the real one."""

    connector: Callable[[Shop], Any] | None = None
    """The connector a shop's codes, tags and redemption checks go through (`connectors.base.get_connector`)."""
    schedule: Callable[[int, datetime, str], None] | None = None
    """A run's wake-up: (run id, when, job id) (`flows.engine.schedule`)."""
    forget_in_redis: Callable[[Any, Any, set[str] | None], int] | None = None
    """Removing a forgotten person's traces from Redis (`connectors.privacy.forget_in_redis`)."""


REAL = Effects()
_current: ContextVar[Effects] = ContextVar("encore_effects", default=REAL)


def current() -> Effects:
    """The effects in force: the real ones unless inside `acting`."""
    return _current.get()


@contextmanager
def acting(effects: Effects) -> Iterator[Effects]:
    """Run the block with `effects` standing in for the real ones."""
    token = _current.set(effects)
    try:
        yield effects
    finally:
        _current.reset(token)
