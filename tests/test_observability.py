"""Metrics and structured logs of the ingest pipeline."""

from __future__ import annotations

import io
import json
import logging

from redis import Redis

from encore import logs
from tests.conftest import drain, payload, shopify_headers


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_deliveries_and_show_queue_depth(client, redis: Redis):
    before = _sample(client.get("/metrics").get_data(as_text=True), "encore_webhooks_total",
                     platform="shopify", outcome="bad_signature")
    body = json.dumps(payload("shopify", "orders_create")).encode()
    client.post("/webhooks/shopify", data=body, headers=shopify_headers(body, "orders/create", secret="wrong"))
    client.post("/webhooks/shopify", data=body, headers=shopify_headers(body, "orders/create"))
    text = client.get("/metrics").get_data(as_text=True)
    assert _sample(text, "encore_webhooks_total", platform="shopify", outcome="bad_signature") == before + 1
    assert _sample(text, "encore_queue_depth", queue="events") == 1
    drain(redis)
    text = client.get("/metrics").get_data(as_text=True)
    assert _sample(text, "encore_queue_depth", queue="events") == 0
    assert _sample(text, "encore_event_latency_seconds_count", type="order.placed") >= 1


def test_log_lines_carry_the_bound_context_and_no_secrets(client, redis: Redis):
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logs.JSONFormatter())
    handler.addFilter(logs.ContextFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with logs.bind(event_id="shopify-abc", run_id=42):
            logging.getLogger("encore.test").info("step done", extra={"step": "send_email"})
        body = json.dumps(payload("shopify", "orders_create")).encode()
        client.post("/webhooks/shopify", data=body, headers=shopify_headers(body, "orders/create", secret="wrong"))
    finally:
        root.removeHandler(handler)
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    step = next(line for line in lines if line["message"] == "step done")
    assert (step["event_id"], step["run_id"], step["step"], step["level"]) == ("shopify-abc", 42, "send_email", "info")
    rejected = next(line for line in lines if line["message"] == "webhook rejected")
    assert rejected["reason"] == "bad_signature" and rejected["platform"] == "shopify"
    assert "event_id" not in rejected  # the context ended with its block
    assert "shpss_" not in buffer.getvalue()  # the app secret never reaches the logs
