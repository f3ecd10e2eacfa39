"""Answers that depend on no shopper are reused for a while; personal ones never are."""

from __future__ import annotations

import gc
import json
import time

import pytest

from recommender.intents import AnswerCache, RecommendedItem, RecommendRequest, RecommendResponse
from tests.conftest import AUTH, SHOP, planted_orders, post_webhook, versions_until_swapped
from tests.postgres_schema import temporary_schema

RELATED = f"/recommend?shop={SHOP}&intent=related&product_id=101&n=3"


@pytest.fixture
def cached_shop(app_client, monkeypatch):
    monkeypatch.setenv("ANSWER_CACHE_SECONDS", "3600")
    monkeypatch.setenv("MODEL_REFRESH_SECONDS", "0")
    monkeypatch.setenv("CATALOG_TTL_SECONDS", "0")
    monkeypatch.setenv("ALS_FACTORS", "2")
    for order in planted_orders():
        post_webhook(app_client, "orders/create", order)
    app_client.post("/train", headers=AUTH)
    return app_client


def test_a_non_personal_answer_is_reused_with_a_fresh_recommendation_id(cached_shop):
    url = f"/recommend?shop={SHOP}&intent=related&product_id=101&n=3"
    first = cached_shop.get(url)
    post_webhook(cached_shop, "products/delete", {"id": int(first.json["recommendations"][0]["product_id"])})

    second = cached_shop.get(url)

    assert second.json["recommendations"] == first.json["recommendations"], "served from the cache"
    assert second.json["recommendation_id"] != first.json["recommendation_id"]
    assert second.headers["Cache-Control"] == "public, max-age=60"


def test_a_carts_complementary_answer_depends_on_no_shopper_and_is_reused_and_public(cached_shop):
    # Arrange: product_ids name a cart here, not a shopper's history
    url = f"/recommend?shop={SHOP}&intent=complementary&product_ids=101,102&n=3"
    first = cached_shop.get(url)
    assert first.status_code == 200 and first.json["recommendations"]
    post_webhook(cached_shop, "products/delete", {"id": int(first.json["recommendations"][0]["product_id"])})

    # Act
    second = cached_shop.get(url)

    # Assert
    assert second.json["recommendations"] == first.json["recommendations"], "served from the cache"
    assert [r.headers["Cache-Control"] for r in (first, second)] == ["public, max-age=60"] * 2


def test_a_new_model_is_never_answered_from_an_old_cache_entry(cached_shop):
    url = f"/recommend?shop={SHOP}&intent=related&product_id=101&n=3"
    before = cached_shop.get(url).json["model_version"]
    trained = cached_shop.post("/train", headers=AUTH).json

    answered = versions_until_swapped(cached_shop, url, before)

    assert answered[-1] == trained["trained"][0]["version"] != before


def test_personal_answers_are_never_cached(cached_shop):
    url = f"/recommend?shop={SHOP}&customer_id=1000&n=3"
    first = cached_shop.get(url).json
    bought = int(first["recommendations"][0]["product_id"])
    post_webhook(cached_shop, "orders/create", {"id": 99, "created_at": "2026-11-01T00:00:00Z",
                                                 "customer": {"id": 1000},
                                                 "line_items": [{"id": 1, "product_id": bought}]})

    second = cached_shop.get(url).json

    assert bought not in [int(item["product_id"]) for item in second["recommendations"]]


def test_after_app_uninstalled_answers_for_everyone_go_on_for_their_cache_time_and_personal_ones_stop(
        cached_shop, shopify_fixture):
    # Arrange: a related answer cached while the shop was installed
    first = cached_shop.get(RELATED)
    assert first.status_code == 200 and first.json["recommendations"]

    # Act
    post_webhook(cached_shop, "app/uninstalled", json.loads(shopify_fixture("app_uninstalled")))
    again = cached_shop.get(RELATED)
    other = cached_shop.get(f"/recommend?shop={SHOP}&intent=related&product_id=102&n=3")
    trending = cached_shop.get(f"/recommend?shop={SHOP}&intent=trending&n=3")
    personal = cached_shop.get(f"/recommend?shop={SHOP}&customer_id=1000&n=3")

    # Assert: answers for everyone, cached or made now, as browsers and CDNs keep them (max-age); a shopper's refused
    assert again.status_code == 200 and again.json["recommendations"] == first.json["recommendations"]
    assert (other.status_code, trending.status_code) == (200, 200) and other.json["recommendations"]
    assert (personal.status_code, personal.json["error"]) == (404, "shop_not_installed")


def test_answers_for_everyone_outlive_an_uninstall_by_the_cache_time_at_most(app_client, env):
    """Timed with a clock of the test's own: answers made without the shop check are cached only until the window
    of the check they relied on ends, and a shopper's "not installed" closes that window at once."""
    # Arrange: the planted shop trained; a Recommender on its store, answers kept 30 s
    from recommender.catalog import CatalogCache
    from recommender.errors import ShopNotInstalled
    from recommender.intents import Recommender
    from recommender.runtime import Runtime
    from recommender.settings import Settings
    from recommender.trending import TrendingCache

    for order in planted_orders():
        post_webhook(app_client, "orders/create", order)
    assert app_client.post("/train", headers=AUTH).status_code == 200
    settings = Settings.from_mapping(env)
    runtime = Runtime.from_settings(settings)
    store, now = runtime.store, [0.0]
    recommender = Recommender(store, runtime.models, CatalogCache(store, 0),
                              TrendingCache(store, settings.trending_half_life_days, settings.training.event_weights,
                                            settings.trending_ttl_seconds),
                              settings.history_limit, cache_seconds=30, clock=lambda: now[0])

    def related(product: int, at: float):
        now[0] = at
        try:
            return recommender.recommend(RecommendRequest.from_query(
                {"shop": SHOP, "intent": "related", "product_id": str(product), "n": "3"})).items
        except ShopNotInstalled:
            return "not installed"

    def personal(at: float):
        now[0] = at
        with pytest.raises(ShopNotInstalled):
            recommender.recommend(RecommendRequest.from_query({"shop": SHOP, "customer_id": "1000", "n": "3"}))

    # Act and assert: the store says "installed" at t=0, then the shop uninstalls
    assert related(101, 0) != "not installed"
    store.set_shop_installed(SHOP, False)
    made_late = related(102, 29)  # inside the window: made without asking, cached only until t=30
    assert made_late != "not installed" and related(102, 29.9) == made_late
    assert related(102, 30.5) == related(101, 31) == "not installed"

    # The shop again, then a shopper's answer finds it uninstalled: the window closes at once
    store.set_shop_installed(SHOP, True)
    kept = related(103, 100)
    store.set_shop_installed(SHOP, False)
    personal(101)
    assert related(104, 102) == "not installed"
    assert related(103, 102) == kept  # cached before, until t=130
    assert related(103, 131) == "not installed"
    store.close()


def test_once_its_time_is_up_a_cached_answer_of_an_uninstalled_shop_is_refused(app_client, monkeypatch,
                                                                               shopify_fixture):
    # Arrange: answers kept 0.2 s
    monkeypatch.setenv("ANSWER_CACHE_SECONDS", "0.2")
    monkeypatch.setenv("ALS_FACTORS", "2")
    for order in planted_orders():
        post_webhook(app_client, "orders/create", order)
    app_client.post("/train", headers=AUTH)
    assert app_client.get(RELATED).status_code == 200
    post_webhook(app_client, "app/uninstalled", json.loads(shopify_fixture("app_uninstalled")))

    # Act
    time.sleep(0.25)
    response = app_client.get(RELATED)

    # Assert
    assert (response.status_code, response.json["error"]) == (404, "shop_not_installed")


def test_a_shop_that_never_installed_gets_a_404_for_every_intent_even_with_a_model_published(app_client, tmp_path):
    # Arrange: another shop's model copied under this shop's name in the model store; this shop sent nothing
    from recommender.model_store import LocalModelStore

    for order in planted_orders():
        post_webhook(app_client, "orders/create", order)
    trained = app_client.post("/train", headers=AUTH).json["trained"][0]
    models = LocalModelStore(tmp_path / "models")
    stranger = "stranger.myshopify.com"
    models.publish(stranger, models.load(models.latest(SHOP)))

    # Act
    answers = [app_client.get(f"/recommend?shop={stranger}&n=3&{query}")
               for query in ("intent=related&product_id=101", "intent=complementary&product_ids=101", "intent=trending")]

    # Assert
    assert trained["shop"] == SHOP
    assert [(r.status_code, r.json["error"]) for r in answers] == [(404, "shop_not_installed")] * 3


def test_a_cached_answer_waits_for_no_round_trip_to_postgresql(app_client, monkeypatch):
    # Arrange: the planted shop stored and trained on PostgreSQL, then a new instance whose store is 50 ms away
    from tests.conftest import instance_counting_round_trips

    with temporary_schema() as url:
        monkeypatch.setenv("EVENT_STORE_URL", url)
        monkeypatch.setenv("ANSWER_CACHE_SECONDS", "3600")
        monkeypatch.setenv("ALS_FACTORS", "2")
        for order in planted_orders():
            post_webhook(app_client, "orders/create", order)
        assert app_client.post("/train", headers=AUTH).status_code == 200
        with instance_counting_round_trips(monkeypatch, url) as (instance, relay):
            answers, turns = [], []

            # Act
            for _ in range(3):
                relay.reset()
                answers.append(instance.get(RELATED))
                turns.append(relay.turns)

    # Assert: the first answer asked the store (the shop's check, the catalog); the next two did not
    assert [r.status_code for r in answers] == [200] * 3
    assert answers[1].json["recommendations"] == answers[2].json["recommendations"] == \
        answers[0].json["recommendations"] != []
    assert turns[0] >= 1 and turns[1:] == [0, 0], turns


def test_a_full_answer_cache_gives_the_cyclic_collector_nothing_to_walk():
    # Arrange: 2,000 related answers of ten items each, as `Recommender` caches them
    cache = AnswerCache(ttl_seconds=60, clock=lambda: 5.0)
    answers = {}
    for k in range(2000):
        request = RecommendRequest.from_query({"shop": SHOP, "intent": "related", "product_id": str(k + 1)})
        items = tuple(RecommendedItem(str(10_000 + k * 10 + i), 1.0 - i / 10, "related", str(k + 1), f"Title {i}",
                                      f"handle-{i}", 9.5, None, True, "Tea", "Leaf Co") for i in range(10))
        answers[request] = RecommendResponse(f"id-{k}", "related", "related", None, None, "v1", items)
    gc.collect()
    tracked_before = len(gc.get_objects())

    # Act
    for request, answer in answers.items():
        cache.put(request, answer)
    gc.collect()
    gc.collect()  # each pass stops tracking one level of tuples inside tuples
    tracked_after = len(gc.get_objects())
    again = {request: cache.get(request, "v1", lambda: "new-id") for request in answers}

    # Assert: ~26,000 objects cached, none left for a full collection to walk; every answer comes back whole
    assert tracked_after - tracked_before < 10
    assert all(again[r] == answer._replace(recommendation_id="new-id") for r, answer in answers.items())
    assert all(type(item) is RecommendedItem for answer in again.values() for item in answer.items)
    assert cache.get(next(iter(answers)), "v2", lambda: "x") is None  # another model version: not served


def test_a_full_answer_cache_keeps_its_fresh_answers_and_drops_the_expired_ones():
    # Arrange: room for 10 answers, kept 60 s; 6 stored at t=0, 3 at t=50
    now = [0.0]
    cache = AnswerCache(ttl_seconds=60, max_entries=10, clock=lambda: now[0])
    requests = [RecommendRequest.from_query({"shop": SHOP, "intent": "related", "product_id": str(k + 1)})
                for k in range(30)]

    def answer(k: int) -> RecommendResponse:
        return RecommendResponse(f"id-{k}", "related", "related", None, None, "v1",
                                 (RecommendedItem(str(100 + k), 1.0, "related", str(k + 1)),))

    for k in range(6):
        cache.put(requests[k], answer(k))
    now[0] = 50.0
    for k in range(6, 10):
        cache.put(requests[k], answer(k))

    # Act: the cache is full at t=61: the six answers from t=0 have expired
    now[0] = 61.0
    cache.put(requests[10], answer(10))

    # Assert: the four fresh answers and the new one are served
    served = {k for k in range(11) if cache.get(requests[k], "v1", lambda: "new") is not None}
    assert served == {6, 7, 8, 9, 10}

    # Act: five more fit (the expired ones are gone, not only stale); full again at t=62 with nothing expired,
    # more than half would stay, so the cache starts over
    for k in range(11, 16):
        cache.put(requests[k], answer(k))
    now[0] = 62.0
    cache.put(requests[16], answer(16))

    # Assert
    assert {k for k in range(17) if cache.get(requests[k], "v1", lambda: "new") is not None} == {16}
