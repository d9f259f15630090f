"""Per-store webhook secrets, read from the store and cached in each web process.

Ingest must ride out a short database outage, so what the store said is kept: a store's secrets
are fresh for TTL_SECONDS, "no such store" for NEGATIVE_TTL_SECONDS; when the store can't answer,
secrets it gave are still used for up to STALE_SECONDS. With nothing known, a delivery is answered
503 (`StoreUnavailable`) and the platform retries. After a failure the store is left alone for
RETRY_SECONDS. The names asked about come from unverified headers, so the cache keeps at most
MAX_ENTRIES of them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from encore_retention.core.crypto import InvalidToken, decrypt
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import Shop
from encore_retention.webhooks.base import Rejected

log = logging.getLogger(__name__)

TTL_SECONDS = 30.0
NEGATIVE_TTL_SECONDS = 10.0
STALE_SECONDS = 3600.0
RETRY_SECONDS = 2.0
MAX_ENTRIES = 10_000
MAX_DOMAIN = 255  # the column's width: a longer name can't be a registered store

OWN_SECRETS = "*"  # the cache key (platform, OWN_SECRETS) holds {domain: secrets} of the shops with their own


class StoreUnavailable(Rejected):
    """The store can't say which secrets a shop has: answered 503, so the platform delivers again later."""

    def __init__(self, detail: str) -> None:
        super().__init__(503, "database_unavailable", detail)


@dataclass
class _Entry:
    fresh_until: float
    stale_until: float
    value: Any


_cache: dict[tuple[str, str], _Entry] = {}
_cache_lock = threading.Lock()
_store_down_until = 0.0


def lookup(platform: str, domain: str) -> list[str] | None:
    """The shop's webhook secrets, or None when no active shop is registered under that domain.

    Raises StoreUnavailable when the store can't answer and nothing usable is cached.
    """
    if not domain or len(domain) > MAX_DOMAIN or "\x00" in domain:
        return None
    return _cached((platform, domain), lambda: _load_shop(platform, domain), known=lambda value: bool(value))


def shop_secrets(platform: str, domain: str) -> list[str]:
    """The secrets of a shop that has its own ([] for the rest), from one cached list of such shops.

    For a platform whose app secret signs most deliveries (Shopify): asked only when that secret does
    not match, it costs the store one query per TTL_SECONDS whatever the domains asked about.
    """
    return list(_cached((platform, OWN_SECRETS), lambda: _load_own(platform), known=lambda _: True).get(domain, []))


def _decrypt(shop: Shop) -> list[str]:
    if not shop.webhook_secret_enc:
        return []
    try:
        return [decrypt(shop.webhook_secret_enc)]
    except InvalidToken:
        log.error("stored webhook secret for %s cannot be decrypted (SECRET_KEY changed?)", shop.domain)
        return []


def _load_shop(platform: str, domain: str) -> list[str] | None:
    with session_scope() as session:
        query = select(Shop).where(Shop.platform == platform, Shop.domain == domain)
        shop = session.execute(query).scalar_one_or_none()
        if shop is None or not shop.active:
            return None
        return _decrypt(shop)


def _load_own(platform: str) -> dict[str, list[str]]:
    with session_scope() as session:
        query = select(Shop).where(
            Shop.platform == platform, Shop.active.is_(True), Shop.webhook_secret_enc.is_not(None)
        )
        return {shop.domain: secrets for shop in session.execute(query).scalars() if (secrets := _decrypt(shop))}


def _cached(key: tuple[str, str], load: Callable[[], Any], known: Callable[[Any], bool]) -> Any:
    """What the store says for `key`: from the cache while fresh, else loaded (or stale while the store is down).

    `known(value)` tells an answer worth keeping through an outage from a negative one.
    """
    global _store_down_until
    now = time.monotonic()
    hit = _cache.get(key)
    if hit is not None and hit.fresh_until > now:
        return hit.value
    try:
        if now < _store_down_until:
            raise StoreUnavailable("the database did not answer a moment ago")
        value = load()
    except (SQLAlchemyError, StoreUnavailable) as exc:
        if not isinstance(exc, StoreUnavailable):
            _store_down_until = now + RETRY_SECONDS
            log.error("webhook secrets unavailable", extra={"platform": key[0], "error": type(exc).__name__})
        if hit is not None and hit.stale_until > now:
            return hit.value
        raise StoreUnavailable(f"database unavailable: {key[0]} webhook secrets can't be read") from exc
    keep = known(value)
    _remember(
        key,
        _Entry(now + (TTL_SECONDS if keep else NEGATIVE_TTL_SECONDS), now + (STALE_SECONDS if keep else 0.0), value),
    )
    return value


def _remember(key: tuple[str, str], entry: _Entry) -> None:
    """Cache an answer; when full, drop what has expired, then the oldest, down to nine tenths."""
    with _cache_lock:
        _cache.pop(key, None)  # re-inserted last: the dict's order is the order of insertion
        if len(_cache) >= MAX_ENTRIES:
            now = time.monotonic()
            for old in [k for k, e in _cache.items() if e.fresh_until <= now and e.stale_until <= now]:
                del _cache[old]
            while len(_cache) > MAX_ENTRIES * 9 // 10:
                del _cache[next(iter(_cache))]
        _cache[key] = entry


def forget(platform: str | None = None, domain: str | None = None) -> None:
    """Drop cached secrets (after `encore stores add`, and in tests)."""
    global _store_down_until
    with _cache_lock:
        if platform is None:
            _cache.clear()
            _store_down_until = 0.0
        else:
            _cache.pop((platform, domain or ""), None)
            _cache.pop((platform, OWN_SECRETS), None)
