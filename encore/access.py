"""Signing in to the admin page: one-time sign-in links, server-side sessions, the sign-in throttle.

All three are kept in Redis, so they hold across gunicorn's workers and Encore's processes:
- A **sign-in link** carries a token signed with SECRET_KEY (itsdangerous). It expires after
  LINK_MAX_AGE and is spent on first use (its nonce is claimed in Redis). Making one needs the
  SECRET_KEY, which signs the session cookies too: whoever can make a link could already sign in.
- A **session** is a random id whose record (who signed in) lives in Redis; the signed cookie only
  names it. Signing out deletes the record, so a copy of the cookie is worth nothing afterwards.
- **Failed sign-ins** are counted per client address and per account in fixed windows of
  THROTTLE_WINDOW seconds; past CLIENT_LIMIT or ACCOUNT_LIMIT attempts, sign-in is refused until the
  window ends. A client that is already refused no longer counts against the account, so one
  address can't lock the operator out.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import orjson
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from redis import Redis

from encore_retention.core.queue import get_redis
from encore_retention.core.settings import get_settings

LINK_SALT = "encore-admin-sign-in"
LINK_MAX_AGE = 15 * 60
LINK_PATH = "/admin/sign-in"
LINK_PREFIX = "encore:admin:link:"
SESSION_PREFIX = "encore:admin:session:"
THROTTLE_PREFIX = "encore:admin:sign-in:"
THROTTLE_WINDOW = 15 * 60
CLIENT_LIMIT = 10
ACCOUNT_LIMIT = 50
OPERATOR = "operator"

# KEYS: the client's counter, the account's; ARGV: window, client limit, account limit.
# Answers {0, 0} when the attempt may go on, else {1 (client) or 2 (account), seconds left}.
_ATTEMPT = """
local function bump(key)
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('EXPIRE', key, ARGV[1]) end
  return n
end
if bump(KEYS[1]) > tonumber(ARGV[2]) then return {1, redis.call('TTL', KEYS[1])} end
if bump(KEYS[2]) > tonumber(ARGV[3]) then return {2, redis.call('TTL', KEYS[2])} end
return {0, 0}
"""


def _redis(connection: Redis | None) -> Redis:
    return connection or get_redis()


# ---- one-time sign-in links ------------------------------------------------------------------------


def _serializer(secret_key: str | None = None) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key or get_settings().secret_key, salt=LINK_SALT)


def make_link_token(secret_key: str | None = None) -> str:
    """A fresh sign-in token: signed, naming a random nonce, good once within LINK_MAX_AGE."""
    return _serializer(secret_key).dumps({"nonce": secrets.token_urlsafe(16)})


def sign_in_url(base_url: str, secret_key: str | None = None) -> str:
    """A one-time link that signs a browser in to the admin page of the Encore at `base_url`."""
    return f"{base_url.rstrip('/')}{LINK_PATH}?token={make_link_token(secret_key)}"


def redeem_link_token(token: str, connection: Redis | None = None) -> str:
    """Spend a sign-in token: `ok`, or why not (`invalid`, `expired`, `used`)."""
    try:
        claims = _serializer().loads(token, max_age=LINK_MAX_AGE)
    except SignatureExpired:
        return "expired"
    except BadSignature:
        return "invalid"
    nonce = claims.get("nonce") if isinstance(claims, dict) else None
    if not isinstance(nonce, str) or not nonce:
        return "invalid"
    digest = hashlib.sha256(nonce.encode()).hexdigest()
    if not _redis(connection).set(LINK_PREFIX + digest, 1, nx=True, ex=LINK_MAX_AGE + 60):
        return "used"
    return "ok"


# ---- server-side sessions --------------------------------------------------------------------------


def _session_key(session_id: str) -> str:
    return SESSION_PREFIX + hashlib.sha256(session_id.encode()).hexdigest()


def start_session(grant: dict[str, Any], lifetime: int, connection: Redis | None = None) -> str:
    """Record who signed in (`{"how": …, "shop": …}`) for `lifetime` seconds; the new session's id."""
    session_id = secrets.token_urlsafe(32)
    _redis(connection).set(_session_key(session_id), orjson.dumps(grant), ex=lifetime)
    return session_id


def session_grant(session_id: str, lifetime: int, connection: Redis | None = None) -> dict[str, Any] | None:
    """Who a live session signed in as (its lifetime starts again), or None once it ended or expired."""
    raw = _redis(connection).getex(_session_key(session_id), ex=lifetime)
    if raw is None:
        return None
    grant = orjson.loads(raw)
    return grant if isinstance(grant, dict) else None


def end_session(session_id: str, connection: Redis | None = None) -> None:
    """Sign a session out, on every copy of its cookie."""
    _redis(connection).delete(_session_key(session_id))


# ---- the sign-in throttle --------------------------------------------------------------------------


@dataclass(frozen=True)
class Throttled:
    """A refused attempt: which limit (`client` or `account`) and the seconds until it lifts."""

    scope: str
    retry_after: int


def attempt(client: str, account: str = OPERATOR, connection: Redis | None = None) -> Throttled | None:
    """Count a sign-in attempt of `client` for `account`; a Throttled when a limit is reached, else None."""
    redis = _redis(connection)
    keys = [f"{THROTTLE_PREFIX}client:{client}", f"{THROTTLE_PREFIX}account:{account}"]
    scope, left = redis.eval(_ATTEMPT, 2, *keys, THROTTLE_WINDOW, CLIENT_LIMIT, ACCOUNT_LIMIT)
    if not scope:
        return None
    return Throttled("client" if int(scope) == 1 else "account", max(int(left), 1))


def succeeded(client: str, connection: Redis | None = None) -> None:
    """A right password: the client's failures are forgotten (the account's window runs on)."""
    _redis(connection).delete(f"{THROTTLE_PREFIX}client:{client}")
