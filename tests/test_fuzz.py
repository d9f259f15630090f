"""A seeded fuzz of both receivers and the worker behind them (bench/fuzz.py runs the same, larger)."""

from __future__ import annotations

import pytest
from redis import Redis

from tests.conftest import SHOP, SHOPIFY_SECRET, WC_SECRET, WC_URL, register_woo_store, use_database
from tests.webhook_fuzz import Fuzzer, post_all, run_queued

CASES = 800


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
