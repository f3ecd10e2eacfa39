"""bench.backfill_probe: the backfill's pages it writes, what each mode leaves stored, and its table (no timing asserted)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from bench.backfill_probe import MODES, RESOURCES, linked_carts, pages_of, run, stored_count, table
from recommender.changes import ChangeSet, Delivery
from recommender.store import SQLiteEventStore
from tests.conftest import ROOT
from tests.postgres_schema import server_url, temporary_schema

SHOP = "a.myshopify.com"


def test_the_pages_of_products_are_a_backfills_translated_records():
    pages = pages_of("products", SHOP, 25, 10)

    assert [len(page) for page in pages] == [10, 10, 5]
    delivery, changes = pages[0][7]
    product = changes.upsert_products[0]
    assert delivery.topic == "backfill/products" and delivery.webhook_id.startswith("backfill:products:8000000000007:")
    assert product.product_id == "8000000000007" and product.price == 17.0
    assert [(v.variant_id, v.inventory_quantity) for v in product.variants] == [("45000000000021", 5), ("45000000000022", 0)]
    assert stored_count("products", 25) == 25 + 25 + 8 * (0 + 1 + 2) == 74  # 1 + k % 3 variants, k = 0 … 24


def test_the_pages_of_orders_hold_guests_refunds_and_cancellations():
    deliveries = [item for page in pages_of("orders", SHOP, 50, 25) for item in page]

    guest = deliveries[2][1].events[0]  # order 2: a guest's, whose cart a checkout linked (linked_carts)
    refunded, cancelled = deliveries[19][1], deliveries[49][1]
    assert guest.customer_id is None and guest.anonymous_id == "cart-2" and linked_carts(50)[0].anonymous_id == "cart-2"
    assert [(r.line_item_id, r.quantity) for r in refunded.refunds] == [("50000000000190", 1)]
    assert refunded.events[0].quantity == 4 and cancelled.void_order_ids == ("5000000000049",)
    assert {e.weight_factor for e in cancelled.events} == {0.0} and stored_count("orders", 50) == 150


def test_a_page_stored_by_apply_many_holds_every_record_with_a_guest_joined_and_a_refund_applied(tmp_path):
    store = SQLiteEventStore(tmp_path / "events.sqlite3")
    store.apply(Delivery(SHOP, "checkouts", "checkouts/create"), ChangeSet(identity_links=tuple(linked_carts(30))))

    results = [store.apply_many(page) for resource in RESOURCES for page in pages_of(resource, SHOP, 30, 10)]
    again = store.apply_many(pages_of("orders", SHOP, 30, 10)[0])
    weights = {(i.order_id, i.product_id): (i.user_key, i.weight_factor) for i in store.interactions(SHOP)}
    products, events = store.products(SHOP), store.count_events(SHOP)
    store.close()

    assert results[:3] == [[0] * 10] * 3 and results[3:] == [[3] * 10] * 3 and again == [None] * 10
    assert len(products) + sum(len(p.variants) for p in products.values()) == stored_count("products", 30) == 90
    assert events == stored_count("orders", 30) == 90
    assert weights[("5000000000002", "8000000000014")] == ("c:7100000000002", 1.0)  # the linked guest's first line
    assert weights[("5000000000019", "8000000000133")] == ("c:7000000000019", 0.75)  # one unit of four refunded


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_probe_measures_every_mode_and_leaves_no_shop_behind(tmp_path, monkeypatch, backend):
    if backend == "sqlite":
        monkeypatch.delenv("TEST_POSTGRES_URL", raising=False)
        results = run(30, 10, 2, 0.0, tmp_path)
        with sqlite3.connect(tmp_path / "backfill.sqlite3") as conn:
            leftovers = sum(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                            for table in ("products", "variants", "events", "deliveries", "identity_links"))
    else:
        server_url()  # a skip with the reason where no PostgreSQL is configured
        with temporary_schema() as url:
            monkeypatch.setenv("TEST_POSTGRES_URL", url)
            results = run(30, 10, 2, 0.0, tmp_path)

    figures = results[backend]
    for resource in RESOURCES:
        assert set(figures[resource]["per_s"]) == set(MODES)
        assert all(len(rates) == 2 and min(rates) > 0 for rates in figures[resource]["per_s"].values())
        assert figures[resource]["page_vs_one_by_one"] > 0 and figures[resource]["floor_vs_page"] > 0
    if backend == "sqlite":
        assert results["postgresql"] == {"skipped": "TEST_POSTGRES_URL is not set"} and leftovers == 0
        assert "| postgresql | skipped: TEST_POSTGRES_URL is not set |" in table(results)
        assert "| sqlite | orders | " in table(results)
    else:
        assert figures["round_trip_ms"] > 0
        assert f"| postgresql, loopback (a `SELECT 1` {figures['round_trip_ms']:g} ms) | orders |" in table(results)


def test_the_command_writes_its_json_and_table(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench.backfill_probe", "--records", "12", "--page-size", "5",
                           "--rounds", "1", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={k: v for k, v in os.environ.items() if k != "TEST_POSTGRES_URL"})

    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "backfill.json").read_text())
    assert results["records"] == 12 and results["api_records_per_s"]["standard"] == 500
    assert (tmp_path / "backfill.md").read_text().strip() == done.stdout.strip()


def test_the_command_refuses_a_page_larger_than_shopifys():
    done = subprocess.run([sys.executable, "-m", "bench.backfill_probe", "--page-size", "251"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 2 and "--page-size from 1 to 250" in done.stderr
