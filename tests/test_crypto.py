"""Secrets at rest: tokens encrypted with SECRET_KEY, unreadable with another key."""

from __future__ import annotations

import pytest

from encore_retention.core.crypto import InvalidToken, decrypt, encrypt


def test_tokens_are_stored_encrypted_and_need_the_key():
    stored = encrypt("shpat_abc123", secret_key="one")
    assert "shpat_abc123" not in stored
    assert decrypt(stored, secret_key="one") == "shpat_abc123"
    with pytest.raises(InvalidToken):
        decrypt(stored, secret_key="two")
