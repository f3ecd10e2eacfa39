"""bench.catalog_probe: the backfill's pages it writes, what each mode leaves stored, and its table (no timing asserted)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from bench.catalog_probe import MODES, pages_of, run, table, variants_of
from recommender.store import SQLiteEventStore
from tests.conftest import ROOT
from tests.postgres_schema import server_url, temporary_schema


def test_the_pages_are_a_backfills_translated_records():
    pages = pages_of("a.myshopify.com", 25, 10)

    assert [len(page) for page in pages] == [10, 10, 5]
    delivery, changes = pages[0][7]
    product = changes.upsert_products[0]
    assert delivery.topic == "backfill/products" and delivery.webhook_id.startswith("backfill:products:8000000000007:")
    assert product.product_id == "8000000000007" and product.price == 17.0
    assert [(v.variant_id, v.inventory_quantity) for v in product.variants] == [("45000000000021", 5), ("45000000000022", 0)]
    assert variants_of(25) == 25 + 8 * (0 + 1 + 2) == 49  # 1 + k % 3 variants for k = 0 … 24 (k = 24 adds none)


def test_a_page_stored_by_apply_many_holds_every_product_and_variant(tmp_path):
    store = SQLiteEventStore(tmp_path / "events.sqlite3")

    results = [store.apply_many(page) for page in pages_of("a.myshopify.com", 30, 10)]
    stored = store.products("a.myshopify.com")
    again = store.apply_many(pages_of("a.myshopify.com", 30, 10)[0])
    store.close()

    assert results == [[0] * 10] * 3 and again == [None] * 10  # the same records again: duplicates
    assert len(stored) == 30 and sum(len(p.variants) for p in stored.values()) == variants_of(30) == 60


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_probe_measures_every_mode_and_leaves_no_shop_behind(tmp_path, monkeypatch, backend):
    if backend == "sqlite":
        monkeypatch.delenv("TEST_POSTGRES_URL", raising=False)
        results = run(30, 10, 2, 0.0, tmp_path)
        with sqlite3.connect(tmp_path / "catalog.sqlite3") as conn:
            leftovers = conn.execute("SELECT count(*) FROM products").fetchone()[0] + \
                conn.execute("SELECT count(*) FROM variants").fetchone()[0]
    else:
        server_url()  # a skip with the reason where no PostgreSQL is configured
        with temporary_schema() as url:
            monkeypatch.setenv("TEST_POSTGRES_URL", url)
            results = run(30, 10, 2, 0.0, tmp_path)

    figures = results[backend]
    assert set(figures["products_per_s"]) == set(MODES)
    assert all(len(rates) == 2 and min(rates) > 0 for rates in figures["products_per_s"].values())
    assert figures["page_vs_one_by_one"] > 0 and figures["floor_vs_page"] > 0
    if backend == "sqlite":
        assert results["postgresql"] == {"skipped": "TEST_POSTGRES_URL is not set"} and leftovers == 0
        assert "| postgresql | skipped: TEST_POSTGRES_URL is not set |" in table(results)
    else:
        assert figures["round_trip_ms"] > 0
        assert f"| postgresql, loopback (a `SELECT 1` {figures['round_trip_ms']:g} ms) |" in table(results)
    assert f" | {figures['median_per_s']['page']:,.0f}/s ({', '.join(f'{v:,.0f}' for v in figures['products_per_s']['page'])})" \
        in table(results)


def test_the_command_writes_its_json_and_table(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench.catalog_probe", "--products", "12", "--page-size", "5",
                           "--rounds", "1", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)

    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "catalog.json").read_text())
    assert results["products"] == 12 and results["api_products_per_s"]["standard"] == 500
    assert (tmp_path / "catalog.md").read_text().strip() == done.stdout.strip()


def test_the_command_refuses_a_page_larger_than_shopifys():
    done = subprocess.run([sys.executable, "-m", "bench.catalog_probe", "--page-size", "251"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 2 and "--page-size from 1 to 250" in done.stderr
