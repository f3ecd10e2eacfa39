"""One order seen by the Web Pixel's checkout_completed and by the signed orders webhook counts once.

The bug: the pixel's purchase (keyed by its clientId) and the webhook's (keyed by the customer or cart token) were
two purchases of the same order, so trending counted each product twice and training saw one more shopper. The
webhook's purchase is the record; the pixel's of the same shop, order and product weighs 0, in either arrival order,
on both backends (`event_store_url`: SQLite, and PostgreSQL when TEST_POSTGRES_URL is set).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import pytest

from recommender.events import EventKind
from recommender.settings import Settings
from recommender.trending import trending_scores
from tests.conftest import ROOT, SHOP, order_payload, post_webhook

ORDER_AT = "2026-11-20T09:58:00Z"
CHECKOUT_AT = "2026-11-20T10:00:00Z"
NOON = datetime(2026, 11, 20, 12, tzinfo=timezone.utc)  # the middle of both events' day: no decay
SINCE = datetime(2026, 11, 1, tzinfo=timezone.utc)
PURCHASE = 10.0  # the default EVENT_WEIGHTS' purchase: one purchase on NOON's day scores 10


def checkout_completed(event_id: str, order_id: str | None, product_ids: list[str], client: str = "browser-1",
                       quantity: int = 1) -> dict:
    """A checkout_completed beacon in the Web Pixels API's shape (`order` absent when the beacon carries none)."""
    checkout = {"lineItems": [{"quantity": quantity, "variant": {"id": f"{pid}0", "price": {"amount": "10.00"},
                                                                 "product": {"id": pid}}}
                              for pid in product_ids]}
    if order_id is not None:
        checkout["order"] = {"id": order_id}
    return {"id": event_id, "name": "checkout_completed", "timestamp": CHECKOUT_AT, "clientId": client,
            "data": {"checkout": checkout}}


@pytest.fixture
def app(env, event_store_url):
    """The app as deployed on a SQLite file or a PostgreSQL schema, installed in SHOP (a product's webhook: no
    event), and a store of its own on the same database."""
    from functions_framework import create_app

    from recommender.store import open_event_store

    os.environ.update({**env, "EVENT_STORE_URL": event_store_url})
    client = create_app(target="app", source=str(ROOT / "main.py")).test_client()
    assert post_webhook(client, "products/create", {"id": 501, "title": "Mug", "variants": []}).status_code == 200
    store = open_event_store(event_store_url)
    yield client, store
    store.close()


def beacon(client, body: dict) -> int:
    response = client.post(f"/collect?shop={SHOP}", data=json.dumps(body), headers={"Content-Type": "text/plain"})
    assert response.status_code == 200, response.json
    return response.json["events"]


def order(order_id: int, product_ids: list[int], customer_id: int | None = 42, **extra) -> dict:
    return {**order_payload(order_id, customer_id, product_ids, created_at=ORDER_AT,
                            cart_token=None if customer_id else "cart-77"), **extra}


def trending(store) -> list[tuple[str, float]]:
    """What trending ranks on NOON, with the event weights and half-life the app runs with (its environment's)."""
    settings = Settings.from_mapping(os.environ)
    weights = settings.training.event_weights
    assert weights[EventKind.PURCHASE] == PURCHASE
    return trending_scores(store.activity_since(SHOP, SINCE), NOON, settings.trending_half_life_days, weights)


def purchases(store) -> list[tuple[str, str]]:
    """(shopper, product) of each purchase that counts: what training's popularity and co-purchase support read."""
    return sorted((i.user_key, i.product_id) for i in store.interactions(SHOP) if i.kind is EventKind.PURCHASE)


@pytest.mark.parametrize("shopper", ["customer", "guest"])
@pytest.mark.parametrize("first", ["pixel", "webhook"])
def test_bug_an_order_seen_by_the_pixel_and_the_webhook_counts_once(app, first, shopper):
    # Arrange
    client, store = app
    customer_id, keyed_as = (42, "c:42") if shopper == "customer" else (None, "a:cart-77")
    arrivals = {"pixel": lambda: beacon(client, checkout_completed("sh-1001", "1001", ["501", "502"])),
                "webhook": lambda: post_webhook(client, "orders/create",
                                                order(1001, [501, 502], customer_id)).json["events"]}
    second = "webhook" if first == "pixel" else "pixel"

    # Act: both arrive, in either order; then the beacon again and orders/paid (each stores nothing new)
    stored = [arrivals[first](), arrivals[second](),
              beacon(client, checkout_completed("sh-1001", "1001", ["501", "502"])),
              post_webhook(client, "orders/paid", order(1001, [501, 502], customer_id)).json["events"]]

    # Assert: each product bought once, by the webhook's shopper; the pixel's rows are kept at weight 0
    assert stored == [2, 2, 0, 0]
    assert trending(store) == [("501", pytest.approx(PURCHASE)), ("502", pytest.approx(PURCHASE))]
    assert purchases(store) == [(keyed_as, "501"), (keyed_as, "502")]
    assert store.count_events(SHOP) == 4


def test_bug_a_pixel_purchase_of_another_order_or_of_no_order_still_counts(app):
    # Arrange: the pixel saw order 1001 (501, 502), order 1002 (501) and a checkout whose order id it lacked (502)
    client, store = app
    beacon(client, checkout_completed("sh-1001", "1001", ["501", "502"]))
    beacon(client, checkout_completed("sh-1002", "1002", ["501"], client="browser-2"))
    beacon(client, checkout_completed("sh-none", None, ["502"], client="browser-3"))

    # Act: the signed webhook of order 1001 only
    post_webhook(client, "orders/create", order(1001, [501, 502]))

    # Assert: 1001 once per product; 1002's and the order-less purchase count as before
    assert trending(store) == [("501", pytest.approx(2 * PURCHASE)), ("502", pytest.approx(2 * PURCHASE))]
    assert purchases(store) == [("a:browser-2", "501"), ("a:browser-3", "502"), ("c:42", "501"), ("c:42", "502")]


def test_bug_a_refund_shrinks_the_webhooks_purchase_and_the_pixels_stays_at_0(app):
    # Arrange: two units of 501 bought, seen by both
    client, store = app
    bought = order(1001, [501])
    bought["line_items"][0]["quantity"] = 2
    beacon(client, checkout_completed("sh-1001", "1001", ["501"], quantity=2))
    post_webhook(client, "orders/create", bought)

    # Act: one unit refunded
    post_webhook(client, "refunds/create", {"id": 8001, "order_id": 1001,
                                            "refund_line_items": [{"line_item_id": 100100, "quantity": 1}]})

    # Assert: half of one purchase
    assert trending(store) == [("501", pytest.approx(PURCHASE / 2))]


@pytest.mark.parametrize("signed", ["orders/create, then orders/cancelled", "orders/cancelled alone"])
def test_bug_a_cancelled_order_the_pixel_saw_counts_for_nothing(app, signed):
    # Arrange: the pixel's purchase of 1001, and another order of 501 that stays
    client, store = app
    beacon(client, checkout_completed("sh-1001", "1001", ["501", "502"]))
    post_webhook(client, "orders/create", order(1003, [501], customer_id=43))
    if signed == "orders/create, then orders/cancelled":
        post_webhook(client, "orders/create", order(1001, [501, 502]))
        assert trending(store) == [("501", pytest.approx(2 * PURCHASE)), ("502", pytest.approx(PURCHASE))]

    # Act
    post_webhook(client, "orders/cancelled", order(1001, [501, 502], cancelled_at="2026-11-20T11:00:00Z"))

    # Assert: only order 1003 counts
    assert trending(store) == [("501", pytest.approx(PURCHASE))]
    assert purchases(store) == [("c:43", "501")]


@pytest.mark.parametrize("first", ["pixel", "backfill"])
def test_bug_a_backfilled_order_the_pixel_saw_counts_once(app, first):
    """A backfill's page of orders (`apply_many`: set-wise on PostgreSQL) is a signed record as the webhook is."""
    from recommender.changes import Delivery
    from webhooks.backfill import order_changes
    from webhooks.pixel import pixel_events

    # Arrange
    _, store = app
    pixel, _ = pixel_events(checkout_completed("sh-1001", "1001", ["501", "502"]), SHOP)
    page = [(Delivery(SHOP, f"backfill:orders:{n}", "orders/create"),
             order_changes(SHOP, order(n, [501, 502]), f"backfill:orders:{n}")) for n in (1001, 1004)]
    steps = {"pixel": lambda: store.add_events_if_installed(SHOP, pixel), "backfill": lambda: store.apply_many(page)}

    # Act
    steps[first]()
    steps["backfill" if first == "pixel" else "pixel"]()

    # Assert: orders 1001 and 1004, each product once per order
    assert trending(store) == [("501", pytest.approx(2 * PURCHASE)), ("502", pytest.approx(2 * PURCHASE))]
    assert [user for user, _ in purchases(store)] == ["c:42"] * 4


def test_the_pixels_purchase_of_a_gift_card_weighs_nothing_once_the_order_says_it_is_one(app):
    """The pixel cannot tell a gift card; the orders webhook can (`gift_card`), and its line is the order's record."""
    client, store = app
    beacon(client, checkout_completed("e-gift", "9300", ["501", "502"]))
    assert purchases(store) == [("a:browser-1", "501"), ("a:browser-1", "502")]
    gift = order(9300, [501, 502])
    gift["line_items"][1]["gift_card"] = True

    assert post_webhook(client, "orders/create", gift).status_code == 200

    assert purchases(store) == [("c:42", "501")]
    assert [name for name, _ in trending(store)] == ["501"]
