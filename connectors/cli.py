"""Store commands: `encore stores add|list`."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from encore.crypto import encrypt
from encore.store import migrate, session_scope
from encore.store.ledger import get_or_create_shop
from encore.store.models import Shop, utcnow


@click.group()
def stores() -> None:
    """Connect and list stores."""


@stores.group("add")
def add() -> None:
    """Connect a store."""


@add.command("woocommerce")
@click.argument("url")
@click.option("--consumer-key", required=True, help="REST API consumer key (ck_…)")
@click.option("--consumer-secret", required=True, help="REST API consumer secret (cs_…)")
@click.option("--webhook-secret", required=True, help="the secret the store's webhooks are signed with")
def add_woocommerce(url: str, consumer_key: str, consumer_secret: str, webhook_secret: str) -> None:
    """Register a WooCommerce store by its URL."""
    from webhooks.woocommerce import store_domain

    domain = store_domain(url)
    if not domain:
        raise click.BadParameter(f"{url!r} is not a store URL", param_hint="URL")
    migrate()
    with session_scope() as session:
        shop = get_or_create_shop(session, "woocommerce", domain)
        shop.url = url.rstrip("/")
        shop.consumer_key_enc = encrypt(consumer_key)
        shop.consumer_secret_enc = encrypt(consumer_secret)
        shop.webhook_secret_enc = encrypt(webhook_secret)
        shop.active, shop.installed_at, shop.uninstalled_at = True, utcnow(), None
        shop_id = shop.id
    click.echo(f"store {shop_id} added: woocommerce {domain}")


@add.command("shopify")
@click.argument("domain")
@click.option("--access-token", required=True, help="Admin API access token of a custom app (shpat_…)")
@click.option("--webhook-secret", default=None, help="the custom app's API secret, if it signs the webhooks")
def add_shopify(domain: str, access_token: str, webhook_secret: str | None) -> None:
    """Register a Shopify shop with a custom-app token."""
    from webhooks.shopify import SHOP_DOMAIN

    domain = domain.strip().lower()
    if not SHOP_DOMAIN.match(domain):
        raise click.BadParameter("expected a shop domain like example.myshopify.com", param_hint="DOMAIN")
    migrate()
    with session_scope() as session:
        shop = get_or_create_shop(session, "shopify", domain)
        shop.url = f"https://{domain}"
        shop.access_token_enc = encrypt(access_token)
        if webhook_secret:
            shop.webhook_secret_enc = encrypt(webhook_secret)
        shop.active, shop.installed_at, shop.uninstalled_at = True, utcnow(), None
        shop_id = shop.id
    click.echo(f"store {shop_id} added: shopify {domain}")


@stores.command("list")
def list_stores() -> None:
    """List connected stores."""
    migrate()
    table = Table("id", "platform", "domain", "name", "active", "installed")
    with session_scope() as session:
        for shop in session.execute(select(Shop).order_by(Shop.id)).scalars():
            table.add_row(str(shop.id), shop.platform, shop.domain, shop.name or "", "yes" if shop.active else "no",
                          shop.installed_at.strftime("%Y-%m-%d %H:%M") if shop.installed_at else "")
    Console().print(table)


COMMANDS: list[click.Command] = [stores]
