"""Webhook receivers (one module per platform) and, for now, the web app (`create_app`).

The receivers (`base`, `shopify`, `woocommerce`, `receivers`, `secrets`) need no Flask: the worker
and the tools import them alone. `create_app` and `RECEIVERS` are found here on first use, so that
importing a receiver does not load the web app.

The package is `encore_retention.webhooks`. Imported by its folder's name from the repository root,
as the Procfile's `gunicorn "webhooks:create_app()"` does, it stands aside for that package, so that
no module is loaded twice under two names.
"""

from __future__ import annotations

from typing import Any

if __name__ != "encore_retention.webhooks":
    import importlib
    import sys

    sys.modules[__name__] = importlib.import_module("encore_retention.webhooks")


def __getattr__(name: str) -> Any:
    if name in ("create_app", "unavailable"):
        from encore_retention.webhooks import app

        return getattr(app, name)
    if name == "RECEIVERS":
        from encore_retention.webhooks.receivers import RECEIVERS

        return RECEIVERS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
