"""Training on planted structure, fold-in against implicit's own solver, determinism."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from recommender.artifact import ModelArtifact
from recommender.changes import Delivery
from recommender.events import EventKind
from recommender.serving import ServingModel
from recommender.settings import TrainingConfig
from recommender.store import Interaction
from recommender.training import (
    NotEnoughData, build_user_items, confidence_matrix, fit_item_factors, train_shop,
)
from tests.conftest import CATEGORY_A, CATEGORY_B, SHOP, planted_orders
from webhooks.topics import TopicContext, order_created

CONFIG = TrainingConfig(factors=8, regularization=0.05, alpha=2.0, iterations=15, seed=3)
# The planted shop has exactly two tastes, so a rank-2 model is the right answer; with more factors
# than the structure holds, ALS memorises each basket and the ranking of unseen items is noise.
PLANTED = TrainingConfig(factors=2, regularization=0.05, alpha=2.0, iterations=15, seed=3)


def fill_planted_store(store) -> None:
    for n, order in enumerate(planted_orders()):
        changes = order_created(TopicContext(SHOP, "orders/create", f"delivery-{n}"), order)
        store.apply(Delivery(SHOP, f"delivery-{n}", "orders/create"), changes)


def test_build_user_items_sums_weights_per_shopper_and_product():
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    events = [
        Interaction("c:1", "p1", EventKind.VIEW, now),
        Interaction("c:1", "p1", EventKind.PURCHASE, now),
        Interaction("c:2", "p2", EventKind.ADD_TO_CART, now),
        Interaction("c:2", "p1", EventKind.VIEW, now),
    ]
    data = build_user_items(events, {EventKind.VIEW: 1.0, EventKind.ADD_TO_CART: 4.0, EventKind.PURCHASE: 10.0})
    assert data.user_keys == ["c:1", "c:2"]
    assert data.item_ids == ["p1", "p2"]
    assert data.matrix.toarray().tolist() == [[11.0, 0.0], [1.0, 4.0]]
    assert confidence_matrix(data.matrix, 2.0).toarray().tolist() == [[23.0, 0.0], [3.0, 9.0]]


def test_customer_who_bought_in_category_a_gets_a_items_above_b_items(store):
    fill_planted_store(store)
    model = ServingModel(train_shop(store, SHOP, PLANTED))
    a_rows = [model.item_ids.row(str(p)) for p in CATEGORY_A]
    b_rows = [model.item_ids.row(str(p)) for p in CATEGORY_B]

    for customer in range(1000, 1040, 2):  # even customers bought only in A
        history = store.history(SHOP, f"c:{customer}", 200)
        bought = {e.product_id for e in history}
        assert len(bought) == 6 and bought <= {str(p) for p in CATEGORY_A}

        scores = model.personalized_scores(*model.history_weights(history))

        unbought_a = [model.item_ids.row(str(p)) for p in CATEGORY_A if str(p) not in bought]
        assert scores[unbought_a].min() > scores[b_rows].max()
        assert scores[a_rows].min() > scores[b_rows].max()


def test_fold_in_equals_implicits_own_user_solve():
    """Our numpy fold-in solves the same equation as implicit's recalculate_user."""
    from implicit.cpu.als import AlternatingLeastSquares
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    dense = (rng.random((30, 12)) < 0.3) * rng.integers(1, 5, (30, 12))
    user_items = sp.csr_matrix(dense.astype(np.float32))
    factors = fit_item_factors(user_items, CONFIG)
    artifact = ModelArtifact.build([f"p{i}" for i in range(12)], factors, np.ones(12), CONFIG.regularization,
                                   CONFIG.alpha, {"version": "t"})
    serving = ServingModel(artifact)
    reference = AlternatingLeastSquares(factors=CONFIG.factors, regularization=CONFIG.regularization, alpha=1.0)
    reference.item_factors = artifact.item_factors  # the same (quantised) float32 factors serving uses
    reference.user_factors = np.zeros((30, CONFIG.factors), dtype=np.float32)

    for user in (0, 7, 19):
        row = user_items[user]
        expected = reference.recalculate_user(0, confidence_matrix(row, CONFIG.alpha))
        got = serving.fold_in_user_vector(row.indices.astype(np.int64), row.data.astype(np.float64))
        np.testing.assert_allclose(got, np.asarray(expected).ravel(), rtol=2e-3, atol=2e-4)


def test_training_is_deterministic_for_a_fixed_seed(store):
    fill_planted_store(store)
    first = train_shop(store, SHOP, CONFIG)
    second = train_shop(store, SHOP, CONFIG)
    assert first.item_ids.tolist() == second.item_ids.tolist()
    np.testing.assert_array_equal(first.item_factors, second.item_factors)


def test_artifact_records_what_serving_and_audits_need(store):
    fill_planted_store(store)
    artifact = train_shop(store, SHOP, CONFIG)
    assert artifact.item_factors.dtype == np.float32
    assert artifact.item_factors.shape == (20, 8)
    assert artifact.metadata["hyperparameters"] == {"factors": 8, "regularization": 0.05, "alpha": 2.0,
                                                    "iterations": 15, "seed": 3}
    assert artifact.metadata["counts"] == {"users": 40, "items": 20, "events": 240, "nonzeros": 240, "orders": 120}
    assert artifact.item_support.sum() == 240  # 40 customers × 6 distinct products
    assert artifact.metadata["event_weights"]["purchase"] == 10.0
    # Every customer bought 6 distinct products once: popularity is 10 × buyers per product.
    assert artifact.popularity.sum() == pytest.approx(240 * 10.0)


def test_a_shop_without_events_is_refused_with_a_reason(store):
    with pytest.raises(NotEnoughData, match="need at least 2 products"):
        train_shop(store, "empty.myshopify.com", CONFIG)
