"""Prometheus metrics shared by every process, and the `/metrics` exposition.

Counters and histograms are module-level objects. Under gunicorn and `encore run` several processes
count at once: with PROMETHEUS_MULTIPROC_DIR set (as `encore run` does) each process writes its
values there and `/metrics` adds them up. Queue depth is read from Redis at scrape time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from encore_retention.core.queue import QUEUES, queue

WEBHOOKS = Counter("encore_webhooks_total", "Webhook deliveries by platform and outcome", ["platform", "outcome"])
EVENTS_PROCESSED = Counter("encore_events_processed_total", "Events applied by the worker", ["type", "new"])
JOB_LATENCY = Histogram(
    "encore_event_latency_seconds",
    "From a webhook's receipt to the end of its processing",
    ["type"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
EMAILS = Counter(
    "encore_emails_total", "Emails by flow and outcome (sent, or the suppression reason)", ["flow", "outcome"]
)
PLATFORM_ERRORS = Counter(
    "encore_platform_api_errors_total", "Platform API errors by platform and kind", ["platform", "kind"]
)


def platform_error(platform: str, error: object) -> None:
    """Count a platform API error by kind: rate_limited (429), server (5xx), client (4xx), network (no answer)."""
    status = getattr(error, "status", None)
    kind = (
        "rate_limited" if status == 429 else "server" if status and status >= 500 else "client" if status else "network"
    )
    PLATFORM_ERRORS.labels(platform=platform, kind=kind).inc()


class QueueDepth(Collector):
    """Jobs waiting in each Encore queue, read from Redis when scraped."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("encore_queue_depth", "Jobs waiting per queue", labels=["queue"])
        try:
            for name in QUEUES:
                family.add_metric([name], queue(name).count)
        except Exception:  # noqa: BLE001 - Redis down: /healthz says so; metrics still answer
            return
        yield family


def exposition() -> tuple[bytes, str]:
    """The metrics text and its content type, across processes when PROMETHEUS_MULTIPROC_DIR is set."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    output = generate_latest(registry)
    queue_registry = CollectorRegistry()
    queue_registry.register(QueueDepth())
    return output + generate_latest(queue_registry), CONTENT_TYPE_LATEST
