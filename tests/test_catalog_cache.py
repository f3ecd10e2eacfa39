"""The catalog snapshot an instance keeps per shop: what is not for sale, and the cards of answered products."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from recommender import catalog as catalog_module
from recommender.artifact import ItemIds
from recommender.catalog import CatalogCache, CatalogSnapshot
from recommender.changes import ChangeSet, Delivery
from recommender.events import CatalogProduct, CatalogVariant
from recommender.store import ProductCard, CatalogState
from tests.conftest import SHOP

T0 = datetime(2026, 10, 1, tzinfo=timezone.utc)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def put_products(store, webhook_id: str, *products: tuple[str, str, int]) -> None:
    """(product id, title, units in stock) rows, as a products/update delivery writes them (each later than the last)."""
    at = T0 + timedelta(minutes=int(webhook_id.split("-")[1]))
    store.apply(Delivery(SHOP, webhook_id, "products/update"), ChangeSet(upsert_products=tuple(
        CatalogProduct(SHOP, pid, title=title, handle=pid, price=5.0, published_at=T0, updated_at=at,
                       variants=(CatalogVariant(f"{pid}-v", tracked=True, inventory_quantity=units),))
        for pid, title, units in products)))


def titles(cards: dict[str, tuple]) -> dict[str, tuple[str, bool]]:
    return {pid: (ProductCard(*card).title, ProductCard(*card).available) for pid, card in cards.items()}


def test_cards_are_read_once_per_snapshot_and_again_when_it_expires(store):
    # Arrange
    put_products(store, "wh-1", ("10", "Kettle", 3), ("11", "Scale", 0))
    clock = Clock()
    cache = CatalogCache(store, ttl_seconds=30, clock=clock)
    first = cache.get(SHOP)
    before = first.cards(["10", "11", "12"])  # 12 has no catalog row yet

    # Act: the catalog changes while the snapshot is fresh, then after it expires
    put_products(store, "wh-2", ("10", "Gooseneck kettle", 0), ("12", "Grinder", 1))
    clock.now += 29
    during = cache.get(SHOP).cards(["12", "10"])
    clock.now += 1
    after = cache.get(SHOP).cards(["10", "11", "12"])

    # Assert: within the TTL the snapshot answers from what it read (a missing row included), then reads anew
    assert titles(before) == {
        "10": ("Kettle", True), "11": ("Scale", False)}
    assert cache.get(SHOP) is not first
    assert titles(during) == {"10": ("Kettle", True)}
    assert titles(after) == {
        "10": ("Gooseneck kettle", False), "11": ("Scale", False), "12": ("Grinder", True)}
    assert cache.get(SHOP).unsellable == {"10", "11"}


def test_a_full_card_cache_starts_over_without_losing_the_cards_it_was_asked_for(store, monkeypatch):
    # Arrange: room for three cards
    monkeypatch.setattr(catalog_module, "CARDS_KEPT", 3)
    put_products(store, "wh-1", ("1", "One", 1), ("2", "Two", 1), ("3", "Three", 1), ("4", "Four", 1))
    snapshot = CatalogCache(store, ttl_seconds=30, clock=Clock()).get(SHOP)
    assert set(snapshot.cards(["1", "2"])) == {"1", "2"}

    # Act: "1" is kept, "3" and "4" are not: five would not fit, so the cache starts over
    put_products(store, "wh-2", ("1", "One, renamed", 1))
    overflowing = snapshot.cards(["1", "3", "4"])
    reread = snapshot.cards(["1"])

    # Assert: the kept card was still answered from the cache, and read again once the cache started over
    assert titles(overflowing) == {"1": ("One", True), "3": ("Three", True), "4": ("Four", True)}
    assert titles(reread) == {"1": ("One, renamed", True)}
    assert snapshot.cards(["3", "4"]).keys() == {"3", "4"}


def test_the_blocked_mask_marks_the_rows_not_for_sale_and_is_none_when_all_are_for_sale(store):
    # Arrange: a model of four products, one of them sold out
    ids = ItemIds(numbers=[10, 11, 12, 13])
    put_products(store, "wh-1", ("10", "Kettle", 3), ("11", "Scale", 0), ("12", "Grinder", 2))
    cache = CatalogCache(store, ttl_seconds=30, clock=Clock())

    # Act
    mask = cache.get(SHOP).blocked_mask(ids, "v1")
    put_products(store, "wh-2", ("11", "Scale", 4))
    restocked = CatalogCache(store, ttl_seconds=30, clock=Clock()).get(SHOP).blocked_mask(ids, "v1")

    # Assert: the sold-out row alone (13 has no catalog row: given the benefit of the doubt); once it is back in
    # stock nothing is blocked, and the answer says so with None (the readers then skip the mask)
    assert mask.tolist() == [False, True, False, False]
    assert restocked is None


def test_snapshots_of_shops_not_asked_within_the_ttl_are_let_go(store):
    # Arrange: the TTL is 30 s
    clock = Clock()
    cache = CatalogCache(store, ttl_seconds=30, clock=clock)
    shops = [f"shop-{k}.myshopify.com" for k in range(4)]

    # Act / Assert: shops asked at 0, 20 and 40 s; at 40 s shop 0's snapshot is 40 s old
    for shop in shops[:3]:
        cache.get(shop)
        clock.now += 20
    assert sorted(cache._snapshots) == shops[1:3]
    clock.now = 1100.0  # at 100 s, a fourth shop: the others' snapshots are 60 and 80 s old
    cache.get(shops[3])
    assert sorted(cache._snapshots) == [shops[3]]


def test_a_snapshot_read_earlier_never_replaces_a_newer_one(store):
    # Arrange: two snapshots put for one shop, the one read later put first (a slower read begun earlier ends last)
    clock = Clock()
    cache = CatalogCache(store, ttl_seconds=30, clock=clock)
    newer = cache.put(SHOP, CatalogState(frozenset({"10"}), frozenset()), taken_at=clock.now)
    older = cache.put(SHOP, CatalogState(frozenset({"11"}), frozenset()), taken_at=clock.now - 5)

    # Act
    clock.now += 10
    served = cache.get(SHOP)

    # Assert: the newer is kept and served (the older one still went to its own answer)
    assert served is newer and served.unsellable == {"10"} and older.unsellable == {"11"}


def test_the_on_hand_mask_adds_the_backordered_rows_and_is_the_plain_one_where_none_is():
    ids = ItemIds(numbers=[10, 11, 12])
    plain = CatalogSnapshot(frozenset({"11"}))
    with_backorders = CatalogSnapshot(frozenset({"11"}), backordered=frozenset({"12"}))

    assert plain.blocked_mask(ids, "v1", on_hand=True) is plain.blocked_mask(ids, "v1")  # built once, shared
    assert with_backorders.blocked_mask(ids, "v1", on_hand=True).tolist() == [False, True, True]
    assert with_backorders.blocked_mask(ids, "v1").tolist() == [False, True, False]
