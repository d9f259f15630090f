"""The platforms' webhook receivers by platform name: the web app's view, the worker and the tools use these."""

from __future__ import annotations

from encore_retention.webhooks import shopify, woocommerce
from encore_retention.webhooks.base import Receiver

RECEIVERS: dict[str, Receiver] = {
    shopify.platform: shopify.receiver,
    woocommerce.platform: woocommerce.receiver,
}
