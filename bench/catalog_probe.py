"""A catalog backfill's writes: products stored a second, a page of 250 at a time, SQLite and PostgreSQL.

    python -m bench.catalog_probe [--products 2000] [--rounds 3] [--rtt-ms 1] [--out DIR]

What `python -m recommender backfill` does with each page of `products.json` once fetched and translated
(`webhooks.backfill.product_changes`, done before the clock starts: the rate is the store's): the page stored
by `EventStore.apply_many`, one transaction (on PostgreSQL, set-wise). Beside it, in each round, in an order
that moves round by round:

- one by one: the same pages, each product its own delivery through `EventStore.apply`, as the backfill
  stored them before round 27 (bench/PERFORMANCE.md);
- the floor: the page's product and variant rows alone, one statement for each table (`executemany` on
  SQLite, one INSERT from arrays on PostgreSQL), in one transaction a page, into the same tables: no delivery
  rows, locks, checks, `sellable` flags.

Each mode writes a shop of its own (a first backfill: every product new), checked afterwards to hold every
product and variant, then erased, so that every mode finds the tables as the last one left them. PostgreSQL runs when TEST_POSTGRES_URL is set, on loopback or, with --rtt-ms, through
bench/latency_proxy.py as far away as that round trip (Cloud SQL from a Cloud Run instance is about a
millisecond or more). What a backfill cannot outrun is Shopify's REST Admin API: 2 requests a second on a
standard plan, 4 on Advanced, 20 on Plus (shopify.dev/docs/api/admin-rest/usage/rate-limits, read
2026-12-06), 250 products a page: 500, 1,000 or 5,000 products a second.
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
from recommender.changes import ChangeSet, Delivery
from recommender.store import EventStore, SQLiteEventStore, open_event_store
from webhooks.backfill import PAGE_SIZE, PRODUCTS_TOPIC, backfill_webhook_id, product_changes

MODES = ("page", "one by one", "floor")
API_PRODUCTS_PER_S = {"standard": 2 * PAGE_SIZE, "Advanced": 4 * PAGE_SIZE, "Plus": 20 * PAGE_SIZE}


def product_record(k: int) -> dict:
    """A products.json record in Shopify's shape: product k has 1 + k % 3 variants, the first in stock."""
    stamp = "2026-11-20T10:00:00Z"
    return {
        "id": 8_000_000_000_000 + k, "title": f"Product {k}", "handle": f"product-{k}", "status": "active",
        "vendor": f"Vendor {k % 7}", "product_type": f"Type {k % 12}", "published_at": stamp, "updated_at": stamp,
        "image": {"src": f"https://cdn.shopify.com/s/files/bench/product-{k}.jpg"},
        "variants": [{"id": 45_000_000_000_000 + 3 * k + j, "inventory_item_id": 46_000_000_000_000 + 3 * k + j,
                      "price": f"{10 + k % 90}.00", "inventory_quantity": 5 if j == 0 else 0,
                      "inventory_management": "shopify", "inventory_policy": "deny"} for j in range(1 + k % 3)],
    }


def variants_of(products: int) -> int:
    return sum(1 + k % 3 for k in range(products))


def pages_of(shop: str, products: int, page_size: int) -> list[list[tuple[Delivery, ChangeSet]]]:
    """The backfill's deliveries for `products` records of `shop`, a page of `page_size` at a time."""
    deliveries = []
    for k in range(products):
        record = product_record(k)
        webhook_id = backfill_webhook_id("products", record)
        deliveries.append((Delivery(shop, webhook_id, PRODUCTS_TOPIC), product_changes(shop, record, webhook_id)))
    return [deliveries[start:start + page_size] for start in range(0, products, page_size)]


def _rows(page: list[tuple[Delivery, ChangeSet]]) -> tuple[list[tuple], list[tuple]]:
    products = [p for _, changes in page for p in changes.upsert_products]
    return ([(p.shop, p.product_id, p.title, p.handle, p.status, p.published_at, p.price, p.image_url, p.product_type,
              p.vendor, p.updated_at) for p in products],
            [(p.shop, v.variant_id, p.product_id, v.inventory_item_id, v.inventory_quantity, v.tracked,
              v.continue_selling) for p in products for v in p.variants])


_PRODUCT_COLUMNS = "shop, product_id, title, handle, status, published_at, price, image_url, product_type, vendor, updated_at"
_VARIANT_COLUMNS = "shop, variant_id, product_id, inventory_item_id, inventory_quantity, tracked, continue_selling"


def _sqlite_floor(path: Path) -> Callable[[list], None]:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")

    def write(page: list) -> None:
        products, variants = _rows(page)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(f"INSERT INTO products ({_PRODUCT_COLUMNS}) VALUES ({', '.join('?' * 11)})",
                         [(*row[:5], row[5].isoformat(), *row[6:10], row[10].isoformat()) for row in products])
        conn.executemany(f"INSERT INTO variants ({_VARIANT_COLUMNS}) VALUES ({', '.join('?' * 7)})", variants)
        conn.execute("COMMIT")

    return write


def _round_trip_ms(conn, times: int = 50) -> float:
    """The median of `times` `SELECT 1`s on `conn`: what one round trip to the server costs here."""
    taken = []
    for _ in range(times):
        begin = time.perf_counter()
        conn.execute("SELECT 1").fetchone()
        taken.append(time.perf_counter() - begin)
    return round(statistics.median(taken) * 1e3, 3)


def _postgres_floor(conn) -> Callable[[list], None]:
    def write(page: list) -> None:
        products, variants = _rows(page)
        with conn.transaction():
            conn.execute(f"INSERT INTO products ({_PRODUCT_COLUMNS})"
                         " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
                         " %s::timestamptz[], %s::float8[], %s::text[], %s::text[], %s::text[], %s::timestamptz[])",
                         [list(column) for column in zip(*products)])
            conn.execute(f"INSERT INTO variants ({_VARIANT_COLUMNS})"
                         " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::int8[],"
                         " %s::bool[], %s::bool[])", [list(column) for column in zip(*variants)])

    return write


def _writer(mode: str, store: EventStore, floor: Callable[[list], None]) -> Callable[[list], None]:
    if mode == "page":
        return store.apply_many
    if mode == "one by one":
        return lambda page: [store.apply(delivery, changes) for delivery, changes in page]
    return floor


def measure(store: EventStore, floor: Callable[[list], None], products: int, page_size: int, rounds: int) -> dict:
    """Per mode, products stored a second in each round (each round and mode a new shop), and the medians."""
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_ in range(rounds):
        for mode in MODES[round_ % 3:] + MODES[:round_ % 3]:  # each mode first, second and last in turn
            shop = f"catalog-{uuid.uuid4().hex[:12]}.myshopify.com"
            pages = pages_of(shop, products, page_size)
            write = _writer(mode, store, floor)
            try:
                begin = time.perf_counter()
                for page in pages:
                    write(page)
                rates[mode].append(products / (time.perf_counter() - begin))
                stored = store.products(shop)
            finally:
                store.redact_shop(shop)
            if len(stored) != products or sum(len(p.variants) for p in stored.values()) != variants_of(products):
                raise RuntimeError(f"{mode}: {len(stored)} of {products} products stored")
    median = {mode: statistics.median(values) for mode, values in rates.items()}
    return {"products_per_s": {mode: [round(v, 1) for v in values] for mode, values in rates.items()},
            "median_per_s": {mode: round(v, 1) for mode, v in median.items()},
            "page_vs_one_by_one": round(median["page"] / median["one by one"], 2),
            "floor_vs_page": round(median["floor"] / median["page"], 2)}


def run(products: int, page_size: int, rounds: int, rtt_ms: float, workdir: Path) -> dict:
    """Both backends (PostgreSQL when TEST_POSTGRES_URL is set, else why not)."""
    results: dict = {"products": products, "page_size": page_size, "rounds": rounds, "rtt_ms": rtt_ms,
                     "api_products_per_s": API_PRODUCTS_PER_S}
    path = workdir / "catalog.sqlite3"
    with contextlib.closing(SQLiteEventStore(path)) as store:
        results["sqlite"] = measure(store, _sqlite_floor(path), products, page_size, rounds)
    url = os.environ.get("TEST_POSTGRES_URL")
    if not url:
        results["postgresql"] = {"skipped": "TEST_POSTGRES_URL is not set"}
        return results
    import psycopg

    with contextlib.ExitStack() as stack:
        url = process.relayed_postgres_url(url, rtt_ms, workdir / "logs", stack)
        store = stack.enter_context(contextlib.closing(open_event_store(url)))
        conn = stack.enter_context(psycopg.connect(url, autocommit=True))
        round_trip = _round_trip_ms(conn)
        results["postgresql"] = {**measure(store, _postgres_floor(conn), products, page_size, rounds),
                                 "round_trip_ms": round_trip}
    return results


def table(results: dict) -> str:
    lines = ["| store | a page in one call (`apply_many`) | one by one (`apply`) | floor: the rows alone |"
             " page ÷ one by one | floor ÷ page |", "|---|---|---|---|---|---|"]
    for name in ("sqlite", "postgresql"):
        figures = results[name]
        if "skipped" in figures:
            lines.append(f"| {name} | skipped: {figures['skipped']} | | | | |")
            continue
        where = ""
        if name == "postgresql":
            distance = f"{results['rtt_ms']:g} ms added" if results["rtt_ms"] else "loopback"
            where = f", {distance} (a `SELECT 1` {figures['round_trip_ms']:g} ms)"
        cells = [f"{figures['median_per_s'][mode]:,.0f}/s ({', '.join(f'{v:,.0f}' for v in figures['products_per_s'][mode])})"
                 for mode in MODES]
        lines.append(f"| {name}{where} | {' | '.join(cells)} | {figures['page_vs_one_by_one']}× |"
                     f" {figures['floor_vs_page']}× |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=2000, help="products a backfill stores, in each mode and round")
    parser.add_argument("--page-size", type=int, default=PAGE_SIZE)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rtt-ms", type=float, default=0.0,
                        help="add this round trip to every statement sent to PostgreSQL (bench/latency_proxy.py; the"
                             " table gives what a round trip then took)")
    parser.add_argument("--out", type=Path, default=None, help="write catalog.json and catalog.md here")
    args = parser.parse_args(argv)
    if args.products < 1 or args.rounds < 1 or not 1 <= args.page_size <= PAGE_SIZE:
        parser.error(f"--products and --rounds must be at least 1, --page-size from 1 to {PAGE_SIZE}")
    with tempfile.TemporaryDirectory(prefix="catalog-probe-") as work:
        results = run(args.products, args.page_size, args.rounds, args.rtt_ms, Path(work))
    text = table(results)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "catalog.json").write_text(json.dumps(results, indent=1))
        (args.out / "catalog.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
