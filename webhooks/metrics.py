"""Prometheus counters of the receivers."""

from __future__ import annotations

from prometheus_client import Counter

WEBHOOKS = Counter("encore_webhooks_total", "Webhook deliveries by platform and outcome", ["platform", "outcome"])


def received(platform: str, outcome: str) -> None:
    """Count one delivery's outcome (queued, duplicate, ignored, ping, or the rejection reason)."""
    WEBHOOKS.labels(platform=platform, outcome=outcome).inc()
