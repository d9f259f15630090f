"""Structured logs: the bound context (event, delivery, run) on every line, and never a secret."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime, timedelta

import responses
from redis import Redis
from sqlalchemy import select

from encore_retention.core import logs
from encore_retention.core.settings import reset_settings
from encore_retention.core.store import session_scope
from tests.conftest import WC_URL, drain, fake_woocommerce_coupons, payload, post_woo, shopify_headers, woo_customer

API = f"{WC_URL}/wp-json/wc/v3"


def test_log_lines_carry_the_bound_context_and_no_secrets(client, redis: Redis):
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logs.JSONFormatter())
    handler.addFilter(logs.ContextFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with logs.bind(event_id="shopify-abc", run_id=42):
            logging.getLogger("encore.test").info("step done", extra={"step": "send_email"})
        body = json.dumps(payload("shopify", "orders_create")).encode()
        client.post("/webhooks/shopify", data=body, headers=shopify_headers(body, "orders/create", secret="wrong"))
    finally:
        root.removeHandler(handler)
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    step = next(line for line in lines if line["message"] == "step done")
    assert (step["event_id"], step["run_id"], step["step"], step["level"]) == ("shopify-abc", 42, "send_email", "info")
    rejected = next(line for line in lines if line["message"] == "webhook rejected")
    assert rejected["reason"] == "bad_signature" and rejected["platform"] == "shopify"
    assert "event_id" not in rejected  # the context ended with its block
    assert "shpss_" not in buffer.getvalue()  # the app secret never reaches the logs


ASK_THE_STORE = """
name: Ask the store whether the code was used
trigger: {event: customer.created}
steps:
  - create_discount: {as: welcome, percent: 10, expires_in: 14d, prefix: HELLO}
  - wait: 1d
  - if: welcome.redeemed
    then:
      - stop: the code was used
"""


@responses.activate
def test_run_id_is_on_every_log_line_of_a_run(client, redis, woo_store, env, tmp_path, caplog):
    """A step's log line does not name its run; the engine binds the run's id around every line of it."""
    import logging

    from encore_retention.core.logs import ContextFilter
    from encore_retention.flows import dates
    from encore_retention.flows.models import FlowRun
    from tests.flows.helpers import walk_to

    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "ask.yaml").write_text(ASK_THE_STORE)
    env.setenv("FLOWS_DIR", str(folder))
    reset_settings()
    fake_woocommerce_coupons()
    post_woo(client, woo_customer(801, "ada@example.com", consent=True), "customer.created")
    drain(redis)
    with session_scope() as session:
        (run,) = session.execute(select(FlowRun)).scalars().all()
    assert run.status == "waiting"
    responses.replace(
        responses.GET,
        f"{API}/coupons",
        status=401,  # the store no longer lets Encore read coupons
        json={
            "code": "woocommerce_rest_cannot_view",
            "message": "Sorry, you cannot list resources.",
            "data": {"status": 401},
        },
    )
    caplog.handler.addFilter(ContextFilter())
    caplog.set_level(logging.INFO)
    try:
        walk_to(redis, datetime.now(UTC) + timedelta(days=1, minutes=2))
    finally:
        dates.set_now(None)
    with session_scope() as session:
        after = session.get(FlowRun, run.id)
        assert after is not None and after.status == "done"
    rooms = ("encore_retention.flows.", "encore_retention.connectors.")
    lines = [r for r in caplog.records if r.name.startswith(rooms)]
    assert any(r.getMessage().startswith("could not ask the platform whether HELLO-") for r in lines)
    assert [getattr(r, "run_id", None) for r in lines] == [run.id] * len(lines)


def test_a_jobs_log_keeps_its_start_and_completion_and_drops_rqs_repeats(client, redis: Redis, caplog):
    from encore_retention import worker

    logs.setup()
    body = json.dumps(payload("shopify", "orders_create")).encode()
    job_id = client.post("/webhooks/shopify", data=body, headers=shopify_headers(body, "orders/create")).get_json()[
        "events"
    ][0]
    rq_worker = logging.getLogger("rq.worker")
    kept = []
    capture = logging.Handler()
    capture.emit = kept.append  # type: ignore[method-assign]
    rq_worker.addHandler(capture)
    try:
        worker.build_worker().work(burst=True)
    finally:
        rq_worker.removeHandler(capture)
    about_the_job = [
        record.getMessage()
        for record in kept
        if job_id in record.getMessage() or "Successfully completed" in record.getMessage()
    ]
    assert len(about_the_job) == 2, about_the_job
    assert "shopify orders/create" in about_the_job[0] and job_id in about_the_job[0]
    assert about_the_job[1].startswith("Successfully completed shopify orders/create job in")
    assert not [record for record in kept if "Job OK" in record.getMessage() or "result is kept" in record.getMessage()]
