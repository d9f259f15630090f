"""The web app: webhook receivers (one module per platform), health and metrics.

The package is `encore_retention.webhooks`. Imported by its folder's name from the repository root,
as the Procfile's `gunicorn "webhooks:create_app()"` does, it stands aside for that package, so that
no module is loaded twice under two names.
"""

from __future__ import annotations

if __name__ != "encore_retention.webhooks":
    import importlib
    import sys

    sys.modules[__name__] = importlib.import_module("encore_retention.webhooks")
else:
    from encore_retention.webhooks.app import RECEIVERS, create_app, unavailable

    __all__ = ["RECEIVERS", "create_app", "unavailable"]
