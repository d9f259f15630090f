"""Store commands: `encore stores add|list`."""

from __future__ import annotations

import json
from datetime import UTC

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select

from encore_retention.connectors import identity
from encore_retention.connectors.base import PlatformError, get_connector, platforms
from encore_retention.connectors.models import DataExport
from encore_retention.core import events as ev
from encore_retention.core.store import migrate, session_scope
from encore_retention.core.store.ledger import recompute, upsert_customer, upsert_order
from encore_retention.core.store.models import Customer, Shop, parse_id, utcnow
from encore_retention.jobs import process_event
from encore_retention.webhooks.woocommerce import store_domain


@click.group()
def stores() -> None:
    """Connect and list stores."""


class PlatformCommands(click.Group):
    """`encore stores add <platform>`: one command per installed platform, the plug-in's own."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """The installed platforms that can connect a store from the command line."""
        return sorted(name for name, platform in platforms().items() if platform.register is not None)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The platform's own `add` command."""
        platform = platforms().get(cmd_name)
        return platform.register if platform else None


@stores.group("add", cls=PlatformCommands)
def add() -> None:
    """Connect a store."""


@stores.command("list")
@click.option("--details", is_flag=True, help="each store's identity: name, staff email, sender, reply address, URL…")
def list_stores(details: bool) -> None:
    """List connected stores."""
    migrate()
    table = Table("id", "platform", "domain", "name", "active", "installed")
    with session_scope() as session:
        for shop in session.execute(select(Shop).order_by(Shop.id)).scalars():
            if details:  # one block per store: readable at any terminal width
                click.echo(
                    f"store {shop.id}: {shop.platform} {shop.domain} ({'active' if shop.active else 'inactive'})"
                )
                for field, value in identity.describe(shop).items():
                    label = "from" if field == "email_from" else field.replace("_", "-")
                    click.echo(f"  {label:<12} {value or '(not set)'}")
                continue
            table.add_row(
                str(shop.id),
                shop.platform,
                shop.domain,
                shop.name or "",
                "yes" if shop.active else "no",
                shop.installed_at.strftime("%Y-%m-%d %H:%M") if shop.installed_at else "",
            )
    if not details:
        Console().print(table)


@stores.command("set")
@click.argument("store")
@click.option("--name", help="the store's name, as emails and pages show it")
@click.option("--from", "email_from", help="the sender of its emails: `Name <address>` or an address")
@click.option("--reply-to", help="where customers' replies go")
@click.option("--staff-email", help="the staff's address: internal alerts go here, never to a customer")
@click.option("--url", help="the store's address (http://… or https://…); a WooCommerce store's API answers there")
@click.option("--timezone", help="an IANA time zone, like Europe/Paris")
@click.option("--currency", help="a three-letter currency code, like EUR")
@click.option("--review-url", help="the page of the store's review app, where review requests send customers")
@click.option(
    "--customer-accounts",
    type=click.Choice(identity.ACCOUNT_KINDS, case_sensitive=False),
    help="Shopify: the store's customer accounts, for account invitations (auto: ask the shop)",
)
def set_store(store: str, **values: str | None) -> None:
    """Set a store's identity; connecting the store again keeps what was set here."""
    given = {field: value for field, value in values.items() if value is not None}
    if not given:
        raise click.UsageError("nothing to set: give at least one of --name, --from, --reply-to, --staff-email, …")
    migrate()
    with session_scope() as session:
        shop = find_shop(session, store)
        for field, value in given.items():
            try:
                identity.override(shop, field, value)
            except ValueError as exc:
                option = "--from" if field == "email_from" else f"--{field.replace('_', '-')}"
                raise click.BadParameter(str(exc), param_hint=option) from None
        shop_id, domain = shop.id, shop.domain
    names = ["from" if f == "email_from" else f.replace("_", "-") for f in given]
    click.echo(f"store {shop_id} ({domain}): set {', '.join(names)}")


def find_shop(session, store: str) -> Shop:
    """A connected store by id or domain (click error when there is none)."""
    query = select(Shop)
    if (shop_id := parse_id(store)) is not None:
        query = query.where(Shop.id == shop_id)
    else:
        query = query.where(Shop.domain.in_({store.strip().lower(), store_domain(store)}))
    shops = session.execute(query).scalars().all()
    if not shops:
        raise click.BadParameter(f"no store {store!r} (see `encore stores list`)", param_hint="STORE")
    if len(shops) > 1:
        raise click.BadParameter(f"{store!r} names several stores; use the id", param_hint="STORE")
    return shops[0]


def _count(connector, resource: str) -> int | None:
    """The connector's count of a resource, if it can tell (a progress bar without a total still counts)."""

    try:
        return connector.count(resource)
    except (PlatformError, KeyError):
        return None


@click.group("import")
def import_() -> None:
    """Backfill the ledger from a store's platform."""


@import_.command("customers")
@click.argument("store")
@click.option("--orders/--no-orders", default=True, show_default=True, help="also import orders (counts, totals)")
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="only what changed since this date (UTC); default everything",
)
def import_customers(store: str, orders: bool, since) -> None:
    """Import a store's customers (and orders) into the ledger, without starting any flow."""

    migrate()
    with session_scope() as session:
        shop = find_shop(session, store)
        connector = get_connector(shop)
    since_at = since.replace(tzinfo=UTC) if since else None
    counts = {"customers": 0, "orders": 0}
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
            task = progress.add_task(f"customers of {shop.domain}", total=_count(connector, "customers"))
            for customer in connector.fetch_customers(since_at):
                with session_scope() as session:
                    row = session.get_one(Shop, shop.id)
                    upsert_customer(session, row, customer, customer.updated_at or utcnow())
                counts["customers"] += 1
                progress.advance(task)
            progress.update(task, total=counts["customers"])
            if orders:
                task = progress.add_task(f"orders of {shop.domain}", total=_count(connector, "orders"))
                for order, buyer in connector.fetch_orders(since_at):
                    with session_scope() as session:
                        row = session.get_one(Shop, shop.id)
                        ledger_customer = (
                            upsert_customer(session, row, buyer, order.updated_at or utcnow()) if buyer else None
                        )
                        stored, _ = upsert_order(session, row, order, ledger_customer)
                        if ledger_customer is not None or stored.customer_id is not None:
                            recompute(session, ledger_customer or session.get_one(Customer, stored.customer_id))
                    counts["orders"] += 1
                    progress.advance(task)
                progress.update(task, total=counts["orders"])
    except PlatformError as exc:
        raise click.ClickException(
            f"{exc.message} (imported so far: {counts['customers']} customers, "
            f"{counts['orders']} orders; running it again is safe)"
        ) from exc
    click.echo(f"imported {counts['customers']} customers and {counts['orders']} orders from {shop.domain}")


@click.group()
def privacy() -> None:
    """Answer customers' data requests, and erase a customer on request."""


@privacy.command("exports")
@click.argument("store", required=False)
def list_exports(store: str | None) -> None:
    """List the data request exports (Shopify customers/data_request)."""

    migrate()
    table = Table("id", "store", "customer", "request", "created")
    with session_scope() as session:
        query = select(DataExport, Shop.domain).join(Shop, Shop.id == DataExport.shop_id).order_by(DataExport.id)
        if store:
            query = query.where(DataExport.shop_id == find_shop(session, store).id)
        for export, domain in session.execute(query):
            customer = (export.data.get("customer") or {}) if isinstance(export.data, dict) else {}
            table.add_row(
                str(export.id),
                domain,
                str(customer.get("email") or customer.get("platform_id") or "-"),
                export.request_id or "",
                export.created_at.strftime("%Y-%m-%d %H:%M"),
            )
    Console().print(table)


@privacy.command("show")
@click.argument("export_id", type=int)
def show_export(export_id: int) -> None:
    """Print one export as JSON (send it to the customer)."""

    migrate()
    with session_scope() as session:
        export = session.get(DataExport, export_id)
        if export is None:
            raise click.BadParameter(f"no export {export_id}", param_hint="EXPORT_ID")
        click.echo(json.dumps(export.data, indent=2, sort_keys=True))


@privacy.command("redact")
@click.argument("store")
@click.option("--email", default=None, help="the customer's email address (any case)")
@click.option("--customer-id", default=None, help="the customer's id on the platform")
def redact(store: str, email: str | None, customer_id: str | None) -> None:
    """Erase a customer from Encore as Shopify's customers/redact does (WooCommerce has no such webhook).

    Their ledger rows, orders, events, flow runs and emails' records, archived webhooks, queued jobs
    and outbox copies go; a suppression stays, as a keyed hash of the address. Running it again is safe.
    """

    if not (email and email.strip()) and not (customer_id and customer_id.strip()):
        raise click.UsageError("give --email or --customer-id (or both)")
    migrate()
    with session_scope() as session:
        shop = find_shop(session, store)
        platform, domain = shop.platform, shop.domain
    now = utcnow()
    customer = ev.Customer(id=(customer_id or "").strip() or None, email=(email or "").strip() or None)
    event = ev.Event(
        id=ev.event_id(platform, "redact", domain, customer.key, now.isoformat()),
        type=ev.EventType.CUSTOMER_REDACT,
        platform=platform,
        shop=domain,
        topic="encore/privacy-redact",
        occurred_at=now,
        customer=customer,
    )
    process_event(event.to_dict())
    click.echo(f"redacted from {domain}: every record of that customer; a suppression, if any, stays as a keyed hash")


COMMANDS: list[click.Command] = [stores, import_, privacy]
