"""bench.answer_probe: the round trips each kind of answer waits for, and its table (no timing asserted)."""

from __future__ import annotations

import pytest

from bench.answer_probe import KINDS, WARM_KINDS, run, table
from tests.postgres_schema import run as run_sql
from tests.postgres_schema import server_url, temporary_schema


def test_without_postgresql_it_says_why_not(tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_POSTGRES_URL", raising=False)

    results = run(3, 0.0, 2000, tmp_path)

    assert results["skipped"] == "TEST_POSTGRES_URL is not set"
    assert table(results) == "PostgreSQL: skipped (TEST_POSTGRES_URL is not set)."


def test_on_postgresql_each_kind_waits_for_the_round_trips_its_reads_need(tmp_path, monkeypatch):
    server_url()  # a skip with the reason where no PostgreSQL is configured
    with temporary_schema() as url:
        monkeypatch.setenv("TEST_POSTGRES_URL", url)

        results = run(3, 0.0, 2000, tmp_path)
        leftovers = [run_sql(url, f"SELECT count(*) FROM {name}")[0][0] for name in ("events", "shop_state")]

    # By hand: a new instance connects (two), finds the schema current (one), checks the shop and takes the catalog's
    # snapshot (one: sent together) and reads the answer's cards; a product asked about first reads its answer's
    # cards alone (the shop was found installed less than ANSWER_CACHE_SECONDS ago); a cached answer reads nothing; a
    # shopper's answer reads their history with the shop check, then the cards the instance has not read; a quiet
    # shop's answer checks the shop with the snapshot (a shopper's, with their history too), then reads its cards.
    # psycopg prepares a statement on its fifth use on a connection: one round trip more, once (two for a pipeline).
    trips = results["round_trips"]
    assert trips["a new instance's first answer"] == [5, 5, 5]
    for quiet in ("related, a quiet shop's", "personalized, a quiet shop's"):
        assert trips[quiet].count(2) >= 2 and max(trips[quiet]) <= 4, trips[quiet]  # preparing: once, one or two more
    assert trips["related, first time"] == [1, 1, 1]
    assert trips["related, again"] == trips["trending, again"] == [0, 0, 0]
    assert set(trips["personalized, a shopper's first"]) <= {2, 3}
    assert set(trips["personalized, again"]) <= {1, 2}
    assert all(results["loopback"][kind] > 0 for kind in KINDS) and "relayed" not in results
    assert leftovers == [0, 0]
    lines = table(results).splitlines()
    assert lines[0].startswith("| answer | round trips | loopback") and len(lines) == 2 + len(KINDS) + 2
    assert lines[2] == f"| a new instance's first answer | 5 | {results['loopback'][KINDS[0]]} ms |"


def test_over_http_each_warm_kind_is_answered_by_the_real_app_beside_the_bare_function(tmp_path, monkeypatch):
    server_url()
    with temporary_schema() as url:
        monkeypatch.setenv("TEST_POSTGRES_URL", url)

        # `over_http` checks every answer of ours is a 200, or it raises
        results = run(2, 0.0, 2000, tmp_path, http=True)

    http = results["http"]
    assert http["over"] == "loopback" and set(http) == {"over", *WARM_KINDS}
    assert all(http[kind]["median_ms"] > 0 and http[kind]["floor_median_ms"] > 0 for kind in WARM_KINDS)
    assert "Over HTTP (`main.py` under functions-framework, the store loopback)" in table(results)
