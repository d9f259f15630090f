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
