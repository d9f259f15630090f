"""Fault-injection soak: under worker kills, a Redis restart and deferring mail, no email lost, none sent twice.

    .venv/bin/python bench/soak.py [--orders 3000] [--rate 200] [--no-faults] [--json]

It runs the product as a Procfile platform would, from the repository root with the virtualenv's
executables: `encore migrate` (the release step), then the Procfile's `web` (bound to 127.0.0.1 on a
free port), `worker` and `cron`, against
- its own redis-server on a free port (`--appendonly yes --appendfsync everysec --save ''`, in a
  temporary folder), not the shared one;
- a fresh SQLite file (or, with `--database-url postgresql://…`, a fresh database created on that
  server and dropped afterwards);
- a mail server in this process (aiosmtpd, bench/_soak_smtp.py) that answers `451 4.3.0 try again
  later` to `--defer-rate` (20 %) of the first attempts of each message and accepts every retry;
- one flow: a transactional "thank you for your first order" on `order.placed` with
  `customer.orders_count == 1`, `once_per_customer`, one `send_email` without a wait;
- a WooCommerce store registered with `encore stores add woocommerce … --no-verify`.
Outbound HTTP of the processes goes to a proxy address on 127.0.0.1 where nothing listens (the
WooCommerce reconciliation job can't reach the example store), so all traffic stays on this machine.

The load (bench/_soak_load.py): `--orders` signed first orders of distinct new customers, half
Shopify `orders/create` and half WooCommerce `order.created`, plus `--redeliver` (10 %) exact
re-deliveries, shuffled, at `--rate` per second from `--concurrency` threads. A 503 or a failed
connection is retried as platforms do (0.5 s doubling to 5 s, up to 30 attempts); 2xx is done; any
other answer is final and counted as unexpected.

Faults, spread over the load by its progress (by default at 25 %, 50 % and 75 % of the deliveries
sent): the worker SIGKILLed with its process group (its RQ scheduler child too, as a platform stopping
a container does; `--kill-scope process` kills the worker process alone) and restarted a second
later (twice, `--worker-kills`), and Redis shut down with SHUTDOWN (the AOF kept) and started again
on the same port and folder `--redis-outage` seconds later (once, `--redis-restarts`). Faults run one
after the other, so at a small N and a high rate the later ones fall after the last delivery (the
report says which were under way while deliveries were still being sent). A process that exits on
its own is restarted too, as a platform would, and reported. `--no-faults` runs a baseline without
any (451s included: set `--defer-rate 0` for none of those either).

Then it waits until every customer's email is accepted, or `--drain-timeout` seconds, printing
progress every 10 s, and reports: orders, deliveries, answers by status, unexpected 5xx (500-599
except 503) and 4xx, lost (customers with no accepted email), duplicates (customers with more than
one distinct Message-ID accepted), the customers to whom one Message-ID was accepted twice (a
re-sent copy: Encore gives every attempt of one email the same Message-ID, so this is where a
resend shows; `--strict` makes it fail the run too), failed RQ jobs, scheduled jobs left overdue and
the scheduler locks, the ledger (orders and customers in the database equal to N), and the
webhook-to-email latency (from the webhook's first 2xx to the mail server's 250) for the orders
whose first request was sent outside the fault windows (a fault's window: from its start until
Redis answers again, or the restarted worker is registered with RQ), leaving out messages deferred
on their first attempt; also for the orders no fault touched at all. For each lost email it
looks up where its order stopped (Redis job and body, ledger, flow run, email claim, trace) and
groups them; it also counts the error lines of each process's log.

Exit status 0 when lost, duplicates and unexpected 5xx are all 0; 1 otherwise; 2 when the soak itself
could not run. The temporary folder is removed at the end; when the run fails, the process logs
(and the SQLite file) are kept and their folder printed. `--root DIR` runs another copy of the
product (e.g. `git archive <commit> | tar -x -C DIR`) with this soak, to measure one commit while
the working tree changes, or to compare two.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT)]

from _load import percentile  # noqa: E402 - bench/ is on the path now
from _soak_load import WOO_URL, Delivery, Order, Sender, build_orders, deliveries  # noqa: E402
from _soak_smtp import MailServer  # noqa: E402

SHOPIFY_SECRET = "shpss_soak_secret_0123456789abcdef"
WOO_SECRET = "wc-soak-webhook-secret"
QUEUES = ("events", "flows", "maintenance")
OVERDUE = 30.0  # seconds past its time after which a scheduled job counts as overdue (no scheduler moved it)
FLOW = """\
name: Thank you for your first order
kind: transactional
trigger:
  event: order.placed
conditions:
  - customer.orders_count == 1
entry:
  once_per_customer: true
steps:
  - send_email:
      template: thank_you_first_order.html
      subject: "Thank you, {{ customer.first_name or 'friend' }}!"
"""
# Settings the processes must not inherit from the calling shell: the soak sets its own.
INHERITED_NOT = (
    "SHOPIFY_",
    "REDIS_",
    "DATABASE_",
    "ENCORE_",
    "WOOCOMMERCE_",
    "EMAIL_",
    "FLOWS_",
    "TEMPLATES_",
    "PROMETHEUS_",
    "APP_URL",
    "SECRET_KEY",
    "ADMIN_",
    "WEBHOOK_",
    "DEDUPE_",
    "DEFAULT_TIMEZONE",
    "PORT",
    "RQ_",
    "PYTHONPATH",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def venv_bin() -> Path:
    """The virtualenv's bin folder: the repository's .venv, else this interpreter's."""
    local = ROOT / ".venv" / "bin"
    return local if (local / "python").exists() else Path(sys.executable).parent


def procfile(root: Path) -> dict[str, str]:
    """The Procfile's processes: name -> command."""
    result = {}
    for line in (root / "Procfile").read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() and not name.startswith("#"):
            result[name.strip()] = command.strip()
    return result


class Say:
    """Progress lines: to stdout, or to stderr when stdout carries the JSON figures."""

    def __init__(self, to_stderr: bool) -> None:
        self.stream = sys.stderr if to_stderr else sys.stdout
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f}s] {message}", file=self.stream, flush=True)


# ---- processes -------------------------------------------------------------------------------------


class Process:
    """One Procfile process run through `sh -c 'exec …'` in its own process group, its output in a log file."""

    def __init__(self, name: str, command: str, env: dict[str, str], log: Path) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.log = log
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.groups: list[int] = []  # every process group it ran as (a child may outlive its parent)

    def start(self) -> None:
        """Start it (again)."""
        self.starts += 1
        with self.log.open("ab") as output:
            output.write(
                f"---- soak: start #{self.starts} of {self.name} at {time.time():.3f}: {self.command}\n".encode()
            )
            output.flush()
            self.popen = subprocess.Popen(
                ["sh", "-c", f"exec {self.command}"],
                cwd=self.env["PYTHONPATH"],
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.groups.append(self.popen.pid)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def exit_code(self) -> int | None:
        """None while it runs (or was never started), else its exit status."""
        return self.popen.poll() if self.popen is not None else None

    def signal(self, sig: int, group: bool = True) -> None:
        """Send `sig` to its whole process group (or to the process alone)."""
        if self.popen is not None and self.popen.poll() is None:
            try:
                if group:
                    os.killpg(self.popen.pid, sig)
                else:
                    self.popen.send_signal(sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; waits for it."""
        if self.popen is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.popen.wait(10)
        for group in self.groups:  # whatever of its groups outlived it
            try:
                os.killpg(group, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class Supervisor:
    """Keeps the processes up as a platform does: one that exits on its own is recorded and restarted."""

    def __init__(self, say: Callable[[str], None], crash_delay: float) -> None:
        self.say = say
        self.crash_delay = crash_delay
        self.processes: dict[str, Process] = {}
        self.held: set[str] = set()  # down on purpose (a fault in progress)
        self.restart_at: dict[str, float] = {}
        self.unexpected_exits: list[dict[str, Any]] = []
        self.lock = threading.RLock()

    def add(self, process: Process) -> None:
        """Start a process and watch it."""
        with self.lock:
            self.processes[process.name] = process
            process.start()

    def kill(self, name: str, group: bool = True) -> int | None:
        """SIGKILL a process, with its process group or alone (the fault); it stays down until `restart`."""
        with self.lock:
            process = self.processes[name]
            self.held.add(name)
            pid = process.pid
            process.signal(signal.SIGKILL, group=group)
            if process.popen is not None:
                process.popen.wait(10)
            return pid

    def restart(self, name: str) -> None:
        """Start a killed process again."""
        with self.lock:
            self.held.discard(name)
            self.restart_at.pop(name, None)
            self.processes[name].start()

    def poll(self) -> None:
        """Restart what is due; record and schedule a restart for what exited on its own."""
        now = time.monotonic()
        with self.lock:
            for name, process in self.processes.items():
                if name in self.held:
                    continue
                due = self.restart_at.get(name)
                if due is not None:
                    if now >= due:
                        del self.restart_at[name]
                        self.say(f"restarting {name} after it exited")
                        process.start()
                    continue
                code = process.exit_code()
                if code is not None:
                    self.unexpected_exits.append({"process": name, "exit_code": code, "at": time.time()})
                    self.say(f"{name} exited on its own (exit status {code}); restarting it in {self.crash_delay:g} s")
                    self.restart_at[name] = now + self.crash_delay

    def stop_all(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL)."""
        with self.lock:
            self.held.update(self.processes)
            for process in self.processes.values():
                process.signal(signal.SIGTERM)
            for process in self.processes.values():
                process.stop()


class RedisServer:
    """The soak's own redis-server: AOF on (fsync every second), no RDB snapshots."""

    def __init__(self, binary: str, port: int, folder: Path, log: Path) -> None:
        self.binary = binary
        self.port = port
        self.folder = folder
        self.log = log
        self.popen: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, timeout: float = 2.0):  # type: ignore[no-untyped-def]
        """A new connection to it."""
        from redis import Redis

        return Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=timeout, socket_timeout=timeout)

    def start(self, timeout: float = 20.0) -> None:
        """Start the server and wait until it answers PING (with its AOF loaded)."""
        command = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.folder),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
        ]
        with self.log.open("ab") as output:
            self.popen = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.popen.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.popen.returncode}; see {self.log}")
            try:
                if self.client(0.5).ping():
                    return
            except Exception:  # noqa: BLE001 - not up yet (or still loading its AOF)
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer in {timeout:g} s; see {self.log}")
            time.sleep(0.05)

    def shutdown(self, timeout: float = 20.0) -> None:
        """SHUTDOWN (Redis flushes and fsyncs the AOF), then wait for the process; SIGTERM if it lingers."""
        try:  # one plain SHUTDOWN, not retried by a client library: the server closes the connection
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                sock.sendall(b"*1\r\n$8\r\nSHUTDOWN\r\n")
                answer = sock.recv(1024)
            if answer:  # an error reply: it did not shut down
                raise RuntimeError(f"SHUTDOWN answered {answer!r}")
        except (OSError, RuntimeError):
            if self.popen is not None and self.popen.poll() is None:
                self.popen.terminate()  # SIGTERM: the same orderly shutdown
        if self.popen is not None:
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.terminate()
                self.popen.wait(10)

    def stop(self) -> None:
        """End the server for good (no save): SIGTERM, SIGKILL if it lingers."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


# ---- the soak --------------------------------------------------------------------------------------


class Soak:
    """One soak run: sets everything up, sends the load with its faults, drains, measures, cleans up."""

    def __init__(self, args: argparse.Namespace, say: Say) -> None:
        self.args = args
        self.say = say
        self.root = Path(args.root).resolve()
        self.tmp = Path(tempfile.mkdtemp(prefix="encore-soak-"))
        self.logs = self.tmp / "logs"
        self.logs.mkdir()
        self.run_id = uuid.uuid4().hex[:6]
        self.redis: RedisServer | None = None
        self.mail: MailServer | None = None
        self.supervisor = Supervisor(say, args.crash_restart_delay)
        self.sender: Sender | None = None
        self.database_url = ""
        self.pg_drop: Callable[[], None] | None = None
        self.env: dict[str, str] = {}
        self.windows: list[dict[str, Any]] = []  # the faults: kind, start, end (time.time())
        self.fault_errors: list[str] = []
        self.stop_event = threading.Event()
        self.orders: list[Order] = []
        self.items: list[Delivery] = []

    # -- set-up ------------------------------------------------------------------------------------
    def setup_database(self) -> None:
        """A fresh SQLite file, or a fresh PostgreSQL database on the server of --database-url."""
        url = self.args.database_url
        if not url:
            self.database_url = f"sqlite:///{self.tmp / 'encore.db'}"
            return
        if not url.startswith(("postgresql", "postgres:")):
            raise SystemExit("--database-url: only postgresql://… is supported (SQLite is the default)")
        import psycopg

        admin = re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)
        name = f"encore_soak_{os.getpid()}_{self.run_id}"
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

        def drop() -> None:
            with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        self.pg_drop = drop
        base = admin.rsplit("/", 1)[0] if admin.count("/") > 2 else admin
        self.database_url = f"{base}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)

    def build_env(self, web_port: int, smtp_port: int) -> None:
        """The processes' environment: the caller's, less Encore's settings, plus the soak's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(INHERITED_NOT)}
        flows_dir = self.tmp / "flows"
        flows_dir.mkdir()
        (flows_dir / "thank_you_first_order.yaml").write_text(FLOW)
        metrics = self.tmp / "metrics"
        metrics.mkdir()
        assert self.redis is not None
        env.update(
            {
                "PATH": f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}",
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(self.root),
                "REDIS_URL": self.redis.url,
                "DATABASE_URL": self.database_url,
                "SECRET_KEY": "soak-secret-key",
                "SHOPIFY_API_SECRET": SHOPIFY_SECRET,
                "SHOPIFY_API_KEY": "soak-api-key",
                "EMAIL_URL": f"smtp://127.0.0.1:{smtp_port}",
                "FLOWS_DIR": str(flows_dir),
                "ENCORE_DATA_DIR": str(self.tmp / "data"),
                "PROMETHEUS_MULTIPROC_DIR": str(metrics),
                "APP_URL": f"http://127.0.0.1:{web_port}",
                "PORT": str(web_port),
                # Outbound HTTP (a platform's API) goes to a closed port here: nothing leaves the machine.
                "HTTP_PROXY": f"http://127.0.0.1:{free_port()}",
                "HTTPS_PROXY": f"http://127.0.0.1:{free_port()}",
                "NO_PROXY": "127.0.0.1,localhost",
            }
        )
        self.env = env

    def run_once(self, name: str, command: str, timeout: float = 120.0) -> str:
        """Run a one-off command (the release step, a CLI call) as the platform would; its output."""
        log = self.logs / f"{name}.log"
        done = subprocess.run(
            ["sh", "-c", f"exec {command}"],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        log.write_text(f"$ {command}\n{done.stdout}{done.stderr}")
        if done.returncode:
            raise RuntimeError(f"`{command}` failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
        return done.stdout

    def wait_healthy(self, port: int, timeout: float = 60.0) -> None:
        """Until GET /healthz answers 200."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            web = self.supervisor.processes["web"]
            if web.exit_code() is not None:
                raise RuntimeError(f"web exited with {web.exit_code()}; see {web.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"/healthz did not answer 200 in {timeout:g} s; see {web.log}")
            time.sleep(0.2)

    def worker_registered(self, pid: int | None) -> bool:
        """Whether an RQ worker with this pid is registered in Redis."""
        from rq import Worker

        assert self.redis is not None
        try:
            return any(w.pid == pid for w in Worker.all(connection=self.redis.client()))
        except Exception:  # noqa: BLE001 - Redis down, or a half-written worker hash
            return False

    def wait_worker(self, timeout: float = 60.0) -> None:
        """Until the worker process is registered with RQ."""
        deadline = time.monotonic() + timeout
        worker = self.supervisor.processes["worker"]
        while not self.worker_registered(worker.pid):
            if worker.exit_code() is not None:
                raise RuntimeError(f"the worker exited with {worker.exit_code()}; see {worker.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not register with RQ in {timeout:g} s; see {worker.log}")
            time.sleep(0.2)

    def queue_state(self) -> dict[str, int] | None:
        """Jobs queued, scheduled, started and failed over the three queues; None when Redis doesn't answer."""
        from rq import Queue
        from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
        from rq.serializers import JSONSerializer

        assert self.redis is not None
        try:
            connection = self.redis.client()
            state = Counter[str]()
            for name in QUEUES:
                q = Queue(name, connection=connection, serializer=JSONSerializer)
                state["queued"] += q.count
                scheduled = ScheduledJobRegistry(queue=q)
                state["scheduled"] += scheduled.count
                state["overdue"] += connection.zcount(scheduled.key, 0, time.time() - OVERDUE)
                state["started"] += StartedJobRegistry(queue=q).count
                state["failed"] += FailedJobRegistry(queue=q).count
            state["bodies"] = sum(1 for _ in connection.scan_iter("encore:body:*", count=1000))
            return dict(state)
        except Exception:  # noqa: BLE001 - Redis down
            return None

    def wait_idle(self, minimum: float = 3.0, quiet: float = 2.0, timeout: float = 45.0) -> None:
        """Let the start-up jobs (the cron's first interval jobs) finish before the load: queues idle for `quiet` s."""
        started = time.monotonic()
        idle_since: float | None = None
        while time.monotonic() - started < timeout:
            self.supervisor.poll()
            state = self.queue_state()
            idle = state is not None and state["queued"] == 0 and state["started"] == 0
            now = time.monotonic()
            idle_since = (idle_since or now) if idle else None
            if idle_since is not None and now - started >= minimum and now - idle_since >= quiet:
                return
            time.sleep(0.25)
        self.say(f"the queues were not idle after {timeout:g} s; starting the load anyway: {self.queue_state()}")

    def setup(self) -> int:
        """Redis, database, mail server, release, store, processes; returns the web port."""
        binary = self.args.redis_server or shutil.which("redis-server")
        if not binary:
            raise RuntimeError("redis-server was not found on PATH (or give --redis-server)")
        self.redis = RedisServer(binary, free_port(), self.tmp / "redis", self.logs / "redis.log")
        self.redis.start()
        self.setup_database()
        web_port, smtp_port = free_port(), free_port()
        self.mail = MailServer(smtp_port, self.args.defer_rate, seed=self.args.seed)
        self.mail.start()
        self.build_env(web_port, smtp_port)
        processes = procfile(self.root)
        self.run_once("release", processes.get("release", "encore migrate"))
        self.run_once("flows-lint", f"encore flows lint {shlex.quote(self.env['FLOWS_DIR'])}")
        self.run_once(
            "stores",
            f"encore stores add woocommerce {WOO_URL} --consumer-key ck_x --consumer-secret cs_x "
            f"--webhook-secret {WOO_SECRET} --no-verify",
        )
        web = processes["web"].replace("0.0.0.0", "127.0.0.1")  # listen on this machine only
        self.supervisor.add(Process("web", web, self.env, self.logs / "web.log"))
        self.supervisor.add(Process("worker", processes["worker"], self.env, self.logs / "worker.log"))
        for index in range(2, self.args.workers + 1):  # more of the same; the faults kill the first one
            self.supervisor.add(
                Process(f"worker.{index}", processes["worker"], self.env, self.logs / f"worker.{index}.log")
            )
        self.supervisor.add(Process("cron", processes["cron"], self.env, self.logs / "cron.log"))
        self.wait_healthy(web_port)
        self.wait_worker()
        self.wait_idle()
        return web_port

    # -- faults ------------------------------------------------------------------------------------
    def fault_plan(self) -> list[tuple[float, str]]:
        """(share of the load sent, fault) pairs: worker kills and Redis restarts alternating, evenly spread."""
        if self.args.no_faults:
            return []
        kills, restarts = self.args.worker_kills, self.args.redis_restarts
        kinds: list[str] = []
        while kills or restarts:  # worker, redis, worker, redis, … with the Redis restarts in the middle
            if kills and (len(kinds) % 2 == 0 or not restarts):
                kinds.append("worker")
                kills -= 1
            else:
                kinds.append("redis")
                restarts -= 1
        return [((i + 1) / (len(kinds) + 1), kind) for i, kind in enumerate(kinds)]

    def run_faults(self, plan: list[tuple[float, str]]) -> None:
        """The fault thread: each fault once the load has reached its share."""
        assert self.sender is not None and self.redis is not None
        for share, kind in plan:
            while self.sender.progress() < share and not self.sender.done():
                if self.stop_event.wait(0.05):
                    return
            try:
                if kind == "worker":
                    self.kill_worker(share)
                else:
                    self.restart_redis(share)
            except Exception as exc:  # noqa: BLE001 - reported; the soak goes on
                self.fault_errors.append(f"{kind} at {share:.0%}: {type(exc).__name__}: {exc}")
                self.say(f"fault {kind} failed: {exc}")

    def kill_worker(self, share: float) -> None:
        """SIGKILL the worker, restart it after --restart-delay, wait until it is registered with RQ again."""
        start = time.time()
        during = self.sender is not None and not self.sender.done()
        group = self.args.kill_scope == "group"
        pid = self.supervisor.kill("worker", group=group)
        self.say(
            f"fault: worker (pid {pid}{' and its process group' if group else ' alone'}) killed with SIGKILL "
            f"at {share:.0%} of the load"
        )
        self.stop_event.wait(self.args.restart_delay)
        self.supervisor.restart("worker")
        worker = self.supervisor.processes["worker"]
        deadline = time.monotonic() + 60
        while not self.worker_registered(worker.pid) and time.monotonic() < deadline:
            if self.stop_event.wait(0.1):
                break
        end = time.time()
        self.windows.append({"kind": "worker kill", "share": share, "start": start, "end": end, "during_load": during})
        self.say(f"fault over: the new worker (pid {worker.pid}) is registered {end - start:.1f} s after the kill")

    def restart_redis(self, share: float) -> None:
        """SHUTDOWN Redis (the AOF fsynced), keep it down --redis-outage seconds, start it on the same port and dir."""
        assert self.redis is not None
        start = time.time()
        during = self.sender is not None and not self.sender.done()
        self.redis.shutdown()
        self.say(f"fault: Redis shut down at {share:.0%} of the load ({time.time() - start:.1f} s to stop)")
        remaining = self.args.redis_outage - (time.time() - start)
        if remaining > 0:
            self.stop_event.wait(remaining)
        self.redis.start()
        end = time.time()
        self.windows.append(
            {"kind": "redis restart", "share": share, "start": start, "end": end, "during_load": during}
        )
        self.say(f"fault over: Redis answers again after {end - start:.1f} s")

    # -- load and drain ----------------------------------------------------------------------------
    def accepted_by_recipient(self) -> tuple[dict[str, list[Any]], set[str]]:
        """Accepted messages by recipient, and the recipients whose message was deferred on its first attempt."""
        assert self.mail is not None
        accepted, deferred, _ = self.mail.sink.snapshot()
        by_recipient: dict[str, list[Any]] = defaultdict(list)
        for message in accepted:
            for recipient in message.recipients:
                by_recipient[recipient].append(message)
        deferred_to = {recipient for _, recipients in deferred.values() for recipient in recipients}
        return dict(by_recipient), deferred_to

    def status_line(self) -> str:
        """Progress: deliveries, answers, emails accepted, the queues."""
        assert self.sender is not None
        by_recipient, _ = self.accepted_by_recipient()
        mailed = sum(1 for order in self.orders if order.email in by_recipient)
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(self.sender.statuses.items()))
        state = self.queue_state()
        queues = "Redis down" if state is None else ", ".join(f"{k} {v}" for k, v in state.items())
        return (
            f"sent {self.sender.first_sends}/{len(self.items)} deliveries ({answers}); emails accepted "
            f"{mailed}/{len(self.orders)}, pending {len(self.orders) - mailed}; jobs: {queues}"
        )

    def load(self, port: int) -> None:
        """Send the load with its faults; returns when every delivery has its answer (or the load's deadline)."""
        rng = random.Random(self.args.seed)
        self.orders = build_orders(self.args.orders, self.run_id, SHOPIFY_SECRET, WOO_SECRET)
        self.items = deliveries(self.orders, self.args.redeliver, rng)
        self.sender = Sender(
            port,
            self.items,
            rate=self.args.rate,
            concurrency=self.args.concurrency,
            max_attempts=self.args.max_attempts,
            log=self.say,
        )
        plan = self.fault_plan()
        planned = len(self.items) / self.args.rate
        self.say(
            f"load: {len(self.orders)} orders, {len(self.items)} deliveries at {self.args.rate:g}/s "
            f"(about {planned:.0f} s); faults: "
            + (", ".join(f"{kind} at {share:.0%}" for share, kind in plan) or "none")
        )
        self.sender.start()
        faults = threading.Thread(target=self.run_faults, args=(plan,), name="soak-faults", daemon=True)
        faults.start()
        deadline = time.monotonic() + planned * 3 + 300
        last = time.monotonic()
        while not self.sender.done() and time.monotonic() < deadline:
            self.supervisor.poll()
            if time.monotonic() - last >= 10:
                last = time.monotonic()
                self.say(self.status_line())
            time.sleep(0.1)
        if not self.sender.done():
            self.say("the load did not finish before its deadline; stopping it")
            self.sender.stop()
        while faults.is_alive() and time.monotonic() < deadline + 120:  # a fault still under way
            self.supervisor.poll()
            faults.join(0.2)
        self.sender.join(40)
        self.say("load done: " + self.status_line())

    def drain(self) -> float:
        """Wait until every customer's email is accepted or --drain-timeout passes; the seconds waited."""
        started = time.monotonic()
        deadline = started + self.args.drain_timeout
        last = started
        while time.monotonic() < deadline:
            self.supervisor.poll()
            by_recipient, _ = self.accepted_by_recipient()
            if all(order.email in by_recipient for order in self.orders):
                break
            if time.monotonic() - last >= 10:
                last = time.monotonic()
                self.say("draining: " + self.status_line())
            time.sleep(0.2)
        else:
            self.say(f"drain timeout ({self.args.drain_timeout:g} s) reached")
        time.sleep(self.args.linger)  # a second copy sent right after the first would show up now
        return time.monotonic() - started

    # -- figures -----------------------------------------------------------------------------------
    def in_window(
        self, at: float | None, kinds: tuple[str, ...] = ("worker kill", "redis restart"), margin: float = 0.0
    ) -> bool:
        return at is not None and any(
            w["start"] - margin <= at <= w["end"] + margin for w in self.windows if w["kind"] in kinds
        )

    def figures(self, drained_s: float) -> dict[str, Any]:
        """Every figure of the run, as one JSON-safe dict."""
        assert self.sender is not None and self.mail is not None
        sender = self.sender
        by_recipient, deferred_to = self.accepted_by_recipient()
        accepted, deferred, attempts = self.mail.sink.snapshot()
        expected = {order.email for order in self.orders}
        lost_orders = [order for order in self.orders if order.email not in by_recipient]
        mailed = {order.email: by_recipient[order.email] for order in self.orders if order.email in by_recipient}
        twice = {email: ms for email, ms in mailed.items() if len({m.message_id for m in ms}) > 1}
        resent = {email: ms for email, ms in mailed.items() if len(ms) > len({m.message_id for m in ms})}
        statuses = dict(sorted(sender.statuses.items()))
        numeric = {int(k): v for k, v in statuses.items() if k.isdigit()}
        unexpected_5xx = sum(v for k, v in numeric.items() if 500 <= k < 600 and k != 503)
        unexpected_4xx = sum(v for k, v in numeric.items() if 400 <= k < 500)
        outside_503 = sum(
            1
            for at, answer in sender.answers
            if answer == "503" and not self.in_window(at, ("redis restart",), margin=2.0)
        )
        elapsed = (sender.finished or time.monotonic()) - sender.started
        firsts = sorted(item.first_sent for item in self.items if item.first_sent is not None)
        latency_all, latency_clean, latency_untouched = [], [], []
        for order in self.orders:
            messages = by_recipient.get(order.email)
            if not messages or order.first_ok is None or order.email in deferred_to:
                continue
            delay = (min(m.at for m in messages) - order.first_ok) * 1000
            latency_all.append(delay)
            if not self.in_window(order.first_sent):
                latency_clean.append(delay)
                done = min(m.at for m in messages)
                if not any(w["start"] <= done and order.first_sent <= w["end"] for w in self.windows):
                    latency_untouched.append(delay)
        latency_all.sort()
        latency_clean.sort()
        latency_untouched.sort()
        failed = self.failed_jobs()
        ledger = self.ledger()
        gave_up = sum(1 for item in self.items if item.outcome == "gave up")
        result: dict[str, Any] = {
            "orders": len(self.orders),
            "shopify_orders": sum(o.platform == "shopify" for o in self.orders),
            "woocommerce_orders": sum(o.platform == "woocommerce" for o in self.orders),
            "deliveries": len(self.items),
            "redeliveries": sum(i.redelivery for i in self.items),
            "requests": sender.requests,
            "responses": statuses,
            "unexpected_5xx": unexpected_5xx,
            "unexpected_4xx": unexpected_4xx,
            "answers_503_outside_redis_outage": outside_503,
            "deliveries_given_up": gave_up,
            "unexpected_answers": sender.unexpected[:20],
            "target_rate": self.args.rate,
            "load_seconds": round(elapsed, 2),
            "achieved_delivery_rate": round(len(self.items) / (firsts[-1] - firsts[0]), 1) if len(firsts) > 1 else None,
            "achieved_request_rate": round(sender.requests / elapsed, 1) if elapsed else None,
            "smtp_attempts": attempts,
            "smtp_deferred_first_attempts": len(deferred),
            "smtp_accepted": len(accepted),
            "accepted_to_unexpected_recipients": sum(1 for m in accepted for r in m.recipients if r not in expected),
            "customers_mailed": len(expected) - len(lost_orders),
            "lost": len(lost_orders),
            "duplicates": len(twice),
            "same_message_id_accepted_again": len(resent),
            "lost_by_platform": dict(Counter(o.platform for o in lost_orders)),
            "failed_jobs": failed,
            "ledger": ledger,
            "latency_ms": {
                "rule": "webhook's first 2xx to the mail server's 250; orders whose first request was sent outside "
                "the fault windows; messages deferred (451) on their first attempt left out",
                "count": len(latency_clean),
                "p50": _round(percentile(latency_clean, 0.5)),
                "p99": _round(percentile(latency_clean, 0.99)),
                "max": _round(latency_clean[-1] if latency_clean else None),
                "untouched": {
                    "rule": "also leaving out orders whose webhook-to-email interval overlaps a fault",
                    "count": len(latency_untouched),
                    "p50": _round(percentile(latency_untouched, 0.5)),
                    "p99": _round(percentile(latency_untouched, 0.99)),
                },
                "all_not_deferred": {
                    "count": len(latency_all),
                    "p50": _round(percentile(latency_all, 0.5)),
                    "p99": _round(percentile(latency_all, 0.99)),
                },
            },
            "drain_seconds": round(drained_s, 1),
            "faults": [
                {
                    "kind": w["kind"],
                    "at_share": w["share"],
                    "start_s": round(w["start"] - self.t0, 2),
                    "seconds": round(w["end"] - w["start"], 2),
                    "during_load": w["during_load"],
                    "answers_503": self.answers_503(w),
                }
                for w in self.windows
            ],
            "fault_errors": self.fault_errors,
            "unexpected_exits": [{**e, "at": round(e["at"] - self.t0, 2)} for e in self.supervisor.unexpected_exits],
            "process_starts": {name: p.starts for name, p in self.supervisor.processes.items()},
            "database": "postgresql" if self.pg_drop else "sqlite",
            "root": str(self.root),
            "tree": tree_state(self.root),
        }
        result["lost_analysis"] = self.analyse_lost(lost_orders) if lost_orders else []
        result["duplicate_examples"] = [
            {
                "email": email,
                "messages": [{"message_id": m.message_id, "key": m.key, "at_s": round(m.at - self.t0, 2)} for m in ms],
            }
            for email, ms in list({**twice, **resent}.items())[:5]
        ]
        result["scheduler_locks"] = self.scheduler_locks()
        result["jobs_at_end"] = self.queue_state()
        result["log_errors"] = summarise_logs(self.logs)
        result["passed"] = lost_orders == [] and not twice and unexpected_5xx == 0 and not (self.args.strict and resent)
        return result

    def scheduler_locks(self) -> dict[str, Any]:
        """RQ's scheduler lock of each queue at the end: who holds it, for how long still."""
        assert self.redis is not None
        try:
            connection = self.redis.client(5)
            result = {}
            for name in QUEUES:
                key = f"rq:scheduler-lock:{name}"
                holder = connection.get(key)
                result[name] = {"holder": holder.decode() if holder else None, "ttl": connection.ttl(key)}
            return result
        except Exception as exc:  # noqa: BLE001
            return {"error": f"{type(exc).__name__}: {exc}"}

    def answers_503(self, window: dict[str, Any]) -> int:
        """The 503 answers given during a fault (a Redis outage's up to 2 s after it, retries still in flight)."""
        assert self.sender is not None
        if window["kind"] == "redis restart":
            return sum(
                1
                for at, answer in self.sender.answers
                if answer == "503" and window["start"] <= at <= window["end"] + 2.0
            )
        return sum(
            1
            for at, answer in self.sender.answers
            if answer == "503"
            and window["start"] <= at <= window["end"]
            and not self.in_window(at, ("redis restart",), margin=2.0)
        )

    def failed_jobs(self) -> dict[str, Any]:
        """The failed registries of the three queues: counts and a few examples."""
        from rq.job import Job
        from rq.registry import FailedJobRegistry
        from rq.serializers import JSONSerializer

        assert self.redis is not None
        result: dict[str, Any] = {"total": 0, "by_queue": {}, "examples": []}
        try:
            connection = self.redis.client(5)
            for name in QUEUES:
                registry = FailedJobRegistry(name, connection=connection, serializer=JSONSerializer)
                ids = registry.get_job_ids()
                result["by_queue"][name] = len(ids)
                result["total"] += len(ids)
                for job_id in ids[:3]:
                    try:
                        job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
                        error = (job.exc_info or "").strip().splitlines()
                        result["examples"].append(
                            {
                                "queue": name,
                                "job": job_id,
                                "func": job.func_name,
                                "error": error[-1][:300] if error else "",
                            }
                        )
                    except Exception as exc:  # noqa: BLE001
                        result["examples"].append({"queue": name, "job": job_id, "error": f"unreadable: {exc}"})
        except Exception as exc:  # noqa: BLE001
            result["error"] = f"{type(exc).__name__}: {exc}"
        return result

    def sql(self, statement: str, **params: Any) -> list[Any]:
        """Rows of one SQL statement against the product's database."""
        from sqlalchemy import create_engine, text

        if not hasattr(self, "_engine"):
            self._engine = create_engine(self.database_url)
        with self._engine.connect() as conn:
            return list(conn.execute(text(statement), params))

    def ledger(self) -> dict[str, Any]:
        """Orders and customers in the database, which should both be N."""
        try:
            orders = self.sql("SELECT count(*) FROM orders")[0][0]
            customers = self.sql("SELECT count(*) FROM customers")[0][0]
            first = self.sql("SELECT count(*) FROM customers WHERE orders_count = 1")[0][0]
        except Exception as exc:  # noqa: BLE001
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        n = len(self.orders)
        return {
            "orders": orders,
            "customers": customers,
            "customers_with_one_order": first,
            "ok": orders == n and customers == n and first == n,
        }

    def analyse_lost(self, lost: list[Order]) -> list[dict[str, Any]]:
        """Where each lost email's order stopped, grouped: the Redis job and body, the ledger, the run, the trace."""
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for order in lost:
            try:
                where, detail = self.where_stopped(order)
            except Exception as exc:  # noqa: BLE001 - the inspection itself failed: say so
                where, detail = f"could not inspect: {type(exc).__name__}", {"error": str(exc)[:300]}
            detail.update(
                email=order.email,
                platform=order.platform,
                first_2xx_s=_round(order.first_ok - self.t0 if order.first_ok else None),
                next_fault=self.next_fault(order.first_ok),
            )
            groups[where].append(detail)
        result = []
        for where, items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            by_fault = Counter(re.sub(r"^[\d.]+ s before", "before", i["next_fault"]) for i in items)
            result.append(
                {
                    "where": where,
                    "count": len(items),
                    "by_next_fault": dict(by_fault.most_common()),
                    "examples": items[:3],
                }
            )
        return result

    def next_fault(self, at: float | None) -> str:
        """The fault under way at `at`, or the first one after it: the likeliest cause of a loss."""
        if at is None:
            return "never answered 2xx"
        for number, window in enumerate(sorted(self.windows, key=lambda w: w["start"]), 1):
            if at <= window["end"]:
                when = "during" if at >= window["start"] else f"{window['start'] - at:.1f} s before"
                return f"{when} fault {number} ({window['kind']})"
        return "after every fault"

    def event_key(self, order: Order) -> str:
        """The delivery's job id (event key) as the receiver computes it (the product's own function)."""
        from encore_retention.core.events import event_id
        from encore_retention.webhooks.woocommerce import store_domain

        if order.platform == "shopify":
            return event_id("shopify", order.headers["X-Shopify-Webhook-Id"])
        payload = json.loads(order.body)
        return event_id(
            "woocommerce", store_domain(WOO_URL), "order.created", payload["id"], payload["date_modified_gmt"]
        )

    def where_stopped(self, order: Order) -> tuple[str, dict[str, Any]]:
        """A short description of where a lost email's order stopped, and the details found."""
        from rq.job import Job
        from rq.registry import ScheduledJobRegistry
        from rq.serializers import JSONSerializer

        assert self.redis is not None
        key = self.event_key(order)
        connection = self.redis.client(5)
        detail: dict[str, Any] = {"key": key}
        payload = json.loads(order.body)
        platform_order_id = str(payload["id"])
        event = self.sql("SELECT id FROM events WHERE id = :id", id=key)
        in_orders = self.sql("SELECT id FROM orders WHERE platform_id = :p", p=platform_order_id)
        if not event and not in_orders:
            job_status = "no job"
            try:
                job = Job.fetch(key, connection=connection, serializer=JSONSerializer)
                job_status = f"job {job.get_status()}"
                error = (job.exc_info or "").strip().splitlines()
                if error:
                    detail["job_error"] = error[-1][:300]
            except Exception:  # noqa: BLE001 - NoSuchJobError: the job is gone
                pass
            body = "body kept" if connection.exists(f"encore:body:{key}") else "no body"
            seen = "dedupe mark set" if connection.exists(f"encore:seen:{key}") else "no dedupe mark"
            detail.update(job=job_status, body=body, seen=seen)
            return f"not in the ledger; Redis: {job_status}, {body}, {seen}", detail
        customers = self.sql("SELECT id FROM customers WHERE lower(email) = :e", e=order.email.lower())
        if not customers:
            return "event recorded but no customer row", detail
        customer_id = customers[0][0]
        runs = self.sql(
            "SELECT id, status, reason, job_id, lease_until, attempts FROM flow_runs "
            "WHERE customer_id = :c ORDER BY id",
            c=customer_id,
        )
        if not runs:
            return "in the ledger, no flow run", detail
        run = runs[-1]
        effects = self.sql("SELECT key, status, result FROM flow_effects WHERE run_id = :r", r=run.id)
        traces = self.sql("SELECT kind, message FROM flow_trace WHERE run_id = :r ORDER BY id", r=run.id)
        effect = ", ".join(sorted({e.status for e in effects})) or "none"
        last = traces[-1] if traces else None
        detail.update(
            run_id=run.id,
            run_status=run.status,
            reason=run.reason,
            job_id=run.job_id,
            lease_until=str(run.lease_until) if run.lease_until else None,
            attempts=run.attempts,
            effects=[{"status": e.status, "result": str(e.result)[:200] if e.result else None} for e in effects],
            trace=[f"{t.kind}: {t.message[:200]}" for t in traces[-4:]],
        )
        run_job = "no job id"
        if run.job_id:
            try:
                job = Job.fetch(run.job_id, connection=connection, serializer=JSONSerializer)
                status = job.get_status()
                run_job = f"its job {getattr(status, 'value', status)}"
                due = connection.zscore(ScheduledJobRegistry(job.origin, connection=connection).key, job.id)
                if due is not None:
                    late = time.time() - float(due)
                    run_job += f", {'overdue' if late > OVERDUE else 'due'} ({late:+.0f} s from its time)"
            except Exception:  # noqa: BLE001 - NoSuchJobError: gone
                run_job = "its job gone from Redis"
        detail["run_job"] = run_job
        last_text = _generic(f"{last.kind}: {last.message}") if last else "no trace"
        reason = f" ({_generic(run.reason)})" if run.reason else ""
        return (
            f"run {run.status}{reason}, {_generic(run_job)}; email claim: {effect}; last trace: {last_text[:160]}"
        ), detail

    # -- end ---------------------------------------------------------------------------------------
    def cleanup(self, keep_logs: bool) -> None:
        """Stop everything this soak started; remove the temporary folder (keeping the logs when asked)."""
        self.stop_event.set()
        if self.sender is not None:
            self.sender.stop()
        self.supervisor.stop_all()
        if self.redis is not None:
            self.redis.stop()
        if self.mail is not None:
            self.mail.stop()
        if hasattr(self, "_engine"):
            self._engine.dispose()
        if self.pg_drop is not None:
            try:
                self.pg_drop()
            except Exception as exc:  # noqa: BLE001
                self.say(f"could not drop the soak's PostgreSQL database: {exc}")
        if self.args.keep:
            self.say(f"kept: {self.tmp}")
            return
        if keep_logs:
            for child in self.tmp.iterdir():
                if child.name not in ("logs", "encore.db"):
                    shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
            self.say(f"process logs kept in {self.logs}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def run(self) -> dict[str, Any]:
        """The whole soak; its figures."""
        self.t0 = time.time()
        port = self.setup()
        self.say(
            f"web on 127.0.0.1:{port}, Redis on {self.redis.port if self.redis else '?'}, "
            f"mail on {self.mail.port if self.mail else '?'}, database {self.database_url.split(':')[0]}, "
            f"logs in {self.logs}"
        )
        self.t0 = time.time()
        self.load(port)
        drained = self.drain()
        return self.figures(drained)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _generic(text: str) -> str:
    """A message with its particulars (numbers, addresses, ids) blanked, so that alike ones group."""
    text = re.sub(r"[\w.+-]+@[\w.-]+", "<email>", text)
    text = re.sub(r"\b[0-9a-f]{16,}\b", "<id>", text)
    return re.sub(r"\d+(\.\d+)?", "N", text)


def summarise_logs(folder: Path, top: int = 8) -> dict[str, Any]:
    """Per process log: warning/error lines grouped by their message (JSON lines by level, others by keyword)."""
    result: dict[str, Any] = {}
    keywords = re.compile(r"error|exception|traceback|critical|fatal|killed|lost", re.IGNORECASE)
    for log in sorted(folder.glob("*.log")):
        counts: Counter[str] = Counter()
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if isinstance(record, dict):
                    level = str(record.get("level", "")).lower()
                    if level in ("warning", "error", "critical"):
                        extra = record.get("error") or record.get("exc", "").strip().splitlines()[-1:] or ""
                        extra = extra[0] if isinstance(extra, list) and extra else extra
                        counts[_generic(f"{level}: {record.get('message', '')} {str(extra)[:160]}".strip())] += 1
                    continue
            if keywords.search(line) and not line.startswith("---- soak:"):
                counts[_generic(line.strip()[:200])] += 1
        if counts:
            result[log.stem] = [{"count": n, "line": text} for text, n in counts.most_common(top)]
    return result


def tree_state(root: Path) -> dict[str, Any]:
    """The commit the product ran at and the files changed in its working tree, for the record."""
    if not (root / ".git").exists():
        return {"commit": None, "changed": [], "note": "not a git working tree"}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.splitlines()
        return {"commit": commit, "changed": [line[3:] for line in status]}
    except (OSError, subprocess.SubprocessError):
        return {}


def report(figures: dict[str, Any], say: Callable[[str], None]) -> None:
    """The figures as text."""
    lines = [
        f"product: {figures['root']} (commit {figures['tree'].get('commit')}, "
        f"{len(figures['tree'].get('changed', []))} files changed); database {figures['database']}",
        f"orders sent: {figures['orders']} ({figures['shopify_orders']} Shopify, {figures['woocommerce_orders']} "
        f"WooCommerce); deliveries {figures['deliveries']} (incl. {figures['redeliveries']} re-deliveries); "
        f"requests {figures['requests']}",
        f"responses: {figures['responses']}; unexpected 5xx: {figures['unexpected_5xx']}, unexpected 4xx: "
        f"{figures['unexpected_4xx']}, 503 outside the Redis outage: {figures['answers_503_outside_redis_outage']}, "
        f"deliveries given up: {figures['deliveries_given_up']}",
        f"rate: {figures['achieved_delivery_rate']} deliveries/s first sent (target {figures['target_rate']:g}), "
        f"{figures['achieved_request_rate']} requests/s over {figures['load_seconds']} s",
        "faults: "
        + (
            "; ".join(
                f"{f['kind']} at {f['at_share']:.0%} (t={f['start_s']} s, {f['seconds']} s, "
                f"{'while deliveries were still being sent' if f['during_load'] else 'after the load'}"
                f", {f['answers_503']} answers 503)"
                for f in figures["faults"]
            )
            or "none"
        )
        + (f"; errors: {figures['fault_errors']}" if figures["fault_errors"] else ""),
        "processes that exited on their own: "
        + (
            ", ".join(f"{e['process']} (status {e['exit_code']}, t={e['at']} s)" for e in figures["unexpected_exits"])
            or "none"
        ),
        f"mail: {figures['smtp_attempts']} attempts, {figures['smtp_deferred_first_attempts']} first attempts "
        f"deferred (451), {figures['smtp_accepted']} accepted; to unexpected recipients: "
        f"{figures['accepted_to_unexpected_recipients']}",
        f"customers mailed: {figures['customers_mailed']}/{figures['orders']}; LOST: {figures['lost']} "
        f"{figures['lost_by_platform'] or ''}; DUPLICATES (more than one Message-ID): {figures['duplicates']}; "
        f"the same Message-ID accepted again: {figures['same_message_id_accepted_again']}",
        f"failed RQ jobs: {figures['failed_jobs'].get('total')} {figures['failed_jobs'].get('by_queue')}; "
        f"jobs at the end: {figures['jobs_at_end']}; scheduler locks: {figures['scheduler_locks']}",
        f"ledger: {figures['ledger']}",
    ]
    latency = figures["latency_ms"]
    lines.append(
        f"webhook-to-email latency (orders first sent outside fault windows, messages deferred on their "
        f"first attempt left out; n={latency['count']}): p50 {latency['p50']} ms, p99 {latency['p99']} ms, "
        f"max {latency['max']} ms; untouched by any fault (n={latency['untouched']['count']}): p50 "
        f"{latency['untouched']['p50']} ms, p99 {latency['untouched']['p99']} ms"
    )
    for example in figures["failed_jobs"].get("examples", []):
        lines.append(f"  failed job {example['queue']}/{example['job']} {example.get('func', '')}: {example['error']}")
    for group in figures["lost_analysis"]:
        lines.append(f"  lost {group['count']}: {group['where']} | {group['by_next_fault']}")
        for example in group["examples"][:2]:
            lines.append(f"    e.g. {json.dumps(example, default=str)[:600]}")
    for example in figures["duplicate_examples"]:
        lines.append(f"  duplicate: {json.dumps(example)[:400]}")
    if figures["lost"] or figures["duplicates"] or figures["unexpected_5xx"] or figures["failed_jobs"].get("total"):
        for process, entries in figures["log_errors"].items():
            lines.append(f"  {process}.log:")
            lines.extend(f"    {entry['count']:>6} × {entry['line'][:220]}" for entry in entries)
    lines.append("PASS" if figures["passed"] else "FAIL")
    for line in lines:
        say(line)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the soak, report; 0 pass, 1 fail, 2 the soak could not run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=3000, help="first orders, half per platform (3000)")
    parser.add_argument("--rate", type=float, default=200.0, help="deliveries per second (200)")
    parser.add_argument("--concurrency", type=int, default=32, help="sending threads (32)")
    parser.add_argument("--redeliver", type=float, default=0.1, help="share of orders delivered twice (0.1)")
    parser.add_argument("--max-attempts", type=int, default=30, help="attempts per delivery, as a platform (30)")
    parser.add_argument("--defer-rate", type=float, default=0.2, help="first attempts answered 451 (0.2)")
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes, as a platform scales the Procfile's worker (1)"
    )
    parser.add_argument("--no-faults", action="store_true", help="no worker kills, no Redis restart")
    parser.add_argument("--worker-kills", type=int, default=2, help="worker SIGKILLs during the load (2)")
    parser.add_argument("--redis-restarts", type=int, default=1, help="Redis restarts during the load (1)")
    parser.add_argument("--redis-outage", type=float, default=8.0, help="seconds Redis stays down (8)")
    parser.add_argument("--restart-delay", type=float, default=1.0, help="seconds before a killed worker restarts (1)")
    parser.add_argument(
        "--crash-restart-delay",
        type=float,
        default=2.0,
        help="seconds before a process that exited on its own restarts (2)",
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=600.0, help="seconds to wait after the load for every email (600)"
    )
    parser.add_argument(
        "--linger", type=float, default=2.0, help="seconds to keep listening after the last email, for late copies (2)"
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL server URL: a fresh database is created on it (default: SQLite)",
    )
    parser.add_argument("--redis-server", default=None, help="the redis-server binary (default: from PATH)")
    parser.add_argument("--seed", default="encore-soak", help="seed of the shuffle and the 451 choice")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="also fail when one Message-ID is accepted twice (a re-sent copy; mail clients may "
        "show copies sharing a Message-ID as one email)",
    )
    parser.add_argument(
        "--kill-scope",
        choices=("group", "process"),
        default="group",
        help="SIGKILL the worker with its process group (its scheduler child too, as a platform "
        "stopping a container does) or the worker process alone (group)",
    )
    parser.add_argument(
        "--root",
        default=str(ROOT),
        help="the product tree to run, e.g. an export of one commit (default: this repository)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the whole temporary folder")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object at the end")
    args = parser.parse_args(argv)
    if args.orders < 1 or args.rate <= 0 or args.concurrency < 1:
        parser.error("--orders, --rate and --concurrency must be positive")
    say = Say(to_stderr=args.json)
    if Path(args.root).resolve() != ROOT:
        sys.path.insert(0, str(Path(args.root).resolve()))  # the product's own event keys, for the analysis

    def terminate(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    soak = Soak(args, say)
    figures: dict[str, Any] | None = None
    try:
        figures = soak.run()
    except KeyboardInterrupt:
        say("interrupted")
    except Exception as exc:  # noqa: BLE001 - the soak could not run: say why, keep the logs
        say(f"the soak could not run: {type(exc).__name__}: {exc}")
    finally:
        soak.cleanup(keep_logs=figures is None or not figures["passed"])
    if figures is None:
        return 2
    report(figures, say)
    if args.json:
        json.dump(figures, sys.stdout, default=str)
        sys.stdout.write("\n")
    return 0 if figures["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
