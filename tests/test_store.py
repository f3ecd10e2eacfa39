"""The event store contract, run against every backend; then what only SQLite has.

`any_store` is a real SQLite file in tmp_path and, when TEST_POSTGRES_URL is set, a real
PostgreSQL store in a fresh schema (tests/postgres_schema.py); every contract test runs on both.
"""

import contextlib
import json
import random
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import pytest

from recommender.errors import StoreError
from recommender.changes import ChangeSet, Delivery, Event, IdentityLink, InventoryLevel, RefundLine
from recommender.events import HIDDEN_REASONS, CatalogProduct, CatalogVariant, EventKind, MerchantPicks, order_line_key
from recommender.store import (
    EVENT_EXPORT_COLUMNS, SHOP_TABLES, SQLITE_MIGRATIONS, ActivityBucket, EventStore, Interaction, ProductCard,
    QueuedShop, Redactions, SQLiteEventStore, open_event_store,
)
from recommender.store import RecommendationClick, RecommendationSignal
from tests.conftest import SHOP
from tests.postgres_schema import run, temporary_schema

OTHER_SHOP = "other-shop.myshopify.com"
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)


def event(product_id="p1", customer_id="c1", kind=EventKind.VIEW, at=T0, shop=SHOP, dedupe_key=None, **extra):
    return Event(kind=kind, shop=shop, product_id=product_id, occurred_at=at, customer_id=customer_id,
                 dedupe_key=dedupe_key, **extra)


def purchase(order_id, line_id, product_id, customer_id="c1", quantity=1, weight_factor=1.0, shop=SHOP, **extra):
    return event(product_id, customer_id=customer_id, kind=EventKind.PURCHASE, shop=shop, order_id=order_id,
                 quantity=quantity, dedupe_key=order_line_key(order_id, line_id), weight_factor=weight_factor, **extra)


def cart_line(token, product_id, at=T0, shop=SHOP):
    return event(product_id, customer_id=None, anonymous_id=token, kind=EventKind.ADD_TO_CART, at=at, shop=shop,
                 dedupe_key=f"cart:{token}:product:{product_id}")


def signal(event_id, product_id, kind="view", position=0, at=T0, shop=SHOP, client="px-1", intent="related",
           answer="0" * 32):
    """A storefront's view of an answer's product, or its click on one (attribution's `recommendation_events`)."""
    return RecommendationSignal(shop, kind, event_id, client, answer, intent, product_id, position, at)


def delivery(webhook_id, shop=SHOP, topic="orders/create", received_at=None):
    extra = {"received_at": received_at} if received_at else {}
    return Delivery(shop=shop, webhook_id=webhook_id, topic=topic, **extra)


def in_threads(count: int, work: Callable[[int], None]) -> None:
    """Run work(0) … work(count - 1) on their own threads, released together; re-raise the first failure."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run_one(index):
        try:
            barrier.wait()
            work(index)
        except BaseException as exc:  # re-raised below, on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run_one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


# --- the backends ----------------------------------------------------------------------------


@dataclass
class Backend:
    """One database for a test: its URL, plus raw access through a connection of its own."""

    name: str
    url: str

    def open(self) -> EventStore:
        return open_event_store(self.url)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """One statement with `?` placeholders, outside the store."""
        if self.name == "sqlite":
            conn = sqlite3.connect(self.url.removeprefix("sqlite:///"))
            try:
                with conn:
                    return conn.execute(sql, params).fetchall()
            finally:
                conn.close()
        return run(self.url, sql.replace("?", "%s"), params)

    def poison(self, table: str, column: str, value: str, message: str) -> None:
        """A real trigger that aborts inserting the row whose `column` is `value`."""
        if self.name == "sqlite":
            self.query(f"CREATE TRIGGER poison BEFORE INSERT ON {table} WHEN NEW.{column} = '{value}'"
                       f" BEGIN SELECT RAISE(ABORT, '{message}'); END")
        else:
            self.query(f"CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                       f" IF NEW.{column} = '{value}' THEN RAISE EXCEPTION '{message}'; END IF; RETURN NEW; END $$")
            self.query(f"CREATE TRIGGER poison BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION poison()")

    def cure(self, table: str) -> None:
        self.query("DROP TRIGGER poison" if self.name == "sqlite" else f"DROP TRIGGER poison ON {table}")

    def schema_version(self) -> int:
        if self.name == "sqlite":
            return self.query("PRAGMA user_version")[0][0]
        [(latest, applied)] = self.query("SELECT max(version), count(*) FROM schema_migrations")
        assert applied == latest, "every migration recorded once"
        return latest


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    if request.param == "sqlite":
        yield Backend("sqlite", f"sqlite:///{tmp_path}/events.sqlite3")
    else:
        with temporary_schema() as url:  # skips without TEST_POSTGRES_URL
            yield Backend("postgresql", url)


@pytest.fixture
def any_store(backend):
    store = backend.open()
    yield store
    store.close()


def migrations_of(backend: Backend) -> int:
    if backend.name == "sqlite":
        return len(SQLITE_MIGRATIONS)
    from recommender.store_postgres import POSTGRES_MIGRATIONS

    return len(POSTGRES_MIGRATIONS)


# --- schema ----------------------------------------------------------------------------------


def test_open_creates_the_schema_and_reopening_is_idempotent(backend):
    # Arrange
    first = backend.open()
    first.add_events([event(dedupe_key="k1")])
    first.close()

    # Act
    second, third = backend.open(), backend.open()

    # Assert
    try:
        assert backend.schema_version() == migrations_of(backend)
        assert second.count_events() == 1
        assert third.interactions(SHOP) == [Interaction("c:c1", "p1", EventKind.VIEW, T0)]
    finally:
        second.close()
        third.close()


def test_instances_opening_a_new_database_at_once_migrate_it_once(backend):
    # Arrange
    stores: list[EventStore] = [None] * 6

    # Act
    def open_and_write(i):
        stores[i] = backend.open()
        stores[i].add_events([event(f"p{i}", dedupe_key=f"k{i}")])

    in_threads(6, open_and_write)

    # Assert
    try:
        assert backend.schema_version() == migrations_of(backend)
        assert stores[0].count_events() == 6
    finally:
        for store in stores:
            store.close()


# --- queries ---------------------------------------------------------------------------------


def test_history_is_newest_first_and_honours_limit(any_store):
    # Arrange: inserted out of order, with offsets, so ordering must come from UTC time, not insertion
    plus_five = timezone(timedelta(hours=5))
    any_store.add_events([
        event("p-mid", at=T0, dedupe_key="a"),
        event("p-newest", at=datetime(2024, 3, 1, 20, 0, tzinfo=plus_five), dedupe_key="b"),  # 15:00 UTC
        event("p-oldest", at=T0 - timedelta(days=1), dedupe_key="c"),
        event("p-newer", at=datetime(2024, 3, 1, 18, 0, tzinfo=plus_five), dedupe_key="d"),  # 13:00 UTC
        event("p-someone-else", customer_id="c2", at=T0 + timedelta(days=9), dedupe_key="e"),
    ])

    # Act
    everything = any_store.history(SHOP, "c:c1", 10)
    latest_two = any_store.history(SHOP, "c:c1", 2)

    # Assert
    assert [i.product_id for i in everything] == ["p-newest", "p-newer", "p-mid", "p-oldest"]
    assert everything[0].occurred_at == datetime(2024, 3, 1, 15, 0, tzinfo=timezone.utc)
    assert everything[0].occurred_at.utcoffset() == timedelta(0)
    assert [i.product_id for i in latest_two] == ["p-newest", "p-newer"]
    assert any_store.history(SHOP, "c:nobody", 10) == []


def test_the_shop_check_and_the_histories_read_together_equal_each_read_alone(any_store):
    # Arrange: two shoppers' events in an installed shop, and a shop that never installed the app
    any_store.add_events([event("p1", dedupe_key="a"), event("p2", at=T0 + timedelta(hours=1), dedupe_key="b"),
                          event("p3", customer_id="c2", dedupe_key="c")])
    any_store.set_shop_installed(SHOP, True)

    # Act
    installed, histories = any_store.installed_with_histories(SHOP, ["c:c1", "c:nobody", "c:c2"], 10)
    none_asked = any_store.installed_with_histories(SHOP, [], 10)
    nobody_first = any_store.installed_with_histories(SHOP, ["c:nobody", "c:c1"], 1)
    elsewhere = any_store.installed_with_histories(OTHER_SHOP, ["c:c1"], 10)
    any_store.set_shop_installed(SHOP, False)
    uninstalled = any_store.installed_with_histories(SHOP, ["c:c1"], 10)
    uninstalled_nobody = any_store.installed_with_histories(SHOP, ["c:nobody"], 10)

    # Assert: whether or not the first shopper has events, and the answer is "not installed" for a shop that
    # uninstalled however many events its shoppers have
    assert installed is True
    assert histories == [any_store.history(SHOP, key, 10) for key in ("c:c1", "c:nobody", "c:c2")]
    assert [[i.product_id for i in h] for h in histories] == [["p2", "p1"], [], ["p3"]]
    assert none_asked == (True, [])
    assert nobody_first == (True, [[], any_store.history(SHOP, "c:c1", 1)])
    assert elsewhere == (False, [])
    assert uninstalled == (False, []) and uninstalled_nobody == (False, [])


def test_history_breaks_ties_by_latest_insert(any_store):
    # Arrange
    any_store.add_events([event("first", dedupe_key="1"), event("second", dedupe_key="2")])

    # Act
    history = any_store.history(SHOP, "c:c1", 1)

    # Assert
    assert history == [Interaction("c:c1", "second", EventKind.VIEW, T0)]


def test_interactions_never_mix_two_shops_with_the_same_product_ids(any_store):
    # Arrange
    any_store.add_events([
        event("p1", customer_id="alice", kind=EventKind.PURCHASE, shop=SHOP, dedupe_key="k"),
        event("p2", customer_id="alice", kind=EventKind.VIEW, shop=SHOP, dedupe_key="k2"),
        event("p1", customer_id="bob", kind=EventKind.ADD_TO_CART, shop=OTHER_SHOP, dedupe_key="k"),
    ])

    # Act
    mine = any_store.interactions(SHOP)
    theirs = any_store.interactions(OTHER_SHOP)

    # Assert
    assert mine == [Interaction("c:alice", "p1", EventKind.PURCHASE, T0),
                    Interaction("c:alice", "p2", EventKind.VIEW, T0)]
    assert theirs == [Interaction("c:bob", "p1", EventKind.ADD_TO_CART, T0)]
    assert any_store.shops() == [OTHER_SHOP, SHOP]
    assert any_store.history(OTHER_SHOP, "c:alice", 10) == []


def test_same_dedupe_key_is_stored_once_per_shop(any_store):
    # Act
    first = any_store.add_events([event(dedupe_key="order:1:line:1"), event(dedupe_key="order:1:line:1")])
    second = any_store.add_events([event(dedupe_key="order:1:line:1")])
    other_shop = any_store.add_events([event(dedupe_key="order:1:line:1", shop=OTHER_SHOP)])
    no_key = any_store.add_events([event(), event()])

    # Assert
    assert (first, second, other_shop, no_key) == (1, 0, 1, 2)  # NULL keys never collide
    assert (any_store.count_events(SHOP), any_store.count_events(OTHER_SHOP)) == (3, 1)


def test_a_dedupe_key_seen_again_keeps_the_lowest_weight_factor(any_store):
    # Arrange
    any_store.add_events([purchase("1", "1", "p1", weight_factor=1.0), purchase("1", "2", "p2", weight_factor=0.5)])

    # Act: a re-delivery of line 1 as cancelled, of line 2 at full weight
    any_store.add_events([purchase("1", "1", "p1", weight_factor=0.0), purchase("1", "2", "p2", weight_factor=1.0)])
    any_store.add_events([purchase("1", "1", "p1", weight_factor=1.0)])

    # Assert: voided line 1 is gone from every read, line 2 stays at 0.5
    assert [(i.product_id, i.weight_factor) for i in any_store.interactions(SHOP)] == [("p2", 0.5)]
    assert [i.product_id for i in any_store.history(SHOP, "c:c1", 10)] == ["p2"]
    assert any_store.count_events() == 2


def test_products_excludes_deleted_and_reads_variants_back(any_store):
    # Arrange
    shirt = CatalogProduct(SHOP, "10", title="Shirt", handle="shirt", price=19.99, published_at=T0,
                           image_url="https://cdn.example/shirt.jpg", product_type="Tops", vendor="Acme",
                           updated_at=T0, variants=(CatalogVariant("101", "9001", 0, tracked=True),
                                                    CatalogVariant("102", None, 4, tracked=True, continue_selling=True)))
    mug = CatalogProduct(SHOP, "20", title="Mug", handle="mug", status="draft")
    any_store.apply(delivery("wh-1", topic="products/create"), ChangeSet(upsert_products=(shirt, mug)))
    any_store.apply(delivery("wh-x", shop=OTHER_SHOP), ChangeSet(upsert_products=(
        CatalogProduct(OTHER_SHOP, "30", title="Elsewhere"),)))

    # Act
    any_store.apply(delivery("wh-2", topic="products/delete"), ChangeSet(delete_product_ids=("20", "never-seen")))
    products = any_store.products(SHOP)

    # Assert
    assert products == {"10": shirt}
    assert products["10"].updated_at.utcoffset() == timedelta(0)
    assert products["10"].available is True
    assert any_store.deleted_product_ids(SHOP) == {"20", "never-seen"}
    assert list(any_store.products(OTHER_SHOP)) == ["30"]


def backordered(pid: str) -> CatalogProduct:
    """For sale with nothing on hand: tracked at 0, selling past zero."""
    return CatalogProduct(SHOP, pid, title=pid, published_at=T0, variants=(
        CatalogVariant(f"{pid}-1", tracked=True, inventory_quantity=0, continue_selling=True),))


def test_a_shops_check_and_what_it_does_not_sell_are_read_together(any_store):
    # Arrange: one product sold out, one backordered; the shop installed by its delivery, another shop never
    any_store.apply(delivery("wh-1", topic="products/create"), ChangeSet(upsert_products=(
        CatalogProduct(SHOP, "gone", title="gone", published_at=T0,
                       variants=(CatalogVariant("1", tracked=True, inventory_quantity=0),)),
        CatalogProduct(SHOP, "here", title="here", published_at=T0, variants=(CatalogVariant("2"),),
                       picks=MerchantPicks(related=("later", "gone"))),
        backordered("later"))))
    picked = {"here": MerchantPicks(related=("later", "gone"))}

    # Act / Assert: what the two reads on their own say
    assert any_store.catalog_state(SHOP) == ({"gone"}, {"later"}, picked)
    assert any_store.installed_with_unsellable(SHOP) == (True, ({"gone"}, {"later"}, picked))
    assert any_store.installed_with_unsellable(OTHER_SHOP) == (False, (set(), set(), {}))
    any_store.set_shop_installed(SHOP, False)
    # what it does not sell: not read for nothing
    assert any_store.installed_with_unsellable(SHOP) == (False, (set(), set(), {}))


def test_a_shoppers_history_the_shops_check_and_what_it_does_not_sell_are_read_together(any_store):
    # Arrange: a sold-out product, a backordered one and a customer who bought the third one
    any_store.apply(delivery("wh-1", topic="products/create"), ChangeSet(upsert_products=(
        CatalogProduct(SHOP, "gone", title="gone", published_at=T0,
                       variants=(CatalogVariant("1", tracked=True, inventory_quantity=0),)),
        CatalogProduct(SHOP, "here", title="here", published_at=T0, variants=(CatalogVariant("2"),)),
        backordered("later"))))
    any_store.add_events([event("here", dedupe_key="a")])

    # Act
    installed, histories, sale = any_store.installed_with_histories_and_unsellable(
        SHOP, ["c:c1", "c:nobody"], 10)
    none_yet = any_store.installed_with_histories_and_unsellable(SHOP, ["c:nobody"], 10)
    any_store.set_shop_installed(SHOP, False)
    uninstalled = any_store.installed_with_histories_and_unsellable(SHOP, ["c:c1"], 10)

    # Assert: what installed_with_histories and unsellable_product_ids say on their own
    assert installed and [[event.product_id for event in history] for history in histories] == [["here"], []]
    assert sale == ({"gone"}, {"later"}, {})
    assert none_yet == (True, [[]], ({"gone"}, {"later"}, {}))
    assert uninstalled == (False, [], (set(), set(), {}))


def test_a_products_picks_stand_until_an_update_names_others_or_none(any_store):
    # Arrange: product 40's picks stored, then updates that name none (None: the payload carried no metafields),
    # others, and none at all (MerchantPicks(): it carried metafields without the picks), each one later
    def version(day: int, picks: MerchantPicks | None) -> ChangeSet:
        return ChangeSet(upsert_products=(CatalogProduct(SHOP, "40", published_at=T0, picks=picks,
                                                         updated_at=T0 + timedelta(days=day)),))

    # Act
    seen = []
    for day, picks in enumerate((MerchantPicks(("41",), ("42", "43")), None, MerchantPicks((), ("43",)),
                                 MerchantPicks())):
        any_store.apply(delivery(f"wh-{day}", topic="products/update"), version(day, picks))
        seen.append((any_store.products(SHOP)["40"].picks, any_store.catalog_state(SHOP).picks))

    # Assert
    first, later = MerchantPicks(("41",), ("42", "43")), MerchantPicks((), ("43",))
    assert seen == [(first, {"40": first}), (first, {"40": first}), (later, {"40": later}), (None, {})]


def test_unsellable_products_are_computed_in_the_store(any_store):
    # Arrange: one product per reason, and three that are for sale
    def product(pid, status="active", published=True, *variants):
        return CatalogProduct(SHOP, pid, title=pid, status=status, published_at=T0 if published else None,
                              variants=tuple(variants))

    catalog = (
        product("ok-untracked", "active", True, CatalogVariant("1")),
        product("ok-one-in-stock", "active", True, CatalogVariant("2", tracked=True, inventory_quantity=0),
                CatalogVariant("3", tracked=True, inventory_quantity=2)),
        product("ok-sells-past-zero", "active", True, CatalogVariant("4", tracked=True, inventory_quantity=-1,
                                                                     continue_selling=True)),
        product("draft", "draft", True),
        product("archived", "archived", True),
        product("unlisted", "unlisted", True),  # Admin API 2025-10's status: kept out of Shopify's recommendations
        product("unpublished", "active", False),
        product("sold-out", "active", True, CatalogVariant("5", tracked=True, inventory_quantity=0),
                CatalogVariant("6", tracked=True, inventory_quantity=None)),
        product("to-delete"),
        *(product(reason, "active", True, CatalogVariant("7"))._replace(hidden=reason)
          for reason in HIDDEN_REASONS),  # for sale, but hidden
        product("ok-past-zero-and-in-stock", "active", True,
                CatalogVariant("8", tracked=True, inventory_quantity=0, continue_selling=True),
                CatalogVariant("9", tracked=True, inventory_quantity=3)),
        product("draft-past-zero", "draft", True,
                CatalogVariant("10", tracked=True, inventory_quantity=0, continue_selling=True)),
    )
    any_store.apply(delivery("wh-1", topic="products/create"), ChangeSet(upsert_products=catalog))
    any_store.apply(delivery("wh-2", topic="products/delete"), ChangeSet(delete_product_ids=("to-delete",)))

    # Act
    unsellable = any_store.unsellable_product_ids(SHOP)
    state = any_store.catalog_state(SHOP)

    # Assert: of those for sale, only the one selling past zero with nothing on hand is backordered
    assert unsellable == {"draft", "archived", "unlisted", "unpublished", "sold-out", "to-delete", "gift_card", "tag",
                          "free", "draft-past-zero"}
    assert state[:2] == (unsellable, {"ok-sells-past-zero"})
    assert unsellable == {p for p, row in any_store.products(SHOP).items() if not row.available
                          or row.status != "active" or row.published_at is None or row.hidden} | {"to-delete"}
    assert any_store.unsellable_product_ids(OTHER_SHOP) == set()


def test_a_later_update_hides_a_product_and_the_next_shows_it_again_but_a_gift_card_stays_one(any_store):
    # Arrange: a product for sale, then hidden by its tag, shown again, free, then known as a gift card (a GraphQL
    # backfill), then updated by payloads that cannot tell a gift card (REST-shaped, as every webhook's), each
    # update later than the last
    def version(day: int, hidden: str | None) -> ChangeSet:
        return ChangeSet(upsert_products=(CatalogProduct(SHOP, "40", status="active", published_at=T0, hidden=hidden,
                                                         updated_at=T0 + timedelta(days=day)),))

    # Act
    seen = []
    for day, hidden in enumerate((None, "tag", None, "free", "gift_card", None, "tag")):
        any_store.apply(delivery(f"wh-{day}", topic="products/update"), version(day, hidden))
        seen.append((any_store.products(SHOP)["40"].hidden, any_store.unsellable_product_ids(SHOP)))

    # Assert
    assert seen == [(None, set()), ("tag", {"40"}), (None, set()), ("free", {"40"}), ("gift_card", {"40"}),
                    ("gift_card", {"40"}), ("gift_card", {"40"})]


def test_an_orders_gift_card_line_hides_its_product_one_delivery_or_a_page_of_them(any_store):
    # Arrange: "10" in the catalog and for sale; "11" not synced yet
    any_store.apply(delivery("wh-p", topic="products/create"), ChangeSet(upsert_products=(
        CatalogProduct(SHOP, "10", status="active", published_at=T0),)))

    def order(order_id: str, product_id: str) -> ChangeSet:
        line = Event(kind=EventKind.PURCHASE, shop=SHOP, product_id=product_id, occurred_at=T0, customer_id="c1",
                     order_id=order_id, dedupe_key=order_line_key(order_id, "1"), weight_factor=0.0)
        return ChangeSet(events=(line,), gift_card_product_ids=(product_id,))

    # Act: one delivery, then a page (a backfill's) with a plain order beside it
    one = any_store.apply(delivery("wh-o1"), order("o1", "10"))
    page = any_store.apply_many([(delivery("wh-o2"), order("o2", "11")),
                                 (delivery("wh-o3"), ChangeSet(events=(event("12", dedupe_key="o3"),)))])

    # Assert
    assert (one, page) == (1, [1, 1])
    assert any_store.unsellable_product_ids(SHOP) == {"10", "11"}
    assert {pid: row.hidden for pid, row in any_store.products(SHOP).items()} == {"10": "gift_card",
                                                                                  "11": "gift_card"}
    assert [i.product_id for i in any_store.interactions(SHOP)] == ["12"]


def test_product_cards_hold_what_an_answer_shows_in_one_statement(any_store):
    # Arrange: availability of every kind, a deleted product, and another shop's product of the same id
    def product(pid, *variants, **fields):
        return CatalogProduct(SHOP, pid, title=f"T{pid}", handle=f"h{pid}", price=float(len(pid)),
                              image_url=f"https://cdn.example/{pid}.jpg", product_type="Tea", vendor="Leaf Co",
                              published_at=T0, variants=tuple(variants), **fields)

    catalog = (
        product("no-variants"),
        product("untracked", CatalogVariant("1")),
        product("one-in-stock", CatalogVariant("2", tracked=True, inventory_quantity=0),
                CatalogVariant("3", tracked=True, inventory_quantity=2)),
        product("sells-past-zero", CatalogVariant("4", tracked=True, inventory_quantity=-1, continue_selling=True)),
        product("sold-out", CatalogVariant("5", tracked=True, inventory_quantity=0),
                CatalogVariant("6", tracked=True, inventory_quantity=None)),
        product("draft", status="draft"),
        product("gone"),
    )
    any_store.apply(delivery("wh-1", topic="products/create"), ChangeSet(upsert_products=catalog))
    any_store.apply(delivery("wh-2", topic="products/delete"), ChangeSet(delete_product_ids=("gone",)))
    any_store.apply(delivery("wh-x", shop=OTHER_SHOP), ChangeSet(upsert_products=(
        CatalogProduct(OTHER_SHOP, "sold-out", title="Elsewhere"),)))
    wanted = [p.product_id for p in catalog] + ["never-seen"]

    # Act
    cards = any_store.product_cards(SHOP, wanted)

    # Assert: the same fields as the full catalog rows, for the products not deleted, and "available" when for sale
    full = any_store.products(SHOP, wanted)
    assert set(cards) == set(full) == {p.product_id for p in catalog} - {"gone"}
    assert {pid: card.available for pid, card in cards.items()} == {
        "no-variants": True, "untracked": True, "one-in-stock": True, "sells-past-zero": True, "sold-out": False,
        "draft": False}
    for pid, card in cards.items():
        row = full[pid]
        for_sale = row.available and row.status == "active" and row.published_at is not None
        assert card == ProductCard(row.title, row.handle, row.price, row.image_url, for_sale,
                                   row.product_type, row.vendor)
    assert any_store.product_cards(SHOP, []) == {}
    assert any_store.product_cards(OTHER_SHOP, ["sold-out"])["sold-out"].title == "Elsewhere"


def test_products_can_be_read_for_a_few_ids_and_filtered_by_type_and_vendor(any_store):
    # Arrange
    rows = (CatalogProduct(SHOP, "1", title="A", product_type="Tea", vendor="Leaf Co"),
            CatalogProduct(SHOP, "2", title="B", product_type="tea", vendor="Other"),
            CatalogProduct(SHOP, "3", title="C", product_type="Coffee", vendor="Leaf Co"))
    any_store.apply(delivery("wh-1", topic="products/create"), ChangeSet(upsert_products=rows))

    # Act / Assert
    assert set(any_store.products(SHOP, ["1", "3", "404"])) == {"1", "3"}
    assert any_store.products(SHOP, []) == {}
    assert any_store.products_matching(SHOP, "TEA", None) == {"1", "2"}
    assert any_store.products_matching(SHOP, None, "leaf co") == {"1", "3"}
    assert any_store.products_matching(SHOP, "tea", "Leaf Co") == {"1"}


def test_product_update_replaces_its_variants(any_store, backend):
    # Arrange
    any_store.apply(delivery("wh-1"), ChangeSet(upsert_products=(
        CatalogProduct(SHOP, "10", title="Old", variants=(CatalogVariant("101"), CatalogVariant("102"))),)))

    # Act: 101 no longer named, 102 kept with new fields, 103 new
    any_store.apply(delivery("wh-2"), ChangeSet(upsert_products=(
        CatalogProduct(SHOP, "10", title="New", variants=(
            CatalogVariant("102", "i-102", 0, True, False),
            CatalogVariant("103", tracked=True, inventory_quantity=0))),)))

    # Assert
    product = any_store.products(SHOP)["10"]
    assert product.title == "New"
    assert product.variants == (CatalogVariant("102", "i-102", 0, True, False), CatalogVariant("103", None, 0, True, False))
    assert product.available is False
    assert any_store.unsellable_product_ids(SHOP) == {"10"}
    assert backend.query("SELECT COUNT(*) FROM variants") == [(2,)]


def test_an_older_product_update_is_ignored_and_a_deleted_product_stays_deleted(any_store):
    # Arrange
    newer = CatalogProduct(SHOP, "10", title="Newer", updated_at=T0 + timedelta(hours=1))
    older = CatalogProduct(SHOP, "10", title="Older", updated_at=T0)
    same_time = CatalogProduct(SHOP, "10", title="Same time", updated_at=T0 + timedelta(hours=1))

    # Act / Assert
    any_store.apply(delivery("wh-1", topic="products/update"), ChangeSet(upsert_products=(newer,)))
    any_store.apply(delivery("wh-2", topic="products/update"), ChangeSet(upsert_products=(older,)))
    assert any_store.products(SHOP)["10"].title == "Newer"
    any_store.apply(delivery("wh-3", topic="products/update"), ChangeSet(upsert_products=(same_time,)))
    assert any_store.products(SHOP)["10"].title == "Same time"

    any_store.apply(delivery("wh-4", topic="products/delete"), ChangeSet(delete_product_ids=("10",)))
    any_store.apply(delivery("wh-5", topic="products/update"), ChangeSet(upsert_products=(
        CatalogProduct(SHOP, "10", title="Revived", updated_at=T0 + timedelta(days=1)),)))
    assert any_store.products(SHOP) == {}
    assert any_store.deleted_product_ids(SHOP) == {"10"}


def test_apply_returns_none_for_a_webhook_id_seen_before(any_store):
    # Act
    first = any_store.apply(delivery("wh-1"), ChangeSet(events=(event(dedupe_key="a"), event(dedupe_key="b"))))
    again = any_store.apply(delivery("wh-1"), ChangeSet(events=(event(dedupe_key="c"),)))
    elsewhere = any_store.apply(delivery("wh-1", shop=OTHER_SHOP), ChangeSet(events=(event(dedupe_key="c"),)))

    # Assert
    assert (first, again, elsewhere) == (2, None, 1)
    assert (any_store.count_events(), any_store.count_deliveries()) == (3, 2)


def test_a_cancelled_order_stops_counting_everywhere(any_store):
    # Arrange
    any_store.add_events([purchase("1", "1", "p1"), purchase("1", "2", "p2"), purchase("2", "1", "p3"),
                          event("p1", order_id="1", dedupe_key="view-with-order")])

    # Act
    any_store.apply(delivery("wh-cancel", topic="orders/cancelled"), ChangeSet(void_order_ids=("1",)))

    # Assert: purchases of order 1 are void; the view and order 2 still count
    assert sorted(i.product_id for i in any_store.interactions(SHOP)) == ["p1", "p3"]
    assert [(b.product_id, b.kind) for b in any_store.activity_since(SHOP, T0 - timedelta(days=1))
            if b.kind is EventKind.PURCHASE] == [("p3", EventKind.PURCHASE)]
    assert any_store.count_events() == 4  # kept for the record


def test_one_products_activity_is_read_alone_as_it_is_among_the_shops(any_store):
    any_store.add_events([purchase("1", "1", "p1"), purchase("1", "2", "p2"), event("p1", dedupe_key="view-p1"),
                          event("p2", dedupe_key="view-p2")])

    every = any_store.activity_since(SHOP, T0 - timedelta(days=1))
    alone = any_store.activity_since(SHOP, T0 - timedelta(days=1), "p1")

    assert sorted(alone) == sorted(b for b in every if b.product_id == "p1")
    assert sorted(b.kind.value for b in alone) == ["purchase", "view"] and len(every) == 4


def test_a_refund_naming_one_line_twice_shrinks_it_by_both_parts(any_store):
    # Arrange: a line of 4 units; a refund of 1 + 1 of them (restocked to two locations), as Shopify sends it
    from webhooks.topics import TopicContext, order_created, refund_created

    order = {"id": 5, "created_at": "2026-11-20T10:00:00Z", "customer": {"id": 6},
             "line_items": [{"id": 500, "product_id": 7, "variant_id": 70, "quantity": 4, "price": "10.00"}]}
    any_store.apply(delivery("wh-order"), order_created(TopicContext(SHOP, "orders/create", "wh-order"), order))
    refund = {"id": 99, "order_id": 5, "refund_line_items": [{"line_item_id": 500, "quantity": 1, "location_id": 1},
                                                             {"line_item_id": 500, "quantity": 1, "location_id": 2}]}

    # Act
    changes = refund_created(TopicContext(SHOP, "refunds/create", "wh-refund"), refund)
    any_store.apply(delivery("wh-refund", topic="refunds/create"), changes)

    # Assert: 4 − 2 units left of the line's weight (0.75 when only the first part counted)
    [line] = changes.refunds
    assert (line.line_item_id, line.quantity) == ("500", 2)
    [event] = any_store.interactions(SHOP)
    assert event.weight_factor == pytest.approx(0.5)


def test_a_redelivered_cancellation_leaves_a_purchase_stored_after_the_first(any_store):
    # Arrange: order 1 bought and cancelled; then a purchase naming the order (a pixel's checkout_completed can)
    any_store.add_events([purchase("1", "1", "p1"), purchase("1", "2", "p2")])
    cancel = delivery("wh-cancel", topic="orders/cancelled"), ChangeSet(
        events=(purchase("1", "1", "p1", weight_factor=0.0),), void_order_ids=("1",))
    first = any_store.apply(*cancel)
    any_store.add_events([purchase("1", "3", "p3")])

    # Act
    again = any_store.apply(*cancel)

    # Assert: the first delivery voided both lines (one named, one not); its retry changed nothing
    assert (first, again) == (0, None)
    assert [i.product_id for i in any_store.interactions(SHOP)] == ["p3"]


def test_a_refund_line_shrinks_its_purchase_once(any_store):
    # Arrange
    any_store.add_events([purchase("1", "1", "p1", quantity=4), purchase("1", "2", "p2", quantity=1)])
    first = ChangeSet(refunds=(RefundLine("r1", "1", "1", 1),))
    second = ChangeSet(refunds=(RefundLine("r2", "1", "1", 2), RefundLine("r2", "1", "2", 5)))

    # Act
    any_store.apply(delivery("wh-r1", topic="refunds/create"), first)
    any_store.apply(delivery("wh-r1-again", topic="refunds/create"), first)  # same refund, new webhook id
    after_first = {i.product_id: i.weight_factor for i in any_store.interactions(SHOP)}
    any_store.apply(delivery("wh-r2", topic="refunds/create"), second)

    # Assert
    assert after_first == {"p1": pytest.approx(0.75), "p2": 1.0}
    assert {i.product_id: i.weight_factor for i in any_store.interactions(SHOP)} == {"p1": pytest.approx(0.25)}


# A refund can arrive before its order line is stored: orders/create still being retried, or an order placed before
# the install, refunded after it and then backfilled. The refund waits for its line (pending_refunds).

REFUND_OF_ONE_UNIT = {"id": 99, "order_id": 5, "refund_line_items": [{"line_item_id": 500, "quantity": 1}]}


def order_of_one_line(quantity: int, order_id: int = 5, customer_id: int = 6, refunds: tuple = ()) -> dict:
    """Order `order_id` in Shopify's shape: line `order_id * 100` of `quantity` units of product 7, and `refunds`
    (what the Admin API's orders.json carries)."""
    return {"id": order_id, "created_at": "2026-11-20T10:00:00Z", "updated_at": "2026-11-21T10:00:00Z",
            "customer": {"id": customer_id}, "refunds": list(refunds),
            "line_items": [{"id": order_id * 100, "product_id": 7, "variant_id": 70, "quantity": quantity,
                            "price": "10.00"}]}


def webhook_of(topic: str, payload: dict, webhook_id: str, received_at=None) -> tuple[Delivery, ChangeSet]:
    """A delivery of `topic` as the webhook handler translates it."""
    from webhooks.topics import TRANSLATORS, TopicContext

    return (delivery(webhook_id, topic=topic, received_at=received_at),
            TRANSLATORS[topic](TopicContext(SHOP, topic, webhook_id), payload))


def backfilled(order: dict) -> tuple[Delivery, ChangeSet]:
    """An order record as `python -m recommender backfill` stores it (its refunds with it)."""
    from webhooks.backfill import ORDERS_TOPIC, backfill_webhook_id, order_changes

    webhook_id = backfill_webhook_id("orders", order)
    return Delivery(SHOP, webhook_id, ORDERS_TOPIC), order_changes(SHOP, order, webhook_id)


def line_weights(store: EventStore, customer_id: str = "6") -> list[float]:
    """The weight factor of each stored event of the customer, voided ones (0) included."""
    return [row["weight_factor"] for row in store.export_customer(SHOP, customer_id)["events"]]


@pytest.mark.parametrize("quantity, left", [(1, 0.0), (2, 0.5)], ids=["the whole line", "one unit of two"])
def test_bug_a_refund_delivered_before_its_order_shrinks_the_line_when_the_order_arrives(any_store, quantity, left):
    # Arrange: refunds/create first, while orders/create is still being retried (before the fix the refund's key was
    # recorded with nothing to shrink, and the line was stored whole, weight 1, for good)
    any_store.apply(*webhook_of("refunds/create", REFUND_OF_ONE_UNIT, "wh-refund"))

    # Act
    stored = any_store.apply(*webhook_of("orders/create", order_of_one_line(quantity), "wh-order"))

    # Assert: what the refund leaves when it comes after its order
    assert stored == 1
    assert line_weights(any_store) == [pytest.approx(left)]
    assert [i.weight_factor for i in any_store.interactions(SHOP)] == ([] if left == 0 else [pytest.approx(left)])


@pytest.mark.parametrize("stored_by", ["a backfill page", "add_events"])
def test_bug_a_refund_received_before_a_backfill_of_its_order_is_not_skipped_as_applied(any_store, stored_by):
    # Arrange: an order placed before the install, refunded after it (refunds/create), then backfilled: the record
    # carries the same refund, which the backfill skipped as applied (its key was stored), leaving the line whole
    any_store.apply(*webhook_of("refunds/create", REFUND_OF_ONE_UNIT, "wh-refund"))
    record = order_of_one_line(2, refunds=[REFUND_OF_ONE_UNIT])

    # Act: the page holds another order too, as a backfill's page does (PostgreSQL stores such a page set-wise)
    if stored_by == "a backfill page":
        stored = any_store.apply_many([backfilled(record), backfilled(order_of_one_line(1, 8, customer_id=9))])
    else:
        stored = [any_store.add_events(backfilled(record)[1].events)]

    # Assert: one unit of two refunded, once; the other order untouched
    assert stored == ([1, 1] if stored_by == "a backfill page" else [1])
    assert line_weights(any_store) == [pytest.approx(0.5)]
    assert line_weights(any_store, "9") == ([1.0] if stored_by == "a backfill page" else [])


def test_a_refund_kept_for_its_line_shrinks_it_once_however_often_the_order_and_the_refund_come(any_store):
    # Arrange: the refund first; a line of two units
    any_store.apply(*webhook_of("refunds/create", REFUND_OF_ONE_UNIT, "wh-refund"))
    order = order_of_one_line(2)

    # Act: the order, its retry, orders/paid, the refund again under a new webhook id, then a backfill of the order
    # with the refund in it
    any_store.apply(*webhook_of("orders/create", order, "wh-order"))
    any_store.apply(*webhook_of("orders/create", order, "wh-order"))
    any_store.apply(*webhook_of("orders/paid", order, "wh-paid"))
    any_store.apply(*webhook_of("refunds/create", REFUND_OF_ONE_UNIT, "wh-refund-again"))
    any_store.apply_many([backfilled({**order, "refunds": [REFUND_OF_ONE_UNIT]})])

    # Assert: one unit of two, once (0.5, not 0 or 1)
    assert line_weights(any_store) == [pytest.approx(0.5)]


def test_refunds_kept_for_lines_not_stored_add_up_and_a_cancellation_arriving_after_them_voids_the_line(any_store):
    # Arrange: two refunds of one unit each of line 500 (of three units), and one of line 501, before any line
    for refund_id, line_id in [(91, 500), (92, 500), (93, 501)]:
        refund = {"id": refund_id, "order_id": 5, "refund_line_items": [{"line_item_id": line_id, "quantity": 1}]}
        any_store.apply(*webhook_of("refunds/create", refund, f"wh-refund-{refund_id}"))
    order = order_of_one_line(3)
    order["line_items"].append({"id": 501, "product_id": 8, "variant_id": 80, "quantity": 1, "price": "10.00"})

    # Act
    any_store.apply(*webhook_of("orders/create", order, "wh-order"))
    after_the_order = line_weights(any_store)
    any_store.apply(*webhook_of("orders/cancelled", {**order, "cancelled_at": "2026-11-22T10:00:00Z"}, "wh-cancel"))

    # Assert: 3 − 1 − 1 units of line 500 left, none of 501; then nothing of the cancelled order
    assert after_the_order == [pytest.approx(1 / 3), 0.0]
    assert line_weights(any_store) == [0.0, 0.0]


def test_refunds_kept_for_lines_not_stored_go_with_their_order_their_shop_and_their_age(any_store, backend):
    # Arrange: refunds of orders 5 and 6 (neither stored) received at T0, one of order 7 a month later, and one of
    # order 5 in another shop
    def refund_of(order_id, received_at, shop=SHOP):
        line = RefundLine(f"r{order_id}", str(order_id), str(order_id * 100), 1)
        any_store.apply(delivery(f"wh-refund-{order_id}", shop=shop, topic="refunds/create", received_at=received_at),
                        ChangeSet(refunds=(line,)))

    cutoff = T0 + timedelta(days=30)
    refund_of(5, T0)
    refund_of(6, T0)
    refund_of(7, cutoff)
    refund_of(5, T0, shop=OTHER_SHOP)

    def kept(shop=SHOP):
        return sorted(order for order, in backend.query("SELECT order_id FROM pending_refunds WHERE shop = ?", (shop,)))

    # Act / Assert: customers/redact names order 5 among its orders_to_redact; delivered after it, the order is not
    # stored again (REDACTED_EVENT), and no refund of it is left waiting
    any_store.redact_customer(SHOP, "6", ["5"])
    assert (kept(), kept(OTHER_SHOP)) == (["6", "7"], ["5"])
    assert any_store.apply(*webhook_of("orders/create", order_of_one_line(1), "wh-order-5")) == 0
    assert line_weights(any_store) == [] and kept() == ["6", "7"]

    # retention: received before the cutoff
    any_store.prune_events(cutoff)
    assert (kept(), kept(OTHER_SHOP)) == (["7"], [])

    # shop/redact
    any_store.redact_shop(SHOP)
    assert kept() == []


def test_a_checkout_link_rekeys_the_guests_past_and_future_events(any_store):
    # Arrange
    any_store.apply(delivery("wh-cart", topic="carts/create"),
                    ChangeSet(events=(cart_line("tok", "p1"), cart_line("tok", "p2", at=T0 + timedelta(minutes=1)))))
    any_store.add_events([event("p0", customer_id="c9", at=T0 - timedelta(days=1), dedupe_key="earlier")])

    # Act
    any_store.apply(delivery("wh-checkout", topic="checkouts/create"),
                    ChangeSet(identity_links=(IdentityLink("tok", "c9"),)))
    any_store.apply(delivery("wh-cart-2", topic="carts/update"),
                    ChangeSet(events=(cart_line("tok", "p3", at=T0 + timedelta(minutes=2)),)))

    # Assert
    assert [i.product_id for i in any_store.history(SHOP, "c:c9", 10)] == ["p3", "p2", "p1", "p0"]
    assert any_store.history(SHOP, "a:tok", 10) == []
    assert {link["anonymous_id"] for link in any_store.export_customer(SHOP, "c9")["identity_links"]} == {"tok"}


def test_the_stock_of_a_variant_is_the_sum_over_its_locations_once_every_location_is_known(any_store):
    # Arrange
    any_store.apply(delivery("wh-p"), ChangeSet(upsert_products=(CatalogProduct(SHOP, "10", variants=(
        CatalogVariant("101", "9001", 99, tracked=False), CatalogVariant("102", "9002", 5, tracked=True))),)))

    def level(webhook_id, item, location, available):  # as a backfill reads them: with every location's
        any_store.apply(delivery(webhook_id, topic="backfill/inventory_levels"),
                        ChangeSet(inventory_levels=(InventoryLevel(item, location, available, all_locations=True),)))

    def stock() -> dict[str, tuple]:
        return {v.variant_id: (v.inventory_quantity, v.tracked) for v in any_store.products(SHOP)["10"].variants}

    # Act / Assert
    level("wh-1", "9001", "loc-a", None)
    assert stock() == {"101": (99, False), "102": (5, True)}, "an untracked level changes nothing"
    level("wh-2", "9001", "loc-a", 3)
    level("wh-3", "9001", "loc-b", 4)
    assert stock() == {"101": (7, True), "102": (5, True)}
    level("wh-4", "9001", "loc-a", 0)
    level("wh-5", "9002", "loc-a", 0)
    assert stock() == {"101": (4, True), "102": (0, True)}
    assert any_store.products(SHOP)["10"].available is True
    level("wh-6", "9001", "loc-b", -2)
    assert any_store.products(SHOP)["10"].available is False


def test_the_for_sale_snapshot_follows_inventory_levels_both_ways(any_store):
    # Arrange: a published product with one tracked variant in stock, its one location's level read by a backfill
    any_store.apply(delivery("wh-p", topic="products/create"), ChangeSet(upsert_products=(CatalogProduct(
        SHOP, "10", published_at=T0, variants=(CatalogVariant("101", "9001", 2, tracked=True),)),)))
    any_store.apply(delivery("backfill-level", topic="backfill/inventory_levels"),
                    ChangeSet(inventory_levels=(InventoryLevel("9001", "loc", 2, all_locations=True),)))

    def level(webhook_id, available):
        any_store.apply(delivery(webhook_id, topic="inventory_levels/update"),
                        ChangeSet(inventory_levels=(InventoryLevel("9001", "loc", available),)))

    # Act / Assert
    assert any_store.unsellable_product_ids(SHOP) == set()
    level("wh-1", 0)
    assert any_store.unsellable_product_ids(SHOP) == {"10"}
    level("wh-2", 4)
    assert any_store.unsellable_product_ids(SHOP) == set()


def stock_of(store, product_id: str = "10") -> int:
    return store.products(SHOP)[product_id].variants[0].inventory_quantity


def stock_level(store, webhook_id: str, location: str, available: int, all_locations: bool = False) -> None:
    topic = "backfill/inventory_levels" if all_locations else "inventory_levels/update"
    store.apply(delivery(webhook_id, topic=topic),
                ChangeSet(inventory_levels=(InventoryLevel("9001", location, available, all_locations),)))


def in_stock_at_two_locations(store, listed: int = 5) -> None:
    """Product 10, published, one tracked variant (item 9001) whose products payload says `listed` in all."""
    store.apply(delivery("wh-p", topic="products/create"), ChangeSet(upsert_products=(CatalogProduct(
        SHOP, "10", published_at=T0, variants=(CatalogVariant("101", "9001", listed, tracked=True),)),)))


def test_bug_one_locations_stock_webhook_does_not_hide_what_a_location_never_heard_from_holds(any_store):
    # Arrange: location A holds 5, location B 0; the products payload says 5 in all. Before the fix, B's first
    # webhook (0) became the variant's whole stock, and the product left every answer as sold out
    in_stock_at_two_locations(any_store)

    # Act / Assert: B counts 0; A was never heard from: the payload's 5 stand
    stock_level(any_store, "wh-b-0", "B", 0)
    assert stock_of(any_store) == 5 and any_store.unsellable_product_ids(SHOP) == set()
    # A reports 0 too: A and B are all the webhooks name, not (without a backfill) all the locations there are
    stock_level(any_store, "wh-a-0", "A", 0)
    assert stock_of(any_store) == 5 and any_store.unsellable_product_ids(SHOP) == set()
    # A level may raise the stock above the payload's total: what the locations heard from hold is there for sale
    stock_level(any_store, "wh-a-8", "A", 8)
    assert stock_of(any_store) == 8
    # the next products payload, Shopify's total over every location, sells it out
    any_store.apply(delivery("wh-p-0", topic="products/update"), ChangeSet(upsert_products=(CatalogProduct(
        SHOP, "10", published_at=T0, updated_at=T0, variants=(CatalogVariant("101", "9001", 0, tracked=True),)),)))
    assert any_store.unsellable_product_ids(SHOP) == {"10"}


def test_a_stock_webhook_can_bring_a_sold_out_variant_back_before_its_locations_are_known(any_store):
    in_stock_at_two_locations(any_store, listed=0)
    assert any_store.unsellable_product_ids(SHOP) == {"10"}

    stock_level(any_store, "wh-b-3", "B", 3)

    assert stock_of(any_store) == 3 and any_store.unsellable_product_ids(SHOP) == set()


def test_a_product_selling_past_zero_is_backordered_while_nothing_is_on_hand(any_store):
    # Arrange: product 10's one variant (item 9001) tracked at 0 at every location, selling past zero
    any_store.apply(delivery("wh-p", topic="products/create"), ChangeSet(upsert_products=(CatalogProduct(
        SHOP, "10", published_at=T0, updated_at=T0,
        variants=(CatalogVariant("101", "9001", 0, tracked=True, continue_selling=True),)),)))
    stock_level(any_store, "backfill-a", "A", 0, all_locations=True)
    seen = [any_store.catalog_state(SHOP)]

    # Act: a unit arrives at A, is sold again; then the merchant stops selling past zero
    stock_level(any_store, "wh-a-1", "A", 1)
    seen.append(any_store.catalog_state(SHOP))
    stock_level(any_store, "wh-a-0", "A", 0)
    seen.append(any_store.catalog_state(SHOP))
    any_store.apply(delivery("wh-deny", topic="products/update"), ChangeSet(upsert_products=(CatalogProduct(
        SHOP, "10", published_at=T0, updated_at=T0 + timedelta(days=1),
        variants=(CatalogVariant("101", "9001", 0, tracked=True, continue_selling=False),)),)))
    seen.append(any_store.catalog_state(SHOP))

    # Assert: backordered, on hand, backordered, then not for sale at all (and never both)
    assert [state[:2] for state in seen] == [(set(), {"10"}), (set(), set()), (set(), {"10"}), ({"10"}, set())]


def test_with_every_locations_level_backfilled_stock_webhooks_sum_exactly(any_store):
    # Arrange: the backfill read A's 5 and B's 0
    in_stock_at_two_locations(any_store)
    stock_level(any_store, "backfill-a", "A", 5, all_locations=True)
    stock_level(any_store, "backfill-b", "B", 0, all_locations=True)

    # Act / Assert: B counts 0: A's 5 are still for sale; then A sells out after B: none left
    stock_level(any_store, "wh-b-0", "B", 0)
    assert stock_of(any_store) == 5 and any_store.unsellable_product_ids(SHOP) == set()
    stock_level(any_store, "wh-a-0", "A", 0)
    assert stock_of(any_store) == 0 and any_store.unsellable_product_ids(SHOP) == {"10"}
    stock_level(any_store, "wh-b-2", "B", 2)
    stock_level(any_store, "wh-c-1", "C", 1)  # a location opened since the backfill: it adds up too
    assert stock_of(any_store) == 3 and any_store.unsellable_product_ids(SHOP) == set()


def test_two_variants_selling_out_at_once_leave_their_product_unsellable(any_store):
    """Each delivery recomputes the product's flag; the second must see the first's stock (PostgreSQL: a lock
    per product taken before any row is touched), or the product would stay for sale with nothing in stock."""
    for round_ in range(5):
        # Arrange: one product, two tracked variants in stock, each with its own inventory item
        pid = f"p{round_}"
        variants = (CatalogVariant(f"{pid}-a", f"{pid}-item-a", 3, tracked=True),
                    CatalogVariant(f"{pid}-b", f"{pid}-item-b", 3, tracked=True))
        any_store.apply(delivery(f"wh-p{round_}"), ChangeSet(upsert_products=(
            CatalogProduct(SHOP, pid, published_at=T0, variants=variants),)))
        assert pid not in any_store.unsellable_product_ids(SHOP)

        # Act: both sell out (each at its only location, as a backfill read it), delivered at the same moment
        in_threads(2, lambda i: any_store.apply(
            delivery(f"wh-{pid}-{i}", topic="inventory_levels/update"),
            ChangeSet(inventory_levels=(InventoryLevel(f"{pid}-item-{'ab'[i]}", "loc", 0, all_locations=True),))))

        # Assert
        assert pid in any_store.unsellable_product_ids(SHOP)


def test_activity_since_buckets_by_utc_day_and_sums_weight_factors(any_store):
    # Arrange
    minus_eight = timezone(timedelta(hours=-8))
    any_store.add_events([
        purchase("1", "1", "p1", at=datetime(2024, 3, 1, 20, 0, tzinfo=minus_eight)),  # 2024-03-02 04:00 UTC
        purchase("2", "1", "p1", weight_factor=0.5, at=datetime(2024, 3, 2, 9, 0, tzinfo=timezone.utc)),
        purchase("3", "1", "p1", weight_factor=0.0, at=datetime(2024, 3, 2, 9, 0, tzinfo=timezone.utc)),
        event("p1", at=datetime(2024, 3, 1, 23, 59, tzinfo=timezone.utc), dedupe_key="v1"),
        event("p2", at=datetime(2024, 2, 28, tzinfo=timezone.utc), dedupe_key="too-old"),
        event("p1", shop=OTHER_SHOP, at=datetime(2024, 3, 2, tzinfo=timezone.utc), dedupe_key="v1"),
    ])

    # Act
    buckets = any_store.activity_since(SHOP, datetime(2024, 3, 1, tzinfo=timezone.utc))

    # Assert
    assert sorted(buckets, key=lambda b: (b.day, b.kind.value)) == [
        ActivityBucket("p1", EventKind.VIEW, "2024-03-01", 1.0),
        ActivityBucket("p1", EventKind.PURCHASE, "2024-03-02", 1.5),
    ]


def test_reads_and_writes_raise_store_error_when_the_database_fails(any_store, backend):
    # Arrange
    any_store.add_events([event(dedupe_key="1")])
    backend.query("DROP TABLE events")

    # Act / Assert
    with pytest.raises(StoreError, match="read failed"):
        any_store.history(SHOP, "c:c1", 10)
    with pytest.raises(StoreError, match="read failed"):
        any_store.interactions(SHOP)
    with pytest.raises(StoreError, match="write failed"):
        any_store.apply(delivery("wh-1"), ChangeSet(events=(event(dedupe_key="2"),)))
    assert any_store.count_deliveries() == 0, "the failed delivery left nothing behind"


# --- atomicity -------------------------------------------------------------------------------


def test_apply_is_atomic_when_the_second_event_fails(any_store, backend):
    # Arrange
    backend.poison("events", "product_id", "poison", "poisoned row")
    changes = ChangeSet(
        events=(event("fine", dedupe_key="line:1"), event("poison", dedupe_key="line:2")),
        upsert_products=(CatalogProduct(SHOP, "fine", title="Fine"),),
    )

    # Act
    with pytest.raises(StoreError, match="poisoned row"):
        any_store.apply(delivery("wh-1"), changes)

    # Assert: no event, no product, and no delivery row (so Shopify's retry is not taken for a duplicate)
    assert (any_store.count_events(), any_store.count_deliveries()) == (0, 0)
    assert any_store.products(SHOP) == {}
    assert not any_store.is_shop_installed(SHOP)
    backend.cure("events")
    assert any_store.apply(delivery("wh-1"), changes) == 2


def test_apply_is_atomic_when_the_catalog_write_fails_after_the_events(any_store, backend):
    # Arrange
    backend.poison("variants", "variant_id", "bad", "poisoned variant")
    changes = ChangeSet(
        events=(event(dedupe_key="line:1"),),
        upsert_products=(CatalogProduct(SHOP, "10", variants=(CatalogVariant("ok"), CatalogVariant("bad"))),),
    )

    # Act
    with pytest.raises(StoreError, match="poisoned variant"):
        any_store.apply(delivery("wh-1"), changes)

    # Assert
    assert (any_store.count_events(), any_store.count_deliveries()) == (0, 0)
    assert backend.query("SELECT COUNT(*) FROM products") == [(0,)]
    assert backend.query("SELECT COUNT(*) FROM variants") == [(0,)]


def test_add_events_is_atomic(any_store, backend):
    # Arrange
    backend.poison("events", "product_id", "poison", "poisoned row")

    # Act
    with pytest.raises(StoreError):
        any_store.add_events([event("a", dedupe_key="1"), event("b", dedupe_key="2"), event("poison", dedupe_key="3")])

    # Assert
    assert any_store.count_events() == 0
    assert any_store.add_events([event("a", dedupe_key="1")]) == 1  # the connection is usable afterwards


def test_a_beacons_events_are_stored_only_while_their_shop_is_installed(any_store):
    # Arrange: a guest's token linked to customer c9 (the checkout's delivery marks the shop installed), then the
    # shop uninstalled
    views = [event("p1", customer_id=None, anonymous_id="tok", dedupe_key="px:1"),
             event("p2", customer_id=None, anonymous_id="tok", dedupe_key="px:2"),
             event("p2", customer_id=None, anonymous_id="tok", dedupe_key="px:2")]  # sent twice in one beacon
    any_store.apply(delivery("wh-link", topic="checkouts/create"),
                    ChangeSet(identity_links=(IdentityLink("tok", "c9"),)))
    any_store.set_shop_installed(SHOP, False)

    # Act
    before = (any_store.add_events_if_installed(SHOP, views), any_store.add_events_if_installed(SHOP, []))
    stored_before = any_store.count_events()
    any_store.set_shop_installed(SHOP, True)
    installed = (any_store.add_events_if_installed(SHOP, views), any_store.add_events_if_installed(SHOP, views),
                 any_store.add_events_if_installed(SHOP, []))
    any_store.set_shop_installed(SHOP, False)
    after = any_store.add_events_if_installed(SHOP, [event("p3", customer_id=None, anonymous_id="tok",
                                                           dedupe_key="px:3")])

    # Assert: nothing while not installed; two new views (the repeat kept once), none new when sent again
    assert before == (None, None) and stored_before == 0
    assert installed == (2, 0, 0)
    assert after is None
    assert sorted((i.product_id, i.user_key) for i in any_store.interactions(SHOP)) == [("p1", "c:c9"), ("p2", "c:c9")]


def test_a_beacons_events_of_another_shop_are_refused_whole(any_store):
    any_store.set_shop_installed(SHOP, True)

    with pytest.raises(ValueError, match="events of other.myshopify.com given with"):
        any_store.add_events_if_installed(SHOP, [event("p1", dedupe_key="px:1"),
                                                 event("p2", dedupe_key="px:2", shop="other.myshopify.com")])

    assert any_store.count_events() == 0


# --- concurrency -----------------------------------------------------------------------------


def test_concurrent_writers_store_each_delivery_exactly_once(any_store, backend):
    # Arrange: 8 threads x 50 deliveries; the last 25 of each thread are the same 25 webhook ids
    threads, per_thread, shared = 8, 50, 25
    plans = []
    for t in range(threads):
        ids = [f"wh-t{t}-{i}" for i in range(per_thread - shared)] + [f"wh-shared-{i}" for i in range(shared)]
        random.Random(t).shuffle(ids)
        plans.append(ids)
    results: list[list[int | None]] = [[] for _ in range(threads)]

    def work(t):
        for webhook_id in plans[t]:
            changes = ChangeSet(events=(event(f"p-{webhook_id}", dedupe_key=f"key-{webhook_id}"),))
            results[t].append(any_store.apply(delivery(webhook_id), changes))

    # Act
    in_threads(threads, work)

    # Assert
    unique = threads * (per_thread - shared) + shared
    flat = [r for rs in results for r in rs]
    assert len(flat) == threads * per_thread == 400
    assert unique == 225
    assert sum(1 for r in flat if r == 1) == unique
    assert sum(1 for r in flat if r is None) == 400 - unique
    assert any_store.count_deliveries() == unique
    assert any_store.count_events() == unique
    assert backend.query("SELECT COUNT(DISTINCT dedupe_key) FROM events") == [(unique,)]


def test_concurrent_deliveries_of_the_same_order_lines_store_each_line_once(any_store):
    # Arrange: orders/create, orders/paid and orders/updated of the same 10 orders, all at once
    orders = {str(o): [f"p{o}-{line}" for line in range(3)] for o in range(10)}
    topics = ["orders/create", "orders/paid", "orders/updated"]
    new_events = [0] * 6

    def work(t):
        for order_id, products in orders.items():
            changes = ChangeSet(events=tuple(purchase(order_id, str(n), p) for n, p in enumerate(products)))
            new_events[t] += any_store.apply(delivery(f"wh-{order_id}-{t % 3}", topic=topics[t % 3]), changes) or 0

    # Act
    in_threads(6, work)

    # Assert
    assert sum(new_events) == 30
    assert sorted(i.product_id for i in any_store.interactions(SHOP)) == sorted(p for ps in orders.values() for p in ps)
    assert any_store.count_deliveries() == 30


def test_concurrent_inventory_levels_of_one_item_add_up(any_store):
    # Arrange
    any_store.apply(delivery("wh-p"), ChangeSet(upsert_products=(
        CatalogProduct(SHOP, "10", variants=(CatalogVariant("101", "9001", 0, tracked=True),)),)))

    # Act: ten locations report at once
    in_threads(10, lambda i: any_store.apply(delivery(f"wh-{i}", topic="inventory_levels/update"), ChangeSet(
        inventory_levels=(InventoryLevel("9001", f"loc-{i}", i + 1),))))

    # Assert
    assert any_store.products(SHOP)["10"].variants[0].inventory_quantity == sum(range(1, 11))


def test_concurrent_product_updates_keep_the_newest(any_store):
    # Arrange: eight versions of each of five products, every thread sending one version of each
    products = [str(pid) for pid in range(10, 15)]

    def send_version(i):
        for pid in random.Random(i).sample(products, len(products)):
            any_store.apply(delivery(f"wh-{pid}-{i}", topic="products/update"), ChangeSet(upsert_products=(
                CatalogProduct(SHOP, pid, title=f"v{i}", updated_at=T0 + timedelta(minutes=i),
                               variants=(CatalogVariant(f"{pid}-var-{i}"),)),)))

    # Act
    in_threads(8, send_version)

    # Assert
    catalog = any_store.products(SHOP)
    assert {pid: (p.title, [v.variant_id for v in p.variants]) for pid, p in catalog.items()} == {
        pid: ("v7", [f"{pid}-var-7"]) for pid in products}


def test_guest_events_racing_the_checkout_link_all_join_the_customer(any_store):
    # Act: one thread links the cart token while seven store cart lines under it
    def work(i):
        if i == 0:
            any_store.apply(delivery("wh-link", topic="checkouts/create"),
                            ChangeSet(identity_links=(IdentityLink("tok", "c9"),)))
        else:
            any_store.apply(delivery(f"wh-cart-{i}", topic="carts/update"),
                            ChangeSet(events=(cart_line("tok", f"p{i}"),)))

    in_threads(8, work)

    # Assert
    assert any_store.history(SHOP, "a:tok", 50) == []
    assert sorted(i.product_id for i in any_store.history(SHOP, "c:c9", 50)) == [f"p{i}" for i in range(1, 8)]


# --- privacy and lifecycle -------------------------------------------------------------------


def populate_a_customer(store: EventStore, shop: str = SHOP) -> None:
    """Customer c1: a view, order 1 (two lines), a cart linked at checkout, guest order 2; customer c2: order 3."""
    store.apply(delivery("wh-c1-order", shop=shop), ChangeSet(events=(
        purchase("1", "1", "p1", shop=shop), purchase("1", "2", "p2", shop=shop))))
    store.add_events([event("p9", customer_id="c1", shop=shop, dedupe_key="c1-view")])
    store.apply(delivery("wh-c1-cart", shop=shop, topic="carts/create"),
                ChangeSet(events=(cart_line("tok-c1", "p3", shop=shop),)))
    store.apply(delivery("wh-c1-checkout", shop=shop, topic="checkouts/create"),
                ChangeSet(identity_links=(IdentityLink("tok-c1", "c1"),)))
    store.apply(delivery("wh-guest-order", shop=shop), ChangeSet(events=(
        purchase("2", "1", "p4", customer_id=None, anonymous_id="tok-guest", shop=shop),)))
    store.apply(delivery("wh-c2-order", shop=shop), ChangeSet(events=(purchase("3", "1", "p1", customer_id="c2",
                                                                               shop=shop),)))


def test_redact_customer_deletes_their_events_orders_links_and_exports(any_store, backend):
    # Arrange
    populate_a_customer(any_store)
    populate_a_customer(any_store, shop=OTHER_SHOP)
    any_store.save_data_export(SHOP, "req-1", "c1", {"customer": "c1"})
    any_store.save_data_export(SHOP, "req-2", "c2", {"customer": "c2"})

    # Act
    deleted = any_store.redact_customer(SHOP, "c1", ["2", "404"])

    # Assert
    assert deleted == 5  # order 1's two lines, the view, the linked cart line, guest order 2
    export = any_store.export_customer(SHOP, "c1")
    assert [(r["kind"], r["id"]) for r in export.pop("redactions")] == [("customer", "c1")]  # the record kept
    assert export == {"shop": SHOP, "customer_id": "c1", "events": [], "identity_links": [], "kept_refunds": []}
    assert any_store.history(SHOP, "a:tok-guest", 10) == [] and any_store.history(SHOP, "a:tok-c1", 10) == []
    assert backend.query("SELECT COUNT(*) FROM events WHERE shop = ? AND (customer_id = 'c1' OR order_id = '2')",
                         (SHOP,)) == [(0,)]
    assert backend.query("SELECT COUNT(*) FROM identity_links WHERE shop = ?", (SHOP,)) == [(0,)]
    assert any_store.data_export(SHOP, "req-1") is None
    assert any_store.data_export(SHOP, "req-2") == {"customer": "c2"}
    assert [i.user_key for i in any_store.interactions(SHOP)] == ["c:c2"]
    assert any_store.count_events(OTHER_SHOP) == 6, "the same ids in another shop are another customer"
    assert any_store.redact_customer(SHOP, "c1", ["2"]) == 0


def test_redact_customer_records_the_customer_and_its_orders_for_import_and_backfill_to_skip(any_store, backend):
    """The gap: a redaction left no trace, so an import of an old file or a backfill stored the customer again."""
    # Arrange
    populate_a_customer(any_store)
    assert any_store.redacted(SHOP) == Redactions({}, frozenset())

    # Act
    any_store.redact_customer(SHOP, "c1", ["2", "404"])
    first = any_store.redacted(SHOP)
    orders = backend.query("SELECT kind, redacted_id, redacted_at FROM redactions WHERE shop = ? AND kind = 'order'"
                           " ORDER BY 1, 2", (SHOP,))
    any_store.redact_customer(SHOP, "c1", ["2", "2", "405"])  # Shopify sends a redaction again, one more order

    # Assert
    again = any_store.redacted(SHOP)
    assert (set(first.customers), first.order_ids) == ({"c1"}, {"2", "404"})
    assert (set(again.customers), again.order_ids) == ({"c1"}, {"2", "404", "405"})
    assert any_store.redacted(OTHER_SHOP) == Redactions({}, frozenset())
    assert first.customers["c1"].tzinfo is not None
    # The customer's record moves to the latest redaction: what they did before it, in between too, was erased. An
    # order's keeps its first time (an order redacted is never stored again, whenever).
    assert again.customers["c1"] > first.customers["c1"]
    assert backend.query("SELECT kind, redacted_id, redacted_at FROM redactions WHERE shop = ? AND kind = 'order'"
                         " AND redacted_id <> ? ORDER BY 1, 2", (SHOP, "405")) == orders


def test_bug_the_data_request_export_leaves_out_the_redaction_records_kept_of_the_customer(any_store):
    """BUG: customers/redact keeps the customer's id and its orders' ids, with the time (`redactions`), and a
    customers/data_request export, "everything stored about the customer", said nothing of them."""
    # Arrange: c1 redacted with orders 2 and 404; c2 and order 9 redacted apart
    populate_a_customer(any_store)
    any_store.redact_customer(SHOP, "c1", ["2", "404"])
    any_store.redact_customer(SHOP, "c2", ["9"])
    any_store.redact_customer(OTHER_SHOP, "c1", ["5"])

    # Act
    export = any_store.export_customer(SHOP, "c1", ["404", "7"])

    # Assert: the customer's record and those of the orders requested, each with its time; nothing of another's
    assert [(r["kind"], r["id"]) for r in export["redactions"]] == [("customer", "c1"), ("order", "404")]
    assert all(datetime.fromisoformat(r["redacted_at"]).tzinfo is not None for r in export["redactions"])
    assert any_store.export_customer(SHOP, "nobody")["redactions"] == []


def test_a_failed_redaction_records_nothing(any_store, backend):
    # Arrange: recording order 404 fails
    populate_a_customer(any_store)
    backend.poison("redactions", "redacted_id", "404", "no")

    # Act
    with pytest.raises(StoreError):
        any_store.redact_customer(SHOP, "c1", ["2", "404"])

    # Assert: one transaction: neither the deletion nor the record happened
    backend.cure("redactions")
    assert any_store.redacted(SHOP) == Redactions({}, frozenset())
    assert any_store.count_events(SHOP) == 6


def test_redact_shop_empties_every_table_of_that_shop_only(any_store, backend):
    # Arrange: a row of each kind in both shops
    for shop in (SHOP, OTHER_SHOP):
        populate_a_customer(any_store, shop=shop)
        any_store.apply(delivery("wh-catalog", shop=shop, topic="products/create"), ChangeSet(
            upsert_products=(CatalogProduct(shop, "10", variants=(CatalogVariant("101", "9001", 1, tracked=True),)),),
            inventory_levels=(InventoryLevel("9001", "loc", 1),)))
        any_store.apply(delivery("wh-refund", shop=shop, topic="refunds/create"),  # order 404 is not stored: kept
                        ChangeSet(refunds=(RefundLine("r1", "1", "1", 1), RefundLine("r2", "404", "1", 1))))
        any_store.save_data_export(shop, "req-1", "c1", any_store.export_customer(shop, "c1"))
        any_store.redact_customer(shop, "c-gone", ["9"])  # a customer redacted before: its records go with the shop
        assert any_store.add_beacon_if_installed(shop, [], [signal("sh-1", "p1", shop=shop),
                                                            signal("sh-2", "p1", kind="click", shop=shop)]) == (0, 2)
    rows = {table: backend.query(f"SELECT shop, COUNT(*) FROM {table} GROUP BY shop") for table in SHOP_TABLES}
    assert all(dict(found).get(SHOP) and dict(found).get(OTHER_SHOP) for found in rows.values()), rows

    # Act
    any_store.redact_shop(SHOP)

    # Assert
    for table in SHOP_TABLES:
        left = dict(backend.query(f"SELECT shop, COUNT(*) FROM {table} GROUP BY shop"))
        assert left == {OTHER_SHOP: dict(rows[table])[OTHER_SHOP]}, table
    assert (any_store.shops(), any_store.installed_shops()) == ([OTHER_SHOP], [OTHER_SHOP])
    assert any_store.products(SHOP) == {} and any_store.deleted_product_ids(SHOP) == set()
    assert any_store.interactions(SHOP) == [] and any_store.data_export(SHOP, "req-1") is None
    assert any_store.count_events(OTHER_SHOP) == 6
    assert any_store.redacted(SHOP) == Redactions({}, frozenset())
    redacted = any_store.redacted(OTHER_SHOP)
    assert (set(redacted.customers), redacted.order_ids) == ({"c-gone"}, {"9"})


def test_export_customer_lists_every_column_of_their_events_and_their_links(any_store):
    # Arrange
    populate_a_customer(any_store)

    # Act
    export = any_store.export_customer(SHOP, "c1")

    # Assert
    assert json.loads(json.dumps(export)) == export, "JSON-serialisable as it is"
    assert (export["shop"], export["customer_id"]) == (SHOP, "c1")
    assert export["identity_links"] == [{"anonymous_id": "tok-c1", "customer_id": "c1"}]
    assert all(list(row) == list(EVENT_EXPORT_COLUMNS) for row in export["events"])
    assert [(row["product_id"], row["user_key"]) for row in export["events"]] == [
        ("p1", "c:c1"), ("p2", "c:c1"), ("p9", "c:c1"), ("p3", "c:c1")]
    line = export["events"][0]
    assert {k: v for k, v in line.items() if k != "id"} == {
        "shop": SHOP, "kind": "purchase", "user_key": "c:c1", "customer_id": "c1", "anonymous_id": None,
        "product_id": "p1", "variant_id": None, "quantity": 1, "price": None, "order_id": "1",
        "occurred_at": "2024-03-01T12:00:00.000000+00:00", "source_topic": "", "delivery_id": "",
        "dedupe_key": "order:1:line:1", "weight_factor": 1.0, "currency": None}
    assert isinstance(line["id"], int)
    assert any_store.export_customer(SHOP, "nobody") == {"shop": SHOP, "customer_id": "nobody", "events": [],
                                                          "identity_links": [], "kept_refunds": [], "redactions": []}


def test_data_exports_are_kept_per_shop_and_replaced_by_id(any_store):
    # Arrange
    body = {"customer": {"id": "c1", "name": "Zoë"}, "events": [{"n": 1, "price": 9.5}], "note": None}

    # Act
    any_store.save_data_export(SHOP, "req-1", "c1", {"draft": True})
    any_store.save_data_export(SHOP, "req-1", "c1", body)

    # Assert
    assert any_store.data_export(SHOP, "req-1") == body
    assert any_store.data_export(SHOP, "req-2") is None
    assert any_store.data_export(OTHER_SHOP, "req-1") is None
    with pytest.raises(TypeError):
        any_store.save_data_export(SHOP, "req-3", "c1", {"when": T0})
    assert any_store.data_export(SHOP, "req-3") is None


def _order(store) -> list[tuple]:
    """The training queue as (shop, expected_seconds, unfinished): its order and what each entry says."""
    return [tuple(entry[:3]) for entry in store.training_queue()]


def test_the_training_queue_puts_the_shops_started_longest_ago_first_and_those_killed_apart(any_store):
    # Arrange: four installed shops and one removed
    third, fourth, removed = "c-third.myshopify.com", "e-fourth.myshopify.com", "d-removed.myshopify.com"
    for shop in (third, OTHER_SHOP, SHOP, fourth, removed):
        any_store.set_shop_installed(shop, True)
    any_store.set_shop_installed(removed, False)
    never = [(shop, None, 0) for shop in sorted([SHOP, OTHER_SHOP, third, fourth])]
    assert _order(any_store) == never

    # Act: a night's run: OTHER_SHOP trained in 40.25 s, then SHOP (3.5 s), then `third` failed, then `fourth`
    # started and the run was killed
    for minute, (shop, seconds) in enumerate([(OTHER_SHOP, 40.25), (SHOP, 3.5), (third, None), (fourth, "killed")]):
        any_store.training_started(shop, T0 + timedelta(minutes=minute))
        if seconds != "killed":
            any_store.training_finished(shop, seconds)
    any_store.training_started(removed, T0)
    any_store.training_finished("never-installed.myshopify.com", 1.0)  # no such shop: no row is made (below)

    # Assert: the killed shop first, then in the order they were started
    assert _order(any_store) == [(fourth, None, 1), (OTHER_SHOP, 40.25, 0),
                                          (SHOP, 3.5, 0), (third, None, 0)]

    # Act: the next run starts `fourth` first and is killed again; OTHER_SHOP fails, keeping its last time
    any_store.training_started(fourth, T0 + timedelta(days=1))
    any_store.training_started(OTHER_SHOP, T0 + timedelta(days=1, minutes=1))
    any_store.training_finished(OTHER_SHOP, None)

    # Assert: killed twice in a row, `fourth` goes last; finished, it is back in turn
    assert _order(any_store) == [(SHOP, 3.5, 0), (third, None, 0),
                                          (OTHER_SHOP, 40.25, 0), (fourth, None, 2)]
    any_store.training_finished(fourth, 600.0)
    assert _order(any_store) == [(SHOP, 3.5, 0), (third, None, 0),
                                          (fourth, 600.0, 0), (OTHER_SHOP, 40.25, 0)]
    any_store.training_finished(removed, 1.0)
    any_store.set_shop_installed(removed, True)  # installed again: it keeps its place, started at T0
    any_store.set_shop_installed("never-installed.myshopify.com", True)  # its row is new: never started
    assert _order(any_store)[:3] == [("never-installed.myshopify.com", None, 0),
                                              (removed, 1.0, 0), (SHOP, 3.5, 0)]
    any_store.training_deferred(OTHER_SHOP)  # the first shop a run's budget left out: before the new shop
    assert _order(any_store)[:2] == [(OTHER_SHOP, 40.25, 0),
                                              ("never-installed.myshopify.com", None, 0)]
    any_store.training_started(OTHER_SHOP, T0 + timedelta(days=2))  # started and done: in turn again, at the back
    any_store.training_finished(OTHER_SHOP, 39.0)
    assert _order(any_store)[-1] == (OTHER_SHOP, 39.0, 0)
    with pytest.raises(ValueError):
        any_store.training_started(SHOP, datetime(2026, 1, 1))  # a time without its zone


def test_shop_installation_follows_the_markers_and_webhook_deliveries(any_store):
    # Arrange / Act / Assert
    assert (any_store.is_shop_installed(SHOP), any_store.installed_shops()) == (False, [])

    any_store.apply(delivery("wh-1"), ChangeSet(events=(event(dedupe_key="1"),)))
    any_store.set_shop_installed(OTHER_SHOP, True)
    assert any_store.is_shop_installed(SHOP) and any_store.installed_shops() == [OTHER_SHOP, SHOP]

    any_store.set_shop_installed(SHOP, False)
    for n, topic in enumerate(["app/uninstalled", "shop/redact", "customers/redact", "customers/data_request"]):
        any_store.apply(delivery(f"wh-late-{n}", topic=topic), ChangeSet())
    any_store.apply(delivery("wh-1"), ChangeSet(events=(event(dedupe_key="1"),)))  # a duplicate proves nothing new
    assert not any_store.is_shop_installed(SHOP) and any_store.installed_shops() == [OTHER_SHOP]

    any_store.apply(delivery("wh-2", topic="products/update"), ChangeSet())
    assert any_store.is_shop_installed(SHOP)


def test_prune_events_deletes_what_is_older_than_the_cutoff(any_store):
    # Arrange
    cutoff = T0 + timedelta(days=30)
    any_store.apply(delivery("wh-old", received_at=T0), ChangeSet(events=(purchase("1", "1", "p1"),)))
    any_store.apply(delivery("wh-new", received_at=cutoff), ChangeSet(events=(
        purchase("2", "1", "p2", at=cutoff), purchase("2", "2", "p3", at=cutoff - timedelta(microseconds=1)))))
    any_store.add_events([event("p4", shop=OTHER_SHOP, at=T0, dedupe_key="old-view")])

    # Act
    deleted = any_store.prune_events(cutoff)

    # Assert
    assert deleted == 3
    assert [i.product_id for i in any_store.interactions(SHOP)] == ["p2"]
    assert any_store.count_events(OTHER_SHOP) == 0
    assert any_store.count_deliveries() == 1
    assert any_store.apply(delivery("wh-new", received_at=cutoff), ChangeSet()) is None
    with pytest.raises(ValueError, match="timezone"):
        any_store.prune_events(datetime(2024, 1, 1))


def test_a_beacons_views_and_clicks_are_stored_once_and_only_for_an_installed_shop(any_store):
    # Arrange
    views = [signal("sh-v", "p1", position=0), signal("sh-v", "p2", position=1), signal("sh-v", "p2", position=2)]
    click = [signal("sh-c", "p2", kind="click", position=1, at=T0 + timedelta(seconds=5))]
    beacon_event = [event("p7", customer_id=None, anonymous_id="px-1", dedupe_key="pixel:sh-p",
                          source_topic="pixel/product_viewed")]

    # Act
    before = any_store.add_beacon_if_installed(SHOP, beacon_event, views)
    any_store.set_shop_installed(SHOP, True)
    stored = any_store.add_beacon_if_installed(SHOP, beacon_event, views + click)
    again = any_store.add_beacon_if_installed(SHOP, beacon_event, views + click)
    events_alone = any_store.add_beacon_if_installed(SHOP, [event("p8", dedupe_key="k8")], [])

    # Assert: p2 twice in one view is stored once (its first place)
    assert (before, stored, again, events_alone) == (None, (1, 3), (0, 0), (1, 0))
    assert set(any_store.recommendation_summary(SHOP, T0, T0 + timedelta(days=1))) == {("related", 1, 2, 1),
                                                                                         (None, 1, 2, 1)}
    assert any_store.recommendation_clicks(SHOP, T0, T0 + timedelta(days=1)) == [
        RecommendationClick("px-1", "p2", T0 + timedelta(seconds=5), "related", "0" * 32, "sh-c")]
    assert any_store.count_events(SHOP) == 2, "views and clicks of answers are not events"
    with pytest.raises(ValueError, match=OTHER_SHOP):
        any_store.add_beacon_if_installed(SHOP, [], [signal("sh-x", "p1", shop=OTHER_SHOP)])


def test_prune_events_deletes_views_and_clicks_of_answers_older_than_the_cutoff(any_store):
    # Arrange
    cutoff = T0 + timedelta(days=30)
    any_store.set_shop_installed(SHOP, True)
    any_store.add_beacon_if_installed(SHOP, [], [signal("sh-old", "p1"), signal("sh-new", "p2", at=cutoff),
                                                 signal("sh-click", "p2", kind="click", at=cutoff)])

    # Act
    any_store.prune_events(cutoff)

    # Assert
    assert set(any_store.recommendation_summary(SHOP, T0, cutoff)) == {("related", 1, 1, 1), (None, 1, 1, 1)}


# --- SQLite only: durability, schema upgrades, bugs ---------------------------------------------


@pytest.fixture
def store(tmp_path):
    store = SQLiteEventStore(tmp_path / "events.sqlite3")
    yield store
    store.close()


def raw(store, sql, params=()):
    """Read the store's file through an independent connection."""
    conn = sqlite3.connect(store.path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _poison(store, sql):
    """Run one statement (a trigger, a table) through an independent connection."""
    conn = sqlite3.connect(store.path)
    try:
        conn.execute(sql)
        conn.commit()
    finally:
        conn.close()


def test_connection_runs_in_wal_mode_with_synchronous_full(store):
    # Act
    conn = store._connection()  # synchronous is per connection: ask the store's own
    journal_mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    synchronous = conn.execute("PRAGMA synchronous").fetchone()[0]

    # Assert
    assert journal_mode == "wal"
    assert synchronous == 2  # FULL
    assert raw(store, "PRAGMA journal_mode") == [("wal",)]  # WAL persists in the file itself


def test_connections_opened_in_other_threads_get_the_same_pragmas(store):
    # Arrange
    seen = {}

    def ask():
        conn = store._connection()
        seen["journal_mode"] = conn.execute("PRAGMA journal_mode").fetchone()[0]
        seen["synchronous"] = conn.execute("PRAGMA synchronous").fetchone()[0]
        seen["same_connection"] = conn is main_conn

    main_conn = store._connection()

    # Act
    worker = threading.Thread(target=ask)
    worker.start()
    worker.join()

    # Assert
    assert seen == {"journal_mode": "wal", "synchronous": 2, "same_connection": False}


def test_schema_user_version_equals_the_number_of_migrations(store):
    # Act
    [(version,)] = raw(store, "PRAGMA user_version")

    # Assert
    assert version == len(SQLITE_MIGRATIONS)
    assert version >= 3
    tables = {name for (name,) in raw(store, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables >= set(SHOP_TABLES)


def test_reopening_the_same_file_keeps_the_schema_unchanged(tmp_path):
    # Arrange
    path = tmp_path / "events.sqlite3"
    SQLiteEventStore(path).close()
    schema_before = raw(SQLiteEventStore(path), "SELECT type, name, sql FROM sqlite_master ORDER BY name")

    # Act
    again = SQLiteEventStore(path)

    # Assert
    try:
        assert raw(again, "SELECT type, name, sql FROM sqlite_master ORDER BY name") == schema_before
    finally:
        again.close()


@contextlib.contextmanager
def sqlite_file_before(path, marker: str):
    """A SQLite file migrated up to the first migration whose script holds `marker`, not including it: the
    connection, for the test's rows; on leaving, the file is left at that version, as the code before it left it."""
    conn = sqlite3.connect(path)
    version = next(i for i, script in enumerate(SQLITE_MIGRATIONS) if marker in script)
    for script in SQLITE_MIGRATIONS[:version]:
        conn.executescript(script)
    yield conn
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()


def test_an_upgraded_database_knows_which_of_its_stored_products_are_for_sale(tmp_path):
    # Arrange: a file at the version before the `sellable` flag, holding a product for sale and a sold-out one
    path = tmp_path / "events.sqlite3"
    with sqlite_file_before(path, "ADD COLUMN sellable") as conn:
        for pid in ("in-stock", "sold-out"):
            conn.execute("INSERT INTO products (shop, product_id, title, handle, status, published_at, product_type,"
                         " vendor) VALUES (?, ?, '', '', 'active', '2024-03-01T12:00:00.000000+00:00', '', '')",
                         (SHOP, pid))
        conn.execute("INSERT INTO variants VALUES (?, 'v1', 'in-stock', 'i1', 2, 1, 0)", (SHOP,))
        conn.execute("INSERT INTO variants VALUES (?, 'v2', 'sold-out', 'i2', 0, 1, 0)", (SHOP,))

    # Act
    store = SQLiteEventStore(path)

    # Assert
    try:
        assert store.unsellable_product_ids(SHOP) == {"sold-out"}
    finally:
        store.close()


def test_an_upgraded_database_keeps_each_variants_payload_total_as_its_stocks_floor(tmp_path):
    # Arrange: a file at the version before migration 8, a variant in stock (5) and one untracked
    path = tmp_path / "events.sqlite3"
    with sqlite_file_before(path, "listed_quantity") as conn:
        conn.execute("INSERT INTO products (shop, product_id, title, handle, status, published_at, product_type,"
                     " vendor) VALUES (?, '10', '', '', 'active', '2024-03-01T12:00:00.000000+00:00', '', '')", (SHOP,))
        conn.execute("INSERT INTO variants VALUES (?, '101', '10', '9001', 5, 1, 0)", (SHOP,))
        conn.execute("INSERT INTO variants VALUES (?, '102', '10', '9002', 7, 0, 0)", (SHOP,))
        conn.execute("INSERT INTO inventory_levels VALUES (?, '9002', 'A', 1)", (SHOP,))

    # Act: one location reports 0 for the tracked variant, 2 for the untracked one
    store = SQLiteEventStore(path)
    try:
        stock_level(store, "wh-b-0", "B", 0)
        store.apply(delivery("wh-9002", topic="inventory_levels/update"),
                    ChangeSet(inventory_levels=(InventoryLevel("9002", "B", 2),)))

        # Assert
        assert raw(store, "PRAGMA user_version") == [(len(SQLITE_MIGRATIONS),)]
        assert {v.variant_id: v.inventory_quantity for v in store.products(SHOP)["10"].variants} == {
            "101": 5, "102": 3}  # the payload's 5 stand; the untracked one had no floor: A's 1 and B's 2
        assert raw(store, "SELECT all_locations FROM inventory_levels ORDER BY inventory_item_id, location_id") == [
            (0,), (0,), (0,)]
    finally:
        store.close()


def test_an_upgraded_database_knows_which_of_its_stored_products_are_backordered(tmp_path):
    # Arrange: a file at the version before migration 13: products selling past zero with nothing on hand, one of
    # them a draft, and one with a unit on hand
    path = tmp_path / "events.sqlite3"
    with sqlite_file_before(path, "ADD COLUMN backordered") as conn:
        for pid, status, quantity in (("past-zero", "active", 0), ("draft", "draft", 0), ("on-hand", "active", 1)):
            conn.execute("INSERT INTO products (shop, product_id, title, handle, status, published_at, product_type,"
                         " vendor, sellable) VALUES (?, ?, '', '', ?, '2024-03-01T12:00:00.000000+00:00', '', '', ?)",
                         (SHOP, pid, status, int(status == "active")))
            conn.execute("INSERT INTO variants (shop, variant_id, product_id, inventory_item_id, inventory_quantity,"
                         " listed_quantity, tracked, continue_selling) VALUES (?, ?, ?, ?, ?, ?, 1, 1)",
                         (SHOP, f"v-{pid}", pid, f"i-{pid}", quantity, quantity))

    # Act
    store = SQLiteEventStore(path)

    # Assert
    try:
        assert raw(store, "PRAGMA user_version") == [(len(SQLITE_MIGRATIONS),)]
        assert store.catalog_state(SHOP)[:2] == ({"draft"}, {"past-zero"})
    finally:
        store.close()


def test_an_upgraded_database_shows_its_stored_products_until_an_update_hides_one(tmp_path):
    # Arrange: a file at the version before migration 12, two products for sale
    path = tmp_path / "events.sqlite3"
    with sqlite_file_before(path, "ADD COLUMN hidden") as conn:
        for pid in ("10", "11"):
            conn.execute("INSERT INTO products (shop, product_id, title, handle, status, published_at, product_type,"
                         " vendor, sellable) VALUES (?, ?, '', '', 'active', '2024-03-01T12:00:00.000000+00:00', '',"
                         " '', 1)", (SHOP, pid))

    # Act: the merchant tags one of them
    store = SQLiteEventStore(path)
    try:
        shown_before = store.unsellable_product_ids(SHOP)
        store.apply(delivery("wh-tag", topic="products/update"), ChangeSet(upsert_products=(
            CatalogProduct(SHOP, "11", status="active", published_at=T0, hidden="tag"),)))

        # Assert
        assert raw(store, "PRAGMA user_version") == [(len(SQLITE_MIGRATIONS),)]
        assert shown_before == set()
        assert store.unsellable_product_ids(SHOP) == {"11"}
        assert {pid: row.hidden for pid, row in store.products(SHOP).items()} == {"10": None, "11": "tag"}
    finally:
        store.close()


def test_an_upgraded_database_keeps_a_refund_that_comes_before_its_order(tmp_path):
    # Arrange: a file at the version before pending refunds, which recorded refund 98's key
    path = tmp_path / "events.sqlite3"
    with sqlite_file_before(path, "pending_refunds") as conn:
        conn.execute("INSERT INTO adjustments VALUES (?, 'refund:98:line:500')", (SHOP,))
    earlier = {"id": 98, "order_id": 5, "refund_line_items": [{"line_item_id": 500, "quantity": 1}]}

    # Act: refund 98 again (applied before: not again) and refund 99, both before order 5 (a line of four units)
    store = SQLiteEventStore(path)
    try:
        store.apply(*webhook_of("refunds/create", earlier, "wh-refund-98-again"))
        store.apply(*webhook_of("refunds/create", REFUND_OF_ONE_UNIT, "wh-refund-99"))
        store.apply(*webhook_of("orders/create", order_of_one_line(4), "wh-order"))

        # Assert
        assert raw(store, "PRAGMA user_version") == [(len(SQLITE_MIGRATIONS),)]
        assert line_weights(store) == [pytest.approx(0.75)]
    finally:
        store.close()


def test_an_upgraded_database_keeps_views_and_clicks_of_answers(tmp_path):
    # Arrange: a file at the version before migration 10, holding a pixel's purchase
    path = tmp_path / "events.sqlite3"
    with sqlite_file_before(path, "CREATE TABLE recommendation_events") as conn:
        conn.execute("INSERT INTO events (shop, kind, user_key, anonymous_id, product_id, quantity, occurred_at,"
                     " source_topic, delivery_id, dedupe_key) VALUES (?, 'purchase', 'a:px-1', 'px-1', 'p1', 1,"
                     " '2024-03-01T12:00:10.000000+00:00', 'pixel/checkout_completed', 'sh-o', 'pixel:sh-o:p1')",
                     (SHOP,))
        conn.execute("INSERT INTO shop_state (shop, installed, changed_at) VALUES (?, 1, '2024-01-01')", (SHOP,))

    # Act
    store = SQLiteEventStore(path)
    try:
        stored = store.add_beacon_if_installed(SHOP, [], [signal("sh-c", "p1", kind="click")])

        # Assert
        assert raw(store, "PRAGMA user_version") == [(len(SQLITE_MIGRATIONS),)]
        assert stored == (0, 1)
        assert [p.product_id for p in store.attributable_purchases(SHOP, T0, T0 + timedelta(days=1))] == ["p1"]
    finally:
        store.close()


def test_an_upgraded_database_records_redactions(tmp_path):
    # Arrange: a file at the version before migration 9, holding an order of customer 6 and one of customer 7
    path = tmp_path / "events.sqlite3"
    with sqlite_file_before(path, "CREATE TABLE redactions") as conn:
        for order_id, customer_id in (("5", "6"), ("8", "7")):
            conn.execute("INSERT INTO events (shop, kind, user_key, customer_id, product_id, quantity, order_id,"
                         " occurred_at, source_topic, delivery_id, dedupe_key) VALUES (?, 'purchase', ?, ?, 'p1', 1,"
                         " ?, '2024-03-01T12:00:00.000000+00:00', 'orders/create', 'wh', ?)",
                         (SHOP, f"c:{customer_id}", customer_id, order_id, f"order:{order_id}:line:1"))

    # Act
    store = SQLiteEventStore(path)
    try:
        deleted = store.redact_customer(SHOP, "6", ["5", "9"])

        # Assert
        assert raw(store, "PRAGMA user_version") == [(len(SQLITE_MIGRATIONS),)]
        assert deleted == 1 and store.count_events(SHOP) == 1
        redacted = store.redacted(SHOP)
        assert (set(redacted.customers), redacted.order_ids) == ({"6"}, {"5", "9"})
    finally:
        store.close()


def test_of_two_runs_reaching_a_shop_one_starts_it_and_a_run_is_alive_until_it_ends(any_store, backend):
    any_store.set_shop_installed(SHOP, True)
    first, second = T0 - timedelta(minutes=5), T0 - timedelta(minutes=1)
    any_store.training_run_began("one", first)
    any_store.training_run_began("two", first)
    assert any_store.training_started(SHOP, first, "one", expect_started_at=None)
    assert not any_store.training_started(SHOP, second, "two", expect_started_at=None)  # started since it was read
    [entry] = any_store.training_queue()
    assert (entry.started_at, entry.run_alive_at, entry.unfinished) == (first, first, 1)  # run "one" began at first

    any_store.training_run_alive("one", T0)
    assert any_store.training_queue()[0].run_alive_at == T0
    assert any_store.training_started(SHOP, second, "two", expect_started_at=first)  # as "two" read it again
    assert any_store.training_queue()[0][3:5] == (second, first)  # run "two" said nothing since it began
    any_store.training_run_ended("two")
    assert any_store.training_queue()[0].run_alive_at is None
    assert not any_store.training_started("not-installed.myshopify.com", T0, "one", expect_started_at=None)  # no row

    assert any_store.training_queue()[0].run_silent_seconds is None  # its run ended
    any_store.training_started(SHOP, T0, "one", expect_started_at=second)
    assert any_store.training_queue()[0].run_silent_seconds > 365 * 86400  # "one" said it was alive at T0, in 2024
    any_store.training_run_alive("one")  # now, by the database's clock
    assert 0 <= any_store.training_queue()[0].run_silent_seconds < 60

    any_store.training_run_began("three", T0 + timedelta(days=1, seconds=1))  # "two" ended; the rest is "one"'s
    assert [run for run, in backend.query("SELECT run_id FROM training_runs ORDER BY run_id")] == ["one", "three"]
    any_store.training_run_began("four")  # now: "three", silent since 2024, is forgotten; "one" said so just now
    assert [run for run, in backend.query("SELECT run_id FROM training_runs ORDER BY run_id")] == ["four", "one"]


def test_a_thread_closes_its_own_sqlite_connection_and_the_store_stays_open(tmp_path):
    """SQLite keeps every thread's connection until close() (PostgreSQL's go with their threads): a thread that
    ends, as a training run's signs of life do, closes its own."""
    import threading

    store = SQLiteEventStore(tmp_path / "events.sqlite3")
    try:
        def write() -> None:
            store.set_shop_installed(SHOP, True)  # alone, the thread commits its write on its own connection
            store.close_thread_connection()

        before = len(store._connections)
        worker = threading.Thread(target=write)
        worker.start()
        worker.join()

        assert len(store._connections) == before
        assert store.is_shop_installed(SHOP)
    finally:
        store.close()


def test_an_upgraded_database_queues_its_installed_shops_for_training(tmp_path):
    # Arrange: a file at the version before the training columns, with two shops installed and one removed
    path = tmp_path / "events.sqlite3"
    with sqlite_file_before(path, "train_started_at") as conn:
        conn.executemany("INSERT INTO shop_state VALUES (?, ?, '2024-03-01T12:00:00.000000+00:00')",
                         [("b.myshopify.com", 1), ("a.myshopify.com", 1), ("gone.myshopify.com", 0)])

    # Act
    store = SQLiteEventStore(path)

    # Assert: never started, so by name and without an estimate; started and finished, the shop goes last
    try:
        assert _order(store) == [("a.myshopify.com", None, 0),
                                          ("b.myshopify.com", None, 0)]
        store.training_started("a.myshopify.com", T0)
        store.training_finished("a.myshopify.com", 12.5)
        assert _order(store) == [("b.myshopify.com", None, 0),
                                          ("a.myshopify.com", 12.5, 0)]
    finally:
        store.close()


def test_a_version_2_database_upgrades_in_place_and_keeps_its_data(tmp_path):
    # Arrange: a file exactly as the code before the privacy migration left it
    path = tmp_path / "events.sqlite3"
    conn = sqlite3.connect(path)
    for script in SQLITE_MIGRATIONS[:2]:
        conn.executescript(script)
    conn.execute("INSERT INTO deliveries VALUES (?, 'wh-1', 'orders/create', NULL, '2024-03-01T12:00:00.000000+00:00')",
                 (SHOP,))
    conn.execute("INSERT INTO events (shop, kind, user_key, customer_id, product_id, quantity, order_id, occurred_at,"
                 " source_topic, delivery_id, dedupe_key) VALUES (?, 'purchase', 'c:c1', 'c1', 'p1', 1, '1',"
                 " '2024-03-01T12:00:00.000000+00:00', 'orders/create', 'wh-1', 'order:1:line:1')", (SHOP,))
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()

    # Act
    store = SQLiteEventStore(path)

    # Assert
    try:
        assert raw(store, "PRAGMA user_version") == [(len(SQLITE_MIGRATIONS),)]
        assert store.interactions(SHOP) == [Interaction("c:c1", "p1", EventKind.PURCHASE, T0, "1")]
        assert store.apply(delivery("wh-1"), ChangeSet()) is None
        assert store.export_customer(SHOP, "c1")["events"][0]["dedupe_key"] == "order:1:line:1"
        store.set_shop_installed(SHOP, True)
        assert store.installed_shops() == [SHOP]
        assert store.redact_customer(SHOP, "c1", []) == 1
    finally:
        store.close()


def test_opening_a_file_with_a_newer_schema_is_refused(tmp_path):
    # Arrange
    path = tmp_path / "events.sqlite3"
    SQLiteEventStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(SQLITE_MIGRATIONS) + 1}")
    conn.close()

    # Act / Assert
    with pytest.raises(StoreError, match=f"schema version {len(SQLITE_MIGRATIONS) + 1} is newer than this code knows"):
        SQLiteEventStore(path)


def test_open_event_store_picks_sqlite_from_the_url(tmp_path):
    # Act
    store = open_event_store(f"sqlite:///{tmp_path}/nested/dir/events.sqlite3")

    # Assert
    try:
        assert isinstance(store, SQLiteEventStore)
        assert store.path == f"{tmp_path}/nested/dir/events.sqlite3"
        assert Path(store.path).is_file()
    finally:
        store.close()


def test_bug_a_failed_commit_leaves_the_store_writable(store):
    """BUG recommender/store.py SQLiteEventStore._write (169-172 at 9d2bcd2): a failed COMMIT is not rolled back.

    When COMMIT itself raises (here a deferred foreign-key violation, a real SQLite behaviour; in
    production SQLITE_BUSY or an I/O error at commit), _write turns it into StoreError but leaves
    the thread's connection inside the open BEGIN IMMEDIATE transaction. That connection keeps the
    write lock: every later write on it fails with "cannot start a transaction within a
    transaction", and every other writer (thread or process) waits out its timeout and fails.
    """
    # Arrange: a trigger makes one event add a row whose deferred foreign key is checked at COMMIT
    _poison(store, "CREATE TABLE parent (id TEXT PRIMARY KEY)")
    _poison(store, "CREATE TABLE child (parent_id TEXT REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)")
    _poison(store, "CREATE TRIGGER poison AFTER INSERT ON events WHEN NEW.product_id = 'poison'"
                   " BEGIN INSERT INTO child VALUES ('no-such-parent'); END")
    with pytest.raises(StoreError, match="FOREIGN KEY constraint failed"):
        store.apply(delivery("wh-1"), ChangeSet(events=(event("fine", dedupe_key="1"),
                                                        event("poison", dedupe_key="2"))))

    # Act
    stored = store.apply(delivery("wh-2"), ChangeSet(events=(event("next", dedupe_key="3"),)))

    # Assert
    assert stored == 1
    assert [i.product_id for i in store.interactions(SHOP)] == ["next"]


def test_bug_memory_store_is_shared_by_every_thread():
    """BUG recommender/store.py SQLiteEventStore.__init__/_connection (122, 129-139 at 9d2bcd2): ":memory:" is broken.

    Each thread opens its own connection, and every sqlite3.connect(":memory:") is a separate,
    empty database; only the constructing thread's one was migrated. Settings accept
    EVENT_STORE_URL=sqlite:///:memory:, and the server uses threads, so a second thread fails with
    "no such table: events" (raw sqlite3.OperationalError on reads, StoreError on writes).
    """
    # Arrange
    store = SQLiteEventStore(":memory:")
    store.add_events([event(dedupe_key="1")])
    seen = {}

    def read_from_another_thread():
        try:
            seen["count"] = store.count_events()
        except Exception as exc:  # reported by the assertion below
            seen["error"] = repr(exc)

    # Act
    worker = threading.Thread(target=read_from_another_thread)
    worker.start()
    worker.join()
    store.close()

    # Assert
    assert seen == {"count": 1}


def test_a_delivery_of_more_products_than_one_statement_takes_gets_every_flag(any_store):
    # Arrange: more products than REFRESH_BATCH, every other one sold out
    from recommender.store import REFRESH_BATCH

    n = REFRESH_BATCH * 2 + 7
    catalog = tuple(CatalogProduct(SHOP, f"p{i}", published_at=T0, variants=(
        CatalogVariant(f"v{i}", f"i{i}", i % 2, tracked=True),)) for i in range(n))

    # Act
    any_store.apply(delivery("wh-bulk", topic="products/create"), ChangeSet(upsert_products=catalog))

    # Assert
    assert any_store.unsellable_product_ids(SHOP) == {f"p{i}" for i in range(0, n, 2)}


def test_writes_queued_behind_a_commit_share_one_transaction_and_a_failing_one_alone_is_undone(store):
    # Arrange: while the write lock is held (as during a slow fsync), four deliveries and one failing write queue
    results = {}

    def fails(conn):
        conn.execute("INSERT INTO shop_state (shop, installed, changed_at) VALUES ('x.myshopify.com', 1, 'now')")
        raise ValueError("planted failure")

    def write(i):
        try:
            if i < 4:
                results[i] = store.apply(delivery(f"w{i}"), ChangeSet(events=[purchase(f"o{i}", 1, f"p{i}")]))
            else:
                results[i] = store._write(fails)
        except Exception as exc:
            results[i] = exc

    before = store.group_commits
    writers = [threading.Thread(target=write, args=(i,)) for i in range(5)]
    with store._write_lock:
        for writer in writers:
            writer.start()
        deadline = time.monotonic() + 10
        while len(store._queue) < 5 and time.monotonic() < deadline:
            time.sleep(0.001)
        queued = len(store._queue)

    # Act: the lock is free; the first writer to take it commits all five
    for writer in writers:
        writer.join(10)

    # Assert
    assert queued == 5
    assert [results[i] for i in range(4)] == [1, 1, 1, 1]  # each delivery stored its one new event
    assert isinstance(results[4], ValueError) and str(results[4]) == "planted failure"
    assert store.group_commits - before == 1
    assert raw(store, "SELECT count(*) FROM events") == [(4,)]
    assert raw(store, "SELECT count(*) FROM deliveries") == [(4,)]
    assert raw(store, "SELECT count(*) FROM shop_state WHERE shop = 'x.myshopify.com'") == [(0,)]  # undone alone


def test_a_write_error_inside_a_group_is_a_store_error_for_that_writer_only(store):
    # Arrange
    store.apply(delivery("first"), ChangeSet(events=[purchase("o1", 1, "p1")]))

    # Act
    with pytest.raises(StoreError, match="event store write failed: no such table"):
        store._write(lambda conn: conn.execute("INSERT INTO no_such_table VALUES (1)"))
    stored = store.apply(delivery("second"), ChangeSet(events=[purchase("o2", 1, "p2")]))

    # Assert: the store keeps writing
    assert stored == 1
    assert raw(store, "SELECT count(*) FROM events") == [(2,)]
