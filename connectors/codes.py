"""Discount codes: readable, unguessable, and the same for the same flow step every time.

A code is derived from the step's idempotency key with an HMAC keyed by SECRET_KEY, so a retry after
a timeout asks the platform for the code it may already have made (and finds it) instead of minting
another, while nobody can guess a customer's code from the flow. The alphabet leaves out letters
and digits that read alike (0/O, 1/I/L). `DiscountCode` rows remember what each key produced.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import object_session

from encore_retention.connectors.base import Discount, DiscountRequest
from encore_retention.connectors.models import DiscountCode
from encore_retention.core.settings import get_settings
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import utcnow
from encore_retention.core.store.unit import Unit

if TYPE_CHECKING:
    from encore_retention.core.store.models import Shop

ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
LENGTH = 8


def code_for(shop_id: int, request: DiscountRequest) -> str:
    """The code for a request: `PREFIX-XXXX-XXXX`, deterministic per (shop, idempotency key)."""
    digest = hmac.new(
        get_settings().secret_key.encode(), f"discount:{shop_id}:{request.idempotency_key}".encode(), hashlib.sha256
    ).digest()
    return format_code(request.prefix, digest)


def format_code(prefix: str, digest: bytes) -> str:
    """`PREFIX-XXXX-XXXX` from a digest's first 10 bytes (the simulator derives its codes with this too)."""
    number = int.from_bytes(digest[:10], "big")
    chars = []
    for _ in range(LENGTH):
        number, index = divmod(number, len(ALPHABET))
        chars.append(ALPHABET[index])
    body = "".join(chars)
    clean = _clean_prefix(prefix)
    return f"{clean}-{body[:4]}-{body[4:]}" if clean else f"{body[:4]}-{body[4:]}"


@lru_cache(maxsize=256)
def _clean_prefix(prefix: str) -> str:
    """A code's prefix: its letters and digits, upper case, at most 20."""
    return re.sub(r"[^A-Z0-9]+", "", prefix.upper())[:20]


@contextmanager
def _session_of(shop: Shop) -> Iterator[Unit]:
    """The unit the shop is loaded in (the caller's transaction, e.g. the flow engine's), else a new one.

    Writing through the caller's unit matters on SQLite, where a second connection would wait for
    the caller's write lock held by this same thread.
    """
    session = object_session(shop)
    if isinstance(session, Unit):  # the store's sessions all are
        yield session
        return
    with session_scope() as own:
        yield own


def remembered(shop: Shop, idempotency_key: str) -> Discount | None:
    """The discount already made for this key, if this installation made one."""

    with _session_of(shop) as session:
        row = session.execute(
            select(DiscountCode).where(DiscountCode.shop_id == shop.id, DiscountCode.idempotency_key == idempotency_key)
        ).scalar_one_or_none()
        if row is None:
            return None
        return Discount(
            code=row.code,
            kind=row.kind,  # type: ignore[arg-type]
            value=row.value,
            platform_id=row.platform_id,
            ends_at=row.ends_at,
        )


def remember(shop: Shop, idempotency_key: str, discount: Discount) -> None:
    """Record the discount made for this key (idempotent)."""

    with _session_of(shop) as session:
        values = {
            "shop_id": shop.id,
            "idempotency_key": idempotency_key,
            "code": discount.code,
            "platform_id": discount.platform_id,
            "kind": discount.kind,
            "value": discount.value,
            "ends_at": discount.ends_at,
            "created_at": utcnow(),
        }
        session.insert_new(DiscountCode, values, ["shop_id", "idempotency_key"], attach=False)
