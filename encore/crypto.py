"""Encryption of stored secrets (access tokens, webhook secrets) with Fernet, keyed by SECRET_KEY."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken

from encore_retention.core.settings import get_settings

__all__ = ["InvalidToken", "decrypt", "encrypt"]


def _fernet(secret_key: str | None = None) -> Fernet:
    key = hashlib.sha256(("encore-token-encryption:" + (secret_key or get_settings().secret_key)).encode())
    return Fernet(base64.urlsafe_b64encode(key.digest()))


def encrypt(plaintext: str, secret_key: str | None = None) -> str:
    """Encrypt a secret for storage."""
    return _fernet(secret_key).encrypt(plaintext.encode()).decode()


def decrypt(token: str, secret_key: str | None = None) -> str:
    """Decrypt a stored secret; raises InvalidToken if SECRET_KEY changed."""
    return _fernet(secret_key).decrypt(token.encode()).decode()
