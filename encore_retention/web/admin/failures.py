"""The admin's failed jobs (with requeue), and RQ's own dashboard for operators when it is installed."""

from __future__ import annotations

import hmac
import logging
from typing import Any

from flask import Response, abort, current_app, g, redirect, render_template, request, url_for
from redis.exceptions import RedisError
from rq.exceptions import InvalidJobOperationError, NoSuchJobError
from rq.job import Job

from encore_retention.core import archive
from encore_retention.core.queue import QUEUES, get_redis, queue
from encore_retention.core.store.models import parse_id
from encore_retention.web.admin.auth import blueprint, csrf_token, current_viewer, redis_unavailable, refuse_malformed

log = logging.getLogger("encore.admin")


def exception_line(traceback: str) -> str:
    """The `Type: message` line of a traceback (not the notes some exceptions print after it)."""
    lines = traceback.strip().splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    start = frames[-1] + 1 if frames else 0
    for line in lines[start:]:
        if line.strip() and not line.startswith((" ", "\t")):
            return line
    return lines[-1] if lines else ""


def failed_jobs(limit: int = 100) -> list[dict[str, Any]]:
    """The failed jobs of every Encore queue, newest first, with their exception."""

    found: list[dict[str, Any]] = []
    for name in QUEUES:
        q = queue(name)
        ids = q.failed_job_registry.get_job_ids(0, limit - 1)
        for job in Job.fetch_many(ids, connection=get_redis(), serializer=q.serializer):
            if job is None:
                continue
            result = job.latest_result()
            exc = (result.exc_string if result is not None else None) or ""
            last = exception_line(exc)
            found.append(
                {
                    "queue": name,
                    "id": job.id,
                    "func": job.func_name,
                    "description": job.description,
                    "ended_at": job.ended_at,
                    "error": last,
                    "traceback": exc,
                }
            )
    found.sort(key=lambda item: item["ended_at"].timestamp() if item["ended_at"] else 0, reverse=True)
    return found[:limit]


@blueprint.get("/failures")
def failures():
    """Failed jobs (with a requeue button) and rejected webhooks (with the reason)."""

    error = None
    try:
        jobs, rejected = failed_jobs(), archive.rejections()
    except RedisError as exc:
        jobs, rejected, error = [], [], f"Redis does not answer: {type(exc).__name__}"
    if not g.viewer.everything:
        rejected = [r for r in rejected if r.get("shop") == g.viewer.shop]
    return render_template(
        "admin/failures.html",
        jobs=jobs if g.viewer.everything else [],
        rejected=rejected,
        error=error,
        dashboard=_dashboard_mounted(),
    )


@blueprint.post("/failures/<queue_name>/<job_id>/requeue")
def requeue(queue_name: str, job_id: str):
    """Put a failed job back on its queue."""

    if not g.viewer.everything:
        abort(403)
    if queue_name not in QUEUES:
        abort(404)
    try:
        queue(queue_name).failed_job_registry.requeue(job_id)
    except (NoSuchJobError, InvalidJobOperationError):
        abort(404, "no such failed job")
    log.info("failed job requeued from the admin page", extra={"job_id": job_id, "queue": queue_name})
    return redirect(url_for("admin.failures"))


def _dashboard_mounted() -> bool:
    return "rq_dashboard" in current_app.blueprints


def connection_url() -> str:
    """A URL for the Redis connection this process uses (RQ's dashboard wants one)."""

    kwargs = get_redis().connection_pool.connection_kwargs
    auth = f":{kwargs['password']}@" if kwargs.get("password") else ""
    if kwargs.get("path"):
        return f"unix://{auth}{kwargs['path']}?db={kwargs.get('db', 0)}"
    scheme = "rediss" if kwargs.get("ssl") else "redis"
    return f"{scheme}://{auth}{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


# The dashboard's pages and JSON reads; any other GET (its `requeue/<queue>` answers GET too) is refused.
RQ_DASHBOARD_READS = frozenset(
    {
        "queues_overview",
        "workers_overview",
        "jobs_overview",
        "job_view",
        "list_queues",
        "list_jobs",
        "job_info",
        "list_workers",
        "favicon",
        "static",
    }
)
RQ_DASHBOARD_NUMBERS = frozenset({"per_page", "page"})  # a page and its size: 1 or more
RQ_DASHBOARD_CSRF_COOKIE = "_csrf_token"  # the dashboard's script sends this cookie back as X-CSRFToken


def guard_rq_dashboard() -> None:
    """What the dashboard needs before any of its views run: a known host, an operator's session, reads
    only by GET, and every change (POST) carrying the session's CSRF token in `X-CSRFToken`."""
    refuse_malformed()
    viewer = current_viewer()
    if viewer is None or not viewer.everything:
        abort(401)
    if request.method in ("GET", "HEAD"):
        if (request.endpoint or "").rpartition(".")[2] not in RQ_DASHBOARD_READS:
            abort(405)
    elif not hmac.compare_digest(request.headers.get("X-CSRFToken", ""), csrf_token()):
        log.warning("RQ dashboard change without the form token refused", extra={"path": request.path})
        abort(403, "the page expired; reload it")
    arguments = request.view_args or {}
    if arguments.get("instance_number", 0) != 0:  # one Redis is configured: instance 0
        abort(404)
    for name in RQ_DASHBOARD_NUMBERS & arguments.keys():
        if not parse_id(str(arguments[name])):
            abort(404)


def mount_rq_dashboard(app: Any) -> bool:
    """Mount `rq-dashboard` at /admin/rq for operators (password or link sign-in), when it is installed."""
    try:
        import rq_dashboard  # optional: the `dashboard` extra
        from rq.serializers import JSONSerializer
        from rq_dashboard import web
    except ImportError:
        return False
    web.config.serializer = JSONSerializer
    app.config.from_object(rq_dashboard.default_settings)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix="/admin/rq")

    @app.before_request
    def _rq_dashboard_for_operators():
        if request.blueprint != "rq_dashboard":
            return None
        try:
            guard_rq_dashboard()
        except RedisError as exc:
            return redis_unavailable(exc)
        if not hasattr(current_app, "redis_conn"):  # connect on first use, to the queue's own Redis
            current_app.config["RQ_DASHBOARD_REDIS_URL"] = connection_url()
            web.setup_rq_connection(current_app)
        return None

    @app.after_request
    def _rq_dashboard_form_token(response: Response) -> Response:
        if request.blueprint == "rq_dashboard" and g.get("admin_grant") and response.mimetype == "text/html":
            response.set_cookie(
                RQ_DASHBOARD_CSRF_COOKIE,
                csrf_token(),
                path="/admin/rq",
                samesite="Strict",
                secure=current_app.config.get("SESSION_COOKIE_SECURE", False),
            )
        return response

    return True
