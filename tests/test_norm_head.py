"""The NormHead through the recommender's own entry (`Runtime` → `Recommender.recommend`, what `/recommend` calls):
a shopper's answer from the head is the answer from every item, product for product and reason for reason."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np

from recommender.artifact import ModelArtifact
from recommender.changes import Event
from recommender.events import EventKind
from recommender.intents import RecommendRequest
from recommender.model_store import LocalModelStore
from recommender.runtime import Runtime
from recommender.settings import Settings
from recommender.store import SQLiteEventStore
from tests.conftest import SHOP
from tests.test_serving_scores import _unequal_norms


def test_a_shoppers_answer_from_the_norm_head_equals_the_answer_from_every_item(tmp_path):
    factors = _unequal_norms()
    n = len(factors)
    ids = [str(8_000_000_000_000 + 1_000 * row) for row in range(n)]
    artifact = ModelArtifact.build(ids, factors, np.ones(n), 0.5, 2.0, {
        "version": "planted-head", "shop": SHOP, "event_weights": {"view": 1.0, "add_to_cart": 4.0, "purchase": 10.0}})
    LocalModelStore(tmp_path / "models").publish(SHOP, artifact)
    rng = np.random.default_rng(8)
    now = datetime.now(timezone.utc)
    customers = [str(5_000 + k) for k in range(20)]
    popular = np.argsort(-np.linalg.norm(factors, axis=1))[:300]  # shoppers mostly see what is popular: long vectors
    store = SQLiteEventStore(tmp_path / "events.sqlite3")
    store.add_events([Event(EventKind.VIEW if j % 3 else EventKind.PURCHASE, SHOP, ids[row],
                            now - timedelta(minutes=j + 1), customer_id=customer, source_topic="test")
                      for customer in customers
                      for j, row in enumerate(rng.choice(popular, 12, replace=False).tolist())])
    store.set_shop_installed(SHOP, True)
    store.close()
    runtime = Runtime.from_settings(Settings.from_mapping({
        "EVENT_STORE_URL": f"sqlite:///{tmp_path}/events.sqlite3", "MODEL_STORE_URL": f"file://{tmp_path}/models",
        "TRUST_CUSTOMER_ID_PARAM": "true", "ANSWER_CACHE_SECONDS": "0"}))
    try:
        def ask(customer: str):
            return runtime.recommender.recommend(RecommendRequest.from_query(
                {"shop": SHOP, "intent": "personalized", "customer_id": customer, "n": "10"}))

        from_every_item = [ask(customer) for customer in customers]  # the head is built a second after the first
        model = runtime.models.get(SHOP)
        assert model.head_tries == 0 and model.build_head() is not None
        from_head = [ask(customer) for customer in customers]
        assert (model.head_tries, model.head_hits) == (20, 20)
        for before, after in zip(from_every_item, from_head):
            assert after.strategy == before.strategy == "personalized"
            assert [(i.product_id, i.because) for i in after.items] == [(i.product_id, i.because) for i in before.items]
            np.testing.assert_allclose([i.score for i in after.items], [i.score for i in before.items], rtol=1e-5)
            assert len(after.items) == 10
    finally:
        runtime.store.close()
