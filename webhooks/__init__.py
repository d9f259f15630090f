"""The web app: webhook receivers (one module per platform), health and metrics."""

from __future__ import annotations

from flask import Flask, Response, abort, jsonify

from encore import logs
from encore.settings import get_settings
from webhooks import base, shopify, woocommerce

RECEIVERS: dict[str, base.Receiver] = {
    shopify.platform: shopify.receiver,
    woocommerce.platform: woocommerce.receiver,
}


def create_app() -> Flask:
    """Build the Flask app (gunicorn's `webhooks:create_app()`)."""
    settings = get_settings()
    logs.setup()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.WEBHOOK_MAX_BYTES + 1
    app.secret_key = settings.secret_key

    @app.post("/webhooks/<platform>")
    def webhook(platform: str):  # type: ignore[no-untyped-def]
        receiver = RECEIVERS.get(platform)
        if receiver is None:
            abort(404)
        return base.receive(receiver)

    @app.get("/healthz")
    def healthz():  # type: ignore[no-untyped-def]
        from webhooks.health import check

        failing = check()
        status = 503 if failing else 200
        return jsonify(status="ok" if not failing else "failing", failing=failing), status

    @app.get("/metrics")
    def metrics():  # type: ignore[no-untyped-def]
        from encore.metrics import exposition

        body, content_type = exposition()
        return Response(body, content_type=content_type)

    @app.errorhandler(413)
    def too_large(_exc):  # type: ignore[no-untyped-def]
        return jsonify(error="too_large"), 413

    from webhooks import oauth, unsubscribe

    app.register_blueprint(oauth.blueprint)
    app.register_blueprint(unsubscribe.blueprint)
    from webhooks import admin

    admin.register(app)
    return app
