"""The columnar read training uses (`EventStore.interaction_columns`), on SQLite and PostgreSQL.

It must give exactly what the row-by-row path gives: the same events, the same user×item matrix
(`build_user_items(store.interactions(shop))`, bit for bit), the same artifact and the same quality
gate input. PostgreSQL runs when TEST_POSTGRES_URL is set (tests/postgres_schema.py), else skips.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import scipy.sparse as sp

from recommender.artifact import CoPurchaseLists, ModelArtifact
from recommender.event_columns import EVENT_KINDS, SEP, InteractionColumns, canonical_numbers, first_seen_codes
from recommender.changes import ChangeSet, Delivery, Event, IdentityLink, RefundLine
from recommender.events import CatalogProduct, EventKind, order_line_key
from recommender.settings import TrainingConfig
from recommender.store import SQLiteEventStore, open_event_store
from recommender.training import (
    build_user_items, fit_item_factors, purchase_lines, train_shop, user_items_from_columns,
)
from tests.conftest import SHOP
from tests.postgres_schema import temporary_schema
from tests.test_copurchase import reference_copurchase

OTHER_SHOP = "other-shop.myshopify.com"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
WEIGHTS = {EventKind.VIEW: 1.0, EventKind.ADD_TO_CART: 4.0, EventKind.PURCHASE: 10.0}
CONFIG = TrainingConfig(factors=4, iterations=5, seed=7)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request, tmp_path):
    """A real SQLite file, and a real PostgreSQL schema when TEST_POSTGRES_URL is set (as tests/test_store.py)."""
    if request.param == "sqlite":
        store = open_event_store(f"sqlite:///{tmp_path}/events.sqlite3")
        yield store
        store.close()
    else:
        with temporary_schema() as url:  # skips without TEST_POSTGRES_URL
            store = open_event_store(url)
            yield store
            store.close()


def view(product, customer=None, anonymous=None, at=T0, shop=SHOP, key=None):
    return Event(kind=EventKind.VIEW, shop=shop, product_id=product, occurred_at=at, customer_id=customer,
                 anonymous_id=anonymous, dedupe_key=key)


def cart(product, customer=None, anonymous=None, at=T0, removed=False):
    token = customer or anonymous
    return Event(kind=EventKind.ADD_TO_CART, shop=SHOP, product_id=product, occurred_at=at, customer_id=customer,
                 anonymous_id=anonymous, dedupe_key=f"cart:{token}:product:{product}",
                 weight_factor=0.0 if removed else 1.0)


def bought(order, line, product, customer, quantity=1, at=T0):
    return Event(kind=EventKind.PURCHASE, shop=SHOP, product_id=product, occurred_at=at, customer_id=customer,
                 order_id=order, quantity=quantity, dedupe_key=order_line_key(order, line))


def plant(store, numeric: bool = True) -> None:
    """A small shop with every way an event's weight changes after it is stored.

    c:1001 views p1, buys 3 × p1 in order 501 (one unit refunded later: factor 2/3) and carts p2;
    c:1002 buys p2 and p3 in order 502, which is cancelled (weight 0), and views p2;
    guest tok-1 carts p3 then removes it (weight 0) and views p1; c:1003 buys p1 and p2 in 503.
    With `numeric` false, ids are not Shopify numbers (the dictionary path)."""
    p = (lambda n: str(8_000_000_000 + n)) if numeric else (lambda n: f"sku-{n}")
    c = (lambda n: str(1000 + n)) if numeric else (lambda n: f"cust-{n}")
    o = (lambda n: str(500 + n)) if numeric else (lambda n: f"#{500 + n}")
    store.add_events([
        view(p(1), customer=c(1), at=T0, key="v1"),
        bought(o(1), "1", p(1), c(1), quantity=3, at=T0 + timedelta(minutes=1)),
        cart(p(2), customer=c(1), at=T0 + timedelta(minutes=2)),
        bought(o(2), "1", p(2), c(2), at=T0 + timedelta(minutes=3)),
        bought(o(2), "2", p(3), c(2), at=T0 + timedelta(minutes=3)),
        view(p(2), customer=c(2), at=T0 + timedelta(days=1), key="v2"),
        cart(p(3), anonymous="tok-1", at=T0 + timedelta(days=1, minutes=1)),
        view(p(1), anonymous="tok-1", at=T0 + timedelta(days=2), key="v3"),
        bought(o(3), "1", p(1), c(3), at=T0 + timedelta(days=3)),
        bought(o(3), "2", p(2), c(3), at=T0 + timedelta(days=3)),
        view(p(9), customer=c(9), shop=OTHER_SHOP, key="elsewhere"),
    ])
    store.add_events([cart(p(3), anonymous="tok-1", removed=True)])  # the pixel's product_removed_from_cart
    store.apply(Delivery(SHOP, "cancel", "orders/cancelled"), ChangeSet(void_order_ids=(o(2),)))
    store.apply(Delivery(SHOP, "refund", "refunds/create"), ChangeSet(refunds=(RefundLine("r1", o(1), "1", 1),)))


def assert_same_columns(got: InteractionColumns, want: InteractionColumns) -> None:
    assert (got.user_keys, got.product_ids, got.order_ids) == (want.user_keys, want.product_ids, want.order_ids)
    for name in ("users", "items", "kinds", "orders", "weight_factors", "occurred_at_us"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg=name)


def assert_same_matrix(got: sp.csr_matrix, want: sp.csr_matrix) -> None:
    assert got.shape == want.shape
    for name in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
        assert getattr(got, name).dtype == getattr(want, name).dtype, name


# --- the read ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("numeric", [True, False], ids=["shopify-ids", "other-ids"])
def test_columns_hold_exactly_the_events_that_still_count(any_store, numeric):
    plant(any_store, numeric)

    columns = any_store.interaction_columns(SHOP, times=True)

    p = (lambda n: str(8_000_000_000 + n)) if numeric else (lambda n: f"sku-{n}")
    c = (lambda n: f"c:{1000 + n}") if numeric else (lambda n: f"c:cust-{n}")
    # Known answer: the voided purchases (order 502) and the removed cart line are gone.
    assert columns.user_keys == [c(1), c(2), "a:tok-1", c(3)]
    assert columns.product_ids == [p(1), p(2)]
    assert [columns.user_keys[u] for u in columns.users] == [c(1), c(1), c(1), c(2), "a:tok-1", c(3), c(3)]
    assert [columns.product_ids[i] for i in columns.items] == [p(1), p(1), p(2), p(2), p(1), p(1), p(2)]
    assert [EVENT_KINDS[k] for k in columns.kinds] == [
        EventKind.VIEW, EventKind.PURCHASE, EventKind.ADD_TO_CART, EventKind.VIEW, EventKind.VIEW,
        EventKind.PURCHASE, EventKind.PURCHASE]
    orders = [columns.order_ids[o] if o >= 0 else None for o in columns.orders]
    assert orders == [None, "501" if numeric else "#501", None, None, None] + ["503" if numeric else "#503"] * 2
    assert columns.weight_factors.tolist() == [1.0, 1.0 - 1.0 / 3, 1.0, 1.0, 1.0, 1.0, 1.0]  # exact, not rounded
    assert columns.occurred_at_us[0] == int(T0.timestamp()) * 1_000_000
    # And exactly what the row-by-row read returns.
    rows = any_store.interactions(SHOP)
    assert columns.interactions() == rows
    assert_same_columns(columns, InteractionColumns.from_interactions(rows))
    assert_same_columns(any_store.interaction_columns(SHOP), InteractionColumns.from_interactions(rows, times=False))


@pytest.mark.parametrize("numeric", [True, False], ids=["shopify-ids", "other-ids"])
def test_the_matrix_from_columns_is_the_row_by_row_matrix_bit_for_bit(any_store, numeric):
    plant(any_store, numeric)

    data = user_items_from_columns(any_store.interaction_columns(SHOP), WEIGHTS)
    old = build_user_items(any_store.interactions(SHOP), WEIGHTS)

    assert (data.user_keys, data.item_ids) == (old.user_keys, old.item_ids)
    assert_same_matrix(data.matrix, old.matrix)
    # Known answer: c:1001 viewed p1 (1) and bought it with a third refunded (10 × 2/3), carted p2 (4).
    expected = np.zeros((4, 2), dtype=np.float32)
    expected[0] = [np.float32(1.0) + np.float32(10.0 * (1.0 - 1.0 / 3)), 4.0]
    expected[1] = [0.0, 1.0]  # c:1002's purchases were cancelled; the view stays
    expected[2] = [1.0, 0.0]  # the guest's cart line was removed; the view stays
    expected[3] = [10.0, 10.0]
    np.testing.assert_array_equal(data.matrix.toarray(), expected)


@pytest.mark.parametrize("numeric", [True, False], ids=["shopify-ids", "other-ids"])
@pytest.mark.parametrize("n", [1, 2], ids=["p1", "p2"])  # p1: order 501 and guest tok-1 are left with nothing
def test_a_gift_cards_events_are_left_out_as_if_never_stored(any_store, numeric, n):
    # Arrange: the planted shop, one of whose products the catalog then learns is a gift card (GraphQL's isGiftCard)
    plant(any_store, numeric)
    gift = str(8_000_000_000 + n) if numeric else f"sku-{n}"
    any_store.apply(Delivery(SHOP, "gift", "products/update"), ChangeSet(upsert_products=(
        CatalogProduct(SHOP, gift, status="active", published_at=T0, hidden="gift_card"),)))

    # Act
    got = any_store.interaction_columns(SHOP, times=True)

    # Assert: the columns of the other events, every code numbered as if the gift card's had never been stored
    others = [i for i in any_store.interactions(SHOP) if i.product_id != gift]
    assert len(others) < len(any_store.interactions(SHOP))
    assert_same_columns(got, InteractionColumns.from_interactions(others, times=True))


def test_a_product_viewed_and_carted_is_trained_unless_the_catalog_holds_it_as_a_gift_card(any_store):
    # Arrange: three shoppers view and cart one product beside the planted ones, as the pixel reports them
    plant(any_store)
    card = "8000000077"
    any_store.add_events([event for n in range(3) for event in (
        view(card, customer=str(1001 + n), at=T0 + timedelta(days=4), key=f"gv{n}"),
        cart(card, customer=str(1001 + n), at=T0 + timedelta(days=4, minutes=1)))])
    trained_before = train_shop(any_store, SHOP, CONFIG)

    # Act: the catalog learns it is a gift card, and the shop is trained again
    any_store.apply(Delivery(SHOP, "gift", "products/update"), ChangeSet(upsert_products=(
        CatalogProduct(SHOP, card, status="active", published_at=T0, hidden="gift_card"),)))
    trained_after = train_shop(any_store, SHOP, CONFIG)

    # Assert
    assert trained_before.item_ids.row(card) is not None
    assert trained_after.item_ids.row(card) is None
    assert len(trained_after.item_ids) == len(trained_before.item_ids) - 1


def test_kinds_weighted_zero_drop_their_shoppers_and_products_as_the_row_path_does(any_store):
    plant(any_store)
    any_store.add_events([view("8000000077", customer="only-views", key="v9")])
    weights = {EventKind.VIEW: 0.0, EventKind.ADD_TO_CART: 4.0, EventKind.PURCHASE: 10.0}

    columns = any_store.interaction_columns(SHOP)
    data = user_items_from_columns(columns, weights)
    old = build_user_items(any_store.interactions(SHOP), weights)

    assert "c:only-views" in columns.user_keys and "c:only-views" not in data.user_keys
    assert (data.user_keys, data.item_ids) == (old.user_keys, old.item_ids)
    assert_same_matrix(data.matrix, old.matrix)
    assert [data.item_of_product[i] for i in range(len(columns.product_ids))] == [
        data.item_ids.index(pid) if pid in data.item_ids else -1 for pid in columns.product_ids]


def test_mixed_customers_and_guests_and_identity_links(any_store):
    any_store.add_events([view(f"{700 + n % 7}", customer=str(90 + n % 5) if n % 3 else None,
                               anonymous=f"tok-{n % 4}", at=T0 + timedelta(seconds=n), key=f"k{n}")
                          for n in range(60)])
    any_store.apply(Delivery(SHOP, "link", "customers/update"), ChangeSet(identity_links=(IdentityLink("tok-1", "91"),)))

    rows = any_store.interactions(SHOP)
    columns = any_store.interaction_columns(SHOP, times=True)

    assert {"c:91", "a:tok-0"} <= set(columns.user_keys)
    assert_same_columns(columns, InteractionColumns.from_interactions(rows))


def test_shopify_ids_are_parsed_as_numbers_without_a_dictionary(any_store, monkeypatch):
    import recommender.event_columns as event_columns

    any_store.add_events([view(str(8_000_000_000 + n % 11), customer=str(7_000_000 + n % 13),
                               at=T0 + timedelta(seconds=n), key=f"k{n}") for n in range(100)])
    rows = any_store.interactions(SHOP)

    def no_dictionary(*args, **kwargs):
        raise AssertionError("Shopify ids went through the dictionary")

    monkeypatch.setattr(event_columns, "string_codes", no_dictionary)
    columns = any_store.interaction_columns(SHOP, times=True)
    monkeypatch.undo()

    assert_same_columns(columns, InteractionColumns.from_interactions(rows))
    assert columns.user_keys[:2] == ["c:7000000", "c:7000001"]


def test_rows_that_arrive_out_of_id_order_are_put_back_in_order():
    """PostgreSQL reads the ids too (a parallel plan may reorder rows); the columns follow the ids."""
    from recommender.event_columns import ColumnTexts, decode, integer_times

    texts = ColumnTexts(count=3, users=SEP.join(["c:5", "a:g", "c:5"]), products=SEP.join(["20", "10", "20"]),
                        orders=SEP.join(["o2", "o1"]), kinds="504", factors=",0.5,", times=SEP.join(["3", "1", "2"]),
                        ids="30,10,20")

    columns = decode(texts, float, integer_times)

    assert columns.user_keys == ["a:g", "c:5"] and columns.users.tolist() == [0, 1, 1]
    assert columns.product_ids == ["10", "20"] and columns.items.tolist() == [0, 1, 1]
    assert columns.order_ids == ["o1", "o2"] and columns.orders.tolist() == [-1, 0, 1]
    assert columns.kinds.tolist() == [0, 1, 2] and columns.weight_factors.tolist() == [0.5, 1.0, 1.0]
    assert columns.occurred_at_us.tolist() == [1, 2, 3]


def test_an_empty_shop_reads_as_empty_columns(any_store):
    plant(any_store)

    columns = any_store.interaction_columns("empty.myshopify.com", times=True)

    assert len(columns) == 0 and columns.user_keys == [] and columns.occurred_at_us.dtype == np.int64


def test_a_value_holding_the_separator_is_read_row_by_row(any_store):
    any_store.add_events([view("p1", customer=f"odd{SEP}one", key="a"), view("p2", customer="c2", key="b")])

    columns = any_store.interaction_columns(SHOP, times=True)

    assert columns.user_keys == [f"c:odd{SEP}one", "c:c2"]
    assert columns.interactions() == any_store.interactions(SHOP)


def test_sqlite_reads_a_shop_that_is_a_small_part_of_the_store_through_its_index(tmp_path):
    store = SQLiteEventStore(tmp_path / "events.sqlite3")
    store.add_events([view(f"{n % 13 + 1}", customer=str(n % 17 + 1), shop=OTHER_SHOP, key=f"o{n}")
                      for n in range(200)])
    plant(store)

    columns = store.interaction_columns(SHOP, times=True)

    assert_same_columns(columns, InteractionColumns.from_interactions(store.interactions(SHOP)))
    assert_same_columns(store.interaction_columns(OTHER_SHOP, times=True),
                        InteractionColumns.from_interactions(store.interactions(OTHER_SHOP)))
    store.close()


def test_ids_that_only_look_like_numbers_keep_their_spelling():
    text = SEP.join(["12", "012", "7"])
    assert canonical_numbers(text, 3) is None  # a leading zero: not canonical, so kept as a string
    assert canonical_numbers(SEP.join(["12", "+7"]), 2) is None
    assert canonical_numbers(SEP.join(["12", " 7"]), 2) is None
    assert canonical_numbers("1" * 19, 1) is None  # beyond 18 digits
    assert canonical_numbers(SEP.join(["12", "7", "12"]), 3).tolist() == [12, 7, 12]
    codes, first = first_seen_codes(np.array([30, 10, 30, 20, 10]))
    assert codes.tolist() == [0, 1, 0, 2, 1] and first.tolist() == [0, 1, 3]


# --- training on columns ----------------------------------------------------------------------------


def artifact_the_row_by_row_way(store, config: TrainingConfig) -> ModelArtifact:
    """What training built before columns: build_user_items over Interaction rows, the co-purchase loop."""
    rows = store.interactions(SHOP)
    data = build_user_items(rows, dict(config.event_weights))
    factors = fit_item_factors(data.matrix, config)
    counts, neighbors, scores, orders = reference_copurchase(rows, {p: i for i, p in enumerate(data.item_ids)},
                                                             config.copurchase_k)
    return ModelArtifact.build(data.item_ids, factors, np.asarray(data.matrix.sum(axis=0)).ravel(),
                               config.regularization, config.alpha, {"version": "rows"},
                               item_support=np.diff(data.matrix.tocsc().indptr),
                               copurchase=CoPurchaseLists.from_counts(counts, neighbors, scores, orders))


@pytest.mark.parametrize("numeric", [True, False], ids=["shopify-ids", "other-ids"])
def test_training_on_columns_builds_the_artifact_the_row_path_built(any_store, numeric):
    plant(any_store, numeric)
    rng = np.random.default_rng(4)
    events = []
    for n in range(300):  # enough orders for co-purchase lists with ties and truncation at k
        product = str(8_000_000_000 + int(rng.integers(1, 30))) if numeric else f"sku-{int(rng.integers(1, 30))}"
        order = f"{900 + n // 3}" if n % 4 else None
        kind = EventKind.PURCHASE if order else EventKind.VIEW
        events.append(Event(kind=kind, shop=SHOP, product_id=product, occurred_at=T0 + timedelta(hours=n),
                            customer_id=str(int(rng.integers(1, 40))), order_id=order,
                            dedupe_key=order_line_key(order, str(n)) if order else f"view-{n}"))
    any_store.add_events(events)
    config = CONFIG._replace(copurchase_k=3)

    got = train_shop(any_store, SHOP, config)
    want = artifact_the_row_by_row_way(any_store, config)

    mine, theirs = got.arrays(), want.arrays()
    assert mine.keys() == theirs.keys()
    for name in mine:
        if name != "metadata":
            np.testing.assert_array_equal(mine[name], theirs[name], err_msg=name)
    rows = any_store.interactions(SHOP)
    old = build_user_items(rows, dict(config.event_weights))
    assert got.metadata["counts"] == {"users": old.matrix.shape[0], "items": old.matrix.shape[1], "events": len(rows),
                                      "nonzeros": old.matrix.nnz,
                                      "orders": len({e.order_id for e in rows if e.order_id})}


def test_train_shop_still_takes_rows_a_caller_has_read(store):
    plant(store)
    rows = store.interactions(SHOP)

    from_rows = train_shop(store, SHOP, CONFIG, interactions=rows)
    from_store = train_shop(store, SHOP, CONFIG)

    np.testing.assert_array_equal(from_rows.item_factors, from_store.item_factors)
    assert from_rows.metadata["counts"] == from_store.metadata["counts"]


def test_purchase_lines_are_the_purchases_with_an_order_of_products_in_the_matrix(store):
    plant(store)
    columns = store.interaction_columns(SHOP)
    data = user_items_from_columns(columns, WEIGHTS)

    orders, items = purchase_lines(columns, data)

    assert [(columns.order_ids[o], data.item_ids[i]) for o, i in zip(orders, items)] == [
        ("501", "8000000001"), ("503", "8000000001"), ("503", "8000000002")]


def test_sqlite_reads_the_two_halves_of_the_ids_at_once_and_joins_them(tmp_path):
    store = SQLiteEventStore(tmp_path / "events.sqlite3")
    plant(store)
    store.add_events([view(str(8_000_000_000 + n % 7), customer=str(n % 11 + 1), at=T0 + timedelta(seconds=n),
                           key=f"k{n}") for n in range(40)])
    store.SPLIT_READ_MIN_IDS = 1  # split even this small table
    halves = []
    original = store._read_halves
    store._read_halves = lambda *args: halves.append(args[-1]) or original(*args)

    columns = store.interaction_columns(SHOP, times=True)

    assert halves == [26]  # ids 1 … 51, split in the middle
    assert_same_columns(columns, InteractionColumns.from_interactions(store.interactions(SHOP)))
    store.close()


def test_sqlite_halves_read_while_a_write_lands_are_read_again_in_one_statement(tmp_path, monkeypatch):
    import sqlite3

    store = SQLiteEventStore(tmp_path / "events.sqlite3")
    plant(store)
    store.SPLIT_READ_MIN_IDS = 1
    connect = sqlite3.connect

    def connect_then_write(*args, **kwargs):  # the upper half's connection opens; meanwhile a webhook commits
        writer = connect(store.path)
        writer.execute("INSERT INTO events (shop, kind, user_key, customer_id, product_id, quantity, occurred_at,"
                       " source_topic, delivery_id) VALUES (?, 'view', 'c:late', 'late', '8000000005', 1,"
                       " '2026-03-09T00:00:00.000000+00:00', 'test', 'late')", (SHOP,))
        writer.commit()
        writer.close()
        monkeypatch.setattr(sqlite3, "connect", connect)
        return connect(*args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect_then_write)
    statements = []
    original = store._read
    store._read = lambda sql, params=(): statements.append(sql) or original(sql, params)

    columns = store.interaction_columns(SHOP, times=True)

    assert "c:late" in columns.user_keys
    assert sum("group_concat" in sql for sql in statements) == 1  # the halves were dropped, one statement read
    assert_same_columns(columns, InteractionColumns.from_interactions(store.interactions(SHOP)))
    store.close()


@pytest.mark.parametrize("run_events", [1, 3, 7, 250_000])
def test_postgresql_streams_the_columns_in_runs_of_ids_and_joins_them_as_one_read(run_events, monkeypatch):
    from recommender import event_columns
    from recommender.store_postgres import PostgresEventStore

    joined = []
    join = event_columns.join_column_texts
    monkeypatch.setattr(event_columns, "join_column_texts", lambda runs: joined.append(len(runs)) or join(runs))
    monkeypatch.setattr(PostgresEventStore, "COLUMN_ROW_IDS", run_events)
    with temporary_schema() as url:  # skips without TEST_POSTGRES_URL
        store = open_event_store(url)
        try:
            plant(store)  # a refund's factor, a cancelled order, a guest: every column has something to join
            store.add_events([view(str(8_000_000_000 + n % 7), customer=str(n % 11 + 1), at=T0 + timedelta(seconds=n),
                                   key=f"k{n}") for n in range(40)])
            columns = store.interaction_columns(SHOP, times=True)
            without_times = store.interaction_columns(SHOP)
            rows = store.interactions(SHOP)
            empty = store.interaction_columns("empty.myshopify.com", times=True)
        finally:
            store.close()

    # The rows the read came back in: one per run of ids holding any of the shop's events, none with more than that
    assert len(rows) == 47 and len(joined) >= 2
    assert joined[0] == joined[1] >= -(-47 // run_events) and (joined[0] == 47 if run_events == 1 else True)
    assert joined[0] == 1 if run_events == 250_000 else joined[0] > 1
    assert_same_columns(columns, InteractionColumns.from_interactions(rows))
    assert_same_columns(without_times, InteractionColumns.from_interactions(rows, times=False))
    assert len(empty) == 0 and empty.occurred_at_us is not None
