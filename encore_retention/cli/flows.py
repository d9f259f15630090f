"""The marketers' commands: `encore flows lint|schema|preview|test-send|runs|pause|resume|cancel|actions`, `sweep`."""

from __future__ import annotations

import getpass
import json
import sys
from datetime import date, timedelta
from pathlib import Path

import click
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from encore_retention.connectors.base import PlatformError
from encore_retention.core.store import migrate, session_scope
from encore_retention.core.store.models import Customer, Shop
from encore_retention.flows import controls, dates, loader, segments, trial
from encore_retention.flows import preview as previews
from encore_retention.flows.engine import release, trace_of
from encore_retention.flows.models import FlowRun
from encore_retention.flows.render import format_money
from encore_retention.flows.results import BranchResult, branch_results, by_split
from encore_retention.flows.schema import json_schema
from encore_retention.flows.triggers import sweep as run_sweep


@click.group()
def flows() -> None:
    """Work with flow files."""


@flows.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
def lint(paths: tuple[Path, ...]) -> None:
    """Check flow files and the segments beside them (default: FLOWS_DIR or the built-in library); exit 1 on errors."""
    targets = list(paths) or [loader.flows_dir()]
    problems: list[loader.Problem] = []
    count = segment_count = 0
    for target in targets:
        if not target.is_dir() and target.parent.name == segments.FOLDER:  # one segment file
            segment_count += 1
            problems.extend(segments.load_file(target)[1])
            continue
        files = loader.flow_files(target) if target.is_dir() else [target]
        for path in files:
            count += 1
            problems.extend(loader.load_file(path)[1])
        if target.is_dir():  # the segments beside the flows, and the flows' segment('name') references
            found, more = segments.lint(target)
            segment_count += found
            problems.extend(more)
    for problem in problems:
        click.echo(str(problem))
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    beside = f" (with {segment_count} segment file(s))" if segment_count else ""
    click.echo(f"{count} flow file(s): {errors} error(s), {warnings} warning(s){beside}", err=True)
    sys.exit(1 if errors else 0)


@flows.command()
def schema() -> None:
    """Print the JSON Schema of a flow file (for editors)."""

    click.echo(json.dumps(json_schema(), indent=2))


@flows.command()
@click.argument("flow")
@click.option(
    "--customer",
    "customer_file",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="a JSON or YAML file of customer fields (optionally with order, checkout, shop)",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("previews"),
    show_default=True,
    help="folder for the HTML (and .txt) files",
)
def preview(flow: str, customer_file: Path, out: Path) -> None:
    """Render a flow's emails for a sample customer to HTML files (nothing is sent or created)."""

    path = Path(flow)
    if not path.exists():
        path = loader.flows_dir() / (flow if flow.endswith((".yaml", ".yml")) else f"{flow}.yaml")
    if not path.exists():
        raise click.ClickException(f"no flow {flow!r} (a file, or a name in {loader.flows_dir()})")
    loaded, problems = loader.load_file(path)
    for problem in problems:
        click.echo(str(problem), err=True)
    if loaded is None:
        sys.exit(1)
    try:
        data = previews.sample(customer_file)
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    rendered = previews.render_flow(loaded, data)
    for written, item in zip(previews.write(rendered, loaded.key, out), rendered, strict=True):
        click.echo(f"{written}  ({item.step}: {item.subject}; version {item.version})")
    if not rendered:
        click.echo("this flow sends no email", err=True)


@flows.command()
@click.option("--customer", "email", help="only this customer's runs (email address)")
@click.option("--flow", "flow_key", help="only this flow's runs (its file name without .yaml)")
@click.option("--status", help="only runs in this status (waiting, done, suppressed, exited, failed…)")
@click.option("--limit", default=20, show_default=True)
def runs(email: str | None, flow_key: str | None, status: str | None, limit: int) -> None:
    """Show recent flow runs with their traces: what was sent, and why something was not."""

    with session_scope() as session:
        stmt = select(FlowRun, Customer.email).outerjoin(Customer, Customer.id == FlowRun.customer_id)
        if email:
            stmt = stmt.where(func.lower(Customer.email) == email.strip().lower())
        if flow_key:
            stmt = stmt.where(FlowRun.flow_key == flow_key)
        if status:
            stmt = stmt.where(FlowRun.status == status)
        found = session.execute(stmt.order_by(FlowRun.id.desc()).limit(limit)).all()
        for run, address in found:
            click.echo(
                f"run {run.id} {run.flow_key} · {address or '-'} · {run.status}"
                f"{' (' + run.reason + ')' if run.reason else ''} · started {run.started_at:%Y-%m-%d %H:%M}Z"
                f"{' · wakes ' + format(run.wake_at, '%Y-%m-%d %H:%M') + 'Z' if run.wake_at else ''}"
                f"{held_since(run)}"
            )
            for line in trace_of(session, run.id):
                click.echo(f"    {line.at:%Y-%m-%d %H:%M} {line.step or '':<18} {line.kind:<10} {line.message}")
        if not found:
            click.echo("no runs", err=True)
        shop_ids = list(session.scalars(select(Shop.id)))
        for key in [flow_key] if flow_key else sorted({run.flow_key for run, _ in found}):
            flow_file = loader.registry().flows.get(key)
            since = dates.now() - RESULTS_WINDOW
            results = branch_results(session, shop_ids, key, since, flow_file.flow if flow_file else None)
            for text in branch_table(key, results):
                click.echo(text)


RESULTS_WINDOW = timedelta(days=30)  # `flows runs` shows split results over this long, as the flows page does
BRANCH_COLUMNS = ("branch", "share", "runs", "sent", "codes", "redeemed", "revenue")


def branch_table(flow_key: str, results: list[BranchResult]) -> list[str]:
    """A flow's A/B split results as text lines: per split, a row per branch (none when it has no split)."""
    lines = []
    for split, branches in by_split(results).items():
        rows = [BRANCH_COLUMNS] + [
            (
                r.branch,
                r.share_text or "-",
                str(r.runs),
                str(r.emails),
                str(r.codes),
                str(r.redeemed),
                format_money(r.revenue, r.currency),
            )
            for r in branches
        ]
        widths = [max(len(row[column]) for row in rows) for column in range(len(BRANCH_COLUMNS))]
        lines.append(f"A/B split {flow_key} {split}, last {RESULTS_WINDOW.days} days:")
        for row in rows:
            cells = [
                cell.ljust(width) if column == 0 else cell.rjust(width)
                for column, (cell, width) in enumerate(zip(row, widths, strict=True))
            ]
            lines.append("    " + "  ".join(cells))
    return lines


def held_since(run: FlowRun) -> str:
    """` · email held back since …` for a run whose email waits for quiet hours or the frequency cap to end."""
    if run.status != "waiting" or run.deferred_since is None:
        return ""
    return f" · email held back since {run.deferred_since:%Y-%m-%d %H:%M}Z"


@flows.command("test-send")
@click.argument("flow")
@click.option("--to", "to", required=True, help="the address the test goes to (yours)")
@click.option("--customer", "which", help="a customer (id, platform id or email) or a JSON/YAML file of fields")
@click.option("--step", help="only the email at this step (2, or a label like steps[2].then[0]; default: every email)")
@click.option(
    "--real-codes",
    is_flag=True,
    help="make real discount codes in the store (titled as tests, for --to's address where the platform can)",
)
def test_send(flow: str, to: str, which: str | None, step: str | None, real_codes: bool) -> None:
    """Send a flow's emails, rendered as for a customer, to your own address, marked as a test.

    Nothing is recorded: no run, no frequency cap. A code shows as a placeholder, unless --real-codes
    is given: then the store makes it, marked in its title as a test, restricted to --to's address where
    the platform restricts codes by address (WooCommerce), never to the customer.
    """
    migrate()
    flow_file = loader.registry().flows.get(flow)
    if flow_file is None:
        loaded = ", ".join(sorted(loader.registry().flows)) or "none"
        raise click.BadParameter(f"no flow {flow!r} (loaded: {loaded})", param_hint="FLOW")
    with session_scope() as session:
        if which and Path(which).is_file():
            try:
                sample = trial.sample_for(session, fields=previews.sample(Path(which)))
            except (ValueError, OSError) as exc:
                raise click.BadParameter(str(exc), param_hint="--customer") from None
        else:
            customer = trial.find_customer(session, which) if which else None
            if which and customer is None:
                raise click.BadParameter(f"no customer {which!r} (an id, a platform id, an email or a file)")
            sample = trial.sample_for(session, customer)
    try:
        sent = trial.send_tests(flow_file, to, sample.data, step, sample.shop, codes=real_codes)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    except PlatformError as exc:
        raise click.ClickException(f"the store did not make the test code, nothing was sent: {exc.message}") from None
    for item in sent:
        made = f" (real code {', '.join(item.codes)}, a test)" if item.codes else ""
        click.echo(f"sent to {to}: step {item.step}: {item.subject}{made}")


def _actor() -> str:
    """Who acts from the command line: `cli:` and the operating system's user."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _known_flow(session: Session, name: str) -> str:
    """A flow's key, when it is loaded or has runs; a clear error otherwise."""
    loaded = loader.registry().flows
    if name in loaded or session.execute(select(FlowRun.id).where(FlowRun.flow_key == name).limit(1)).first():
        return name
    raise click.BadParameter(f"no flow {name!r} (loaded: {', '.join(sorted(loaded)) or 'none'})", param_hint="NAME")


@flows.command()
@click.argument("name")
@click.option("--reason", help="why, for the record")
def pause(name: str, reason: str | None) -> None:
    """Pause a flow: new entries are held or skipped (its `when_paused`), waiting runs stay where they are."""
    migrate()
    with session_scope() as session:
        key = _known_flow(session, name)
        changed = controls.pause(session, key, _actor(), reason)
    click.echo(f"{key}: paused" if changed else f"{key} was paused already")


@flows.command()
@click.argument("name")
@click.option("--reason", help="why, for the record")
def resume(name: str, reason: str | None) -> None:
    """Resume a paused flow: the runs it held go on now."""
    migrate()
    with session_scope() as session:
        key = _known_flow(session, name)
        released = controls.resume(session, key, _actor(), reason)
    release(released)
    click.echo(f"{key}: running ({len(released)} held run(s) released)")


@flows.command()
@click.argument("name")
@click.option("--run", "run_id", type=int, help="only this run (its id, from `encore flows runs`)")
@click.option("--reason", required=True, help="why: kept on each run and in the record")
def cancel(name: str, run_id: int | None, reason: str) -> None:
    """Cancel one run of a flow, or all its waiting and held runs."""
    migrate()
    with session_scope() as session:
        key = _known_flow(session, name)
        ended = controls.cancel(session, key, _actor(), reason, run_id)
    if run_id is not None and not ended:
        raise click.ClickException(
            f"run {run_id} of {key} is not waiting or held (see `encore flows runs --flow {key}`)"
        )
    click.echo(f"{key}: {len(ended)} run(s) cancelled")


@flows.command()
@click.argument("name", required=False)
@click.option("--limit", default=20, show_default=True)
def actions(name: str | None, limit: int) -> None:
    """What was done to the flows by hand: who, when, why."""
    migrate()
    with session_scope() as session:
        for action in controls.actions(session, name, limit):
            runs = f" ({action.runs} run(s){', run ' + str(action.run_id) if action.run_id else ''})"
            why = f": {action.reason}" if action.reason else ""
            click.echo(f"{action.at:%Y-%m-%d %H:%M}Z {action.actor} {action.action} {action.flow_key}{runs}{why}")


@click.command()
@click.option("--date", "day", metavar="YYYY-MM-DD", help="run the date triggers due on this local day now")
def sweep(day: str | None) -> None:
    """Queue the date-triggered runs due now (or on --date, to catch up after downtime); idempotent."""

    if day:
        try:
            date.fromisoformat(day)
        except ValueError:
            raise click.BadParameter(f"{day!r} is not a date (YYYY-MM-DD)", param_hint="--date") from None
    counts = run_sweep(day)
    click.echo(f"{counts['due']} due, {counts['queued']} queued")


COMMANDS: list[click.Command] = [flows, sweep]
