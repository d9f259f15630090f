"""Prometheus metrics: deliveries, emails, platform errors and queue depth, counted and shown on `/metrics`."""

from __future__ import annotations

import json

import responses
from redis import Redis

from tests.conftest import (
    WC_URL,
    drain,
    fake_woocommerce_coupons,
    payload,
    post_woo,
    shopify_headers,
    woo_customer,
    woo_order,
)

API = f"{WC_URL}/wp-json/wc/v3"


def _scraped(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_deliveries_and_show_queue_depth(client, redis: Redis):
    before = _scraped(
        client.get("/metrics").get_data(as_text=True),
        "encore_webhooks_total",
        platform="shopify",
        outcome="bad_signature",
    )
    body = json.dumps(payload("shopify", "orders_create")).encode()
    client.post("/webhooks/shopify", data=body, headers=shopify_headers(body, "orders/create", secret="wrong"))
    client.post("/webhooks/shopify", data=body, headers=shopify_headers(body, "orders/create"))
    text = client.get("/metrics").get_data(as_text=True)
    assert _scraped(text, "encore_webhooks_total", platform="shopify", outcome="bad_signature") == before + 1
    assert _scraped(text, "encore_queue_depth", queue="events") == 1
    drain(redis)
    text = client.get("/metrics").get_data(as_text=True)
    assert _scraped(text, "encore_queue_depth", queue="events") == 0
    assert _scraped(text, "encore_event_latency_seconds_count", type="order.placed") >= 1


def _sample(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


@responses.activate
def test_metrics_count_emails_and_platform_errors(client, redis, woo_store):
    queued_before = _sample("encore_webhooks_total", platform="woocommerce", outcome="queued")
    sent_before = _sample("encore_emails_total", flow="welcome", outcome="sent")
    errors_before = _sample("encore_platform_api_errors_total", platform="woocommerce", kind="client")
    made = fake_woocommerce_coupons()
    post_woo(client, woo_customer(701, "ada@example.com", consent=True), "customer.created")
    drain(redis)
    assert len(made) == 1
    assert _sample("encore_emails_total", flow="welcome", outcome="sent") == sent_before + 1
    responses.replace(
        responses.POST,
        f"{API}/coupons",
        status=400,
        json={"code": "woocommerce_rest_invalid", "message": "Invalid coupon", "data": {"status": 400}},
    )
    post_woo(client, woo_customer(702, "bea@example.com", consent=True, first="Bea"), "customer.created")
    drain(redis)
    assert _sample("encore_platform_api_errors_total", platform="woocommerce", kind="client") == errors_before + 1
    refused_before = _sample("encore_emails_total", flow="loyalty_third_order", outcome="no consent")
    for number in range(3):  # a third order without consent: the loyalty email is suppressed
        post_woo(client, woo_order(9700 + number, 703, "cy@example.com", "20.00"), "order.created")
    drain(redis)
    assert _sample("encore_emails_total", flow="loyalty_third_order", outcome="no consent") == refused_before + 1
    text = client.get("/metrics").get_data(as_text=True)
    assert 'encore_emails_total{flow="welcome",outcome="sent"}' in text
    assert "encore_platform_api_errors_total" in text and "encore_queue_depth" in text
    assert _sample("encore_webhooks_total", platform="woocommerce", outcome="queued") == queued_before + 5
    assert f'encore_webhooks_total{{outcome="queued",platform="woocommerce"}} {queued_before + 5}' in text
