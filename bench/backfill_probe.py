"""A backfill's writes: products and orders stored a second, a page of 250 at a time, SQLite and PostgreSQL.

    python -m bench.backfill_probe [--records 2000] [--rounds 3] [--rtt-ms 1] [--out DIR]

What `python -m recommender backfill` does with each page of `products.json` and `orders.json` once fetched
and translated (`webhooks.backfill.product_changes` and `order_changes`, done before the clock starts: the rate
is the store's): the page stored by `EventStore.apply_many`, one transaction (on PostgreSQL, set-wise). Beside
it, in each round, in an order that moves round by round:

- one by one: the same pages, each record its own delivery through `EventStore.apply`, as the backfill
  stored them before round 27 (bench/PERFORMANCE.md);
- the floor: the page's rows alone (products and variants; an order's events), one statement for each table
  (`executemany` on SQLite, one INSERT from arrays on PostgreSQL), in one transaction a page, into the same
  tables: no delivery rows, locks, checks, identity links, refunds or `sellable` flags.

Products: product k has 1 + k % 3 variants. Orders: three lines each, of 500 customers, every third order a
guest's (every fifth of those a cart a checkout linked to a customer before the backfill), every 20th with a
refund of one unit of four, every 50th cancelled. Each mode writes a shop of its own (a first backfill),
checked afterwards to hold every product and variant or every order line, then erased, so that every mode
finds the tables as the last one left them. PostgreSQL runs when TEST_POSTGRES_URL is set, on loopback or,
with --rtt-ms, through bench/latency_proxy.py as far away as that round trip (the table gives what a
`SELECT 1` then took). What a backfill cannot outrun is Shopify's REST Admin API: 2 requests a second on a
standard plan, 4 on Advanced, 20 on Plus (shopify.dev/docs/api/admin-rest/usage/rate-limits, read
2026-12-06), 250 records a page: 500, 1,000 or 5,000 records a second.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

from bench import process
from bench.round_trips import select_one_ms
from recommender.changes import ChangeSet, Delivery, IdentityLink
from recommender.store import EventStore, SQLiteEventStore, iso_utc, open_event_store
from webhooks.backfill import (
    ORDERS_TOPIC, PAGE_SIZE, PRODUCTS_TOPIC, backfill_webhook_id, order_changes, product_changes,
)

RESOURCES = ("products", "orders")
MODES = ("page", "one by one", "floor")
API_RECORDS_PER_S = {"standard": 2 * PAGE_SIZE, "Advanced": 4 * PAGE_SIZE, "Plus": 20 * PAGE_SIZE}
STAMP = "2026-11-20T10:00:00Z"
LINES = 3  # an order's lines


def product_record(k: int) -> dict:
    """A products.json record in Shopify's shape: product k has 1 + k % 3 variants, the first in stock."""
    return {
        "id": 8_000_000_000_000 + k, "title": f"Product {k}", "handle": f"product-{k}", "status": "active",
        "vendor": f"Vendor {k % 7}", "product_type": f"Type {k % 12}", "published_at": STAMP, "updated_at": STAMP,
        "image": {"src": f"https://cdn.shopify.com/s/files/bench/product-{k}.jpg"},
        "variants": [{"id": 45_000_000_000_000 + 3 * k + j, "inventory_item_id": 46_000_000_000_000 + 3 * k + j,
                      "price": f"{10 + k % 90}.00", "inventory_quantity": 5 if j == 0 else 0,
                      "inventory_management": "shopify", "inventory_policy": "deny"} for j in range(1 + k % 3)],
    }


def order_record(k: int) -> dict:
    """An orders.json record in Shopify's shape: three lines; a guest's every third order; every 20th with one
    unit of four refunded on its first line; every 50th cancelled."""
    order_id = 5_000_000_000_000 + k
    guest = k % 3 == 2
    order = {
        "id": order_id, "created_at": STAMP, "updated_at": STAMP, "cart_token": f"cart-{k}" if guest else None,
        "customer": None if guest else {"id": 7_000_000_000_000 + k % 500},
        "cancelled_at": "2026-11-21T10:00:00Z" if k % 50 == 49 else None,
        "line_items": [{"id": order_id * 10 + j, "product_id": 8_000_000_000_000 + (7 * k + j) % 2000,
                        "variant_id": 45_000_000_000_000 + j, "quantity": 4 if j == 0 else 1, "price": "19.00"}
                       for j in range(LINES)],
    }
    if k % 20 == 19:
        order["refunds"] = [{"id": order_id, "refund_line_items": [{"line_item_id": order_id * 10, "quantity": 1}]}]
    return order


def linked_carts(records: int) -> list[IdentityLink]:
    """The guests' carts a checkout linked to a customer before the backfill: every fifth guest's."""
    return [IdentityLink(f"cart-{k}", str(7_100_000_000_000 + k)) for k in range(2, records, 15)]


def stored_count(resource: str, records: int) -> int:
    """What a backfill of `records` leaves: products and their variants, or order lines."""
    return records + sum(1 + k % 3 for k in range(records)) if resource == "products" else LINES * records


def pages_of(resource: str, shop: str, records: int, page_size: int) -> list[list[tuple[Delivery, ChangeSet]]]:
    """The backfill's deliveries for `records` records of `shop`, a page of `page_size` at a time."""
    topic, record_of, translate = ((PRODUCTS_TOPIC, product_record, product_changes) if resource == "products"
                                   else (ORDERS_TOPIC, order_record, order_changes))
    deliveries = []
    for k in range(records):
        record = record_of(k)
        webhook_id = backfill_webhook_id(resource, record)
        deliveries.append((Delivery(shop, webhook_id, topic), translate(shop, record, webhook_id)))
    return [deliveries[start:start + page_size] for start in range(0, records, page_size)]


# The floor's tables and columns, and each page's rows for them.
_COLUMNS = {
    "products": "shop, product_id, title, handle, status, published_at, price, image_url, product_type, vendor,"
                " updated_at",
    "variants": "shop, variant_id, product_id, inventory_item_id, inventory_quantity, tracked, continue_selling",
    "events": "shop, kind, user_key, customer_id, anonymous_id, product_id, variant_id, quantity, price, order_id,"
              " occurred_at, source_topic, delivery_id, dedupe_key, weight_factor",
}
_POSTGRES_TYPES = {
    "products": "text text text text text timestamptz float8 text text text timestamptz",
    "variants": "text text text text int8 bool bool",
    "events": "text text text text text text text int4 float8 text timestamptz text text text float8",
}


def _rows(page: list[tuple[Delivery, ChangeSet]]) -> dict[str, list[tuple]]:
    products = [p for _, changes in page for p in changes.upsert_products]
    return {
        "products": [(p.shop, p.product_id, p.title, p.handle, p.status, p.published_at, p.price, p.image_url,
                      p.product_type, p.vendor, p.updated_at) for p in products],
        "variants": [(p.shop, v.variant_id, p.product_id, v.inventory_item_id, v.inventory_quantity, v.tracked,
                      v.continue_selling) for p in products for v in p.variants],
        "events": [(e.shop, e.kind.value, e.user_key, e.customer_id, e.anonymous_id, e.product_id, e.variant_id,
                    e.quantity, e.price, e.order_id, e.occurred_at, e.source_topic, e.delivery_id, e.dedupe_key,
                    e.weight_factor) for _, changes in page for e in changes.events],
    }


def _sqlite_floor(path: Path) -> Callable[[list], None]:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")

    def write(page: list) -> None:
        conn.execute("BEGIN IMMEDIATE")
        for table, rows in _rows(page).items():
            if rows:
                conn.executemany(f"INSERT INTO {table} ({_COLUMNS[table]}) VALUES ({', '.join('?' * len(rows[0]))})",
                                 [tuple(iso_utc(v) if hasattr(v, "tzinfo") else v for v in row) for row in rows])
        conn.execute("COMMIT")

    return write


def _postgres_floor(conn) -> Callable[[list], None]:
    def write(page: list) -> None:
        with conn.transaction():
            for table, rows in _rows(page).items():
                if rows:
                    arrays = ", ".join(f"%s::{kind}[]" for kind in _POSTGRES_TYPES[table].split())
                    conn.execute(f"INSERT INTO {table} ({_COLUMNS[table]}) SELECT * FROM unnest({arrays})",
                                 [list(column) for column in zip(*rows)])

    return write


def _stored(store: EventStore, resource: str, shop: str) -> int:
    if resource == "products":
        products = store.products(shop)
        return len(products) + sum(len(p.variants) for p in products.values())
    return store.count_events(shop)


def measure(store: EventStore, floor: Callable[[list], None], resource: str, records: int, page_size: int,
            rounds: int) -> dict:
    """Per mode, records stored a second in each round (each round and mode a new shop), and the medians."""
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_ in range(rounds):
        for mode in MODES[round_ % 3:] + MODES[:round_ % 3]:  # each mode first, second and last in turn
            shop = f"backfill-{uuid.uuid4().hex[:12]}.myshopify.com"
            pages = pages_of(resource, shop, records, page_size)
            write = {"page": store.apply_many, "floor": floor,
                     "one by one": lambda page: [store.apply(delivery, changes) for delivery, changes in page]}[mode]
            try:
                if resource == "orders":
                    store.apply(Delivery(shop, f"checkouts-{shop}", "checkouts/create"),
                                ChangeSet(identity_links=tuple(linked_carts(records))))
                begin = time.perf_counter()
                for page in pages:
                    write(page)
                rates[mode].append(records / (time.perf_counter() - begin))
                stored = _stored(store, resource, shop)
            finally:
                store.redact_shop(shop)
            if stored != stored_count(resource, records):
                raise RuntimeError(f"{resource}, {mode}: {stored} rows stored, not {stored_count(resource, records)}")
    median = {mode: statistics.median(values) for mode, values in rates.items()}
    return {"per_s": {mode: [round(v, 1) for v in values] for mode, values in rates.items()},
            "median_per_s": {mode: round(v, 1) for mode, v in median.items()},
            "page_vs_one_by_one": round(median["page"] / median["one by one"], 2),
            "floor_vs_page": round(median["floor"] / median["page"], 2)}


def run(records: int, page_size: int, rounds: int, rtt_ms: float, workdir: Path) -> dict:
    """Both resources on both backends (PostgreSQL when TEST_POSTGRES_URL is set, else why not)."""
    results: dict = {"records": records, "page_size": page_size, "rounds": rounds, "rtt_ms": rtt_ms,
                     "api_records_per_s": API_RECORDS_PER_S}
    path = workdir / "backfill.sqlite3"
    with contextlib.closing(SQLiteEventStore(path)) as store:
        floor = _sqlite_floor(path)
        results["sqlite"] = {resource: measure(store, floor, resource, records, page_size, rounds)
                             for resource in RESOURCES}
    url = os.environ.get("TEST_POSTGRES_URL")
    if not url:
        results["postgresql"] = {"skipped": "TEST_POSTGRES_URL is not set"}
        return results
    import psycopg

    with contextlib.ExitStack() as stack:
        url = process.relayed_postgres_url(url, rtt_ms, workdir / "logs", stack)
        store = stack.enter_context(contextlib.closing(open_event_store(url)))
        conn = stack.enter_context(psycopg.connect(url, autocommit=True))
        round_trip = select_one_ms(conn)
        floor = _postgres_floor(conn)
        results["postgresql"] = {"round_trip_ms": round_trip,
                                 **{resource: measure(store, floor, resource, records, page_size, rounds)
                                    for resource in RESOURCES}}
    return results


def table(results: dict) -> str:
    lines = ["| store | records | a page in one call (`apply_many`) | one by one (`apply`) | floor: the rows alone |"
             " page ÷ one by one | floor ÷ page |", "|---|---|---|---|---|---|---|"]
    for name in ("sqlite", "postgresql"):
        figures = results[name]
        if "skipped" in figures:
            lines.append(f"| {name} | skipped: {figures['skipped']} | | | | | |")
            continue
        where = ""
        if name == "postgresql":
            distance = f"{results['rtt_ms']:g} ms added" if results["rtt_ms"] else "loopback"
            where = f", {distance} (a `SELECT 1` {figures['round_trip_ms']:g} ms)"
        for resource in RESOURCES:
            rates = figures[resource]
            cells = [f"{rates['median_per_s'][mode]:,.0f}/s ({', '.join(f'{v:,.0f}' for v in rates['per_s'][mode])})"
                     for mode in MODES]
            lines.append(f"| {name}{where} | {resource} | {' | '.join(cells)} | {rates['page_vs_one_by_one']}× |"
                         f" {rates['floor_vs_page']}× |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000, help="products, and orders, a backfill stores in"
                                                                   " each mode and round")
    parser.add_argument("--page-size", type=int, default=PAGE_SIZE)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rtt-ms", type=float, default=0.0,
                        help="add this round trip to every statement sent to PostgreSQL (bench/latency_proxy.py; the"
                             " table gives what a round trip then took)")
    parser.add_argument("--out", type=Path, default=None, help="write backfill.json and backfill.md here")
    args = parser.parse_args(argv)
    if args.records < 1 or args.rounds < 1 or not 1 <= args.page_size <= PAGE_SIZE:
        parser.error(f"--records and --rounds must be at least 1, --page-size from 1 to {PAGE_SIZE}")
    with tempfile.TemporaryDirectory(prefix="backfill-probe-") as work:
        results = run(args.records, args.page_size, args.rounds, args.rtt_ms, Path(work))
    text = table(results)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "backfill.json").write_text(json.dumps(results, indent=1))
        (args.out / "backfill.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
