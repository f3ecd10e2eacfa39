"""Privacy webhooks, app/uninstalled, Pub/Sub delivery and shop isolation, through the real entry points."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest
from cloudevents.http import CloudEvent, to_structured
from functions_framework import create_app

from recommender.model_store import LocalModelStore
from recommender.training import train_shop
from recommender.settings import TrainingConfig
from tests.conftest import AUTH, ROOT, SHOP, as_body, order_payload, planted_orders, post_webhook, signed_headers

REDACTED_CUSTOMER = 191167  # the id in Shopify's customers_redact sample
ORDERS_TO_REDACT = [299938, 280263, 220458]


@pytest.fixture
def shop(app_client, monkeypatch):
    monkeypatch.setenv("ALS_FACTORS", "2")
    for order in planted_orders():
        post_webhook(app_client, "orders/create", order)
    # The customer to redact: two orders of their own, plus a guest order listed in orders_to_redact.
    post_webhook(app_client, "orders/create", order_payload(880001, REDACTED_CUSTOMER, [101, 555]))
    post_webhook(app_client, "orders/create", order_payload(880002, REDACTED_CUSTOMER, [102, 555]))
    post_webhook(app_client, "orders/create", order_payload(ORDERS_TO_REDACT[0], None, [556, 103],
                                                            cart_token="guest-cart"))
    return app_client


def item_ids_after_training(store) -> set[str]:
    return set(train_shop(store, SHOP, TrainingConfig(factors=2)).item_ids.tolist())


def test_customers_redact_deletes_the_customer_and_listed_orders_from_store_and_next_model(
        shop, store_of, shopify_fixture):
    payload = json.loads(shopify_fixture("customers_redact"))
    assert payload["customer"]["id"] == REDACTED_CUSTOMER and payload["orders_to_redact"] == ORDERS_TO_REDACT
    store = store_of(shop)
    assert {"555", "556"} <= item_ids_after_training(store)

    response = post_webhook(shop, "customers/redact", {**payload, "shop_domain": SHOP})

    assert response.status_code == 200 and response.json["events_deleted"] == 6
    assert store.history(SHOP, f"c:{REDACTED_CUSTOMER}", 100) == []
    assert store.history(SHOP, "a:guest-cart", 100) == []
    remaining = item_ids_after_training(store)
    assert not {"555", "556"} & remaining, "products only they bought no longer shape the model"
    assert {"101", "102", "103"} <= remaining, "other customers' data is untouched"


def test_compliance_topics_answer_401_to_a_bad_signature_and_delete_nothing(shop, store_of):
    body = as_body({"shop_domain": SHOP, "customer": {"id": REDACTED_CUSTOMER}, "orders_to_redact": []})
    headers = signed_headers(body, "customers/redact", secret="not-the-secret")

    response = shop.post("/webhooks", data=body, headers=headers)

    assert response.status_code == 401
    assert len(store_of(shop).history(SHOP, f"c:{REDACTED_CUSTOMER}", 100)) == 4


def test_customers_data_request_keeps_an_export_for_the_merchant(shop, env, shopify_fixture):
    payload = {**json.loads(shopify_fixture("customers_data_request")), "shop_domain": SHOP}

    response = post_webhook(shop, "customers/data_request", payload)

    assert response.status_code == 200 and response.json["export_id"] == "9999"
    cli = subprocess.run([sys.executable, "-m", "recommender", "export", "9999", "--shop", SHOP], cwd=ROOT,
                         env={**os.environ, **env}, capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    export = json.loads(cli.stdout)
    assert export["customer_id"] == str(REDACTED_CUSTOMER)
    assert export["orders_requested"] == [str(o) for o in ORDERS_TO_REDACT]
    assert sorted(e["product_id"] for e in export["events"]) == ["101", "102", "555", "555"]


def test_shop_redact_deletes_everything_the_shop_has_models_included(shop, env, store_of, shopify_fixture):
    assert shop.post("/train", headers=AUTH).status_code == 200
    models = LocalModelStore(env["MODEL_STORE_URL"].removeprefix("file://"))
    assert models.latest(SHOP) is not None

    response = post_webhook(shop, "shop/redact", {**json.loads(shopify_fixture("shop_redact")), "shop_domain": SHOP})

    assert response.status_code == 200 and response.json["model_files_deleted"] >= 3
    store = store_of(shop)
    assert store.interactions(SHOP) == [] and store.products(SHOP) == {}
    assert models.latest(SHOP) is None
    assert shop.get(f"/recommend?shop={SHOP}&intent=trending").status_code == 404


def test_app_uninstalled_stops_serving_the_shop_at_once(shop, shopify_fixture):
    assert shop.post("/train", headers=AUTH).status_code == 200
    assert shop.get(f"/recommend?shop={SHOP}&customer_id=1000").status_code == 200

    post_webhook(shop, "app/uninstalled", json.loads(shopify_fixture("app_uninstalled")))

    response = shop.get(f"/recommend?shop={SHOP}&customer_id=1000")
    assert (response.status_code, response.json["error"]) == (404, "shop_not_installed")
    collect = shop.post(f"/collect?shop={SHOP}", data="{}")
    assert collect.status_code == 403


# --- Pub/Sub ----------------------------------------------------------------------------------


def pubsub_event(topic: str, payload: dict, webhook_id: str) -> tuple[dict, bytes]:
    """A Pub/Sub push as functions-framework receives it: the webhook body base64 in message.data."""
    message = {"data": base64.b64encode(as_body(payload)).decode(), "messageId": webhook_id,
               "attributes": {"X-Shopify-Topic": topic, "X-Shopify-Shop-Domain": SHOP,
                              "X-Shopify-Webhook-Id": webhook_id, "X-Shopify-API-Version": "2026-04"}}
    event = CloudEvent({"type": "google.cloud.pubsub.topic.v1.messagePublished",
                        "source": "//pubsub.googleapis.com/projects/p/topics/shopify"}, {"message": message})
    return to_structured(event)


def test_pubsub_deliveries_go_through_the_same_handlers_once(env, store_of):
    os.environ.update(env)
    client = create_app(target="webhook_pubsub", source=str(ROOT / "main.py")).test_client()
    headers, body = pubsub_event("orders/create", order_payload(4401, 77, [101, 102]), "ps-1")

    first = client.post("/", data=body, headers=headers)
    again = client.post("/", data=body, headers=headers)

    assert first.status_code == 200 and again.status_code == 200
    store = store_of(client)
    assert sorted(e.product_id for e in store.history(SHOP, "c:77", 10)) == ["101", "102"]
    assert store.count_deliveries() == 1


def test_a_malformed_pubsub_message_is_acknowledged_and_logged(env, store_of, caplog):
    os.environ.update(env)
    client = create_app(target="webhook_pubsub", source=str(ROOT / "main.py")).test_client()
    headers, body = pubsub_event("orders/create", {"id": 1, "line_items": "nope"}, "ps-bad")

    response = client.post("/", data=body, headers=headers)

    assert response.status_code == 200
    assert store_of(client).count_events() == 0
    assert any("ps-bad dropped" in r.getMessage() for r in caplog.records)


# --- many shops, one deployment ----------------------------------------------------------------


def test_two_shops_sharing_product_ids_never_see_each_other(app_client, monkeypatch):
    monkeypatch.setenv("ALS_FACTORS", "2")
    other = "other-shop.myshopify.com"
    for order in planted_orders():
        post_webhook(app_client, "orders/create", order)
        # The other shop: the same product and customer ids, but every basket moved to products 9xx.
        moved = {**order, "line_items": [{**line, "product_id": 900 + line["product_id"] % 100}
                                         for line in order["line_items"]]}
        post_webhook(app_client, "orders/create", moved, shop=other)
    assert app_client.post("/train", headers=AUTH).json["skipped"] == []

    ours = app_client.get(f"/recommend?shop={SHOP}&customer_id=1000&n=20").json
    theirs = app_client.get(f"/recommend?shop={other}&customer_id=1000&n=20").json
    trending = app_client.get(f"/recommend?shop={other}&intent=related&product_id=901&n=20").json

    assert all(int(item["product_id"]) < 900 for item in ours["recommendations"])
    assert all(int(item["product_id"]) >= 900 for item in theirs["recommendations"])
    assert all(int(item["product_id"]) >= 900 for item in trending["recommendations"])
    assert ours["model_version"] and theirs["model_version"]


def test_a_late_retry_of_a_delivery_from_before_the_uninstall_does_not_reinstall(shop):
    post_webhook(shop, "app/uninstalled", {"id": 1})
    before = as_body(order_payload(990001, 5, [101]))
    headers = signed_headers(before, "orders/create")
    headers["X-Shopify-Triggered-At"] = "2026-10-01T00:00:00Z"  # triggered before the uninstall, retried now

    assert shop.post("/webhooks", data=before, headers=headers).status_code == 200

    assert shop.get(f"/recommend?shop={SHOP}&intent=trending").status_code == 404
    fresh = as_body(order_payload(990002, 5, [101]))
    assert shop.post("/webhooks", data=fresh, headers=signed_headers(fresh, "orders/create")).status_code == 200
    assert shop.get(f"/recommend?shop={SHOP}&intent=trending").status_code != 404, "a new delivery reinstalls"
