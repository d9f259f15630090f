"""Discount codes: readable, deterministic per (shop, idempotency key), different across keys and shops."""

from __future__ import annotations

import re
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encore_retention.connectors.base import DiscountRequest
from encore_retention.connectors.codes import ALPHABET, code_for

SHAPE = re.compile(rf"^(?:[A-Z0-9]{{1,20}}-)?[{ALPHABET}]{{4}}-[{ALPHABET}]{{4}}$")


def _request(key: str, prefix: str = "") -> DiscountRequest:
    return DiscountRequest(idempotency_key=key, kind="percent", value=Decimal("10"), prefix=prefix)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.text(min_size=1, max_size=80), prefix=st.text(max_size=30))
def test_codes_are_readable_and_stable(env, key, prefix):
    code = code_for(1, _request(key, prefix))
    assert SHAPE.match(code), code
    assert code_for(1, _request(key, prefix)) == code
    assert not set(code.split("-")[-1] + code.split("-")[-2]) & set("0O1IL")


def test_codes_differ_by_key_shop_and_secret(env):
    codes = {code_for(1, _request(f"run-{i}:step-1")) for i in range(2000)}
    assert len(codes) == 2000
    assert code_for(1, _request("k")) != code_for(2, _request("k"))
    env.setenv("SECRET_KEY", "another-secret")
    from encore_retention.core.settings import reset_settings

    before = code_for(1, _request("k"))
    reset_settings()
    assert code_for(1, _request("k")) != before
    assert code_for(1, _request("k", "Bday 20%")).startswith("BDAY20-")
