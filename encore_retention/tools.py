"""Operators' and marketers' tools: `encore replay`, `encore export webhooks|customers`, `encore simulate`,
`encore samples`."""

from __future__ import annotations

import csv
import json
import os
import secrets
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import requests
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import delete, select

from encore_retention.connectors.base import platforms, receiver_of
from encore_retention.connectors.woocommerce import generate_secret
from encore_retention.connectors.woocommerce import sample_headers as woocommerce_headers
from encore_retention.core import archive, logs, resources
from encore_retention.core.crypto import decrypt, encrypt
from encore_retention.core.events import MALFORMED_ERRORS, Event, parse_datetime, problem
from encore_retention.core.queue import enqueue_event, get_redis
from encore_retention.core.settings import get_settings
from encore_retention.core.store import migrate, session_scope
from encore_retention.core.store.ledger import get_or_create_shop
from encore_retention.core.store.models import EventRecord, Shop, utcnow
from encore_retention.flows import dates, exports, segments
from encore_retention.flows.schema import parse_duration
from encore_retention.jobs import process_event
from encore_retention.rehearsal import outcome_rows, rehearsal
from encore_retention.simulate import simulate
from encore_retention.web.sandbox import COUPONS_KEY, PATH
from encore_retention.webhooks.base import Receiver
from encore_retention.webhooks.woocommerce import store_domain

console = Console(stderr=True)


# ---- recorded deliveries ---------------------------------------------------------------------------


@dataclass
class Recorded:
    """One recorded webhook: enough to send it through the platform's receiver again."""

    platform: str
    shop: str
    topic: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    delivery_id: str | None = None
    source: str = ""


def _receiver(platform: str) -> Receiver:
    receiver = receiver_of(platform)
    if receiver is None:
        raise click.ClickException(f"unknown platform {platform!r} (expected one of: {', '.join(platforms())})")
    return receiver


def installed_platform(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A `--platform` option's value, when a platform of that name is installed."""
    if value is not None and value not in platforms():
        raise click.BadParameter(f"{value!r} is not one of: {', '.join(sorted(platforms()))}")
    return value


def _platform_in(path: Path) -> str | None:
    """The platform a payload file's folder names (`…/shopify/orders_create.json`), if any."""
    return next((name for name in platforms() if name in path.parts), None)


def topic_from_name(platform: str, stem: str) -> str | None:
    """`orders_create` -> `orders/create`, `order_created` -> `order.created`: a payload file's topic."""

    for topic in _receiver(platform).topics:
        if topic.replace("/", "_").replace(".", "_") == stem:
            return str(topic)
    return None


def _default_shop(platform: str) -> str | None:
    with session_scope() as session:
        domains = session.execute(select(Shop.domain).where(Shop.platform == platform, Shop.active.is_(True))).all()
    return domains[0][0] if len(domains) == 1 else None


def read_recorded(
    paths: list[Path], platform: str | None = None, shop: str | None = None, topic: str | None = None
) -> Iterator[Recorded]:
    """Recorded webhooks from JSON-lines exports, payload files, or folders of payload files (sorted)."""
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in (".json", ".jsonl") and p.is_file())
            for file in files:
                found = platform or _platform_in(file)
                if file.suffix == ".json" and not topic and found and topic_from_name(found, file.stem) is None:
                    console.print(f"skipped {file}: no topic Encore handles is named {file.stem!r}")
                    continue
                yield from read_recorded([file], platform, shop, topic)
        elif path.suffix == ".jsonl" or path.name.endswith(".jsonl.txt"):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    body = record["body"]
                    yield Recorded(
                        platform=record["platform"],
                        shop=record["shop"],
                        topic=record["topic"],
                        body=(body if isinstance(body, str) else json.dumps(body)).encode(),
                        headers=record.get("headers") or {},
                        delivery_id=record.get("delivery_id"),
                        source=f"{path}:{number}",
                    )
                except (ValueError, KeyError, TypeError) as exc:
                    raise click.ClickException(f"{path}:{number}: not a recorded webhook ({exc})") from None
        else:
            found = platform or _platform_in(path)
            if found is None:
                folders = " or ".join(f"{name}/" for name in platforms())
                raise click.ClickException(f"{path}: which platform? (put it under {folders}, or pass --platform)")
            name = topic or topic_from_name(found, path.stem)
            if name is None:
                raise click.ClickException(
                    f"{path}: which topic? (name the file like orders_create.json, or pass --topic)"
                )
            domain = shop or _default_shop(found)
            if domain is None:
                raise click.ClickException(f"{path}: which store? pass --shop (the store's domain)")
            yield Recorded(platform=found, shop=domain, topic=name, body=path.read_bytes(), source=str(path))


def archived(
    since: datetime | None, until: datetime | None, platform: str | None, shop: str | None, topic: str | None
) -> Iterator[Recorded]:
    """Recorded webhooks from the archive, oldest first."""

    for row in archive.deliveries(since, until, platform, shop, topic):
        yield Recorded(
            platform=row.platform,
            shop=row.shop,
            topic=row.topic,
            body=row.body.encode(),
            headers=dict(row.headers or {}),
            delivery_id=row.delivery_id,
            source=f"archive #{row.id}",
        )


def events_of(recorded: Recorded) -> list[Event]:
    """The canonical events the platform's receiver makes of a recorded delivery."""

    receiver = _receiver(recorded.platform)
    delivery = receiver.recorded(recorded.shop, recorded.topic, recorded.headers)
    delivery.delivery_id = recorded.delivery_id or delivery.delivery_id
    try:
        payload = json.loads(recorded.body)
    except ValueError as exc:
        raise click.ClickException(f"{recorded.source}: body is not JSON ({exc})") from None
    if not isinstance(payload, dict):  # the receivers answer such a delivery 400 too
        raise click.ClickException(f"{recorded.source}: body is not a JSON object")
    try:
        return list(receiver.parse(delivery, payload, recorded.body))
    except MALFORMED_ERRORS as exc:
        raise click.ClickException(f"{recorded.source}: {recorded.topic}: {problem(exc)}") from None


# ---- encore replay ---------------------------------------------------------------------------------


def _duration(value: str) -> timedelta:
    try:
        return parse_duration(value)
    except (ValueError, TypeError):
        raise click.BadParameter(f"{value!r} is not a duration (like 30m, 2h, 14d)", param_hint="--follow") from None


@click.command()
@click.argument("files", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--archive",
    "from_archive",
    is_flag=True,
    help="replay the archived webhooks instead of files (narrow with --since, --until, --platform, --shop, --topic)",
)
@click.option("--since", help="with --archive: received at or after (YYYY-MM-DD or ISO 8601)")
@click.option("--until", help="with --archive: received before (YYYY-MM-DD or ISO 8601)")
@click.option("--dry-run", is_flag=True, help="rehearse on a copy of the store: write what would happen, send nothing")
@click.option(
    "--as-new",
    is_flag=True,
    help="with --dry-run: rehearse the webhooks as if never received (the real replay skips those already processed)",
)
@click.option(
    "--follow",
    default="90d",
    show_default=True,
    help="with --dry-run: also rehearse the steps after waits, up to this long after now",
)
@click.option("--report", type=click.Path(path_type=Path), help="write what happened (or would) as JSON lines here")
@click.option("--queue", "use_queue", is_flag=True, help="queue the events for the running worker instead")
@click.option("--platform", callback=installed_platform, help="platform of payload files (shopify, woocommerce, …)")
@click.option("--shop", help="store domain of payload files (default: the only store of the platform)")
@click.option("--topic", help="topic of payload files (default: from the file name, e.g. orders_create.json)")
def replay(
    files: tuple[Path, ...],
    from_archive: bool,
    since: str | None,
    until: str | None,
    dry_run: bool,
    as_new: bool,
    follow: str,
    report: Path | None,
    use_queue: bool,
    platform: str | None,
    shop: str | None,
    topic: str | None,
) -> None:
    """Send recorded webhooks (a JSON-lines export, payload files or folders) through the pipeline again.

    Events already processed are recognised and skipped by the ledger, so replaying after an outage
    processes only what was missed. With --dry-run nothing is sent, created or changed, and the
    prediction is the real replay's, duplicates skipped alike; --as-new rehearses them as never seen.
    """

    if bool(files) == from_archive:
        raise click.UsageError("give recorded webhook files, or --archive")
    logs.setup("WARNING")
    migrate()
    if from_archive:
        recorded = list(archived(_when(since, "--since"), _when(until, "--until"), platform, shop, topic))
    else:
        recorded = list(read_recorded(list(files), platform, shop, topic))
    if not recorded:
        raise click.ClickException("no recorded webhooks found")
    if as_new and not dry_run:
        raise click.UsageError("--as-new goes with --dry-run (a real replay never processes an event twice)")
    if dry_run:
        rows = _rehearse(recorded, _duration(follow), as_new)
    else:
        rows = _replay(recorded, use_queue)
    if report:
        with report.open("w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, default=str) + "\n")
        console.print(f"report written to {report}")


def _replay(recorded: list[Recorded], use_queue: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    table = Table("source", "event", "type", "outcome", title="replay")
    for item in recorded:
        for event in events_of(item):
            if use_queue:
                outcome = "queued" if enqueue_event(event) else "duplicate"
            else:
                result = process_event(event.to_dict())
                outcome = "applied" if result["new"] else "already processed"
            rows.append({"source": item.source, "event": event.id, "type": event.type.value, "outcome": outcome})
            table.add_row(item.source, event.id[:24], event.type.value, outcome)
    Console().print(table)
    return rows


def _rehearse(recorded: list[Recorded], follow: timedelta, as_new: bool = False) -> list[dict[str, Any]]:
    """What replaying would do, on a copy of the store: the copy knows what was processed, as the store does."""
    skipped: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="encore-rehearsal-") as folder, rehearsal(Path(folder)) as rehearsed:
        for item in recorded:
            for event in events_of(item):
                if as_new:  # as if never received: a new id, which the copy's ledger has not seen
                    event.id = f"{event.id}-as-new-{uuid.uuid4().hex[:8]}"
                if not process_event(event.to_dict())["new"]:
                    skipped.append(
                        {
                            "at": dates.now().isoformat(),
                            "flow": "",
                            "customer": None,
                            "kind": "already processed",
                            "message": f"{item.source}: {event.type.value} {event.id} (the replay skips it)",
                        }
                    )
        rehearsed.follow(dates.now() + follow)
        rows = skipped + outcome_rows(rehearsed.first_run_id)
        sent = len(list(rehearsed.outbox.glob("*.eml"))) if rehearsed.outbox.exists() else 0
    shown = [
        r
        for r in rows
        if r["kind"]
        in (
            "already processed",
            "start",
            "sent",
            "suppressed",
            "discount",
            "wait",
            "deferred",
            "exit",
            "stop",
            "error",
            "tag",
            "http",
        )
    ]
    table = Table("when (UTC)", "flow", "customer", "what", "detail", title="what would happen (dry run)")
    for row in shown:
        style = {"sent": "green", "suppressed": "yellow", "error": "red"}.get(row["kind"], "")
        table.add_row(
            row["at"][:16].replace("T", " "),
            row["flow"],
            row["customer"] or "",
            row["kind"],
            row["message"],
            style=style,
        )
    Console().print(table)
    seen = f"; {len(skipped)} event(s) already processed, which the replay skips" if skipped else ""
    how = " as new (--as-new: the real replay skips those already processed)" if as_new else ""
    console.print(
        f"{len(recorded)} webhook(s) rehearsed{how}: {sent} email(s) would be sent{seen}; "
        "nothing was sent, created or changed"
    )
    return rows


# ---- encore export webhooks ------------------------------------------------------------------------


@click.group("export")
def export() -> None:
    """Export stored data."""


@export.command("webhooks")
@click.option("--out", "out", type=click.Path(path_type=Path), help="file to write (default: standard output)")
@click.option("--since", help="received at or after (YYYY-MM-DD or ISO 8601)")
@click.option("--until", help="received before (YYYY-MM-DD or ISO 8601)")
@click.option("--platform", callback=installed_platform, help="platform (shopify, woocommerce, …)")
@click.option("--shop", help="store domain")
@click.option("--topic", help="platform topic, e.g. orders/create")
def export_webhooks(
    out: Path | None, since: str | None, until: str | None, platform: str | None, shop: str | None, topic: str | None
) -> None:
    """Write archived webhooks as JSON lines (what `encore replay` reads)."""

    migrate()
    target = out.open("w", encoding="utf-8") if out else sys.stdout
    count = 0
    try:
        for row in archive.deliveries(_when(since, "--since"), _when(until, "--until"), platform, shop, topic):
            target.write(json.dumps(row.to_record()) + "\n")
            count += 1
    finally:
        if out:
            target.close()
    console.print(f"{count} webhook(s) exported" + (f" to {out}" if out else ""))


@export.command("customers")
@click.option("--segment", "segment_name", metavar="NAME", help="only the customers of this segment (default: all)")
@click.option("--output", "output", type=click.Path(dir_okay=False, path_type=Path), help="file (default: stdout)")
@click.option("--store", "store", metavar="DOMAIN", help="only this store's customers (default: every store)")
def export_customers(segment_name: str | None, output: Path | None, store: str | None) -> None:
    """Write customers (a segment's, or all) as CSV; redacted customers are not in the ledger, so never here."""

    segment = None
    if segment_name is not None:
        found = segments.registry().get(segment_name)
        if found is None:
            known = ", ".join(sorted(segments.registry())) or "none"
            raise click.BadParameter(f"no segment {segment_name!r} (known: {known})", param_hint="--segment")
        segment = found.segment
    migrate()
    now = dates.now()
    with session_scope() as session:
        shop_ids = None
        if store is not None:
            shop_ids = list(session.scalars(select(Shop.id).where(Shop.domain == store)))
            if not shop_ids:
                raise click.BadParameter(f"no store {store!r} (see `encore stores list`)", param_hint="--store")
        if output is None:
            for chunk in exports.csv_lines(exports.rows(session, segment, shop_ids, now)):
                sys.stdout.write(chunk)
            return
        total = exports.count(session, segment, shop_ids, now)
        written = 0
        with output.open("w", newline="", encoding="utf-8") as handle, _progress() as progress:
            task = progress.add_task("customers", total=total)
            writer = csv.writer(handle, lineterminator="\r\n")
            writer.writerow(exports.HEADER)
            for row in exports.rows(session, segment, shop_ids, now):
                writer.writerow(row)
                written += 1
                if written % 500 == 0:
                    progress.update(task, completed=written)
            progress.update(task, completed=written, total=max(total, written))
    console.print(f"{written} customer(s) exported to {output}")


def _progress() -> Progress:
    """A progress bar on standard error."""
    return Progress(
        TextColumn("exporting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True
    )


def _when(value: str | None, name: str) -> datetime | None:
    if not value:
        return None

    try:
        parsed = parse_datetime(value if "T" in value else f"{value}T00:00:00+00:00")
    except ValueError:
        parsed = None
    if parsed is None:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD) or an ISO 8601 time", param_hint=name)
    return parsed


# ---- encore samples --------------------------------------------------------------------------------

SAMPLES = resources.folder("encore_retention.core.samples")
SAMPLE_STORE_NAME = "Sample Store"


@click.group()
def samples() -> None:
    """Bundled sample webhooks, for trying Encore."""


def sample_store(url: str) -> tuple[str, str]:
    """Register (once) the sample WooCommerce store served by the sandbox; returns (source URL, webhook secret)."""

    migrate()
    store_url = url.rstrip("/") + PATH
    domain = store_domain(store_url)
    with session_scope() as session:
        shop = get_or_create_shop(session, "woocommerce", domain)
        if not shop.webhook_secret_enc:
            shop.webhook_secret_enc = encrypt(generate_secret())
            shop.installed_at = utcnow()
        if not shop.consumer_key_enc or decrypt(shop.consumer_key_enc) == "ck_sandbox":  # the sandbox checks it
            shop.consumer_key_enc = encrypt(f"ck_{secrets.token_hex(20)}")
            shop.consumer_secret_enc = encrypt(f"cs_{secrets.token_hex(20)}")
        shop.url, shop.name, shop.active = store_url, shop.name or SAMPLE_STORE_NAME, True
        shop.currency, shop.email = shop.currency or "EUR", shop.email or "hello@sample-store.example"
        secret = decrypt(shop.webhook_secret_enc)
    return store_url, secret


SERVING = "serving"  # in the data folder: the address `encore run` serves on, while it runs


def local_url() -> str:
    """Where this machine's Encore answers: APP_URL or PORT when set, else where `encore run` said it serves."""
    settings = get_settings()
    if "APP_URL" not in os.environ and "PORT" not in os.environ:
        serving = settings.DATA_DIR / SERVING
        if serving.is_file() and (found := serving.read_text().strip()):
            return found
    return settings.APP_URL


def _is_encore(answer: requests.Response) -> bool:
    """Whether a /healthz answer is Encore's, not another program's on that port."""
    try:
        found = answer.json()
    except ValueError:
        return False
    return isinstance(found, dict) and "status" in found


BIRTHDAY_LEAD = timedelta(days=14)  # the built-in birthday flow's offset: her birthday falls due the day she is sent


def sample_body(path: Path) -> bytes:
    """A sample webhook's body as posted: a customer's birthday is moved to two weeks from today (keeping the year
    of birth), so that the birthday flow has someone to greet in the walk-through (`encore sweep`)."""
    body = path.read_bytes()
    data = json.loads(body)
    meta = data.get("meta_data") if isinstance(data, dict) else None
    key = get_settings().WOOCOMMERCE_BIRTHDAY_META
    for item in meta or []:
        if isinstance(item, dict) and item.get("key") == key and isinstance(item.get("value"), str):
            born = date.fromisoformat(item["value"])
            due = dates.now().astimezone(dates.zone(None, None)).date() + BIRTHDAY_LEAD
            item["value"] = _born_on(born, due).isoformat()
            return json.dumps(data, indent=2).encode()
    return body


def _born_on(born: date, due: date) -> date:
    """A date of birth in `born`'s year whose birthday is `due` (29 February moves to the 28th in other years)."""
    try:
        return due.replace(year=born.year)
    except ValueError:
        return due.replace(year=born.year, day=28)


@samples.command("send")
@click.option("--url", default=None, help="where Encore runs (default: APP_URL, else where `encore run` serves)")
def samples_send(url: str | None) -> None:
    """Sign and post the bundled sample webhooks to a running Encore (through a sandbox WooCommerce store)."""

    url = (url or local_url()).rstrip("/")
    store_url, secret = sample_store(url)
    try:
        health = requests.get(f"{url}/healthz", timeout=10)
    except requests.RequestException as exc:
        raise click.ClickException(
            f"Encore does not answer at {url} ({type(exc).__name__}); is `make run` running?"
        ) from None
    if not _is_encore(health):
        raise click.ClickException(f"something other than Encore answers at {url}: pass --url (or set PORT)")
    files = sorted((SAMPLES / "woocommerce").glob("*.json"))
    if not files:
        raise click.ClickException(f"no samples in {SAMPLES}")
    for path in files:
        topic = topic_from_name("woocommerce", path.stem.split("-", 1)[-1])
        if topic is None:
            continue
        body = sample_body(path)
        headers = woocommerce_headers(body, topic, secret, store_url)
        try:
            response = requests.post(f"{url}/webhooks/woocommerce", data=body, headers=headers, timeout=15)
        except requests.RequestException as exc:
            raise click.ClickException(
                f"Encore does not answer at {url} ({type(exc).__name__}); is `make run` running?"
            ) from None
        answer = response.json().get("status") or response.json().get("error") if response.content else ""
        click.echo(f"{path.name}: {topic} -> HTTP {response.status_code} {answer}")
        if response.status_code != 200:
            raise click.ClickException(f"{path.name} was refused: {response.text[:300]}")
    click.echo(f"done: open {url}/admin (emails: Messages, and the outbox folder)")


@samples.command("forget")
@click.option("--url", default=None, help="where Encore runs (default: APP_URL)")
def samples_forget(url: str | None) -> None:
    """Remove the sample store and everything it brought (customers, orders, runs, archived webhooks)."""

    migrate()
    domain = store_domain((url or local_url()).rstrip("/") + PATH)
    with session_scope() as session:
        shop = session.execute(select(Shop).where(Shop.platform == "woocommerce", Shop.domain == domain)).scalar()
        if shop is None:
            raise click.ClickException(f"no sample store {domain} (see `encore stores list`)")
        session.execute(delete(EventRecord).where(EventRecord.shop_id == shop.id))
        session.execute(
            delete(archive.WebhookDelivery).where(
                archive.WebhookDelivery.platform == "woocommerce", archive.WebhookDelivery.shop == domain
            )
        )
        session.delete(shop)
    try:
        get_redis().delete(COUPONS_KEY)
    except Exception:  # noqa: BLE001 - Redis down: the coupons expire with it
        pass
    click.echo(f"sample store {domain} removed")


def _simulate_command() -> click.Command:
    return simulate


COMMANDS: list[click.Command] = [replay, export, samples, _simulate_command()]
