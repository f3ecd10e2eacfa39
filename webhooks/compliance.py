"""The mandatory privacy webhooks every App Store app must honour, and app/uninstalled.

    customers/redact        delete every event of the customer and of the listed orders, and store none of them
                            again (the customer's: none from before the redaction)
    shop/redact             delete everything the shop has, models included
    customers/data_request  export what is stored about the customer, kept for the merchant
    app/uninstalled         stop serving the shop (answers for everyone: within ANSWER_CACHE_SECONDS)

The privacy actions are idempotent, so a retried delivery is harmless. An uninstall is not: the
merchant may have installed the app again before Shopify retries it, so app/uninstalled acts once
per delivery and not at all when triggered before the shop's latest install. They run after the
HMAC check like every topic (an invalid signature is a 401 here too).
"""

from __future__ import annotations

import logging
from typing import Any

from recommender.changes import Delivery
from recommender.model_store import ModelStore
from recommender.store import EventStore
from webhooks import MalformedPayload
from webhooks.topics import shopify_id

log = logging.getLogger(__name__)

COMPLIANCE_TOPICS = ("customers/redact", "shop/redact", "customers/data_request", "app/uninstalled")

# The fields only one privacy topic's body carries. Shopify's HMAC covers the body, not the topic and shop headers:
# a signed body sent again under another topic or for another shop (shop/redact and app/uninstalled read nothing else
# of it) must not be obeyed.
_OWN_FIELDS = {"customers/redact": {"orders_to_redact"}, "customers/data_request": {"orders_requested", "data_request"},
               "shop/redact": set()}
_CUSTOMER_TOPICS = ("customers/redact", "customers/data_request")


def foreign_body(topic: str, shop: str, payload: dict) -> str | None:
    """Why this body is not a `topic` delivery for `shop`, or None. A privacy topic's names the header's shop
    (`shop_domain`) and carries no field of another privacy topic's (a customer in a shop/redact, say); app/uninstalled's
    is the shop's own record (`myshopify_domain`, the header's shop where it is given: Shopify's sample leaves it
    null)."""
    if topic == "app/uninstalled":
        if "myshopify_domain" not in payload:
            return "an app/uninstalled body is the shop's record, with myshopify_domain; this one has none"
        named = payload["myshopify_domain"]
        if named is not None and (not isinstance(named, str) or named.lower() != shop):
            return f"myshopify_domain {named!r} is not the delivery's shop {shop!r}"
        return None
    named = payload.get("shop_domain")
    if not isinstance(named, str) or named.lower() != shop:
        return f"shop_domain {named!r} is not the delivery's shop {shop!r}"
    foreign = set(payload) & (set().union(*_OWN_FIELDS.values()) - _OWN_FIELDS[topic])
    if topic not in _CUSTOMER_TOPICS and "customer" in payload:
        foreign.add("customer")
    if foreign:
        return f"a {topic} body carries {', '.join(sorted(foreign))}, another topic's field(s)"
    return None


def _customer_id(payload: dict) -> str:
    customer = payload.get("customer")
    if not isinstance(customer, dict):
        raise MalformedPayload("customer must be an object")
    return shopify_id(customer.get("id"), "customer.id")


def _order_ids(payload: dict, field: str) -> list[str]:
    raw = payload.get(field) or []
    if not isinstance(raw, list):
        raise MalformedPayload(f"{field} must be a list")
    return [shopify_id(value, f"{field}[{n}]") for n, value in enumerate(raw)]


def handle_compliance(delivery: Delivery, payload: dict, store: EventStore,
                      model_store: ModelStore) -> tuple[str, dict[str, Any]]:
    """Carry out one compliance topic; returns the outcome ("done", or for app/uninstalled "duplicate" or "stale")
    and what was done, for the response and the log."""
    topic, shop, webhook_id = delivery.topic, delivery.shop, delivery.webhook_id
    if topic == "customers/redact":
        customer_id = _customer_id(payload)
        deleted = store.redact_customer(shop, customer_id, _order_ids(payload, "orders_to_redact"))
        log.info("customers/redact for %s: %d events deleted", shop, deleted)
        return "done", {"events_deleted": deleted}
    if topic == "shop/redact":
        store.redact_shop(shop)
        models = model_store.delete_shop(shop)
        log.info("shop/redact for %s: store emptied, %d model files deleted", shop, models)
        return "done", {"model_files_deleted": models}
    if topic == "customers/data_request":
        customer_id = _customer_id(payload)
        request = payload.get("data_request") if isinstance(payload.get("data_request"), dict) else {}
        export_id = str(request.get("id") or webhook_id)
        orders = _order_ids(payload, "orders_requested")  # their events too: what customers/redact deletes of them
        export = {"shop": shop, "customer_id": customer_id, "orders_requested": orders,
                  **store.export_customer(shop, customer_id, orders)}
        store.save_data_export(shop, export_id, customer_id, export)
        log.info("customers/data_request for %s: export %s kept", shop, export_id)
        return "done", {"export_id": export_id}
    if topic == "app/uninstalled":
        uninstalled = store.mark_uninstalled(delivery)  # the delivery kept with it: store.apply is not needed
        if uninstalled is None:
            log.info("app/uninstalled for %s: delivery %s done before", shop, webhook_id)
            return "duplicate", {}
        if not uninstalled:
            log.info("app/uninstalled for %s: triggered before the shop's latest install, ignored (delivery %s)",
                     shop, webhook_id)
            return "stale", {"serving": True}
        log.info("app/uninstalled: %s is no longer served", shop)
        return "done", {"serving": False}
    raise ValueError(f"not a compliance topic: {topic}")
