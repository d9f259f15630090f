"""`GET|POST /unsubscribe/<token>`: confirmation page, RFC 8058 one-click, forged tokens, opaque ids,
links of the first format, and the suppression list that keeps only a keyed hash of the address."""

from __future__ import annotations

import base64
import hashlib
import zlib
from contextlib import nullcontext
from datetime import timedelta

import pytest
from itsdangerous import URLSafeSerializer
from sqlalchemy import select, text, update

from encore_retention.core.settings import reset_settings
from encore_retention.core.store import alembic_config, get_engine, migrate, session_scope
from encore_retention.core.store.ledger import get_or_create_shop
from encore_retention.core.store.models import Shop, Suppression, utcnow
from encore_retention.core.unsubscribe import address_key, is_suppressed, make_token, read_token, unsubscribe_url
from tests.conftest import fresh_postgres, use_database

ADDRESS = "Grace.Hopper@Example.org"  # no letter of it is a hex digit


def _shop_id(legacy_days: int | None = None) -> int:
    with session_scope() as session:
        shop = get_or_create_shop(session, "shopify", "encore-test.myshopify.com")
        shop.name = "Encore Test Shop"
        if legacy_days is not None:
            shop.legacy_links_until = utcnow() + timedelta(days=legacy_days)
        return shop.id


def _suppressions() -> list[tuple[int, str, str, str]]:
    with session_scope() as session:
        return [(s.shop_id, s.email_hash, s.reason, s.source) for s in session.query(Suppression).all()]


def legacy_token(shop_id: int, address: str, secret: str = "test-secret-key") -> str:
    """A link as the first format made it, and as emails already sent carry it: the address in the payload."""
    return URLSafeSerializer(secret, salt="encore-unsubscribe").dumps([shop_id, address.strip().lower()])


def payload_of(token: str) -> bytes:
    """What anyone holding a token can read: its payload, base64-decoded (and inflated when compressed)."""
    body = token.rsplit(".", 1)[0]
    compressed = body.startswith(".")
    raw = base64.urlsafe_b64decode(body.lstrip(".") + "=" * (-len(body.lstrip(".")) % 4))
    return zlib.decompress(raw) if compressed else raw


def test_get_shows_a_confirmation_page_and_changes_nothing(client):
    shop_id = _shop_id()
    response = client.get(f"/unsubscribe/{make_token(shop_id, ADDRESS)}")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "Encore Test Shop" in page and 'method="post"' in page and "List-Unsubscribe" in page
    assert "grace" not in page.lower()  # the link does not say whom it was sent to, and neither does the page
    assert _suppressions() == []


def test_one_click_post_records_the_suppression_at_once(client):
    shop_id = _shop_id()
    url = unsubscribe_url(shop_id, ADDRESS)
    assert url.startswith("http://localhost:8000/unsubscribe/")
    response = client.post(
        url.removeprefix("http://localhost:8000"),
        data="List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200
    assert _suppressions() == [(shop_id, address_key(shop_id, ADDRESS), "unsubscribed", "one-click")]
    with session_scope() as session:
        assert is_suppressed(session, shop_id, " grace.hopper@EXAMPLE.org ") == "unsubscribed"
        assert is_suppressed(session, shop_id, "linus@example.org") is None
    # a second click (or the page's button after one-click) is harmless
    again = client.post(url.removeprefix("http://localhost:8000"))
    assert again.status_code == 200 and len(_suppressions()) == 1
    page = client.get(url.removeprefix("http://localhost:8000")).get_data(as_text=True)
    assert "You are unsubscribed" in page


def test_a_new_token_carries_nothing_readable_about_the_person(env):
    shop_id = 7
    token = make_token(shop_id, ADDRESS)
    carried = payload_of(token).lower()
    address = ADDRESS.lower().encode()
    for secret_free in (
        address,
        b"grace",
        b"hopper",
        b"example",
        hashlib.sha256(address).hexdigest().encode(),
        hashlib.md5(address).hexdigest().encode(),
        base64.b64encode(address).lower(),
    ):
        assert secret_free not in carried
    assert read_token(token) == (shop_id, address_key(shop_id, ADDRESS), False)
    assert make_token(shop_id, " grace.hopper@EXAMPLE.ORG") == token  # the same recipient, the same link
    key = address_key(shop_id, ADDRESS)
    assert address_key(8, ADDRESS) != key  # not linkable across shops
    env.setenv("SECRET_KEY", "another-installation")
    reset_settings()
    assert address_key(shop_id, ADDRESS) != key  # keyed: another installation makes other ids
    assert read_token(token) is None  # and does not take this one's links


def test_forged_or_mangled_token_is_404_and_records_nothing(client):
    shop_id = _shop_id(legacy_days=30)
    token = make_token(shop_id, ADDRESS)
    forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    other_key = URLSafeSerializer("not-our-key", salt="encore-unsubscribe-2").dumps(
        [shop_id, address_key(shop_id, ADDRESS)]
    )
    wrong_shape = URLSafeSerializer("test-secret-key", salt="encore-unsubscribe-2").dumps([shop_id, "short"])
    for bad in (
        forged,
        "not-a-token",
        token.replace(".", "x", 1),
        other_key,
        wrong_shape,
        legacy_token(shop_id, ADDRESS, secret="not-our-key"),
        legacy_token(shop_id, ADDRESS)[:-2],
    ):
        assert client.get(f"/unsubscribe/{bad}").status_code == 404
        assert client.post(f"/unsubscribe/{bad}", data={"List-Unsubscribe": "One-Click"}).status_code == 404
    assert _suppressions() == []


def test_token_for_a_deleted_shop_answers_without_error(client):
    response = client.post(f"/unsubscribe/{make_token(999, ADDRESS)}")
    assert response.status_code == 200
    assert _suppressions() == []


def test_a_link_of_the_first_format_works_while_its_shop_honours_it(client):
    shop_id = _shop_id(legacy_days=30)
    old = legacy_token(shop_id, ADDRESS)
    assert b"grace.hopper@example.org" in payload_of(old)  # what those links gave away
    assert "grace" not in client.get(f"/unsubscribe/{old}").get_data(as_text=True).lower()
    assert _suppressions() == []  # GET never unsubscribes
    assert client.post(f"/unsubscribe/{old}", data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert _suppressions() == [(shop_id, address_key(shop_id, ADDRESS), "unsubscribed", "one-click")]
    with session_scope() as session:
        assert is_suppressed(session, shop_id, ADDRESS) == "unsubscribed"


def test_a_link_of_the_first_format_is_refused_once_its_time_is_over(client):
    shop_id = _shop_id(legacy_days=-1)
    old = legacy_token(shop_id, ADDRESS)
    assert client.get(f"/unsubscribe/{old}").status_code == 404
    assert client.post(f"/unsubscribe/{old}", data={"List-Unsubscribe": "One-Click"}).status_code == 404
    with session_scope() as session:  # a shop made after the new format came never sent one
        session.execute(update(Shop).values(legacy_links_until=None))
    assert client.post(f"/unsubscribe/{old}", data={"List-Unsubscribe": "One-Click"}).status_code == 404
    assert _suppressions() == []
    # its own links of the new format work as ever
    assert client.post(f"/unsubscribe/{make_token(shop_id, ADDRESS)}").status_code == 200


# ---- the migration that hashed the stored addresses --------------------------------------------------


def _at_0004(url: str) -> None:
    from alembic import command

    command.upgrade(alembic_config(url), "0004")
    with get_engine(url).begin() as conn:
        conn.execute(
            text(
                "INSERT INTO shops (platform, domain, active, settings, created_at) "
                "VALUES ('shopify', 'old.myshopify.com', true, '{}', CURRENT_TIMESTAMP)"
            )
        )
        shop_id = conn.execute(text("SELECT id FROM shops")).scalar_one()
        for address, source in (
            ("ada.lovelace@example.com", "link"),
            ("ADA.LOVELACE@example.com ", "bounce"),
            ("grace@example.com", "one-click"),
        ):
            conn.execute(
                text(
                    "INSERT INTO suppressions (shop_id, email, reason, source, created_at) "
                    "VALUES (:shop, :email, 'unsubscribed', :source, CURRENT_TIMESTAMP)"
                ),
                {"shop": shop_id, "email": address, "source": source},
            )


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_migration_hashes_the_stored_addresses_and_keeps_old_links_working(dialect, env, redis, tmp_path):
    sqlite = nullcontext(f"sqlite:///{tmp_path / 'old.db'}")
    with fresh_postgres("encore_unsub") if dialect == "postgresql" else sqlite as url:
        if url is None:
            pytest.skip("no PostgreSQL server answers on 127.0.0.1:5432")
        _at_0004(url)
        use_database(env, url)
        migrate(url)
        with get_engine(url).connect() as conn:
            rows = conn.execute(text("SELECT * FROM suppressions ORDER BY id")).mappings().all()
        assert "email" not in rows[0]
        assert [(r["email_hash"], r["source"]) for r in rows] == [
            (address_key(rows[0]["shop_id"], "ada.lovelace@example.com"), "link"),
            (address_key(rows[0]["shop_id"], "grace@example.com"), "one-click"),
        ]  # one row per address
        assert all("@" not in str(value) for row in rows for value in row.values())
        with session_scope() as session:
            shop = session.execute(select(Shop)).scalar_one()
            shop_id = shop.id
            assert shop.legacy_links_until is not None
            assert timedelta(days=364) < shop.legacy_links_until - utcnow() <= timedelta(days=365)
            assert is_suppressed(session, shop_id, "Ada.Lovelace@example.com") == "unsubscribed"
        from encore_retention.web import create_app

        client = create_app().test_client()
        assert (
            client.post(
                f"/unsubscribe/{legacy_token(shop_id, 'Linus@Example.com')}", data={"List-Unsubscribe": "One-Click"}
            ).status_code
            == 200
        )
        with session_scope() as session:
            assert is_suppressed(session, shop_id, "linus@example.com") == "unsubscribed"
