"""One webhook delivery, from raw request to stored changes and a response.

Order matters: required headers, then the HMAC over the raw bytes, then JSON,
then the topic's translator, then one store transaction. Nothing is parsed
before it is verified, and nothing is acknowledged before it is stored.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from dataclasses import dataclass, field
from typing import Any, Mapping

from recommender.errors import InvalidEvent, InvalidParameter
from recommender.changes import ChangeSet, Delivery
from recommender.events import parse_timestamp
from recommender.model_store import ModelStore, check_shop_domain
from recommender.store import EventStore
from webhooks import MalformedPayload
from webhooks.compliance import COMPLIANCE_TOPICS, foreign_body, handle_compliance
from webhooks.topics import TRANSLATORS, TopicContext
from webhooks.verification import verify_webhook_hmac

log = logging.getLogger(__name__)

# One place maps each outcome to its status (Shopify's own validator does the same).
STATUS = {
    "stored": 200, "duplicate": 200, "ignored": 200, "done": 200, "stale": 200,
    "missing_headers": 400, "malformed_json": 400, "malformed_payload": 400, "invalid_shop": 400,
    "missing_hmac": 401, "invalid_hmac": 401,
}


@dataclass(frozen=True)
class WebhookOutcome:
    result: str
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> int:
        return STATUS[self.result]

    def body(self) -> dict[str, Any]:
        key = "status" if self.status < 400 else "error"
        return {key: self.result, **self.detail}


def _headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


def _triggered_at(raw: str | None) -> datetime | None:
    """X-Shopify-Triggered-At, if it parses; ordering hints only, so a bad value is ignored."""
    if not raw:
        return None
    try:
        return parse_timestamp(raw, "X-Shopify-Triggered-At")
    except InvalidEvent:
        return None


def handle_webhook(headers: Mapping[str, str], raw_body: bytes, secret: str, store: EventStore,
                   model_store: ModelStore) -> WebhookOutcome:
    """An HTTP delivery: the HMAC is checked before anything reads the body."""
    verification = verify_webhook_hmac(headers, raw_body, secret)
    if not verification.valid:
        return WebhookOutcome(verification.reason or "invalid_hmac")
    return process_delivery(headers, raw_body, store, model_store)


def process_delivery(headers: Mapping[str, str], raw_body: bytes, store: EventStore,
                     model_store: ModelStore) -> WebhookOutcome:
    """A delivery whose origin is already trusted (a verified HMAC, or a Pub/Sub subscription)."""
    h = _headers(headers)
    missing = [name for name in ("x-shopify-topic", "x-shopify-shop-domain", "x-shopify-webhook-id") if not h.get(name)]
    if missing:
        return WebhookOutcome("missing_headers", {"missing": missing})
    topic, shop, webhook_id = h["x-shopify-topic"], h["x-shopify-shop-domain"].lower(), h["x-shopify-webhook-id"]
    try:
        check_shop_domain(shop)
    except InvalidParameter as exc:
        return WebhookOutcome("invalid_shop", {"message": str(exc)})
    try:
        payload = json.loads(raw_body)
    except ValueError as exc:  # not UTF-8, not JSON, or an integer past Python's 4,300 digits
        return WebhookOutcome("malformed_json", {"message": f"body is not JSON: {exc}"})
    if topic not in TRANSLATORS and topic not in COMPLIANCE_TOPICS:
        log.info("ignored webhook topic %s from %s (delivery %s)", topic, shop, webhook_id)
        return WebhookOutcome("ignored", {"topic": topic})
    if not isinstance(payload, dict):
        return WebhookOutcome("malformed_payload", {"message": "body must be a JSON object"})
    delivery = Delivery(shop=shop, webhook_id=webhook_id, topic=topic, event_id=h.get("x-shopify-event-id"),
                        triggered_at=_triggered_at(h.get("x-shopify-triggered-at")))
    if topic in COMPLIANCE_TOPICS:
        # Acknowledged and not acted on: a signed body replayed as an erasure or an uninstall, or another shop's; Shopify
        # never sends one, and a 4xx would only have it retried. Logged as a warning: someone held a signed body.
        if (reason := foreign_body(topic, shop, payload)) is not None:
            log.warning("%s for %s ignored (delivery %s): %s", topic, shop, webhook_id, reason)
            return WebhookOutcome("ignored", {"topic": topic, "reason": reason})
        try:
            result, done = handle_compliance(delivery, payload, store, model_store)
        except MalformedPayload as exc:
            return WebhookOutcome("malformed_payload", {"topic": topic, "message": str(exc)})
        # After shop/redact nothing of the shop is kept, not even this delivery; app/uninstalled kept its own.
        if topic not in ("shop/redact", "app/uninstalled"):
            store.apply(delivery, ChangeSet())
        return WebhookOutcome(result, {"topic": topic, **done})
    try:
        changes = TRANSLATORS[topic](TopicContext(shop, topic, webhook_id), payload)
    except (MalformedPayload, InvalidEvent) as exc:
        return WebhookOutcome("malformed_payload", {"topic": topic, "message": str(exc)})
    stored = store.apply(delivery, changes)  # StoreError propagates: a 5xx makes Shopify retry
    if stored is None:
        return WebhookOutcome("duplicate", {"topic": topic})
    return WebhookOutcome("stored", {
        "topic": topic, "events": stored,
        "products": len(changes.upsert_products) + len(changes.delete_product_ids),
    })
