"""The demo store: deterministic, planted structure the model recovers, and the demo command end to end."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from datetime import datetime, timezone

import numpy as np
import pytest

from demo.store import PAIRED, DemoConfig, generate_demo_store
from recommender.events import EventKind, user_key
from recommender.history_import import read_history_csv
from recommender.serving import ServingModel
from recommender.settings import TrainingConfig
from recommender.training import train_shop
from tests.conftest import ROOT, free_port
from webhooks.delivery import handle_webhook

NOW = datetime(2026, 11, 1, tzinfo=timezone.utc)


def test_the_demo_store_is_deterministic():
    first = generate_demo_store(DemoConfig(customers=30, now=NOW)).signed_requests("s")
    second = generate_demo_store(DemoConfig(customers=30, now=NOW)).signed_requests("s")
    assert [(r.body, r.headers) for r in first] == [(r.body, r.headers) for r in second]
    assert {r.topic for r in first} == {"products/create", "carts/create", "carts/update", "orders/create"}


@pytest.fixture(scope="module")
def demo_shop(tmp_path_factory):
    """The demo store loaded through the real webhook handler and the history importer."""
    from recommender.model_store import LocalModelStore
    from recommender.store import SQLiteEventStore

    demo = generate_demo_store(DemoConfig(customers=250, now=NOW))
    folder = tmp_path_factory.mktemp("demo")
    store = SQLiteEventStore(folder / "events.sqlite3")
    models = LocalModelStore(folder / "models")
    rows = io.StringIO()
    writer = csv.DictWriter(rows, fieldnames=list(demo.history_rows[0]))
    writer.writeheader()
    writer.writerows(demo.history_rows)
    rows.seek(0)
    store.add_events(read_history_csv(rows, demo.config.shop))
    for request in demo.signed_requests("demo-secret"):
        assert handle_webhook(request.headers, request.body, "demo-secret", store, models).status == 200
    yield demo, store
    store.close()


def category_share(demo, store, recommend) -> float:
    """Share of top-5 items in a single-taste customer's favourite or paired category."""
    category = {p.product_id: p.category for p in demo.products}
    hits = total = 0
    for customer in demo.customers:
        if len(customer.favourites) != 1:
            continue
        favourite = customer.favourites[0]
        picked = recommend(store.history(demo.config.shop, user_key(customer.customer_id), 200))
        hits += sum(category[pid] in (favourite, PAIRED[favourite]) for pid in picked)
        total += len(picked)
    return hits / total


def test_the_model_recovers_the_planted_tastes_and_beats_popularity(demo_shop):
    demo, store = demo_shop
    model = ServingModel(train_shop(store, demo.config.shop, TrainingConfig()))  # the shipped defaults

    def personalized(history):
        rows, weights = model.history_weights(history)
        bought = model.rows_of([e.product_id for e in history if e.kind is EventKind.PURCHASE])
        blocked = np.zeros(model.n_items, dtype=bool)
        blocked[bought] = True
        return [str(model.item_ids[r]) for r in model.top_rows(model.personalized_scores(rows, weights), 5, blocked)]

    personalized_share = category_share(demo, store, personalized)
    popular_share = category_share(demo, store, lambda history: [str(model.item_ids[r]) for r in model.popular_rows[:5]])

    # Two of six categories are "right" for each customer: chance is 1/3.
    assert personalized_share > 0.8, personalized_share
    assert popular_share < 0.5, popular_share


def test_the_demo_command_prints_working_curl_commands(tmp_path):
    env = {**os.environ, "EVENT_STORE_URL": f"sqlite:///{tmp_path}/events.sqlite3",
           "MODEL_STORE_URL": f"file://{tmp_path}/models"}
    result = subprocess.run(
        [sys.executable, "-m", "demo", "--no-serve", "--customers", "80", "--port", str(free_port())],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )

    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert len(re.findall(r"^curl 'http://127\.0\.0\.1:\d+/recommend\?shop=demo-store", out, re.M)) == 7
    assert out.count("strategy personalized") == 3  # two customers and the guest with viewed products
    assert out.count("strategy trending (fell back from personalized: no_history)") == 1
    assert out.count("strategy related,") == 1
    assert out.count("strategy complementary,") == 1
    assert (tmp_path / "models" / "demo-store.myshopify.com" / "latest.json").exists()
    # the measurement: 80 simulated shoppers, each shown one answer, split between the arms; shoppers click what they
    # favour, which the model's answers show them and best sellers rarely do (planted: 0.4 against 0.05 a product)
    arms = {arm: (int(answers), int(shown), int(clicks), float(rate)) for arm, answers, shown, clicks, rate in re.findall(
        r"^  (model|control) +(\d+) answers, +(\d+) products shown, +(\d+) clicks \(([\d.]+)%\)", out, re.M)}
    assert set(arms) == {"model", "control"} and arms["model"][0] + arms["control"][0] == 80, out[-1500:]
    assert arms["model"][3] > 2 * arms["control"][3], arms
    assert "click-through lift of the model over best sellers: " in out
