"""The web app (`create_app`): webhook receivers (one module per platform), health and metrics."""

from __future__ import annotations

import logging

from flask import Flask, Request, Response, abort, jsonify, request
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import RequestEntityTooLarge

from encore_retention.core import archive, logs
from encore_retention.core.events import MALFORMED_ERRORS, problem
from encore_retention.core.health import SchemaWatch
from encore_retention.core.queue import enqueue_delivery
from encore_retention.core.settings import get_settings
from encore_retention.core.store.models import utcnow
from encore_retention.webhooks import health, metrics
from encore_retention.webhooks.base import Delivery, Receiver, Rejected, parse_json
from encore_retention.webhooks.receivers import RECEIVERS

log = logging.getLogger("encore.web")
receive_log = logging.getLogger("encore.webhooks")
# What answers without the database: the receivers look secrets up themselves (cached, 503 when they can't).
NO_DATABASE_ENDPOINTS = frozenset({"webhook", "healthz", "metrics", "static"})
NO_DATABASE_BLUEPRINTS = frozenset({"sandbox"})
RETRY_AFTER_SECONDS = 5


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
        log.error("database not ready at start; pages that need it answer 503 until it is",
                  extra={"problem": problem})
    warning = health.persistence()  # the answer /healthz shows for the next minute too
    if warning:
        log.warning(warning)

    @app.before_request
    def database_ready():  # type: ignore[no-untyped-def]
        endpoint = request.endpoint
        if (endpoint is None or endpoint in NO_DATABASE_ENDPOINTS or endpoint.endswith(".static")
                or request.blueprint in NO_DATABASE_BLUEPRINTS):
            return None
        if schema.ensure() is None:
            return None
        return _schema_unavailable(schema)

    @app.post("/webhooks/<platform>")
    def webhook(platform: str):  # type: ignore[no-untyped-def]
        receiver = RECEIVERS.get(platform)
        if receiver is None:
            abort(404)
        return receive(receiver)

    @app.get("/healthz")
    def healthz():  # type: ignore[no-untyped-def]
        failing = health.check(schema)
        warnings = health.warnings() if "redis" not in failing else {}
        status = 503 if failing else 200
        return jsonify(status="ok" if not failing else "failing", failing=failing, warnings=warnings), status

    @app.get("/metrics")
    def metrics():  # type: ignore[no-untyped-def]
        from encore_retention.core.metrics import exposition

        body, content_type = exposition()
        return Response(body, content_type=content_type)

    @app.errorhandler(413)
    def too_large(_exc):  # type: ignore[no-untyped-def]
        return jsonify(error="too_large"), 413

    @app.errorhandler(DBAPIError)
    def database_error(exc: DBAPIError):  # type: ignore[no-untyped-def]
        if not _unreachable(exc):
            raise exc
        if _missing_table(exc):
            schema.forget()
        log.error("database unavailable", extra={"path": request.path, "error": type(exc.orig).__name__})
        return unavailable("database_unavailable", f"database unavailable ({type(exc.orig).__name__}); "
                                                   "try again in a few seconds")

    @app.errorhandler(DisconnectionError)
    @app.errorhandler(PoolTimeoutError)
    def database_busy(exc: SQLAlchemyError):  # type: ignore[no-untyped-def]
        log.error("database unavailable", extra={"path": request.path, "error": type(exc).__name__})
        return unavailable("database_unavailable", f"database unavailable ({type(exc).__name__}); "
                                                   "try again in a few seconds")

    from encore_retention.webhooks import oauth, unsubscribe

    app.register_blueprint(oauth.blueprint)
    app.register_blueprint(unsubscribe.blueprint)
    from encore_retention.webhooks import admin

    admin.register(app)
    return app


def unavailable(error: str, detail: str):  # type: ignore[no-untyped-def]
    """A 503 with Retry-After: plain text for a browser, JSON `{"error", "detail"}` for the rest."""
    if request.accept_mimetypes.accept_html and not request.accept_mimetypes.accept_json:
        response = Response(detail + "\n", status=503, content_type="text/plain; charset=utf-8")
    else:
        response = jsonify(error=error, detail=detail)
        response.status_code = 503
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def _schema_unavailable(schema: SchemaWatch):  # type: ignore[no-untyped-def]
    if schema.unavailable:
        reason = (schema.problem or "").removeprefix("unavailable: ")
        return unavailable("database_unavailable", f"database unavailable ({reason}); try again in a few seconds")
    return unavailable("schema_not_up_to_date", f"database schema is not up to date ({schema.problem}); "
                                                "run `encore migrate`")


def _unreachable(exc: DBAPIError) -> bool:
    """True for errors of a database that can't answer (down, gone, lost its tables), not of a statement."""
    return isinstance(exc, (OperationalError, InterfaceError)) or exc.connection_invalidated or _missing_table(exc)


def _missing_table(exc: DBAPIError) -> bool:
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return sqlstate == "42P01" or "no such table" in str(exc.orig)


def _read_body(req: Request) -> bytes:
    limit = get_settings().WEBHOOK_MAX_BYTES
    if req.content_length is not None and req.content_length > limit:
        raise Rejected(413, "too_large", f"body over {limit} bytes")
    try:
        body = req.get_data(cache=True)
    except RequestEntityTooLarge as exc:
        raise Rejected(413, "too_large", f"body over {limit} bytes") from exc
    if len(body) > limit:
        raise Rejected(413, "too_large", f"body over {limit} bytes")
    return body


def receive(receiver: Receiver):  # type: ignore[no-untyped-def]
    """The Flask view body shared by every platform's receiver.

    It does the least that makes a delivery safe to acknowledge: size, signature, JSON, the event
    key, and a trial run of the platform's `parse`, so that a value the event model refuses (out of
    range for the store, of the wrong type) is answered 400 now rather than failing in the worker
    after a 200. The raw body and the delivery go to Redis in one transaction with the RQ job; the
    worker normalises them again (`encore.jobs.process_delivery`), so a 200 costs little more than
    the signature check, the parse (about 0.1 ms of CPU for a 15 KB order) and two Redis round trips.
    """
    platform = receiver.platform
    delivery: Delivery | None = None
    try:
        body = _read_body(request)
        delivery = receiver.verify(request.headers, body)
        if delivery.ping:
            metrics.received(platform, "ping")
            return jsonify(status="ok"), 200
        payload = parse_json(request.mimetype, body)
        try:
            key = receiver.key(delivery, payload, body)
            if key is not None:  # normalised now only to be checked: the worker's run of it must not fail
                delivery.key = key
                receiver.parse(delivery, payload, body)
        except MALFORMED_ERRORS as exc:
            raise Rejected(400, "malformed", f"{delivery.topic}: {problem(exc)}") from exc
    except Rejected as exc:
        metrics.received(platform, exc.reason)
        archive.record_rejection(platform, exc.reason, exc.status, exc.detail, delivery.topic if delivery else None,
                                 delivery.shop if delivery else None, request.remote_addr,
                                 delivery.delivery_id if delivery else None)
        receive_log.warning("webhook rejected", extra={"platform": platform, "reason": exc.reason, "status": exc.status,
                                               "detail": exc.detail[:300],
                                               "topic": delivery.topic if delivery else None})
        return jsonify(error=exc.reason, detail=exc.detail[:300]), exc.status

    if key is None:
        metrics.received(platform, "ignored")
        receive_log.info("webhook topic not handled", extra={"platform": platform, "topic": delivery.topic,
                                                     "delivery_id": delivery.delivery_id})
        return jsonify(status="ignored", topic=delivery.topic), 200
    delivery.received_at = utcnow().isoformat()
    delivery.http_headers = archive.safe_headers(request.headers.items())
    try:
        queued = enqueue_delivery(platform, delivery.to_dict(), body, key)
    except RedisError as exc:
        metrics.received(platform, "queue_unavailable")
        receive_log.error("queue unavailable; answering 503 so the platform retries",
                  extra={"platform": platform, "topic": delivery.topic, "error": type(exc).__name__})
        return jsonify(error="queue_unavailable"), 503
    status = "queued" if queued else "duplicate"
    metrics.received(platform, status)
    receive_log.debug("webhook %s", status, extra={"platform": platform, "topic": delivery.topic,
                                           "delivery_id": delivery.delivery_id, "event_id": key})
    return jsonify(status=status, events=[key]), 200
