"""Signed unsubscribe links (itsdangerous, SECRET_KEY) and the suppression list checked before every send.

The suppression list holds no address: a row keeps the address's keyed hash (`address_key`, an
HMAC-SHA256 of the normalised address and the shop, with a key derived from SECRET_KEY), which is
all that checking a send needs. A link names the shop and that same hash, so it says nothing
readable about the person it was sent to (the link's payload is only base64).

Links of the first format named the address itself. A shop that existed when the suppression list
was hashed (migration 0005) honours them until its `legacy_links_until`, a year after that
migration; then they are refused like a forged link. New links never use that format.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from typing import NamedTuple

from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from encore_retention.core.settings import get_settings
from encore_retention.core.store.models import Shop, Suppression, utcnow
from encore_retention.core.store.unit import Unit

SALT = "encore-unsubscribe-2"
LEGACY_SALT = "encore-unsubscribe"  # the first format: [shop id, address]
LEGACY_LINK_DAYS = 365  # how long migration 0005 lets a shop honour links of the first format


def normalise_address(email: str) -> str:
    """The form an address is compared in: surrounding spaces removed, lower case."""
    return email.strip().lower()


def address_key(shop_id: int, email: str, secret_key: str | None = None) -> str:
    """The keyed hash an address is known by at a shop (64 hex digits): the suppression list's and the link's id.

    Keyed with SECRET_KEY, so the list can't be matched against guessed addresses without it; bound
    to the shop, so the same person is not linkable across the shops of one installation. Changing
    SECRET_KEY makes every stored hash unmatchable: keep it, as the stored tokens already require.
    """
    secret = secret_key or get_settings().secret_key
    key = _keys.get(secret)
    if key is None:
        key = _keys[secret] = hmac.new(secret.encode(), b"encore suppression address", hashlib.sha256).digest()
    message = f"{int(shop_id)}:{normalise_address(email)}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


_keys: dict[str, bytes] = {}


class Recipient(NamedTuple):
    """Whom a valid link names: the shop, the address's keyed hash, and whether it came in the first format."""

    shop_id: int
    key: str
    legacy: bool = False


def _serializer(salt: str = SALT) -> URLSafeSerializer:
    return URLSafeSerializer(get_settings().secret_key, salt=salt)


def make_token(shop_id: int, email: str) -> str:
    """A token naming one address at one shop by its keyed hash; it never expires (RFC 8058 links must keep working)."""
    return _serializer().dumps([int(shop_id), address_key(shop_id, email)])


def read_token(token: str) -> Recipient | None:
    """The recipient a token names, or None if it is forged or malformed.

    A token of the first format is read too (`legacy=True`); whether its shop still honours it is
    for the caller to ask (`honours_legacy`).
    """
    try:
        shop_id, key = _serializer().loads(token)
        if isinstance(key, str) and len(key) == 64 and isinstance(shop_id, int):
            return Recipient(shop_id, key)
        return None
    except (BadSignature, ValueError, TypeError):
        pass
    try:
        shop_id, email = _serializer(LEGACY_SALT).loads(token)
        if not isinstance(email, str) or not email.strip():
            return None
        return Recipient(int(shop_id), address_key(int(shop_id), email), legacy=True)
    except (BadSignature, ValueError, TypeError):
        return None


def honours_legacy(shop: Shop | None, now: datetime | None = None) -> bool:
    """Whether a shop still accepts links of the first format (until its `legacy_links_until`)."""
    return shop is not None and shop.legacy_links_until is not None and (now or utcnow()) < shop.legacy_links_until


def unsubscribe_url(shop_id: int, email: str) -> str:
    """The public unsubscribe link for an address."""
    return f"{get_settings().APP_URL.rstrip('/')}/unsubscribe/{make_token(shop_id, email)}"


_REASON = select(Suppression.reason).where(
    Suppression.shop_id == bindparam("shop_id"), Suppression.email_hash == bindparam("key")
)


def is_suppressed(session: Session, shop_id: int, email: str) -> str | None:
    """The suppression reason for an address at a shop, or None if it may be mailed."""
    return suppression_reason(session, shop_id, address_key(shop_id, email))


def suppression_reason(session: Session, shop_id: int, key: str) -> str | None:
    """The suppression reason recorded for an address's keyed hash at a shop, or None."""
    return session.connection().execute(_REASON, {"shop_id": shop_id, "key": key}).scalar_one_or_none()


def suppress(session: Unit, shop_id: int, email: str, reason: str = "unsubscribed", source: str = "") -> None:
    """Record that an address must not receive marketing email from a shop (idempotent)."""
    suppress_key(session, shop_id, address_key(shop_id, email), reason, source)


def suppress_key(session: Unit, shop_id: int, key: str, reason: str = "unsubscribed", source: str = "") -> None:
    """Record a suppression by the address's keyed hash (what an unsubscribe link carries; idempotent)."""
    if suppression_reason(session, shop_id, key) is None:  # two clicks at once: the second inserts nothing
        session.insert_new(
            Suppression,
            {"shop_id": shop_id, "email_hash": key, "reason": reason, "source": source, "created_at": utcnow()},
            ["shop_id", "email_hash"],
            attach=False,
        )
