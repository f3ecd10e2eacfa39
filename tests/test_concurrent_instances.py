"""Two functions-framework instances on one event store, the same webhooks delivered to both at once.

Cloud Functions runs as many instances as traffic needs and Shopify retries, so one webhook
id can reach two instances at the same moment. Both answer 200, and the store keeps each
delivery and each order line exactly once. PostgreSQL is the shared store this is for (it skips
without TEST_POSTGRES_URL); SQLite holds too when the instances share one file (WAL, busy timeout).
"""

from __future__ import annotations

import os
import queue
import random
import threading
from collections import Counter, defaultdict

import pytest
import requests

from recommender.store import open_event_store
from tests.conftest import SHOP, as_body, order_payload, running_function, signed_headers

ORDERS = 16  # each with three lines, sent as orders/create and orders/paid: 32 webhook ids, 48 order lines
SENDS_PER_INSTANCE = 3  # every webhook id reaches each instance this many times
CLIENT_THREADS = 12


@pytest.fixture
def two_instances(env, event_store_url, tmp_path):
    """Two `functions-framework --target app` processes on free loopback ports, sharing one event store."""
    process_env = {**os.environ, **env, "EVENT_STORE_URL": event_store_url,
                   "MODEL_STORE_URL": f"file://{tmp_path}/models"}
    with running_function(process_env) as first, running_function(process_env) as second:
        yield [first, second]


def webhooks() -> list[tuple[str, str, bytes]]:
    """(webhook id, topic, body): every order twice, under two topics and two webhook ids."""
    sent = []
    for n in range(ORDERS):
        body = as_body(order_payload(5000 + n, 700 + n, [100 + n, 200 + n, 300 + n]))
        sent += [(f"wh-create-{n}", "orders/create", body), (f"wh-paid-{n}", "orders/paid", body)]
    return sent


def test_two_instances_store_every_delivery_and_order_line_exactly_once(two_instances, event_store_url):
    # Arrange: every webhook id to both instances, several times, in random order, from many threads
    sends = [(base, webhook) for webhook in webhooks() for base in two_instances for _ in range(SENDS_PER_INSTANCE)]
    random.Random(7).shuffle(sends)
    work: queue.Queue = queue.Queue()
    for send in sends:
        work.put(send)
    answers: list[tuple[str, int, dict]] = []
    errors: list[BaseException] = []

    def client():
        session = requests.Session()
        try:
            while True:
                try:
                    base, (webhook_id, topic, body) = work.get_nowait()
                except queue.Empty:
                    return
                response = session.post(f"{base}/webhooks", data=body, timeout=30,
                                        headers=signed_headers(body, topic, webhook_id=webhook_id))
                answers.append((webhook_id, response.status_code, response.json()))
        except BaseException as exc:  # reported by the assertions below
            errors.append(exc)

    # Act
    threads = [threading.Thread(target=client) for _ in range(CLIENT_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # Assert: every answer is a 200, and each webhook id was stored by exactly one of its six deliveries
    assert errors == []
    assert len(answers) == len(sends) == ORDERS * 2 * 2 * SENDS_PER_INSTANCE
    assert Counter(status for _, status, _ in answers) == {200: len(sends)}, [a for a in answers if a[1] != 200][:3]
    outcomes: dict[str, Counter] = defaultdict(Counter)
    for webhook_id, _, body in answers:
        outcomes[webhook_id][body["status"]] += 1
    assert all(c == {"stored": 1, "duplicate": 2 * SENDS_PER_INSTANCE - 1} for c in outcomes.values()), outcomes
    assert sum(body.get("events", 0) for _, _, body in answers if body["status"] == "stored") == ORDERS * 3

    # ... and the shared store holds each delivery and each order line once, none lost
    store = open_event_store(event_store_url)
    try:
        assert store.count_deliveries() == ORDERS * 2
        assert store.count_events(SHOP) == ORDERS * 3
        assert sorted((i.user_key, i.product_id, i.order_id) for i in store.interactions(SHOP)) == sorted(
            (f"c:{700 + n}", str(line + n), str(5000 + n)) for n in range(ORDERS) for line in (100, 200, 300))
        assert store.installed_shops() == [SHOP]
    finally:
        store.close()
