"""What an answer reads when its shop's check and its catalog's snapshot are both due (a quiet shop's answers): both
in one read, the snapshot then serving that answer and the next ones within its TTL; nothing kept for a shop that
is not installed."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from recommender.artifact import ModelArtifact
from recommender.catalog import CatalogCache
from recommender.changes import ChangeSet, Delivery, Event
from recommender.errors import ShopNotInstalled
from recommender.events import CatalogProduct, CatalogVariant, EventKind
from recommender.intents import Recommender, RecommendRequest
from recommender.model_store import LocalModelStore
from recommender.serving import ModelHolder
from recommender.store import SQLiteEventStore
from recommender.trending import TrendingCache
from tests.conftest import SHOP

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
READS = ("is_shop_installed", "installed_with_unsellable", "installed_with_histories",
         "installed_with_histories_and_unsellable", "catalog_state", "unsellable_product_ids")
# The check and the snapshot read together, as SQLite reads them (one after the other, nested)
SNAPSHOT_WITH_CHECK = ["installed_with_unsellable", "is_shop_installed", "catalog_state", "unsellable_product_ids"]


class CountingStore(SQLiteEventStore):
    """The real SQLite store, which also notes each read an answer makes of the shop's state (nested ones too)."""

    def __init__(self, path):
        super().__init__(path)
        self.reads: list[str] = []

    def __getattribute__(self, name):
        found = super().__getattribute__(name)
        if name in READS:
            super().__getattribute__("reads").append(name)
        return found


@pytest.fixture
def quiet(tmp_path):
    yield from quiet_shop(tmp_path, catalog_ttl=30)


def quiet_shop(tmp_path, catalog_ttl: float):
    """A Recommender on a shop of four products (13 sold out), its model published, the check asked every answer."""
    store = CountingStore(tmp_path / "events.sqlite3")
    store.apply(Delivery(SHOP, "wh-1", "products/create"), ChangeSet(upsert_products=tuple(
        CatalogProduct(SHOP, pid, title=pid, published_at=T0,
                       variants=(CatalogVariant(f"{pid}-v", tracked=True, inventory_quantity=0 if pid == "13" else 5),))
        for pid in ("10", "11", "12", "13"))))
    models = LocalModelStore(tmp_path / "models")
    models.publish(SHOP, ModelArtifact.build(["10", "11", "12", "13"], np.array([[1, 0], [1, .1], [1, .2], [1, .3]],
                                                                                dtype=np.float32),
                                             np.ones(4, dtype=np.float32), 0.1, 2.0, {"version": "v1"}))
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    recommender = Recommender(store, ModelHolder(models), CatalogCache(store, catalog_ttl, clock=clock),
                              TrendingCache(store, 7.0, {EventKind.PURCHASE: 10.0}, 300), 20, cache_seconds=0,
                              clock=clock)
    yield store, recommender, now
    store.close()


def related(recommender, shop: str = SHOP) -> list[str]:
    answer = recommender.recommend(RecommendRequest.from_query({"shop": shop, "intent": "related", "product_id": "10",
                                                                "n": "5"}))
    return [item.product_id for item in answer.items]


def test_the_check_and_the_snapshot_are_read_together_and_the_snapshot_serves_its_ttl(quiet):
    store, recommender, now = quiet

    first = related(recommender)
    reads_first = list(store.reads)
    store.apply(Delivery(SHOP, "wh-2", "products/delete"), ChangeSet(delete_product_ids=("11",)))
    store.reads.clear()
    now[0] = 29.0
    within = related(recommender)
    reads_within = list(store.reads)
    store.reads.clear()
    now[0] = 30.0
    after = related(recommender)

    # 13 is sold out from the start; 11's deletion is seen once the snapshot read with the first check expires
    assert first == within and set(first) == {"11", "12"}
    assert reads_first == SNAPSHOT_WITH_CHECK
    assert reads_within == ["is_shop_installed"]
    assert after == ["12"] and store.reads == SNAPSHOT_WITH_CHECK


def test_a_shopper_on_a_quiet_shop_reads_their_history_the_check_and_the_snapshot_together(quiet):
    store, recommender, now = quiet
    store.add_events([Event(kind=EventKind.PURCHASE, shop=SHOP, product_id="10", occurred_at=T0, customer_id="1001",
                            dedupe_key="a")])

    answer = recommender.recommend(RecommendRequest.from_query({"shop": SHOP, "customer_id": "1001", "n": "5"}))

    assert store.reads[0] == "installed_with_histories_and_unsellable"
    assert "13" not in [item.product_id for item in answer.items]


def test_for_a_shop_not_installed_nothing_is_kept_and_what_it_does_not_sell_is_not_read(quiet):
    store, recommender, now = quiet
    other = "never-installed.myshopify.com"

    with pytest.raises(ShopNotInstalled):
        related(recommender, other)

    assert store.reads == ["installed_with_unsellable", "is_shop_installed"]
    assert recommender._catalog.due(other)  # no snapshot kept


def test_with_no_catalog_ttl_the_snapshot_read_with_the_check_serves_that_answer_alone(tmp_path):
    shop = quiet_shop(tmp_path, catalog_ttl=0)
    store, recommender, now = next(shop)

    first = related(recommender)
    reads_first = list(store.reads)
    store.apply(Delivery(SHOP, "wh-2", "products/delete"), ChangeSet(delete_product_ids=("11",)))
    store.reads.clear()
    second = related(recommender)

    # each answer read the snapshot once, with its check (not again after it), and the next answer sees the deletion
    assert reads_first == store.reads == SNAPSHOT_WITH_CHECK
    assert set(first) == {"11", "12"} and second == ["12"]
    shop.close()
