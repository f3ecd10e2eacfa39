"""The Web Pixel `collect` entry point, and the pixel extension's JavaScript feeding it."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess

import pytest

from tests.conftest import ROOT, SHOP, order_payload, planted_orders, post_webhook

EXTENSION = ROOT / "extensions" / "recommendations-pixel" / "src" / "events.js"


def viewed(event_id: str, product: str, client: str = "client-1", when: str = "2026-11-20T10:00:00.000Z") -> dict:
    """A product_viewed event in the Web Pixels API's shape (ids as numeric strings)."""
    return {"id": event_id, "name": "product_viewed", "timestamp": when, "clientId": client, "seq": 3,
            "type": "standard",
            "data": {"productVariant": {"id": f"{product}0", "price": {"amount": 12.5, "currencyCode": "USD"},
                                        "product": {"id": product, "title": "T", "vendor": "V", "type": "X",
                                                    "url": "/products/t"}}}}


def collect(client, body, shop: str = SHOP, **headers):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(f"/collect?shop={shop}", data=data, headers={"Content-Type": "text/plain", **headers})


def test_a_product_view_is_stored_under_the_pixel_client_once(installed):
    first = collect(installed, viewed("sh-aaa", "501"))
    retried = collect(installed, viewed("sh-aaa", "501"))

    assert (first.status_code, first.json["events"]) == (200, 1)
    assert (retried.status_code, retried.json["events"]) == (200, 0)


def test_pixel_views_personalize_the_guest_by_client_id(app_client, monkeypatch):
    monkeypatch.setenv("ALS_FACTORS", "2")  # set before the first request builds the settings
    installed = app_client
    for order in planted_orders():
        post_webhook(installed, "orders/create", order)
    installed.post("/train", headers={"Authorization": "Bearer test-train-token"})
    collect(installed, [viewed("sh-v1", "201", client="guest-7"), viewed("sh-v2", "202", client="guest-7")])

    body = installed.get(f"/recommend?shop={SHOP}&anonymous_id=guest-7&n=3").json

    assert body["strategy"] == "personalized"
    assert all(201 <= int(item["product_id"]) <= 210 for item in body["recommendations"])


def test_cart_add_and_removal_and_checkout(installed, store_of):
    add = {"id": "sh-c1", "name": "product_added_to_cart", "timestamp": "2026-11-20T10:00:00Z", "clientId": "c9",
           "data": {"cartLine": {"quantity": 1, "merchandise": {"id": "7010", "product": {"id": "701"}}}}}
    removed = {**add, "id": "sh-c2", "name": "product_removed_from_cart"}
    checkout = {"id": "sh-c3", "name": "checkout_completed", "timestamp": "2026-11-20T10:05:00Z", "clientId": "c9",
                "data": {"checkout": {"order": {"id": "9001"}, "lineItems": [
                    {"quantity": 2, "variant": {"id": "7020", "price": {"amount": "3.00"}, "product": {"id": "702"}}}]}}}

    assert collect(installed, add).json["events"] == 1
    collect(installed, removed)
    collect(installed, checkout)

    history = store_of(installed).history(SHOP, "a:c9", 10)
    assert [(e.product_id, e.kind.value, e.order_id) for e in history] == [("702", "purchase", "9001")]


def test_other_pixel_events_are_ignored(installed):
    response = collect(installed, {"id": "sh-p", "name": "page_viewed", "timestamp": "2026-11-20T10:00:00Z",
                                   "clientId": "c1", "data": {}})
    assert response.json == {"status": "stored", "events": 0, "recommendation_events": 0, "ignored": 1}


def test_unknown_shops_are_refused(installed):
    response = collect(installed, viewed("sh-x", "1"), shop="never-installed.myshopify.com")
    assert (response.status_code, response.json["error"]) == (403, "unknown_shop")


@pytest.mark.parametrize("body, answer", [
    ("not json", (400, "malformed_payload")),  # the body is read before the store is asked
    ({"id": "sh-p", "name": "page_viewed", "timestamp": "2026-11-20T10:00:00Z", "clientId": "c1", "data": {}},
     (403, "unknown_shop")),  # nothing to store: the shop is still checked
])
def test_an_unknown_shops_beacon_is_answered_in_the_order_of_the_checks(installed, body, answer):
    response = collect(installed, body, shop="never-installed.myshopify.com")
    assert (response.status_code, response.json["error"]) == answer


@pytest.mark.parametrize("body, fragment", [
    ("not json", "body is not JSON"),
    ({"id": "sh-1", "name": "product_viewed", "timestamp": "2026-11-20T10:00:00Z", "data": {}}, "clientId"),
    ({**viewed("sh-1", "5"), "timestamp": "yesterday"}, "timestamp"),
    ({**viewed("sh-1", "5"), "data": {"productVariant": {"id": "1", "product": {"id": 1.5}}}}, "product.id"),
    ([viewed(f"sh-{n}", "5") for n in range(21)], "1 to 20 events"),
    ('{"id": "sh-1", "name": "product_viewed", "clientId": "c", "timestamp": "2026-11-20T10:00:00Z", "data":'
     ' {"productVariant": {"id": "1", "price": {"amount": NaN}, "product": {"id": "1"}}}}',
     "productVariant.price.amount must be a finite decimal number, got nan"),
])
def test_malformed_events_are_a_400_naming_the_problem(installed, body, fragment):
    response = collect(installed, body)
    assert response.status_code == 400
    assert fragment in response.json["message"]


def test_oversized_bodies_are_refused(installed):
    response = collect(installed, b"x" * (40 * 1024))
    assert response.status_code == 413


def beacons_from(client, address: str, forwarded, count: int) -> list[int]:
    """`count` beacons, each from a new pixel client (no client's own limit comes into it), with X-Forwarded-For as
    `forwarded(n)` writes it: their statuses."""
    return [collect(client, viewed(f"sh-{address}-{n}", "5", client=f"{address}-{n}"),
                    **{"X-Forwarded-For": forwarded(n)}).status_code for n in range(count)]


def test_one_address_is_limited_whatever_it_writes_in_x_forwarded_for(installed):
    """Google's front end appends the caller's address to the X-Forwarded-For it was sent: the first entry is the
    caller's to write. Keyed on it, one address that wrote a new one each time was never limited."""
    statuses = beacons_from(installed, "203.0.113.7", lambda n: f"10.9.{n // 250}.{n % 250}, 203.0.113.7", 320)

    assert statuses[:300] == [200] * 300  # the limit per address lets a burst of 300 through
    assert statuses[300:].count(429) >= 15  # 5 a second come back meanwhile at most


def test_addresses_behind_the_deployments_own_proxy_are_told_apart(app_client, monkeypatch):
    """TRUSTED_PROXIES=1: a load balancer of the deployment's own appends its address after the caller's; the key is
    the entry before it, and every caller behind the same balancer is not one address."""
    monkeypatch.setenv("TRUSTED_PROXIES", "1")  # set before the first request builds the settings
    assert post_webhook(app_client, "orders/create", order_payload(1, 2, [201])).status_code == 200

    apart = beacons_from(app_client, "lb-a", lambda n: f"1.2.3.4, 198.51.{n // 250}.{n % 250}, 10.0.0.1", 320)
    together = beacons_from(app_client, "lb-b", lambda n: f"1.2.{n // 250}.{n % 250}, 198.51.100.9, 10.0.0.2", 320)

    assert apart == [200] * 320
    assert together[:300] == [200] * 300 and together[300:].count(429) >= 15


def test_a_beacon_dated_in_the_future_is_dated_when_it_arrived(installed, store_of):
    """A browser's clock ahead (or a caller's choice): dated 2999 it counted whole in trending, stayed the shopper's
    latest event and was never pruned."""
    from datetime import datetime, timedelta, timezone

    before = datetime.now(timezone.utc)
    response = collect(installed, viewed("sh-future", "777", client="clock-ahead", when="2999-01-01T00:00:00Z"))
    after = datetime.now(timezone.utc)
    store = store_of(installed)

    assert (response.status_code, response.json["events"]) == (200, 1)
    [bucket] = [b for b in store.activity_since(SHOP, before - timedelta(days=1)) if b.product_id == "777"]
    assert bucket.day in {before.date().isoformat(), after.date().isoformat()}
    assert store.prune_events(after + timedelta(seconds=1)) >= 1
    assert not [b for b in store.activity_since(SHOP, before - timedelta(days=1)) if b.product_id == "777"]


@pytest.mark.parametrize("body, fragment", [
    (viewed("sh-edge", "5", when="0001-01-01T00:00:00+01:00"), "outside the years 1 to 9999 in UTC"),
    (viewed("sh-edge", "5", when="9999-12-31T23:00:00-05:00"), "outside the years 1 to 9999 in UTC"),
    ('{"id": "sh-1", "name": "product_viewed", "clientId": "c", "seq": ' + "1" * 5000 + "}", "4300"),
], ids=["year-0", "year-10000", "5000-digits"])
def test_values_past_what_python_reads_are_a_400_not_a_500(installed, body, fragment):
    response = collect(installed, body)

    assert response.status_code == 400
    assert fragment in response.json["message"]


def test_one_client_is_rate_limited(installed):
    statuses = [collect(installed, viewed(f"sh-r{n}", "5", client="flooder")).status_code for n in range(70)]
    assert statuses[:60] == [200] * 60
    assert 429 in statuses[60:]


def run_extension(script: str) -> subprocess.CompletedProcess:
    """Run the extension's own module under node with a stand-in pixel API (`handlers`: what it subscribed, by event
    name; `sent`: its beacons), then `script`, which prints what the test reads."""
    harness = f"""
    import {{forwardEvents}} from {json.dumps(EXTENSION.as_uri())};
    const handlers = {{}}, sent = [];
    forwardEvents({{
      analytics: {{subscribe: (name, fn) => {{ handlers[name] = fn; }}}},
      browser: {{sendBeacon: (url, body) => {{ sent.push({{url, body}}); return true; }}}},
      init: {{data: {{shop: {{myshopifyDomain: "{SHOP}"}}}}}},
      settings: {{collectUrl: "https://collect.example"}},
    }});
    {script}
    """
    return subprocess.run(["node", "--input-type=module", "-e", harness], capture_output=True, text=True, check=True)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed; the extension's JS is not run")
def test_the_extension_posts_what_collect_accepts(installed):
    """Run the extension's own module under node with a stand-in pixel API, then post what it sent."""
    result = run_extension(f"""
    handlers.product_viewed({json.dumps({**viewed("sh-js", "808"), "data": {**viewed("sh-js", "808")["data"],
                                                                            "customer": {"email": "x@y.z"}}})});
    console.log(JSON.stringify({{subscribed: Object.keys(handlers).sort(), sent}}));
    """)
    report = json.loads(result.stdout)

    assert report["subscribed"] == ["checkout_completed", "product_added_to_cart", "product_removed_from_cart",
                                    "product_viewed", "recommendations_clicked", "recommendations_viewed"]
    [beacon] = report["sent"]
    assert beacon["url"] == f"https://collect.example?shop={SHOP.replace('.', '.')}"
    assert "x@y.z" not in beacon["body"], "no personal data leaves the storefront"
    response = collect(installed, beacon["body"])
    assert (response.status_code, response.json["events"]) == (200, 1)


@contextlib.contextmanager
def instance_of_an_installed_shop_on_postgresql(app_client, monkeypatch):
    """A shop installed on PostgreSQL (its first webhook), then an instance of its own whose round trips to that store
    are counted, its connection open: (instance, relay)."""
    from tests.conftest import instance_counting_round_trips
    from tests.postgres_schema import temporary_schema

    with temporary_schema() as url:
        monkeypatch.setenv("EVENT_STORE_URL", url)
        assert post_webhook(app_client, "orders/create", order_payload(1, 2, [201])).status_code == 200
        with instance_counting_round_trips(monkeypatch, url) as (instance, relay):
            assert collect(instance, viewed("rt-0", "5")).status_code == 200  # the connection opened
            yield instance, relay


def test_a_beacon_waits_for_one_round_trip_to_postgresql_installed_or_not(app_client, monkeypatch):
    # Arrange: a shop installed on PostgreSQL, an instance whose round trips are counted
    with instance_of_an_installed_shop_on_postgresql(app_client, monkeypatch) as (instance, relay):
        answers, turns = [], []

        # Act
        for shop, n in ((SHOP, 1), (SHOP, 2), ("never-installed.myshopify.com", 3)):
            relay.reset()
            answers.append(collect(instance, [viewed(f"rt-{n}", "5"), viewed(f"rt-{n}b", "6")], shop=shop))
            turns.append(relay.turns)

    # Assert: the check and the write together, one round trip each
    assert [(r.status_code, r.json.get("events", r.json.get("error"))) for r in answers] == [
        (200, 2), (200, 2), (403, "unknown_shop")]
    assert turns == [1, 1, 1]


@pytest.mark.parametrize("beacon_first", [False, True], ids=["cart linked, then the beacon", "beacon, then linked"])
def test_bug_a_beacon_naming_a_customers_linked_cart_token_stays_out_of_their_history(env, event_store_url,
                                                                                      beacon_first):
    """BUG recommender/store.py `_insert_events` and store_postgres.py `_events_linked` (and the join a checkout's
    link makes): a guest's event whose anonymous id is a cart token linked to a customer joins that customer, and a
    beacon's clientId is whatever its unsigned sender wrote: one naming a customer's cart token wrote into their
    history. Webhook events of that cart still join them."""
    # Arrange: the app as deployed, on SQLite or PostgreSQL; a guest's order under cart token "victim-cart"
    import os

    from functions_framework import create_app

    from recommender.store import open_event_store

    os.environ.update({**env, "EVENT_STORE_URL": event_store_url})
    client = create_app(target="app", source=str(ROOT / "main.py")).test_client()
    guest_order = order_payload(1, None, [101], cart_token="victim-cart")
    assert post_webhook(client, "orders/create", guest_order).status_code == 200
    checkout = {"token": "checkout-1", "cart_token": "victim-cart", "customer": {"id": 42}}  # customer 42 logs in

    # Act: an unsigned beacon whose clientId is that cart token, before or after the checkout links it to 42
    if not beacon_first:
        assert post_webhook(client, "checkouts/create", checkout).status_code == 200
    beacon = collect(client, viewed("sh-x1", "666", client="victim-cart"))
    if beacon_first:
        assert post_webhook(client, "checkouts/create", checkout).status_code == 200

    # Assert
    assert (beacon.status_code, beacon.json["events"]) == (200, 1)
    store = open_event_store(event_store_url)
    try:
        customer = [(i.product_id, i.kind.value) for i in store.history(SHOP, "c:42", 10)]
        browser = [(i.product_id, i.kind.value) for i in store.history(SHOP, "a:victim-cart", 10)]
    finally:
        store.close()
    assert customer == [("101", "purchase")], "the webhook's guest order joins the customer; the beacon does not"
    assert browser == [("666", "view")], "the beacon stays the browser's"


@pytest.mark.parametrize("custom_line", [
    {"quantity": 1, "variant": None},  # a custom item (a draft order's, an app's fee): CheckoutLineItem.variant null
    {"quantity": 1, "variant": {"id": None, "price": {"amount": 2.0}, "product": {"id": None}}},  # Product.id null
], ids=["variant-null", "product-id-null"])
def test_bug_a_checkout_with_a_line_naming_no_product_keeps_its_other_lines(installed, store_of, custom_line):
    """BUG webhooks/pixel.py `pixel_events`: the Web Pixels API gives a checkout line without a product (its
    `variant`, or the variant's `product.id`, null) for custom items; the whole checkout_completed was a 400 and its
    products' purchases were lost, where orders/create skips such lines and keeps the others."""
    checkout = {"id": "sh-custom", "name": "checkout_completed", "timestamp": "2026-11-20T10:05:00Z",
                "clientId": "c-custom", "data": {"checkout": {"order": {"id": "gid://shopify/OrderIdentity/9002"},
                                                              "lineItems": [custom_line, {"quantity": 1, "variant": {
                                                                  "id": "7030", "price": {"amount": 4.0},
                                                                  "product": {"id": "703"}}}]}}}

    response = collect(installed, checkout)

    assert (response.status_code, response.json.get("events")) == (200, 1)
    history = store_of(installed).history(SHOP, "a:c-custom", 10)
    assert [(e.product_id, e.kind.value, e.order_id) for e in history] == [("703", "purchase", "9002")]


def test_bug_a_checkout_of_more_products_than_a_clients_burst_is_stored(installed, store_of):
    """BUG main.collect: the limit per pixel client was charged one token per stored row, so a checkout_completed of
    more than 60 products (one storefront event) cost more than the bucket holds and was a 429 however long its
    client had been idle; a beacon is never retried, so its purchases were lost."""
    lines = [{"quantity": 1, "variant": {"id": f"9{n}0", "price": {"amount": 1.0}, "product": {"id": f"9{n}"}}}
             for n in range(100, 180)]
    checkout = {"id": "sh-wholesale", "name": "checkout_completed", "timestamp": "2026-11-20T10:05:00Z",
                "clientId": "c-wholesale", "data": {"checkout": {"order": {"id": "9003"}, "lineItems": lines}}}

    response = collect(installed, checkout)

    assert (response.status_code, response.json.get("events")) == (200, 80)
    assert len(store_of(installed).history(SHOP, "a:c-wholesale", 100)) == 80


def cart_beacon(event_id: str, name: str, product: str, when: str, client: str = "c-cart") -> dict:
    """A product_added_to_cart or product_removed_from_cart event in the Web Pixels API's shape."""
    return {"id": event_id, "name": name, "timestamp": when, "clientId": client,
            "data": {"cartLine": {"quantity": 1, "merchandise": {"id": f"{product}0", "price": {"amount": 5.0},
                                                                 "product": {"id": product}}}}}


ADD, REMOVE = "product_added_to_cart", "product_removed_from_cart"


@pytest.mark.parametrize("beacons, in_cart", [
    ([[(ADD, 1)], [(REMOVE, 2)], [(ADD, 3)]], True),  # put back after a removal
    ([[(REMOVE, 1)], [(ADD, 2)]], True),  # the first beacon seen is a removal (the add's was lost)
    ([[(ADD, 1), (REMOVE, 2), (ADD, 3)]], True),  # the three in one beacon
    ([[(REMOVE, 2)], [(ADD, 1)]], False),  # an older add arriving after its removal
    ([[(ADD, 1)], [(REMOVE, 2)]], False),  # removed
    ([[(ADD, 3), (REMOVE, 2)]], True),  # one beacon, the removal listed last but dated first
    ([[(REMOVE, 1)], [(ADD, 1)]], False),  # at the same instant the removal wins, whichever arrives first
], ids=["re-added", "removal-first", "one-beacon", "late-older-add", "removed", "one-beacon-out-of-order",
        "same-instant"])
def test_bug_a_product_put_back_in_the_cart_counts_again(env, event_store_url, beacons, in_cart):
    """BUG webhooks/pixel.py and the stores' upsert: a client's cart signal for a product is one row
    (`pixel-cart:{client}:{product}`) that a repeated key could only lower, so a removal's 0 stayed for ever: a product
    added again, or added after a removal whose add was never seen, was not in the shopper's history. The row now
    holds the latest of its beacons by their time, whichever arrives first."""
    import os

    from functions_framework import create_app

    from recommender.store import open_event_store

    os.environ.update({**env, "EVENT_STORE_URL": event_store_url})
    client = create_app(target="app", source=str(ROOT / "main.py")).test_client()
    assert post_webhook(client, "orders/create", order_payload(1, 2, [201])).status_code == 200
    sent = 0
    for beacon in beacons:
        events = []
        for name, minute in beacon:
            sent += 1
            events.append(cart_beacon(f"sh-cart-{sent}", name, "801", f"2026-11-20T10:0{minute}:00Z"))
        assert collect(client, events).status_code == 200

    store = open_event_store(event_store_url)
    try:
        history = [(e.product_id, e.kind.value) for e in store.history(SHOP, "a:c-cart", 10)]
    finally:
        store.close()
    assert history == ([("801", "add_to_cart")] if in_cart else [])


ANSWER = "5f0c8e0d2b6a4a0f9a7f0f4c3f0a9d51"  # a recommendation_id as /recommend makes them


def shown(event_id: str = "sh-rv", client: str = "c-rec", **custom) -> dict:
    """A recommendations_viewed custom event as the pixel receives it: what the theme published is its customData."""
    return {"id": event_id, "name": "recommendations_viewed", "timestamp": "2026-11-20T10:00:00Z", "clientId": client,
            "type": "custom", "customData": {"recommendation_id": ANSWER, "intent": "related",
                                             "product_ids": ["8000000000300", "8000000000220"], **custom}}


def clicked(event_id: str = "sh-rc", client: str = "c-rec", **custom) -> dict:
    return {"id": event_id, "name": "recommendations_clicked", "timestamp": "2026-11-20T10:00:05Z", "clientId": client,
            "type": "custom", "customData": {"recommendation_id": ANSWER, "intent": "related",
                                             "product_id": "8000000000220", "position": 1, **custom}}


def test_an_answers_view_and_click_are_stored_apart_from_the_events_once(installed, store_of):
    first = collect(installed, [shown(), clicked(), viewed("sh-pv", "8000000000220", client="c-rec")])
    retried = collect(installed, [shown(), clicked()])

    assert first.json == {"status": "stored", "events": 1, "recommendation_events": 3, "ignored": 0}
    assert retried.json == {"status": "stored", "events": 0, "recommendation_events": 0, "ignored": 0}
    store = store_of(installed)
    assert [(e.product_id, e.kind.value) for e in store.history(SHOP, "a:c-rec", 10)] == [("8000000000220", "view")]


@pytest.mark.parametrize("event, field", [
    (shown(recommendation_id=None), "events[1].customData.recommendation_id"),
    (shown(recommendation_id=ANSWER[:31]), "events[1].customData.recommendation_id"),
    (shown(recommendation_id=ANSWER.upper()), "events[1].customData.recommendation_id"),
    (shown(recommendation_id=ANSWER[:31] + "g"), "events[1].customData.recommendation_id"),
    (shown(intent="popular"), "events[1].customData.intent"),
    (shown(intent=None), "events[1].customData.intent"),
    (shown(product_ids=[]), "events[1].customData.product_ids must be a list of 1 to 50"),
    (shown(product_ids=[str(n) for n in range(51)]), "events[1].customData.product_ids must be a list of 1 to 50"),
    (shown(product_ids="8000000000300"), "events[1].customData.product_ids must be a list"),
    (shown(product_ids=["8000000000300", "80000000002x0"]), "events[1].customData.product_ids[1]"),
    (shown(product_ids=[1.5]), "events[1].customData.product_ids[0]"),
    (shown(product_ids=[True]), "events[1].customData.product_ids[0]"),
    (clicked(product_id="gid://shopify/Product/1"), "events[1].customData.product_id"),
    (clicked(product_id=None), "events[1].customData.product_id"),
    (clicked(position=50), "events[1].customData.position"),
    (clicked(position=-1), "events[1].customData.position"),
    (clicked(position="1"), "events[1].customData.position"),
    (clicked(position=1.0), "events[1].customData.position"),
    (clicked(position=True), "events[1].customData.position"),
    ({**clicked(), "customData": None}, "events[1].customData must be an object"),
    ({**clicked(), "clientId": None}, "events[1].clientId"),
    ({**clicked(), "id": "sh bad"}, "events[1].id"),
    ({**shown(), "timestamp": "yesterday"}, "events[1].timestamp"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_a_malformed_view_or_click_is_a_400_naming_the_field_and_the_beacon_stores_nothing(installed, store_of,
                                                                                          event, field):
    response = collect(installed, [viewed("sh-ok", "5", client="c-rec"), event])

    assert response.status_code == 400
    assert response.json["error"] == "malformed_payload" and field in response.json["message"]
    assert store_of(installed).history(SHOP, "a:c-rec", 10) == []


def test_views_and_clicks_take_the_pixel_clients_and_addresses_limits(installed):
    """An answer's view costs its pixel client one token, as a product view does, however many products it showed."""
    statuses = [collect(installed, shown(f"sh-rl{n}", client="busy", product_ids=[str(n + 1)]),
                        **{"X-Forwarded-For": "198.51.100.77"}).status_code for n in range(70)]

    assert statuses[:60] == [200] * 60
    assert 429 in statuses[60:]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed; the extension's JS is not run")
def test_the_extension_forwards_the_themes_views_and_clicks_of_answers(installed):
    """A theme publishes `recommendations_viewed` and `recommendations_clicked` (Shopify.analytics.publish); the pixel
    gets what it published as `customData` and forwards the fields the backend reads, nothing else."""
    view = {**shown("sh-js-v"), "context": {"document": {"title": "T"}}}
    view["customData"] = {**view["customData"], "email": "x@y.z"}
    click = clicked("sh-js-c")
    result = run_extension(f"""
    handlers.recommendations_viewed({json.dumps(view)});
    handlers.recommendations_clicked({json.dumps(click)});
    console.log(JSON.stringify(sent));
    """)
    sent = json.loads(result.stdout)

    assert [json.loads(beacon["body"]) for beacon in sent] == [
        {"id": "sh-js-v", "name": "recommendations_viewed", "timestamp": view["timestamp"], "clientId": "c-rec",
         "customData": {"recommendation_id": ANSWER, "intent": "related",
                        "product_ids": ["8000000000300", "8000000000220"]}},
        {"id": "sh-js-c", "name": "recommendations_clicked", "timestamp": click["timestamp"], "clientId": "c-rec",
         "customData": {"recommendation_id": ANSWER, "intent": "related", "product_id": "8000000000220",
                        "position": 1}}]
    answers = [collect(installed, beacon["body"]).json for beacon in sent]
    assert [(a["events"], a["recommendation_events"]) for a in answers] == [(0, 2), (0, 1)]


def test_a_beacon_with_views_and_clicks_waits_for_one_round_trip_to_postgresql(app_client, monkeypatch,
                                                                              runtime_stores_closed):
    # Arrange: a shop installed on PostgreSQL, an instance whose round trips are counted
    with instance_of_an_installed_shop_on_postgresql(app_client, monkeypatch) as (instance, relay):
        answers, turns = [], []

        # Act: a view with an answer's view and click; an answer's view alone; both for a shop never installed
        for shop, beacon in ((SHOP, [viewed("rt-1", "5"), shown("rt-2"), clicked("rt-3")]), (SHOP, shown("rt-4")),
                             ("never-installed.myshopify.com", [viewed("rt-5", "5"), shown("rt-6")])):
            relay.reset()
            answers.append(collect(instance, beacon, shop=shop))
            turns.append(relay.turns)

    # Assert: the check and the writes together, one round trip each
    assert [(r.status_code, r.json.get("recommendation_events", r.json.get("error"))) for r in answers] == [
        (200, 3), (200, 2), (403, "unknown_shop")]
    assert turns == [1, 1, 1]
