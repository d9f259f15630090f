"""Bounces and complaints: a 5xx at RCPT or DATA from a real SMTP server, Amazon SES through signed SNS messages and
Mailgun's signed webhooks suppress the address at every store of the same sender; soft bounces count to
SOFT_BOUNCE_LIMIT in a row; the admin lists suppressions with reasons and lifts one, recorded."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import socket
import time
import uuid
from collections.abc import Iterator

import pytest
import responses
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from rq.job import Job
from rq.serializers import JSONSerializer
from sqlalchemy import select

from encore_retention.core import bounces
from encore_retention.core.settings import reset_settings
from encore_retention.core.store import session_scope
from encore_retention.core.store.ledger import get_or_create_shop
from encore_retention.core.store.models import ConsentChange, Customer, Suppression
from encore_retention.core.unsubscribe import address_key, is_suppressed
from encore_retention.webhooks import ses
from tests.conftest import SHOP, drain, sign_in
from tests.test_email import HELLO_FLOW, HELLO_TEMPLATE, Recorder

LOCAL = {"REMOTE_ADDR": "127.0.0.1"}
SISTER = "sister-tea.myshopify.com"  # mails from the same domain as SHOP's flow (example.com)
STRANGER = "stranger.myshopify.com"  # mails from another domain
TOPIC = "arn:aws:sns:us-east-1:123456789012:encore-ses-notifications"
CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem"
MAILGUN_KEY = "key-0123456789abcdef0123456789abcdef"
BOUNCED = "jane@example.net"


@pytest.fixture
def app(app_on_each_database):  # type: ignore[no-untyped-def]
    """The web app, over SQLite and then PostgreSQL, for every test here."""
    return app_on_each_database


@pytest.fixture
def stores(database) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Three stores: SHOP and its sister mail from example.com, the stranger from elsewhere.org."""
    found = {}
    with session_scope() as session:
        for domain, sender in (
            (SHOP, "Tea <shop@example.com>"),
            (SISTER, "Sister Tea <news@Example.com>"),
            (STRANGER, "Stranger <hi@elsewhere.org>"),
        ):
            shop = get_or_create_shop(session, "shopify", domain)
            shop.email_from = sender
            session.flush()
            found[domain] = shop.id
    return found


def _suppressed(address: str) -> dict[int, str]:
    with session_scope() as session:
        return {
            shop_id: reason
            for (shop_id,) in session.execute(select(Suppression.shop_id)).all()
            if (reason := is_suppressed(session, shop_id, address))
        }


# ---- SMTP: a real server refusing at RCPT or DATA ------------------------------------------------


class RefusingSender(Recorder):
    """Refuses the sender (MAIL FROM): our problem, not the recipient's."""

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # noqa: N802
        return "550 5.7.1 Sender not allowed"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def smtp_flow(env, redis, tmp_path, stores) -> Iterator[Recorder]:  # type: ignore[no-untyped-def]
    """A flow that mails every new customer, through an aiosmtpd server whose handler a test picks."""
    from encore_retention.flows import dates, render

    for folder, name, text in (("flows", "hello.yaml", HELLO_FLOW), ("templates", "hello.html", HELLO_TEMPLATE)):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / name).write_text(text)
    env.setenv("FLOWS_DIR", str(tmp_path / "flows"))
    env.setenv("TEMPLATES_DIR", str(tmp_path / "templates"))
    render.reset()
    dates.set_now(dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC))
    controllers = []

    def start(handler: Recorder) -> Recorder:
        port = _free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port)
        controller.start()
        controllers.append(controller)
        env.setenv("EMAIL_URL", f"smtp://127.0.0.1:{port}?keepalive=0")
        reset_settings()
        return handler

    yield start  # type: ignore[misc]
    for controller in controllers:
        controller.stop()
    dates.set_now(None)
    render.reset()


def _new_customer() -> None:
    from encore_retention.jobs import process_event
    from tests.flows.helpers import customer, event

    process_event(event("customer.created", dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC), customer()))


@pytest.mark.parametrize("stage", ["rcpt", "data"])
def test_a_5xx_at_rcpt_or_data_suppresses_the_address_at_the_stores_of_that_sender(smtp_flow, stores, redis, stage):
    handler = Recorder()
    setattr(handler, f"{stage}_reply", "550 5.1.1 <c1001@example.com>: Recipient address rejected: User unknown")
    smtp_flow(handler)
    _new_customer()

    assert _suppressed("c1001@example.com") == {stores[SHOP]: "bounced", stores[SISTER]: "bounced"}
    with session_scope() as session:
        changes = list(session.execute(select(ConsentChange).order_by(ConsentChange.id)).scalars())
        customer = session.execute(select(Customer)).scalar_one()
        assert customer.email_consent is False
        mine = [c for c in changes if c.shop_id == stores[SHOP]]
        assert [(c.reason, c.source, c.writeback) for c in mine] == [("bounced", "smtp", "pending")]
        assert "User unknown" in mine[0].note
        pending = mine[0].id
    # the consent write-back of the customer is queued, as for an unsubscribe
    job = Job.fetch(f"consent-writeback-{pending}", connection=redis, serializer=JSONSerializer)
    assert job.get_status() == "queued"


def test_a_refused_sender_is_ours_to_fix_and_suppresses_nobody(smtp_flow, stores):
    smtp_flow(RefusingSender())
    _new_customer()
    assert _suppressed("c1001@example.com") == {}


# ---- Amazon SES through SNS ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sns_signer() -> tuple[rsa.RSAPrivateKey, bytes]:
    """A signing key and its self-signed certificate, standing in for SNS's."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


def signed_sns(key: rsa.RSAPrivateKey, kind: str, message: str, version: str = "1", **fields: str) -> dict:
    """An SNS message as SNS posts it, signed as SNS's documentation says: the fields of its type, in order."""
    body = {
        "Type": kind,
        "MessageId": str(uuid.uuid4()),
        "TopicArn": TOPIC,
        "Message": message,
        "Timestamp": "2026-12-01T12:00:00.000Z",
        "SignatureVersion": version,
        "SigningCertURL": CERT_URL,
        **fields,
    }
    if kind == "Notification":
        body["UnsubscribeURL"] = "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x"
        names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    text = "".join(f"{name}\n{body[name]}\n" for name in names if name in body)
    digest = hashes.SHA1() if version == "1" else hashes.SHA256()
    body["Signature"] = base64.b64encode(key.sign(text.encode(), padding.PKCS1v15(), digest)).decode()
    return body


def ses_mail(sender: str = "Tea <shop@example.com>") -> dict:
    return {
        "timestamp": "2026-12-01T11:59:58.237Z",
        "source": "shop@example.com",
        "sourceArn": "arn:aws:ses:us-east-1:123456789012:identity/example.com",
        "sendingAccountId": "123456789012",
        "messageId": "0100016e8ac8f2a4-5b6c0c2c-9c55-4e86-9d5e-4a0e1a1c9f2d-000000",
        "destination": [BOUNCED],
        "headersTruncated": False,
        "commonHeaders": {"from": [sender], "to": [BOUNCED], "subject": "Your tea is on its way"},
    }


def ses_bounce(kind: str = "Permanent", sub: str = "General") -> str:
    return json.dumps(
        {
            "notificationType": "Bounce",
            "bounce": {
                "feedbackId": "0100016e8ac8f3a4-8b1f-4c1e-9f0e-000000",
                "bounceType": kind,
                "bounceSubType": sub,
                "bouncedRecipients": [
                    {
                        "emailAddress": BOUNCED,
                        "action": "failed",
                        "status": "5.1.1",
                        "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                    }
                ],
                "timestamp": "2026-12-01T11:59:59.000Z",
                "reportingMTA": "dsn; a8-52.smtp-out.amazonses.com",
            },
            "mail": ses_mail(),
        }
    )


def ses_complaint() -> str:
    return json.dumps(
        {
            "notificationType": "Complaint",
            "complaint": {
                "complainedRecipients": [{"emailAddress": BOUNCED}],
                "timestamp": "2026-12-01T12:00:00.000Z",
                "feedbackId": "0100016e8ac8f3a4-complaint",
                "userAgent": "Yahoo!-Mail-Feedback/2.0",
                "complaintFeedbackType": "abuse",
                "arrivalDate": "2026-12-01T11:59:58.000Z",
            },
            "mail": ses_mail(),
        }
    )


def ses_delivery() -> str:
    return json.dumps(
        {
            "notificationType": "Delivery",
            "mail": ses_mail(),
            "delivery": {
                "timestamp": "2026-12-01T12:00:00.000Z",
                "processingTimeMillis": 546,
                "recipients": [BOUNCED],
                "smtpResponse": "250 ok: Message 64111812 accepted",
                "reportingMTA": "a8-70.smtp-out.amazonses.com",
            },
        }
    )


@pytest.fixture
def sns(env, redis, stores, sns_signer):  # type: ignore[no-untyped-def]
    """SES_SNS_TOPIC_ARNS set, and SNS's certificate served at CERT_URL (and nowhere else)."""
    env.setenv("SES_SNS_TOPIC_ARNS", f"arn:aws:sns:eu-west-1:123456789012:other, {TOPIC}")
    reset_settings()
    ses._certificates.clear()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(CERT_URL, body=sns_signer[1])
        yield mock
    ses._certificates.clear()


def _post_ses(client, body: dict | bytes):  # type: ignore[no-untyped-def]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(
        "/webhooks/email/ses",
        data=raw,
        headers={"Content-Type": "text/plain; charset=UTF-8", "x-amz-sns-message-type": "Notification"},
    )


def test_a_subscription_is_confirmed_through_its_subscribe_url(client, sns, sns_signer):
    subscribe = "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=x&Token=2336412f37"
    confirmed = sns.get(subscribe, body="<ConfirmSubscriptionResponse/>")
    body = signed_sns(
        sns_signer[0],
        "SubscriptionConfirmation",
        "You have chosen to subscribe to the topic. To confirm the subscription, visit the SubscribeURL included.",
        SubscribeURL=subscribe,
        Token="2336412f37",
    )
    answer = _post_ses(client, body)
    assert answer.status_code == 200 and answer.get_json()["status"] == "confirmed"
    assert confirmed.call_count == 1


@pytest.mark.parametrize("version", ["1", "2"])
def test_an_ses_hard_bounce_suppresses_at_every_store_of_the_sender(client, sns, sns_signer, stores, redis, version):
    answer = _post_ses(client, signed_sns(sns_signer[0], "Notification", ses_bounce(), version))
    assert answer.status_code == 200 and answer.get_json() == {"status": "queued", "events": 1}
    assert _suppressed(BOUNCED) == {}  # queued: the worker applies it
    drain(redis)
    assert _suppressed(BOUNCED) == {stores[SHOP]: "bounced", stores[SISTER]: "bounced"}
    with session_scope() as session:
        notes = session.execute(select(ConsentChange.note).where(ConsentChange.shop_id == stores[SHOP])).scalars()
        assert list(notes) == ["Permanent/General: smtp; 550 5.1.1 user unknown"]


def test_the_same_sns_message_twice_is_applied_once(client, sns, sns_signer, redis):
    body = signed_sns(sns_signer[0], "Notification", ses_complaint())
    assert _post_ses(client, body).get_json()["status"] == "queued"
    assert _post_ses(client, body).get_json()["status"] == "duplicate"
    drain(redis)
    with session_scope() as session:
        assert session.execute(select(ConsentChange.reason)).scalars().all() == ["complained", "complained"]


def test_ses_soft_bounces_suppress_after_the_limit_in_a_row_and_a_delivery_resets_them(
    client, sns, sns_signer, stores, redis
):
    key = sns_signer[0]
    for _ in range(2):
        _post_ses(client, signed_sns(key, "Notification", ses_bounce("Transient", "MailboxFull")))
    drain(redis)
    with session_scope() as session:
        assert bounces.soft_bounces(session, stores[SHOP], BOUNCED) == 2
    _post_ses(client, signed_sns(key, "Notification", ses_delivery()))
    _post_ses(client, signed_sns(key, "Notification", ses_bounce("Transient", "MailboxFull")))
    drain(redis)
    assert _suppressed(BOUNCED) == {}  # 2, a delivery, 1: not three in a row
    for _ in range(2):
        _post_ses(client, signed_sns(key, "Notification", ses_bounce("Transient", "MailboxFull")))
    drain(redis)
    assert _suppressed(BOUNCED) == {stores[SHOP]: "soft-bounced", stores[SISTER]: "soft-bounced"}
    with session_scope() as session:
        assert bounces.soft_bounces(session, stores[SHOP], BOUNCED) == 0


@pytest.mark.parametrize(
    ("change", "status", "reason"),
    [
        (lambda b: b.update(Message=b["Message"].replace("Permanent", "Transient")), 401, "bad_signature"),
        (lambda b: b.update(Signature=base64.b64encode(b"x" * 256).decode()), 401, "bad_signature"),
        (lambda b: b.update(Signature="not base64!"), 401, "bad_signature"),
        (lambda b: b.update(SignatureVersion="3"), 401, "bad_signature"),
        (
            lambda b: b.update(SigningCertURL="https://sns.us-east-1.amazonaws.com.evil.example/cert.pem"),
            401,
            "bad_certificate",
        ),
        (lambda b: b.update(SigningCertURL=CERT_URL.replace("https:", "http:")), 401, "bad_certificate"),
        (
            lambda b: b.update(SigningCertURL="https://evil.example/sns.us-east-1.amazonaws.com.pem"),
            401,
            "bad_certificate",
        ),
        (lambda b: b.update(Type="Surprise"), 400, "malformed"),
        (lambda b: b.pop("MessageId"), 400, "malformed"),
        (lambda b: b.update(Subject=["not", "text"]), 400, "malformed"),
    ],
)
def test_ses_messages_that_do_not_check_out_are_refused(client, sns, sns_signer, redis, change, status, reason):
    body = signed_sns(sns_signer[0], "Notification", ses_bounce())
    change(body)
    answer = _post_ses(client, body)
    assert (answer.status_code, answer.get_json()["error"]) == (status, reason)
    drain(redis)
    assert _suppressed(BOUNCED) == {}
    assert [call.request.url for call in sns.calls if call.request.url != CERT_URL] == []  # fetched nothing else


def test_a_signed_message_from_another_topic_is_refused(client, sns, sns_signer):
    body = signed_sns(sns_signer[0], "Notification", ses_bounce(), TopicArn="arn:aws:sns:us-east-1:999:theirs")
    answer = _post_ses(client, body)
    assert (answer.status_code, answer.get_json()["error"]) == (401, "unknown_topic")


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b'{"Type": "Notification"}', "\u00ff".encode("latin-1")])
def test_malformed_bodies_are_400_never_500(client, sns, raw):
    assert _post_ses(client, raw).status_code == 400


def test_a_notification_whose_message_is_not_ses_json_is_400(client, sns, sns_signer):
    answer = _post_ses(client, signed_sns(sns_signer[0], "Notification", "hello"))
    assert answer.status_code == 400


def test_an_unconfigured_provider_is_404(client, env, redis):
    assert client.post("/webhooks/email/ses", data=b"{}").status_code == 404
    assert client.post("/webhooks/email/mailgun", data=b"{}").status_code == 404
    assert client.post("/webhooks/email/postmark", data=b"{}").status_code == 404


# ---- Mailgun -------------------------------------------------------------------------------------


@pytest.fixture
def mailgun(env, redis, stores):  # type: ignore[no-untyped-def]
    env.setenv("MAILGUN_WEBHOOK_SIGNING_KEY", MAILGUN_KEY)
    reset_settings()


def mailgun_body(
    event: str = "failed",
    severity: str = "permanent",
    *,
    timestamp: float | None = None,
    key: str = MAILGUN_KEY,
    token: str | None = None,
) -> dict:
    """A Mailgun webhook as Mailgun documents it: the signature beside the event-data."""
    stamp = str(int(timestamp if timestamp is not None else time.time()))
    token = token or uuid.uuid4().hex + uuid.uuid4().hex[:18]
    data: dict = {
        "id": "G9Bn5sl1TC6nu79C8C0bwg",
        "timestamp": float(stamp),
        "log-level": "error" if event == "failed" else "info",
        "event": event,
        "envelope": {"sender": "bounces+x@mg.example.com", "transport": "smtp", "targets": BOUNCED},
        "message": {
            "headers": {
                "to": BOUNCED,
                "message-id": "20261201.1@mg.example.com",
                "from": "Tea <shop@example.com>",
                "subject": "Hi",
            },
            "attachments": [],
            "size": 111,
        },
        "recipient": BOUNCED,
        "recipient-domain": "example.net",
        "tags": [],
        "user-variables": {},
    }
    if event == "failed":
        data.update(
            severity=severity,
            reason="bounce" if severity == "permanent" else "generic",
            **{
                "delivery-status": {
                    "attempt-no": 1,
                    "code": 550,
                    "message": "",
                    "description": "5.1.1 The email account that you tried to reach does not exist.",
                }
            },
        )
    signature = hmac.new(key.encode(), f"{stamp}{token}".encode(), hashlib.sha256).hexdigest()
    return {"signature": {"timestamp": stamp, "token": token, "signature": signature}, "event-data": data}


def _post_mailgun(client, body: dict | bytes):  # type: ignore[no-untyped-def]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/webhooks/email/mailgun", data=raw, content_type="application/json")


def test_a_mailgun_permanent_failure_suppresses_and_a_complaint_too(client, mailgun, stores, redis):
    assert _post_mailgun(client, mailgun_body()).get_json() == {"status": "queued", "events": 1}
    drain(redis)
    assert _suppressed(BOUNCED) == {stores[SHOP]: "bounced", stores[SISTER]: "bounced"}
    with session_scope() as session:
        note = session.execute(select(ConsentChange.note).where(ConsentChange.shop_id == stores[SHOP])).scalar_one()
        assert note == "bounce 550 5.1.1 The email account that you tried to reach does not exist."


def test_mailgun_temporary_failures_count_as_soft_bounces(client, mailgun, stores, redis):
    for _ in range(2):
        _post_mailgun(client, mailgun_body(severity="temporary"))
    drain(redis)
    assert _suppressed(BOUNCED) == {}
    _post_mailgun(client, mailgun_body("delivered"))
    for _ in range(3):
        _post_mailgun(client, mailgun_body(severity="temporary"))
    drain(redis)
    assert _suppressed(BOUNCED) == {stores[SHOP]: "soft-bounced", stores[SISTER]: "soft-bounced"}


def test_mailgun_complaint(client, mailgun, stores, redis):
    _post_mailgun(client, mailgun_body("complained"))
    drain(redis)
    assert _suppressed(BOUNCED) == {stores[SHOP]: "complained", stores[SISTER]: "complained"}


def test_mailgun_signature_age_and_replay(client, mailgun, redis):
    wrong = _post_mailgun(client, mailgun_body(key="key-someone-else"))
    assert (wrong.status_code, wrong.get_json()["error"]) == (401, "bad_signature")
    stale = _post_mailgun(client, mailgun_body(timestamp=time.time() - 3600))
    assert (stale.status_code, stale.get_json()["error"]) == (401, "stale")
    future = _post_mailgun(client, mailgun_body(timestamp=time.time() + 3600))
    assert future.status_code == 401

    first = mailgun_body("delivered")
    assert _post_mailgun(client, first).status_code == 200
    again = _post_mailgun(client, first)  # Mailgun's own retry: the same body, one job
    assert (again.status_code, again.get_json()["status"]) == (200, "duplicate")
    replay = dict(first, **{"event-data": mailgun_body()["event-data"]})  # the captured signature on another event
    answer = _post_mailgun(client, replay)
    assert (answer.status_code, answer.get_json()["error"]) == (401, "replayed")
    drain(redis)
    assert _suppressed(BOUNCED) == {}


@pytest.mark.parametrize(
    "raw",
    [b"", b"nope", b"[]", b'{"signature": "x"}', b'{"signature": {}}', b'{"signature": {"timestamp": [], "token": 1}}'],
)
def test_malformed_mailgun_bodies_are_refused_never_500(client, mailgun, raw):
    assert _post_mailgun(client, raw).status_code in (400, 401)


# ---- the admin's suppression list ---------------------------------------------------------------


def test_the_suppression_list_shows_reasons_and_an_unsuppress_is_recorded(client, mailgun, stores, redis):
    with session_scope() as session:
        session.add(Customer(shop_id=stores[SHOP], platform_id=f"email:{BOUNCED}", email=BOUNCED, email_consent=True))
    _post_mailgun(client, mailgun_body())
    drain(redis)
    sign_in(client)
    page = client.get("/admin/suppressions", environ_base=LOCAL).get_data(as_text=True)
    sister_key = address_key(stores[SISTER], BOUNCED)
    assert page.count(BOUNCED) == 1  # SHOP's customer is shown by address
    assert (
        sister_key[:12] in page and sister_key not in page
    )  # the sister store knows no such customer: the hash's start
    assert "bounced" in page and "mailgun" in page

    with client.session_transaction() as session:
        csrf = session["encore_csrf"]
    with session_scope() as session:
        suppression_id = session.execute(select(Suppression.id).where(Suppression.shop_id == stores[SHOP])).scalar_one()
    path = f"/admin/suppressions/{suppression_id}/remove"
    assert client.post(path, data={"note": "typo fixed"}, environ_base=LOCAL).status_code == 400  # no form token
    assert client.post(path, data={"csrf": csrf, "note": "  "}, environ_base=LOCAL).status_code == 400  # no reason
    assert (
        client.post(path, data={"csrf": csrf, "note": "the customer asked by phone"}, environ_base=LOCAL).status_code
        == 302
    )
    assert _suppressed(BOUNCED) == {stores[SISTER]: "bounced"}
    with session_scope() as session:
        lifted = session.execute(select(ConsentChange).where(ConsentChange.action == "unsuppressed")).scalar_one()
        assert (lifted.actor, lifted.note, lifted.reason, lifted.writeback) == (
            "admin: operator (link)",
            "the customer asked by phone",
            "bounced",
            "none",
        )
        assert lifted.customer_id is not None
