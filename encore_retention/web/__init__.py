"""The web app: `create_app()` builds it, one blueprint per area (see `app`).

It stands on top of everything else; nothing below imports it. The Procfile's `gunicorn
"webhooks:create_app()"` reaches it through the receivers' package, which hands `create_app` over.
"""

from __future__ import annotations

from encore_retention.web.answers import unavailable
from encore_retention.web.app import create_app

__all__ = ["create_app", "unavailable"]
