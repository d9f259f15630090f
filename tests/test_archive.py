"""The webhook archive: accepted deliveries kept without their signatures, then purged after the retention."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from encore_retention.core import archive
from encore_retention.core.settings import reset_settings
from tests.conftest import SHOP, drain, payload, shopify_headers


def test_accepted_webhooks_are_archived_without_signatures_and_purged(client, redis, env):
    body = json.dumps(payload("shopify", "orders_create")).encode()
    headers = shopify_headers(body, "orders/create", webhook_id="wh-1")
    assert client.post("/webhooks/shopify", data=body, headers=headers).status_code == 200
    assert client.post("/webhooks/shopify", data=body, headers=headers).status_code == 200  # a retry
    assert list(archive.deliveries()) == []  # the worker archives a delivery as it normalises it
    drain(redis)
    rows = list(archive.deliveries())
    assert [r.outcome for r in rows] == ["queued"]  # the duplicate was never queued, so is not archived twice
    row = rows[0]
    assert row.body.encode() == body and row.topic == "orders/create" and row.shop == SHOP
    assert row.delivery_id == "wh-1" and row.event_ids
    assert "X-Shopify-Hmac-Sha256" not in row.headers and row.headers["X-Shopify-Topic"] == "orders/create"
    assert archive.purge(now=datetime.now(UTC) + timedelta(days=29)) == 0
    env.setenv("WEBHOOK_RETENTION_DAYS", "7")
    reset_settings()
    assert archive.purge(now=datetime.now(UTC) + timedelta(days=8)) == 1
    assert list(archive.deliveries()) == []

    from encore_retention.cron import declared_jobs

    assert any(job["func"] is archive.purge for job in declared_jobs())
