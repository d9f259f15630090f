"""The receivers' counting: one call per delivery outcome."""

from __future__ import annotations

from encore_retention.core.metrics import WEBHOOKS


def received(platform: str, outcome: str) -> None:
    """Count one delivery's outcome (queued, duplicate, ignored, ping, or the rejection reason)."""
    WEBHOOKS.labels(platform=platform, outcome=outcome).inc()
