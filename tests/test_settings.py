"""Settings: the contract's environment variables, and what follows from them when they are unset."""

from __future__ import annotations

import pytest

from encore_retention.core.settings import Settings, get_settings, reset_settings
from encore_retention.core.unsubscribe import unsubscribe_url


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path):  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)  # no .env
    for name in ("APP_URL", "PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SECRET_KEY", "settings-test-key")
    reset_settings()
    yield monkeypatch
    reset_settings()


def test_app_url_follows_port_when_unset(clean):
    clean.setenv("PORT", "18351")
    reset_settings()
    assert get_settings().APP_URL == "http://localhost:18351"
    assert get_settings().development
    # the List-Unsubscribe links and `encore samples send` read APP_URL: they go to that port too
    assert unsubscribe_url(1, "ada@example.com").startswith("http://localhost:18351/unsubscribe/")


def test_app_url_when_set_wins_over_port(clean):
    clean.setenv("PORT", "18351")
    clean.setenv("APP_URL", "https://encore.example.com")
    reset_settings()
    assert get_settings().APP_URL == "https://encore.example.com"
    assert not get_settings().development


def test_the_defaults_are_port_8000(clean):
    assert get_settings().APP_URL == "http://localhost:8000"


@pytest.mark.parametrize("port", ["0", "70000", "eighty"])
def test_a_port_that_is_not_one_is_refused(clean, port: str):
    clean.setenv("PORT", port)
    with pytest.raises(ValueError, match="PORT"):
        Settings()
