"""Configuration from the environment (and a `.env` file), as the contract names it."""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SHOPIFY_API_VERSION = "2026-04"


class Settings(BaseSettings):
    """Every setting Encore reads; names are the contract's environment variables."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=True)

    REDIS_URL: str | None = None
    DATABASE_URL: str = "sqlite:///encore.db"
    SECRET_KEY: str | None = None
    # Unset, this machine at PORT: what `encore run` serves, the sample webhooks' target and the emails' links.
    APP_URL: str = ""
    PORT: int = Field(default=8000, ge=1, le=65535)
    DATA_DIR: Path = Field(default=Path(".encore"), validation_alias="ENCORE_DATA_DIR")

    SHOPIFY_API_KEY: str | None = None
    SHOPIFY_API_SECRET: str | None = None
    # During a secret rotation Shopify may sign with the old secret for up to an hour.
    SHOPIFY_API_SECRET_PREVIOUS: str | None = None
    SHOPIFY_SCOPES: str = "read_customers,read_orders,write_discounts,write_customers"
    SHOPIFY_API_VERSION: str = DEFAULT_SHOPIFY_API_VERSION
    SHOPIFY_BIRTHDAY_METAFIELD: str = "facts.birth_date"

    WOOCOMMERCE_BIRTHDAY_META: str = "birthday"
    WOOCOMMERCE_CONSENT_META: str = "marketing_consent"

    EMAIL_URL: str = "file://./outbox"
    EMAIL_FROM: str = "Store <no-reply@localhost>"
    FLOWS_DIR: Path | None = None
    TEMPLATES_DIR: Path | None = None
    DEFAULT_TIMEZONE: str = "UTC"
    # Hosts, addresses and networks (comma-separated) the flows' `http` step may reach though not public.
    HTTP_STEP_ALLOW_HOSTS: str = ""

    # Bounces and complaints (docs/deliverability.md): soft bounces in a row before an address is suppressed,
    # the SNS topics whose Amazon SES notifications are taken (comma-separated ARNs; unset: the SES receiver is
    # off), and Mailgun's webhook signing key (unset: the Mailgun receiver is off).
    SOFT_BOUNCE_LIMIT: int = Field(default=3, ge=1)
    SES_SNS_TOPIC_ARNS: str = ""
    MAILGUN_WEBHOOK_SIGNING_KEY: str | None = None

    # Operational knobs (not part of the outside contract).
    WEBHOOK_MAX_BYTES: int = 2 * 1024 * 1024
    DEDUPE_TTL_SECONDS: int = 7 * 24 * 3600
    ADMIN_PASSWORD: str | None = None
    WEBHOOK_RETENTION_DAYS: int = 30
    # The sample WooCommerce store for `encore samples send`: on, off, or unset for "in development only".
    SANDBOX: bool | None = Field(default=None, validation_alias="ENCORE_SANDBOX")

    @model_validator(mode="after")
    def _app_url_follows_port(self) -> Settings:
        if not self.APP_URL.strip():
            self.APP_URL = f"http://localhost:{self.PORT}"
        return self

    def data_path(self, *parts: str) -> Path:
        """A path inside the data directory, creating the directory on first use."""
        self.DATA_DIR.mkdir(parents=True, exist_ok=True)
        return self.DATA_DIR.joinpath(*parts)

    @property
    def secret_key(self) -> str:
        """SECRET_KEY, or a development key generated once into the data directory."""
        if self.SECRET_KEY:
            return self.SECRET_KEY
        path = self.data_path("secret_key")
        if not path.exists():
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
        return path.read_text().strip()

    @property
    def development(self) -> bool:
        """Whether this install runs for development or a trial: APP_URL is this machine (the default)."""
        host = (urlsplit(self.APP_URL).hostname or "").lower()
        return host in ("localhost", "127.0.0.1", "::1") or host.endswith(".localhost")

    @property
    def sandbox(self) -> bool:
        """Whether the web app mounts the sample store: ENCORE_SANDBOX, or in development when unset."""
        return self.development if self.SANDBOX is None else self.SANDBOX

    @property
    def ses_topics(self) -> frozenset[str]:
        """The SNS topic ARNs whose messages the SES receiver takes."""
        return frozenset(arn.strip() for arn in self.SES_SNS_TOPIC_ARNS.split(",") if arn.strip())

    @property
    def shopify_secrets(self) -> list[str]:
        """The Shopify secrets that may have signed a webhook, current first."""
        return [s for s in (self.SHOPIFY_API_SECRET, self.SHOPIFY_API_SECRET_PREVIOUS) if s]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests change the environment)."""
    get_settings.cache_clear()
