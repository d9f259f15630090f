"""The web process's gunicorn settings, read with `gunicorn -c python:webhooks.server`.

Slow clients must not starve the receivers and /healthz. With gunicorn's sync workers each
connection holds a whole worker process until its request is read, so two clients that stall
halfway through a body kept /healthz waiting 33 s on two workers. Here:
- gthread workers: a connection that has sent nothing waits in gunicorn's poller (up to its
  keep-alive time), not in a thread, and one stalled client holds one thread of `threads`, not a
  process;
- `ReadTimeoutWorker` puts a read timeout on every connection while a thread serves it: a client
  that sends nothing for READ_TIMEOUT seconds mid-request is dropped (a body cut short this way
  answers 400), so even many stalled clients free their threads within seconds.

A client that trickles a byte every few seconds still holds a thread; production puts a buffering
proxy in front (nginx buffers whole request bodies by default: docs/deploy.md). `bench/slow_clients.py`
measures both configurations.
"""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.workers import gthread

READ_TIMEOUT = 5.0  # seconds a client may send nothing in the middle of a request

worker_class = "encore_retention.web.server.ReadTimeoutWorker"
threads = 32  # threads waiting on a socket cost little; CPU work stays at one per core (GIL)
worker_connections = threads  # more wait in the listen backlog, for a worker with a free thread
keepalive = 5
limit_request_line = 8190


class _TimedConn(gthread.TConn):
    """A connection whose reads and writes time out while a worker thread serves it.

    Its lingering close (gunicorn waits up to 2 s for the client to finish) runs in a worker
    thread: on the worker's main thread, a row of stalled clients closed one after another kept it
    from its heartbeat, and gunicorn killed the worker with every connection on it.
    """

    closer: Any = None  # the worker's thread pool

    def init(self) -> None:
        super().init()  # (re)sets blocking mode on every request; the timeout goes on after it
        self.sock.settimeout(READ_TIMEOUT)

    def close(self, graceful: bool = False) -> None:
        if graceful and self.closer is not None:
            try:
                self.closer.submit(super().close, True)
                return
            except RuntimeError:  # the pool is shutting down: close here
                pass
        super().close(graceful)


class ReadTimeoutWorker(gthread.ThreadWorker):
    """gunicorn's threaded worker with a read timeout on each connection it serves."""

    def enqueue_req(self, conn: Any) -> None:
        if type(conn) is gthread.TConn:
            conn.__class__ = _TimedConn  # the same object, with the timed `init` and `close`
            conn.closer = self.tpool
        super().enqueue_req(conn)


class _QuietTimeouts(logging.Filter):
    """gunicorn logs a client that timed out as an error with a traceback; it is a line of info."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TimeoutError):
            record.msg, record.args, record.exc_info, record.exc_text = (
                "Dropped a client that sent nothing for %g s",
                (READ_TIMEOUT,),
                None,
                None,
            )
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def post_worker_init(worker: Any) -> None:
    """gunicorn hook: quiet the timed-out clients in this worker's error log."""
    worker.log.error_log.addFilter(_QuietTimeouts())


def gunicorn_options(workers: int) -> list[str]:
    """Command-line options that start gunicorn with these settings (for `encore run` and the benches)."""
    return ["--config", "python:encore_retention.web.server", "--workers", str(workers)]
