"""bench.delivery_probe: the deliveries it stores, the round trips it counts, and its table (no timing asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.delivery_probe import KINDS, deliveries, run, table
from recommender.changes import IdentityLink
from tests.conftest import ROOT
from tests.postgres_schema import run as run_sql
from tests.postgres_schema import server_url, temporary_schema

SHOP = "a.myshopify.com"
# By hand, from what each kind's write sends (tests/test_store_postgres.py checks each against SQLite's outcome).
ROUND_TRIPS = {"order, known customer": 1, "order, guest": 1, "order with a gift card": 1,
               "cart": 1, "checkout": 1, "product update": 1,
               "product deletion": 1, "inventory level": 1, "redelivery": 1, "cancellation": 1, "refund": 1,
               "pixel beacon": 1}


def test_each_kind_is_a_translated_webhook_of_its_topic():
    made = {kind: deliveries(kind, SHOP, 2) for kind in KINDS}

    assert {kind: made[kind][1][0].topic for kind in KINDS} == {
        "order, known customer": "orders/create", "order, guest": "orders/create",
        "order with a gift card": "orders/create", "cart": "carts/update",
        "checkout": "checkouts/update", "product update": "products/update", "product deletion": "products/delete",
        "inventory level": "inventory_levels/update", "redelivery": "products/update", "cancellation": "orders/cancelled",
        "refund": "refunds/create", "pixel beacon": "pixel"}
    known, guest, cart = (made[kind][1][1].events for kind in ("order, known customer", "order, guest", "cart"))
    assert [e.customer_id for e in known] == ["7000000000001"] * 3 and len({e.product_id for e in known}) == 3
    assert {(e.customer_id, e.anonymous_id) for e in guest} == {(None, "cart-1")}
    assert {e.anonymous_id for e in cart} == {"cart-1"}
    gift = made["order with a gift card"][1][1]
    assert gift.gift_card_product_ids == ("8100000000001",) and [e.weight_factor for e in gift.events] == [1, 1, 0]
    assert made["checkout"][1][1].identity_links == (IdentityLink("cart-1", "7000000000001"),)
    assert made["product deletion"][1][1].delete_product_ids == ("8000000000001",)
    assert made["inventory level"][1][1].inventory_levels[0].inventory_item_id == "46000000000003"
    assert made["redelivery"][1][0].webhook_id == made["product update"][1][0].webhook_id  # stored before: a repeat
    views = made["pixel beacon"][1][1].events
    assert len(views) == 5 and {(e.kind.value, e.anonymous_id, e.customer_id) for e in views} == {
        ("view", "browser-1", None)}


def test_without_postgresql_it_times_sqlite_and_says_why_not(tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_POSTGRES_URL", raising=False)

    results = run(3, 0.0, tmp_path)

    assert set(results["sqlite"]) == set(KINDS) and all(results["sqlite"][k]["median_ms"] > 0 for k in KINDS)
    assert results["postgresql"] == {"skipped": "TEST_POSTGRES_URL is not set"}
    assert "PostgreSQL: skipped (TEST_POSTGRES_URL is not set)." in table(results)


@pytest.fixture(scope="module")
def probed_on_postgresql(tmp_path_factory):
    """One run of the probe on a schema of its own, three deliveries a kind, over HTTP too, shared by the two tests
    below (each once ran the probe itself: its round trips counted through the 50 ms relay each time); what each table
    holds after it."""
    server_url()  # a skip with the reason where no PostgreSQL is configured
    with temporary_schema() as url, pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("TEST_POSTGRES_URL", url)

        # `over_http` checks every answer: 200, and "stored" (a redelivery "duplicate"), or it raises
        results = run(3, 0.0, tmp_path_factory.mktemp("delivery-probe"), http=True)
        rows = {name: run_sql(url, f"SELECT count(*) FROM {name}")[0][0]
                for name in ("events", "deliveries", "products", "variants", "inventory_levels", "identity_links",
                             "shop_state")}
    return results, rows


def test_on_postgresql_it_counts_each_kinds_round_trips_and_leaves_no_shop_behind(probed_on_postgresql):
    results, rows = probed_on_postgresql
    leftovers = sum(rows.values())

    pg = results["postgresql"]
    assert pg["round_trips"] == {kind: [ROUND_TRIPS[kind]] * 3 for kind in KINDS}
    assert set(pg["loopback"]) == {"round_trip_ms", *KINDS} and "relayed" not in pg
    assert leftovers == 0
    rows = table(results).splitlines()
    assert rows[2].startswith("| order, known customer | ") and "| 1 | " in rows[2]
    assert [row.split(" | ")[2] for row in rows[2:2 + len(KINDS)]] == ["1"] * len(KINDS)  # each kind's count


def test_the_command_writes_its_json_and_table(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench.delivery_probe", "--deliveries", "2", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "TEST_POSTGRES_URL"})

    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "delivery_probe.json").read_text())
    assert results["deliveries"] == 2 and results["kinds"] == list(KINDS)
    assert (tmp_path / "delivery_probe.md").read_text().strip() == done.stdout.strip()


def test_over_http_each_kind_is_stored_through_the_real_app_and_timed_beside_the_bare_function(probed_on_postgresql):
    results, rows = probed_on_postgresql
    events = rows["events"]

    http = results["postgresql"]["http"]
    assert http["over"] == "loopback" and set(http) == {"over", *KINDS}
    assert all(http[kind]["median_ms"] > 0 and http[kind]["floor_median_ms"] > 0 for kind in KINDS)
    assert events == 0  # the probe's shops erased
    assert "Over HTTP (`main.py` under functions-framework, the store loopback)" in table(results)
