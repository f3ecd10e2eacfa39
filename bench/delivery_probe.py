"""One webhook's write: each kind of delivery a store receives, stored one at a time, SQLite and PostgreSQL.

    python -m bench.delivery_probe [--deliveries 40] [--rtt-ms 2.5] [--http] [--out DIR]

What a webhook's request does once it is verified and translated (the payloads through `webhooks.topics`'
translators before the clock starts, as the handler's are): `EventStore.apply` of one delivery, its own
transaction. The kinds: an order of a known customer, a guest's order, a known customer's order whose last line
sells a gift card (stored counting for nothing, the product marked a gift card), a guest's cart (carts/create and
carts/update, the most frequent topics), a checkout that names the cart's customer (its link: the cart's events
join the customer's), a product's update, its deletion, an inventory level's update, a redelivery of a
product's update (a webhook id stored before: the dedupe check alone), an order's cancellation and a refund of
one unit of its first line (the order stored before); three lines to each order and cart,
three variants to each product. Beside them a Web Pixel beacon of five product views by one browser (`/collect`:
`EventStore.add_events_if_installed` of what `webhooks.pixel.pixel_events` makes of it, the shop installed).

For PostgreSQL, each kind's round trips are counted on the wire (`bench.round_trips`: a relay in this process
that counts how often the client waited for the server), and each delivery is timed on loopback and, with
--rtt-ms, through bench/latency_proxy.py as far away as that round trip, beside the floor: one round trip, a
`SELECT 1` over the same connection. A deployed function reaches Cloud SQL over the network; its round trip
decides what a delivery costs in waiting. SQLite, in process, is timed for comparison. With --http, each kind
is also sent as Shopify sends it (signed, to `/webhooks`; the beacon to `/collect`) to functions-framework
serving `main.py` as a process of its own, on the relayed store, one request at a time, beside the floor: the
same requests answered by a bare function in the same framework. Runs of
`python -m bench.delivery_probe` against code before and after a change are how rounds 27 and 28 of
bench/PERFORMANCE.md compared them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from bench import process
from bench.round_trips import (
    RoundTripCounter, add_distance_argument, http_lines, print_and_write, select_one_ms, summary,
)
from recommender.changes import ChangeSet, Delivery
from recommender.store import EventStore, SQLiteEventStore, open_event_store
from webhooks.pixel import pixel_events
from webhooks.topics import TRANSLATORS, TopicContext

KINDS = ("order, known customer", "order, guest", "order with a gift card", "cart", "checkout", "product update",
         "product deletion", "inventory level", "redelivery", "cancellation", "refund", "pixel beacon")
PIXEL_VIEWS = 5  # a Web Pixel beacon's page views
LINES = 3
STAMP = "2026-11-20T10:00:00Z"


def payload(kind: str, k: int) -> tuple[str, dict | list]:
    """(topic, body) of delivery k of a kind, in Shopify's shape; every k a new order, cart or product."""
    lines = [{"id": 9_000_000 + 10 * k + j, "product_id": 8_000_000_000_000 + (7 * k + j) % 500,
              "variant_id": 45_000_000_000_000 + j, "quantity": 1, "price": "19.00"} for j in range(LINES)]
    if kind == "order with a gift card":  # a known customer's, its last line a gift card the catalog has not synced
        lines[-1] = {**lines[-1], "product_id": 8_100_000_000_000 + k, "gift_card": True}
    if kind.startswith("order") or kind == "cancellation":
        guest = kind.endswith("guest")
        order = {"id": 5_000_000_000_000 + k, "created_at": STAMP, "line_items": lines,
                 "cart_token": f"cart-{k}" if guest else None,
                 "customer": None if guest else {"id": 7_000_000_000_000 + k % 50}}
        if kind == "cancellation":
            return "orders/cancelled", {**order, "cancelled_at": STAMP}
        return "orders/create", order
    if kind == "refund":  # one unit of the order's first line
        return "refunds/create", {"id": 3_000_000 + k, "order_id": 5_000_000_000_000 + k, "created_at": STAMP,
                                  "refund_line_items": [{"line_item_id": lines[0]["id"], "quantity": 1}]}
    if kind == "cart":
        return "carts/update", {"token": f"cart-{k}", "updated_at": STAMP, "line_items": lines}
    if kind == "checkout":
        return "checkouts/update", {"token": f"checkout-{k}", "cart_token": f"cart-{k}", "updated_at": STAMP,
                                    "customer": {"id": 7_000_000_000_000 + k % 50}}
    if kind == "product deletion":
        return "products/delete", {"id": 8_000_000_000_000 + k}
    if kind == "pixel beacon":
        return "pixel", [{"id": f"sh-{k}-{j}", "name": "product_viewed", "clientId": f"browser-{k}", "timestamp": STAMP,
                          "data": {"productVariant": {"id": f"gid://shopify/ProductVariant/{45_000_000_000_000 + j}",
                                                      "price": {"amount": 19.0},
                                                      "product": {"id": 8_000_000_000_000 + (7 * k + j) % 500}}}}
                         for j in range(PIXEL_VIEWS)]
    if kind == "inventory level":
        return "inventory_levels/update", {"inventory_item_id": 46_000_000_000_000 + 3 * k, "location_id": 1,
                                           "available": k % 5, "updated_at": STAMP}
    return "products/update", {
        "id": 8_000_000_000_000 + k, "title": f"Product {k}", "handle": f"product-{k}", "status": "active",
        "vendor": "Acme", "product_type": "Mugs", "published_at": STAMP, "updated_at": STAMP,
        "image": {"src": f"https://cdn.shopify.com/s/files/bench/product-{k}.jpg"},
        "variants": [{"id": 45_000_000_000_000 + 3 * k + j, "inventory_item_id": 46_000_000_000_000 + 3 * k + j,
                      "price": "19.00", "inventory_quantity": 5, "inventory_management": "shopify",
                      "inventory_policy": "deny"} for j in range(3)]}


def raw(kind: str, k: int) -> tuple[str, dict | list, str]:
    """(topic, body, webhook id) of delivery k of a kind. A redelivery repeats the webhook id of a product's update
    that `prepare` stores first."""
    if kind == "redelivery":
        return (*payload("product update", k), f"product-update-{k}")
    return (*payload(kind, k), f"{kind.replace(' ', '-').replace(',', '')}-{k}")


def deliveries(kind: str, shop: str, count: int) -> list[tuple[Delivery, ChangeSet]]:
    """`count` deliveries of a kind, translated (`raw`). An inventory level names a variant of a product `prepare`
    stores, a deletion that product, a checkout the cart `prepare` stores, a cancellation or a refund its order."""
    made = []
    for k in range(count):
        topic, body, webhook_id = raw(kind, k)
        if topic == "pixel":
            changes = ChangeSet(events=tuple(pixel_events(body, shop)[0]))
        else:
            changes = TRANSLATORS[topic](TopicContext(shop, topic, webhook_id), body)
        made.append((Delivery(shop, webhook_id, topic), changes))
    return made


def store_one(store: EventStore, delivery: Delivery, changes: ChangeSet) -> int | None:
    """What the request does with it: `add_events_if_installed` for a pixel's beacon, `apply` for a webhook's
    delivery."""
    if delivery.topic == "pixel":
        return store.add_events_if_installed(delivery.shop, changes.events)
    return store.apply(delivery, changes)


# What a kind finds stored: the products an inventory level belongs to or a deletion names, the update a
# redelivery repeats, the cart a checkout links, the order a cancellation or a refund names.
BEFORE = {"inventory level": "product update", "product deletion": "product update", "redelivery": "product update",
          "checkout": "cart", "cancellation": "order, known customer", "refund": "order, known customer"}


def prepare(store: EventStore, kind: str, shop: str, count: int) -> None:
    """`BEFORE`'s deliveries for a kind, stored; for a beacon, the shop installed (as its first webhook marks it)."""
    if kind == "pixel beacon":
        store.set_shop_installed(shop, True)
    before = BEFORE.get(kind)
    if before:
        for delivery, changes in deliveries(before, shop, count):
            store.apply(delivery, changes)


def in_a_new_shop(store: EventStore, kind: str, count: int,
                  untimed=contextlib.nullcontext) -> Iterator[tuple[Delivery, ChangeSet]]:
    """`count` deliveries of a kind for a new shop, `prepare`d first, the shop erased once they are all taken; the
    preparing and the erasing each inside `untimed()`."""
    shop = f"probe-{uuid.uuid4().hex[:12]}.myshopify.com"
    try:
        with untimed():
            prepare(store, kind, shop, count)
        yield from deliveries(kind, shop, count)
    finally:
        with untimed():
            store.redact_shop(shop)


def timed(store: EventStore, kind: str, count: int) -> list[float]:
    """Milliseconds for each of `count` deliveries of a kind into a new shop."""
    taken = []
    for delivery, changes in in_a_new_shop(store, kind, count):
        begin = time.perf_counter()
        store_one(store, delivery, changes)
        taken.append((time.perf_counter() - begin) * 1e3)
    return taken


def counted(url: str, kinds: tuple[str, ...] = KINDS, count: int = 3) -> dict[str, list[int]]:
    """Each kind's round trips per delivery, counted on the wire (`RoundTripCounter`), `count` deliveries each."""
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost"):
        raise SystemExit(f"round trips are counted through a relay to PostgreSQL on loopback, not {parts.hostname}")
    turns: dict[str, list[int]] = {}
    with RoundTripCounter(parts.port or 5432) as relay:
        with relay.undelayed():  # the connection and the schema's check (or migration): not counted
            store = open_event_store(relay.url(url))
        with contextlib.closing(store):
            for kind in kinds:
                turns[kind] = []
                # each kind's set-up and its shop's erasure are not counted: undelayed, no round trip there waits 0.1 s
                for delivery, changes in in_a_new_shop(store, kind, count, untimed=relay.undelayed):
                    relay.reset()
                    store_one(store, delivery, changes)
                    turns[kind].append(relay.turns)
    return turns


def _request(kind: str, k: int, shop: str) -> tuple[str, bytes, dict[str, str], str]:
    """(path, body, headers, the outcome expected) of delivery k of a kind as Shopify (or the pixel) sends it."""
    from bench.synthetic import SECRET
    from webhooks.verification import sign_webhook_body

    topic, body, webhook_id = raw(kind, k)
    data = json.dumps(body, separators=(",", ":")).encode()
    if topic == "pixel":
        return f"/collect?shop={shop}", data, {"Content-Type": "application/json"}, "stored"
    return "/webhooks", data, {
        "Content-Type": "application/json", "X-Shopify-Topic": topic, "X-Shopify-Shop-Domain": shop,
        "X-Shopify-Webhook-Id": webhook_id, "X-Shopify-Hmac-Sha256": sign_webhook_body(data, SECRET),
    }, "duplicate" if kind == "redelivery" else "stored"


def over_http(url: str, count: int, workdir: Path) -> dict:
    """Each kind's requests, one at a time, to `main.py` under functions-framework on the store at `url`, and the
    same requests to the bare function: milliseconds each, medians."""
    import requests

    from bench.synthetic import SECRET, write_floor_source

    log_dir = workdir / "logs"
    ours = process.spawn("app", process.ROOT / "main.py", {"SHOPIFY_API_SECRET": SECRET, "EVENT_STORE_URL": url},
                         log_dir, threads=1)
    floor = process.spawn("floor", write_floor_source(workdir / "floor"), {}, log_dir, threads=1)
    shop = f"probe-{uuid.uuid4().hex[:12]}.myshopify.com"
    results: dict = {}
    try:
        process.wait_until_serving(ours, "/healthz")
        process.wait_until_serving(floor, "/")
        with requests.Session() as session:
            def send(server: process.Server, kind: str, k: int, checked: bool) -> float:
                """Milliseconds for the request; `checked`: its answer must be the outcome `_request` expects."""
                path, data, headers, outcome = _request(kind, k, shop)
                begin = time.perf_counter()
                answer = session.post(server.base + (path if server is ours else "/"), data=data, headers=headers,
                                      timeout=60)
                taken = (time.perf_counter() - begin) * 1e3
                if checked and (answer.status_code != 200 or answer.json().get("status") != outcome):
                    raise RuntimeError(f"{kind} {k}: {answer.status_code} {answer.text[:300]}")
                return taken

            for k in range(3):  # untimed: the instance's store connection, the shop installed
                send(ours, "order, known customer", 1000 + k, checked=True)
            for kind in KINDS:
                if kind in BEFORE:
                    for k in range(count):
                        send(ours, BEFORE[kind], k, checked=False)
                taken, floors = [], []
                for k in range(count):
                    taken.append(send(ours, kind, k, checked=True))
                    floors.append(send(floor, kind, k, checked=False))
                results[kind] = {**summary(taken), "floor_median_ms": round(statistics.median(floors), 3)}
    finally:
        ours.stop()
        floor.stop()
        with contextlib.closing(open_event_store(url)) as store:
            store.redact_shop(shop)
    return results


def run(count: int, rtt_ms: float, workdir: Path, http: bool = False) -> dict:
    results: dict = {"deliveries": count, "rtt_ms": rtt_ms, "kinds": list(KINDS)}
    with contextlib.closing(SQLiteEventStore(workdir / "deliveries.sqlite3")) as store:
        results["sqlite"] = {kind: summary(timed(store, kind, count)) for kind in KINDS}
    url = os.environ.get("TEST_POSTGRES_URL")
    if not url:
        results["postgresql"] = {"skipped": "TEST_POSTGRES_URL is not set"}
        return results
    import psycopg

    results["postgresql"] = {"round_trips": counted(url)}
    distances = [("loopback", 0.0)] + ([("relayed", rtt_ms)] if rtt_ms > 0 else [])
    for name, rtt in distances:
        with contextlib.ExitStack() as stack:
            reached = process.relayed_postgres_url(url, rtt, workdir / "logs", stack)
            store = stack.enter_context(contextlib.closing(open_event_store(reached)))
            with psycopg.connect(reached, autocommit=True) as conn:
                round_trip = select_one_ms(conn)
            results["postgresql"][name] = {"round_trip_ms": round_trip,
                                           **{kind: summary(timed(store, kind, count)) for kind in KINDS}}
            if http and name == distances[-1][0]:  # the farthest store, as a deployment reaches it
                results["postgresql"]["http"] = {"over": name, **over_http(reached, count, workdir)}
    return results


def table(results: dict) -> str:
    pg = results["postgresql"]
    relayed = pg.get("relayed")
    head = ["kind", "SQLite", "round trips (PostgreSQL)", "PostgreSQL, loopback"]
    if relayed:
        head += [f"PostgreSQL, a round trip of {relayed['round_trip_ms']} ms", "÷ one round trip"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind in results["kinds"]:
        row = [kind, f"{results['sqlite'][kind]['median_ms']} ms"]
        if "skipped" in pg:
            row += ["", ""]
        else:
            trips = ", ".join(map(str, sorted(set(pg["round_trips"][kind]))))
            row += [trips, f"{pg['loopback'][kind]['median_ms']} ms"]
        if relayed:
            row += [f"{relayed[kind]['median_ms']} ms (at most {relayed[kind]['max_ms']})",
                    f"{relayed[kind]['median_ms'] / relayed['round_trip_ms']:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    http = pg.get("http")
    if http:
        lines += http_lines(http, results["kinds"], "kind")
    if "skipped" in pg:
        lines.append(f"\nPostgreSQL: skipped ({pg['skipped']}).")
    else:
        lines.append(f"\nMedians of {results['deliveries']} deliveries a kind, each its own transaction (`apply`, "
                     "a beacon `add_events_if_installed`); "
                     f"a `SELECT 1` took {pg['loopback']['round_trip_ms']} ms on loopback.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=40, help="deliveries of each kind (default 40)")
    add_distance_argument(parser)
    parser.add_argument("--http", action="store_true",
                        help="also send each kind through main.py under functions-framework (PostgreSQL only)")
    parser.add_argument("--out", type=Path, help="write delivery_probe.json and delivery_probe.md here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="delivery-probe-") as workdir:
        results = run(args.deliveries, args.rtt_ms, Path(workdir), http=args.http)
    print_and_write(results, table(results), args.out, "delivery_probe")
    return 0


if __name__ == "__main__":
    sys.exit(main())
