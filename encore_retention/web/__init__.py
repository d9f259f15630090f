"""The web app: `create_app()` builds it, one blueprint per area (see `app`).

It stands on top of everything else; nothing below imports it. The Procfile's `gunicorn
"webhooks:create_app()"` reaches it through the receivers' package, which hands `create_app` over.
`create_app` and `unavailable` are found here on first use, so that gunicorn's configuration
(`encore_retention.web.server`) loads no part of the app in gunicorn's master process.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from encore_retention.web.app import create_app  # on first use: see the module's docstring

        return create_app
    if name == "unavailable":
        from encore_retention.web.answers import unavailable

        return unavailable
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
