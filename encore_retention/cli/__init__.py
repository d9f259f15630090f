"""The `encore` command line: run the product, its processes, and the marketers' and operators' tools."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import click

from encore_retention import worker as worker_module
from encore_retention.cli.flows import COMMANDS as flow_commands
from encore_retention.cli.stores import COMMANDS as store_commands
from encore_retention.core import logs
from encore_retention.core.access import LINK_MAX_AGE, sign_in_url
from encore_retention.core.queue import get_redis, redis_url
from encore_retention.core.settings import get_settings
from encore_retention.core.store import migrate as run_migrations
from encore_retention.cron import build_scheduler
from encore_retention.tools import COMMANDS as tool_commands
from encore_retention.tools import SERVING
from encore_retention.web.server import gunicorn_options

# gunicorn's default access line without the query string: sign-in tokens and OAuth codes ride in it.
ACCESS_LOG_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(f)s" "%(a)s"'


@click.group()
@click.version_option(package_name="encore-retention")
def main() -> None:
    """Encore: retention automation for Shopify and WooCommerce stores."""


@main.command()
@click.option("--port", default=lambda: int(os.environ.get("PORT", "8000")), show_default="8000 or $PORT")
@click.option("--workers", default=2, show_default=True, help="gunicorn worker processes")
def run(port: int, workers: int) -> None:
    """Run web, worker and cron together (embedded Redis when REDIS_URL is unset)."""

    logs.setup()
    settings = get_settings()
    env = dict(os.environ)
    env["PORT"] = str(port)  # with APP_URL unset, the children's links and sample webhooks go to this port
    env["REDIS_URL"] = redis_url()  # starts the embedded server if needed; children share it
    env.setdefault("ENCORE_DATA_DIR", str(settings.DATA_DIR))
    env.setdefault("SECRET_KEY", settings.secret_key)
    metrics_dir = settings.data_path("metrics")  # every process counts here; /metrics adds them up
    metrics_dir.mkdir(exist_ok=True)
    for stale in metrics_dir.glob("*.db"):
        stale.unlink()
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    run_migrations()
    commands = {
        "web": [
            sys.executable,
            "-m",
            "gunicorn",
            *gunicorn_options(workers),
            "--bind",
            f"0.0.0.0:{port}",
            "--access-logfile",
            "-",
            "--access-logformat",
            ACCESS_LOG_FORMAT,
            "encore_retention.webhooks:create_app()",
        ],
        "worker": [sys.executable, "-m", "encore_retention.cli", "worker"],
        "cron": [sys.executable, "-m", "encore_retention.cli", "cron"],
    }
    supervisor = Supervisor(commands, env)
    serving = settings.data_path(SERVING)  # `encore samples send` in another terminal finds this port
    serving.write_text(f"http://localhost:{port}\n")
    click.echo(f"Encore is running on http://localhost:{port} (Ctrl-C stops it)", err=True)
    if not settings.ADMIN_PASSWORD:
        click.echo(
            f"Admin page, one sign-in within {LINK_MAX_AGE // 60} minutes: "
            f"{sign_in_url(f'http://localhost:{port}')}\n"
            "  (`encore admin link` prints another; set ADMIN_PASSWORD to sign in with a password)",
            err=True,
        )
    signal.signal(signal.SIGTERM, lambda *_args: supervisor.stop())
    try:
        supervisor.run()
    except KeyboardInterrupt:
        pass
    finally:
        supervisor.stop()
        serving.unlink(missing_ok=True)


class Supervisor:
    """`encore run`'s children: each started again (with backoff) when it dies, until stopped.

    A child that exits is logged with its exit status and started again after a delay that doubles
    while it keeps dying young (1 s up to 30 s), and resets once it has lived a minute.
    """

    RESTART_MIN, RESTART_MAX, HEALTHY_AFTER = 1.0, 30.0, 60.0

    def __init__(self, commands: dict[str, list[str]], env: dict[str, str]) -> None:
        self.commands, self.env = commands, env
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.started: dict[str, float] = {}
        self.delay = {name: self.RESTART_MIN for name in commands}
        self.due: dict[str, float] = {}
        self.stopping = False
        for name in commands:
            self._start(name)

    def _start(self, name: str) -> None:
        self.children[name] = subprocess.Popen(self.commands[name], env=self.env)
        self.started[name] = time.monotonic()

    def run(self) -> None:
        """Watch the children until `stop`."""
        log = logging.getLogger("encore.run")
        while not self.stopping:
            now = time.monotonic()
            for name, child in self.children.items():
                code = child.poll()
                if code is None or name in self.due:
                    continue
                lived = now - self.started[name]
                if lived >= self.HEALTHY_AFTER:
                    self.delay[name] = self.RESTART_MIN
                self.due[name] = now + self.delay[name]
                log.error(
                    "%s exited with status %s after %.0f s; starting it again in %.0f s",
                    name,
                    code,
                    lived,
                    self.delay[name],
                    extra={"child": name, "status": code},
                )
                self.delay[name] = min(self.delay[name] * 2, self.RESTART_MAX)
            for name, when in list(self.due.items()):
                if when <= now and not self.stopping:
                    del self.due[name]
                    self._start(name)
                    log.info("%s started again", name, extra={"child": name})
            time.sleep(0.2)

    def stop(self) -> None:
        """Ask every child to stop (SIGTERM: the worker finishes its job), then wait; kill what won't stop."""
        self.stopping = True
        for child in self.children.values():
            if child.poll() is None:
                child.terminate()
        for child in self.children.values():
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()


@main.command()
@click.option("--burst", is_flag=True, help="drain the queues, then exit")
def worker(burst: bool) -> None:
    """Run the RQ worker with its scheduler."""

    worker_module.main(burst=burst)


@main.command()
def cron() -> None:
    """Run RQ's cron scheduler for date triggers and periodic jobs."""

    logs.setup()
    build_scheduler(get_redis()).start()


@main.group()
def admin() -> None:
    """Signing in to the admin page."""


@admin.command("link")
@click.option("--url", default=None, help="where your browser reaches Encore (default: APP_URL)")
def admin_link(url: str | None) -> None:
    """Print a one-time sign-in link to /admin (one use, within 15 minutes; needs the server's SECRET_KEY)."""

    click.echo(sign_in_url(url or get_settings().APP_URL))


@main.command()
def migrate() -> None:
    """Bring the database to the newest schema."""

    run_migrations()
    click.echo("database is up to date")


def _register_area_commands() -> None:
    """Add the command groups of each area (flows, stores, import, privacy, replay, …)."""

    for command in (*flow_commands, *store_commands, *tool_commands):
        main.add_command(command)


_register_area_commands()
