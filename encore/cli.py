"""The `encore` command line: run the product, its processes, and the marketers' and operators' tools."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import click

from encore import logs
from encore.settings import get_settings


@click.group()
@click.version_option(package_name="encore")
def main() -> None:
    """Encore: retention automation for Shopify and WooCommerce stores."""


@main.command()
@click.option("--port", default=lambda: int(os.environ.get("PORT", "8000")), show_default="8000 or $PORT")
@click.option("--workers", default=2, show_default=True, help="gunicorn worker processes")
def run(port: int, workers: int) -> None:
    """Run web, worker and cron together (embedded Redis when REDIS_URL is unset)."""
    from encore.queue import redis_url
    from encore.store import migrate

    logs.setup()
    settings = get_settings()
    env = dict(os.environ)
    env["REDIS_URL"] = redis_url()  # starts the embedded server if needed; children share it
    env.setdefault("ENCORE_DATA_DIR", str(settings.DATA_DIR))
    env.setdefault("SECRET_KEY", settings.secret_key)
    metrics_dir = settings.data_path("metrics")  # every process counts here; /metrics adds them up
    metrics_dir.mkdir(exist_ok=True)
    for stale in metrics_dir.glob("*.db"):
        stale.unlink()
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    migrate()
    commands = {
        "web": [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--bind", f"0.0.0.0:{port}",
                "--access-logfile", "-", "webhooks:create_app()"],
        "worker": [sys.executable, "-m", "encore.cli", "worker"],
        "cron": [sys.executable, "-m", "encore.cli", "cron"],
    }
    children = {name: subprocess.Popen(cmd, env=env) for name, cmd in commands.items()}
    click.echo(f"Encore is running on http://localhost:{port} (Ctrl-C stops it)", err=True)

    def stop(*_args: object) -> None:
        for child in children.values():
            if child.poll() is None:
                child.terminate()

    signal.signal(signal.SIGTERM, stop)
    try:
        while all(child.poll() is None for child in children.values()):
            time.sleep(0.5)
        failed = [name for name, child in children.items() if child.poll() not in (None, 0)]
        if failed:
            click.echo(f"stopped because {', '.join(failed)} exited", err=True)
    except KeyboardInterrupt:
        pass
    finally:
        stop()
        for child in children.values():
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()


@main.command()
@click.option("--burst", is_flag=True, help="drain the queues, then exit")
def worker(burst: bool) -> None:
    """Run the RQ worker with its scheduler."""
    import worker as worker_module

    worker_module.main(burst=burst)


@main.command()
def cron() -> None:
    """Run RQ's cron scheduler for date triggers and periodic jobs."""
    from encore.cron import build_scheduler
    from encore.queue import get_redis

    logs.setup()
    build_scheduler(get_redis()).start()


@main.command()
def migrate() -> None:
    """Bring the database to the newest schema."""
    from encore.store import migrate as run_migrations

    run_migrations()
    click.echo("database is up to date")


def _register_room_commands() -> None:
    """Add the command groups each room contributes (flows, stores, import, …)."""
    from connectors.cli import COMMANDS as connector_commands
    from encore.tools import COMMANDS as tool_commands
    from flows.cli import COMMANDS as flow_commands

    for command in (*flow_commands, *connector_commands, *tool_commands):
        main.add_command(command)


_register_room_commands()

if __name__ == "__main__":
    main()
