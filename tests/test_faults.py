"""Faults the worker must survive without losing work: kills, a Redis restart, a stale scheduler lock, SIGTERM.

Each case runs real processes (`python worker.py`, a redis-server of its own) against real Redis.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from redis import Redis
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer

from encore_retention.core import queue as encore_queue
from encore_retention.core.queue import EVENTS, FLOWS, MAINTENANCE, queue, requeue_stranded
from tests.conftest import free_port, redis_url_of, wait_for

ROOT = Path(__file__).resolve().parent.parent


def _worker(env: dict[str, str], cwd: Path, log: Path, script: str | None = None) -> subprocess.Popen:
    command = [sys.executable, "-c", script] if script else [sys.executable, str(ROOT / "worker.py")]
    return subprocess.Popen(
        command, env={**env, "PYTHONPATH": str(ROOT)}, cwd=cwd, stdout=subprocess.DEVNULL, stderr=log.open("ab")
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _status(connection: Redis, job_id: str) -> JobStatus | None:
    try:
        return Job.fetch(job_id, connection=connection, serializer=JSONSerializer).get_status()
    except Exception:  # noqa: BLE001 - gone
        return None


@pytest.fixture
def worker_env(env: pytest.MonkeyPatch, redis: Redis, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": redis_url_of(redis)}


# ---- taking jobs ----------------------------------------------------------------------------------


def test_a_job_is_taken_from_any_queue_into_its_intermediate_list(redis: Redis):
    queues = [queue(name, redis) for name in (EVENTS, FLOWS, MAINTENANCE)]
    queues[1].enqueue_call("builtins.len", args=([1, 2],), job_id="on-flows")
    job, taken_from = encore_queue.ReliableQueue.dequeue_any(queues, None, connection=redis, serializer=JSONSerializer)
    assert (job.id, taken_from.name) == ("on-flows", FLOWS)
    assert redis.lrange(queues[1].intermediate_queue_key, 0, -1) == [b"on-flows"]  # never in no list at all
    started = time.monotonic()
    assert encore_queue.ReliableQueue.dequeue_any(queues, None, connection=redis, serializer=JSONSerializer) is None
    queues[2].enqueue_call("builtins.len", args=([1],), job_id="later")  # a blocking take sees every queue
    job, taken_from = encore_queue.ReliableQueue.dequeue_any(queues, 5, connection=redis, serializer=JSONSerializer)
    assert (job.id, taken_from.name) == ("later", MAINTENANCE)
    assert time.monotonic() - started < 2


def test_a_job_taken_by_a_worker_that_died_before_starting_it_is_put_back(redis: Redis, monkeypatch):
    q = queue(EVENTS, redis)
    q.enqueue_call("builtins.len", args=([1, 2],), job_id="stranded")
    encore_queue.ReliableQueue.dequeue_any([q], None, connection=redis, serializer=JSONSerializer)
    assert q.count == 0  # taken, never started: its worker died here
    assert requeue_stranded(q) == 0  # first seen now
    monkeypatch.setattr(encore_queue, "STRANDED_AFTER", 0.0)
    assert requeue_stranded(q) == 1
    assert q.job_ids == ["stranded"] and redis.llen(q.intermediate_queue_key) == 0
    from encore_retention import worker

    worker.build_worker().work(burst=True)
    assert _status(redis, "stranded") == JobStatus.FINISHED


KILLED_AFTER_TAKING = """
import os
from encore_retention import worker
from rq.worker import BaseWorker
BaseWorker.prepare_job_execution = lambda *args, **kwargs: os._exit(9)  # dies between taking and starting
worker.build_worker().work(burst=True)
"""


def test_a_worker_killed_between_taking_and_starting_a_job_loses_nothing(worker_env, redis: Redis, tmp_path):
    q = queue(EVENTS, redis)
    q.enqueue_call("builtins.len", args=([1, 2, 3],), job_id="taken")
    dying = _worker(worker_env, tmp_path, tmp_path / "worker.log", KILLED_AFTER_TAKING)
    assert dying.wait(timeout=60) == 9
    assert q.count == 0 and _status(redis, "taken") == JobStatus.QUEUED  # in no queue: lost, before the fix
    log = tmp_path / "worker.log"
    survivor = _worker(worker_env, tmp_path, log)  # its upkeep puts the job back, then runs it
    try:
        assert wait_for(lambda: _status(redis, "taken") == JobStatus.FINISHED, timeout=60), log.read_text()[-2000:]
    finally:
        _stop(survivor)


# ---- the scheduler -------------------------------------------------------------------------------------


def test_a_killed_workers_scheduler_lock_is_taken_over_within_seconds(worker_env, redis: Redis, tmp_path):
    log = tmp_path / "worker.log"
    first = _worker(worker_env, tmp_path, log)
    lock = RQScheduler.get_locking_key(EVENTS)

    def running_scheduler() -> tuple[bytes, int] | None:
        """The lock's holder and its pid, once the scheduler process has registered itself."""
        holder = redis.get(lock)
        pid = holder and redis.hget(f"rq:scheduler:{holder.decode()}", "pid")
        return (holder, int(pid)) if pid and int(pid) else None

    try:
        found = wait_for(running_scheduler, timeout=60)
        assert found, log.read_text()[-2000:]
    finally:
        first.kill()  # SIGKILL: its scheduler child sees it gone and stops
        first.wait()
    holder, scheduler_pid = found
    second = _worker(worker_env, tmp_path, log)
    try:
        # RQ's own: the lock outlives its holder by 61 s, and a worker tries again only every 10 minutes.
        assert wait_for(lambda: redis.get(lock) not in (None, holder), timeout=15), log.read_text()[-3000:]
        job = queue(EVENTS, redis).enqueue_in(timedelta(seconds=1), "builtins.len", [1, 2])
        assert wait_for(lambda: _status(redis, job.id) == JobStatus.FINISHED, timeout=15), log.read_text()[-3000:]
    finally:
        _stop(second)
    assert wait_for(lambda: not _alive(scheduler_pid), timeout=10)  # the orphaned scheduler stopped


# ---- Redis going away --------------------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server of this test's own (appendonly), on a free port, that the test may stop and start."""
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    port, folder = free_port(), tmp_path / "redis"
    folder.mkdir()
    server = _start_redis(port, folder)
    yield port, folder
    Redis(port=port).shutdown(nosave=True) if server.poll() is None else None
    _kill_quietly(server)


def _start_redis(port: int, folder: Path) -> subprocess.Popen:
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(folder),
            "--appendonly",
            "yes",
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
    )
    assert wait_for(lambda: _pings(port), timeout=20)
    _start_redis.servers.append(server)  # type: ignore[attr-defined]
    return server


_start_redis.servers = []  # type: ignore[attr-defined]


def _pings(port: int) -> bool:
    try:
        return bool(Redis(port=port, socket_connect_timeout=0.5).ping())
    except Exception:  # noqa: BLE001
        return False


def _kill_quietly(server: subprocess.Popen) -> None:
    for started in _start_redis.servers:  # type: ignore[attr-defined]
        if started.poll() is None:
            started.kill()
            started.wait()
    _start_redis.servers.clear()  # type: ignore[attr-defined]


def test_the_worker_rides_out_a_redis_restart(env, own_redis, tmp_path):
    port, folder = own_redis
    connection = Redis(port=port)
    encore_queue.set_redis(connection)
    log = tmp_path / "worker.log"
    worker = _worker({**os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0"}, tmp_path, log)
    try:
        before = queue(EVENTS, connection).enqueue_call("builtins.len", args=([1],))
        assert wait_for(lambda: _status(connection, before.id) == JobStatus.FINISHED, timeout=30)
        connection.shutdown()  # AOF kept
        time.sleep(4)  # longer than redis-py's own retries
        assert worker.poll() is None, log.read_text()[-3000:]
        _start_redis(port, folder)
        after = queue(EVENTS, connection).enqueue_call("builtins.len", args=([1, 2],))
        later = queue(FLOWS, connection).enqueue_in(timedelta(seconds=1), "builtins.len", [3])
        assert wait_for(lambda: _status(connection, after.id) == JobStatus.FINISHED, timeout=30), log.read_text()[
            -3000:
        ]
        assert wait_for(lambda: _status(connection, later.id) == JobStatus.FINISHED, timeout=30), log.read_text()[
            -3000:
        ]  # its scheduler, dead with the outage, was started again
        assert worker.poll() is None
    finally:
        _stop(worker)
        encore_queue.set_redis(None)


# ---- a killed worker's job, and SIGTERM ------------------------------------------------------------------


def test_a_killed_workers_job_is_retried_once_its_heartbeats_stop(worker_env, redis: Redis, tmp_path):
    script = (
        "import os, threading\nfrom encore_retention import worker\n"
        "threading.Timer(2.0, lambda: os._exit(9)).start()\n"  # SIGKILL-like, mid-job
        "worker.build_worker().work(burst=True)\n"
    )
    job = queue(EVENTS, redis).enqueue_call("time.sleep", args=(5,), job_id="slow", retry=encore_queue.EVENT_RETRY)
    dying = _worker(worker_env, tmp_path, tmp_path / "worker.log", script)
    assert dying.wait(timeout=30) == 9
    registry = StartedJobRegistry(EVENTS, connection=redis, serializer=JSONSerializer)
    assert "slow" in registry.get_job_ids()
    from encore_retention import worker

    (expires,) = [score for _, score in redis.zrange(registry.key, 0, -1, withscores=True)]
    # Abandoned 40 s after its last beat (RQ's SimpleWorker: the job's whole timeout, 180 s, plus 60).
    assert expires - time.time() <= worker.HEARTBEAT_SECONDS + 30
    registry.cleanup(timestamp=expires + 1)
    assert Job.fetch(job.id, connection=redis, serializer=JSONSerializer).get_status() == JobStatus.SCHEDULED


def test_sigterm_lets_the_current_job_finish_then_the_worker_stops(worker_env, redis: Redis, tmp_path):
    q = queue(EVENTS, redis)
    current = q.enqueue_call("time.sleep", args=(3,), job_id="current")
    waiting = q.enqueue_call("builtins.len", args=([1],), job_id="waiting-its-turn")
    log = tmp_path / "worker.log"
    worker = _worker(worker_env, tmp_path, log)
    assert wait_for(lambda: _status(redis, current.id) == JobStatus.STARTED, timeout=30), log.read_text()[-2000:]
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert _status(redis, current.id) == JobStatus.FINISHED
    assert _status(redis, waiting.id) == JobStatus.QUEUED and q.job_ids == [waiting.id]  # left for the next worker


def test_a_web_restart_mid_load_loses_no_webhook(env, redis: Redis, tmp_path):
    """gunicorn SIGTERMed while webhooks arrive: it finishes what it accepted; the rest are retried on the new one."""
    import http.client
    import json
    import threading

    from tests.conftest import SHOPIFY_SECRET, payload, shopify_headers

    port = free_port()
    web_env = {
        **os.environ,
        "REDIS_URL": redis_url_of(redis),
        "SHOPIFY_API_SECRET": SHOPIFY_SECRET,
        "PYTHONPATH": str(ROOT),
    }

    def start_web() -> subprocess.Popen:
        web = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--workers",
                "2",
                "--graceful-timeout",
                "20",
                "--bind",
                f"127.0.0.1:{port}",
                "webhooks:create_app()",
            ],
            env=web_env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "web.log").open("ab"),
        )
        if not wait_for(lambda: _answers(port), timeout=30):
            _stop(web)
            pytest.fail((tmp_path / "web.log").read_text()[-2000:])
        return web

    body = json.dumps(payload("shopify", "orders_create")).encode()
    deliveries = [shopify_headers(body, "orders/create") for _ in range(400)]
    answers: dict[int, list[int | str]] = {i: [] for i in range(len(deliveries))}

    def send(index: int) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("POST", "/webhooks/shopify", body=body, headers=deliveries[index])
            status = conn.getresponse().status
            conn.close()
        except OSError as exc:  # refused while no server listens: the platform retries
            answers[index].append(type(exc).__name__)
            return False
        answers[index].append(status)
        return status == 200

    def load(indexes: list[int]) -> None:
        for index in indexes:
            while not send(index):
                time.sleep(0.2)
            time.sleep(0.01)  # the load lasts a few seconds, well past the restart

    web = start_web()
    threads = [threading.Thread(target=load, args=(list(range(k, len(deliveries), 4)),)) for k in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    web.send_signal(signal.SIGTERM)
    assert web.wait(timeout=30) == 0
    web = start_web()
    try:
        for thread in threads:
            thread.join(timeout=60)
        statuses = [a for per in answers.values() for a in per]
        assert all(isinstance(a, str) or a == 200 for a in statuses), statuses  # no 5xx, no 4xx
        assert any(isinstance(a, str) for a in statuses)  # the restart was felt by the load
        assert all(per and per[-1] == 200 for per in answers.values())
        keys = {f"shopify-{h['X-Shopify-Webhook-Id']}" for h in deliveries}
        assert set(queue(EVENTS, redis).job_ids) == keys  # every delivery queued once, with its body
        assert all(redis.exists(f"encore:body:{key}") for key in keys)
    finally:
        _stop(web)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
