"""The Acme Commerce store platform for Encore: its plug-in entry, `encore stores add acme` and its examples.

`PLATFORM` is published in the `encore.platforms` entry point group (pyproject.toml); Encore reads
everything else from it. The receiver is `receiver.py`, the connector `connector.py`.
"""

from __future__ import annotations

import uuid
from importlib.resources import files

import click

from encore_acme.connector import AcmeConnector
from encore_acme.receiver import receiver, signature
from encore_retention.connectors.base import Platform, PlatformError, Samples
from encore_retention.core.crypto import encrypt
from encore_retention.core.store import migrate, session_scope
from encore_retention.core.store.ledger import get_or_create_shop
from encore_retention.core.store.models import Shop, utcnow
from encore_retention.webhooks import secrets as webhook_secrets


def _connect(store: str, secret: str, token: str | None = None) -> int:
    """Register (or update) the store; returns its id."""
    migrate()
    with session_scope() as session:
        shop = get_or_create_shop(session, "acme", store)
        shop.url = f"https://{store}"
        shop.webhook_secret_enc = encrypt(secret)
        if token:
            shop.access_token_enc = encrypt(token)
        shop.active, shop.installed_at, shop.uninstalled_at = True, utcnow(), None
        shop_id = shop.id
    webhook_secrets.forget("acme", store)
    return shop_id


@click.command("acme")
@click.argument("store")
@click.option("--api-token", required=True, help="the store's API token")
@click.option("--webhook-secret", required=True, help="the secret Acme signs the store's webhooks with")
@click.option("--register-webhooks", is_flag=True, help="subscribe the store's webhooks to this Encore")
def add_store(store: str, api_token: str, webhook_secret: str, register_webhooks: bool) -> None:
    """Connect an Acme Commerce store (its domain, like shop-1.acme.test)."""
    store = store.strip().lower()
    if not store or "/" in store or len(store) > 255:
        raise click.BadParameter("expected the store's domain, like shop-1.acme.test", param_hint="STORE")
    shop_id = _connect(store, webhook_secret, api_token)
    click.echo(f"store {shop_id} added: acme {store}")
    if register_webhooks:
        with session_scope() as session:
            try:
                topics = AcmeConnector(session.get_one(Shop, shop_id)).register_webhooks()
            except PlatformError as exc:
                raise click.ClickException(f"store {shop_id} saved, but its webhooks were refused: {exc}") from exc
        click.echo(f"webhooks: {', '.join(topics)}")


def connect_sample_store(store: str, secret: str) -> None:
    """Register `store`, its webhooks signed with `secret` (no API token: nothing is called)."""
    _connect(store, secret)


def sample_headers(body: bytes, topic: str, secret: str, store: str) -> dict[str, str]:
    """The headers Acme sends with a delivery from `store`, signed with `secret`."""
    return {
        "Content-Type": "application/json",
        "X-Acme-Store": store,
        "X-Acme-Topic": topic,
        "X-Acme-Delivery": uuid.uuid4().hex,
        "X-Acme-Signature": signature(body, secret),
    }


PLATFORM = Platform(
    name="acme",
    title="Acme Commerce",
    receiver=receiver,
    connector=AcmeConnector,
    signature_headers=("X-Acme-Signature",),
    register=add_store,
    samples=Samples(
        folder=files("encore_acme") / "examples",
        order_topic="order.placed",
        fields={
            "order_id": ("order.placed", ("id",)),
            "total": ("order.placed", ("total",)),
            "currency": ("order.placed", ("currency",)),
            "created_at": ("order.placed", ("created_at",)),
            "quantity": ("order.placed", ("items", 0, "quantity")),
            "email": ("order.placed", ("customer", "email")),
            "first_name": ("order.placed", ("customer", "first_name")),
            "orders_count": ("customer.created", ("orders_count",)),
        },
        store="examples.acme.test",
        store_header="X-Acme-Store",
        stranger="stranger.acme.test",
        sign=sample_headers,
        connect=connect_sample_store,
    ),
)
