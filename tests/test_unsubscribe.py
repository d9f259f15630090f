"""`GET|POST /unsubscribe/<token>`: confirmation page, RFC 8058 one-click, forged tokens."""

from __future__ import annotations

from encore.store import session_scope
from encore.store.ledger import get_or_create_shop
from encore.store.models import Suppression
from encore.unsubscribe import is_suppressed, make_token, unsubscribe_url


def _shop_id() -> int:
    with session_scope() as session:
        shop = get_or_create_shop(session, "shopify", "encore-test.myshopify.com")
        shop.name = "Encore Test Shop"
        return shop.id


def _suppressions() -> list[tuple[int, str, str, str]]:
    with session_scope() as session:
        return [(s.shop_id, s.email, s.reason, s.source) for s in session.query(Suppression).all()]


def test_get_shows_a_confirmation_page_and_changes_nothing(client):
    shop_id = _shop_id()
    response = client.get(f"/unsubscribe/{make_token(shop_id, 'Ada@Example.com')}")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "ada@example.com" in page and "Encore Test Shop" in page and 'method="post"' in page
    assert _suppressions() == []


def test_one_click_post_records_the_suppression_at_once(client):
    shop_id = _shop_id()
    url = unsubscribe_url(shop_id, "ada@example.com")
    assert url.startswith("http://localhost:8000/unsubscribe/")
    response = client.post(url.removeprefix("http://localhost:8000"), data="List-Unsubscribe=One-Click",
                           content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200
    assert _suppressions() == [(shop_id, "ada@example.com", "unsubscribed", "one-click")]
    with session_scope() as session:
        assert is_suppressed(session, shop_id, "ADA@example.com") == "unsubscribed"
    # a second click (or the page's button after one-click) is harmless
    again = client.post(url.removeprefix("http://localhost:8000"))
    assert again.status_code == 200 and len(_suppressions()) == 1
    page = client.get(url.removeprefix("http://localhost:8000")).get_data(as_text=True)
    assert "You are unsubscribed" in page


def test_forged_or_mangled_token_is_404_and_records_nothing(client):
    shop_id = _shop_id()
    token = make_token(shop_id, "ada@example.com")
    forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    for bad in (forged, "not-a-token", make_token(shop_id, "ada@example.com").replace(".", "x", 1)):
        assert client.get(f"/unsubscribe/{bad}").status_code == 404
        assert client.post(f"/unsubscribe/{bad}", data={"List-Unsubscribe": "One-Click"}).status_code == 404
    assert _suppressions() == []


def test_token_for_a_deleted_shop_answers_without_error(client):
    response = client.post(f"/unsubscribe/{make_token(999, 'ada@example.com')}")
    assert response.status_code == 200
    assert _suppressions() == []
