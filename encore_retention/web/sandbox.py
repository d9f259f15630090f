"""The sandbox store: a tiny WooCommerce REST API inside Encore, for trying it out with `encore samples send`.

`encore samples send` registers a WooCommerce store whose URL is `APP_URL/sandbox/woocommerce`, so
the flows' discount codes and tags are made here instead of in a real shop: coupons are kept in Redis
and nothing leaves the machine. It answers requests from this machine only (loopback, no header a
proxy adds) that name APP_URL's host or localhost, and carry the sample store's consumer key (random
per installation, as a real store's is): a proxy on this machine that adds no header can't open it.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from flask import Blueprint, Request, abort, jsonify, request
from sqlalchemy import select

from encore_retention.core.crypto import decrypt
from encore_retention.core.queue import get_redis
from encore_retention.core.store import session_scope
from encore_retention.core.store.models import Shop, parse_id, utcnow
from encore_retention.web import peers

blueprint = Blueprint("sandbox", __name__, url_prefix="/sandbox/woocommerce/wp-json/wc/v3")

COUPONS_KEY = "encore:sandbox:coupons"
PATH = "/sandbox/woocommerce"


def _redis() -> Any:
    return get_redis()


@blueprint.before_request
def local_only():
    """Only this machine may use the sandbox, and only under a name of Encore's (not a rebound one)."""
    if not peers.from_this_machine(request) or not peers.known_host(request) or not _sample_store_key(request):
        abort(403)
    return None


def _sample_store_key(request: Request) -> bool:
    """Whether the request carries a sample store's consumer key (basic auth over https, OAuth 1.0a's
    `oauth_consumer_key` over http, as the WooCommerce client sends it)."""
    given = (
        (request.authorization.username if request.authorization else None)
        or request.args.get("oauth_consumer_key")
        or request.args.get("consumer_key")
    )
    if not given:
        return False
    with session_scope() as session:
        keys = session.execute(
            select(Shop.consumer_key_enc).where(
                Shop.platform == "woocommerce", Shop.url.like(f"%{PATH}"), Shop.consumer_key_enc.is_not(None)
            )
        ).scalars()
        return any(hmac.compare_digest(decrypt(key).encode(), given.encode()) for key in keys if key is not None)


def _list(items: list[Any]):
    response = jsonify(items)
    response.headers["X-WP-Total"] = str(len(items))
    response.headers["X-WP-TotalPages"] = "1"
    return response


@blueprint.get("/settings/general")
def settings_general():
    """The store's currency."""
    return jsonify([{"id": "woocommerce_currency", "value": "EUR"}])


@blueprint.route("/webhooks", methods=["GET", "POST"])
def webhooks():
    """No webhooks are kept: the samples are sent by the command."""
    if request.method == "POST":
        body = request.get_json(silent=True) or {}
        return jsonify(
            {"id": 1, "topic": body.get("topic"), "delivery_url": body.get("delivery_url"), "status": "active"}
        ), 201
    return _list([])


@blueprint.get("/coupons")
def coupons():
    """Coupons, optionally by exact code."""
    code = (request.args.get("code") or "").lower()
    if code:
        found = _redis().hget(COUPONS_KEY, code)
        return _list([json.loads(found)] if found else [])
    return _list([json.loads(v) for v in _redis().hvals(COUPONS_KEY)])


@blueprint.post("/coupons")
def create_coupon():
    """Make a coupon; a code made before answers WooCommerce's 400."""
    body = request.get_json(silent=True) or {}
    code = str(body.get("code") or "").strip()
    if not code:
        return jsonify(code="woocommerce_rest_missing_code", message="code is required"), 400
    coupon = {
        "id": _redis().hlen(COUPONS_KEY) + 1,
        "code": code.lower(),
        "amount": body.get("amount", "0"),
        "discount_type": body.get("discount_type", "percent"),
        "date_expires_gmt": body.get("date_expires"),
        "usage_count": 0,
        "email_restrictions": body.get("email_restrictions") or [],
        "date_created_gmt": utcnow().strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if not _redis().hsetnx(COUPONS_KEY, code.lower(), json.dumps(coupon)):
        return jsonify(
            code="woocommerce_rest_coupon_code_already_exists", message="The coupon code already exists"
        ), 400
    return jsonify(coupon), 201


@blueprint.route("/customers/<customer_id>", methods=["GET", "PUT"])
def customer(customer_id: str):
    """A customer with no fields but its id and meta (what tagging reads and writes)."""
    body = request.get_json(silent=True) or {}
    number = parse_id(customer_id)
    return jsonify({"id": customer_id if number is None else number, "meta_data": body.get("meta_data") or []})


@blueprint.get("/<any(orders, customers):collection>")
def collection(collection: str):
    """Reconciliation finds nothing to catch up on."""
    return _list([])
