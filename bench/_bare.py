"""The baseline of bench/ingest.py: a bare Flask app that reads the webhook body and answers 200."""

from __future__ import annotations

from flask import Flask, request


def create_app() -> Flask:
    """A Flask app with the receivers' routes doing nothing but reading the body (gunicorn's `_bare:create_app()`)."""
    app = Flask(__name__)

    @app.post("/webhooks/<platform>")
    def webhook(platform: str):  # type: ignore[no-untyped-def]
        request.get_data()
        return "", 200

    @app.get("/healthz")
    def healthz():  # type: ignore[no-untyped-def]
        return "ok", 200

    return app
