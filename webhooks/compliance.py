"""The mandatory privacy webhooks every App Store app must honour, and app/uninstalled.

    customers/redact        delete every event of the customer and of the listed orders
    shop/redact             delete everything the shop has, models included
    customers/data_request  export what is stored about the customer, kept for the merchant
    app/uninstalled         stop serving the shop (answers for everyone: within ANSWER_CACHE_SECONDS)

Each action is idempotent, so a retried delivery is harmless. They run after the HMAC
check like every topic (an invalid signature is a 401 here too).
"""

from __future__ import annotations

import logging
from typing import Any

from recommender.model_store import ModelStore
from recommender.store import EventStore
from webhooks import MalformedPayload
from webhooks.topics import shopify_id

log = logging.getLogger(__name__)

COMPLIANCE_TOPICS = ("customers/redact", "shop/redact", "customers/data_request", "app/uninstalled")


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


def handle_compliance(topic: str, shop: str, payload: dict, webhook_id: str, store: EventStore,
                      model_store: ModelStore) -> dict[str, Any]:
    """Carry out one compliance topic; returns what was done, for the response and the log."""
    if topic == "customers/redact":
        customer_id = _customer_id(payload)
        deleted = store.redact_customer(shop, customer_id, _order_ids(payload, "orders_to_redact"))
        log.info("customers/redact for %s: %d events deleted", shop, deleted)
        return {"events_deleted": deleted}
    if topic == "shop/redact":
        store.redact_shop(shop)
        models = model_store.delete_shop(shop)
        log.info("shop/redact for %s: store emptied, %d model files deleted", shop, models)
        return {"model_files_deleted": models}
    if topic == "customers/data_request":
        customer_id = _customer_id(payload)
        request = payload.get("data_request") if isinstance(payload.get("data_request"), dict) else {}
        export_id = str(request.get("id") or webhook_id)
        export = {"shop": shop, "customer_id": customer_id,
                  "orders_requested": _order_ids(payload, "orders_requested"),
                  **store.export_customer(shop, customer_id)}
        store.save_data_export(shop, export_id, customer_id, export)
        log.info("customers/data_request for %s: export %s kept", shop, export_id)
        return {"export_id": export_id}
    if topic == "app/uninstalled":
        store.set_shop_installed(shop, False)
        log.info("app/uninstalled: %s is no longer served", shop)
        return {"serving": False}
    raise ValueError(f"not a compliance topic: {topic}")
