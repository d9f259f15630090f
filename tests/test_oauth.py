"""Shopify app install end to end: Flask's test client for the browser, `responses` for Shopify."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import responses
from sqlalchemy import select

from encore_retention.connectors.models import OAuthState
from encore_retention.core.crypto import decrypt
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import Shop
from tests.conftest import SHOP, SHOPIFY_SECRET

TOKEN = "shpat_fresh_offline_token"
GRAPHQL = f"https://{SHOP}/admin/api/2026-04/graphql.json"
REFUSED: set[str] = set()  # webhook topics the fake Admin API refuses


def signed(params: dict[str, str], secret: str = SHOPIFY_SECRET) -> dict[str, str]:
    """The query string as Shopify signs it: hex HMAC-SHA256 of the sorted `key=value` pairs."""
    message = "&".join(f"{k}={v}" for k, v in sorted(params.items()))
    return {**params, "hmac": hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()}


def _install(client, shop: str = SHOP) -> str:  # type: ignore[no-untyped-def]
    response = client.get(f"/shopify/install?shop={shop}")
    assert response.status_code == 302, response.get_data(as_text=True)
    return parse_qs(urlsplit(response.headers["Location"]).query)["state"][0]


def _callback_params(state: str, shop: str = SHOP, **extra: str) -> dict[str, str]:
    params = {
        "code": "0907a61c0c8d55e99db179b68161bc00",
        "host": "YWRtaW4uc2hvcGlmeS5jb20vc3RvcmUvZW5jb3Jl",
        "shop": shop,
        "state": state,
        "timestamp": str(int(time.time())),
    }
    params.update(extra)
    return signed(params)


@pytest.fixture
def shopify_api():  # type: ignore[no-untyped-def]
    """Shopify's token endpoint and Admin API, recording the GraphQL operations."""
    operations: list[tuple[str, dict]] = []

    def graphql(request):  # type: ignore[no-untyped-def]
        assert request.headers["X-Shopify-Access-Token"] == TOKEN
        body = json.loads(request.body)
        name = body["query"].split("{")[0].split()[1].split("(")[0]
        operations.append((name, body["variables"]))
        cost = {
            "cost": {
                "requestedQueryCost": 10,
                "actualQueryCost": 10,
                "throttleStatus": {"maximumAvailable": 2000.0, "currentlyAvailable": 1990, "restoreRate": 100.0},
            }
        }
        if name == "shop":
            data = {
                "shop": {
                    "name": "Encore Test",
                    "email": "owner@example.com",
                    "currencyCode": "EUR",
                    "ianaTimezone": "Europe/Paris",
                }
            }
        elif name == "webhookSubscriptions":
            data = {"webhookSubscriptions": {"nodes": []}}
        elif body["variables"]["topic"] in REFUSED:
            data = {
                "webhookSubscriptionCreate": {
                    "webhookSubscription": None,
                    "userErrors": [
                        {
                            "field": ["webhookSubscription"],
                            "message": "This app is not approved to subscribe to webhook "
                            "topics containing protected customer data.",
                        }
                    ],
                }
            }
        else:
            variables = body["variables"]
            data = {
                "webhookSubscriptionCreate": {
                    "webhookSubscription": {
                        "id": f"gid://shopify/WebhookSubscription/{len(operations)}",
                        "topic": variables["topic"],
                        "uri": variables["webhookSubscription"]["uri"],
                    },
                    "userErrors": [],
                }
            }
        return 200, {}, json.dumps({"data": data, "extensions": cost})

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.post(
            f"https://{SHOP}/admin/oauth/access_token",
            json={"access_token": TOKEN, "scope": "write_customers,write_discounts,read_orders"},
        )
        mock.add_callback(responses.POST, GRAPHQL, callback=graphql)
        mock.operations = operations  # type: ignore[attr-defined]
        yield mock


def _shops() -> list[Shop]:
    with session_scope() as session:
        return list(session.execute(select(Shop)).scalars())


def test_install_redirects_to_the_grant_screen_with_a_single_use_state(client):
    response = client.get(f"/shopify/install?shop={SHOP}")
    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    assert (location.scheme, location.netloc, location.path) == ("https", SHOP, "/admin/oauth/authorize")
    query = parse_qs(location.query)
    assert query["client_id"] == ["test-api-key"]
    assert query["scope"] == ["read_customers,read_orders,write_discounts,write_customers"]
    assert query["redirect_uri"] == ["http://localhost:8000/shopify/callback"]
    with session_scope() as session:
        states = session.execute(select(OAuthState)).scalars().all()
    assert [(s.nonce, s.shop_domain) for s in states] == [(query["state"][0], SHOP)]


@pytest.mark.parametrize(
    "shop",
    [
        "evil.example.com",
        "encore.myshopify.com.evil.com",
        "-x.myshopify.com",
        "a_b.myshopify.com",
        "",
        "https://encore.myshopify.com/admin",
    ],
)
def test_install_rejects_a_bad_shop_domain(client, shop):
    response = client.get("/shopify/install?" + urlencode({"shop": shop}))
    assert response.status_code == 400
    with session_scope() as session:
        assert session.execute(select(OAuthState)).scalars().all() == []


def test_install_launched_from_shopify_with_a_forged_hmac_is_refused(client):
    params = signed({"shop": SHOP, "timestamp": str(int(time.time()))}, secret="not-the-app-secret")
    assert client.get("/shopify/install?" + urlencode(params)).status_code == 401


def test_callback_stores_the_token_encrypted_and_subscribes_webhooks(client, shopify_api):
    state = _install(client)
    response = client.get("/shopify/callback?" + urlencode(_callback_params(state)))
    assert response.status_code == 200, response.get_data(as_text=True)
    exchange = json.loads(shopify_api.calls[0].request.body)
    assert exchange == {
        "client_id": "test-api-key",
        "client_secret": SHOPIFY_SECRET,
        "code": "0907a61c0c8d55e99db179b68161bc00",
    }
    [shop] = _shops()
    assert shop.access_token_enc and TOKEN not in shop.access_token_enc
    assert decrypt(shop.access_token_enc) == TOKEN
    assert shop.active and shop.scopes == "write_customers,write_discounts,read_orders"
    assert (shop.name, shop.currency, shop.timezone) == ("Encore Test", "EUR", "Europe/Paris")
    topics = [v["topic"] for name, v in shopify_api.operations if name == "webhookSubscriptionCreate"]
    assert "APP_UNINSTALLED" in topics and "ORDERS_CREATE" in topics and "CUSTOMERS_UPDATE" in topics
    assert not any("REDACT" in t or "DATA_REQUEST" in t for t in topics)
    uris = {
        v["webhookSubscription"]["uri"] for name, v in shopify_api.operations if name == "webhookSubscriptionCreate"
    }
    assert uris == {"http://localhost:8000/webhooks/shopify"}
    with session_scope() as session:
        assert session.execute(select(OAuthState)).scalars().all() == []


def test_the_install_signs_the_browser_in_as_that_shop(client, shopify_api):
    """After the callback the browser sees its shop's admin pages, framed by Shopify only; the cookie names a
    session kept in Redis, nothing more."""
    from encore_retention.web.admin.auth import SESSION_KEY

    state = _install(client)
    assert client.get("/admin/customers").status_code == 302  # not signed in before
    assert client.get("/shopify/callback?" + urlencode(_callback_params(state))).status_code == 200
    page = client.get("/admin/customers")
    assert page.status_code == 200
    assert page.headers["Content-Security-Policy"] == f"frame-ancestors https://{SHOP} https://admin.shopify.com"
    with client.session_transaction() as session:
        assert set(session[SESSION_KEY]) == {"sid"}


def test_replayed_state_is_refused(client, shopify_api):
    state = _install(client)
    params = _callback_params(state)
    assert client.get("/shopify/callback?" + urlencode(params)).status_code == 200
    exchanges = len([c for c in shopify_api.calls if c.request.url.endswith("/access_token")])
    replay = client.get("/shopify/callback?" + urlencode(params))
    assert replay.status_code == 403
    assert len([c for c in shopify_api.calls if c.request.url.endswith("/access_token")]) == exchanges


def test_forged_hmac_is_refused_and_leaves_the_state_usable(client, shopify_api):
    state = _install(client)
    params = _callback_params(state)
    forged = dict(params, code="attacker-code")  # changed after signing
    assert client.get("/shopify/callback?" + urlencode(forged)).status_code == 401
    missing = {k: v for k, v in params.items() if k != "hmac"}
    assert client.get("/shopify/callback?" + urlencode(missing)).status_code == 401
    assert not any(c.request.url.endswith("/access_token") for c in shopify_api.calls)
    assert _shops() == []
    assert client.get("/shopify/callback?" + urlencode(params)).status_code == 200  # the real one still works


def test_state_issued_for_another_shop_is_refused(client, shopify_api):
    state = _install(client, "other-shop.myshopify.com")
    response = client.get("/shopify/callback?" + urlencode(_callback_params(state)))
    assert response.status_code == 403 and _shops() == []


def test_unknown_state_and_bad_shop_domain_in_callback(client, shopify_api):
    assert client.get("/shopify/callback?" + urlencode(_callback_params("made-up"))).status_code == 403
    state = _install(client)
    bad = _callback_params(state, shop="evil.example.com")
    assert client.get("/shopify/callback?" + urlencode(bad)).status_code == 400
    assert _shops() == []


def test_old_callback_is_refused(client, shopify_api):
    state = _install(client)
    stale = _callback_params(state, timestamp=str(int(time.time()) - 3 * 24 * 3600))
    assert client.get("/shopify/callback?" + urlencode(stale)).status_code == 401
    assert _shops() == []


def test_install_without_app_credentials_says_so(client, env):
    env.delenv("SHOPIFY_API_KEY")
    from encore_retention.core.settings import reset_settings

    reset_settings()
    assert client.get(f"/shopify/install?shop={SHOP}").status_code == 503


def test_install_without_protected_data_access_says_which_webhooks_are_missing(client, shopify_api, monkeypatch):
    monkeypatch.setattr("tests.test_oauth.REFUSED", {"CUSTOMERS_CREATE", "CUSTOMERS_UPDATE"})
    state = _install(client)
    response = client.get("/shopify/callback?" + urlencode(_callback_params(state)))
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and "with gaps" in page
    assert "customers/create" in page and "protected customer data" in page
    [shop] = _shops()
    assert shop.active and decrypt(shop.access_token_enc) == TOKEN
