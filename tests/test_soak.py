"""The fault-injection soak (bench/soak.py) at a small size: no email lost, none sent twice.

Runs the soak as a subprocess (the Procfile's processes, its own redis-server, an SQLite file, the
soak's mail server deferring a fifth of first attempts) with 300 first orders at 60/s (so that both faults
fall inside the 5.5 s of load), one worker SIGKILL and one Redis restart of 4 s, and reads its JSON figures.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOAK = ROOT / "bench" / "soak.py"

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


def test_no_email_lost_or_sent_twice_under_faults() -> None:
    command = [
        sys.executable,
        str(SOAK),
        "--orders",
        "300",
        "--rate",
        "60",
        "--worker-kills",
        "1",
        "--redis-restarts",
        "1",
        "--redis-outage",
        "4",
        "--drain-timeout",
        "160",
        "--json",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=215)
    assert done.stdout.strip(), f"the soak printed no figures (exit {done.returncode}):\n{done.stderr[-4000:]}"
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    summary = {k: figures[k] for k in ("lost", "duplicates", "unexpected_5xx", "ledger", "faults", "failed_jobs")}
    context = f"{json.dumps(summary, indent=1)}\n{done.stderr[-4000:]}"
    assert [f["kind"] for f in figures["faults"]] == ["worker kill", "redis restart"], context
    assert figures["lost"] == 0, context
    assert figures["duplicates"] == 0, context
    assert figures["unexpected_5xx"] == 0, context
    assert figures["ledger"]["ok"], context
    assert figures["customers_mailed"] == 300, context
    assert done.returncode == 0, context
