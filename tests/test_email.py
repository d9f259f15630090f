"""Email: the MIME message, the file outbox, and SMTP against a real aiosmtpd server (plain, STARTTLS,
implicit TLS, auth, a transient 4xx and a permanent 5xx)."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from encore_retention.connectors.email import (
    OutgoingEmail,
    PermanentEmailError,
    TransientEmailError,
    build_message,
    get_transport,
    send,
)
from encore_retention.connectors.email.base import IDEMPOTENCY_HEADER
from encore_retention.connectors.email.file import FileTransport
from encore_retention.connectors.email.smtp import SMTPTransport

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

USER, PASSWORD = "mailer@example.com", "p@ss word"


def _email(**overrides) -> OutgoingEmail:  # type: ignore[no-untyped-def]
    values = dict(
        to="ada@example.com",
        subject="Happy birthday, Ada",
        idempotency_key="run-17:step-2",
        html="<html><head><style>p.lead { color: #c00; }</style></head><body><p class='lead'>Hi Ada</p></body></html>",
        text="Hi Ada",
        unsubscribe_url="http://localhost:8000/unsubscribe/abc.def",
        from_addr="Shop <shop@example.com>",
    )
    values.update(overrides)
    return OutgoingEmail(**values)  # type: ignore[arg-type]


# ---- the message -----------------------------------------------------------------------------------


def parsed(message: email.message.Message) -> email.message.EmailMessage:
    """The message as a mail client reads it: its bytes, parsed."""
    return email.message_from_bytes(message.as_bytes(), policy=email.policy.default)  # type: ignore[return-value]


def test_non_ascii_names_and_subjects_are_encoded_apart_from_their_addresses(env):
    message = parsed(
        build_message(
            _email(
                subject="Joyeux anniversaire, Zoë ✨",
                from_addr="Bäckerei Müller <shop@example.com>",
                reply_to="Zoë <help@example.com>",
                to="Zoë <zoe@example.com>",
            )
        )
    )
    assert message["Subject"] == "Joyeux anniversaire, Zoë ✨"
    assert message["From"].addresses[0].display_name == "Bäckerei Müller"
    assert message["From"].addresses[0].addr_spec == "shop@example.com"
    assert message["Reply-To"].addresses[0].addr_spec == "help@example.com"
    assert message["To"].addresses[0].addr_spec == "zoe@example.com"
    assert message.get_body(("plain",)).get_content().strip() == "Hi Ada"


def test_an_international_address_keeps_its_utf8(env):
    raw = build_message(_email(to="zoë@exämple.com")).as_bytes(policy=email.policy.SMTPUTF8)
    message = email.message_from_string(raw.decode(), policy=email.policy.default)
    assert message["To"].addresses[0].addr_spec == "zoë@exämple.com"
    assert "Hi Ada" in message.get_body(("plain",)).get_content()


def test_message_has_unsubscribe_headers_parts_and_idempotency_key(env):
    message = parsed(build_message(_email(preheader="A gift inside")))
    assert message["List-Unsubscribe"] == "<http://localhost:8000/unsubscribe/abc.def>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message[IDEMPOTENCY_HEADER] == "run-17:step-2"
    assert message["Message-ID"].endswith("@example.com>")
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert text.strip() == "Hi Ada"
    assert 'style="color: #c00;"' in html  # the <style> rule moved onto the element
    assert "A gift inside" in html and "display:none" in html


def test_a_preheader_the_template_already_shows_is_not_added_twice(env):
    from jinja2 import Environment

    html = (
        Environment(autoescape=True)
        .from_string("<html><body><div style='display:none'>{{ p }}</div><p>Hi</p></body></html>")
        .render(p='It\'s "yours"')
    )
    out = parsed(build_message(_email(html=html, preheader='It\'s "yours"'))).get_body(("html",)).get_content()
    assert out.count("yours") == 1


def test_at_rules_stay_and_remote_stylesheets_are_not_fetched(env):
    html = (
        "<html><head><link rel='stylesheet' href='http://203.0.113.1/x.css'>"
        "<style>td{padding:4px} @media (max-width: 600px) { td { padding: 0 } }</style></head>"
        "<body><table><tr><td>x</td></tr></table></body></html>"
    )
    out = parsed(build_message(_email(html=html))).get_body(("html",)).get_content()
    assert 'style="padding: 4px;"' in out
    assert "@media (max-width: 600px)" in out


def test_inlining_can_be_turned_off(env):
    out = parsed(build_message(_email(inline_css=False))).get_body(("html",)).get_content()
    assert "<style>" in out and 'style="color' not in out


# Header-injection strings from public attack lists, percent-decoded as a form or an API hands them
# over: the SMTP list of github.com/artemskorypin/injection-fuzzing-basics
# (Header_injection/SMTP Mail Header Injection/header_smtp_crlf.txt) and PayloadsAllTheThings'
# CRLF Injection (Files/crlfinjection.txt and its UTF-8 "filter bypass"); then a folded line, the
# non-ASCII path, and the line breaks other parsers honour (U+2028, U+2029, NEL, VT, FF).
INJECTIONS = [
    "Eve\r\n\r\nInjected body line",
    unquote("victim@example.com%0d%0aBcc: attacker@example.com"),
    unquote("victim@example.com%0d%0aCc: attacker@example.com"),
    unquote("victim@example.com%0d%0aReply-To: attacker@example.com"),
    unquote("victim@example.com%0d%0aReturn-Path: attacker@example.com"),
    unquote("victim@example.com%0d%0aBcc: attacker@example.com%0d%0aReply-To: attacker@example.com"),
    unquote("victim@example.com%0d%0aCc: attacker@example.com%0d%0aX-Mailer: injected-scanner"),
    unquote("victim@example.com%0d%0aSubject: injected subject%0d%0a%0d%0aINJECTED_SMTP_BODY"),
    unquote("victim@example.com%0d%0aBcc: attacker@example.com%0d%0a%0d%0aThis is injected content."),
    unquote("test@gmail.com%0ato:admin@target.com%0aBcc:attacker@evil.com"),
    unquote("/%0dSet-Cookie:crlf=injection"),
    unquote("/%23%0d%0aSet-Cookie:crlf=injection"),
    unquote("/%2e%2e%2f%0d%0aSet-Cookie:crlf=injection"),
    unquote("%E5%98%8A%E5%98%8Dcontent-type:text/html%E5%98%8A%E5%98%8Dlocation:"),
    "Eve\r\n Bcc: attacker@example.com",
    "Zoë\r\nBcc: attacker@example.com",
    "Eve\u2028Bcc: attacker@example.com\u2029Cc: attacker@example.com",
    "Eve\x85Bcc: attacker@example.com\x0bCc: attacker@example.com\x0c",
]
HEADERS = [
    "Content-Type",
    "MIME-Version",
    "From",
    "To",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    IDEMPOTENCY_HEADER,
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
]
PART_HEADERS = ["Content-Type", "MIME-Version", "Content-Transfer-Encoding"]


def assert_only_our_headers(message: email.message.EmailMessage, extra: tuple[str, ...] = ()) -> None:
    """Exactly the headers Encore writes, every part's header section ending where it should."""
    assert sorted(message.keys()) == sorted([*HEADERS, *extra])
    assert not message.preamble or not message.preamble.strip()
    assert [sorted(part.keys()) for part in message.iter_parts()] == [sorted(PART_HEADERS)] * 2
    assert [part.defects for part in message.walk()] == [[], [], []]
    for name in message.keys():
        assert not any(c in str(message[name]) for c in "\r\n\x0b\x0c\x85\u2028\u2029")


@pytest.mark.parametrize("text", INJECTIONS)
def test_a_rendered_value_adds_no_header_and_no_recipient(env, text: str):
    message = parsed(
        build_message(
            _email(
                subject=f"Welcome {text}",
                from_addr=f"{text} at Tea <shop@example.com>",
                reply_to=f"{text} <help@example.com>",
                to=f"{text} <ada@example.com>",
                headers={"X-Campaign": text},
            )
        )
    )
    assert_only_our_headers(message, ("X-Campaign",))
    assert message["Subject"].split() == f"Welcome {text}".split()  # the words kept, the line breaks gone
    assert message["X-Campaign"].split() == text.split()
    for header, address, name in (
        ("From", "shop@example.com", f"{text} at Tea"),
        ("To", "ada@example.com", text),
        ("Reply-To", "help@example.com", text),
    ):
        (mailbox,) = message[header].addresses
        assert mailbox.addr_spec == address and mailbox.display_name.split() == name.split()
    assert message.get_body(("plain",)).get_content().strip() == "Hi Ada"


@pytest.mark.parametrize(
    "address",
    [
        "ada@example.com\r\nBcc: attacker@example.com",
        "ada@example.com, attacker@example.com",
        "Ada <ada@example.com>, attacker@example.com",
        "ada@example.com attacker@example.com",
        "Ada <ada@example.com\nBcc: attacker@example.com>",
        "",
    ],
)
def test_an_address_that_is_not_one_mailbox_is_refused(env, address: str):
    for field_name in ("to", "from_addr") if address else ("to",):  # no `from`: EMAIL_FROM
        with pytest.raises(PermanentEmailError, match="not one email address"):
            build_message(_email(**{field_name: address}))
    # An optional Reply-To is left out (replies go to From), and nothing of it is written.
    message = parsed(build_message(_email(reply_to=address or "None")))
    assert sorted(message.keys()) == sorted(h for h in HEADERS if h != "Reply-To")
    assert "attacker" not in message.as_string()


@pytest.mark.parametrize("name", ["Bcc", "to", "Subject", "X-Encore-Idempotency-Key", "X-Bad Name", "X-A:b", "X-\r\n"])
def test_an_extra_header_cannot_take_a_reserved_or_bad_name(env, name: str):
    with pytest.raises(ValueError, match="can't be set"):
        build_message(_email(headers={name: "x"}))


def test_transactional_email_has_no_unsubscribe_headers(env):
    message = build_message(_email(marketing=False, unsubscribe_url=None))
    assert message["List-Unsubscribe"] is None


def test_file_outbox_writes_one_eml_per_idempotency_key(env, tmp_path: Path):
    transport = FileTransport(f"file://{tmp_path / 'box'}")
    send(_email(), transport)
    send(_email(), transport)
    files = list((tmp_path / "box").glob("*.eml"))
    assert [f.name for f in files] == ["run-17_step-2.eml"]
    parsed = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert parsed["To"] == "ada@example.com"


def test_transports_by_scheme(env):
    assert isinstance(get_transport("smtp://relay.example.com"), SMTPTransport)
    starttls = get_transport("smtp+starttls://u:p@relay.example.com")
    assert isinstance(starttls, SMTPTransport) and starttls.starttls and starttls.port == 587
    implicit = get_transport("smtps://u%40x.com:s%2Fecret@relay.example.com")
    assert implicit.port == 465 and implicit.username == "u@x.com" and implicit.password == "s/ecret"
    assert "s/ecret" not in repr(implicit) and "ecret" not in repr(implicit)
    with pytest.raises(ValueError, match="expected one of"):
        get_transport("sendgrid://key")


# ---- a real SMTP server ----------------------------------------------------------------------------


@dataclass
class Recorder:
    """aiosmtpd handler: keeps what it received; can answer RCPT or DATA with a chosen reply."""

    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    peers: list[tuple[str, int]] = field(default_factory=list)
    rcpt_reply: str | None = None
    data_reply: str | None = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        if self.data_reply:
            return self.data_reply
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        self.peers.append(session.peer)
        return "250 Message accepted for delivery"


def _authenticator(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login.decode() == USER
        and auth_data.password.decode() == PASSWORD
    )
    return AuthResult(success=ok, handled=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert file, key file)."""
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def _server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    return context


@pytest.fixture
def smtp_server() -> Iterator[tuple[Recorder, int]]:
    """A plain SMTP server without auth."""
    handler, port = Recorder(), _free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


@pytest.fixture
def starttls_server(certificate) -> Iterator[tuple[Recorder, int]]:  # type: ignore[no-untyped-def]
    """A server that requires STARTTLS, then AUTH."""
    handler, port = Recorder(), _free_port()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        tls_context=_server_context(certificate),
        require_starttls=True,
        authenticator=_authenticator,
        auth_required=True,
    )
    controller.start()
    yield handler, port
    controller.stop()


@pytest.fixture
def tls_server(certificate) -> Iterator[tuple[Recorder, int]]:  # type: ignore[no-untyped-def]
    """A server speaking TLS from the first byte (smtps), with AUTH."""
    handler, port = Recorder(), _free_port()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        ssl_context=_server_context(certificate),
        authenticator=_authenticator,
        auth_required=True,
        auth_require_tls=False,
    )
    controller.start()
    yield handler, port
    controller.stop()


def _received(handler: Recorder) -> email.message.EmailMessage:
    assert len(handler.messages) == 1
    mail_from, rcpt_tos, content = handler.messages[0]
    assert mail_from == "shop@example.com" and rcpt_tos == ["ada@example.com"]
    return email.message_from_bytes(content, policy=email.policy.default)  # type: ignore[return-value]


def test_plain_smtp_delivers_the_message(env, smtp_server):
    handler, port = smtp_server
    message_id = send(_email(), get_transport(f"smtp://127.0.0.1:{port}"))
    received = _received(handler)
    assert received["Message-ID"] == message_id
    assert received["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert received[IDEMPOTENCY_HEADER] == "run-17:step-2"


def test_starttls_with_auth(env, starttls_server, certificate):
    handler, port = starttls_server
    url = f"smtp+starttls://mailer%40example.com:p%40ss%20word@127.0.0.1:{port}?cafile={certificate[0]}"
    send(_email(), get_transport(url))
    assert _received(handler)["Subject"] == "Happy birthday, Ada"


def test_starttls_server_refuses_plain_sending(env, starttls_server):
    _handler, port = starttls_server
    with pytest.raises(PermanentEmailError, match="530"):
        send(_email(), get_transport(f"smtp://127.0.0.1:{port}"))


def test_implicit_tls_with_auth(env, tls_server, certificate):
    handler, port = tls_server
    url = f"smtps://mailer%40example.com:p%40ss%20word@127.0.0.1:{port}?cafile={certificate[0]}"
    send(_email(), get_transport(url))
    assert _received(handler)["To"] == "ada@example.com"


def test_wrong_password_is_permanent(env, tls_server, certificate):
    _handler, port = tls_server
    url = f"smtps://mailer%40example.com:wrong@127.0.0.1:{port}?cafile={certificate[0]}"
    with pytest.raises(PermanentEmailError, match="authentication failed: 535"):
        send(_email(), get_transport(url))


def test_untrusted_certificate_is_permanent(env, tls_server):
    _handler, port = tls_server
    with pytest.raises(PermanentEmailError, match="certificate"):
        send(_email(), get_transport(f"smtps://mailer%40example.com:x@127.0.0.1:{port}"))


def test_4xx_reply_is_transient(env, smtp_server):
    handler, port = smtp_server
    handler.data_reply = "451 4.3.0 Mail server temporarily rejected message"
    with pytest.raises(TransientEmailError) as caught:
        send(_email(), get_transport(f"smtp://127.0.0.1:{port}"))
    assert caught.value.code == 451 and "temporarily rejected" in str(caught.value)
    assert not isinstance(caught.value, PermanentEmailError)


def test_deferred_recipient_is_transient(env, smtp_server):
    handler, port = smtp_server
    handler.rcpt_reply = "450 4.2.1 Mailbox busy"
    with pytest.raises(TransientEmailError, match="450"):
        send(_email(), get_transport(f"smtp://127.0.0.1:{port}"))


def test_5xx_reply_is_permanent(env, smtp_server):
    handler, port = smtp_server
    handler.rcpt_reply = "550 5.1.1 No such user here"
    with pytest.raises(PermanentEmailError) as caught:
        send(_email(), get_transport(f"smtp://127.0.0.1:{port}"))
    assert caught.value.code == 550 and "No such user" in str(caught.value)
    assert handler.messages == []


def test_unreachable_server_is_transient(env):
    with pytest.raises(TransientEmailError, match="could not reach"):
        send(_email(), get_transport(f"smtp://127.0.0.1:{_free_port()}?timeout=2"))


def test_one_connection_carries_several_messages(env, smtp_server):
    handler, port = smtp_server
    transport = get_transport(f"smtp://127.0.0.1:{port}")
    for i in range(3):
        send(_email(idempotency_key=f"k{i}"), transport)
    assert len(handler.messages) == 3 and len(set(handler.peers)) == 1
    transport.close()
    closed = get_transport(f"smtp://127.0.0.1:{port}?keepalive=0")
    send(_email(idempotency_key="a"), closed)
    send(_email(idempotency_key="b"), closed)
    assert len(set(handler.peers[3:])) == 2


def test_a_kept_connection_the_server_dropped_is_replaced(env):
    port = _free_port()
    first, second = Recorder(), Recorder()
    controller = Controller(first, hostname="127.0.0.1", port=port)
    controller.start()
    transport = get_transport(f"smtp://127.0.0.1:{port}")
    send(_email(idempotency_key="before"), transport)
    controller.stop()  # the server goes away (restart, idle timeout) while the connection is kept
    controller = Controller(second, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        transport._last_used -= 10  # idle long enough to be checked with NOOP
        send(_email(idempotency_key="after"), transport)
    finally:
        transport.close()
        controller.stop()
    assert len(first.messages) == 1 and len(second.messages) == 1


def test_after_a_failure_the_connection_is_not_reused(env, smtp_server):
    handler, port = smtp_server
    transport = get_transport(f"smtp://127.0.0.1:{port}")
    handler.data_reply = "451 try later"
    with pytest.raises(TransientEmailError):
        send(_email(), transport)
    assert transport._client is None
    handler.data_reply = None
    send(_email(), transport)
    assert len(handler.messages) == 1


# ---- a customer's name from an attack list, through a flow, to a real SMTP server -------------------------

HELLO_FLOW = """\
name: Hello
trigger: {event: customer.created}
steps:
  - send_email:
      template: hello.html
      subject: "Welcome {{ customer.first_name }}"
      from: "{{ customer.first_name }} at Tea <shop@example.com>"
      reply_to: "{{ customer.first_name }} <help@example.com>"
      to: "{{ customer.first_name }} <{{ customer.email }}>"
"""

HELLO_TEMPLATE = '<p>Hello {{ customer.first_name }}</p><p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'


@pytest.fixture
def flow_over_smtp(env, redis, tmp_path: Path, smtp_server) -> Iterator[Recorder]:  # type: ignore[no-untyped-def]
    """The flow above, its template, and EMAIL_URL pointing at the aiosmtpd server."""
    from encore_retention.core.settings import reset_settings
    from encore_retention.flows import dates, render

    handler, port = smtp_server
    for folder, name, text in (("flows", "hello.yaml", HELLO_FLOW), ("templates", "hello.html", HELLO_TEMPLATE)):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / name).write_text(text)
    env.setenv("FLOWS_DIR", str(tmp_path / "flows"))
    env.setenv("TEMPLATES_DIR", str(tmp_path / "templates"))
    env.setenv("EMAIL_URL", f"smtp://127.0.0.1:{port}?keepalive=0")
    reset_settings()
    render.reset()
    dates.set_now(dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC))
    yield handler
    dates.set_now(None)
    render.reset()


def _runs() -> list[tuple[str, list[tuple[str, str]]]]:
    from sqlalchemy import select

    from encore_retention.core.store import session_scope
    from encore_retention.flows.engine import trace_of
    from encore_retention.flows.models import FlowRun

    with session_scope() as session:
        return [
            (run.status, [(t.kind, t.message) for t in trace_of(session, run.id)])
            for run in session.execute(select(FlowRun).order_by(FlowRun.id)).scalars()
        ]


@pytest.mark.parametrize("text", INJECTIONS)
def test_an_attack_in_a_customers_name_reaches_the_mail_server_as_text(flow_over_smtp, text: str):
    from encore_retention.jobs import process_event
    from tests.flows.helpers import customer, event

    process_event(event("customer.created", dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC), customer(first_name=text)))
    ((mail_from, rcpt_tos, content),) = flow_over_smtp.messages  # one message, to the customer alone
    assert mail_from == "shop@example.com" and rcpt_tos == ["c1001@example.com"]
    received: email.message.EmailMessage = email.message_from_bytes(  # type: ignore[assignment]
        content, policy=email.policy.default
    )
    assert_only_our_headers(received)
    assert received["Subject"].split() == f"Welcome {text}".split()
    (to,) = received["To"].addresses
    assert to.addr_spec == "c1001@example.com" and to.display_name.split() == text.split()
    assert [a.addr_spec for a in received["From"].addresses + received["Reply-To"].addresses] == [
        "shop@example.com",
        "help@example.com",
    ]
    assert received["List-Unsubscribe"].startswith("<http://localhost:8000/unsubscribe/")
    assert received.get_body(("plain",)).get_content().split()[: 1 + len(text.split())] == ["Hello", *text.split()]
    ((status, trace),) = _runs()
    assert status == "done" and any(kind == "sent" for kind, _ in trace)


def test_an_injected_address_is_sent_nowhere_and_traced(flow_over_smtp):
    from encore_retention.jobs import process_event
    from tests.flows.helpers import customer, event

    process_event(
        event(
            "customer.created",
            dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC),
            customer(email="c1001@example.com\r\nBcc: attacker@example.com"),
        )
    )
    assert flow_over_smtp.messages == []
    ((_, trace),) = _runs()
    assert any(
        kind == "error" and "not sent: to:" in message and "not one email address" in message and "Bcc:" in message
        for kind, message in trace
    ), trace


def test_a_to_with_a_display_name_still_respects_the_unsubscribe(flow_over_smtp):
    from encore_retention.core.store import session_scope
    from encore_retention.core.store.ledger import get_or_create_shop
    from encore_retention.core.unsubscribe import suppress
    from encore_retention.jobs import process_event
    from tests.flows.helpers import SHOP, customer, event

    with session_scope() as session:
        suppress(session, get_or_create_shop(session, "shopify", SHOP).id, "c1001@example.com")
    process_event(event("customer.created", dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC), customer()))
    assert flow_over_smtp.messages == []
    ((_, trace),) = _runs()
    assert ("suppressed", "email not sent: unsubscribed") in trace
