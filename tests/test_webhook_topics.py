"""Webhook topics end to end: signed raw bytes → handle_webhook → a real SQLite store.

Shopify's samples are read in place (they skip when ../shared is absent); their big ids were
rounded by a JavaScript collector, so the expected ids below are the rounded ones, and each is
also checked against the payload itself.
"""

import json
import logging
import os
import sqlite3
from datetime import datetime, timezone

import pytest

from recommender.events import CatalogVariant, EventKind, MerchantPicks
from tests.conftest import ROOT, SHOP, TEST_SECRET, as_body, post_webhook, signed_headers
from webhooks.delivery import handle_webhook

SAMPLE_PRODUCT_ID = "788032119674292900"
SAMPLE_CUSTOMER_ID = "115310627314723950"
SAMPLE_ORDER_ID = "820982911946154500"
SAMPLE_MIDNIGHT_UTC = datetime(2022, 1, 1, tzinfo=timezone.utc)  # "2021-12-31T19:00:00-05:00"


def deliver(store, body: bytes, topic: str, webhook_id: str | None = None, shop: str = SHOP):
    return handle_webhook(signed_headers(body, topic, shop=shop, webhook_id=webhook_id), body, TEST_SECRET, store, models_beside(store))


def models_beside(store):
    """A real model store next to the test's event store (shop/redact deletes models too)."""
    from recommender.model_store import LocalModelStore

    return LocalModelStore(f"{store.path}.models")


def event_rows(store, shop: str = SHOP) -> list[dict]:
    """Every stored event of the shop as a dict, read straight from the SQLite file."""
    conn = sqlite3.connect(store.path)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute("SELECT * FROM events WHERE shop = ? ORDER BY id", (shop,)).fetchall()
        return [dict(r) for r in rows]
    finally:
        conn.close()


# Project payloads, written in the shape of Shopify's samples.

def guest_order(order_id=5001, cart_token="guest-cart-1"):
    return {
        "id": order_id,
        "created_at": "2024-03-01T12:30:00+01:00",
        "cart_token": cart_token,
        "customer": None,
        "line_items": [
            {"id": 91, "product_id": 111, "variant_id": 1111, "quantity": 2, "price": "10.00"},
            {"id": 92, "product_id": 222, "variant_id": None, "quantity": 1, "price": "5.50"},
            {"id": 93, "product_id": None, "variant_id": None, "quantity": 1, "price": "1.00"},
        ],
    }


def cart(token="cart-abc", updated_at="2024-03-02T09:00:00Z", product_ids=(111, 222)):
    return {
        "id": token,
        "token": token,
        "updated_at": updated_at,
        "created_at": "2024-03-02T08:00:00Z",
        "line_items": [
            {"id": 10 + i, "product_id": pid, "variant_id": pid * 10, "quantity": 1, "price": "3.00"}
            for i, pid in enumerate(product_ids)
        ],
    }


# --- Shopify's own samples ---------------------------------------------------------------


def test_orders_create_sample_stores_one_purchase_per_line_with_a_product(store, shopify_fixture):
    # Arrange
    body = shopify_fixture("orders_create")
    payload = json.loads(body)
    assert len(payload["line_items"]) == 5
    assert [line["product_id"] for line in payload["line_items"]].count(None) == 2
    assert str(payload["customer"]["id"]) == SAMPLE_CUSTOMER_ID
    assert str(payload["id"]) == SAMPLE_ORDER_ID

    # Act
    outcome = deliver(store, body, "orders/create")

    # Assert
    assert (outcome.status, outcome.body()) == (200, {"status": "stored", "topic": "orders/create", "events": 3,
                                                      "products": 0})
    rows = event_rows(store)
    assert len(rows) == 3
    assert {r["kind"] for r in rows} == {"purchase"}
    assert {r["product_id"] for r in rows} == {SAMPLE_PRODUCT_ID}
    assert {r["customer_id"] for r in rows} == {SAMPLE_CUSTOMER_ID}
    assert {r["user_key"] for r in rows} == {f"c:{SAMPLE_CUSTOMER_ID}"}
    assert {r["anonymous_id"] for r in rows} == {None}
    assert {r["order_id"] for r in rows} == {SAMPLE_ORDER_ID}
    assert sorted(r["price"] for r in rows) == [89.99, 119.99, 159.99]
    assert [r["quantity"] for r in rows] == [1, 1, 1]
    assert {r["occurred_at"] for r in rows} == {"2022-01-01T00:00:00.000000+00:00"}
    assert sorted(r["dedupe_key"] for r in rows) == sorted(
        f"order:{SAMPLE_ORDER_ID}:line:{line['id']}" for line in payload["line_items"] if line["product_id"]
    )
    # Shopify's sample order carries `cancelled_at`: its lines are kept for the record but count for nothing.
    assert payload["cancelled_at"]
    assert [r["weight_factor"] for r in rows] == [0.0, 0.0, 0.0]
    assert store.history(SHOP, f"c:{SAMPLE_CUSTOMER_ID}", 10) == []


@pytest.mark.parametrize("topic,name", [("carts/create", "carts_create"), ("carts/update", "carts_update")])
def test_carts_sample_stores_add_to_cart_keyed_by_cart_token(store, shopify_fixture, topic, name):
    # Arrange
    body = shopify_fixture(name)
    payload = json.loads(body)
    assert payload["token"] == "exampleCartId"
    assert str(payload["line_items"][0]["product_id"]) == SAMPLE_PRODUCT_ID

    # Act
    outcome = deliver(store, body, topic)

    # Assert
    assert (outcome.status, outcome.result, outcome.detail["events"]) == (200, "stored", 1)
    [row] = event_rows(store)
    assert row["kind"] == "add_to_cart"
    assert row["product_id"] == SAMPLE_PRODUCT_ID
    assert row["anonymous_id"] == "exampleCartId"
    assert row["customer_id"] is None
    assert row["user_key"] == "a:exampleCartId"
    assert row["variant_id"] == "704912205188288500"
    assert row["quantity"] == 3
    assert row["price"] == 19.99
    assert row["source_topic"] == topic
    assert row["dedupe_key"] == f"cart:exampleCartId:product:{SAMPLE_PRODUCT_ID}"
    assert row["occurred_at"] == "2022-01-01T00:00:00.000000+00:00"


@pytest.mark.parametrize("topic,name", [("products/create", "products_create"),
                                        ("products/update", "products_update")])
def test_products_sample_upserts_the_catalog_row_and_variants(store, shopify_fixture, topic, name):
    # Arrange
    body = shopify_fixture(name)
    payload = json.loads(body)
    assert str(payload["id"]) == SAMPLE_PRODUCT_ID

    # Act
    outcome = deliver(store, body, topic)

    # Assert
    assert outcome.body() == {"status": "stored", "topic": topic, "events": 0, "products": 1}
    products = store.products(SHOP)
    assert list(products) == [SAMPLE_PRODUCT_ID]
    product = products[SAMPLE_PRODUCT_ID]
    assert product.shop == SHOP
    assert product.title == "Example T-Shirt"
    assert product.handle == "example-t-shirt"
    assert product.status == "active"
    assert product.price == 19.99
    assert product.published_at == SAMPLE_MIDNIGHT_UTC
    assert product.updated_at == SAMPLE_MIDNIGHT_UTC
    assert product.product_type == "Shirts"
    assert product.vendor == "Acme"
    assert product.image_url is None
    assert product.variants == (
        CatalogVariant("642667041472714000", None, 75, tracked=True, continue_selling=False),
        CatalogVariant("757650484644203900", None, 50, tracked=True, continue_selling=False),
    )
    assert product.available is True
    assert (payload["tags"], product.hidden) == ("example, mens, t-shirt", None)
    assert store.count_events() == 0


def test_products_delete_sample_removes_the_product(store, shopify_fixture):
    # Arrange
    deliver(store, shopify_fixture("products_create"), "products/create")
    assert list(store.products(SHOP)) == [SAMPLE_PRODUCT_ID]

    # Act
    outcome = deliver(store, shopify_fixture("products_delete"), "products/delete")

    # Assert
    assert outcome.body() == {"status": "stored", "topic": "products/delete", "events": 0, "products": 1}
    assert store.products(SHOP) == {}
    assert store.deleted_product_ids(SHOP) == {SAMPLE_PRODUCT_ID}


def test_products_delete_of_an_unknown_product_leaves_a_tombstone(store, shopify_fixture):
    # Act
    outcome = deliver(store, shopify_fixture("products_delete"), "products/delete")

    # Assert
    assert outcome.status == 200
    assert store.products(SHOP) == {}
    assert store.deleted_product_ids(SHOP) == {SAMPLE_PRODUCT_ID}


# --- The project's own payloads ----------------------------------------------------------


def test_guest_order_is_keyed_by_its_cart_token(store):
    # Act
    outcome = deliver(store, as_body(guest_order()), "orders/create")

    # Assert
    assert (outcome.status, outcome.detail["events"]) == (200, 2)
    rows = event_rows(store)
    assert [(r["product_id"], r["variant_id"], r["quantity"], r["price"]) for r in rows] == [
        ("111", "1111", 2, 10.0), ("222", None, 1, 5.5),
    ]
    assert {r["user_key"] for r in rows} == {"a:guest-cart-1"}
    assert {r["anonymous_id"] for r in rows} == {"guest-cart-1"}
    assert {r["customer_id"] for r in rows} == {None}
    assert {r["occurred_at"] for r in rows} == {"2024-03-01T11:30:00.000000+00:00"}
    assert store.history(SHOP, "a:guest-cart-1", 10)[0].kind is EventKind.PURCHASE


def test_guest_order_without_cart_token_is_keyed_by_the_order(store):
    # Act
    outcome = deliver(store, as_body(guest_order(order_id=777, cart_token=None)), "orders/create")

    # Assert
    assert outcome.status == 200
    assert {r["user_key"] for r in event_rows(store)} == {"a:order-777"}


def test_carts_update_resending_the_same_lines_stores_each_product_once_per_cart(store):
    # Arrange
    deliver(store, as_body(cart(updated_at="2024-03-02T09:00:00Z")), "carts/create")

    # Act
    second = deliver(store, as_body(cart(updated_at="2024-03-02T09:05:00Z")), "carts/update")
    third = deliver(store, as_body(cart(updated_at="2024-03-02T09:10:00Z", product_ids=(111, 222, 333))),
                    "carts/update")
    other_cart = deliver(store, as_body(cart(token="cart-xyz", product_ids=(111,))), "carts/update")

    # Assert
    assert (second.result, second.detail["events"]) == ("stored", 0)
    assert (third.result, third.detail["events"]) == ("stored", 1)
    assert (other_cart.result, other_cart.detail["events"]) == ("stored", 1)
    rows = event_rows(store)
    assert sorted((r["anonymous_id"], r["product_id"]) for r in rows) == [
        ("cart-abc", "111"), ("cart-abc", "222"), ("cart-abc", "333"), ("cart-xyz", "111"),
    ]
    assert store.count_deliveries() == 4


def test_cart_with_the_same_product_on_two_lines_stores_it_once(store):
    # Act
    outcome = deliver(store, as_body(cart(product_ids=(111, 111))), "carts/update")

    # Assert
    assert outcome.detail["events"] == 1
    assert [r["product_id"] for r in event_rows(store)] == ["111"]


def test_missing_hmac_is_401_and_stores_nothing(store):
    # Arrange
    body = as_body(guest_order())
    headers = signed_headers(body, "orders/create")
    del headers["X-Shopify-Hmac-Sha256"]

    # Act
    outcome = handle_webhook(headers, body, TEST_SECRET, store, models_beside(store))

    # Assert
    assert (outcome.status, outcome.body()) == (401, {"error": "missing_hmac"})
    assert (store.count_events(), store.count_deliveries()) == (0, 0)


def test_invalid_hmac_is_401_and_stores_nothing(store):
    # Arrange
    body = as_body(guest_order())
    headers = signed_headers(body, "orders/create", secret="not-the-app-secret")

    # Act
    outcome = handle_webhook(headers, body, TEST_SECRET, store, models_beside(store))

    # Assert
    assert (outcome.status, outcome.body()) == (401, {"error": "invalid_hmac"})
    assert (store.count_events(), store.count_deliveries()) == (0, 0)


def test_body_changed_after_signing_is_401_and_stores_nothing(store):
    # Arrange
    body = as_body(guest_order())
    headers = signed_headers(body, "orders/create")
    tampered = body.replace(b'"quantity": 2', b'"quantity": 9')

    # Act
    outcome = handle_webhook(headers, tampered, TEST_SECRET, store, models_beside(store))

    # Assert
    assert outcome.status == 401
    assert (store.count_events(), store.count_deliveries()) == (0, 0)


def test_missing_topic_header_is_400(store):
    # Arrange
    body = as_body(guest_order())
    headers = signed_headers(body, "orders/create")
    del headers["X-Shopify-Topic"]

    # Act
    outcome = handle_webhook(headers, body, TEST_SECRET, store, models_beside(store))

    # Assert
    assert (outcome.status, outcome.body()) == (400, {"error": "missing_headers", "missing": ["x-shopify-topic"]})
    assert (store.count_events(), store.count_deliveries()) == (0, 0)


def test_invalid_shop_domain_is_400(store):
    # Act
    outcome = deliver(store, as_body(guest_order()), "orders/create", shop="../evil")

    # Assert
    assert (outcome.status, outcome.result) == (400, "invalid_shop")
    assert (store.count_events(), store.count_deliveries()) == (0, 0)


@pytest.mark.parametrize("body", [b'{"id": 1, "line_items": [', b"not json", b"\xff\xfe\x00garbage", b""])
def test_malformed_json_is_400_and_stores_nothing(store, body):
    # Act
    outcome = deliver(store, body, "orders/create")

    # Assert
    assert (outcome.status, outcome.result) == (400, "malformed_json")
    assert outcome.body()["message"].startswith("body is not JSON")
    assert (store.count_events(), store.count_deliveries()) == (0, 0)


def test_json_array_body_for_a_handled_topic_is_400(store):
    # Act
    outcome = deliver(store, b"[1, 2, 3]", "orders/create")

    # Assert
    assert outcome.body() == {"error": "malformed_payload", "message": "body must be a JSON object"}
    assert store.count_deliveries() == 0


def test_order_with_a_float_product_id_is_400_naming_the_field(store):
    # Arrange: a rounded id serialised as a float, the corruption the README warns about
    order = guest_order()
    body = as_body(order).replace(b'"product_id": 222', b'"product_id": 2.22e2')
    assert json.loads(body)["line_items"][1]["product_id"] == 222.0

    # Act
    outcome = deliver(store, body, "orders/create")

    # Assert
    assert (outcome.status, outcome.result) == (400, "malformed_payload")
    assert outcome.detail["message"] == "line_items[1].product_id must be an integer id, got 222.0"
    assert (store.count_events(), store.count_deliveries()) == (0, 0)


def test_order_with_non_list_line_items_is_400_naming_the_field(store):
    # Arrange
    order = guest_order()
    order["line_items"] = {"id": 91, "product_id": 111}

    # Act
    outcome = deliver(store, as_body(order), "orders/create")

    # Assert
    assert outcome.status == 400
    assert outcome.body() == {"error": "malformed_payload", "topic": "orders/create",
                              "message": "line_items must be a list"}
    assert (store.count_events(), store.count_deliveries()) == (0, 0)


def test_order_with_a_float_order_id_is_400_naming_the_field(store):
    # Arrange
    body = as_body(guest_order(order_id=5001)).replace(b'"id": 5001', b'"id": 5001.0')

    # Act
    outcome = deliver(store, body, "orders/create")

    # Assert
    assert (outcome.status, outcome.detail["message"]) == (400, "id must be an integer id, got 5001.0")
    assert store.count_deliveries() == 0


def test_unknown_topic_is_ignored_with_one_log_line_and_stores_nothing(store, caplog):
    # Arrange
    caplog.set_level(logging.DEBUG, logger="webhooks.delivery")
    body = as_body({"id": 1, "domain": SHOP})

    # Act
    outcome = deliver(store, body, "themes/publish", webhook_id="wh-unknown-1")

    # Assert
    assert (outcome.status, outcome.body()) == (200, {"status": "ignored", "topic": "themes/publish"})
    assert (store.count_events(), store.count_deliveries()) == (0, 0)
    records = [r for r in caplog.records if r.name == "webhooks.delivery"]
    assert len(records) == 1
    assert records[0].levelno == logging.INFO
    assert records[0].getMessage() == f"ignored webhook topic themes/publish from {SHOP} (delivery wh-unknown-1)"


def test_same_webhook_id_twice_is_200_both_times_and_stored_once(store):
    # Arrange
    body = as_body(guest_order())

    # Act
    first = deliver(store, body, "orders/create", webhook_id="wh-1")
    second = deliver(store, body, "orders/create", webhook_id="wh-1")

    # Assert
    assert (first.status, first.result, first.detail["events"]) == (200, "stored", 2)
    assert (second.status, second.body()) == (200, {"status": "duplicate", "topic": "orders/create"})
    assert (store.count_events(), store.count_deliveries()) == (2, 1)


def test_same_webhook_id_from_two_shops_is_two_deliveries(store):
    # Act
    first = deliver(store, as_body(guest_order()), "orders/create", webhook_id="wh-1")
    second = deliver(store, as_body(guest_order()), "orders/create", webhook_id="wh-1",
                     shop="other-shop.myshopify.com")

    # Assert
    assert (first.result, second.result) == ("stored", "stored")
    assert (store.count_events(SHOP), store.count_events("other-shop.myshopify.com")) == (2, 2)


def test_same_order_under_two_webhook_ids_stores_its_lines_once(store):
    # Arrange: Shopify retried orders/create as a new delivery with a new X-Shopify-Webhook-Id
    body = as_body(guest_order())

    # Act
    first = deliver(store, body, "orders/create", webhook_id="wh-a")
    retry = deliver(store, body, "orders/create", webhook_id="wh-b")

    # Assert
    assert (first.result, first.detail["events"]) == ("stored", 2)
    assert (retry.status, retry.result, retry.detail["events"]) == (200, "stored", 0)
    assert store.count_events() == 2
    assert store.count_deliveries() == 2
    assert sorted(r["dedupe_key"] for r in event_rows(store)) == ["order:5001:line:91", "order:5001:line:92"]


def test_bug_a_refund_delivered_before_its_order_shrinks_the_line_once_the_order_arrives(env, event_store_url):
    """refunds/create reached the app before orders/create (Shopify still retrying the order): the refund's key was
    recorded with no line to shrink, and the line was then stored whole, for good."""
    # Arrange: the app as deployed, on a SQLite file or a PostgreSQL schema
    from functions_framework import create_app

    from recommender.store import open_event_store

    os.environ.update({**env, "EVENT_STORE_URL": event_store_url})
    client = create_app(target="app", source=str(ROOT / "main.py")).test_client()
    order = {"id": 7001, "created_at": "2026-03-01T10:00:00Z", "customer": {"id": 42},
             "line_items": [{"id": 70011, "product_id": 111, "variant_id": 1111, "quantity": 2, "price": "20.00"}]}
    refund = {"id": 8001, "order_id": 7001, "refund_line_items": [{"line_item_id": 70011, "quantity": 1}]}

    # Act: the refund, the order, then the order again (a retry under a new webhook id) and orders/paid
    answers = [post_webhook(client, "refunds/create", refund), post_webhook(client, "orders/create", order),
               post_webhook(client, "orders/create", order), post_webhook(client, "orders/paid", order)]

    # Assert: one unit of two refunded, once
    assert [(r.status_code, r.json["events"]) for r in answers] == [(200, 0), (200, 1), (200, 0), (200, 0)]
    store = open_event_store(event_store_url)
    try:
        assert [(i.product_id, i.weight_factor) for i in store.interactions(SHOP)] == [("111", pytest.approx(0.5))]
    finally:
        store.close()


def test_bug_huge_line_quantity_is_a_400_not_an_unhandled_overflow(store):
    """BUG webhooks/topics.py:72-77 (_quantity) + recommender/store.py SQLiteEventStore._write (160-172 at 9d2bcd2).

    _quantity accepts any positive int; SQLite INTEGER holds at most 2**63 - 1, so the insert
    raises OverflowError, which _write does not translate (it catches sqlite3.Error only) and
    handle_webhook does not catch: the HTTP layer answers 500 and Shopify retries a payload that
    can never be stored. Expected: 400 malformed_payload naming the field, nothing stored.
    """
    # Arrange
    order = guest_order()
    order["line_items"][0]["quantity"] = 2**63

    # Act
    outcome = deliver(store, as_body(order), "orders/create")

    # Assert
    assert (outcome.status, outcome.result) == (400, "malformed_payload")
    assert "line_items[0].quantity" in outcome.detail["message"]
    assert (store.count_events(), store.count_deliveries()) == (0, 0)


def test_an_integer_longer_than_python_reads_is_a_400_not_a_500(store):
    """json.loads raises ValueError past 4,300 digits, which is not a JSONDecodeError: it went up as a 500, and
    Shopify (or Pub/Sub) retried a body that can never be read."""
    body = as_body(guest_order()).replace(b'"quantity": 1', b'"quantity": ' + b"1" * 5000, 1)

    outcome = deliver(store, body, "orders/create")

    assert (outcome.status, outcome.result) == (400, "malformed_json")
    assert "4300" in outcome.body()["message"]
    assert (store.count_events(), store.count_deliveries()) == (0, 0)


@pytest.mark.parametrize("when", ["9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+01:00"])
def test_a_timestamp_past_the_calendar_in_utc_is_a_400_naming_the_field(store, when):
    """Past year 9999 (or before year 1) once in UTC: datetime's conversion raised OverflowError, a 500."""
    order = {**guest_order(), "created_at": when}

    outcome = deliver(store, as_body(order), "orders/create")

    assert (outcome.status, outcome.result) == (400, "malformed_payload")
    assert "created_at is outside the years 1 to 9999 in UTC" in outcome.detail["message"]
    assert (store.count_events(), store.count_deliveries()) == (0, 0)


@pytest.mark.parametrize("field, value", [("inventory_quantity", 2**63), ("inventory_quantity", -(2**63)),
                                          ("inventory_quantity", 1.5)])
def test_a_variants_stock_past_what_is_stored_is_a_400_naming_the_field(store, field, value):
    """A product's stock had no bound, where a stock level's had one: 2**63 overflowed SQLite's INTEGER (a 500)."""
    product = {"id": 77, "title": "T", "status": "active", "variants": [
        {"id": 770, "inventory_item_id": 7700, "inventory_management": "shopify", field: value}]}

    outcome = deliver(store, as_body(product), "products/update")

    assert (outcome.status, outcome.result) == (400, "malformed_payload")
    assert "variants[0].inventory_quantity must be an integer (at most 1,000,000,000 units" in outcome.detail["message"]
    assert store.count_deliveries() == 0


@pytest.mark.parametrize("price", ["NaN", "inf", "-Infinity", "1e400"])
def test_a_price_that_is_not_a_finite_number_is_a_400_naming_the_field(store, price):
    """float() takes these, and PostgreSQL's JSON parameters cannot carry what it makes of them: a delivery that
    would fail there with a 500 forever (Shopify retrying it) is refused as malformed here, on every store."""
    # Arrange
    order = guest_order()
    order["line_items"][0]["price"] = price

    # Act
    outcome = deliver(store, as_body(order), "orders/create")

    # Assert
    assert (outcome.status, outcome.result) == (400, "malformed_payload")
    assert outcome.detail["message"] == f"price must be a finite decimal number, got {price!r}"
    assert (store.count_events(), store.count_deliveries()) == (0, 0)


def test_a_shop_domain_header_in_capitals_is_stored_under_the_lower_case_domain(store):
    """Host names are case-insensitive: a domain sent in capitals is the same shop, not a 400 Shopify retries."""
    # Act
    outcome = deliver(store, as_body(guest_order()), "orders/create", shop="Test-Shop.MyShopify.com")

    # Assert
    assert (outcome.status, outcome.result, outcome.detail["events"]) == (200, "stored", 2)
    assert [r["product_id"] for r in event_rows(store, SHOP)] == ["111", "222"]


def test_a_product_lists_its_lowest_variant_price_and_falls_back_to_its_first_image(store):
    # Arrange: no `image`, two entries in `images`; variants priced 12.50 and 9.75
    product = {"id": 88, "title": "Mug", "status": "active", "published_at": "2026-10-01T00:00:00Z",
               "images": [{"src": "https://cdn.example/88-front.jpg"}, {"src": "https://cdn.example/88-back.jpg"}],
               "variants": [{"id": 881, "price": "12.50"}, {"id": 882, "price": "9.75"}]}

    # Act
    outcome = deliver(store, as_body(product), "products/create")

    # Assert
    assert outcome.result == "stored"
    stored = store.products(SHOP)["88"]
    assert (stored.price, stored.image_url) == (9.75, "https://cdn.example/88-front.jpg")


def test_a_products_metafields_give_the_merchants_picks_and_a_payload_without_them_keeps_the_stored_ones(store):
    # Arrange: Search & Discovery's two metafields (a GID list as a JSON string; ids repeated, the product itself
    # among them), one of another namespace; then an update without metafields, then one whose metafields name none
    namespace = "shopify--discovery--product_recommendation"
    product = {"id": 88, "title": "P", "status": "active", "published_at": "2026-10-01T00:00:00Z",
               "updated_at": "2026-10-01T00:00:00Z", "variants": [{"id": 881, "price": "5.00"}],
               "metafields": [
                   {"namespace": namespace, "key": "complementary_products", "type": "list.product_reference",
                    "value": '["gid://shopify/Product/91", "gid://shopify/Product/88", "gid://shopify/Product/92",'
                             ' "gid://shopify/Product/91"]'},
                   {"namespace": "custom", "key": "related_products", "value": '["gid://shopify/Product/93"]'},
                   {"namespace": namespace, "key": "related_products_display", "value": "{}"}]}

    # Act
    deliver(store, as_body(product), "products/create", "wh-picked")
    picked = store.products(SHOP)["88"].picks
    without = {key: value for key, value in product.items() if key != "metafields"}
    deliver(store, as_body({**without, "updated_at": "2026-10-02T00:00:00Z"}), "products/update", "wh-kept")
    kept = store.products(SHOP)["88"].picks
    deliver(store, as_body({**without, "updated_at": "2026-10-03T00:00:00Z", "metafields": []}), "products/update",
            "wh-none")

    # Assert: in the merchant's order, once each, never the product itself; the custom namespace's key is not a pick
    assert picked == kept == MerchantPicks(related=(), complementary=("91", "92"))
    assert store.products(SHOP)["88"].picks is None and store.catalog_state(SHOP).picks == {}


def test_a_sold_out_variant_that_keeps_selling_leaves_its_product_for_sale(store):
    # Arrange: both products tracked at 0 units; one of them sells past zero (inventory_policy "continue")
    def product(pid: int, policy: str) -> dict:
        return {"id": pid, "title": f"P{pid}", "status": "active", "published_at": "2026-10-01T00:00:00Z",
                "variants": [{"id": pid * 10, "inventory_item_id": pid * 100, "inventory_management": "shopify",
                              "inventory_quantity": 0, "inventory_policy": policy}]}

    # Act
    deliver(store, as_body(product(91, "continue")), "products/create")
    deliver(store, as_body(product(92, "deny")), "products/create")

    # Assert
    assert store.products(SHOP)["91"].variants[0].continue_selling is True
    assert store.unsellable_product_ids(SHOP) == {"92"}


def test_a_refund_naming_one_line_twice_shrinks_it_by_the_sum_of_both(store):
    """Units of one line restocked to two locations come as two refund lines of the same line item."""
    # Arrange: one line of four units
    order = guest_order()
    order["line_items"] = [{"id": 91, "product_id": 111, "variant_id": 1111, "quantity": 4, "price": "10.00"}]
    deliver(store, as_body(order), "orders/create")
    refund = {"id": 61, "order_id": 5001, "refund_line_items": [{"line_item_id": 91, "quantity": 1},
                                                                 {"line_item_id": 91, "quantity": 2}]}

    # Act
    outcome = deliver(store, as_body(refund), "refunds/create")

    # Assert: three of four units refunded
    assert outcome.result == "stored"
    assert [r["weight_factor"] for r in event_rows(store)] == [pytest.approx(0.25)]


@pytest.mark.parametrize("cancellation", ["lines edited away", "no cancelled_at"])
def test_orders_cancelled_voids_every_stored_line_of_the_order(store, cancellation):
    """The cancellation's own payload may list fewer lines than were stored (an order edited since); and its topic
    alone says the order is cancelled."""
    # Arrange: both lines stored as bought
    deliver(store, as_body(guest_order()), "orders/create")
    assert [r["weight_factor"] for r in event_rows(store)] == [1.0, 1.0]
    cancelled = guest_order()
    if cancellation == "lines edited away":
        cancelled["cancelled_at"] = "2024-03-02T00:00:00Z"
        cancelled["line_items"] = cancelled["line_items"][:1]

    # Act
    outcome = deliver(store, as_body(cancelled), "orders/cancelled")

    # Assert
    assert (outcome.status, outcome.result) == (200, "stored")
    assert [(r["product_id"], r["weight_factor"]) for r in event_rows(store)] == [("111", 0.0), ("222", 0.0)]
    assert store.history(SHOP, "a:guest-cart-1", 10) == []


# --- what Shopify's own recommendations leave out ---------------------------------------------------------------


def shown_product(pid: int, prices=("10.00",), **fields) -> dict:
    """An active, published, untracked product (for sale), its variants priced as given."""
    return {"id": pid, "title": f"P{pid}", "status": "active", "published_at": "2026-10-01T00:00:00Z",
            "variants": [{"id": pid * 10 + i, "price": price} for i, price in enumerate(prices)], **fields}


@pytest.mark.parametrize("fields,prices,reason", [
    ({"tags": "Sale, Hide-From-Recommendations , mens"}, ("10.00",), "tag"),  # REST: one string, any case, spaces
    ({"tags": ["sale", "hide-from-recommendations"]}, ("10.00",), "tag"),  # GraphQL's list (the backfill)
    ({}, ("0.00", "0"), "free"),  # a gift with purchase, a sample: every variant free
    ({"gift_card": True, "tags": "hide-from-recommendations"}, ("25.00",), "gift_card"),
    ({"tags": "sale, hide-from-recommendations-not"}, ("10.00",), None),  # a tag that only starts the same
    ({"tags": ""}, ("0.00", "12.00"), None),  # one variant free is a product with a free option, still sold
    ({}, ("0.00", None), None),  # a price unknown: not known to be free
    ({}, (), None),  # no variants
])
def test_a_product_shopify_would_not_recommend_is_stored_hidden_and_never_for_sale(store, fields, prices, reason):
    # Arrange
    body = as_body(shown_product(70, prices, **fields))

    # Act
    outcome = deliver(store, body, "products/create")

    # Assert
    assert outcome.result == "stored"
    assert store.products(SHOP)["70"].hidden == reason
    assert store.unsellable_product_ids(SHOP) == ({"70"} if reason else set())
    assert store.product_cards(SHOP, ["70"])["70"].available is (reason is None)


def test_a_product_untagged_later_is_for_sale_again(store):
    # Arrange: hidden by its tag
    deliver(store, as_body(shown_product(71, tags="hide-from-recommendations", updated_at="2026-10-01T00:00:00Z")),
            "products/create")
    assert store.unsellable_product_ids(SHOP) == {"71"}

    # Act: the merchant removes the tag
    deliver(store, as_body(shown_product(71, tags="sale", updated_at="2026-10-02T00:00:00Z")), "products/update")

    # Assert
    assert store.products(SHOP)["71"].hidden is None
    assert store.unsellable_product_ids(SHOP) == set()


@pytest.mark.parametrize("tags", [7, ["ok", 3], {"hide-from-recommendations": True}])
def test_tags_neither_a_string_nor_a_list_of_strings_are_a_400_naming_the_field(store, tags):
    outcome = deliver(store, as_body(shown_product(72, tags=tags)), "products/create")

    assert (outcome.status, outcome.result) == (400, "malformed_payload")
    assert outcome.detail["message"] == (f"tags must be a comma-separated string or a list of strings, got {tags!r}")
    assert (store.products(SHOP), store.count_deliveries()) == ({}, 0)


def test_a_gift_card_counts_for_nothing_in_orders_and_is_not_stored_from_carts(store):
    # Arrange: an order and a cart, each with a gift card beside a product
    order = guest_order()
    order["line_items"][1]["gift_card"] = True  # product 222
    order["line_items"][0]["gift_card"] = False
    cart = {"token": "cart-g", "updated_at": "2024-03-01T12:00:00Z",
            "line_items": [{"product_id": 111, "quantity": 1, "price": "10.00", "gift_card": False},
                           {"product_id": 333, "quantity": 1, "price": "50.00", "gift_card": True}]}

    # Act
    ordered = deliver(store, as_body(order), "orders/create")
    carted = deliver(store, as_body(cart), "carts/update")

    # Assert: the order's gift card line kept for the record at weight 0, the cart's not stored; neither counts
    assert (ordered.detail["events"], carted.detail["events"]) == (2, 1)
    assert [(r["kind"], r["product_id"], r["weight_factor"]) for r in event_rows(store)] == [
        ("purchase", "111", 1.0), ("purchase", "222", 0.0), ("add_to_cart", "111", 1.0)]
    assert {i.product_id for i in store.interactions(SHOP)} == {"111"}
    assert store.unsellable_product_ids(SHOP) == {"222"}  # the order's line made it a gift card (a row of its own)


def test_a_product_an_orders_line_sells_as_a_gift_card_stays_hidden_whatever_products_payloads_follow(store):
    # Arrange: the gift card's catalog row as REST's products payload has it (no gift card field), for sale
    deliver(store, as_body(shown_product(60, updated_at="2026-10-01T00:00:00Z")), "products/create")
    assert store.unsellable_product_ids(SHOP) == set()
    order = guest_order()
    order["line_items"][0].update(product_id=60, gift_card=True)

    # Act: an order sells it as a gift card, then the product is updated again (REST-shaped, as every webhook's)
    deliver(store, as_body(order), "orders/create")
    hidden_by_the_order = store.products(SHOP)["60"].hidden
    deliver(store, as_body(shown_product(60, updated_at="2026-10-02T00:00:00Z", title="Gift card")), "products/update")

    # Assert
    assert hidden_by_the_order == "gift_card"
    assert (store.products(SHOP)["60"].hidden, store.products(SHOP)["60"].title) == ("gift_card", "Gift card")
    assert store.unsellable_product_ids(SHOP) == {"60"}


def test_a_gift_card_sold_before_the_catalog_synced_it_is_hidden_once_its_row_comes(store):
    # Arrange: an order sells product 61 as a gift card; the catalog has never heard of 61
    order = guest_order()
    order["line_items"][0].update(product_id=61, gift_card=True)
    deliver(store, as_body(order), "orders/create")
    assert store.unsellable_product_ids(SHOP) == {"61"}

    # Act: its products/create comes
    deliver(store, as_body(shown_product(61, title="Gift card")), "products/create")

    # Assert: the catalog's fields, and still a gift card
    row = store.products(SHOP)["61"]
    assert (row.title, row.status, row.hidden) == ("Gift card", "active", "gift_card")
    assert store.unsellable_product_ids(SHOP) == {"61"}
