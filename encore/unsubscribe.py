"""Signed unsubscribe links (itsdangerous, SECRET_KEY) and the suppression list checked before every send."""

from __future__ import annotations

from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from encore.settings import get_settings
from encore.store.models import Suppression, utcnow

SALT = "encore-unsubscribe"


def _serializer() -> URLSafeSerializer:
    return URLSafeSerializer(get_settings().secret_key, salt=SALT)


def make_token(shop_id: int, email: str) -> str:
    """A token naming one address at one shop; it never expires (RFC 8058 links must keep working)."""
    return _serializer().dumps([shop_id, email.strip().lower()])


def read_token(token: str) -> tuple[int, str] | None:
    """The (shop id, email) a token names, or None if it is forged or malformed."""
    try:
        shop_id, email = _serializer().loads(token)
    except (BadSignature, ValueError, TypeError):
        return None
    return int(shop_id), str(email)


def unsubscribe_url(shop_id: int, email: str) -> str:
    """The public unsubscribe link for an address."""
    return f"{get_settings().APP_URL.rstrip('/')}/unsubscribe/{make_token(shop_id, email)}"


_REASON = select(Suppression.reason).where(Suppression.shop_id == bindparam("shop_id"),
                                          Suppression.email == bindparam("email"))


def is_suppressed(session: Session, shop_id: int, email: str) -> str | None:
    """The suppression reason for an address at a shop, or None if it may be mailed."""
    where = {"shop_id": shop_id, "email": email.strip().lower()}
    return session.connection().execute(_REASON, where).scalar_one_or_none()


def suppress(session: Session, shop_id: int, email: str, reason: str = "unsubscribed", source: str = "") -> None:
    """Record that an address must not receive marketing email from a shop (idempotent)."""
    address = email.strip().lower()
    if is_suppressed(session, shop_id, address) is None:
        session.add(Suppression(shop_id=shop_id, email=address, reason=reason, source=source, created_at=utcnow()))
        session.flush()
