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
@click.option("--consumer-key", required=True, help="REST API consumer key (ck_…), with read/write permission")
@click.option("--consumer-secret", required=True, help="REST API consumer secret (cs_…)")
@click.option("--webhook-secret", default=None, help="sign the webhooks with this secret (default: a new one)")
@click.option("--no-verify", is_flag=True,
              help="don't call the store: save the keys as given and create the webhooks by hand")
def add_woocommerce(url: str, consumer_key: str, consumer_secret: str, webhook_secret: str | None,
                    no_verify: bool) -> None:
    """Connect a WooCommerce store: check the keys, create its webhooks, print the store id."""
    from connectors.base import PlatformError
    from connectors.woocommerce import WooCommerceConnector, generate_secret, webhook_address
    from webhooks import secrets as webhook_secrets
    from webhooks.woocommerce import store_domain

    domain = store_domain(url)
    if not domain or not url.strip().lower().startswith(("http://", "https://")):
        raise click.BadParameter(f"{url!r} is not a store URL (expected http://… or https://…)", param_hint="URL")
    url = url.strip().rstrip("/")
    generated = webhook_secret is None
    secret = webhook_secret or generate_secret()
    facts: dict[str, object] = {}
    if not no_verify:
        probe = Shop(platform="woocommerce", domain=domain, url=url)
        try:
            facts = WooCommerceConnector(probe, consumer_key=consumer_key, consumer_secret=consumer_secret).verify()
        except PlatformError as exc:
            raise click.ClickException(f"the store did not accept the keys: {exc.message}") from exc
    migrate()
    with session_scope() as session:
        shop = get_or_create_shop(session, "woocommerce", domain)
        shop.url = url
        shop.consumer_key_enc = encrypt(consumer_key)
        shop.consumer_secret_enc = encrypt(consumer_secret)
        shop.webhook_secret_enc = encrypt(secret)
        if facts.get("currency"):
            shop.currency = str(facts["currency"])
        shop.active, shop.installed_at, shop.uninstalled_at = True, utcnow(), None
        shop_id = shop.id
    webhook_secrets.forget("woocommerce", domain)
    if no_verify:
        click.echo(f"store {shop_id} added: woocommerce {domain}")
        if generated:
            click.echo(f"create the webhooks in WooCommerce > Settings > Advanced > Webhooks with delivery URL "
                       f"{webhook_address()} and secret {secret}")
        return
    with session_scope() as session:
        shop = session.get(Shop, shop_id)
        try:
            topics = WooCommerceConnector(shop).register_webhooks()
        except PlatformError as exc:
            raise click.ClickException(f"store {shop_id} saved, but its webhooks could not be created: "
                                       f"{exc.message} (run the command again to retry)") from exc
    click.echo(f"store {shop_id} added: woocommerce {domain}")
    click.echo(f"webhooks: {', '.join(topics)} -> {webhook_address()}")


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
