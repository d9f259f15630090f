"""Redaction leaves no trace of the person: every table, every Redis key and value, the archive and the outbox.

A customer goes through real flows (signed webhooks, the queue, the worker, emails to the file outbox
and to a real aiosmtpd server, an unsubscribe link, a data request), then is redacted, and everything
Encore keeps is searched for their address in any case, name, phone and platform id. Their suppression,
a keyed hash, still stops a later marketing email.
"""

from __future__ import annotations

import copy
import email
import email.policy
import hashlib
import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from click.testing import CliRunner
from redis import Redis
from sqlalchemy import inspect, select, text

from encore_retention.cli import main
from encore_retention.connectors.models import DataExport
from encore_retention.connectors.privacy import HELD_AS
from encore_retention.core import archive
from encore_retention.core import events as ev
from encore_retention.core.queue import enqueue_event
from encore_retention.core.settings import reset_settings
from encore_retention.core.store import get_engine, session_scope
from encore_retention.core.store.models import Customer, Suppression
from encore_retention.flows.models import FlowRun, FlowTrace
from tests.conftest import (
    SHOP,
    drain,
    free_port,
    payload,
    register_woo_store,
    shopify_headers,
    use_database,
    woo_headers,
)
from tests.test_email import Recorder

ZERELDA = {
    "first": "Zerelda",
    "last": "Quimbyworth",
    "email": "Zerelda.Quimbyworth@Example.COM",
    "phone": "+1 613-555-0142",
    "id": 7704419931,
}
BERTRAM = {
    "first": "Bertram",
    "last": "Oakhurst",
    "email": "bertram.oakhurst@example.net",
    "phone": "+1 416-555-0177",
    "id": 8800112233,
}

FLOWS = {
    "hello.yaml": """
name: Hello
trigger:
  event: customer.created
conditions:
  - customer.email_consent
entry:
  once_per_customer: true
steps:
  - send_email:
      template: hello.html
      subject: "Hello {{ customer.first_name }} {{ customer.last_name }}"
""",
    "thanks.yaml": """
name: Thanks
kind: transactional
trigger:
  event: order.placed
steps:
  - send_email:
      template: thanks.html
      subject: "Thanks {{ customer.first_name }} {{ customer.last_name }}"
  - send_email:
      template: notice.html
      to: "owner@shop.example"
      subject: "New order from {{ customer.first_name }} {{ customer.last_name }}"
  - wait: 2d
  - send_email:
      template: thanks.html
      subject: "How was it, {{ customer.first_name }}?"
""",
}
TEMPLATES = {
    "hello.html": '{% extends "base.html" %}{% block content %}<p>Hello {{ customer.first_name }} '
    "{{ customer.last_name }} ({{ customer.email }})</p>"
    '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>{% endblock %}',
    "thanks.html": '{% extends "base.html" %}{% block content %}<p>Thanks {{ customer.first_name }} '
    "{{ customer.last_name }}, for order {{ order.number }}.</p>{% endblock %}",
    "notice.html": '{% extends "base.html" %}{% block content %}<p>New order from {{ customer.first_name }} '
    "{{ customer.last_name }} &lt;{{ customer.email }}&gt;, phone {{ customer.phone }}</p>"
    "{% endblock %}",
}


def needles(person: dict[str, Any]) -> list[str]:
    """What would betray the person, lower case: the address (and its Gravatar hash), names, phone, id."""
    address = person["email"].lower()
    digits = re.sub(r"\D", "", person["phone"])
    return [
        address,
        hashlib.md5(address.encode()).hexdigest(),
        person["first"].lower(),
        person["last"].lower(),
        digits,
        digits[-10:],
        f"{digits[-10:-7]}-{digits[-7:-4]}-{digits[-4:]}",
        str(person["id"]),
    ]


# ---- where traces could be -----------------------------------------------------------------------


def _found(where: str, value: Any, wanted: list[str]) -> list[str]:
    if isinstance(value, bytes):
        try:
            value = zlib.decompress(value)
        except zlib.error:
            pass
        value = value.decode("utf-8", errors="replace")
    hay = (value if isinstance(value, str) else json.dumps(value, default=str)).lower()
    return [f"{where}: {needle}" for needle in wanted if needle in hay]


def in_database(url: str, wanted: list[str]) -> list[str]:
    """Every column of every row of every table."""
    engine = get_engine(url)
    found: list[str] = []
    with engine.connect() as connection:
        for table in inspect(engine).get_table_names():
            for row in connection.execute(text(f'SELECT * FROM "{table}"')).mappings():
                for column, value in row.items():
                    found += _found(f"{table}.{column}", value, wanted)
    return found


def in_redis(connection: Redis, wanted: list[str]) -> list[str]:
    """Every key, and every value of every type."""
    found: list[str] = []
    for key in connection.scan_iter(count=1000):
        kind = connection.type(key).decode()
        parts: list[Any] = [key]
        if kind == "string":
            parts.append(connection.get(key))
        elif kind == "hash":
            parts += [part for pair in connection.hgetall(key).items() for part in pair]
        elif kind == "list":
            parts += connection.lrange(key, 0, -1)
        elif kind == "set":
            parts += list(connection.smembers(key))
        elif kind == "zset":
            parts += connection.zrange(key, 0, -1)
        elif kind == "stream":
            parts += [part for _, fields in connection.xrange(key) for pair in fields.items() for part in pair]
        for part in parts:
            found += _found(f"redis {key.decode()}", part, wanted)
    return found


def in_folder(folder: Path, wanted: list[str]) -> list[str]:
    """Every file, as bytes and, for a message, its decoded headers and parts."""
    found: list[str] = []
    for path in folder.rglob("*") if folder.exists() else []:
        if not path.is_file():
            continue
        data = path.read_bytes()
        found += _found(str(path.name), data, wanted)
        message = email.message_from_bytes(data, policy=email.policy.default)
        decoded = [str(value) for value in message.values()]
        decoded += [part.get_content() for part in message.walk() if part.get_content_maintype() == "text"]
        found += _found(f"{path.name} (decoded)", "\n".join(decoded), wanted)
    return found


def everywhere(url: str, redis: Redis, outbox: Path, wanted: list[str]) -> dict[str, list[str]]:
    return {"database": in_database(url, wanted), "redis": in_redis(redis, wanted), "outbox": in_folder(outbox, wanted)}


# ---- a shop with flows, a mail server, payloads about someone ----------------------------------------


@pytest.fixture
def smtp() -> Iterator[tuple[Recorder, int]]:
    handler, port = Recorder(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


@pytest.fixture
def shop(env, redis, db_url, tmp_path: Path, smtp):  # type: ignore[no-untyped-def]
    """The app on `db_url`, with the flows above, mail going to the aiosmtpd server until told otherwise."""
    use_database(env, db_url)
    for folder, files in (("flows", FLOWS), ("templates", TEMPLATES)):
        (tmp_path / folder).mkdir()
        for name, body in files.items():
            (tmp_path / folder / name).write_text(body)
    env.setenv("FLOWS_DIR", str(tmp_path / "flows"))
    env.setenv("TEMPLATES_DIR", str(tmp_path / "templates"))
    env.setenv("EMAIL_URL", f"smtp://127.0.0.1:{smtp[1]}")
    reset_settings()
    from encore_retention.web import create_app

    app = create_app()
    app.testing = True
    return app.test_client()


def use_file_outbox(env, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    env.setenv("EMAIL_URL", f"file://{tmp_path / 'outbox'}")
    reset_settings()
    return tmp_path / "outbox"


def dressed(data: dict[str, Any], person: dict[str, Any]) -> dict[str, Any]:
    """A documented payload made about `person`: every name, address and phone in it theirs."""
    data = copy.deepcopy(data)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            address_like = "first_name" in node
            for key, value in node.items():
                if key == "first_name":
                    node[key] = person["first"]
                elif key == "last_name":
                    node[key] = person["last"]
                elif key == "name" and address_like:
                    node[key] = f"{person['first']} {person['last']}"
                elif key in ("email", "contact_email"):
                    node[key] = person["email"]
                elif key == "phone":
                    node[key] = person["phone"]
                elif key == "username":
                    node[key] = f"{person['first']}.{person['last']}".lower()
                elif key == "avatar_url":
                    node[key] = (
                        "https://secure.gravatar.com/avatar/"
                        + hashlib.md5(person["email"].lower().encode()).hexdigest()
                    )
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(data)
    return data


def shopify_customer(person: dict[str, Any]) -> dict[str, Any]:
    data = dressed(payload("shopify", "customers_create"), person)
    data.update(
        id=person["id"],
        admin_graphql_api_id=f"gid://shopify/Customer/{person['id']}",
        email_marketing_consent={
            "state": "subscribed",
            "opt_in_level": "single_opt_in",
            "consent_updated_at": "2026-11-19T10:00:00Z",
        },
    )
    data["default_address"]["customer_id"] = person["id"]
    return data


def shopify_order(person: dict[str, Any], order_id: int) -> dict[str, Any]:
    data = dressed(payload("shopify", "orders_create"), person)
    data.update(
        id=order_id,
        admin_graphql_api_id=f"gid://shopify/Order/{order_id}",
        name=f"#{order_id}",
        order_number=order_id,
        cancelled_at=None,
        cancel_reason=None,
        financial_status="paid",
        test=False,
    )
    data["customer"].update(id=person["id"], admin_graphql_api_id=f"gid://shopify/Customer/{person['id']}")
    data["customer"]["default_address"]["customer_id"] = person["id"]
    return data


def deliver(client, topic: str, data: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps(data).encode()
    answer = client.post("/webhooks/shopify", data=body, headers=shopify_headers(body, topic))
    assert answer.status_code == 200, answer.data


def unsubscribe_link(message: email.message.Message) -> str:
    return str(message["List-Unsubscribe"]).strip("<>").removeprefix("http://localhost:8000")


def smtp_messages(handler: Recorder, to: str) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(content, policy=email.policy.default)  # type: ignore[misc]
        for _, rcpt, content in handler.messages
        if to.lower() in [r.lower() for r in rcpt]
    ]


def outbox_to(folder: Path, to: str) -> list[email.message.EmailMessage]:
    messages = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in folder.glob("*.eml")]
    return [m for m in messages if to.lower() in str(m["To"]).lower()]  # type: ignore[misc]


def traces_of(client_run_flow: str) -> list[tuple[str, str]]:
    with session_scope() as session:
        runs = session.execute(select(FlowRun.id).where(FlowRun.flow_key == client_run_flow)).scalars().all()
        return [
            (t.kind, t.message)
            for t in session.execute(
                select(FlowTrace).where(FlowTrace.run_id.in_(runs)).order_by(FlowTrace.id)
            ).scalars()
        ]


# ---- customers/redact -----------------------------------------------------------------------------


def test_customers_redact_leaves_no_trace_and_the_suppression_still_holds(
    shop, smtp, env, redis, db_url, tmp_path: Path
):
    client, (mail, _port) = shop, smtp
    outbox = tmp_path / "outbox"
    wanted = needles(ZERELDA)

    # Both sign up (the welcome goes through the SMTP server), then Zerelda orders twice (the file outbox).
    for person in (ZERELDA, BERTRAM):
        deliver(client, "customers/create", shopify_customer(person))
    drain(redis)
    hello = smtp_messages(mail, ZERELDA["email"])
    assert [str(m["Subject"]) for m in hello] == ["Hello Zerelda Quimbyworth"]
    use_file_outbox(env, tmp_path)
    for order_id in (4410001, 4410002):
        deliver(client, "orders/create", shopify_order(ZERELDA, order_id))
        drain(redis)
    thanks = outbox_to(outbox, ZERELDA["email"])
    assert sorted(str(m["Subject"]) for m in thanks) == ["Thanks Zerelda Quimbyworth"] * 2
    assert len(outbox_to(outbox, "owner@shop.example")) == 2  # about her, to the shop

    # She unsubscribes with the link of the email she got (RFC 8058 one-click).
    answer = client.post(
        unsubscribe_link(hello[0]), data="List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded"
    )
    assert answer.status_code == 200
    with session_scope() as session:
        assert [(s.reason, s.source) for s in session.execute(select(Suppression)).scalars()] == [
            ("unsubscribed", "one-click")
        ]

    # She asks what is held: the export has her, both orders, her events and the suppression (as a hash).
    request = dressed(payload("shopify", "customers_data_request"), ZERELDA)
    request.update(
        shop_domain=SHOP, customer={"id": ZERELDA["id"], "email": ZERELDA["email"].upper(), "phone": ZERELDA["phone"]}
    )
    deliver(client, "customers/data_request", request)
    drain(redis)
    with session_scope() as session:
        export = session.execute(select(DataExport)).scalar_one().data
    assert export["customer"]["email"] == ZERELDA["email"]
    assert sorted(o["platform_id"] for o in export["orders"]) == ["4410001", "4410002"]
    assert {e["type"] for e in export["events"]} >= {"customer.created", "order.placed"}
    assert [(s["address"], s["reason"]) for s in export["suppressions"]] == [(HELD_AS, "unsubscribed")]

    # Copies elsewhere: an event the reconciliation queued (its job kept after it ran), a rejected
    # delivery whose reason quotes her, and an update queued behind the redact (processed after it).
    update = ev.Event(
        id="reconciled-1",
        type=ev.EventType.CUSTOMER_UPDATED,
        platform="shopify",
        shop=SHOP,
        topic="customers/update",
        occurred_at=ev.parse_datetime("2026-11-20T00:00:00Z"),
        customer=ev.Customer(
            id=str(ZERELDA["id"]), email=ZERELDA["email"], first_name="Zerelda", phone=ZERELDA["phone"]
        ),
    )
    assert enqueue_event(update)
    drain(redis)
    archive.record_rejection(
        "shopify", "malformed", 400, f"customers/update: bad email {ZERELDA['email']}", "customers/update", SHOP
    )
    before = everywhere(db_url, redis, outbox, wanted)
    assert all(before.values()), before  # each place held her: the search below can find what it looks for
    assert any(line.startswith("webhook_deliveries.body") for line in before["database"])

    redact = {
        "shop_id": 954889,
        "shop_domain": SHOP,
        "orders_to_redact": [4410001, 4410002],
        "customer": {"id": ZERELDA["id"], "email": ZERELDA["email"].swapcase(), "phone": "613-555-0142"},
    }
    deliver(client, "customers/redact", redact)
    late = shopify_customer(ZERELDA) | {"updated_at": "2026-11-21T10:00:00Z"}
    deliver(client, "customers/update", late)  # queued behind the redact: it must not bring her back
    drain(redis)

    assert everywhere(db_url, redis, outbox, wanted) == {"database": [], "redis": [], "outbox": []}
    # Bertram is untouched; the redact itself is on record, without its body.
    assert in_database(db_url, needles(BERTRAM))
    with session_scope() as session:
        assert [c.platform_id for c in session.execute(select(Customer)).scalars()] == [str(BERTRAM["id"])]
        assert session.execute(select(Suppression)).scalar_one().reason == "unsubscribed"
    redacts = [d for d in archive.deliveries(topic="customers/redact")]
    assert [(d.outcome, d.body) for d in redacts] == [("redacted", "{}")]

    # She signs up again, under another id, her address in another case: the welcome is not sent.
    sent_before = len(mail.messages)
    env.setenv("EMAIL_URL", f"smtp://127.0.0.1:{_port}")
    reset_settings()
    again = shopify_customer(ZERELDA | {"id": 7704419932, "email": ZERELDA["email"].lower()})
    deliver(client, "customers/create", again)
    drain(redis)
    assert len(mail.messages) == sent_before
    assert ("suppressed", "email not sent: unsubscribed") in traces_of("hello")

    # And a data request reports what is still held about the address: the suppression, as a hash.
    request["data_request"] = {"id": 10000}
    deliver(client, "customers/data_request", request)
    drain(redis)
    with session_scope() as session:
        latest = session.execute(select(DataExport).order_by(DataExport.id.desc())).scalars().first()
        assert latest is not None
        assert [s["reason"] for s in latest.data["suppressions"]] == ["unsubscribed"]


# ---- shop/redact ----------------------------------------------------------------------------------


def test_shop_redact_leaves_nothing_of_the_shop(shop, smtp, env, redis, db_url, tmp_path: Path):
    client = shop
    outbox = use_file_outbox(env, tmp_path)
    for person in (ZERELDA, BERTRAM):
        deliver(client, "customers/create", shopify_customer(person))
        deliver(client, "orders/create", shopify_order(person, person["id"] % 100000))
    drain(redis)
    archive.record_rejection("shopify", "malformed", 400, "orders/create: bad total", "orders/create", SHOP)
    late = shopify_order(BERTRAM, 99)
    assert len(list(outbox.glob("*.eml"))) == 6
    people = needles(ZERELDA) + needles(BERTRAM)

    deliver(client, "shop/redact", {"shop_id": 954889, "shop_domain": SHOP})
    deliver(client, "orders/create", late)  # queued behind it: must not bring the shop back
    drain(redis)

    # The redact's own event row stays (it names no one); nothing else of the shop does. In Redis only
    # the redact's own job record (for RQ's result_ttl) still says which shop it was for.
    assert in_database(db_url, people + [SHOP]) == []
    assert in_folder(outbox, people + [SHOP]) == [] and list(outbox.glob("*.eml")) == []
    assert in_redis(redis, people) == []
    assert {line.split(":")[0] for line in in_redis(redis, [SHOP])} <= {"redis rq"}
    assert redis.llen("rq:queue:events") == 0 and archive.rejections() == []
    with session_scope() as session:
        assert session.execute(select(Customer)).first() is None


# ---- WooCommerce: `encore privacy redact` -----------------------------------------------------------


def test_woocommerce_customer_is_redacted_by_the_command(shop, smtp, env, redis, db_url, tmp_path: Path):
    client = shop
    outbox = use_file_outbox(env, tmp_path)
    register_woo_store()
    person = ZERELDA | {"id": 884213}
    customer = dressed(payload("woocommerce", "customer_created"), person)
    customer.update(id=person["id"], meta_data=[{"id": 1, "key": "marketing_consent", "value": "yes"}])
    order = dressed(payload("woocommerce", "order_created"), person)
    order.update(id=771, number="771", customer_id=person["id"], status="processing")
    for topic, data in (("customer.created", customer), ("order.created", order)):
        body = json.dumps(data).encode()
        assert client.post("/webhooks/woocommerce", data=body, headers=woo_headers(body, topic)).status_code == 200
    drain(redis)
    hello = outbox_to(outbox, person["email"])
    assert sorted(str(m["Subject"]) for m in hello) == ["Hello Zerelda Quimbyworth", "Thanks Zerelda Quimbyworth"]
    link = unsubscribe_link(next(m for m in hello if str(m["Subject"]).startswith("Hello")))
    assert client.post(link, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    wanted = needles(person)
    before = everywhere(db_url, redis, outbox, wanted)
    assert before["database"] and before["outbox"], before

    result = CliRunner().invoke(main, ["privacy", "redact", "woo.example.com", "--email", person["email"].upper()])
    assert result.exit_code == 0, result.output
    assert everywhere(db_url, redis, outbox, wanted) == {"database": [], "redis": [], "outbox": []}

    again = CliRunner().invoke(main, ["privacy", "redact", "woo.example.com"])
    assert again.exit_code == 2 and "--email or --customer-id" in again.output
    customer.update(id=884214, email=person["email"].lower(), date_modified_gmt="2026-11-22T10:00:00")
    body = json.dumps(customer).encode()
    assert (
        client.post("/webhooks/woocommerce", data=body, headers=woo_headers(body, "customer.created")).status_code
        == 200
    )
    drain(redis)
    assert outbox_to(outbox, person["email"]) == []
    assert ("suppressed", "email not sent: unsubscribed") in traces_of("hello")


# ---- the parts ----------------------------------------------------------------------------------------


def test_redis_loses_what_names_the_person_and_keeps_other_shops_and_people(env, redis):
    from encore_retention.connectors.privacy import forget_in_redis
    from encore_retention.core.queue import enqueue_delivery
    from encore_retention.core.store.ledger import Person
    from encore_retention.webhooks.base import Delivery

    person = Person(platform="shopify", shop=SHOP)
    person.add(ev.Customer(id="7704419931", email=ZERELDA["email"], phone=ZERELDA["phone"]))
    other_shop = "elsewhere.myshopify.com"
    for shop, text_ in (
        (SHOP, f"bad email {ZERELDA['email'].upper()}"),
        (other_shop, f"bad {ZERELDA['email']}"),
        (SHOP, "bad email lzerelda.quimbyworth@example.com"),
        (SHOP, "call (613) 555-0142"),
    ):
        archive.record_rejection("shopify", "malformed", 400, text_, "customers/update", shop)
    redis.hset(
        "encore:sandbox:coupons",
        mapping={
            "hello1": json.dumps({"code": "hello1", "email_restrictions": [ZERELDA["email"].lower()]}),
            "hello2": json.dumps({"code": "hello2", "email_restrictions": ["bertram.oakhurst@example.net"]}),
        },
    )
    for shop, name in ((SHOP, "mine"), (other_shop, "theirs")):
        body = json.dumps(shopify_customer(ZERELDA)).encode()
        enqueue_delivery("shopify", Delivery(shop=shop, topic="customers/update", key=name).to_dict(), body, name)
    purchases = json.dumps({"customerId": "gid://shopify/Customer/7704419931", "numberOfOrders": 3}).encode()
    enqueue_delivery(
        "shopify",
        Delivery(shop=SHOP, topic="customers/purchasing_summary", key="summary").to_dict(),
        purchases,
        "summary",
    )  # names her by id alone

    assert forget_in_redis(redis, person) == 5  # two rejections, a coupon, two jobs with their bodies
    assert [r["detail"] for r in archive.rejections()] == [
        "bad email lzerelda.quimbyworth@example.com",
        f"bad {ZERELDA['email']}",
    ]
    assert list(redis.hgetall("encore:sandbox:coupons")) == [b"hello2"]
    assert redis.lrange("rq:queue:events", 0, -1) == [b"theirs"]
    assert redis.exists("encore:body:theirs", "rq:job:theirs") == 2
    assert redis.exists("encore:body:mine", "rq:job:mine", "encore:body:summary", "rq:job:summary") == 0


def test_the_file_outbox_forgets_by_recipient_and_by_key(env, tmp_path: Path):
    from encore_retention.connectors.email import OutgoingEmail, get_transport, send

    transport = get_transport(f"file://{tmp_path / 'box'}")
    for key, to in (
        ("hello-1", f"Zerelda Q <{ZERELDA['email'].upper()}>"),
        ("hello-2", "lzerelda.quimbyworth@example.com"),
        ("notice-3", "owner@shop.example"),
        ("notice-4", "owner@shop.example"),
    ):
        send(OutgoingEmail(to=to, subject="Hi", html="<p>Hi</p>", text="Hi", idempotency_key=key), transport)
    stray = tmp_path / "box" / ".hello-5.eml.123.tmp"  # a copy its writer never finished
    stray.write_bytes((tmp_path / "box" / "hello-1.eml").read_bytes())

    assert transport.forget(addresses=[ZERELDA["email"]], keys=["notice-3"]) == 3
    assert sorted(p.name for p in (tmp_path / "box").iterdir()) == ["hello-2.eml", "notice-4.eml"]
    assert transport.forget(addresses=[], keys=[]) == 0


def test_a_rehearsed_redaction_changes_nothing(shop, smtp, env, redis, db_url, tmp_path: Path):
    client = shop
    outbox = use_file_outbox(env, tmp_path)
    deliver(client, "customers/create", shopify_customer(ZERELDA))
    drain(redis)
    update = ev.Event(
        id="reconciled-2",
        type=ev.EventType.CUSTOMER_UPDATED,
        platform="shopify",
        shop=SHOP,
        topic="customers/update",
        occurred_at=ev.parse_datetime("2026-11-20T00:00:00Z"),
        customer=ev.Customer(id=str(ZERELDA["id"]), email=ZERELDA["email"]),
    )
    assert enqueue_event(update)  # queued, not run: a real redaction would take it away
    wanted = needles(ZERELDA)
    before = everywhere(db_url, redis, outbox, wanted)
    assert all(before.values()), before
    recorded = tmp_path / "recorded" / "shopify" / "customers_redact.json"
    recorded.parent.mkdir(parents=True)
    recorded.write_text(
        json.dumps(
            {
                "shop_id": 954889,
                "shop_domain": SHOP,
                "orders_to_redact": [],
                "customer": {"id": ZERELDA["id"], "email": ZERELDA["email"], "phone": None},
            }
        )
    )

    result = CliRunner().invoke(main, ["replay", str(recorded), "--dry-run", "--shop", SHOP])
    assert result.exit_code == 0, result.output
    assert everywhere(db_url, redis, outbox, wanted) == before
    assert redis.lrange("rq:queue:events", 0, -1) == [b"reconciled-2"]
