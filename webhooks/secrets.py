"""Per-store webhook secrets, read from the store and cached briefly in each web process."""

from __future__ import annotations

import logging
import time

from sqlalchemy import select

from encore.crypto import InvalidToken, decrypt
from encore.store import session_scope
from encore.store.models import Shop

log = logging.getLogger(__name__)

TTL_SECONDS = 30.0
_cache: dict[tuple[str, str], tuple[float, list[str] | None]] = {}


def shop_secrets(platform: str, domain: str) -> list[str]:
    """The webhook secrets stored for a shop ([] for none); None-safe and cached for TTL_SECONDS."""
    return lookup(platform, domain) or []


def lookup(platform: str, domain: str) -> list[str] | None:
    """The shop's webhook secrets, or None when no active shop is registered under that domain."""
    key = (platform, domain)
    hit = _cache.get(key)
    now = time.monotonic()
    if hit and hit[0] > now:
        return hit[1]
    with session_scope() as session:
        query = select(Shop).where(Shop.platform == platform, Shop.domain == domain)
        shop = session.execute(query).scalar_one_or_none()
        secrets: list[str] | None = None
        if shop is not None and shop.active:
            secrets = []
            if shop.webhook_secret_enc:
                try:
                    secrets.append(decrypt(shop.webhook_secret_enc))
                except InvalidToken:
                    log.error("stored webhook secret for %s cannot be decrypted (SECRET_KEY changed?)", domain)
    _cache[key] = (now + TTL_SECONDS, secrets)
    return secrets


def forget(platform: str | None = None, domain: str | None = None) -> None:
    """Drop cached secrets (after `encore stores add`, and in tests)."""
    if platform is None:
        _cache.clear()
    else:
        _cache.pop((platform, domain or ""), None)
