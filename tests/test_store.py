"""SQLiteEventStore on a real file in tmp_path: durability settings, schema, queries, atomicity, threads."""

import random
import sqlite3
import threading
from datetime import datetime, timedelta, timezone

import pytest

from recommender.errors import StoreError
from recommender.events import CatalogProduct, CatalogVariant, ChangeSet, Delivery, Event, EventKind
from recommender.store import SQLITE_MIGRATIONS, Interaction, SQLiteEventStore, open_event_store
from tests.conftest import SHOP

OTHER_SHOP = "other-shop.myshopify.com"
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)


def event(product_id="p1", customer_id="c1", kind=EventKind.VIEW, at=T0, shop=SHOP, dedupe_key=None, **extra):
    return Event(kind=kind, shop=shop, product_id=product_id, occurred_at=at, customer_id=customer_id,
                 dedupe_key=dedupe_key, **extra)


def delivery(webhook_id, shop=SHOP, topic="orders/create"):
    return Delivery(shop=shop, webhook_id=webhook_id, topic=topic)


def raw(store, sql, params=()):
    """Read the store's file through an independent connection."""
    conn = sqlite3.connect(store.path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


# --- durability and schema ---------------------------------------------------------------


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
    assert version >= 1
    tables = {name for (name,) in raw(store, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables >= {"deliveries", "events", "products", "variants"}


def test_reopening_the_same_file_is_idempotent_and_keeps_the_data(tmp_path):
    # Arrange
    path = tmp_path / "events.sqlite3"
    first = SQLiteEventStore(path)
    first.add_events([event(dedupe_key="k1")])
    first.close()
    schema_before = raw(first, "SELECT type, name, sql FROM sqlite_master ORDER BY name")

    # Act
    second = SQLiteEventStore(path)
    third = SQLiteEventStore(path)

    # Assert
    try:
        assert raw(second, "PRAGMA user_version") == [(len(SQLITE_MIGRATIONS),)]
        assert raw(second, "SELECT type, name, sql FROM sqlite_master ORDER BY name") == schema_before
        assert second.count_events() == 1
        assert third.interactions(SHOP) == [Interaction("c:c1", "p1", EventKind.VIEW, T0)]
    finally:
        second.close()
        third.close()


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
        assert (tmp_path / "nested" / "dir" / "events.sqlite3").is_file()
    finally:
        store.close()


# --- queries -----------------------------------------------------------------------------


def test_history_is_newest_first_and_honours_limit(store):
    # Arrange: inserted out of order, with offsets, so ordering must come from UTC time, not insertion
    plus_five = timezone(timedelta(hours=5))
    store.add_events([
        event("p-mid", at=T0, dedupe_key="a"),
        event("p-newest", at=datetime(2024, 3, 1, 20, 0, tzinfo=plus_five), dedupe_key="b"),  # 15:00 UTC
        event("p-oldest", at=T0 - timedelta(days=1), dedupe_key="c"),
        event("p-newer", at=datetime(2024, 3, 1, 18, 0, tzinfo=plus_five), dedupe_key="d"),  # 13:00 UTC
        event("p-someone-else", customer_id="c2", at=T0 + timedelta(days=9), dedupe_key="e"),
    ])

    # Act
    everything = store.history(SHOP, "c:c1", 10)
    latest_two = store.history(SHOP, "c:c1", 2)

    # Assert
    assert [i.product_id for i in everything] == ["p-newest", "p-newer", "p-mid", "p-oldest"]
    assert everything[0].occurred_at == datetime(2024, 3, 1, 15, 0, tzinfo=timezone.utc)
    assert [i.product_id for i in latest_two] == ["p-newest", "p-newer"]
    assert store.history(SHOP, "c:nobody", 10) == []


def test_history_breaks_ties_by_latest_insert(store):
    # Arrange
    store.add_events([event("first", dedupe_key="1"), event("second", dedupe_key="2")])

    # Act
    history = store.history(SHOP, "c:c1", 1)

    # Assert
    assert history == [Interaction("c:c1", "second", EventKind.VIEW, T0)]


def test_interactions_never_mix_two_shops_with_the_same_product_ids(store):
    # Arrange
    store.add_events([
        event("p1", customer_id="alice", kind=EventKind.PURCHASE, shop=SHOP, dedupe_key="k"),
        event("p2", customer_id="alice", kind=EventKind.VIEW, shop=SHOP, dedupe_key="k2"),
        event("p1", customer_id="bob", kind=EventKind.ADD_TO_CART, shop=OTHER_SHOP, dedupe_key="k"),
    ])

    # Act
    mine = store.interactions(SHOP)
    theirs = store.interactions(OTHER_SHOP)

    # Assert
    assert mine == [Interaction("c:alice", "p1", EventKind.PURCHASE, T0),
                    Interaction("c:alice", "p2", EventKind.VIEW, T0)]
    assert theirs == [Interaction("c:bob", "p1", EventKind.ADD_TO_CART, T0)]
    assert store.shops() == [OTHER_SHOP, SHOP]
    assert store.history(OTHER_SHOP, "c:alice", 10) == []


def test_same_dedupe_key_is_stored_once_per_shop(store):
    # Act
    first = store.add_events([event(dedupe_key="order:1:line:1"), event(dedupe_key="order:1:line:1")])
    second = store.add_events([event(dedupe_key="order:1:line:1")])
    other_shop = store.add_events([event(dedupe_key="order:1:line:1", shop=OTHER_SHOP)])
    no_key = store.add_events([event(), event()])

    # Assert
    assert (first, second, other_shop, no_key) == (1, 0, 1, 2)  # NULL keys never collide
    assert (store.count_events(SHOP), store.count_events(OTHER_SHOP)) == (3, 1)


def test_products_excludes_deleted_and_reads_variants_back(store):
    # Arrange
    shirt = CatalogProduct(SHOP, "10", title="Shirt", handle="shirt", price=19.99, published_at=T0,
                           variants=(CatalogVariant("101", "9001", 0, tracked=True),
                                     CatalogVariant("102", None, 4, tracked=True)))
    mug = CatalogProduct(SHOP, "20", title="Mug", handle="mug", status="draft")
    store.apply(delivery("wh-1", topic="products/create"), ChangeSet(upsert_products=(shirt, mug)))
    store.apply(delivery("wh-x", shop=OTHER_SHOP), ChangeSet(upsert_products=(
        CatalogProduct(OTHER_SHOP, "30", title="Elsewhere"),)))

    # Act
    store.apply(delivery("wh-2", topic="products/delete"), ChangeSet(delete_product_ids=("20",)))
    products = store.products(SHOP)

    # Assert
    assert products == {"10": shirt}
    assert products["10"].available is True
    assert store.deleted_product_ids(SHOP) == {"20"}
    assert list(store.products(OTHER_SHOP)) == ["30"]


def test_product_update_replaces_its_variants(store):
    # Arrange
    store.apply(delivery("wh-1"), ChangeSet(upsert_products=(
        CatalogProduct(SHOP, "10", title="Old", variants=(CatalogVariant("101"), CatalogVariant("102"))),)))

    # Act
    store.apply(delivery("wh-2"), ChangeSet(upsert_products=(
        CatalogProduct(SHOP, "10", title="New", variants=(CatalogVariant("103", tracked=True,
                                                                         inventory_quantity=0),)),)))

    # Assert
    product = store.products(SHOP)["10"]
    assert product.title == "New"
    assert product.variants == (CatalogVariant("103", None, 0, True, False),)
    assert product.available is False
    assert raw(store, "SELECT COUNT(*) FROM variants") == [(1,)]


def test_apply_returns_none_for_a_webhook_id_seen_before(store):
    # Act
    first = store.apply(delivery("wh-1"), ChangeSet(events=(event(dedupe_key="a"), event(dedupe_key="b"))))
    again = store.apply(delivery("wh-1"), ChangeSet(events=(event(dedupe_key="c"),)))

    # Assert
    assert (first, again) == (2, None)
    assert (store.count_events(), store.count_deliveries()) == (2, 1)


# --- atomicity ---------------------------------------------------------------------------


def _poison(store, sql):
    """Install a real SQLite trigger that aborts a write, through an independent connection."""
    conn = sqlite3.connect(store.path)
    try:
        conn.execute(sql)
        conn.commit()
    finally:
        conn.close()


def test_apply_is_atomic_when_the_second_event_fails(store):
    # Arrange
    _poison(store, "CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.product_id = 'poison'"
                   " BEGIN SELECT RAISE(ABORT, 'poisoned row'); END")
    changes = ChangeSet(
        events=(event("fine", dedupe_key="line:1"), event("poison", dedupe_key="line:2")),
        upsert_products=(CatalogProduct(SHOP, "fine", title="Fine"),),
    )

    # Act
    with pytest.raises(StoreError, match="poisoned row"):
        store.apply(delivery("wh-1"), changes)

    # Assert: no event, no product, and no delivery row (so Shopify's retry is not taken for a duplicate)
    assert (store.count_events(), store.count_deliveries()) == (0, 0)
    assert store.products(SHOP) == {}
    _poison(store, "DROP TRIGGER poison")
    assert store.apply(delivery("wh-1"), changes) == 2


def test_apply_is_atomic_when_the_catalog_write_fails_after_the_events(store):
    # Arrange
    _poison(store, "CREATE TRIGGER poison BEFORE INSERT ON variants WHEN NEW.variant_id = 'bad'"
                   " BEGIN SELECT RAISE(ABORT, 'poisoned variant'); END")
    changes = ChangeSet(
        events=(event(dedupe_key="line:1"),),
        upsert_products=(CatalogProduct(SHOP, "10", variants=(CatalogVariant("ok"), CatalogVariant("bad"))),),
    )

    # Act
    with pytest.raises(StoreError, match="poisoned variant"):
        store.apply(delivery("wh-1"), changes)

    # Assert
    assert (store.count_events(), store.count_deliveries()) == (0, 0)
    assert raw(store, "SELECT COUNT(*) FROM products") == [(0,)]
    assert raw(store, "SELECT COUNT(*) FROM variants") == [(0,)]


def test_add_events_is_atomic(store):
    # Arrange
    _poison(store, "CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.product_id = 'poison'"
                   " BEGIN SELECT RAISE(ABORT, 'poisoned row'); END")

    # Act
    with pytest.raises(StoreError):
        store.add_events([event("a", dedupe_key="1"), event("b", dedupe_key="2"), event("poison", dedupe_key="3")])

    # Assert
    assert store.count_events() == 0
    assert store.add_events([event("a", dedupe_key="1")]) == 1  # the connection is usable afterwards


# --- concurrency -------------------------------------------------------------------------


def test_concurrent_writers_store_each_delivery_exactly_once(store):
    # Arrange: 8 threads x 50 deliveries; the last 25 of each thread are the same 25 webhook ids
    threads, per_thread, shared = 8, 50, 25
    plans = []
    for t in range(threads):
        ids = [f"wh-t{t}-{i}" for i in range(per_thread - shared)] + [f"wh-shared-{i}" for i in range(shared)]
        random.Random(t).shuffle(ids)
        plans.append(ids)
    results: list[list[int | None]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def work(t):
        try:
            barrier.wait()
            for webhook_id in plans[t]:
                changes = ChangeSet(events=(event(f"p-{webhook_id}", dedupe_key=f"key-{webhook_id}"),))
                results[t].append(store.apply(delivery(webhook_id), changes))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    # Act
    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()

    # Assert
    unique = threads * (per_thread - shared) + shared
    flat = [r for rs in results for r in rs]
    assert errors == []
    assert len(flat) == threads * per_thread == 400
    assert unique == 225
    assert sum(1 for r in flat if r == 1) == unique
    assert sum(1 for r in flat if r is None) == 400 - unique
    assert store.count_deliveries() == unique
    assert store.count_events() == unique
    assert raw(store, "SELECT COUNT(DISTINCT dedupe_key) FROM events") == [(unique,)]


# --- bugs --------------------------------------------------------------------------------


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
