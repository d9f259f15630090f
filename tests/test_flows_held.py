"""Held emails: the frequency cap and quiet hours defer an email, never drop it, in priority order, within
`max_delay`; a code for an email is made when the email is admitted; a dropped email ends its run as suppressed.

Real Redis and SQLite through the engine, and the simulator beside it on the same flows.
"""

from __future__ import annotations

from datetime import UTC, timedelta
from pathlib import Path

from encore_retention import simulate
from encore_retention.flows import loader
from encore_retention.jobs import process_event
from tests import test_flows_engine
from tests.flows.helpers import FakeConnector, customer, event, order, walk_to
from tests.test_flows_engine import T0, flow_dir, runs, subjects, trace

flows_env = test_flows_engine.flows_env  # the engine tests' fixture: real Redis and SQLite, a fake platform, T0

WELCOME = """
name: Welcome
trigger: {event: customer.created}
steps:
  - send_email: {template: check_in.html, subject: "Welcome"}
"""

REWARD = """
name: Reward
trigger: {event: order.placed}
priority: high
steps:
  - tag_customer: rewarded
  - create_discount: {as: reward, amount: 10, expires_in: 60d, prefix: LOYAL}
  - send_email: {template: loyalty_reward.html, subject: "Reward {{ reward.code }}"}
"""

PROMO = """
name: Promo
trigger: {event: order.placed}
priority: low
steps:
  - send_email: {template: check_in.html, subject: "Promo"}
"""


def test_a_capped_reward_waits_for_the_cap_and_its_code_is_made_when_it_goes(flows_env, redis, tmp_path: Path):
    flow_dir(tmp_path, flows_env, welcome=WELCOME, reward=REWARD)
    process_event(event("customer.created", T0, customer()))
    process_event(event("order.placed", T0 + timedelta(hours=1), customer(), order=order("1", T0)))
    assert subjects(tmp_path) == ["Welcome"]
    (reward,) = runs(flow_key="reward")
    cap_end = T0 + timedelta(hours=16)
    assert reward.status == "waiting" and reward.wake_at == cap_end and reward.deferred_since == T0
    assert FakeConnector.tags and FakeConnector.discounts == {}  # tagged; the code waits for its email
    assert ("deferred", f"email held back (frequency cap): sending at {cap_end.isoformat()}") in trace(reward.id)
    from click.testing import CliRunner

    from encore_retention.cli import main

    listed = CliRunner().invoke(main, ["flows", "runs", "--flow", "reward"]).output
    assert "· waiting · started" in listed and "email held back since 2026-03-02 12:00Z" in listed
    assert "email held back (frequency cap): sending at" in listed

    walk_to(redis, cap_end + timedelta(minutes=1))
    assert subjects(tmp_path) == ["Reward LOYAL000001", "Welcome"]
    (made,) = FakeConnector.discounts.values()
    assert made.ends_at == cap_end + timedelta(minutes=1) + timedelta(days=60)  # from when it was made
    (reward,) = runs(flow_key="reward")
    assert reward.status == "done" and reward.reason == "completed"


def test_held_emails_go_in_priority_order_when_the_cap_ends(flows_env, redis, tmp_path: Path):
    flow_dir(tmp_path, flows_env, welcome=WELCOME, promo=PROMO, reward=REWARD)
    process_event(event("customer.created", T0, customer()))
    # the promotion is held first; the reward, held later, still goes first: its priority is higher
    process_event(event("order.placed", T0 + timedelta(hours=1), customer(), order=order("1", T0)))
    (promo,) = runs(flow_key="promo")
    (reward,) = runs(flow_key="reward")
    assert promo.status == reward.status == "waiting" and promo.wake_at == reward.wake_at
    walk_to(redis, T0 + timedelta(hours=16, minutes=1))
    assert subjects(tmp_path) == ["Reward LOYAL000001", "Welcome"]
    (promo,) = runs(flow_key="promo")
    assert promo.status == "waiting" and promo.deferred_since is not None
    assert any(kind == "deferred" and "another held email goes first" in message for kind, message in trace(promo.id))
    # then the promotion, once the cap since the reward has passed
    walk_to(redis, T0 + timedelta(hours=32, minutes=3))
    assert subjects(tmp_path) == ["Promo", "Reward LOYAL000001", "Welcome"]


def test_an_email_that_cannot_go_within_max_delay_is_dropped_and_its_run_suppressed(flows_env, redis, tmp_path: Path):
    flow_dir(tmp_path, flows_env, welcome=WELCOME, reward=REWARD.replace("priority: high", "max_delay: 10h"))
    process_event(event("customer.created", T0, customer()))
    process_event(event("order.placed", T0 + timedelta(hours=1), customer(), order=order("1", T0)))
    (reward,) = runs(flow_key="reward")
    assert reward.status == "suppressed"
    assert reward.reason == "email not sent: frequency cap, and it could not go within max_delay"
    assert FakeConnector.discounts == {}  # no code for an email that won't go
    lines = trace(reward.id)
    assert ("suppressed", "email not sent: frequency cap, and it could not go within max_delay") in lines
    assert lines[-1][0] == "stop" and "steps after it don't run" in lines[-1][1]
    walk_to(redis, T0 + timedelta(days=2))
    assert subjects(tmp_path) == ["Welcome"]


FOLLOW_UP = """
name: Win back
trigger: {event: order.placed}
frequency_cap: off
steps:
  - send_email: {template: check_in.html, subject: "We miss you"%s}
  - wait: 1d
  - send_email: {template: check_in.html, subject: "A quick reminder"%s}
  - tag_customer: reminded
"""


def test_steps_after_a_dropped_email_do_not_run_unless_the_flow_says_so(flows_env, redis, tmp_path: Path):
    from encore_retention.core.store import session_scope
    from encore_retention.core.store.models import Shop
    from encore_retention.core.unsubscribe import suppress

    flow_dir(tmp_path, flows_env, win_back=FOLLOW_UP % ("", ""))
    process_event(event("customer.created", T0, customer()))
    with session_scope() as session:
        shop = session.query(Shop).one()
        suppress(session, shop.id, "c1001@example.com", "hard bounce", "smtp")
    process_event(event("order.placed", T0, customer(), order=order("1", T0)))
    (run,) = runs(flow_key="win_back")
    assert run.status == "suppressed" and run.reason == "email not sent: suppressed (hard bounce)"
    walk_to(redis, T0 + timedelta(days=2))
    assert subjects(tmp_path) == [] and FakeConnector.tags == []  # no "quick reminder" of nothing

    flow_dir(tmp_path, flows_env, win_back=FOLLOW_UP % ((", if_not_sent: continue",) * 2))
    process_event(event("order.placed", T0 + timedelta(days=2), customer(), order=order("2", T0)))
    (_, run) = runs(flow_key="win_back")
    assert run.status == "waiting"  # it goes on past the email it did not send
    walk_to(redis, T0 + timedelta(days=3, minutes=1))
    (_, run) = runs(flow_key="win_back")
    assert FakeConnector.tags == [("1001", ["reminded"])]
    assert run.status == "suppressed" and run.reason == "email not sent: suppressed (hard bounce)"
    assert ("done", "run completed, without an email it did not send (suppressed (hard bounce))") in trace(run.id)


def test_the_simulator_holds_and_orders_emails_as_the_engine_does(tmp_path: Path):
    folder = tmp_path / "flows"
    folder.mkdir()
    for name, text in (("a_welcome", WELCOME), ("promo", PROMO), ("reward", REWARD)):
        (folder / f"{name}.yaml").write_text(text.replace("customer.created", "order.placed"))
    flows = {f.key: f for f in loader.load_dir(folder)[0]}
    # the welcome email takes the cap on the first order; the promo and the reward are held back
    sim = simulate.Simulation(flows, {"id": 1, "name": "Shop", "currency": "EUR"}, UTC, T0, T0 + timedelta(days=5))
    first = simulate.HistoricalOrder(order("1", T0), "ada", "ada@example.com", "Ada", consent=True)
    sim.load([first], [])
    sim.run()
    sent = [(o.flow, o.at) for o in sim.outcomes if o.action == "email"]
    assert [flow for flow, _ in sent] == ["a_welcome", "reward", "promo"]
    assert sent[1][1] == T0 + timedelta(hours=16) and sent[2][1] == T0 + timedelta(hours=32)
    counts = simulate.summary(sim)
    assert counts["promo"]["deferred"] == 3 and counts["reward"]["deferred"] == 1
    assert counts["reward"]["code"] == 1
