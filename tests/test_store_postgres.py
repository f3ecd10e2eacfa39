"""What only the PostgreSQL store has: URLs, the versioned schema, connections per thread, lost connections.

Its behaviour is tests/test_store.py's contract, which runs on both backends; the last test here
replays the same signed webhooks into both and compares every answer.
"""

from __future__ import annotations

import contextlib
import threading
from datetime import datetime, timedelta, timezone

import pytest

from recommender.errors import ConfigError, StoreError
from recommender.changes import ChangeSet, Delivery, Event, IdentityLink, RefundLine
from recommender.events import EventKind, order_line_key
from recommender.settings import Settings
from recommender.store import SQLiteEventStore, open_event_store
from tests.conftest import SHOP, order_payload
from tests.postgres_schema import run, server_url, temporary_schema, with_search_path
from webhooks.backfill import ORDERS_TOPIC, PRODUCTS_TOPIC, order_changes, product_changes
from webhooks.topics import TRANSLATORS, TopicContext


@pytest.fixture
def schema_url():
    with temporary_schema() as url:
        yield url


@pytest.fixture
def pg_store(schema_url):
    from recommender.store_postgres import PostgresEventStore

    store = PostgresEventStore(schema_url)
    yield store
    store.close()


# --- URLs and settings (no server needed) ------------------------------------------------------


@pytest.mark.parametrize("url", ["postgresql://recs:pw@db.internal:5432/events", "postgres://recs@db/events"])
def test_settings_accept_postgresql_urls(url):
    assert Settings.from_mapping({"EVENT_STORE_URL": url}).event_store_url == url


def test_a_malformed_url_is_a_config_error_naming_the_variable():
    with pytest.raises(ConfigError, match="^EVENT_STORE_URL is not a valid PostgreSQL URL"):
        open_event_store("postgresql://recs@db/events?no_such_parameter=1")


def test_an_unreachable_server_is_a_store_error_that_never_shows_the_password():
    with pytest.raises(StoreError) as raised:
        open_event_store("postgresql://recs:hunter2-secret@127.0.0.1:1/events")

    assert str(raised.value).startswith("cannot open the PostgreSQL event store at 127.0.0.1:1/events")
    assert "hunter2" not in str(raised.value)


# --- the versioned schema --------------------------------------------------------------------


def test_open_event_store_picks_postgresql_for_both_schemes(schema_url):
    from recommender.store_postgres import PostgresEventStore

    for url in (schema_url, schema_url.replace("postgresql://", "postgres://", 1)):
        store = open_event_store(url)
        try:
            assert isinstance(store, PostgresEventStore)
        finally:
            store.close()


def test_every_migration_is_recorded_once_in_the_tests_own_schema(pg_store, schema_url):
    from recommender.store_postgres import POSTGRES_MIGRATIONS

    # Act
    versions = run(schema_url, "SELECT version FROM schema_migrations ORDER BY version")
    tables = {name for (name,) in run(schema_url, "SELECT table_name FROM information_schema.tables"
                                                  " WHERE table_schema = current_schema()")}

    # Assert
    assert versions == [(v,) for v in range(1, len(POSTGRES_MIGRATIONS) + 1)]
    assert tables == {"schema_migrations", "deliveries", "events", "products", "variants", "identity_links",
                      "inventory_levels", "adjustments", "data_exports", "shop_state", "training_runs",
                      "pending_refunds", "redactions", "recommendation_events"}


def test_reopening_changes_neither_the_schema_nor_its_history(pg_store, schema_url):
    # Arrange
    def snapshot():
        return (run(schema_url, "SELECT table_name, column_name, data_type FROM information_schema.columns"
                                " WHERE table_schema = current_schema() ORDER BY 1, 2"),
                run(schema_url, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
                                " ORDER BY 1"),
                run(schema_url, "SELECT version, applied_at FROM schema_migrations ORDER BY 1"))

    before = snapshot()

    # Act
    open_event_store(schema_url).close()

    # Assert
    assert snapshot() == before


def test_opening_a_store_on_a_current_schema_waits_for_one_round_trip_beyond_the_connection(pg_store, schema_url):
    # Arrange: the schema is current (pg_store migrated it); a new instance opens the store 50 ms away
    from urllib.parse import urlsplit

    import psycopg

    from bench.round_trips import RoundTripCounter
    from recommender.store_postgres import PostgresEventStore

    with RoundTripCounter(urlsplit(schema_url).port or 5432) as relay:
        # Act (each connection is closed only once counted: its goodbye reaches the relay 50 ms later)
        plain = psycopg.connect(relay.url(schema_url), autocommit=True)
        connecting = relay.turns
        relay.reset()
        store = PostgresEventStore(relay.url(schema_url))
        opening = relay.turns
        store.close()
        plain.close()

    # Assert: the connection, then the one statement that finds the schema current (six more with the migration lock)
    assert opening == connecting + 1, (connecting, opening)


@pytest.mark.parametrize("elsewhere", ["current", "a newer release's"])
def test_a_schema_elsewhere_on_the_search_path_does_not_stand_in_for_this_ones(pg_store, schema_url, elsewhere):
    # Arrange: the test's schema is current (or newer than this code); an empty one is put before it on the path
    from recommender.store_postgres import POSTGRES_MIGRATIONS

    current = run(schema_url, "SELECT current_schema()")[0][0]
    if elsewhere == "a newer release's":
        run(schema_url, "INSERT INTO schema_migrations (version) VALUES (%s)", (len(POSTGRES_MIGRATIONS) + 1,))
    with temporary_schema() as empty_url:
        empty = run(empty_url, "SELECT current_schema()")[0][0]
        both = with_search_path(server_url(), f"{empty},{current}")

        # Act
        open_event_store(both).close()

        # Assert: the tables were made in the first schema, as a fresh schema gets them
        versions = run(empty_url, "SELECT version FROM schema_migrations ORDER BY version")
        assert versions == [(v,) for v in range(1, len(POSTGRES_MIGRATIONS) + 1)]
        assert run(empty_url, "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s",
                   (empty,)) == [(14,)]


def schema_at_version(url: str, version: int) -> None:
    """The schema as an earlier release left it: the first `version` migrations applied and recorded."""
    from recommender.store_postgres import POSTGRES_MIGRATIONS

    run(url, "CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
    for number, script in enumerate(POSTGRES_MIGRATIONS[:version], start=1):
        run(url, script)
        run(url, "INSERT INTO schema_migrations (version) VALUES (%s)", (number,))


def schema_before(url: str, marker: str) -> None:
    """The schema as the release before the migration whose script holds `marker` left it."""
    from recommender.store_postgres import POSTGRES_MIGRATIONS

    schema_at_version(url, next(k for k, script in enumerate(POSTGRES_MIGRATIONS) if marker in script))


def test_an_upgraded_schema_knows_which_of_its_stored_products_are_for_sale(schema_url):
    # Arrange: a schema at the version before the `sellable` flag, holding a product for sale and a sold-out one
    schema_before(schema_url, "sellable")
    for pid in ("in-stock", "sold-out"):
        run(schema_url, "INSERT INTO products (shop, product_id, title, handle, status, published_at, product_type,"
                        " vendor) VALUES (%s, %s, '', '', 'active', now(), '', '')", (SHOP, pid))
    run(schema_url, "INSERT INTO variants VALUES (%s, 'v1', 'in-stock', 'i1', 2, true, false)", (SHOP,))
    run(schema_url, "INSERT INTO variants VALUES (%s, 'v2', 'sold-out', 'i2', 0, true, false)", (SHOP,))

    # Act
    store = open_event_store(schema_url)

    # Assert
    try:
        assert store.unsellable_product_ids(SHOP) == {"sold-out"}
    finally:
        store.close()


def test_an_upgraded_schema_knows_which_of_its_stored_products_are_backordered(schema_url):
    # Arrange: a schema at the version before migration 13: products selling past zero with nothing on hand, one of
    # them a draft, and one with a unit on hand
    schema_before(schema_url, "ADD COLUMN backordered")
    for pid, status, quantity in (("past-zero", "active", 0), ("draft", "draft", 0), ("on-hand", "active", 1)):
        run(schema_url, "INSERT INTO products (shop, product_id, title, handle, status, published_at, product_type,"
                        " vendor, sellable) VALUES (%s, %s, '', '', %s, now(), '', '', %s)",
            (SHOP, pid, status, status == "active"))
        run(schema_url, "INSERT INTO variants (shop, variant_id, product_id, inventory_item_id, inventory_quantity,"
                        " listed_quantity, tracked, continue_selling) VALUES (%s, %s, %s, %s, %s, %s, true, true)",
            (SHOP, f"v-{pid}", pid, f"i-{pid}", quantity, quantity))

    # Act
    store = open_event_store(schema_url)

    # Assert
    try:
        assert store.catalog_state(SHOP)[:2] == ({"draft"}, {"past-zero"})
    finally:
        store.close()


def test_an_upgraded_schema_queues_its_installed_shops_for_training(schema_url):
    # Arrange: a schema at the version before the training queue, with two shops installed and one removed
    schema_before(schema_url, "train_started_at")
    for shop, installed in [("b.myshopify.com", True), ("a.myshopify.com", True), ("gone.myshopify.com", False)]:
        run(schema_url, "INSERT INTO shop_state VALUES (%s, %s, now())", (shop, installed))

    # Act
    store = open_event_store(schema_url)

    # Assert: never started, so by name; started and finished, the shop goes last with its time
    try:
        assert [tuple(entry[:3]) for entry in store.training_queue()] == [("a.myshopify.com", None, 0),
                                          ("b.myshopify.com", None, 0)]
        store.training_started("a.myshopify.com", datetime(2026, 9, 1, tzinfo=timezone.utc))
        store.training_finished("a.myshopify.com", 12.5)
        assert [tuple(entry[:3]) for entry in store.training_queue()] == [("b.myshopify.com", None, 0),
                                          ("a.myshopify.com", 12.5, 0)]
    finally:
        store.close()


def test_an_upgraded_schema_keeps_a_refund_that_comes_before_its_order(schema_url):
    # Arrange: a schema at the version before pending refunds, which recorded refund 98's key
    schema_before(schema_url, "pending_refunds")
    run(schema_url, "INSERT INTO adjustments VALUES (%s, 'refund:98:line:500')", (SHOP,))
    order = order_payload(5, 6, [7])
    order["line_items"][0].update(id=500, quantity=4)

    # Act: refund 98 again (applied before: not again) and refund 99, both before order 5 (a line of four units)
    store = open_event_store(schema_url)
    try:
        for refund_id in (98, 99):
            store.apply(*webhook("refunds/create", {"id": refund_id, "order_id": 5, "refund_line_items": [
                {"line_item_id": 500, "quantity": 1}]}, f"wh-refund-{refund_id}"))
        store.apply(*webhook("orders/create", order, "wh-order"))

        # Assert
        assert [i.weight_factor for i in store.interactions(SHOP)] == [pytest.approx(0.75)]
    finally:
        store.close()


def test_an_upgraded_schema_keeps_each_variants_payload_total_as_its_stocks_floor(schema_url):
    # Arrange: a schema at the version before migration 8, a variant in stock (5) and one untracked
    schema_before(schema_url, "listed_quantity")
    run(schema_url, "INSERT INTO products (shop, product_id, title, handle, status, published_at, product_type,"
                    " vendor) VALUES (%s, '10', '', '', 'active', now(), '', '')", (SHOP,))
    run(schema_url, "INSERT INTO variants VALUES (%s, '101', '10', '9001', 5, true, false)", (SHOP,))
    run(schema_url, "INSERT INTO variants VALUES (%s, '102', '10', '9002', 7, false, false)", (SHOP,))
    run(schema_url, "INSERT INTO inventory_levels VALUES (%s, '9002', '1', 1)", (SHOP,))

    # Act: one location reports 0 for the tracked variant, 2 for the untracked one
    store = open_event_store(schema_url)
    try:
        for item, available in (("9001", 0), ("9002", 2)):
            store.apply(*webhook("inventory_levels/update", {"inventory_item_id": item, "location_id": 2,
                                                             "available": available}, f"wh-{item}"))

        # Assert: the payload's 5 stand; the untracked one had no floor: location 1's 1 and location 2's 2
        assert {v.variant_id: v.inventory_quantity for v in store.products(SHOP)["10"].variants} == {
            "101": 5, "102": 3}
        assert store.unsellable_product_ids(SHOP) == set()
    finally:
        store.close()


def test_an_upgraded_schema_records_redactions(schema_url):
    from recommender.store_postgres import POSTGRES_MIGRATIONS

    # Arrange: a schema at the version before migration 9, holding an order of customer 6 and one of customer 7
    schema_before(schema_url, "CREATE TABLE redactions")
    for order_id, customer_id in (("5", "6"), ("8", "7")):
        run(schema_url, "INSERT INTO events (shop, kind, user_key, customer_id, product_id, quantity, order_id,"
                        " occurred_at, source_topic, delivery_id, dedupe_key) VALUES (%s, 'purchase', %s, %s, 'p1', 1,"
                        " %s, now(), 'orders/create', 'wh', %s)",
            (SHOP, f"c:{customer_id}", customer_id, order_id, f"order:{order_id}:line:1"))

    # Act
    store = open_event_store(schema_url)
    try:
        deleted = store.redact_customer(SHOP, "6", ["5", "9"])

        # Assert
        assert run(schema_url, "SELECT max(version) FROM schema_migrations") == [(len(POSTGRES_MIGRATIONS),)]
        assert deleted == 1 and store.count_events(SHOP) == 1
        redacted = store.redacted(SHOP)
        assert (set(redacted.customers), redacted.order_ids) == ({"6"}, {"5", "9"})
    finally:
        store.close()


def test_an_upgraded_schema_keeps_views_and_clicks_of_answers(schema_url):
    from recommender.store import RecommendationSignal
    from recommender.store_postgres import POSTGRES_MIGRATIONS

    # Arrange: a schema at the version before migration 10, holding a pixel's purchase
    schema_before(schema_url, "CREATE TABLE recommendation_events")
    run(schema_url, "INSERT INTO events (shop, kind, user_key, anonymous_id, product_id, quantity, occurred_at,"
                    " source_topic, delivery_id, dedupe_key) VALUES (%s, 'purchase', 'a:px-1', 'px-1', 'p1', 1,"
                    " '2024-03-01T12:00:10Z', 'pixel/checkout_completed', 'sh-o', 'pixel:sh-o:p1')", (SHOP,))
    run(schema_url, "INSERT INTO shop_state VALUES (%s, true, now())", (SHOP,))
    t0 = datetime(2024, 3, 1, 12, tzinfo=timezone.utc)

    # Act
    store = open_event_store(schema_url)
    try:
        stored = store.add_beacon_if_installed(SHOP, [], [RecommendationSignal(
            SHOP, "click", "sh-c", "px-1", "0" * 32, "related", "p1", 0, t0)])

        # Assert
        assert run(schema_url, "SELECT max(version) FROM schema_migrations") == [(len(POSTGRES_MIGRATIONS),)]
        assert stored == (0, 1)
        assert [p.product_id for p in store.attributable_purchases(SHOP, t0, t0 + timedelta(days=1))] == ["p1"]
    finally:
        store.close()


@pytest.mark.parametrize("built_by_hand", [False, True], ids=["migrated", "index-built-concurrently-first"])
def test_an_upgraded_schema_reads_a_shoppers_latest_events_through_an_index_in_their_order(schema_url, built_by_hand):
    from recommender.changes import Event
    from recommender.events import EventKind

    # Arrange: a schema from before the index (built by hand, as the README suggests for large tables, or not),
    # then 60 events of one shopper, three at each moment, stored in turn
    schema_before(schema_url, "events_by_user_latest")
    if built_by_hand:
        run(schema_url, "CREATE INDEX CONCURRENTLY events_by_user_latest ON events (shop, user_key, occurred_at, id)")
    t0 = datetime(2026, 9, 1, tzinfo=timezone.utc)

    # Act
    store = open_event_store(schema_url)
    try:
        store.add_events([Event(EventKind.VIEW, SHOP, f"p{k}", t0 + timedelta(minutes=k // 3), customer_id="7")
                          for k in range(60)])
        latest = [event.product_id for event in store.history(SHOP, "c:7", 20)]
        indexes = {row[0] for row in run(schema_url, "SELECT indexname FROM pg_indexes WHERE tablename = 'events'"
                                                         " AND schemaname = current_schema()")}
    finally:
        store.close()

    # Assert: newest moment first, and within a moment the event stored last first
    assert latest == [f"p{k}" for k in range(59, 39, -1)]
    assert "events_by_user_latest" in indexes and "events_by_user" not in indexes


def test_a_shoppers_latest_events_are_read_by_walking_the_index_whatever_the_planner_expects(pg_store, schema_url):
    """The planner took shoppers it thought rare for ones with a row or two, and read all of their events through a
    bitmap and sorted them (36–77 ms for 20 of 50,000 in the benchmark). Here its costs are tilted the same way on
    purpose (random_page_cost 40: reading and sorting looks cheaper than walking the index), and the plain statement
    does sort; the read inside `latest_events`, as auto_explain reports it, must still walk the index backwards
    and stop at its limit."""
    import psycopg

    from recommender.changes import Event
    from recommender.events import EventKind

    # Arrange: 3,000 events of one shopper, a second apart, the statistics up to date, the planner tempted
    t0 = datetime(2026, 9, 1, tzinfo=timezone.utc)
    pg_store.add_events([Event(EventKind.VIEW, SHOP, f"p{k}", t0 + timedelta(seconds=k), customer_id="7")
                         for k in range(3000)])
    run(schema_url, "ANALYZE events")
    conn = pg_store._connection()
    conn.execute("SET random_page_cost = 40")
    plain = "\n".join(row[0] for row in conn.execute(
        "EXPLAIN SELECT product_id FROM events WHERE shop = %s AND user_key = %s AND weight_factor > 0"
        " ORDER BY occurred_at DESC, id DESC LIMIT 20", (SHOP, "c:7")))
    try:
        conn.execute("LOAD 'auto_explain'")
    except psycopg.errors.InsufficientPrivilege:
        pytest.skip("auto_explain can be loaded only by a superuser; this test reads the plan through it")
    plans: list[str] = []
    conn.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
    conn.execute("SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on;"
                 " SET client_min_messages = log")

    # Act
    try:
        latest = [event.product_id for event in pg_store.history(SHOP, "c:7", 20)]
    finally:
        conn.execute("RESET client_min_messages; RESET auto_explain.log_min_duration; RESET random_page_cost")

    # Assert
    assert "Sort" in plain  # the temptation is real: the statement on its own reads all 3,000 and sorts them
    inner = [plan for plan in plans if "FROM events e" in plan]
    assert len(inner) == 1, plans
    assert "Index Scan Backward using events_by_user_latest" in inner[0]
    assert "Sort" not in inner[0] and "Bitmap" not in inner[0]
    assert latest == [f"p{k}" for k in range(2999, 2979, -1)]


def test_a_schema_newer_than_the_code_is_refused(pg_store, schema_url):
    from recommender.store_postgres import POSTGRES_MIGRATIONS

    newer = len(POSTGRES_MIGRATIONS) + 1
    run(schema_url, "INSERT INTO schema_migrations (version) VALUES (%s)", (newer,))

    with pytest.raises(StoreError, match=f"schema version {newer} is newer than this code knows"):
        open_event_store(schema_url)


def test_a_search_path_without_an_existing_schema_is_refused():
    url = server_url()
    missing = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3Dno_such_schema_here"

    with pytest.raises(StoreError, match="search_path names no existing schema"):
        open_event_store(missing)


# --- connections -----------------------------------------------------------------------------


def test_each_thread_has_its_own_connection(pg_store):
    # Arrange
    pids = {}

    def ask(name):
        pids[name] = pg_store._connection().execute("SELECT pg_backend_pid()").fetchone()[0]

    # Act
    ask("main")
    worker = threading.Thread(target=ask, args=("worker",))
    worker.start()
    worker.join()
    ask("main again")

    # Assert
    assert pids["main"] == pids["main again"] != pids["worker"]


def test_a_connection_dropped_by_the_server_is_replaced(pg_store, schema_url):
    # Arrange: the server ends the thread's idle connection (a restart, an idle timeout)
    def drop_the_connection():
        pid = pg_store._connection().execute("SELECT pg_backend_pid()").fetchone()[0]
        run(schema_url, "SELECT pg_terminate_backend(%s)", (pid,))

    drop_the_connection()

    # Act / Assert: a read is simply repeated on a new connection, statements sent together too
    assert pg_store.count_events() == 0
    drop_the_connection()
    assert pg_store.installed_with_histories(SHOP, ["c:1"], 10) == (False, [])

    # a write fails once (Shopify retries the webhook), and the next one reconnects
    drop_the_connection()
    with pytest.raises(StoreError, match="write failed"):
        pg_store.apply(Delivery(SHOP, "wh-1", "orders/create"), ChangeSet())
    assert pg_store.apply(Delivery(SHOP, "wh-1", "orders/create"), ChangeSet()) == 0


# --- the same answers as SQLite --------------------------------------------------------------


def deliveries_of_a_small_shop() -> list[tuple[str, dict, str]]:
    """(topic, payload, webhook id) in Shopify's shapes: catalog, orders, a guest cart and its checkout, refunds,
    a cancellation, inventory, a stale update and a repeated delivery."""
    def product(pid, title, updated_at, status="active", quantity=3):
        return {"id": pid, "title": title, "handle": f"p-{pid}", "status": status, "product_type": "Mugs",
                "vendor": "Acme", "published_at": "2026-10-01T00:00:00Z", "updated_at": updated_at,
                "image": {"src": f"https://cdn.example/{pid}.jpg"},
                "variants": [{"id": pid * 10, "price": "12.50", "inventory_item_id": pid * 100,
                              "inventory_quantity": quantity, "inventory_management": "shopify",
                              "inventory_policy": "deny"}]}

    now = datetime.now(timezone.utc).replace(microsecond=123456)
    later_order = order_payload(104, None, [7, 8], created_at=(now - timedelta(days=1)).isoformat(),
                                cart_token="tok-guest")
    refunded = order_payload(105, 1, [2])
    refunded["line_items"][0]["quantity"] = 4
    sent = [
        ("products/create", product(1, "One", "2026-10-01T00:00:00Z"), "wh-p1"),
        ("products/create", product(2, "Two", "2026-10-01T00:00:00Z"), "wh-p2"),
        ("products/update", product(1, "One v2", "2026-10-03T00:00:00+02:00"), "wh-p1-v2"),
        ("products/update", product(1, "One stale", "2026-10-02T00:00:00Z"), "wh-p1-stale"),
        ("products/create", product(3, "Three", "2026-10-01T00:00:00Z", status="draft"), "wh-p3"),
        ("products/delete", {"id": 3}, "wh-p3-delete"),
        ("inventory_levels/update", {"inventory_item_id": 200, "location_id": 1, "available": 0}, "wh-inv-1"),
        ("inventory_levels/update", {"inventory_item_id": 200, "location_id": 2, "available": 5}, "wh-inv-2"),
        ("orders/create", order_payload(101, 1, [1, 2, 3]), "wh-o101"),
        ("orders/paid", order_payload(101, 1, [1, 2, 3]), "wh-o101-paid"),
        ("orders/create", order_payload(102, 2, [2, 4], created_at="2026-10-02T23:30:00-05:00"), "wh-o102"),
        ("orders/create", order_payload(103, 3, [5]), "wh-o103"),
        ("orders/cancelled", {**order_payload(103, 3, [5]), "cancelled_at": "2026-11-02T00:00:00Z"}, "wh-o103-c"),
        ("orders/create", refunded, "wh-o105"),
        ("refunds/create", {"id": 9, "order_id": 105, "refund_line_items": [{"line_item_id": 10500, "quantity": 1}]},
         "wh-r9"),
        ("refunds/create", {"id": 9, "order_id": 105, "refund_line_items": [{"line_item_id": 10500, "quantity": 1}]},
         "wh-r9-again"),
        ("carts/create", {"id": "tok-a", "token": "tok-a", "updated_at": now.isoformat(),
                          "line_items": [{"id": 1, "product_id": 6, "quantity": 2, "price": "3.00"}]}, "wh-cart"),
        ("checkouts/create", {"token": "chk", "cart_token": "tok-a", "customer": {"id": 2}}, "wh-checkout"),
        ("carts/update", {"id": "tok-a", "token": "tok-a", "updated_at": now.isoformat(),
                          "line_items": [{"id": 2, "product_id": 7, "quantity": 1}]}, "wh-cart-2"),
        ("orders/create", later_order, "wh-o104"),
    ]
    return sent + [sent[8]]  # and one webhook delivered twice


def answers(store, shop: str = SHOP) -> dict:
    """Everything a caller can read from a store, with database row ids and the clock's redaction times left out."""
    def without_ids(export):
        return {**export, "events": [{k: v for k, v in e.items() if k != "id"} for e in export["events"]],
                "redactions": [{k: v for k, v in r.items() if k != "redacted_at"} for r in export["redactions"]]}

    users = {i.user_key for i in store.interactions(shop)} | {"a:tok-a", "a:tok-guest"}
    return {
        "shops": store.shops(),
        "interactions": store.interactions(shop),
        "histories": {user: store.history(shop, user, 3) for user in sorted(users)},
        "products": store.products(shop),
        "deleted": store.deleted_product_ids(shop),
        "activity": sorted(store.activity_since(shop, datetime(2026, 9, 1, tzinfo=timezone.utc)),
                           key=lambda b: (b.product_id, b.kind.value, b.day)),
        "exports": {c: without_ids(store.export_customer(shop, c)) for c in ("1", "2", "3")},
        "installed": (store.installed_shops(), store.is_shop_installed(shop)),
        "counts": (store.count_events(), store.count_deliveries()),
    }


def test_both_backends_give_the_same_answers_to_the_same_webhooks(pg_store, tmp_path):
    # Arrange
    sqlite_store = SQLiteEventStore(tmp_path / "events.sqlite3")
    outcomes = {"sqlite": [], "postgresql": []}
    deliveries = deliveries_of_a_small_shop()  # made once for both: their times are read off the clock

    # Act
    for name, store in (("sqlite", sqlite_store), ("postgresql", pg_store)):
        for topic, payload, webhook_id in deliveries:
            changes = TRANSLATORS[topic](TopicContext(SHOP, topic, webhook_id), payload)
            outcomes[name].append(store.apply(Delivery(SHOP, webhook_id, topic), changes))
    before = answers(sqlite_store), answers(pg_store)
    redacted = (sqlite_store.redact_customer(SHOP, "1", ["104"]), pg_store.redact_customer(SHOP, "1", ["104"]))
    after_redaction = answers(sqlite_store), answers(pg_store)
    cutoff = datetime(2026, 11, 1, tzinfo=timezone.utc)
    pruned = sqlite_store.prune_events(cutoff), pg_store.prune_events(cutoff)
    after_pruning = answers(sqlite_store), answers(pg_store)
    sqlite_store.close()

    # Assert
    assert outcomes["sqlite"] == outcomes["postgresql"]
    assert outcomes["sqlite"].count(None) == 1  # the webhook delivered twice
    sqlite_answers, postgres_answers = before
    assert sqlite_answers == postgres_answers
    assert sqlite_answers["products"]["1"].title == "One v2" and "3" in sqlite_answers["deleted"]
    assert [v.inventory_quantity for v in sqlite_answers["products"]["2"].variants] == [5]
    assert len(sqlite_answers["exports"]["2"]["events"]) == 4  # order 102 and the linked cart
    assert redacted[0] == redacted[1] == 6  # order 101 (3 lines), order 105, guest order 104 (2 lines)
    assert after_redaction[0] == after_redaction[1]
    assert pruned[0] == pruned[1] == 2  # order 102, the only one before the cutoff
    assert after_pruning[0] == after_pruning[1]


# --- a backfill's page in one transaction ----------------------------------------------------


def catalog_page_and_what_came_before() -> tuple[list[tuple[Delivery, ChangeSet]], list[tuple[Delivery, ChangeSet]]]:
    """(deliveries stored before, a backfill's page of products) with a known outcome for each product."""
    def product(pid, updated_at, title="", variants=((1, 3),), status="active"):
        return {"id": pid, "title": title or f"Product {pid}", "handle": f"p-{pid}", "status": status,
                "product_type": "Mugs", "vendor": "Acme", "published_at": "2026-10-01T00:00:00Z",
                "updated_at": updated_at, "image": {"src": f"https://cdn.example/{pid}.jpg"},
                "variants": [{"id": pid * 10 + k, "price": f"{10 + k}.00", "inventory_item_id": pid * 100 + k,
                              "inventory_quantity": quantity, "inventory_management": "shopify",
                              "inventory_policy": "deny"} for k, quantity in variants]}

    def delivery(topic, payload, webhook_id):
        translate = (lambda ctx, record: product_changes(SHOP, record, webhook_id)) if topic == PRODUCTS_TOPIC \
            else TRANSLATORS[topic]
        return Delivery(SHOP, webhook_id, topic), translate(TopicContext(SHOP, topic, webhook_id), payload)

    before = [
        delivery("products/create", product(1, "2026-10-05T00:00:00Z", "One as stored"), "wh-1"),
        delivery("products/create", product(2, "2026-10-01T00:00:00Z"), "wh-2"),
        delivery("products/delete", {"id": 2}, "wh-2-delete"),
        delivery("products/create", product(3, "2026-10-01T00:00:00Z", "Three as stored"), "wh-3"),
        delivery("products/create", product(4, "2026-10-01T00:00:00Z", variants=((1, 3), (2, 3))), "wh-4"),
        delivery("products/create", product(5, "2026-10-01T00:00:00Z", "Five as stored"), "backfill:products:5"),
    ]
    page = [
        delivery(PRODUCTS_TOPIC, product(1, "2026-10-02T00:00:00Z", "One older"), "backfill:products:1"),
        delivery(PRODUCTS_TOPIC, product(2, "2026-10-09T00:00:00Z", "Two again"), "backfill:products:2"),
        delivery(PRODUCTS_TOPIC, product(3, "2026-10-09T00:00:00Z", "Three newer"), "backfill:products:3"),
        delivery(PRODUCTS_TOPIC, product(4, "2026-10-09T00:00:00Z", variants=((2, 7),)), "backfill:products:4"),
        delivery(PRODUCTS_TOPIC, product(5, "2026-10-09T00:00:00Z", "Five again"), "backfill:products:5"),
        delivery(PRODUCTS_TOPIC, product(6, "2026-10-09T00:00:00Z", variants=((1, 0),)), "backfill:products:6"),
        delivery(PRODUCTS_TOPIC, product(7, "2026-10-09T00:00:00Z", variants=()), "backfill:products:7"),
        delivery(PRODUCTS_TOPIC, product(8, None, "Eight", status="draft"), "backfill:products:8"),
    ]
    return before, page


def stored_both_ways(pg_store, tmp_path, before, make_page, uninstall: bool = False):
    """`before` applied to SQLite and to PostgreSQL alike (then the shop uninstalled from both, if asked), then the
    page `make_page()` makes: on SQLite one delivery after another (`apply`), on PostgreSQL through `apply_many`.
    Returns the page, what each store returned for it, and what each answers (`answers`, and its unsellable ids)."""
    sqlite_store = SQLiteEventStore(tmp_path / "events.sqlite3")
    for store in (sqlite_store, pg_store):
        for delivery, changes in before:
            store.apply(delivery, changes)
        if uninstall:
            store.set_shop_installed(SHOP, False)
    page = make_page()  # made now: a page received after the uninstall proves a new install
    one_by_one = [sqlite_store.apply(delivery, changes) for delivery, changes in page]
    together = pg_store.apply_many(page)
    expected, got = ({**answers(store), "unsellable": store.unsellable_product_ids(SHOP)}
                     for store in (sqlite_store, pg_store))
    sqlite_store.close()
    return page, one_by_one, together, expected, got


def test_a_page_of_products_stored_set_wise_answers_as_one_delivery_after_another(pg_store, tmp_path):
    # Arrange
    from recommender.store_postgres import _catalog_page

    before, _ = catalog_page_and_what_came_before()

    # Act
    page, one_by_one, set_wise, expected, got = stored_both_ways(
        pg_store, tmp_path, before, lambda: catalog_page_and_what_came_before()[1], uninstall=True)

    # Assert
    assert _catalog_page(page)  # the page took the set-wise path
    assert set_wise == one_by_one == [0, 0, 0, 0, None, 0, 0, 0]  # product 5's webhook id was stored before
    assert got == expected
    products = got["products"]
    assert products["1"].title == "One as stored"  # the page's copy is older than the stored one
    assert "2" in got["deleted"] and "2" not in products  # a deleted product stays deleted
    assert products["3"].title == "Three newer" and products["5"].title == "Five as stored"
    assert [(v.variant_id, v.inventory_quantity) for v in products["4"].variants] == [("42", 7)]
    assert got["unsellable"] == {"2", "6", "8"}  # deleted, out of stock, a draft; no variants at all is for sale
    assert got["installed"] == ([SHOP], True)  # the page proved the app installed, as each delivery would


@pytest.mark.parametrize("change", ["a product twice", "a variant in two products", "an order among them"])
def test_a_page_that_names_a_product_twice_or_holds_more_than_products_goes_delivery_by_delivery(
        pg_store, tmp_path, change):
    # Arrange
    from recommender.store_postgres import _catalog_page

    _, page = catalog_page_and_what_came_before()
    delivery, changes = page[2]
    if change == "a product twice":
        older = changes.upsert_products[0]._replace(title="Three older", updated_at=datetime(2026, 10, 3, tzinfo=timezone.utc))
        page.append((Delivery(SHOP, "backfill:products:3:older", PRODUCTS_TOPIC), ChangeSet(upsert_products=(older,))))
    elif change == "a variant in two products":
        taken = page[0][1].upsert_products[0].variants[0]
        moved = changes.upsert_products[0]._replace(variants=(taken,))
        page[2] = (delivery, ChangeSet(upsert_products=(moved,)))
    else:
        page.append((Delivery(SHOP, "backfill:orders:101", ORDERS_TOPIC),
                     order_changes(SHOP, order_payload(101, 1, [3]), "backfill:orders:101")))

    # Act
    page, one_by_one, together, expected, got = stored_both_ways(pg_store, tmp_path, [], lambda: page)

    # Assert
    assert not _catalog_page(page)
    assert together == one_by_one
    assert got == expected
    if change == "a product twice":
        assert got["products"]["3"].title == "Three newer"  # the later copy is older: ignored, as one by one
    elif change == "a variant in two products":
        assert [v.variant_id for v in got["products"]["3"].variants] == ["11"]
        assert got["products"]["1"].variants == ()  # the variant moved to product 3, as one by one
    else:
        assert got["counts"][0] == 1  # the order's one line


def test_a_page_that_fails_stores_nothing_of_it(pg_store):
    # Arrange
    _, page = catalog_page_and_what_came_before()
    broken = page[3][1].upsert_products[0]._replace(title=None)  # products.title is NOT NULL

    # Act
    with pytest.raises(StoreError):
        pg_store.apply_many([*page[:3], (page[3][0], ChangeSet(upsert_products=(broken,))), *page[4:]])

    # Assert
    assert pg_store.products(SHOP) == {} and pg_store.count_deliveries() == 0
    assert pg_store.apply_many(page) == [0] * len(page)  # and the same page stores whole afterwards


def test_a_page_of_orders_takes_its_locks_before_it_writes_so_a_webhook_beside_it_cannot_deadlock_it(pg_store,
                                                                                                       schema_url):
    """A page stored delivery by delivery in one transaction used to take each delivery's lock as it came: with a
    webhook holding the second guest's cart token and then marking the shop installed, the page (which had marked it
    already, for the first guest) and the webhook waited on each other until PostgreSQL broke the deadlock."""
    # Arrange
    import psycopg

    from recommender.store_postgres import ANONYMOUS_ID_LOCK, _lock_key

    page = [(Delivery(SHOP, f"backfill:orders:{n}", ORDERS_TOPIC),
             order_changes(SHOP, order_payload(n, None, [1], cart_token=f"tok{n}"), f"backfill:orders:{n}"))
            for n in (101, 102)]
    webhook = psycopg.connect(schema_url)  # a transaction of its own, as another instance's webhook
    webhook.execute("SELECT pg_advisory_xact_lock(%s, %s)", _lock_key(ANONYMOUS_ID_LOCK, SHOP, "tok102"))
    outcome = {}
    backfill = threading.Thread(target=lambda: outcome.update(stored=pg_store.apply_many(page)))

    # Act
    backfill.start()
    for _ in range(200):  # until the page waits for the webhook's lock
        if run(schema_url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")[0][0]:
            break
        threading.Event().wait(0.025)
    # The shop's row is free, since the page has written nothing yet: no wait (before, this waited for the page
    # until the deadlock was found, a second later by default; the lock timeout ends that wait sooner, as a failure).
    webhook.execute("SET lock_timeout = '300ms'")
    webhook.execute("INSERT INTO shop_state (shop, installed, changed_at) VALUES (%s, true, now())"
                    " ON CONFLICT (shop) DO UPDATE SET installed = true, changed_at = excluded.changed_at", (SHOP,))
    webhook.commit()
    backfill.join(timeout=30)
    webhook.close()

    # Assert
    assert outcome["stored"] == [1, 1]
    assert pg_store.count_events(SHOP) == 2 and pg_store.is_shop_installed(SHOP)


def orders_page_and_what_came_before() -> tuple[list[tuple[Delivery, ChangeSet]], list[tuple[Delivery, ChangeSet]]]:
    """(webhooks stored before, a backfill's page of orders) with a known outcome for each order."""
    def backfilled(order):
        webhook_id = f"backfill:orders:{order['id']}"
        return Delivery(SHOP, webhook_id, ORDERS_TOPIC), order_changes(SHOP, order, webhook_id)

    refunded = order_payload(205, 5, [3])
    refunded["line_items"][0]["quantity"] = 4
    refunded["refunds"] = [{"id": 9, "refund_line_items": [{"line_item_id": 20500, "quantity": 1}]}]
    before = [
        webhook("checkouts/create", {"token": "chk", "cart_token": "tok-linked", "customer": {"id": 9}}, "wh-chk"),
        webhook("orders/create", order_payload(201, 1, [1, 2]), "wh-201"),
        backfilled(order_payload(206, 6, [4])),
    ]
    page = [
        # cancelled, and edited since the webhook: only its first line is left, the other one voided all the same
        backfilled({**order_payload(201, 1, [1]), "cancelled_at": "2026-11-02T00:00:00Z"}),
        backfilled(order_payload(202, 2, [1, 2, 3])),
        backfilled(order_payload(203, None, [4], cart_token="tok-linked")),
        backfilled(order_payload(204, None, [5, 6], cart_token="tok-new")),
        backfilled(refunded),
        backfilled(order_payload(206, 6, [4])),
        backfilled({**order_payload(207, 7, [7]), "cancelled_at": "2026-11-03T00:00:00Z"}),
    ]
    return before, page


def test_a_page_of_orders_stored_set_wise_answers_as_one_delivery_after_another(pg_store, tmp_path):
    # Arrange
    from recommender.store_postgres import _orders_page

    before, page = orders_page_and_what_came_before()

    # Act
    page, one_by_one, set_wise, expected, got = stored_both_ways(pg_store, tmp_path, before, lambda: page)

    # Assert
    assert _orders_page(page)  # the page took the set-wise path
    # 201's lines came by webhook; 206 was backfilled; 207's line is stored, cancelled (weight 0)
    assert set_wise == one_by_one == [0, 3, 1, 2, 1, None, 1]
    assert got == expected
    weights = {(i.order_id, i.product_id): (i.user_key, i.weight_factor) for i in pg_store.interactions(SHOP)}
    assert not {("201", "1"), ("201", "2"), ("207", "7")} & set(weights)  # cancelled: they count for nothing
    assert weights[("203", "4")] == ("c:9", 1.0)  # the guest's cart was linked to customer 9 by a checkout
    assert weights[("204", "5")] == ("a:tok-new", 1.0) and weights[("205", "3")] == ("c:5", 0.75)  # 1 of 4 refunded


@pytest.mark.parametrize("change", ["an order twice", "a line refunded twice"])
def test_a_page_of_orders_that_touch_each_other_goes_delivery_by_delivery(pg_store, tmp_path, change):
    # Arrange
    from recommender.store_postgres import _orders_page

    _, page = orders_page_and_what_came_before()
    if change == "an order twice":
        cancelled = {**order_payload(202, 2, [1, 2, 3]), "cancelled_at": "2026-11-04T00:00:00Z"}
        page.append((Delivery(SHOP, "backfill:orders:202:cancelled", ORDERS_TOPIC),
                     order_changes(SHOP, cancelled, "backfill:orders:202:cancelled")))
    else:
        twice = order_payload(208, 8, [8])
        twice["line_items"][0]["quantity"] = 3
        twice["refunds"] = [{"id": n, "refund_line_items": [{"line_item_id": 20800, "quantity": 1}]} for n in (10, 11)]
        page.append((Delivery(SHOP, "backfill:orders:208", ORDERS_TOPIC),
                     order_changes(SHOP, twice, "backfill:orders:208")))

    # Act
    page, one_by_one, together, expected, got = stored_both_ways(pg_store, tmp_path, [], lambda: page)

    # Assert
    assert not _orders_page(page)
    assert together == one_by_one and got == expected
    weights = {(i.order_id, i.product_id): i.weight_factor for i in pg_store.interactions(SHOP)}
    if change == "an order twice":
        assert ("202", "1") not in weights  # cancelled by the later copy, as one by one
    else:
        assert weights[("208", "8")] == pytest.approx(1 / 3)  # 1 - 1/3 - 1/3


def purchase(order_id: str, line: str, customer_id: str | None = "1", anonymous_id: str | None = None,
             quantity: int = 2, key_order: str | None = None) -> Event:
    """A purchase of product 1 whose dedupe key names `key_order` (its own order unless given)."""
    return Event(EventKind.PURCHASE, SHOP, "1", datetime(2026, 11, 1, tzinfo=timezone.utc), customer_id=customer_id,
                 anonymous_id=anonymous_id, order_id=order_id, quantity=quantity,
                 dedupe_key=order_line_key(key_order or order_id, line))


@pytest.mark.parametrize("case", ["a refund of another delivery's event", "one refund id on two orders' lines"])
def test_a_page_whose_refunds_reach_another_deliverys_events_goes_delivery_by_delivery(pg_store, tmp_path, case):
    """Set-wise, every event is stored before any refund and each adjustment key joins once for the page: a
    refund of a line whose event another delivery brings, or one refund id and line id on two orders (the
    adjustment's key names no order), would come out otherwise than one delivery after another."""
    # Arrange
    from recommender.store_postgres import _orders_page

    if case == "a refund of another delivery's event":
        before = []
        changes = [ChangeSet(refunds=(RefundLine("r1", "500", "7", 1),)),
                   ChangeSet(events=(purchase("999", "7", key_order="500"),))]
    else:
        before = [(Delivery(SHOP, "wh-orders", "orders/create"),
                   ChangeSet(events=(purchase("600", "7"), purchase("601", "7"))))]
        changes = [ChangeSet(refunds=(RefundLine("r9", "600", "7", 1),)),
                   ChangeSet(refunds=(RefundLine("r9", "601", "7", 1),))]
    page = [(Delivery(SHOP, f"page-{n}", ORDERS_TOPIC), c) for n, c in enumerate(changes)]

    # Act
    page, one_by_one, together, expected, got = stored_both_ways(pg_store, tmp_path, before, lambda: page)

    # Assert
    assert not _orders_page(page)
    assert together == one_by_one and got == expected
    weights = sorted(i.weight_factor for i in got["interactions"])
    # The refund came before its line was stored: kept, it shrank the line when the line came (one unit of two). Or:
    # the second refund's adjustment was stored.
    assert weights == ([0.5] if case == "a refund of another delivery's event" else [0.5, 1.0])


def test_a_page_joins_a_linked_guest_to_the_customer_but_not_an_event_with_an_empty_customer_id(pg_store, tmp_path):
    # Arrange
    from recommender.store_postgres import _orders_page

    before = [(Delivery(SHOP, "wh-checkout", "checkouts/create"),
               ChangeSet(identity_links=(IdentityLink("tokL", "9"),)))]
    page = [(Delivery(SHOP, "page-guest", ORDERS_TOPIC),
             ChangeSet(events=(purchase("700", "1", customer_id=None, anonymous_id="tokL"),))),
            (Delivery(SHOP, "page-empty", ORDERS_TOPIC),
             ChangeSet(events=(purchase("701", "1", customer_id="", anonymous_id="tokL"),)))]

    # Act
    page, one_by_one, set_wise, expected, got = stored_both_ways(pg_store, tmp_path, before, lambda: page)

    # Assert
    assert _orders_page(page)
    assert set_wise == one_by_one == [1, 1] and got == expected
    users = {i.order_id: i.user_key for i in got["interactions"]}
    assert users == {"700": "c:9", "701": "a:tokL"}  # only a guest (no customer id at all) is looked up


def webhook(topic: str, payload: dict, webhook_id: str) -> tuple[Delivery, ChangeSet]:
    """A delivery of `topic` as the webhook handler translates it."""
    return Delivery(SHOP, webhook_id, topic), TRANSLATORS[topic](TopicContext(SHOP, topic, webhook_id), payload)


def read_with_every_location(delivery: tuple[Delivery, ChangeSet]) -> tuple[Delivery, ChangeSet]:
    """A stock level as a backfill stores it: read with every other location's level of its item."""
    from dataclasses import replace

    stored, changes = delivery
    return stored, replace(changes, inventory_levels=tuple(
        replace(level, all_locations=True) for level in changes.inventory_levels))


def sqlite_beside(pg_store, tmp_path, before) -> SQLiteEventStore:
    """A SQLite store beside `pg_store`, both holding the deliveries `before`, stored one at a time."""
    sqlite = SQLiteEventStore(tmp_path / "events.sqlite3")
    for store in (sqlite, pg_store):
        for delivery, changes in before:
            store.apply(delivery, changes)
    return sqlite


def stored_each_way(sqlite, pg_store, page, together: bool) -> tuple[list, list]:
    """`page` stored into SQLite one delivery at a time, and into PostgreSQL as a page (`apply_many`) or the same
    way: what each returned."""
    one_by_one = [sqlite.apply(delivery, changes) for delivery, changes in page]
    return one_by_one, pg_store.apply_many(page) if together else [pg_store.apply(d, c) for d, c in page]


# --- round trips, counted on the wire (bench.round_trips) ---------------------------------------


@pytest.fixture
def counted_store(schema_url):
    """A PostgreSQL store whose connections go through a relay that counts round trips, and the relay. A test counts
    between `relay.reset()` and `relay.turns`, with the relay's 50 ms each way; its set-up and checks around that run
    inside `relay.undelayed()`, where each round trip would wait 0.1 s for nothing."""
    from urllib.parse import urlsplit

    from bench.round_trips import RoundTripCounter
    from recommender.store_postgres import PostgresEventStore

    PostgresEventStore(schema_url).close()  # migrated directly: through the relay each of its statements waits 50 ms
    with RoundTripCounter(urlsplit(schema_url).port or 5432) as relay:
        with relay.undelayed():
            store = PostgresEventStore(relay.url(schema_url))
        yield store, relay
        store.close()


@pytest.mark.parametrize("kind, round_trips", [
    ("order, known customer", 1),  # one statement, its own transaction
    ("order, guest", 1),  # BEGIN, the cart token's lock, the delivery row with the events joined to its link, COMMIT
    ("order with a gift card", 1),  # BEGIN, the product's lock, the delivery row with the events, the gift card's
    # row; `sellable`, COMMIT
    ("cart", 1),
    ("checkout", 1),  # BEGIN, the token's lock, the delivery row with the link and the cart's events joined, COMMIT
    ("product update", 1),  # BEGIN, the lock, the delivery row with the upsert, the variants and the mark; `sellable`,
    # COMMIT
    ("product deletion", 1),  # BEGIN, the lock, the delivery row with the deletion and the mark; `sellable`, COMMIT
    ("inventory level", 1),  # BEGIN, the item's and its products' locks, the delivery row with the level and the sums;
    # `sellable`, COMMIT
    ("redelivery", 1),  # BEGIN, the lock, the delivery row (stored before: nothing else written); `sellable`, COMMIT
    ("cancellation", 1),  # BEGIN, the delivery row with the lines (their weights lowered to 0), the void, COMMIT
    ("refund", 1),  # BEGIN, the delivery row, the refund line (once, by its adjustment row), COMMIT
    ("pixel beacon", 1),  # BEGIN, the browser's lock, five views joined to its link if the shop is installed, COMMIT
])
def test_a_webhooks_write_waits_for_postgresql_once_per_answer_it_needs(counted_store, tmp_path, kind,
                                                                         round_trips):
    # Arrange
    from bench.delivery_probe import deliveries, prepare, store_one

    store, relay = counted_store
    with relay.undelayed():
        prepare(store, kind, SHOP, 3)
    sqlite = SQLiteEventStore(tmp_path / "events.sqlite3")
    prepare(sqlite, kind, SHOP, 3)
    turns, stored, expected = [], [], []

    # Act
    for delivery, changes in deliveries(kind, SHOP, 3):
        relay.reset()
        stored.append(store_one(store, delivery, changes))
        turns.append(relay.turns)
        expected.append(store_one(sqlite, delivery, changes))

    # Assert
    assert turns == [round_trips] * 3
    events = {"checkout": 0, "product update": 0, "product deletion": 0, "inventory level": 0, "cancellation": 0,
              "refund": 0, "pixel beacon": 5}.get(kind, 3)
    assert stored == expected == ([None] * 3 if kind == "redelivery" else [events] * 3)
    with relay.undelayed():
        assert answers(store) == answers(sqlite)
        assert store.unsellable_product_ids(SHOP) == sqlite.unsellable_product_ids(SHOP)
        if kind == "inventory level":  # k % 5 units at one location, the others never heard from: the payload's 5 stand
            assert [[v.inventory_quantity for v in store.products(SHOP)[str(8_000_000_000_000 + k)].variants]
                    for k in range(3)] == [[5, 5, 5]] * 3
            assert store.unsellable_product_ids(SHOP) == set()  # product 0's other variants are still for sale
        if kind == "order with a gift card":  # each order's gift card marked, not for sale, its line counting nothing
            gift_cards = {str(8_100_000_000_000 + k) for k in range(3)}
            assert store.gift_card_product_ids(SHOP) == sqlite.gift_card_product_ids(SHOP) == gift_cards
            assert store.unsellable_product_ids(SHOP) == gift_cards
            assert len(store.interactions(SHOP)) == 6
        if kind == "checkout":  # each cart's three events joined to the checkout's customer
            assert {i.user_key for i in store.interactions(SHOP)} == {f"c:{7_000_000_000_000 + k}" for k in range(3)}
        if kind in ("cancellation", "refund"):  # three orders of three lines: all void, or each first line's one unit
            assert store.count_events(SHOP) == 9
            assert len(store.interactions(SHOP)) == len(sqlite.interactions(SHOP)) == (
                0 if kind == "cancellation" else 6)
        if kind == "product deletion":
            assert store.products(SHOP) == {} and store.deleted_product_ids(SHOP) == {
                str(8_000_000_000_000 + k) for k in range(3)}
    sqlite.close()


def test_a_refund_kept_for_its_order_and_the_order_that_takes_it_each_wait_for_postgresql_once(counted_store):
    # Arrange: refunds/create before orders/create (a line of two units, one refunded), for a known customer and a guest
    store, relay = counted_store
    guest = order_payload(302, None, [2], cart_token="tok-guest")
    deliveries = []
    for order in (order_payload(301, 1, [1]), guest):
        order["line_items"][0]["quantity"] = 2
        line = order["line_items"][0]["id"]
        deliveries += [webhook("refunds/create", {"id": order["id"], "order_id": order["id"], "refund_line_items": [
                           {"line_item_id": line, "quantity": 1}]}, f"wh-refund-{order['id']}"),
                       webhook("orders/create", order, f"wh-order-{order['id']}")]

    # Act
    turns, stored = [], []
    for delivery, changes in deliveries:
        relay.reset()
        stored.append(store.apply(delivery, changes))
        turns.append(relay.turns)

    # Assert: each waits once, as without a refund kept; each line is left at half its weight
    assert (turns, stored) == ([1, 1, 1, 1], [0, 1, 0, 1])
    with relay.undelayed():
        assert sorted((i.user_key, i.weight_factor) for i in store.interactions(SHOP)) == [("a:tok-guest", 0.5),
                                                                                           ("c:1", 0.5)]


@pytest.mark.parametrize("conforming", ["on", "off"])  # a backslash in a string literal means what this says
def test_the_server_computes_the_product_lock_keys_the_code_computes(schema_url, conforming):
    import psycopg

    from recommender.store_postgres import _lock_key_sql, _product_lock

    pairs = [(SHOP, "8000000000000"), ("ünïcødé-shop.myshopify.com", "商品-42"), ("", ""), (SHOP, "a\\tb c'd")]

    with psycopg.connect(schema_url, autocommit=True) as conn:
        conn.execute(f"SET standard_conforming_strings = {conforming}")
        found = [conn.execute(f"SELECT {_lock_key_sql('%s', '%s')}", pair).fetchone()[0] for pair in pairs]

    assert found == [_product_lock(*pair)[1] for pair in pairs]
    assert len(set(found)) == len(found)


def test_a_stock_level_waits_for_its_products_lock_which_it_finds_on_the_server(pg_store, schema_url):
    """A stock level's delivery names an inventory item, not its product: the server finds the product and takes its
    lock, the one a product's update takes, before it writes, so `sellable` is computed from committed rows."""
    # Arrange: product 0's first variant stocks item 46000000000000; another writer holds that product's lock
    import psycopg

    from bench.delivery_probe import deliveries, prepare
    from recommender.store_postgres import _product_lock

    prepare(pg_store, "inventory level", SHOP, 1)
    # 0 units of that item, read with its other locations' (none): the variant sells out
    (delivery, changes), = map(read_with_every_location, deliveries("inventory level", SHOP, 1))
    writer = psycopg.connect(schema_url)
    namespace, key = _product_lock(SHOP, "8000000000000")
    writer.execute("SELECT pg_advisory_xact_lock(%s, %s)", (namespace, key))
    outcome = {}
    webhook = threading.Thread(target=lambda: outcome.update(stored=pg_store.apply(delivery, changes)))

    # Act
    webhook.start()
    waited = False
    for _ in range(200):  # until the delivery waits for the writer's lock: that key's, not any other session's
        if run(schema_url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                           " AND classid = %s::int8::oid AND objid = %s::int8::oid AND objsubid = 2",
               (namespace, key % (1 << 32)))[0][0]:
            waited = True
            break
        threading.Event().wait(0.025)
    stock_while_held = [v.inventory_quantity for v in pg_store.products(SHOP)["8000000000000"].variants]
    writer.commit()
    webhook.join(timeout=30)
    writer.close()

    # Assert
    assert waited and stock_while_held == [5, 5, 5]
    assert outcome["stored"] == 0
    assert [v.inventory_quantity for v in pg_store.products(SHOP)["8000000000000"].variants] == [0, 5, 5]


def test_a_redelivery_and_an_update_that_keeps_the_flag_leave_the_products_row_unwritten_by_the_flag(pg_store,
                                                                                                       schema_url):
    # Arrange: product 0 stored once, for sale
    from bench.delivery_probe import deliveries

    (delivery, changes), = deliveries("product update", SHOP, 1)
    pg_store.apply(delivery, changes)
    version = "SELECT xmin::text FROM products WHERE shop = %s AND product_id = '8000000000000'"
    stored = run(schema_url, version, (SHOP,))

    # Act
    again = pg_store.apply(delivery, changes)
    after_redelivery = run(schema_url, version, (SHOP,))
    pg_store.apply(*read_with_every_location(webhook("inventory_levels/update", {  # its only location: 3 in all
        "inventory_item_id": 46_000_000_000_000, "location_id": 1, "available": 3}, "stock-0")))
    after_stock = run(schema_url, version, (SHOP,))

    # Assert: neither changed the flag, so neither wrote the row (before, each wrote a new version of it)
    assert again is None and pg_store.unsellable_product_ids(SHOP) == set()
    assert stored == after_redelivery == after_stock
    assert [v.inventory_quantity for v in pg_store.products(SHOP)["8000000000000"].variants] == [3, 5, 5]


def test_a_page_of_250_products_or_orders_waits_three_times_or_twice(counted_store):
    # Arrange
    from bench.backfill_probe import pages_of

    store, relay = counted_store
    products, orders = pages_of("products", SHOP, 250, 250)[0], pages_of("orders", SHOP, 250, 250)[0]

    # Act
    relay.reset()
    stored_products = store.apply_many(products)
    product_turns = relay.turns
    relay.reset()
    stored_orders = store.apply_many(orders)
    order_turns = relay.turns

    # Assert
    assert (product_turns, order_turns) == (3, 2)
    assert stored_products == [0] * 250 and stored_orders == [3] * 250
    with relay.undelayed():
        assert len(store.products(SHOP)) == 250 and store.count_events(SHOP) == 750


def test_a_backfills_page_of_levels_at_three_locations_of_each_item_waits_twice(counted_store, tmp_path):
    # Arrange: 50 products in stock (the payload: 5 each), each item's three levels as the backfill reads them
    from webhooks.backfill import LEVELS_TOPIC, level_changes, level_webhook_id

    store, relay = counted_store
    with relay.undelayed():
        for pid in range(1, 51):
            store.apply(*webhook("products/create", {
                "id": pid, "status": "active", "published_at": "2026-10-01T00:00:00Z",
                "variants": [{"id": pid * 10, "inventory_item_id": pid * 100, "inventory_quantity": 5}]}, f"wh-p{pid}"))
    levels = [{"inventory_item_id": pid * 100, "location_id": location, "available": pid % 3 if location == 1 else 0,
               "updated_at": "2026-11-01T00:00:00Z"} for pid in range(1, 51) for location in (1, 2, 3)]
    page = [(Delivery(SHOP, webhook_id, LEVELS_TOPIC), level_changes(SHOP, level, webhook_id))
            for level, webhook_id in ((level, level_webhook_id(level)) for level in levels)]

    # Act
    relay.reset()
    stored = store.apply_many(page)
    turns = relay.turns

    # Assert: set-wise, each variant's stock the exact sum of its three locations
    assert turns == 2 and stored == [0] * 150
    with relay.undelayed():
        assert {pid: product.variants[0].inventory_quantity for pid, product in store.products(SHOP).items()} == {
            str(pid): pid % 3 for pid in range(1, 51)}
        assert store.unsellable_product_ids(SHOP) == {str(pid) for pid in range(3, 51, 3)}


def stock_levels_and_what_came_before() -> tuple[list, list]:
    """(deliveries stored before, inventory_levels/update deliveries) with a known outcome for each."""
    def product(pid):
        return {"id": pid, "title": f"Product {pid}", "handle": f"p-{pid}", "status": "active", "vendor": "Acme",
                "product_type": "Mugs", "published_at": "2026-10-01T00:00:00Z", "updated_at": "2026-10-01T00:00:00Z",
                "variants": [{"id": pid * 10, "price": "10.00", "inventory_item_id": pid * 100, "inventory_quantity": 3,
                              "inventory_management": "shopify", "inventory_policy": "deny"}]}

    def level(item, location, available):
        return {"inventory_item_id": item, "location_id": location, "available": available,
                "updated_at": "2026-11-01T00:00:00Z"}

    before = [webhook("products/create", product(1), "wh-p1"), webhook("products/create", product(2), "wh-p2"),
              read_with_every_location(webhook("inventory_levels/update", level(100, 2, 2), "wh-100-at-2"))]
    levels = [
        webhook("inventory_levels/update", level(100, 1, 0), "wh-100-at-1"),  # 0 here, 2 at location 2: 2 in all
        webhook("inventory_levels/update", level(200, 1, 0), "wh-200-at-1"),  # other locations unknown: keeps 3
        webhook("inventory_levels/update", level(999, 1, 5), "wh-999-at-1"),  # an item no variant stocks
        webhook("inventory_levels/update", level(100, 2, 9), "wh-100-at-2"),  # a redelivery: ignored
    ]
    return before, levels


@pytest.mark.parametrize("together", [True, False], ids=["a page", "one delivery at a time"])
def test_stock_levels_stored_set_wise_answer_as_one_delivery_after_another(pg_store, tmp_path, together):
    # Arrange
    from recommender.store_postgres import _inventory_page

    before, levels = stock_levels_and_what_came_before()
    sqlite = sqlite_beside(pg_store, tmp_path, before)

    # Act
    one_by_one, set_wise = stored_each_way(sqlite, pg_store, levels, together)

    # Assert
    assert _inventory_page(levels) and all(_inventory_page([level]) for level in levels)
    assert not _inventory_page([*levels, levels[0]])  # one item at one location twice: delivery by delivery
    assert set_wise == one_by_one == [0, 0, 0, None]
    assert answers(pg_store) == answers(sqlite)
    products = pg_store.products(SHOP)
    assert (products["1"].variants[0].inventory_quantity, products["2"].variants[0].inventory_quantity) == (2, 3)
    assert pg_store.unsellable_product_ids(SHOP) == sqlite.unsellable_product_ids(SHOP) == set()
    sqlite.close()


def test_ctrl_c_inside_a_pipelined_page_stores_nothing_and_the_next_page_stores_whole(schema_url):
    """Ctrl-C pressed after the page's first round trip, its later statements sent: the transaction is rolled back
    and the thread's connection is left fit for the next write (or replaced)."""
    # Arrange
    from recommender.store_postgres import PostgresEventStore

    class CtrlCOnce(PostgresEventStore):
        pressed = False

        def _mark_installed_by(self, conn, shop, fresh):
            super()._mark_installed_by(conn, shop, fresh)
            if not self.pressed:
                self.pressed = True
                raise KeyboardInterrupt

    _, page = orders_page_and_what_came_before()
    store = CtrlCOnce(schema_url)

    # Act
    with pytest.raises(KeyboardInterrupt):
        store.apply_many(page)
    nothing = (store.count_events(SHOP), store.count_deliveries(), store.installed_shops())
    again = store.apply_many(page)

    # Assert
    assert nothing == (0, 0, [])
    assert again == [1, 3, 1, 2, 1, 1, 1] and store.count_events(SHOP) == 10  # each order's product lines
    store.close()


def test_a_page_of_product_deletions_beside_updates_answers_as_one_delivery_after_another(pg_store, tmp_path):
    # Arrange
    from recommender.store_postgres import _catalog_page

    before, page = catalog_page_and_what_came_before()
    deletions = [(Delivery(SHOP, f"wh-delete-{pid}", "products/delete"),
                  TRANSLATORS["products/delete"](TopicContext(SHOP, "products/delete", f"wh-delete-{pid}"), {"id": pid}))
                 for pid in (4, 9)]  # 4 stored before, with variants; 9 never stored
    mixed = [*page[:3], deletions[0], *page[5:], deletions[1]]  # products 1-3 and 6-8 updated, 4 and 9 deleted

    # Act
    mixed, one_by_one, set_wise, expected, got = stored_both_ways(pg_store, tmp_path, before, lambda: mixed)

    # Assert
    assert _catalog_page(mixed) and not _catalog_page([*mixed, page[3]])  # product 4 updated and deleted: not
    assert set_wise == one_by_one == [0, 0, 0, 0, 0, 0, 0, 0]
    assert got == expected
    assert {"2", "4", "9"} <= got["deleted"] and not {"4", "9"} & set(got["products"])
    assert {"4", "9"} <= got["unsellable"]


def table_rows(store, schema_url, sql: str) -> list[tuple]:
    """`sql`'s rows from a store's own tables: SQLite's file, or PostgreSQL's schema."""
    if isinstance(store, SQLiteEventStore):
        import sqlite3

        with contextlib.closing(sqlite3.connect(store.path)) as conn:
            return [tuple(row) for row in conn.execute(sql)]
    return run(schema_url, sql)


@pytest.mark.parametrize("together", [True, False], ids=["a page", "one delivery at a time"])
def test_checkouts_links_stored_set_wise_answer_as_one_delivery_after_another(pg_store, schema_url, tmp_path,
                                                                               together):
    # Arrange
    from recommender.store_postgres import _links_page

    def cart(token, products):
        return webhook("carts/update", {"token": token, "updated_at": "2026-11-01T00:00:00Z", "line_items": [
            {"product_id": pid, "variant_id": pid * 10, "quantity": 1, "price": "5.00"} for pid in products]},
            f"wh-cart-{token}")

    def checkout(token, customer_id, webhook_id):
        return webhook("checkouts/update", {"token": f"chk-{token}", "cart_token": token,
                                            "customer": {"id": customer_id}}, webhook_id)

    before = [cart("tok-a", [1, 2]), cart("tok-b", [3]), cart("tok-c", [4]), checkout("tok-c", 30, "wh-chk-c"),
              checkout("tok-b", 19, "wh-chk-b-first")]
    links = [checkout("tok-a", 10, "wh-chk-a"),
             checkout("tok-b", 20, "wh-chk-b"),  # linked to 19 before: its events stay 19's, the link is 20's
             checkout("tok-new", 40, "wh-chk-new"),  # a cart not stored (yet): the link alone
             checkout("tok-c", 31, "wh-chk-c")]  # a redelivery: ignored, link and all
    sqlite = sqlite_beside(pg_store, tmp_path, before)

    # Act
    one_by_one, set_wise = stored_each_way(sqlite, pg_store, links, together)
    later_cart = [store.apply(*cart("tok-new", [5])) for store in (sqlite, pg_store)]

    # Assert
    assert _links_page(links) and not _links_page([*links, checkout("tok-a", 11, "wh-chk-a2")])  # tok-a twice
    assert set_wise == one_by_one == [0, 0, 0, None] and later_cart == [1, 1]
    assert answers(pg_store) == answers(sqlite)
    users = {i.product_id: i.user_key for i in pg_store.interactions(SHOP)}
    assert users == {"1": "c:10", "2": "c:10", "3": "c:19", "4": "c:30", "5": "c:40"}
    stored_links = [table_rows(store, schema_url, "SELECT anonymous_id, customer_id FROM identity_links"
                                                   " ORDER BY anonymous_id") for store in (sqlite, pg_store)]
    assert stored_links[0] == stored_links[1] == [
        ("tok-a", "10"), ("tok-b", "20"), ("tok-c", "30"), ("tok-new", "40")]
    sqlite.close()


@pytest.mark.parametrize("triggered", ["before the uninstall", "after it"])
def test_one_delivery_of_several_links_answers_as_sqlite_and_reinstalls_only_if_triggered_after_an_uninstall(
        pg_store, tmp_path, triggered):
    # Arrange: two guests' carts, then the shop uninstalled (committed); one delivery linking both tokens to customer 7
    from recommender.changes import IdentityLink

    carts = [webhook("carts/update", {"token": token, "updated_at": "2026-11-01T00:00:00Z", "line_items": [
        {"product_id": pid, "variant_id": pid * 10, "quantity": 1, "price": "5.00"}]}, f"wh-cart-{token}")
        for token, pid in (("tok-1", 1), ("tok-2", 2))]
    sqlite = sqlite_beside(pg_store, tmp_path, carts)
    both = (sqlite, pg_store)
    for store in both:
        store.set_shop_installed(SHOP, False)
    delivery = Delivery(SHOP, "wh-links", "checkouts/update", triggered_at=datetime(2026, 1, 1, tzinfo=timezone.utc)
                        if triggered == "before the uninstall" else None)
    changes = ChangeSet(identity_links=(IdentityLink("tok-1", "7"), IdentityLink("tok-2", "7")))

    # Act: the delivery, then its redelivery
    stored = [[store.apply(delivery, changes), store.apply(delivery, changes)] for store in both]

    # Assert: both carts' events are now customer 7's; the shop is installed again only by a checkout made after
    assert stored == [[0, None], [0, None]]
    assert answers(pg_store) == answers(sqlite)
    assert {i.product_id: i.user_key for i in pg_store.interactions(SHOP)} == {"1": "c:7", "2": "c:7"}
    assert [store.is_shop_installed(SHOP) for store in both] == [triggered == "after it"] * 2
    sqlite.close()


def test_events_added_set_wise_answer_as_one_event_after_another(pg_store, tmp_path):
    """`add_events` (a pixel's beacon, a history import) in one statement: what each event alone would leave."""
    # Arrange
    def view(key, customer_id=None, anonymous_id="tokA", weight=1.0, product="1"):
        return Event(EventKind.VIEW, SHOP, product, datetime(2026, 11, 1, tzinfo=timezone.utc),
                     customer_id=customer_id, anonymous_id=anonymous_id, dedupe_key=key, weight_factor=weight)

    before = [(Delivery(SHOP, "wh-checkout", "checkouts/create"), ChangeSet(identity_links=(IdentityLink("tokL", "9"),)))]
    stored_before = [view("k-old", customer_id="3", anonymous_id=None, weight=0.5)]
    batch = [
        view("k1"),  # a guest not linked
        view("k2", anonymous_id="tokL"),  # a guest linked to customer 9 by a checkout
        view("k3", customer_id="", anonymous_id="tokL"),  # an empty customer id: not looked up
        view("k4", customer_id="4", anonymous_id=None),
        view("k4", customer_id="4", anonymous_id=None, weight=0.25),  # the same key again, lower: lowers it
        view("k-old", customer_id="3", anonymous_id=None, weight=1.0),  # stored before at 0.5: stays
        view(None, customer_id="5", anonymous_id=None), view(None, customer_id="5", anonymous_id=None),  # no key
    ]
    sqlite = sqlite_beside(pg_store, tmp_path, before)
    for store in (sqlite, pg_store):
        store.add_events(stored_before)

    # Act
    one_by_one, set_wise = sqlite.add_events(batch), pg_store.add_events(batch)

    # Assert
    assert set_wise == one_by_one == 6  # k1, k2, k3, k4 once, the two without a key
    assert answers(pg_store) == answers(sqlite)
    got = {(i.user_key, i.weight_factor) for i in pg_store.interactions(SHOP)}
    assert got == {("a:tokA", 1.0), ("c:9", 1.0), ("a:tokL", 1.0), ("c:4", 0.25), ("c:3", 0.5), ("c:5", 1.0)}
    sqlite.close()


def test_a_history_import_of_thousands_of_events_goes_in_several_statements_and_one_round_trip(counted_store):
    # Arrange
    from recommender.store_postgres import EVENTS_PER_STATEMENT

    store, relay = counted_store
    count = EVENTS_PER_STATEMENT + 500
    events = [Event(EventKind.PURCHASE, SHOP, str(k % 300), datetime(2026, 11, 1, tzinfo=timezone.utc),
                    customer_id=str(k % 40), dedupe_key=f"import:{k}") for k in range(count)]

    # Act
    relay.reset()
    stored = store.add_events(events)
    turns = relay.turns
    again = store.add_events(events[-10:])

    # Assert
    assert (stored, turns, again) == (count, 1, 0)
    assert store.count_events(SHOP) == count


def test_a_page_of_stock_levels_answers_as_one_delivery_after_another(pg_store, schema_url, tmp_path):
    # Arrange
    from recommender.store_postgres import _inventory_page

    def level(item, location, available, webhook_id):
        return webhook("inventory_levels/update", {"inventory_item_id": item, "location_id": location,
                                                   "available": available}, webhook_id)

    before, _ = stock_levels_and_what_came_before()
    third = {"id": 3, "title": "Product 3", "handle": "p-3", "status": "active", "vendor": "Acme",
             "product_type": "Mugs", "published_at": "2026-10-01T00:00:00Z", "updated_at": "2026-10-01T00:00:00Z",
             "variants": [{"id": 30, "price": "10.00", "inventory_item_id": 300, "inventory_quantity": 3,
                           "inventory_management": "shopify", "inventory_policy": "deny"}]}
    before += [webhook("products/create", third, "wh-p3"), level(400, 1, 7, "wh-400")]
    page = [
        level(100, 1, 0, "wh-100-at-1"),  # 0 here, 2 at location 2: 2 in all
        level(200, 1, None, "wh-200-at-1"),  # its only location tracks nothing: the variant keeps its 3
        read_with_every_location(level(300, 1, 0, "wh-300-at-1")),  # its only location, none left: not for sale
        level(400, 1, 1, "wh-400"),  # a redelivery: the level stays 7
        level(500, 1, 4, "wh-twice"), level(600, 1, 4, "wh-twice"),  # one webhook id twice: the first one counts
    ]
    sqlite = sqlite_beside(pg_store, tmp_path, before)

    # Act
    one_by_one, set_wise = stored_each_way(sqlite, pg_store, page, together=True)

    # Assert
    assert _inventory_page(page)
    assert set_wise == one_by_one == [0, 0, 0, None, 0, None]
    assert answers(pg_store) == answers(sqlite)
    products = pg_store.products(SHOP)
    assert [products[pid].variants[0].inventory_quantity for pid in ("1", "2", "3")] == [2, 3, 0]
    assert pg_store.unsellable_product_ids(SHOP) == sqlite.unsellable_product_ids(SHOP) == {"3"}
    levels = [table_rows(store, schema_url, "SELECT inventory_item_id, location_id, available FROM inventory_levels"
                                            " ORDER BY inventory_item_id, location_id") for store in (sqlite, pg_store)]
    assert levels[0] == levels[1] == [("100", "1", 0), ("100", "2", 2), ("200", "1", None), ("300", "1", 0),
                                      ("400", "1", 7), ("500", "1", 4)]
    sqlite.close()


@pytest.mark.parametrize("kind", ["stock levels", "checkouts", "products", "orders"])
@pytest.mark.parametrize("after_the_uninstall", [0, 1], ids=["all triggered before it", "one triggered after it"])
def test_a_page_reinstalls_a_shop_only_if_a_delivery_in_it_was_triggered_after_the_uninstall(
        pg_store, tmp_path, kind, after_the_uninstall):
    """Deliveries triggered before an uninstall are retries that prove nothing; the latest of a page decides."""
    # Arrange
    from dataclasses import replace

    from recommender.store_postgres import _catalog_page, _inventory_page, _links_page, _orders_page

    earlier = datetime(2026, 1, 1, tzinfo=timezone.utc)
    made = {
        "stock levels": lambda n: webhook("inventory_levels/update", {"inventory_item_id": 100 + n, "location_id": 1,
                                                                      "available": 1}, f"wh-{n}"),
        "checkouts": lambda n: webhook("checkouts/update", {"token": f"chk-{n}", "cart_token": f"tok-{n}",
                                                            "customer": {"id": n}}, f"wh-{n}"),
        "products": lambda n: webhook("products/delete", {"id": n}, f"wh-{n}"),
        "orders": lambda n: webhook("orders/create", order_payload(300 + n, None, [n], cart_token=f"tok-{n}"),
                                    f"wh-{n}"),
    }[kind]

    def make_page():
        page = [made(n) for n in (1, 2)]
        return [(replace(d, triggered_at=None if n < after_the_uninstall else earlier), c)
                for n, (d, c) in enumerate(page)]

    # Act
    page, one_by_one, set_wise, expected, got = stored_both_ways(
        pg_store, tmp_path, [made(0)], make_page, uninstall=True)

    # Assert
    assert {"stock levels": _inventory_page, "checkouts": _links_page, "products": _catalog_page,
            "orders": _orders_page}[kind](page)
    assert set_wise == one_by_one
    assert got["installed"] == expected["installed"] == (([SHOP], True) if after_the_uninstall else ([], False))


@pytest.mark.parametrize("topic", ["orders/create", "products/delete", "checkouts/update"])
def test_an_uninstall_committed_while_a_delivery_waits_for_the_shops_row_is_not_undone(pg_store, schema_url, topic):
    """The install mark checks the shop's row in its statement's snapshot, then again on the row it locks: an
    uninstall that committed in between, later than the delivery was triggered, keeps the shop uninstalled."""
    # Arrange
    import psycopg

    run(schema_url, "INSERT INTO shop_state (shop, installed, changed_at) VALUES (%s, false, '2026-01-01')", (SHOP,))
    body = {"orders/create": order_payload(401, 4, [1]), "products/delete": {"id": 1},
            "checkouts/update": {"token": "chk-1", "cart_token": "tok-1", "customer": {"id": 4}}}[topic]
    delivery = Delivery(SHOP, "wh-during", topic, triggered_at=datetime(2026, 6, 1, tzinfo=timezone.utc))
    changes = TRANSLATORS[topic](TopicContext(SHOP, topic, "wh-during"), body)
    uninstall = psycopg.connect(schema_url)  # another instance's app/uninstalled, not yet committed
    uninstall.execute("UPDATE shop_state SET installed = false, changed_at = now() WHERE shop = %s", (SHOP,))
    outcome = {}
    webhook = threading.Thread(target=lambda: outcome.update(stored=pg_store.apply(delivery, changes)))

    # Act
    webhook.start()
    for _ in range(200):  # until the delivery waits for the shop's row
        if run(schema_url, "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' AND NOT granted")[0][0]:
            break
        threading.Event().wait(0.025)
    uninstall.commit()
    webhook.join(timeout=30)
    uninstall.close()

    # Assert
    assert "stored" in outcome and not pg_store.is_shop_installed(SHOP)


def test_a_large_columnar_read_is_followed_by_a_new_connection_and_the_store_reads_on(pg_store, monkeypatch):
    """libpq keeps its input buffer at the largest message's size: after a shop's columnar read larger than
    LARGE_READ_BYTES this thread's connection is replaced, and the store goes on reading; a small read keeps it."""
    events = [Event(kind=EventKind.VIEW, shop=SHOP, product_id=str(1000 + i), customer_id=str(7 + i % 5),
                    occurred_at=datetime(2026, 11, 1, tzinfo=timezone.utc) + timedelta(minutes=i)) for i in range(40)]
    pg_store.add_events(events)
    first = pg_store._connection()

    columns = pg_store.interaction_columns(SHOP)
    assert len(columns) == 40 and pg_store._connection() is first  # well under 8 MiB of text

    monkeypatch.setattr(type(pg_store), "LARGE_READ_BYTES", 100)  # the 40 events' texts are larger than this
    again = pg_store.interaction_columns(SHOP, times=True)

    assert first.closed and pg_store._connection() is not first
    assert again.product_ids == columns.product_ids and len(pg_store.interaction_columns(SHOP)) == 40
