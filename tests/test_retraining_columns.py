"""Scheduled retraining reads the shop's events once, as columns, for both the quality gate and the model;
the gate must see exactly what it saw when it was handed `Interaction` rows."""

from __future__ import annotations

from datetime import timedelta

import numpy as np

from recommender.evaluation import compare_to_baseline
from recommender.offline_data import Interactions
from recommender.retraining import retrain_shop, split_for_gate
from tests.conftest import SHOP
from tests.test_retraining import CONFIG, GATE, NOW, tastes_shop


def test_the_gates_split_from_columns_is_the_split_from_rows(store):
    tastes_shop(store)
    cutoff = NOW - timedelta(days=GATE.holdout_days)
    rows = store.interactions(SHOP)
    train_rows = [e for e in rows if e.occurred_at < cutoff]
    holdout_rows = [e for e in rows if e.occurred_at >= cutoff]
    everything = Interactions.from_store(train_rows + holdout_rows)
    is_train = np.arange(len(rows)) < len(train_rows)

    train, holdout = split_for_gate(store.interaction_columns(SHOP, times=True), cutoff)

    for got, want in ((train, everything.select(is_train)), (holdout, everything.select(~is_train))):
        assert (got.user_ids, got.item_ids) == (want.user_ids, want.item_ids)
        for name in ("users", "items", "weights", "timestamps", "kinds"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
            assert getattr(got, name).dtype == getattr(want, name).dtype, name
    assert len(holdout) == 2 * 60  # the last week: one two-product order per customer


def test_the_gate_decides_as_it_did_on_rows(store):
    tastes_shop(store)
    cutoff = NOW - timedelta(days=GATE.holdout_days)
    rows = store.interactions(SHOP)

    from_rows = compare_to_baseline([e for e in rows if e.occurred_at < cutoff],
                                    [e for e in rows if e.occurred_at >= cutoff], CONFIG, k=GATE.k)
    from_columns = compare_to_baseline(*split_for_gate(store.interaction_columns(SHOP, times=True), cutoff),
                                       CONFIG, k=GATE.k)

    assert from_columns.to_dict() == from_rows.to_dict()


def test_retraining_reads_the_events_once_for_the_gate_and_the_model(store, tmp_path, monkeypatch):
    from recommender.model_store import LocalModelStore

    tastes_shop(store)
    reads = []
    original = store.interaction_columns
    monkeypatch.setattr(store, "interaction_columns", lambda shop, times=False: reads.append(times) or original(shop, times))
    monkeypatch.setattr(store, "interactions", lambda shop: (_ for _ in ()).throw(AssertionError("read rows")))

    record = retrain_shop(store, LocalModelStore(tmp_path / "models"), SHOP, CONFIG, GATE, NOW)

    assert reads == [True]
    assert record["published"] and record["events"] == 660 and record["gate"]["beats_popularity"]
