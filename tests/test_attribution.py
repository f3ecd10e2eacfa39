"""Attribution end to end: the storefront's views and clicks of answers and the pixel's purchases posted to `/collect`
as beacons, on SQLite and PostgreSQL, then `python -m recommender report`, against figures worked out by hand."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from recommender.__main__ import main as command_line
from recommender.store import open_event_store
from tests.conftest import ROOT, SHOP, order_payload, post_webhook
from tests.postgres_schema import run

pytestmark = pytest.mark.usefixtures("runtime_stores_closed")

# as /recommend makes them: 32 hex digits, the model's (a control group's answer's start with 00)
ANSWER_A, ANSWER_B, ANSWER_C = ("a1" * 16, "b2" * 16, "c3" * 16)


def ago(days: float, minutes: float = 0) -> str:
    """A pixel event's timestamp, `days` (and `minutes`) before now."""
    when = datetime.now(timezone.utc) - timedelta(days=days, minutes=minutes)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def viewed(event_id: str, answer: str, intent: str, products: list[str], client: str, when: str) -> dict:
    """A `recommendations_viewed` custom event as the pixel receives it (what the theme published is `customData`)."""
    return {"id": event_id, "name": "recommendations_viewed", "timestamp": when, "clientId": client, "seq": 4,
            "type": "custom", "customData": {"recommendation_id": answer, "intent": intent, "product_ids": products}}


def clicked(event_id: str, answer: str, intent: str, product: str, position: int, client: str, when: str) -> dict:
    return {"id": event_id, "name": "recommendations_clicked", "timestamp": when, "clientId": client, "seq": 5,
            "type": "custom", "customData": {"recommendation_id": answer, "intent": intent, "product_id": product,
                                             "position": position}}


def checkout(event_id: str, order: str, lines: list[tuple[str, int, str]], client: str, when: str,
             currency: str = "USD") -> dict:
    """A `checkout_completed` standard event: lines of (product, quantity, the variant's price), paid in `currency`."""
    return {"id": event_id, "name": "checkout_completed", "timestamp": when, "clientId": client,
            "data": {"checkout": {"order": {"id": f"gid://shopify/OrderIdentity/{order}"}, "lineItems": [
                {"quantity": quantity, "variant": {"id": f"{product}0", "price": {"amount": price, "currencyCode": currency},
                                                   "product": {"id": product}}}
                for product, quantity, price in lines]}}}


def collect(client, body) -> dict:
    response = client.post(f"/collect?shop={SHOP}", data=json.dumps(body), headers={"Content-Type": "text/plain"})
    assert response.status_code == 200, response.json
    return response.json


@pytest.fixture
def app(env, event_store_url, monkeypatch):
    """The app as deployed, on SQLite or PostgreSQL, its shop installed (a signed order of customer 2), with limits per
    pixel client and per address of its own (they live in the process: other tests' beacons do not count here)."""
    from functions_framework import create_app

    from webhooks import pixel

    monkeypatch.setattr(pixel, "PER_CLIENT", pixel.RateLimiter(rate=1.0, burst=60))
    monkeypatch.setattr(pixel, "PER_ADDRESS", pixel.RateLimiter(rate=5.0, burst=300))
    os.environ.update({**env, "EVENT_STORE_URL": event_store_url})
    client = create_app(target="app", source=str(ROOT / "main.py")).test_client()
    assert post_webhook(client, "orders/create", order_payload(1, 2, [201])).status_code == 200
    return client


def sql(url: str, statement: str, params: tuple = ()) -> list[tuple]:
    """One statement on the event store at `url`, through a connection of its own (`?` markers)."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            with conn:
                return conn.execute(statement, params).fetchall()
        finally:
            conn.close()
    return run(url, statement.replace("?", "%s"), params)


def report(capsys, *args: str) -> dict:
    """`python -m recommender report --shop SHOP ...` through its main function, on the environment's store."""
    assert command_line(["report", "--shop", SHOP, *args]) == 0
    return json.loads(capsys.readouterr().out)


def figures(viewed_: int, shown: int, clicks: int, ctr: float | None, purchases: int, quantity: int,
            revenue: float) -> dict:
    """A report's figures, its purchases all paid in USD (as `checkout` writes them)."""
    return {"answers_viewed": viewed_, "products_shown": shown, "clicks": clicks, "click_through_rate": ctr,
            "attributed_purchases": purchases, "attributed_quantity": quantity, "attributed_revenue": revenue,
            "revenue_currency": "USD" if purchases else None,
            "attributed_revenue_by_currency": {"USD": revenue} if purchases else {}}


PRODUCTS_A = [str(n) for n in range(1001, 1011)]
PRODUCTS_B = [str(n) for n in range(2001, 2011)]
PRODUCTS_C = [str(n) for n in range(3001, 3011)]


def post_the_storefront(client) -> list[dict]:
    """Three answers viewed, ten products each (A and B related, C complementary), two clicks, five order lines; each
    beacon's answer."""
    return [
        collect(client, viewed("sh-view-a", ANSWER_A, "related", PRODUCTS_A, "browser-1", ago(5, 1))),
        collect(client, viewed("sh-view-b", ANSWER_B, "related", PRODUCTS_B, "browser-1", ago(4))),
        collect(client, viewed("sh-view-c", ANSWER_C, "complementary", PRODUCTS_C, "browser-2", ago(12, 1))),
        # browser-1 clicks A's third product 5 days ago; browser-2 clicks C's fourth 12 days ago
        collect(client, clicked("sh-click-1", ANSWER_A, "related", "1003", 2, "browser-1", ago(5))),
        collect(client, clicked("sh-click-2", ANSWER_C, "complementary", "3004", 3, "browser-2", ago(12))),
        # 2 days after its click, browser-1 buys two of 1003 at 12.50 (attributed: 25.00) and 1005, shown, not clicked
        collect(client, checkout("sh-order-9101", "9101", [("1003", 2, "12.50"), ("1005", 1, "8.00")], "browser-1",
                                 ago(3))),
        # browser-2 buys 3004 a day before its click, and again 9 days after it: neither within 7 days after a click
        collect(client, checkout("sh-order-9100", "9100", [("3004", 1, "30.00")], "browser-2", ago(13))),
        collect(client, checkout("sh-order-9102", "9102", [("3004", 1, "30.00")], "browser-2", ago(3))),
        # another browser buys 1003, which it never clicked
        collect(client, checkout("sh-order-9103", "9103", [("1003", 1, "12.50")], "browser-3", ago(3))),
    ]


# Worked out by hand from `post_the_storefront`: 3 answers viewed showing 30 products, 2 of them clicked; one order
# line attributed (9101's 1003, two at 12.50).
RELATED = figures(2, 20, 1, 1 / 20, 1, 2, 25.0)
COMPLEMENTARY = figures(1, 10, 1, 1 / 10, 0, 0, 0.0)
TOTAL = figures(3, 30, 2, 2 / 30, 1, 2, 25.0)


def test_the_report_counts_answers_viewed_clicks_and_the_purchases_a_click_earned(app, event_store_url, capsys):
    # Arrange: the storefront's beacons, then the view of answer A sent again (a retry: the same pixel event id)
    answers = post_the_storefront(app)
    retried = collect(app, viewed("sh-view-a", ANSWER_A, "related", PRODUCTS_A, "browser-1", ago(5, 1)))

    # Act
    body = report(capsys)

    # Assert: the figures worked out by hand; CTR 2/30 exactly
    assert [a["recommendation_events"] for a in answers] == [10, 10, 10, 1, 1, 0, 0, 0, 0]
    assert [a["events"] for a in answers] == [0, 0, 0, 0, 0, 2, 1, 1, 1]
    assert (retried["events"], retried["recommendation_events"]) == (0, 0)
    assert body["total"] == TOTAL and body["total"]["click_through_rate"] == 2 / 30
    assert body["by_intent"] == {"related": RELATED, "complementary": COMPLEMENTARY}
    assert (body["shop"], body["days"], body["attribution_days"]) == (SHOP, 30.0, 7.0)
    # Training never sees the views and clicks: `events` holds the install's order line and the pixel's five
    assert sql(event_store_url, "SELECT kind, count(*) FROM events GROUP BY kind") == [("purchase", 6)]
    assert sql(event_store_url, "SELECT kind, count(*) FROM recommendation_events GROUP BY kind ORDER BY kind") == [
        ("click", 2), ("view", 30)]


def test_the_report_command_runs_as_a_process_and_reads_attribution_days(app, env, tmp_path):
    """`python -m recommender report` as a merchant runs it, with ATTRIBUTION_DAYS=10: browser-2's purchase 9 days
    after its click is now attributed (30.00), the one before the click still is not."""
    post_the_storefront(app)
    process_env = {**os.environ, "PYTHONPATH": str(ROOT), "ATTRIBUTION_DAYS": "10"}

    result = subprocess.run([sys.executable, "-m", "recommender", "report", "--shop", SHOP, "--days", "30"],
                            cwd=ROOT, env=process_env, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["attribution_days"] == 10.0
    assert body["by_intent"] == {"related": RELATED, "complementary": figures(1, 10, 1, 1 / 10, 1, 1, 30.0)}
    assert body["total"] == figures(3, 30, 2, 2 / 30, 2, 3, 55.0)


def test_a_narrower_window_counts_what_happened_in_it(app, capsys):
    """--days 6: browser-2's view and click (12 days ago) fall outside; so does its purchase 3 days ago, whose click
    did. Answer A's view, answer B's (4 days ago) and browser-1's click stay, with the purchase it earned."""
    post_the_storefront(app)

    body = report(capsys, "--days", "6")

    assert body["total"] == figures(2, 20, 1, 1 / 20, 1, 2, 25.0)
    assert body["by_intent"] == {"related": RELATED}


@pytest.mark.parametrize("webhook_first", [False, True], ids=["beacon-then-webhook", "webhook-then-beacon"])
def test_a_cancelled_order_earns_nothing_whatever_the_pixel_lines_weigh(app, event_store_url, capsys, webhook_first):
    """The signed orders webhook of the pixel's order makes the pixel's line weigh 0 (training counts the order once),
    in either arrival order; it is attributed all the same. Its order cancelled, it counts no more."""
    # Arrange: browser-1's view and click, then its purchase and the signed webhook of the same order
    collect(app, viewed("sh-view-a", ANSWER_A, "related", PRODUCTS_A, "browser-1", ago(5, 1)))
    collect(app, clicked("sh-click-1", ANSWER_A, "related", "1003", 2, "browser-1", ago(5)))
    signed = order_payload(9201, 77, [1003], created_at=ago(3))
    beacon = checkout("sh-order-9201", "9201", [("1003", 2, "12.50")], "browser-1", ago(3))
    if not webhook_first:
        collect(app, beacon)
    assert post_webhook(app, "orders/create", signed).status_code == 200
    if webhook_first:
        collect(app, beacon)
    pixel_line = sql(event_store_url, "SELECT weight_factor FROM events WHERE order_id = '9201'"
                                      " AND substr(source_topic, 1, 6) = 'pixel/'")
    counted = report(capsys)["total"]

    # Act: the order cancelled
    assert post_webhook(app, "orders/cancelled", {**signed, "cancelled_at": ago(1)}).status_code == 200
    cancelled = report(capsys)["total"]

    # Assert
    assert pixel_line == [(0.0,)]
    assert counted == figures(1, 10, 1, 1 / 10, 1, 2, 25.0)
    assert cancelled == figures(1, 10, 1, 1 / 10, 0, 0, 0.0)
    assert sql(event_store_url, "SELECT count(*) FROM events WHERE order_id = '9201' AND weight_factor > 0") == [(0,)]


def test_refunds_the_signed_webhooks_record_take_their_share_off_the_credited_lines(app, capsys):
    """Browser-1 clicks 1003 and 1004 and buys two of 1003 at 12.50 and one of 1004 at 8.00 (order 9501, which the
    orders webhook stores too): 3 units, 33.00. One unit of 1003 refunded: 2 units, 20.50; then 1004 refunded in full:
    its line earns nothing, 1 unit, 12.50 (worked out by hand)."""
    # Arrange: the clicks, the pixel's checkout and the signed order of it, two units on its first line
    collect(app, clicked("sh-click-1", ANSWER_A, "related", "1003", 2, "browser-1", ago(5)))
    collect(app, clicked("sh-click-2", ANSWER_A, "related", "1004", 3, "browser-1", ago(5)))
    collect(app, checkout("sh-order-9501", "9501", [("1003", 2, "12.50"), ("1004", 1, "8.00")], "browser-1", ago(3)))
    signed = {"id": 9501, "created_at": ago(3), "customer": {"id": 77}, "line_items": [
        {"id": 95011, "product_id": 1003, "variant_id": 10030, "quantity": 2, "price": "12.50"},
        {"id": 95012, "product_id": 1004, "variant_id": 10040, "quantity": 1, "price": "8.00"}]}
    assert post_webhook(app, "orders/create", signed).status_code == 200
    whole = report(capsys)["total"]

    # Act: one unit of 1003 refunded, then 1004's line in full
    one_unit = {"id": 8501, "order_id": 9501, "refund_line_items": [{"line_item_id": 95011, "quantity": 1}]}
    assert post_webhook(app, "refunds/create", one_unit).status_code == 200
    partly = report(capsys)["total"]
    whole_line = {"id": 8502, "order_id": 9501, "refund_line_items": [{"line_item_id": 95012, "quantity": 1}]}
    assert post_webhook(app, "refunds/create", whole_line).status_code == 200
    after = report(capsys)

    # Assert
    assert whole == figures(0, 0, 2, None, 2, 3, 33.0)
    assert partly == figures(0, 0, 2, None, 2, 2, 20.5)
    assert after["total"] == after["by_intent"]["related"] == figures(0, 0, 2, None, 1, 1, 12.5)


def test_revenue_paid_in_several_currencies_is_summed_per_currency(app, event_store_url, capsys):
    """Browser-1 pays 2 × 12.50 USD after a related click, browser-2 30.00 EUR after a complementary one, browser-3
    8.00 EUR after a related one: no one sum where two currencies meet, a sum per currency everywhere (by hand)."""
    # Arrange
    collect(app, clicked("sh-click-1", ANSWER_A, "related", "1003", 2, "browser-1", ago(5)))
    collect(app, clicked("sh-click-2", ANSWER_C, "complementary", "3004", 3, "browser-2", ago(5)))
    collect(app, clicked("sh-click-3", ANSWER_B, "related", "1005", 4, "browser-3", ago(5)))
    collect(app, checkout("sh-order-9601", "9601", [("1003", 2, "12.50")], "browser-1", ago(3)))
    collect(app, checkout("sh-order-9602", "9602", [("3004", 1, "30.00")], "browser-2", ago(3), currency="EUR"))
    collect(app, checkout("sh-order-9603", "9603", [("1005", 1, "8.00")], "browser-3", ago(3), currency="EUR"))
    # the signed orders webhook's lines are priced in the shop's currency, which the order names
    assert post_webhook(app, "orders/create", {**order_payload(9604, 78, [4001]), "currency": "CAD"}).status_code == 200

    # Act
    body = report(capsys)

    # Assert
    def paid(purchases: int, quantity: int, revenue: float | None, currency: str | None, by_currency: dict) -> dict:
        return {"attributed_purchases": purchases, "attributed_quantity": quantity, "attributed_revenue": revenue,
                "revenue_currency": currency, "attributed_revenue_by_currency": by_currency}

    def money_of(figures_: dict) -> dict:
        return {key: figures_[key] for key in ("attributed_purchases", "attributed_quantity", "attributed_revenue",
                                               "revenue_currency", "attributed_revenue_by_currency")}

    assert money_of(body["total"]) == paid(3, 4, None, None, {"EUR": 38.0, "USD": 25.0})
    assert money_of(body["by_intent"]["related"]) == paid(2, 3, None, None, {"EUR": 8.0, "USD": 25.0})
    assert money_of(body["by_intent"]["complementary"]) == paid(1, 1, 30.0, "EUR", {"EUR": 30.0})
    assert sql(event_store_url, "SELECT order_id, currency FROM events WHERE order_id IN ('9601', '9602', '9604')"
                                " ORDER BY order_id") == [("9601", "USD"), ("9602", "EUR"), ("9604", "CAD")]


def test_a_product_on_two_lines_of_a_checkout_is_one_purchase_of_both(app, capsys):
    """Two variants of 1003 in one checkout, 1 × 10.00 and 2 × 12.50: one purchase of 3 units, 35.00 (it was the first
    line alone, 1 unit, 10.00), beside 1004's line."""
    collect(app, clicked("sh-click-1", ANSWER_A, "related", "1003", 2, "browser-1", ago(5)))
    collect(app, clicked("sh-click-2", ANSWER_A, "related", "1004", 3, "browser-1", ago(5)))
    collect(app, checkout("sh-order-9801", "9801", [("1003", 1, "10.00"), ("1004", 1, "8.00"), ("1003", 2, "12.50")],
                          "browser-1", ago(3)))

    assert report(capsys)["total"] == figures(0, 0, 2, None, 2, 4, 43.0)


def test_a_currency_that_is_not_a_code_is_a_400_naming_the_field(app):
    response = app.post(f"/collect?shop={SHOP}", headers={"Content-Type": "text/plain"}, data=json.dumps(
        checkout("sh-order-9701", "9701", [("1003", 1, "12.50")], "browser-1", ago(1), currency="dollars")))

    assert response.status_code == 400
    assert "lineItems[0].variant.price.currencyCode must be a currency code such as USD" in response.json["message"]


def test_the_report_sets_the_models_answers_beside_the_control_groups(app, capsys):
    """Two model answers (related A, complementary C) and two control answers (ids 00…, related and complementary),
    ten products each; the model's earn 2 clicks and 1 purchase, the control's 1 click and 0 purchases; a trending
    answer, which no control group is drawn from, is in neither arm (worked out by hand)."""
    control_r, control_c, trending = "00" + "d4" * 15, "00" + "e5" * 15, "f6" * 16
    collect(app, viewed("sh-v1", ANSWER_A, "related", PRODUCTS_A, "browser-1", ago(5, 1)))
    collect(app, viewed("sh-v2", ANSWER_C, "complementary", PRODUCTS_C, "browser-2", ago(5, 1)))
    collect(app, viewed("sh-v3", control_r, "related", PRODUCTS_B, "browser-3", ago(5, 1)))
    collect(app, viewed("sh-v4", control_c, "complementary", PRODUCTS_B, "browser-4", ago(5, 1)))
    collect(app, viewed("sh-v5", trending, "trending", PRODUCTS_C, "browser-5", ago(5, 1)))
    collect(app, clicked("sh-c1", ANSWER_A, "related", "1003", 2, "browser-1", ago(5)))
    collect(app, clicked("sh-c2", ANSWER_C, "complementary", "3004", 3, "browser-2", ago(5)))
    collect(app, clicked("sh-c3", control_r, "related", "2001", 0, "browser-3", ago(5)))
    collect(app, clicked("sh-c4", trending, "trending", "3001", 0, "browser-5", ago(5)))
    collect(app, checkout("sh-o1", "9901", [("1003", 2, "12.50")], "browser-1", ago(3)))
    collect(app, checkout("sh-o2", "9902", [("3001", 1, "9.00")], "browser-5", ago(3)))

    by_arm = report(capsys)["by_arm"]

    assert by_arm["model"] == {**figures(2, 20, 2, 2 / 20, 1, 2, 25.0), "purchases_per_thousand_shown": 50.0}
    assert by_arm["control"] == {**figures(2, 20, 1, 1 / 20, 0, 0, 0.0), "purchases_per_thousand_shown": 0.0}
    assert by_arm["lift"] == {"click_through_rate": pytest.approx(1.0), "purchases_per_thousand_shown": None}
    # click-through rates 2/20 against 1/20: a ratio of 2. The variance of its log: the model's answers clicked alike
    # (1 and 1 of 10), so each product shown as a unit, (1 - 0.1)/2 = 0.45; the control's apart (1 and 0 of 10), each
    # answer a unit, 2/1 · (0.5² + 0.5²) / 20² / 0.05² = 1.0 (more than (1 - 0.05)/1 = 0.95); summed, 1.45
    spread = 1.959964 * 1.45 ** 0.5
    assert by_arm["lift_interval"] == {"click_through_rate": [pytest.approx(2 * math.exp(-spread) - 1),
                                                              pytest.approx(2 * math.exp(spread) - 1)],
                                       "purchases_per_thousand_shown": None}  # the control arm bought nothing
    assert by_arm["lift_interval"]["click_through_rate"][0] == pytest.approx(-0.81118, abs=1e-4)


def test_a_pixel_only_order_the_webhooks_cancel_earns_nothing(app, capsys):
    """The signed webhooks never stored the order before its cancellation: the cancellation voids the pixel's lines."""
    collect(app, clicked("sh-click-1", ANSWER_A, "related", "1003", 2, "browser-1", ago(5)))
    collect(app, checkout("sh-order-9301", "9301", [("1003", 1, "12.50")], "browser-1", ago(3)))
    before = report(capsys)["total"]["attributed_purchases"]

    cancellation = {**order_payload(9301, None, [1003], cart_token="cart-9301"), "cancelled_at": ago(1)}
    assert post_webhook(app, "orders/cancelled", cancellation).status_code == 200

    assert (before, report(capsys)["total"]["attributed_purchases"]) == (1, 0)


def test_a_line_is_credited_once_to_the_last_click_before_it(app, capsys):
    """Browser-1 clicks 1003 in a related answer, then in a complementary one; its purchase goes to the second (the
    last click before it), once, and the pixel's second checkout_completed of the same order counts nothing more."""
    collect(app, clicked("sh-click-1", ANSWER_A, "related", "1003", 2, "browser-1", ago(5)))
    collect(app, clicked("sh-click-2", ANSWER_C, "complementary", "1003", 0, "browser-1", ago(4)))
    collect(app, clicked("sh-click-3", ANSWER_B, "related", "1003", 1, "browser-1", ago(2)))  # after the purchase
    collect(app, checkout("sh-order-9401", "9401", [("1003", 1, "12.50")], "browser-1", ago(3)))
    collect(app, checkout("sh-order-9401-again", "9401", [("1003", 1, "12.50")], "browser-1", ago(3, -1)))

    body = report(capsys)

    assert body["by_intent"]["complementary"]["attributed_purchases"] == 1
    assert body["by_intent"]["related"]["attributed_purchases"] == 0
    assert body["total"] == figures(0, 0, 3, None, 1, 1, 12.5)


def test_retention_and_the_privacy_webhooks(app, event_store_url, capsys):
    """Pruned by the events' retention; keyed by the pixel's client id, so customers/redact of a customer leaves them
    (an order it lists takes the pixel's purchase of it, and the purchase's attribution, along); shop/redact erases
    them with the shop."""
    post_the_storefront(app)
    store = open_event_store(event_store_url)
    try:
        # Act 1: retention drops what happened more than 6 days ago (browser-2's view, click and first purchase)
        store.prune_events(datetime.now(timezone.utc) - timedelta(days=6))
        pruned = report(capsys)["total"]

        # Act 2: customer 2 redacted, with order 9101
        redact = {"shop_id": 954889, "shop_domain": SHOP, "customer": {"id": 2}, "orders_to_redact": [9101]}
        assert post_webhook(app, "customers/redact", redact).status_code == 200
        redacted = report(capsys)["total"]

        # Act 3: the shop erased
        assert post_webhook(app, "shop/redact", {"shop_id": 954889, "shop_domain": SHOP}).status_code == 200
        erased = sql(event_store_url, "SELECT count(*) FROM recommendation_events")
    finally:
        store.close()

    assert pruned == figures(2, 20, 1, 1 / 20, 1, 2, 25.0)
    assert redacted == figures(2, 20, 1, 1 / 20, 0, 0, 0.0)
    assert erased == [(0,)]


def test_a_beacon_of_views_and_events_for_a_shop_not_installed_stores_nothing(app, event_store_url):
    response = app.post("/collect?shop=never-installed.myshopify.com", headers={"Content-Type": "text/plain"},
                        data=json.dumps([viewed("sh-x", ANSWER_A, "related", PRODUCTS_A, "browser-9", ago(0)),
                                         checkout("sh-y", "1", [("1003", 1, "1.00")], "browser-9", ago(0))]))

    assert (response.status_code, response.json["error"]) == (403, "unknown_shop")
    assert sql(event_store_url, "SELECT count(*) FROM recommendation_events") == [(0,)]


REPORT_TOKEN = "report-token-for-tests"


@pytest.fixture
def reporting(monkeypatch):
    """REPORT_TOKEN set before the app's instance starts (`app`'s first webhook): the report served over HTTP."""
    monkeypatch.setenv("REPORT_TOKEN", REPORT_TOKEN)


def get_report(client, token: str | None = REPORT_TOKEN, **params):
    query = "&".join(f"{k}={v}" for k, v in {"shop": SHOP, **params}.items())
    return client.get(f"/report?{query}", headers={"Authorization": f"Bearer {token}"} if token else {})


def test_the_report_over_http_is_the_commands_behind_its_token(reporting, app, capsys):
    post_the_storefront(app)

    served = get_report(app)
    printed = report(capsys)
    narrow = get_report(app, days="2.5")

    assert served.status_code == 200 and served.headers["Cache-Control"] == "private, no-store"
    assert {k: v for k, v in served.json.items() if k not in ("since", "until")} == {
        k: v for k, v in printed.items() if k not in ("since", "until")}
    assert served.json["total"] == TOTAL and served.json["by_intent"]["related"] == RELATED
    assert narrow.json["days"] == 2.5 and narrow.json["total"]["answers_viewed"] == 0  # every view is 4+ days old


def test_the_report_over_http_refuses_what_it_cannot_answer(reporting, app):
    answers = {
        "no token": get_report(app, token=None),
        "wrong token": get_report(app, token="guess"),
        "days not a number": get_report(app, days="a-week"),
        "days past a year": get_report(app, days="366"),
        "no shop": app.get("/report", headers={"Authorization": f"Bearer {REPORT_TOKEN}"}),
        "a shop not installed": get_report(app, shop="other-shop.myshopify.com"),
        "POST": app.post(f"/report?shop={SHOP}", headers={"Authorization": f"Bearer {REPORT_TOKEN}"}),
    }

    assert {case: (r.status_code, r.json["error"]) for case, r in answers.items()} == {
        "no token": (401, "unauthorized"), "wrong token": (401, "unauthorized"),
        "days not a number": (400, "invalid_parameter"), "days past a year": (400, "invalid_parameter"),
        "no shop": (400, "invalid_parameter"), "a shop not installed": (404, "shop_not_installed"),
        "POST": (405, "method_not_allowed")}
    assert answers["days not a number"].json["parameter"] == "days"


def test_without_a_report_token_the_report_is_not_served(app):
    response = get_report(app, token="anything")

    assert (response.status_code, response.json["error"]) == (403, "reporting_disabled")


def test_the_lift_interval_of_purchase_counts_by_hand():
    """10 purchases per 1,000 shown against 5, over two answers of 500 products each arm: a ratio of 2. Bought alike
    (6 and 4, 3 and 2), each product shown is the unit: 1/10 + 1/5 = 0.3. Bought unevenly (10 and 0), the model's
    answers are: 2/1 · (5² + 5²) / 1000² / 0.01² = 1.0, and with the control's 0.2 the variance is 1.2."""
    from recommender.attribution import _lift_interval

    alike = _lift_interval([(6, 500), (4, 500)], [(3, 500), (2, 500)])
    uneven = _lift_interval([(10, 500), (0, 500)], [(3, 500), (2, 500)])

    assert alike == [pytest.approx(-0.3164, abs=1e-4), pytest.approx(4.851, abs=1e-3)]
    spread = 1.959964 * 1.2 ** 0.5
    assert uneven == [pytest.approx(2 * math.exp(-spread) - 1), pytest.approx(2 * math.exp(spread) - 1)]
    assert _lift_interval([(10, 500), (0, 500)], [(0, 500), (0, 500)]) is None  # the control bought nothing
    assert _lift_interval([(10, 1000)], [(5, 1000)]) is None  # one answer an arm gives no variance between answers
