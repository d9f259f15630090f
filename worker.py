"""The Procfile's `worker`: `python worker.py` runs `encore_retention.worker`, RQ's worker with its scheduler."""

from __future__ import annotations

from encore_retention.worker import main

if __name__ == "__main__":
    main()
