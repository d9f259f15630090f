"""Email: the cost of building a message (with and without CSS inlining) and of delivering it.

    .venv/bin/python bench/mail.py [--messages 500]

Builds N marketing emails from a ~5 KB HTML body with a `<style>` block (the shape of the built-in
templates), once with CSS inlining and once without, and delivers N messages to the file outbox and
to a real SMTP server (aiosmtpd on 127.0.0.1), over one kept connection (the transport's default)
and with a new connection per message (`keepalive=0`). Each figure is the best of `--rounds`.
Prints per-message times and the ratios against the baselines measured in the same run: building
without inlining, the file outbox, and SMTP with a kept connection. No thresholds: figures for
comparing machines and changes.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STYLE = """<style>
body{margin:0;padding:0;background:#f4f4f4;font-family:Helvetica,Arial,sans-serif}
.wrapper{width:100%;background:#f4f4f4}.container{max-width:600px;margin:0 auto;background:#fff}
h1{font-size:24px;color:#111;margin:0 0 12px}p{font-size:15px;line-height:22px;color:#333;margin:0 0 14px}
.code{font-family:monospace;font-size:22px;letter-spacing:2px;padding:12px 18px;border:2px dashed #c00}
.button a{display:inline-block;padding:12px 24px;background:#111;color:#fff;text-decoration:none}
td.item{padding:8px;border-bottom:1px solid #eee}.footer p{font-size:12px;color:#888}
@media (max-width:600px){.container{width:100% !important}h1{font-size:20px}}
</style>"""


def _html() -> str:
    rows = "".join(f"<tr><td class='item'>Product {i}</td><td class='item'>$ {i}9.00</td></tr>" for i in range(60))
    return (
        f"<html><head>{STYLE}</head><body><div class='wrapper'><div class='container'>"
        f"<h1>Happy birthday, Ada</h1><p>Here is a gift.</p><p class='code'>BDAY-7KQ4-M9XW</p>"
        f"<p class='button'><a href='https://shop.example.com'>Shop now</a></p><table>{rows}</table>"
        f"<div class='footer'><p>You get this email because you subscribed.</p></div></div></div></body></html>"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    """Run the measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3, help="each figure is the best of this many rounds")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="encore-bench-email-"))
    os.environ.update(SECRET_KEY="bench", ENCORE_DATA_DIR=str(folder / "data"), EMAIL_URL=f"file://{folder / 'out'}")

    from aiosmtpd.controller import Controller

    from encore_retention.connectors.email import OutgoingEmail, build_message, get_transport

    html = _html()

    def email(i: int, inline: bool = True) -> OutgoingEmail:
        return OutgoingEmail(
            to=f"c{i}@example.com",
            subject="Happy birthday",
            html=html,
            text="Happy birthday",
            idempotency_key=f"bench-{i}",
            unsubscribe_url=f"http://localhost:8000/unsubscribe/{i}",
            from_addr="Shop <shop@example.com>",
            inline_css=inline,
            preheader="A gift inside",
        )

    n = args.messages
    build_message(email(0))  # warm-up
    timings: dict[str, float] = {}

    def best(label: str, seconds: float) -> None:
        timings[label] = min(seconds, timings.get(label, seconds))

    for _round in range(args.rounds):
        for label, inline in (("build, no inlining", False), ("build, CSS inlined", True)):
            start = time.perf_counter()
            for i in range(n):
                build_message(email(i, inline))
            best(label, (time.perf_counter() - start) / n)

    class Sink:
        received = 0

        async def handle_DATA(self, server, session, envelope):  # noqa: N802
            Sink.received += 1
            return "250 OK"

    port = _free_port()
    controller = Controller(Sink(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        messages = [build_message(email(i)) for i in range(n)]
        for _round in range(args.rounds):
            for label, url in (
                ("deliver, file outbox", f"file://{folder / 'out'}"),
                ("deliver, SMTP kept", f"smtp://127.0.0.1:{port}"),
                ("deliver, SMTP each", f"smtp://127.0.0.1:{port}?keepalive=0"),
            ):
                transport = get_transport(url)
                start = time.perf_counter()
                for message in messages:
                    transport.deliver(message)
                best(label, (time.perf_counter() - start) / n)
                getattr(transport, "close", lambda: None)()
    finally:
        controller.stop()

    size = len(messages[0].as_bytes())
    print(f"{n} messages of {size / 1024:.1f} KB (HTML body {len(html) / 1024:.1f} KB)")
    for label, seconds in timings.items():
        print(f"  {label:<24} {seconds * 1000:8.3f} ms/message  {1 / seconds:9.0f} messages/s")
    inlining = timings["build, CSS inlined"] / timings["build, no inlining"]
    smtp = timings["deliver, SMTP kept"] / timings["deliver, file outbox"]
    kept = timings["deliver, SMTP each"] / timings["deliver, SMTP kept"]
    print(f"  inlining cost ratio (inlined / not)          {inlining:.2f}")
    print(f"  SMTP kept connection / file outbox ratio     {smtp:.2f}")
    print(f"  SMTP connection per message / kept ratio     {kept:.2f}")
    expected = 2 * n * args.rounds
    print(f"  SMTP server received {Sink.received} of {expected}")
    return 0 if Sink.received == expected else 1


if __name__ == "__main__":
    raise SystemExit(main())
