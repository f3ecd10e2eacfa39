"""Privacy webhooks, app/uninstalled, Pub/Sub delivery and shop isolation, through the real entry points."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from cloudevents.http import CloudEvent, to_structured
from functions_framework import create_app

from recommender.events import EventKind
from recommender.model_store import LocalModelStore
from recommender.training import train_shop
from recommender.settings import TrainingConfig
from recommender.store import open_event_store
from recommender.trending import trending_scores
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
    deliveries = store.count_deliveries()

    response = post_webhook(shop, "customers/redact", {**payload, "shop_domain": SHOP})

    assert response.status_code == 200 and response.json["events_deleted"] == 6
    assert store.count_deliveries() == deliveries + 1, "the redaction request itself is kept, as done"
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
    # their two orders, and the guest order of theirs `orders_requested` lists (stored under its cart token)
    assert sorted(e["product_id"] for e in export["events"]) == ["101", "102", "103", "555", "555", "556"]


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

    assert ours["recommendations"] and theirs["recommendations"] and trending["recommendations"]
    assert all(int(item["product_id"]) < 900 for item in ours["recommendations"])
    assert all(int(item["product_id"]) >= 900 for item in theirs["recommendations"])
    assert all(int(item["product_id"]) >= 900 for item in trending["recommendations"])
    assert ours["model_version"] and theirs["model_version"]


def test_a_late_retry_of_a_delivery_from_before_the_uninstall_does_not_reinstall(shop):
    post_webhook(shop, "app/uninstalled", {"id": 1, "myshopify_domain": SHOP})
    before = as_body(order_payload(990001, 5, [101]))
    headers = signed_headers(before, "orders/create")
    headers["X-Shopify-Triggered-At"] = "2026-10-01T00:00:00Z"  # triggered before the uninstall, retried now

    assert shop.post("/webhooks", data=before, headers=headers).status_code == 200

    assert shop.get(f"/recommend?shop={SHOP}&intent=trending").status_code == 404
    fresh = as_body(order_payload(990002, 5, [101]))
    assert shop.post("/webhooks", data=fresh, headers=signed_headers(fresh, "orders/create")).status_code == 200
    assert shop.get(f"/recommend?shop={SHOP}&intent=trending").status_code != 404, "a new delivery reinstalls"


# --- on either backend, as deployed ----------------------------------------------------------------


@pytest.fixture
def deployed(env, event_store_url):
    """The app as deployed, on a SQLite file or a PostgreSQL schema of the test's own; its event store's URL."""
    os.environ.update({**env, "EVENT_STORE_URL": event_store_url})
    return create_app(target="app", source=str(ROOT / "main.py")).test_client(), event_store_url


def uninstall(client, webhook_id: str, triggered_at: datetime | None = None):
    """An app/uninstalled delivery as Shopify sends it; X-Shopify-Triggered-At when the merchant removed the app."""
    body = as_body({"id": 548380009, "name": "Super Toys", "myshopify_domain": SHOP})
    headers = signed_headers(body, "app/uninstalled", webhook_id=webhook_id)
    if triggered_at is not None:
        headers["X-Shopify-Triggered-At"] = triggered_at.isoformat()
    return client.post("/webhooks", data=body, headers=headers)


def trending_status(client) -> int:
    return client.get(f"/recommend?shop={SHOP}&intent=trending").status_code


def test_bug_a_late_app_uninstalled_does_not_uninstall_a_shop_installed_again_since(deployed):
    """BUG webhooks/delivery.py (compliance topics before the delivery's dedupe) + webhooks/compliance.py
    (`set_shop_installed(shop, False)` whenever app/uninstalled came): Shopify's retry of an uninstall (its first
    attempt slow to answer, or failed), arriving after the merchant installed the app again, uninstalled the shop
    again, and its webhooks stopped serving it."""
    # Arrange: installed (an order), uninstalled by the merchant at `removed`, then installed again (a new order)
    client, _ = deployed
    assert post_webhook(client, "orders/create", order_payload(1, 5, [101])).status_code == 200
    removed = datetime.now(timezone.utc)
    first = uninstall(client, "uninstall-1", removed)
    assert trending_status(client) == 404
    assert post_webhook(client, "orders/create", order_payload(2, 5, [102])).status_code == 200

    # Act: the same delivery again; the same uninstall under another id (its first attempt never stored); a new one
    retry = uninstall(client, "uninstall-1", removed)
    stale = uninstall(client, "uninstall-2", removed)
    served = trending_status(client)
    later = uninstall(client, "uninstall-3", datetime.now(timezone.utc))

    # Assert
    assert (first.status_code, first.json) == (200, {"status": "done", "topic": "app/uninstalled", "serving": False})
    assert (retry.status_code, retry.json) == (200, {"status": "duplicate", "topic": "app/uninstalled"})
    assert (stale.status_code, stale.json) == (200, {"status": "stale", "topic": "app/uninstalled", "serving": True})
    assert served == 200, "the shop installed again is served"
    assert (later.status_code, later.json["status"]) == (200, "done")
    assert trending_status(client) == 404, "an uninstall after the reinstall stands"


def test_bug_an_uninstall_after_a_slow_first_webhook_stands(deployed):
    """BUG recommender/store.py `_mark_installed`/`mark_uninstalled` and store_postgres.py's statements: the install
    mark kept the time its delivery was processed, which an uninstall's X-Shopify-Triggered-At was compared with. A
    shop's first webhook triggered before the merchant removed the app but processed after (slow, or retried) made
    the real uninstall look stale: the shop stayed served, and no other uninstall would come."""
    # Arrange: an order triggered three minutes ago, delivered now (the shop's first webhook)
    client, _ = deployed
    now = datetime.now(timezone.utc)
    body = as_body(order_payload(1, 5, [101]))
    headers = {**signed_headers(body, "orders/create"),
               "X-Shopify-Triggered-At": (now - timedelta(minutes=3)).isoformat()}
    assert client.post("/webhooks", data=body, headers=headers).status_code == 200

    # Act: the merchant removed the app a minute ago
    removed = uninstall(client, "uninstall-quick", now - timedelta(minutes=1))

    # Assert
    assert (removed.status_code, removed.json["status"], removed.json["serving"]) == (200, "done", False)
    assert trending_status(client) == 404


def test_an_app_uninstalled_delivery_waits_for_one_round_trip_to_postgresql(app_client, monkeypatch):
    # Arrange: a shop installed on PostgreSQL (its first webhook), then an instance whose store is 50 ms away
    from tests.conftest import instance_counting_round_trips
    from tests.postgres_schema import temporary_schema

    with temporary_schema() as url:
        monkeypatch.setenv("EVENT_STORE_URL", url)
        assert post_webhook(app_client, "orders/create", order_payload(1, 2, [201])).status_code == 200
        with instance_counting_round_trips(monkeypatch, url) as (instance, relay):
            assert post_webhook(instance, "orders/create", order_payload(2, 2, [202])).status_code == 200  # connected
            answers, turns = [], []

            def counted(webhook_id: str, triggered_at: datetime | None = None) -> None:
                relay.reset()
                answers.append(uninstall(instance, webhook_id, triggered_at))
                turns.append(relay.turns)

            # Act: an uninstall, its retry, and (the shop installed again since) one triggered before that install
            counted("u-1")
            counted("u-1")
            assert post_webhook(instance, "orders/create", order_payload(3, 2, [203])).status_code == 200
            counted("u-2", datetime(2026, 1, 1, tzinfo=timezone.utc))

    # Assert: the delivery's row and the uninstall (or not) in one statement
    assert [r.json["status"] for r in answers] == ["done", "duplicate", "stale"]
    assert turns == [1, 1, 1]


def test_bug_the_data_request_exports_the_events_of_the_orders_requested_that_redact_deletes(deployed, shopify_fixture):
    """BUG webhooks/compliance.py (customers/data_request) + store.export_customer: the export named the orders of
    `orders_requested` but held only the customer's own events, while customers/redact, given the same orders, deletes
    theirs too (a guest checkout of theirs, stored under its cart token): data kept about them, left out of their
    copy of it."""
    # Arrange: the customer's own order, a guest checkout of theirs (an order requested), and someone else's order
    client, url = deployed
    request = {**json.loads(shopify_fixture("customers_data_request")), "shop_domain": SHOP}
    redact = {**json.loads(shopify_fixture("customers_redact")), "shop_domain": SHOP}
    assert request["orders_requested"] == redact["orders_to_redact"] == ORDERS_TO_REDACT
    mine, guest, other = ORDERS_TO_REDACT[1], ORDERS_TO_REDACT[0], 880009
    for order in (order_payload(mine, REDACTED_CUSTOMER, [101, 555]),
                  order_payload(guest, None, [556, 103], cart_token="guest-cart"),
                  order_payload(other, 1234, [101])):
        assert post_webhook(client, "orders/create", order).status_code == 200
    refund = {"id": 77, "order_id": guest, "refund_line_items": [{"line_item_id": 999, "quantity": 1}]}
    assert post_webhook(client, "refunds/create", refund).status_code == 200  # of a line not stored: kept

    # Act
    response = post_webhook(client, "customers/data_request", request)
    store = open_event_store(url)
    try:
        export = store.data_export(SHOP, "9999")
    finally:
        store.close()
    redacted = post_webhook(client, "customers/redact", redact)

    # Assert: every event redact deletes is in the export, and nobody else's
    assert response.status_code == 200
    assert sorted((e["order_id"], e["product_id"]) for e in export["events"]) == sorted([
        (str(guest), "103"), (str(guest), "556"), (str(mine), "101"), (str(mine), "555")])
    assert redacted.json["events_deleted"] == len(export["events"])
    assert export["kept_refunds"] == [{"order_id": str(guest), "order_line": f"order:{guest}:line:999", "quantity": 1}]
    store = open_event_store(url)
    try:  # redact deleted the kept refund as well
        requested = [str(order) for order in ORDERS_TO_REDACT]
        assert store.export_customer(SHOP, str(REDACTED_CUSTOMER), requested)["kept_refunds"] == []
    finally:
        store.close()


def test_customers_redact_is_recorded_for_import_and_backfill_and_shop_redact_erases_the_record(
        deployed, shopify_fixture):
    """The redacted customer and orders are remembered, so an import or a backfill does not store them again; the
    shop's erasure takes those records with everything else."""
    # Arrange
    client, url = deployed
    assert post_webhook(client, "orders/create", order_payload(880001, REDACTED_CUSTOMER, [101])).status_code == 200

    # Act
    redacted = post_webhook(client, "customers/redact",
                            {**json.loads(shopify_fixture("customers_redact")), "shop_domain": SHOP})
    store = open_event_store(url)
    try:
        recorded = store.redacted(SHOP)
        erased = post_webhook(client, "shop/redact", {**json.loads(shopify_fixture("shop_redact")), "shop_domain": SHOP})

        # Assert
        assert (redacted.status_code, redacted.json["events_deleted"], erased.status_code) == (200, 1, 200)
        assert (set(recorded.customers), recorded.order_ids) == (
            {str(REDACTED_CUSTOMER)}, {str(o) for o in ORDERS_TO_REDACT})
        assert store.redacted(SHOP) == ({}, frozenset())
    finally:
        store.close()



def test_bug_a_webhook_of_a_redacted_customers_order_after_customers_redact_stores_nothing_but_a_new_order(
        deployed, caplog):
    """BUG recommender/store.py `_insert_events` + store_postgres.py `_events_linked`: customers/redact recorded the
    customer and the orders it named (`redactions`), which only import and backfill read. A webhook of one of those
    orders delivered after it (a retry; orders/updated, which Shopify sends whenever the merchant edits, fulfils or
    refunds an old order) stored the erased customer's purchases again. Now such an event is withheld: of an order
    the redaction named, or of its customer and created at or before it. An order the customer places afterwards is
    new data, stored."""
    # Arrange: customer C's order O1 (listed in orders_to_redact), a guest checkout of theirs G (listed too), their
    # older order O2 (not listed) and someone else's order, two days before the day C comes back
    client, url = deployed
    come_back = datetime.now(timezone.utc) + timedelta(seconds=1)
    day = come_back.replace(hour=12, minute=0, second=0, microsecond=0)  # the middle of that UTC day
    before = (day - timedelta(days=2)).replace(hour=10).isoformat()
    customer, o1, g, o2, o3, other = REDACTED_CUSTOMER, ORDERS_TO_REDACT[1], ORDERS_TO_REDACT[0], 880002, 880003, 880009
    for order in (order_payload(o2, customer, [555], created_at=before),
                  order_payload(other, 1234, [101], created_at=before)):
        assert post_webhook(client, "orders/create", order).status_code == 200
    redact = {"shop_domain": SHOP, "customer": {"id": customer}, "orders_to_redact": ORDERS_TO_REDACT}
    assert post_webhook(client, "customers/redact", redact).json["events_deleted"] == 1

    # Act: O1's and G's orders/create, whose first attempts failed before the redaction, retried after it; the
    # merchant fulfils O2 (orders/updated); then C's new order O3, created after the redaction
    caplog.set_level(logging.INFO, logger="recommender")
    retried = [post_webhook(client, "orders/create", order_payload(o1, customer, [556], created_at=before)),
               post_webhook(client, "orders/create", order_payload(g, None, [557], created_at=before,
                                                                   cart_token="guest-cart"))]
    updated = post_webhook(client, "orders/updated", {**order_payload(o2, customer, [555], created_at=before),
                                                      "fulfillment_status": "fulfilled"})
    again = post_webhook(client, "orders/paid", order_payload(o1, customer, [556], created_at=before))
    new = post_webhook(client, "orders/create", order_payload(o3, customer, [102, 555],
                                                              created_at=come_back.isoformat()))

    # Assert: each delivery acknowledged and recorded, none of the erased events stored; O3's two lines stored
    assert [(r.status_code, r.json["status"], r.json["events"]) for r in (*retried, updated, again, new)] == [
        (200, "stored", 0)] * 4 + [(200, "stored", 2)]
    store = open_event_store(url)
    try:
        assert sorted(i.product_id for i in store.history(SHOP, f"c:{customer}", 10)) == ["102", "555"]
        assert store.history(SHOP, "a:guest-cart", 10) == []
        assert not {str(o1), str(g), str(o2)} & {i.order_id for i in store.interactions(SHOP)}
        # Trending, by hand: the other customer's 101 two days before (half-life 2 days: 0.5), O3's 102 and 555 on
        # the day (1 each); nothing of O1 (556), G (557) or O2 (a second 555)
        ranked = trending_scores(store.activity_since(SHOP, day - timedelta(days=8)), day, 2.0,
                                 {EventKind.PURCHASE: 1.0})
        assert ranked == [("102", 1.0), ("555", 1.0), ("101", 0.5)]
    finally:
        store.close()
    withheld = [r.getMessage() for r in caplog.records if "customers/redact erased" in r.getMessage()]
    assert len(withheld) == 4 and all("1 event(s) not stored" in line for line in withheld)


def test_a_redacted_orders_webhook_waits_for_one_round_trip_to_postgresql(app_client, monkeypatch):
    """The check is part of the order's one statement (`_events_linked`): withheld or not, one round trip."""
    from tests.conftest import instance_counting_round_trips
    from tests.postgres_schema import temporary_schema

    with temporary_schema() as url:
        monkeypatch.setenv("EVENT_STORE_URL", url)
        assert post_webhook(app_client, "orders/create", order_payload(1, 2, [201])).status_code == 200
        redact = {"shop_domain": SHOP, "customer": {"id": 2}, "orders_to_redact": [3]}
        assert post_webhook(app_client, "customers/redact", redact).status_code == 200
        with instance_counting_round_trips(monkeypatch, url) as (instance, relay):
            assert post_webhook(instance, "orders/create", order_payload(4, 5, [202])).status_code == 200  # connected
            answers, turns = [], []
            for order in (order_payload(3, None, [203]), order_payload(1, 2, [201]), order_payload(5, 6, [204])):
                relay.reset()
                answers.append(post_webhook(instance, "orders/updated", order).json["events"])
                turns.append(relay.turns)

    assert (answers, turns) == ([0, 0, 1], [1, 1, 1])


def _redact_body(topic: str, shop: str = SHOP) -> dict:
    """A genuine body of each privacy topic, in Shopify's shape."""
    customer = {"id": REDACTED_CUSTOMER, "email": "john@example.com", "phone": "555-625-1199"}
    return {"shop/redact": {"shop_id": 954889, "shop_domain": shop},
            "customers/redact": {"shop_id": 954889, "shop_domain": shop, "customer": customer,
                                 "orders_to_redact": ORDERS_TO_REDACT},
            "customers/data_request": {"shop_id": 954889, "shop_domain": shop, "customer": customer,
                                       "orders_requested": ORDERS_TO_REDACT, "data_request": {"id": 9999}}}[topic]


@pytest.mark.parametrize("captured, replayed_as", [
    (order_payload(880003, REDACTED_CUSTOMER, [101]), "shop/redact"),  # any order's body sent as a shop's erasure
    (_redact_body("customers/redact"), "shop/redact"),  # one customer's erasure widened to the whole shop
    (_redact_body("customers/data_request"), "customers/redact"),  # an export request turned into an erasure
    (_redact_body("shop/redact", "other-shop.myshopify.com"), "shop/redact"),  # another shop's erasure, sent for ours
    (_redact_body("customers/redact", "other-shop.myshopify.com"), "customers/redact"),
    (order_payload(880003, REDACTED_CUSTOMER, [101]), "app/uninstalled"),  # any order's body as an uninstall
    ({"id": 1, "myshopify_domain": "other-shop.myshopify.com"}, "app/uninstalled"),  # another shop's uninstall
], ids=["order-as-shop-redact", "customer-redact-as-shop-redact", "data-request-as-redact", "another-shops",
        "another-shops-customer", "order-as-uninstall", "another-shops-uninstall"])
def test_bug_a_signed_body_replayed_under_another_topic_or_shop_erases_nothing(shop, store_of, captured,
                                                                              replayed_as):
    """BUG webhooks/compliance.py: Shopify's HMAC covers the body alone, not X-Shopify-Topic nor
    X-Shopify-Shop-Domain, and shop/redact and app/uninstalled read nothing of their bodies: whoever held one signed
    delivery (a log, a proxy on the way) could send it again as shop/redact, for any shop, and have every event and
    model of that shop deleted, turn a data request into an erasure, or stop a shop's answers. Such a body is now
    acknowledged and ignored, naming why (Shopify never sends one; a 4xx would only be retried)."""
    body = as_body(captured)
    store = store_of(shop)
    before = len(store.interactions(SHOP))

    replay = shop.post("/webhooks", data=body, headers=signed_headers(body, replayed_as))

    assert (replay.status_code, replay.json["status"], replay.json["topic"]) == (200, "ignored", replayed_as)
    assert "delivery's shop" in replay.json["reason"] or "field" in replay.json["reason"] \
        or "myshopify_domain" in replay.json["reason"]
    assert len(store.interactions(SHOP)) == before > 0
    assert len(store.history(SHOP, f"c:{REDACTED_CUSTOMER}", 100)) == 4
    assert shop.get(f"/recommend?shop={SHOP}&intent=trending").status_code == 200, "still served"


@pytest.mark.parametrize("topic", ["shop/redact", "customers/redact", "customers/data_request", "app/uninstalled"])
def test_each_privacy_topics_own_body_is_carried_out(shop, topic):
    """The check above refuses nothing Shopify sends: each topic's documented body, its shop in capitals, is done."""
    body = {"id": 548380009, "myshopify_domain": SHOP.upper()} if topic == "app/uninstalled" \
        else _redact_body(topic, SHOP.upper())
    response = post_webhook(shop, topic, body)

    assert (response.status_code, response.json["status"]) == (200, "done")
