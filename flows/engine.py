"""The flow engine's entry point for events (runs flows once the engine lands)."""

from __future__ import annotations

from encore.events import Event


def handle_event(event: Event, *, shop_id: int | None, customer_id: int | None, new: bool) -> None:
    """Start or advance the flow runs an event concerns. Must be idempotent."""
    return None
