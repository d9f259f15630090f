"""The sample store (`/sandbox/woocommerce`): this machine only, behind its own key; coupons as WooCommerce has them."""

from __future__ import annotations

import base64

import pytest

LOCAL = {"REMOTE_ADDR": "127.0.0.1"}
REMOTE = {"REMOTE_ADDR": "203.0.113.9"}


def test_the_sandbox_store_answers_this_machine_only(client, redis, sandbox_key):
    base = "/sandbox/woocommerce/wp-json/wc/v3"
    assert client.get(f"{base}/coupons", environ_base=REMOTE, query_string=sandbox_key).status_code == 403
    assert (
        client.get(
            f"{base}/coupons", environ_base=LOCAL, query_string=sandbox_key, headers={"X-Forwarded-For": "198.51.100.7"}
        ).status_code
        == 403
    )
    # a proxy on this machine that adds no header looks local: the sample store's key keeps it out
    wrong = sandbox_key["oauth_consumer_key"][:-1]
    for key in ({}, {"oauth_consumer_key": "ck_sandbox"}, {"oauth_consumer_key": wrong}, {"consumer_key": wrong}):
        assert client.get(f"{base}/coupons", environ_base=LOCAL, query_string=key).status_code == 403, key
    made = client.post(
        f"{base}/coupons",
        json={"code": "HELLO-AB12-CD34", "amount": "10.00", "discount_type": "percent"},
        environ_base=LOCAL,
        query_string=sandbox_key,
    )
    assert made.status_code == 201 and made.get_json()["code"] == "hello-ab12-cd34"
    again = client.post(
        f"{base}/coupons", json={"code": "HELLO-AB12-CD34"}, environ_base=LOCAL, query_string=sandbox_key
    )
    assert again.status_code == 400 and again.get_json()["code"] == "woocommerce_rest_coupon_code_already_exists"
    found = client.get(
        f"{base}/coupons?code=HELLO-AB12-CD34",
        environ_base=LOCAL,
        headers={
            "Authorization": "Basic " + base64.b64encode(f"{sandbox_key['oauth_consumer_key']}:x".encode()).decode()
        },
    ).get_json()
    assert [c["code"] for c in found] == ["hello-ab12-cd34"]


@pytest.mark.parametrize(
    ("app_url", "switch", "mounted"),
    [
        ("http://localhost:8000", None, True),  # development: the default APP_URL
        ("http://127.0.0.1:8000", None, True),
        ("https://encore.example.com", None, False),  # a deploy with its public address: no sample store at all
        ("https://encore.example.com", "1", True),
        ("http://localhost:8000", "0", False),
    ],
)
def test_the_sandbox_is_mounted_in_development_only(env, redis, sandbox_key, app_url, switch, mounted):
    from encore_retention.core.settings import reset_settings
    from encore_retention.web import create_app

    env.setenv("APP_URL", app_url)
    if switch is not None:
        env.setenv("ENCORE_SANDBOX", switch)
    reset_settings()
    client = create_app().test_client()
    host = app_url.split("://")[1].split(":")[0]
    answer = client.get(
        "/sandbox/woocommerce/wp-json/wc/v3/coupons",
        environ_base=LOCAL,
        query_string=sandbox_key,
        headers={"Host": host},
    )
    assert answer.status_code == (200 if mounted else 404)
