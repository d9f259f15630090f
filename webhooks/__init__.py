"""Webhook receivers: verify the signature over the raw body, normalise into canonical events.

One module per platform (`shopify`, `woocommerce`) of the same shape, what they share (`base`), the
stores' own secrets (`secrets`) and the platforms' documented example deliveries (`examples/`). Each
platform's receiver is found through its plug-in entry (`connectors.base.platforms()`). None of it
needs Flask: the web app's view (`encore_retention.web.receive`), the worker and the tools use the
same parsers.
`create_app` is the web app's, handed over here on first use for the Procfile's
`gunicorn "webhooks:create_app()"`; importing a receiver does not load the web app.

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
        from encore_retention import web  # the web app stands on the receivers: reached only on demand

        return getattr(web, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
