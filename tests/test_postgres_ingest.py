"""PostgreSQL webhook ingest: a delivery of events alone that needs no lock is one statement.

`PostgresEventStore.apply` stores such a delivery (an order of a known customer, the common
webhook) with `_APPLY_EVENTS`, in one round trip. These tests hold it to the general,
statement-by-statement path: the same deliveries applied through both leave the same rows and
return the same counts, alone and under concurrency.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from recommender.changes import ChangeSet, Delivery, Event, IdentityLink
from recommender.events import EventKind
from tests.conftest import SHOP, order_payload
from tests.postgres_schema import run, temporary_schema
from webhooks.topics import TRANSLATORS, TopicContext

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=timezone.utc)


def _store(url: str, one_statement: bool):
    from recommender.store_postgres import PostgresEventStore

    class StatementByStatement(PostgresEventStore):
        def _events_alone_without_locks(self, changes: ChangeSet) -> bool:
            return False

    return (PostgresEventStore if one_statement else StatementByStatement)(url)


@pytest.fixture
def stores():
    """(one statement, statement by statement), each on a schema of its own."""
    with temporary_schema() as fast_url, temporary_schema() as general_url:
        fast, general = _store(fast_url, True), _store(general_url, False)
        yield (fast, fast_url), (general, general_url)
        fast.close()
        general.close()


def rows(url: str) -> dict:
    """Every row a delivery of events can write, event ids as their order within each shop."""
    events = run(url, "SELECT shop, kind, user_key, customer_id, anonymous_id, product_id, variant_id, quantity, price,"
                      " order_id, occurred_at, source_topic, delivery_id, dedupe_key, weight_factor,"
                      " rank() OVER (PARTITION BY shop ORDER BY id) FROM events ORDER BY shop, id")
    return {
        "events": events,
        "deliveries": run(url, "SELECT shop, webhook_id, topic, event_id FROM deliveries ORDER BY 1, 2"),
        "shop_state": run(url, "SELECT shop, installed FROM shop_state ORDER BY 1"),
    }


def order(webhook_id: str, topic: str, payload: dict, at: datetime | None = None) -> tuple[Delivery, ChangeSet]:
    return (Delivery(SHOP, webhook_id, topic, triggered_at=at),
            TRANSLATORS[topic](TopicContext(SHOP, topic, webhook_id), payload))


def purchase(key: str | None, weight: float, product: str = "p1", customer: str = "c1") -> Event:
    return Event(EventKind.PURCHASE, SHOP, product, T0, customer_id=customer, order_id="o1", quantity=2, price=9.5,
                 delivery_id="d", dedupe_key=key, weight_factor=weight)


def both(stores, delivery: Delivery, changes: ChangeSet):
    (fast, _), (general, _) = stores
    answers = fast.apply(delivery, changes), general.apply(delivery, changes)
    assert answers[0] == answers[1]
    return answers[0]


def same_rows(stores) -> dict:
    (_, fast_url), (_, general_url) = stores
    fast_rows = rows(fast_url)
    assert fast_rows == rows(general_url)
    return fast_rows


def test_an_order_is_one_statement_without_begin_or_commit(stores, monkeypatch):
    # Arrange
    (fast, _), _ = stores
    fast.apply(*order("warm", "orders/create", order_payload(1, 7, [1])))  # connection and schema check
    sent = []
    real_execute = psycopg.Connection.execute
    monkeypatch.setattr(psycopg.Connection, "execute",
                        lambda self, query, *args, **kw: sent.append(query) or real_execute(self, query, *args, **kw))
    monkeypatch.setattr(psycopg.Connection, "transaction", lambda self: pytest.fail("opened a transaction"))

    # Act
    stored = fast.apply(*order("wh-1", "orders/create", order_payload(2, 7, [1, 2, 3])))

    # Assert
    assert stored == 3
    assert len(sent) == 1


def test_a_guest_order_and_a_product_update_still_go_statement_by_statement(stores):
    (fast, _), _ = stores
    guest = order("wh-guest", "orders/create", order_payload(3, None, [1, 2], cart_token="cart-1"))
    assert not fast._events_alone_without_locks(guest[1])
    assert not fast._events_alone_without_locks(ChangeSet(identity_links=(IdentityLink("cart-1", "7"),)))
    assert fast._events_alone_without_locks(order("wh-known", "orders/create", order_payload(4, 7, [1]))[1])


def test_orders_resent_by_later_topics_are_stored_once_and_counted_alike(stores):
    # Arrange
    first = order_payload(10, 7, [1, 2])
    updated = {**first, "line_items": [*first["line_items"],
                                       {"id": 1099, "product_id": 9, "variant_id": 90, "quantity": 3, "price": "1.00"}]}

    # Act
    counts = [both(stores, *order("wh-1", "orders/create", first)),
              both(stores, *order("wh-2", "orders/updated", updated)),
              both(stores, *order("wh-3", "orders/paid", updated)),
              both(stores, *order("wh-1", "orders/create", first))]

    # Assert
    assert counts == [2, 1, 0, None]
    stored = same_rows(stores)
    assert len(stored["events"]) == 3 and len(stored["deliveries"]) == 3
    assert [e[5] for e in stored["events"]] == ["1", "2", "9"]  # ids follow the lines' order


def test_repeated_keys_keep_the_first_event_with_the_lowest_weight(stores):
    # Act
    first = both(stores, Delivery(SHOP, "wh-1", "orders/create"), ChangeSet(events=(
        purchase("k1", 1.0, "a"), purchase("k1", 0.5, "b"), purchase("k2", 0.25, "c"), purchase("k2", 0.75, "d"),
        purchase(None, 1.0, "e"), purchase(None, 0.5, "e"),
    )))
    lowered = both(stores, Delivery(SHOP, "wh-2", "orders/create"),
                   ChangeSet(events=(purchase("k1", 0.2, "x"), purchase("k2", 0.9, "y"))))

    # Assert
    assert (first, lowered) == (4, 0)
    stored = same_rows(stores)
    assert [(e[5], e[13], e[14]) for e in stored["events"]] == [
        ("a", "k1", 0.2), ("c", "k2", 0.25), ("e", None, 1.0), ("e", None, 0.5)]


def test_a_retried_webhook_changes_nothing_even_after_its_events_were_erased(stores):
    # Arrange
    delivery, changes = order("wh-1", "orders/create", order_payload(20, 7, [1, 2]))
    assert both(stores, delivery, changes) == 2
    for _, url in stores:
        run(url, "DELETE FROM events")  # as customers/redact does

    # Act / Assert
    assert both(stores, delivery, changes) is None
    assert same_rows(stores)["events"] == []


def test_installation_is_recorded_as_the_general_path_records_it(stores):
    # Arrange: the shop uninstalled at T0
    for store, _ in stores:
        store.set_shop_installed(SHOP, False)
        run(_, "UPDATE shop_state SET changed_at = %s", (T0,))

    # Act / Assert: a retry of an order placed before the uninstall proves nothing
    both(stores, *order("wh-old", "orders/create", order_payload(30, 7, [1]), at=T0 - timedelta(hours=1)))
    assert same_rows(stores)["shop_state"] == [(SHOP, False)]
    # nor does a compliance request
    both(stores, Delivery(SHOP, "wh-gdpr", "customers/data_request", triggered_at=T0 + timedelta(hours=1)), ChangeSet())
    assert same_rows(stores)["shop_state"] == [(SHOP, False)]
    # an order placed after it does
    both(stores, *order("wh-new", "orders/create", order_payload(31, 7, [1]), at=T0 + timedelta(hours=1)))
    assert same_rows(stores)["shop_state"] == [(SHOP, True)]


def test_a_first_delivery_marks_a_new_shop_installed(stores):
    both(stores, *order("wh-1", "orders/create", order_payload(40, 7, [1])))
    assert same_rows(stores)["shop_state"] == [(SHOP, True)]


def test_concurrent_deliveries_of_the_same_orders_store_each_line_once_with_the_lowest_weight(stores):
    # Arrange: 8 threads; each sends the same 20 order lines under webhook ids of its own, half of them
    # also under webhook ids every thread shares; weights differ by thread
    (fast, _), (general, general_url) = stores
    threads = 8
    counts: dict[str, list] = {"fast": [], "general": []}
    failures = []

    def deliver(name, store, thread):
        try:
            for i in range(20):
                events = (purchase(f"line-{i}", (10 - thread) / 10, product=f"p{i}"),)
                for webhook_id in (f"t{thread}-{i}", *([f"shared-{i}"] if i % 2 else [])):
                    counts[name].append(store.apply(Delivery(SHOP, webhook_id, "orders/create"),
                                                    ChangeSet(events=events)))
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    # Act
    workers = [threading.Thread(target=deliver, args=(name, store, t))
               for name, store in (("fast", fast), ("general", general)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    # Assert
    assert failures == []
    for name in counts:
        assert sum(c for c in counts[name] if c) == 20  # each line counted new exactly once
        assert sum(c is None for c in counts[name]) == 10 * (threads - 1)  # each shared webhook stored once
    (_, fast_url), _ = stores
    for url in (fast_url, general_url):
        assert run(url, "SELECT count(*), min(weight_factor), max(weight_factor) FROM events") == [(20, 0.3, 0.3)]
        assert run(url, "SELECT count(*) FROM deliveries") == [(threads * 20 + 10,)]
