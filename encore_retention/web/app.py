"""The web app (`create_app`): one blueprint per area.

receivers (`receive`, and the sending services' `mail`), health and metrics (`health`), the Shopify
install (`install`), unsubscribe links (`unsubscribe`), the feedback links' page (`feedback`), the admin
page (`admin`, page by page), and in development the sample WooCommerce store (`sandbox`).
"""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from encore_retention.connectors.base import platforms
from encore_retention.core import logs
from encore_retention.core.health import SchemaWatch
from encore_retention.core.settings import get_settings
from encore_retention.web import admin, feedback, health, install, mail, receive, sandbox, unsubscribe
from encore_retention.web.answers import unavailable

log = logging.getLogger("encore.web")
# What answers without the database: the receivers look secrets up themselves (cached, 503 when they can't).
NO_DATABASE_BLUEPRINTS = frozenset({"receivers", "mail_receivers", "health", "sandbox"})


def create_app() -> Flask:
    """Build the Flask app (gunicorn's `webhooks:create_app()`).

    At start it brings the database schema up to date (`migrate`, serialised between processes) and
    warns when Redis may lose what it acknowledged. A database that can't be reached does not stop it:
    the pages that need one answer 503 and the migration is tried again on later requests.
    """
    settings = get_settings()
    logs.setup()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.WEBHOOK_MAX_BYTES + 1
    app.secret_key = settings.secret_key
    schema = app.extensions["encore.schema"] = SchemaWatch()
    problem = schema.ensure()
    if problem:
        log.error("database not ready at start; pages that need it answer 503 until it is", extra={"problem": problem})
    warning = health.persistence()  # the answer /healthz shows for the next minute too
    if warning:
        log.warning(warning)
    log.info("platforms loaded", extra={"platforms": sorted(platforms())})  # a broken plug-in is reported now

    @app.before_request
    def database_ready():
        endpoint = request.endpoint
        if endpoint is None or endpoint.endswith(".static") or request.blueprint in NO_DATABASE_BLUEPRINTS:
            return None
        if schema.ensure() is None:
            return None
        return _schema_unavailable(schema)

    @app.errorhandler(413)
    def too_large(_exc):
        return jsonify(error="too_large"), 413

    @app.errorhandler(DBAPIError)
    def database_error(exc: DBAPIError):
        if not _unreachable(exc):
            raise exc
        if _missing_table(exc):
            schema.forget()
        log.error("database unavailable", extra={"path": request.path, "error": type(exc.orig).__name__})
        return unavailable(
            "database_unavailable", f"database unavailable ({type(exc.orig).__name__}); try again in a few seconds"
        )

    @app.errorhandler(DisconnectionError)
    @app.errorhandler(PoolTimeoutError)
    def database_busy(exc: SQLAlchemyError):
        log.error("database unavailable", extra={"path": request.path, "error": type(exc).__name__})
        return unavailable(
            "database_unavailable", f"database unavailable ({type(exc).__name__}); try again in a few seconds"
        )

    for area in (receive, mail, health, install, unsubscribe, feedback):
        app.register_blueprint(area.blueprint)
    admin.register(app)
    if settings.sandbox:  # the sample store, in development only (ENCORE_SANDBOX overrides)
        app.register_blueprint(sandbox.blueprint)
    return app


def _schema_unavailable(schema: SchemaWatch):
    if schema.unavailable:
        reason = (schema.problem or "").removeprefix("unavailable: ")
        return unavailable("database_unavailable", f"database unavailable ({reason}); try again in a few seconds")
    return unavailable(
        "schema_not_up_to_date", f"database schema is not up to date ({schema.problem}); run `encore migrate`"
    )


def _unreachable(exc: DBAPIError) -> bool:
    """True for errors of a database that can't answer (down, gone, lost its tables), not of a statement."""
    return isinstance(exc, (OperationalError, InterfaceError)) or exc.connection_invalidated or _missing_table(exc)


def _missing_table(exc: DBAPIError) -> bool:
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return sqlstate == "42P01" or "no such table" in str(exc.orig)
