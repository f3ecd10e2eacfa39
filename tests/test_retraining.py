"""Scheduled retraining: the quality gate, the run log per shop, retention."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from recommender.changes import Delivery, Event, EventKind
from recommender.model_store import LocalModelStore
from recommender.retraining import ALIVE_WITHIN_SECONDS, GateConfig, run_scheduled_training
from recommender.settings import TrainingConfig
from recommender.store import open_event_store
from tests.conftest import AUTH, ROOT, SHOP, order_payload, running_function
from webhooks.topics import TopicContext, order_created

NOW = datetime(2026, 11, 22, 12, tzinfo=timezone.utc)
CONFIG = TrainingConfig(factors=4, iterations=10)
GATE = GateConfig(enabled=True, holdout_days=7, tolerance=0.1, min_users=20)


def put_order(store, order_id: int, customer: int, products: list[int], when: datetime, shop: str = SHOP) -> None:
    order = order_payload(order_id, customer, products, created_at=when.isoformat())
    store.apply(Delivery(shop, f"d{order_id}", "orders/create"),
                order_created(TopicContext(shop, "orders/create", f"d{order_id}"), order))
    store.set_shop_installed(shop, True)


def tastes_shop(store, structured: bool = True) -> None:
    """60 customers in two tastes over 30 days. With `structured`, the last week's orders follow each
    customer's taste (a personal model should win); otherwise everyone buys the one best seller."""
    rng = random.Random(5)
    order_id = 1
    best_seller = 101
    for customer in range(60):
        items = list(range(101, 121)) if customer % 2 == 0 else list(range(201, 221))
        for day in (25, 20, 15, 10):
            put_order(store, order_id, customer, rng.sample(items, 2), NOW - timedelta(days=day))
            order_id += 1
        put_order(store, order_id, 1000 + customer, [best_seller], NOW - timedelta(days=12))  # makes 101 the best seller
        order_id += 1
        recent = rng.sample(items, 2) if structured else [best_seller]
        put_order(store, order_id, customer, recent, NOW - timedelta(days=2))
        order_id += 1


@pytest.fixture
def models(tmp_path):
    return LocalModelStore(tmp_path / "models")


def test_a_model_that_beats_the_baselines_is_published_with_its_run_log(store, models):
    tastes_shop(store)

    report = run_scheduled_training(store, models, CONFIG, GATE, now=NOW)

    [record] = report["trained"]
    gate = record["gate"]
    assert gate["beats_popularity"] and gate["beats_trending"]
    assert 50 <= gate["users"] <= 60  # customers whose last week holds an item new to them
    assert gate["candidate"]["ndcg@10"] > gate["popularity"]["ndcg@10"]
    [logged] = models.runs(SHOP)
    assert logged["published"] and logged["version"] == record["version"] and logged["events"] == 660
    artifact = models.load(models.latest(SHOP))
    assert artifact.metadata["quality"]["candidate"]["ndcg@10"] == pytest.approx(gate["candidate"]["ndcg@10"])


def test_a_model_that_loses_to_best_sellers_is_not_published_over_one_that_passed_and_says_why(store, models,
                                                                                                tmp_path):
    # Arrange: the shop's current model passed the gate (trained on the shop's tastes, in an event store of its own)
    earlier = open_event_store(f"sqlite:///{tmp_path}/earlier.sqlite3")
    tastes_shop(earlier)
    [current] = run_scheduled_training(earlier, models, CONFIG, GATE, now=NOW - timedelta(days=1))["trained"]
    earlier.close()
    assert current["gate"]["passed"]
    tastes_shop(store, structured=False)

    # Act
    report = run_scheduled_training(store, models, CONFIG, GATE, now=NOW)

    # Assert
    assert report["trained"] == []
    [kept] = report["kept"]
    # The last week's only new item is the best seller, which both baselines rank first: a perfect 1.0 for each.
    assert "does not beat best sellers (1.0000)" in kept["reason"]
    assert "does not beat trending (1.0000)" in kept["reason"]
    assert "verdict" not in kept["gate"]
    assert models.latest(SHOP).version == current["version"]
    assert models.runs(SHOP)[0]["published"] is False


def test_a_first_model_that_loses_to_best_sellers_is_published_marked_below_them(store, models):
    # Regression: a shop with no model got none (every intent but trending 503 model_not_ready) while best sellers
    # beat its candidate, as they often do on a small or new shop
    tastes_shop(store, structured=False)

    report = run_scheduled_training(store, models, CONFIG, GATE, now=NOW)

    assert report["kept"] == []
    [record] = report["trained"]
    gate = record["gate"]
    assert not gate["beats_popularity"] and gate["popularity"]["ndcg@10"] == gate["trending"]["ndcg@10"] == 1.0
    assert (gate["verdict"], gate["baseline"]) == ("below_baseline", "best_sellers")  # a tie of baselines: best sellers
    assert models.latest(SHOP).version == record["version"]
    assert models.load(models.latest(SHOP)).metadata["quality"]["verdict"] == "below_baseline"
    assert models.runs(SHOP)[0]["gate"]["baseline"] == "best_sellers"


@pytest.mark.parametrize("verdict, published", [("below_baseline", True), (None, False)])
def test_the_tolerance_bar_never_keeps_a_model_published_below_a_baseline(store, models, verdict, published):
    # The current model is recorded as having scored 0.99, published below a baseline (`verdict`) or not: the
    # candidate, far below 0.99 but above both baselines, replaces the former and not the latter
    tastes_shop(store)
    [first] = run_scheduled_training(store, models, CONFIG, NO_GATE, now=NOW - timedelta(hours=1))["trained"]
    current = {"candidate": {"ndcg@10": 0.99}, **({"verdict": verdict, "baseline": "best_sellers"} if verdict else {})}
    models.record_run(SHOP, {"published": True, "gate": current})

    report = run_scheduled_training(store, models, CONFIG, GATE, now=NOW)

    assert (len(report["trained"]), len(report["kept"])) == ((1, 0) if published else (0, 1))
    gate = (report["trained"] or report["kept"])[0]["gate"]
    assert gate["passed"] and gate["previous"] == 0.99 and "verdict" not in gate
    assert models.latest(SHOP).version == (report["trained"][0] if published else first)["version"]


def test_a_drop_below_the_current_models_metric_keeps_the_current_model(store, models):
    tastes_shop(store)
    first = run_scheduled_training(store, models, CONFIG, GATE, now=NOW)["trained"][0]
    models.record_run(SHOP, {"published": True, "gate": {"candidate": {"ndcg@10": 0.99}}})  # a better model before

    report = run_scheduled_training(store, models, CONFIG, GATE, now=NOW)

    [kept] = report["kept"]
    assert "more than 10% below the current model's 0.9900" in kept["reason"]
    assert models.latest(SHOP).version == first["version"]


@pytest.mark.parametrize("drop, published", [(0.08, True), (0.12, False)])
def test_the_tolerance_accepts_a_drop_within_it_and_keeps_the_current_model_past_it(store, models, tmp_path, drop,
                                                                                   published):
    # Arrange: the candidate's metric is known from a first run into another model store (training is
    # deterministic); the current model is recorded as having scored so much that the candidate is `drop` below it
    # (GATE's tolerance is 10%)
    tastes_shop(store)
    first = run_scheduled_training(store, LocalModelStore(tmp_path / "first"), CONFIG, GATE, now=NOW)
    score = first["trained"][0]["gate"]["candidate"]["ndcg@10"]
    models.record_run(SHOP, {"published": True, "gate": {"candidate": {"ndcg@10": score / (1 - drop)}}})

    # Act
    report = run_scheduled_training(store, models, CONFIG, GATE, now=NOW)

    # Assert
    assert (len(report["trained"]), len(report["kept"])) == ((1, 0) if published else (0, 1))
    gate = (report["trained"] or report["kept"])[0]["gate"]
    assert gate["candidate"]["ndcg@10"] == pytest.approx(score)
    assert gate["previous"] == pytest.approx(score / (1 - drop))


def test_a_window_too_small_to_judge_still_publishes_with_the_gate_marked_skipped(store, models):
    for n in range(5):
        put_order(store, n + 1, n, [101, 102], NOW - timedelta(days=20))

    [record] = run_scheduled_training(store, models, CONFIG, GATE, now=NOW)["trained"]

    assert record["published"] and "the gate needs 20" in record["gate"]["skipped"]


def test_events_older_than_retention_are_pruned_by_the_same_job(store, models):
    put_order(store, 1, 1, [101, 102], NOW - timedelta(days=400))
    put_order(store, 2, 2, [101, 103], NOW - timedelta(days=10))
    put_order(store, 3, 3, [102, 103], NOW - timedelta(days=5))

    report = run_scheduled_training(store, models, CONFIG, GateConfig(enabled=False), retention_days=365, now=NOW)

    assert report["pruned_events"] == 2
    assert sorted(e.order_id for e in store.interactions(SHOP)) == ["2", "2", "3", "3"]
    assert report["trained"][0]["events"] == 4


def test_a_tuned_configuration_beside_the_models_is_used_by_train(store, models):
    import json

    from recommender.evaluation import TUNED_CONFIG_FORMAT

    tastes_shop(store)
    (models.root / SHOP).mkdir(parents=True)
    (models.root / SHOP / "tuned.json").write_text(json.dumps({
        "format": TUNED_CONFIG_FORMAT, "algorithm": "als",
        "hyperparameters": {"factors": 6, "regularization": 0.5, "alpha": 3.0, "iterations": 7, "seed": 9},
        "signal": {"weighting": "none", "bm25_k1": 1.2, "bm25_b": 0.75, "half_life_days": None,
                   "event_weights": {"view": 1, "add_to_cart": 2, "purchase": 8}},
    }))

    [record] = run_scheduled_training(store, models, CONFIG, GateConfig(enabled=False), now=NOW)["trained"]

    artifact = models.load(models.latest(SHOP))
    assert record["config"].endswith("tuned.json")
    assert artifact.metadata["hyperparameters"] == {"factors": 6, "regularization": 0.5, "alpha": 3.0,
                                                    "iterations": 7, "seed": 9}
    assert artifact.metadata["event_weights"]["purchase"] == 8.0
    assert artifact.item_factors.shape[1] == 6


def test_past_gate_max_users_the_gate_ranks_a_seeded_sample_and_says_of_how_many(store, tmp_path):
    tastes_shop(store)
    sampled_gate = GateConfig(enabled=True, holdout_days=7, tolerance=0.1, min_users=20, max_users=25)

    def gate_seen(gate: GateConfig, folder: str) -> dict:
        return run_scheduled_training(store, LocalModelStore(tmp_path / folder), CONFIG, gate, now=NOW)["trained"][0]["gate"]

    everyone, first, again = gate_seen(GATE, "all"), gate_seen(sampled_gate, "first"), gate_seen(sampled_gate, "again")

    assert everyone["holdout_users"] is None and everyone["users"] > 25
    assert first["users"] == 25 and first["holdout_users"] == everyone["users"]
    assert first["beats_popularity"] and first["beats_trending"]  # the planted tastes show in any 25 of them
    assert first["candidate"]["users"] == 25 and everyone["candidate"]["users"] == everyone["users"]  # scored on them
    assert again["candidate"] == first["candidate"] and again["popularity"] == first["popularity"]  # one sample
    assert LocalModelStore(tmp_path / "first").runs(SHOP)[0]["gate"]["holdout_users"] == everyone["users"]


@pytest.mark.parametrize("max_users", [0, -5, 19])
def test_a_gate_that_would_rank_fewer_customers_than_it_needs_cannot_be_made(max_users):
    with pytest.raises(ValueError, match="must be at least its min_users"):
        GateConfig(enabled=True, min_users=20, max_users=max_users)


def customer_event(kind: EventKind, product: int, customer: int, when: datetime) -> Event:
    return Event(kind, SHOP, str(product), when, customer_id=str(customer),
                 dedupe_key=f"{kind.value}:{customer}:{product}:{when.isoformat()}")


def test_a_first_model_is_published_when_every_model_ranks_the_same_and_ties(store, models):
    # Regression: a gate that cannot tell the models apart refused a shop its first model (503 model_not_ready for
    # good). Two products: each customer bought one and this week viewed the other, the only product left to rank.
    store.add_events([event for customer in range(40) for event in (
        customer_event(EventKind.PURCHASE, 1 + customer % 2, customer, NOW - timedelta(days=20)),
        customer_event(EventKind.VIEW, 2 - customer % 2, customer, NOW - timedelta(days=2)))])
    store.set_shop_installed(SHOP, True)

    [first] = run_scheduled_training(store, models, CONFIG, GATE, now=NOW)["trained"]
    again = run_scheduled_training(store, models, CONFIG, GATE, now=NOW)

    assert first["gate"]["candidate"]["ndcg@10"] == first["gate"]["popularity"]["ndcg@10"] == 1.0
    assert "ties best sellers (1.0000) and trending (1.0000)" in first["gate"]["skipped"]
    assert models.latest(SHOP).version == first["version"]
    [kept] = again["kept"]  # with a model to keep, a tie is no reason to replace it
    assert "does not beat best sellers (1.0000)" in kept["reason"] and again["trained"] == []
    assert models.latest(SHOP).version == first["version"]


def test_a_week_all_on_products_launched_that_week_cannot_be_judged_and_publishes(store, models):
    # Regression: every model scores 0 when the window's products are new to the shop (none can be shown), and the
    # gate refused the shop its first model on that tie. A tie at 0 is no verdict: published, as an empty window is,
    # with a model or without.
    store.add_events([customer_event(EventKind.VIEW, (100 if customer % 2 else 200) + (customer + p) % 10, customer,
                                     NOW - timedelta(days=20, hours=p)) for customer in range(40) for p in range(5)])
    store.add_events([customer_event(EventKind.VIEW, 900 + customer % 3, customer, NOW - timedelta(days=2))
                      for customer in range(40)])
    store.set_shop_installed(SHOP, True)

    [first] = run_scheduled_training(store, models, CONFIG, GATE, now=NOW)["trained"]
    [second] = run_scheduled_training(store, models, CONFIG, GATE, now=NOW + timedelta(days=1))["trained"]

    for record in (first, second):
        assert record["published"] and "every model scored ndcg@10 0" in record["gate"]["skipped"]
        assert record["gate"]["users"] == 40
    assert models.latest(SHOP).version == second["version"]


def test_gate_min_users_counts_the_customers_the_gate_ranks(store, models):
    # Regression: GATE_MIN_USERS counted customers with events on both sides of the cutoff (25 here), but the gate
    # ranks only those with a product new to them (1 here) and its verdict rested on that one customer.
    store.add_events([customer_event(EventKind.PURCHASE, 101 + customer % 4, customer, NOW - timedelta(days=20))
                      for customer in range(25)])
    store.add_events([customer_event(EventKind.VIEW, 101 + customer % 4, customer, NOW - timedelta(days=2))
                      for customer in range(25)])  # a product each already bought: nothing new to find
    store.add_events([customer_event(EventKind.PURCHASE, 301, 100, NOW - timedelta(days=20)),
                      customer_event(EventKind.VIEW, 301, 0, NOW - timedelta(days=2))])  # customer 0's one new product
    store.set_shop_installed(SHOP, True)

    [record] = run_scheduled_training(store, models, CONFIG, GATE, now=NOW)["trained"]

    skipped = record["gate"]["skipped"]
    assert record["published"] and "candidate" not in record["gate"]
    assert skipped.startswith("1 holdout customers have training history") and skipped.endswith("the gate needs 20")


@pytest.mark.parametrize("current_run", [
    {"published": True, "gate": {"skipped": "3 customers active in the last 7 days have older history; "
                                           "the gate needs 20"}},
    {"published": True},  # published with QUALITY_GATE=false
], ids=["gate-skipped", "gate-off"])
def test_a_current_model_published_without_a_metric_sets_no_tolerance_bar(store, models, current_run):
    # Regression: the tolerance bar skipped the current model's run when it had no metric and held the candidate to
    # an older model's, one no longer served.
    tastes_shop(store)
    models.record_run(SHOP, {"published": True, "gate": {"candidate": {"ndcg@10": 0.99}}})  # an older model
    models.record_run(SHOP, {"published": False, "reason": "r", "gate": {"candidate": {"ndcg@10": 0.98}}})
    models.record_run(SHOP, current_run)

    [record] = run_scheduled_training(store, models, CONFIG, GATE, now=NOW)["trained"]

    assert record["gate"]["previous"] is None and record["gate"]["passed"]


def test_the_tolerance_bar_is_the_newest_published_models_metric(store, models):
    tastes_shop(store)
    models.record_run(SHOP, {"published": True, "gate": {"candidate": {"ndcg@10": 0.2}}})  # an older, worse model
    models.record_run(SHOP, {"published": True, "gate": {"candidate": {"ndcg@10": 0.99}}})  # the current one

    [kept] = run_scheduled_training(store, models, CONFIG, GATE, now=NOW)["kept"]

    assert kept["gate"]["previous"] == 0.99 and "below the current model's 0.9900" in kept["reason"]


# --- the night's queue and its time budget ---------------------------------------------------------------------


def small_shops(store, names: list[str]) -> None:
    """Each shop: three customers' orders, enough for a model (the gate is off in these tests)."""
    for number, shop in enumerate(names):
        for customer in range(3):
            put_order(store, 100 * number + customer, customer, [101 + customer, 102 + customer],
                      NOW - timedelta(days=3), shop=shop)


def trained_before(store, shops_and_seconds: list[tuple[str, float | None]]) -> None:
    """Each shop's last training, started in this order a minute apart yesterday, and what it took (None: it was
    killed and never finished)."""
    yesterday = datetime.now(timezone.utc) - timedelta(days=1)  # the run marks its starts with the real clock
    for minute, (shop, seconds) in enumerate(shops_and_seconds):
        store.training_started(shop, yesterday + timedelta(minutes=minute))
        if seconds is not None:
            store.training_finished(shop, seconds)


def queued(store) -> list[str]:
    return [entry.shop for entry in store.training_queue()]


NO_GATE = GateConfig(enabled=False)
A, B, C = (f"{name}-shop.myshopify.com" for name in "abc")


def test_the_run_trains_the_shops_never_trained_then_those_started_longest_ago(store, models):
    small_shops(store, [A, B, C, SHOP])
    trained_before(store, [(C, 500.0), (A, 600.0), (B, 700.0)])  # SHOP: never trained

    report = run_scheduled_training(store, models, CONFIG, NO_GATE, now=NOW, budget_seconds=0)

    assert [record["shop"] for record in report["trained"]] == [SHOP, C, A, B]
    assert report["deferred"] == [] and report["interrupted"] == [] and report["seconds"] > 0
    assert queued(store) == [SHOP, C, A, B]  # started in that order: the next run's order too
    assert all(entry.expected_seconds < 500 and entry.unfinished == 0 for entry in store.training_queue())


def test_a_shop_whose_last_time_no_longer_fits_the_budget_waits_and_heads_the_next_run(store, models):
    """Planted times far above what these small shops take: A (100 s) runs first; B's 1,000 s do not fit in the
    500 s left, C's 10 s do. B, untrained, heads the next run and is started although it may not fit."""
    small_shops(store, [A, B, C])
    trained_before(store, [(A, 100.0), (B, 1000.0), (C, 10.0)])

    first = run_scheduled_training(store, models, CONFIG, NO_GATE, now=NOW, budget_seconds=500)
    queue, b_model = queued(store), models.latest(B)
    second = run_scheduled_training(store, models, CONFIG, NO_GATE, now=NOW + timedelta(days=1), budget_seconds=500)

    assert [record["shop"] for record in first["trained"]] == [A, C]
    assert first["deferred"] == [{"shop": B, "expected_seconds": 1000.0}]
    assert b_model is None and queue == [B, A, C]
    assert [record["shop"] for record in second["trained"]] == [B, A, C] and second["deferred"] == []
    assert models.latest(B) is not None


def test_once_the_budget_is_spent_every_shop_left_is_deferred_in_queue_order(store, models):
    small_shops(store, [A, B, C])

    report = run_scheduled_training(store, models, CONFIG, NO_GATE, now=NOW, budget_seconds=1e-6)

    assert [record["shop"] for record in report["trained"]] == [A]  # the first shop of a run is always started
    assert report["deferred"] == [{"shop": B, "expected_seconds": None}, {"shop": C, "expected_seconds": None}]
    assert queued(store) == [B, C, A]


def test_a_shop_killed_once_is_reported_and_heads_the_next_run(store, models):
    """A run killed while training a shop leaves it started and never finished: the next run says so and starts
    with it, since it may only have been started too late for the timeout."""
    small_shops(store, [A, B, C])
    trained_before(store, [(A, 1.0), (B, 1.0), (C, None)])  # C: started last, and the run was killed

    report = run_scheduled_training(store, models, CONFIG, NO_GATE, now=NOW, budget_seconds=0)

    assert report["interrupted"] == [{"shop": C, "unfinished": 1}]
    assert [record["shop"] for record in report["trained"]] == [C, A, B]
    assert [(entry.shop, entry.unfinished) for entry in store.training_queue()] == [(C, 0), (A, 0), (B, 0)]


def test_a_shop_killed_twice_in_a_row_is_trained_after_the_others(store, models):
    """Killed again at the head of a run, a shop dies whenever it runs (more memory or time than the function has):
    it goes last, so the other shops are trained before it takes a run down with it."""
    small_shops(store, [A, B, C])
    trained_before(store, [(B, None), (A, 1.0), (C, 1.0)])
    store.training_started(B, datetime.now(timezone.utc) - timedelta(days=1, seconds=30))  # again, before A and C

    report = run_scheduled_training(store, models, CONFIG, NO_GATE, now=NOW, budget_seconds=0)

    assert report["interrupted"] == [{"shop": B, "unfinished": 2}]
    assert [record["shop"] for record in report["trained"]] == [A, C, B]


def test_a_shop_that_failed_goes_to_the_back_keeping_its_last_time(store, models):
    small_shops(store, [A, B, C])
    trained_before(store, [(A, 1.0), (B, 7.5), (C, 1.0)])
    models.root.mkdir(parents=True)
    (models.root / B).write_text("not a folder")  # B's publish fails

    report = run_scheduled_training(store, models, CONFIG, NO_GATE, now=NOW, budget_seconds=0)

    assert [failed["shop"] for failed in report["failed"]] == [B]
    queue = store.training_queue()
    assert [entry.shop for entry in queue] == [A, B, C] and queue[1][:3] == (B, 7.5, 0)


def test_named_shops_are_trained_in_the_order_given(store, models):
    small_shops(store, [A, B, C])
    trained_before(store, [(A, 1.0), (B, 1.0), (C, 1.0)])

    report = run_scheduled_training(store, models, CONFIG, NO_GATE, shops=[C, A], now=NOW)

    assert [record["shop"] for record in report["trained"]] == [C, A]
    assert queued(store) == [B, C, A]


def test_the_first_shop_a_budget_left_out_leads_the_next_run_whatever_was_installed_meanwhile(store, models):
    """B needs more than the budget: only the first place of a run takes it. A new shop would otherwise take that
    place every night (never trained, it goes before the others) and B would never be trained."""
    small_shops(store, [A, B, C])
    trained_before(store, [(A, 100.0), (B, 1000.0), (C, 10.0)])
    first = run_scheduled_training(store, models, CONFIG, NO_GATE, now=NOW, budget_seconds=500)
    small_shops(store, ["new-shop.myshopify.com"])  # installed the next day

    second = run_scheduled_training(store, models, CONFIG, NO_GATE, now=NOW + timedelta(days=1), budget_seconds=500)

    assert first["deferred"] == [{"shop": B, "expected_seconds": 1000.0}]
    assert [record["shop"] for record in second["trained"]] == [B, "new-shop.myshopify.com", A, C]


def refuse_in_sqlite(tmp_path, when: str) -> None:
    """The event store's file refuses an update of `shop_state` `when` (a trigger's condition): a store that takes
    reads and the events' writes but not that one."""
    conn = sqlite3.connect(tmp_path / "events.sqlite3")
    conn.execute(f"CREATE TRIGGER refuse BEFORE UPDATE ON shop_state WHEN {when}"
                 " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
    conn.commit()
    conn.close()


def test_a_shop_whose_start_cannot_be_written_fails_untrained_and_the_others_go_on(store, models, tmp_path):
    small_shops(store, [A, B, C])
    refuse_in_sqlite(tmp_path, f"NEW.shop = '{B}' AND NEW.train_unfinished > OLD.train_unfinished")

    report = run_scheduled_training(store, models, CONFIG, NO_GATE, now=NOW, budget_seconds=0)

    assert [record["shop"] for record in report["trained"]] == [A, C]
    [failed] = report["failed"]
    assert failed["shop"] == B and "refused by the test" in failed["error"]
    assert models.latest(B) is None and report["queue_errors"] == []
    assert store.training_queue()[0][:3] == (B, None, 0)  # never started: first again next run


def test_a_training_whose_end_cannot_be_written_is_published_and_reported(store, models, tmp_path):
    small_shops(store, [A, B])
    refuse_in_sqlite(tmp_path, "NEW.train_unfinished = 0 AND OLD.train_unfinished > 0")

    report = run_scheduled_training(store, models, CONFIG, NO_GATE, now=NOW, budget_seconds=0)

    assert [record["shop"] for record in report["trained"]] == [A, B] and report["failed"] == []
    assert [error["shop"] for error in report["queue_errors"]] == [A, B]
    assert all("refused by the test" in error["error"] for error in report["queue_errors"])
    assert [entry.unfinished for entry in store.training_queue()] == [1, 1]  # taken for cut off, as documented


# --- runs at the same time ------------------------------------------------------------------------------------


def test_the_shops_of_another_run_going_on_are_left_to_it_and_those_of_a_silent_one_were_cut_off(store, models):
    """What other runs write, through the same store calls: "other" is alive (it said so 10 s ago), has trained A
    and is training B; "killed" fell silent for longer than ALIVE_WITHIN_SECONDS while it trained C."""
    small_shops(store, [A, B, C, SHOP])
    clock = datetime.now(timezone.utc)
    store.training_run_began("killed", clock - timedelta(seconds=ALIVE_WITHIN_SECONDS + 120))
    store.training_started(C, clock - timedelta(seconds=ALIVE_WITHIN_SECONDS + 60), "killed")
    store.training_run_began("other", clock - timedelta(minutes=2))
    store.training_started(A, clock - timedelta(minutes=2), "other")
    store.training_finished(A, 50.0, "other")
    b_started = clock - timedelta(minutes=1)
    store.training_started(B, b_started, "other")
    store.training_run_alive("other", clock - timedelta(seconds=10))

    report = run_scheduled_training(store, models, CONFIG, NO_GATE, now=NOW, budget_seconds=0)

    assert report["other_runs"] == [{"shop": B, "state": "training"}, {"shop": A, "state": "done"}]
    assert report["interrupted"] == [{"shop": C, "unfinished": 1}]
    assert [record["shop"] for record in report["trained"]] == [C, SHOP]  # cut off first, then never started
    assert models.latest(A) is None and models.latest(B) is None
    b_entry = next(entry for entry in store.training_queue() if entry.shop == B)
    assert (b_entry.started_at, b_entry.unfinished) == (b_started, 1)  # still the other run's

    named = run_scheduled_training(store, models, CONFIG, NO_GATE, shops=[A, B], now=NOW, budget_seconds=0)

    assert named["other_runs"] == [{"shop": B, "state": "training"}]  # a named shop trained again, unless in training
    assert [record["shop"] for record in named["trained"]] == [A]


def test_a_shop_uninstalled_and_redacted_while_the_run_goes_on_is_skipped_not_taken_for_another_runs(store, models,
                                                                                                       tmp_path):
    small_shops(store, [A, B, C])
    conn = sqlite3.connect(tmp_path / "events.sqlite3")  # B's row goes when the run starts A: a shop/redact
    conn.execute(f"CREATE TRIGGER redact AFTER UPDATE OF train_started_at ON shop_state WHEN NEW.shop = '{A}'"
                 f" BEGIN DELETE FROM shop_state WHERE shop = '{B}'; END")
    conn.commit()
    conn.close()

    report = run_scheduled_training(store, models, CONFIG, NO_GATE, now=NOW, shops=[A, B, C, C])

    assert [record["shop"] for record in report["trained"]] == [A, C]  # C named twice: trained once
    assert report["skipped"] == [{"shop": B, "reason": "uninstalled since the run read the queue"}]
    assert report["other_runs"] == []


def test_the_command_line_exits_0_when_another_run_has_the_shops(store, tmp_path):
    small_shops(store, [A])
    store.training_run_began("other")
    store.training_started(A, datetime.now(timezone.utc), "other")  # and it is training A now
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EVENT_STORE_URL": f"sqlite:///{tmp_path}/events.sqlite3",
           "MODEL_STORE_URL": f"file://{tmp_path}/models", "QUALITY_GATE": "false"}

    done = subprocess.run([sys.executable, "-m", "recommender", "train"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["trained"] == [] and report["other_runs"] == [{"shop": A, "state": "training"}]


def test_a_run_says_it_is_going_on_until_it_ends(store, models):
    big_shop(store, "a-big.myshopify.com")
    slow = TrainingConfig(factors=256, iterations=100)  # about 2 s on the machine this was written on
    seen: list = []

    def watch() -> None:  # what another run reading the queue meanwhile finds
        while not done.is_set():
            seen.extend(entry.run_alive_at for entry in store.training_queue() if entry.unfinished)
            time.sleep(0.01)

    done = threading.Event()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        report = run_scheduled_training(store, models, slow, NO_GATE, now=NOW, alive_every_seconds=0.05)
    finally:
        done.set()
        watcher.join()

    [entry] = store.training_queue()
    assert report["trained"] and entry.unfinished == 0
    assert len(set(seen)) >= 3  # its time of life moved while it trained the shop
    assert entry.run_alive_at is None  # ended: its row is gone, the shop nobody's


def test_a_run_that_was_taken_for_killed_leaves_the_shop_to_the_run_that_started_it_again(store):
    store.set_shop_installed(A, True)
    first, second = NOW - timedelta(minutes=9), NOW - timedelta(minutes=1)
    assert store.training_started(A, first, "slow", expect_started_at=None)
    assert store.training_started(A, second, "next", expect_started_at=first)  # "slow" fell silent

    assert not store.training_finished(A, 480.0, "slow")  # "slow" ends at last
    assert store.training_queue()[0][:3] == (A, None, 2)  # still being trained by "next"
    assert store.training_finished(A, 20.0, "next")
    assert store.training_queue()[0][:3] == (A, 20.0, 0)
    assert not store.training_deferred(A, expect_started_at=first)  # read before "next" started it


def big_shop(store, shop: str) -> None:
    """1,500 customers' purchases of 10 of 300 products: a shop whose training at 256 factors takes a while."""
    rng = random.Random(3)
    store.add_events([Event(EventKind.PURCHASE, shop, str(1000 + rng.randrange(300)),
                            NOW - timedelta(days=3, minutes=line), customer_id=str(customer),
                            dedupe_key=f"{customer}:{line}")
                      for customer in range(1500) for line in range(10)])
    store.set_shop_installed(shop, True)


BEFORE = [f"a{number:02d}-shop.myshopify.com" for number in range(6)]  # what the first run trains before BIG
BIG = "m-big.myshopify.com"
AFTER = [f"t{number:02d}-shop.myshopify.com" for number in range(6)]
SLOW_BIG = {"QUALITY_GATE": "false", "TRAIN_BUDGET_SECONDS": "0", "ALS_FACTORS": "256",
            "ALS_ITERATIONS": "100"}  # the big shop: about 2 s on the machine this was written on


def second_run_while_the_first_trains_big(store, first_alive, second_run):
    """Wait until the first run (its liveness: `first_alive()`, a message when it died) has started BIG, then
    return `second_run()`."""
    deadline = time.monotonic() + 120
    while not any(entry.shop == BIG and entry.unfinished for entry in store.training_queue()):
        problem = first_alive()
        assert problem is None and time.monotonic() < deadline, problem or "BIG was not started in 120 s"
        time.sleep(0.01)
    return second_run()


def assert_shared(first: dict, second: dict, models_dir) -> None:
    """The second run, started while the first trained BIG, left BEFORE and BIG to it, and the two shared AFTER:
    each shop trained once, by one of them."""
    by_first = [record["shop"] for record in first["trained"]]
    by_second = [record["shop"] for record in second["trained"]]
    assert by_first[:7] == [*BEFORE, BIG]
    left = [entry for entry in second["other_runs"] if entry["state"] != "taken"]
    assert left == [{"shop": BIG, "state": "training"},  # started, unfinished: at the head
                    *({"shop": shop, "state": "done"} for shop in BEFORE)]
    assert {entry["shop"] for entry in second["other_runs"] if entry["state"] == "taken"} <= set(AFTER)
    assert sorted(by_first + by_second) == sorted([*BEFORE, BIG, *AFTER])
    assert second["interrupted"] == first["interrupted"] == [] and second["failed"] == first["failed"] == []
    models = LocalModelStore(models_dir)
    assert all(len(models.runs(shop)) == 1 for shop in [*BEFORE, BIG, *AFTER])  # one run log a shop


def test_two_runs_at_once_train_each_shop_once(event_store_url, tmp_path):
    """`python -m recommender train` as a process, and a second run started while it trains its big shop."""
    store = open_event_store(event_store_url)
    try:
        big_shop(store, BIG)
        small_shops(store, BEFORE + AFTER)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "EVENT_STORE_URL": event_store_url,
               "MODEL_STORE_URL": f"file://{tmp_path}/models", **SLOW_BIG}
        first = subprocess.Popen([sys.executable, "-m", "recommender", "train"], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            second = second_run_while_the_first_trains_big(
                store, lambda: None if first.poll() is None else first.stderr.read(),
                lambda: run_scheduled_training(store, LocalModelStore(tmp_path / "models"), CONFIG, NO_GATE,
                                               budget_seconds=0))
        finally:
            out, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
    finally:
        store.close()

    assert_shared(json.loads(out), second, tmp_path / "models")


def test_two_train_requests_at_once_to_one_instance_train_each_shop_once(event_store_url, env, tmp_path):
    """`POST /train` twice to one `functions-framework --target app` process (its threads share one event store),
    the second while the first trains its big shop: a leftover run after a 504 and the next one."""
    import requests

    store = open_event_store(event_store_url)
    try:
        big_shop(store, BIG)
        small_shops(store, BEFORE + AFTER)
        with running_function({**os.environ, **env, "EVENT_STORE_URL": event_store_url, **SLOW_BIG}) as base:
            with ThreadPoolExecutor(max_workers=1) as pool:
                first = pool.submit(requests.post, f"{base}/train", headers=AUTH, timeout=300)
                second = second_run_while_the_first_trains_big(
                    store, lambda: None if not first.done() else f"the first request ended: {first.result().text}",
                    lambda: requests.post(f"{base}/train", headers=AUTH, timeout=300))
                first = first.result()
    finally:
        store.close()

    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert_shared(first.json(), second.json(), tmp_path / "models")
