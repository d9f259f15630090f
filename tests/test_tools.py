"""Operators' tools: `encore samples send` and `encore samples forget`."""

from __future__ import annotations

from sqlalchemy import select

from encore_retention.core.store import session_scope
from encore_retention.core.store.models import Customer


def test_samples_send_says_when_nothing_listens(env, redis):
    from click.testing import CliRunner

    from encore_retention.cli import main

    result = CliRunner().invoke(main, ["samples", "send", "--url", "http://127.0.0.1:9"])
    assert result.exit_code != 0 and "is `make run` running?" in result.output
    # the sample store is registered once, with its own secret, pointing at the sandbox
    from encore_retention.core.store.models import Shop
    from encore_retention.webhooks.woocommerce import store_domain

    with session_scope() as session:
        shops = session.execute(select(Shop)).scalars().all()
    assert [(s.platform, s.domain, s.url) for s in shops] == [
        (
            "woocommerce",
            store_domain("http://127.0.0.1:9/sandbox/woocommerce"),
            "http://127.0.0.1:9/sandbox/woocommerce",
        )
    ]
    assert shops[0].webhook_secret_enc
    with session_scope() as session:
        session.add(Customer(shop_id=shops[0].id, platform_id="101", email="ada@example.com"))
    forgot = CliRunner().invoke(main, ["samples", "forget", "--url", "http://127.0.0.1:9"])
    assert forgot.exit_code == 0, forgot.output
    with session_scope() as session:
        assert session.execute(select(Shop)).first() is None
        assert session.execute(select(Customer)).first() is None  # the store's rows went with it
    again = CliRunner().invoke(main, ["samples", "forget", "--url", "http://127.0.0.1:9"])
    assert again.exit_code != 0 and "no sample store" in again.output


def test_samples_send_finds_where_encore_run_serves_and_refuses_another_program(env, redis, tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from click.testing import CliRunner

    from encore_retention.cli import main
    from encore_retention.core.settings import get_settings
    from encore_retention.tools import SERVING, local_url

    class NotEncore(BaseHTTPRequestHandler):
        def do_GET(self):  # type: ignore[no-untyped-def]
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<h1>another program</h1>")

        def log_message(self, *args):  # type: ignore[no-untyped-def]
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotEncore)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env.delenv("APP_URL", raising=False)
        env.delenv("PORT", raising=False)
        from encore_retention.core.settings import reset_settings

        reset_settings()
        assert local_url() == "http://localhost:8000"
        get_settings().data_path(SERVING).write_text(f"http://127.0.0.1:{server.server_port}\n")  # as `encore run` does
        assert local_url() == f"http://127.0.0.1:{server.server_port}"
        result = CliRunner().invoke(main, ["samples", "send"])
        assert result.exit_code == 1
        assert f"something other than Encore answers at http://127.0.0.1:{server.server_port}" in result.output
        env.setenv("PORT", "18352")  # set by the operator: it wins
        reset_settings()
        assert local_url() == "http://localhost:18352"
    finally:
        server.shutdown()
