"""A seeded fuzz of both receivers and the worker behind them (bench/fuzz.py runs the same, larger)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from redis import Redis

from encore_retention.webhooks import secrets as webhook_secrets
from tests.conftest import SHOP, SHOPIFY_SECRET, WC_SECRET, WC_URL, use_database
from tests.webhook_fuzz import Fuzzer, post_all, run_queued

CASES = 800


def register_woo_store() -> None:
    """The WooCommerce store the fuzz signs for, in the database the test uses."""
    from encore_retention.cli import main

    result = CliRunner().invoke(
        main,
        [
            "stores",
            "add",
            "woocommerce",
            WC_URL,
            "--consumer-key",
            "ck_test",
            "--consumer-secret",
            "cs_test",
            "--webhook-secret",
            WC_SECRET,
            "--no-verify",
        ],
    )
    assert result.exit_code == 0, result.output
    webhook_secrets.forget()


@pytest.mark.parametrize("seed", [20261201])
def test_malformed_deliveries_get_no_5xx_and_no_job_fails(seed: int, client, env, db_url: str, redis: Redis):
    use_database(env, db_url)
    register_woo_store()
    fuzzer = Fuzzer(seed, shopify_secret=SHOPIFY_SECRET, shop=SHOP, wc_secret=WC_SECRET, wc_url=WC_URL)
    outcome = post_all(client, fuzzer.cases(CASES))
    assert not outcome.server_errors, "\n".join(
        f"{status} {case.platform} {case.what}: {text}" for status, case, text in outcome.server_errors[:40]
    )
    assert sum(outcome.statuses.values()) == CASES
    assert {200, 400, 401}.issubset(outcome.statuses)  # the fuzz reaches past the signature check
    assert len(outcome.queued) > CASES // 10
    run_queued(redis, outcome, WC_URL)
    assert not outcome.job_errors, outcome.job_errors[:10]
    # What the receivers accept, the worker can normalise and apply: nothing is rejected after the 200.
    assert not outcome.rejected_by_worker, outcome.rejected_by_worker[:10]
    assert outcome.applied + outcome.removed == len(outcome.queued)
    assert outcome.applied > outcome.removed
