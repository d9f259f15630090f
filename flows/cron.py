"""Periodic jobs of the flow engine, registered with rq.cron by `encore cron` (see encore_retention/cron.py)."""

from __future__ import annotations

from encore_retention.core.queue import FLOWS, MAINTENANCE
from encore_retention.flows.engine import reschedule_lost
from encore_retention.flows.triggers import sweep

CRON_JOBS = [
    # Hourly: every shop's date triggers due in the next 36 hours, queued at each customer's local time.
    dict(func=sweep, queue_name=FLOWS, cron="5 * * * *"),
    # Every minute: runs whose resume job is gone (Redis restarted, a worker died mid-run).
    dict(func=reschedule_lost, queue_name=MAINTENANCE, interval=60),
]
