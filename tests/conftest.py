"""Shared fixtures: real SQLite in a temporary folder, signed deliveries, the real app."""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
import uuid
from pathlib import Path

import pytest

from recommender.settings import Settings
from recommender.store import SQLiteEventStore
from tests.postgres_schema import temporary_schema
from webhooks.verification import sign_webhook_body

ROOT = Path(__file__).resolve().parent.parent
SHOPIFY_FIXTURES = ROOT.parent / "shared" / "fixtures" / "shopify"
AUTH = {"Authorization": "Bearer test-train-token"}  # /train with the TRAIN_TOKEN of `env`
TEST_SECRET = "test-secret-do-not-use"
SHOP = "test-shop.myshopify.com"


@pytest.fixture(autouse=True)
def _restore_environment():
    """Entry points read os.environ; every test leaves it as it found it."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def shopify_fixture():
    """Load one of Shopify's sample payloads from ../shared, in place; skip where it is absent."""
    if not SHOPIFY_FIXTURES.is_dir():
        pytest.skip(f"Shopify sample payloads not found at {SHOPIFY_FIXTURES} (they live beside the repo, in shared/)")

    def load(name: str) -> bytes:
        return (SHOPIFY_FIXTURES / f"{name}.json").read_bytes()

    return load


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """The settings a test deployment runs with: everything under tmp_path."""
    return {
        "SHOPIFY_API_SECRET": TEST_SECRET,
        "EVENT_STORE_URL": f"sqlite:///{tmp_path}/events.sqlite3",
        "MODEL_STORE_URL": f"file://{tmp_path}/models",
        "TRAIN_TOKEN": "test-train-token",
        # Most tests ask for a customer directly; tests/test_app_proxy.py turns this off to test the privacy rule.
        "TRUST_CUSTOMER_ID_PARAM": "true",
        # Tests change the catalog and expect the next answer to see it; tests/test_answer_cache.py turns it on.
        "ANSWER_CACHE_SECONDS": "0",
        "ALS_FACTORS": "16",
        "ALS_ITERATIONS": "10",
    }


@pytest.fixture
def settings(env) -> Settings:
    return Settings.from_mapping(env)


@pytest.fixture(params=["sqlite", "postgresql"])
def event_store_url(request, tmp_path):
    """A SQLite file, and a PostgreSQL schema of the test's own when TEST_POSTGRES_URL is set: an event store's URL,
    for processes started the way a user starts them."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/events.sqlite3"
    else:
        with temporary_schema() as url:  # skips without TEST_POSTGRES_URL
            yield url


@pytest.fixture
def store(tmp_path):
    store = SQLiteEventStore(tmp_path / "events.sqlite3")
    yield store
    store.close()


def signed_headers(body: bytes, topic: str, shop: str = SHOP, webhook_id: str | None = None,
                   secret: str = TEST_SECRET) -> dict[str, str]:
    """Headers exactly as Shopify sends them for this body."""
    return {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Shop-Domain": shop,
        "X-Shopify-Webhook-Id": webhook_id or str(uuid.uuid4()),
        "X-Shopify-Event-Id": str(uuid.uuid4()),
        "X-Shopify-API-Version": "2026-04",
        "X-Shopify-Hmac-Sha256": sign_webhook_body(body, secret),
    }


def as_body(payload: dict) -> bytes:
    return json.dumps(payload).encode()


@pytest.fixture
def app_client(env):
    """The `app` router through functions-framework's own create_app, configured by env."""
    from functions_framework import create_app

    os.environ.update(env)
    return create_app(target="app", source=str(ROOT / "main.py")).test_client()


@pytest.fixture
def installed(app_client):
    """A shop that installed the app: a verified webhook delivery proves it."""
    assert post_webhook(app_client, "orders/create", order_payload(1, 2, [201])).status_code == 200
    return app_client


def order_payload(order_id: int, customer_id: int | None, product_ids: list[int],
                  created_at: str = "2026-11-01T10:00:00Z", cart_token: str | None = None) -> dict:
    """An orders/create body in Shopify's shape, with one line per product."""
    return {
        "id": order_id,
        "created_at": created_at,
        "cart_token": cart_token,
        "customer": {"id": customer_id} if customer_id is not None else None,
        "line_items": [
            {"id": order_id * 100 + i, "product_id": pid, "variant_id": pid * 10, "quantity": 1, "price": "10.00",
             "title": f"Product {pid}"}
            for i, pid in enumerate(product_ids)
        ],
    }


# Planted structure: two categories no customer crosses. Category A is products 101-110, B is 201-210.
CATEGORY_A = list(range(101, 111))
CATEGORY_B = list(range(201, 211))


def planted_orders() -> list[dict]:
    """40 customers; even ones buy only in A, odd ones only in B: three orders of two random products each."""
    rng = random.Random(11)
    orders, order_id = [], 9000
    for c in range(40):
        items = CATEGORY_A if c % 2 == 0 else CATEGORY_B
        picks = rng.sample(items, 6)
        for k in range(3):
            order_id += 1
            orders.append(order_payload(order_id, 1000 + c, picks[2 * k: 2 * k + 2],
                                        created_at=f"2026-10-{k + 1:02d}T12:00:00Z"))
    return orders


def ask(client, **params) -> dict:
    """GET /recommend of SHOP with `params`, which must answer 200: its JSON."""
    query = "&".join(f"{k}={v}" for k, v in {"shop": SHOP, **params}.items())
    response = client.get(f"/recommend?{query}")
    assert response.status_code == 200, response.json
    return response.json


def ids(body: dict) -> list[int]:
    """An answer's product ids, in its order."""
    return [int(item["product_id"]) for item in body["recommendations"]]


def post_webhook(client, topic: str, payload: dict, shop: str = SHOP, webhook_id: str | None = None):
    body = as_body(payload)
    return client.post("/webhooks", data=body, headers=signed_headers(body, topic, shop=shop, webhook_id=webhook_id))


@contextlib.contextmanager
def instance_counting_round_trips(monkeypatch, url: str):
    """A new `app` instance (functions-framework's test client) whose event store, PostgreSQL at `url`, it reaches
    through `bench.round_trips`' relay, which counts each time the client waits for the server: (client, relay)."""
    from urllib.parse import urlsplit

    from functions_framework import create_app

    from bench.round_trips import RoundTripCounter

    with RoundTripCounter(urlsplit(url).port or 5432) as relay:
        monkeypatch.setenv("EVENT_STORE_URL", relay.url(url))
        yield create_app(target="app", source=str(ROOT / "main.py")).test_client(), relay


def versions_until_swapped(client, url: str, old: str, seconds: float = 30.0) -> list[str]:
    """`model_version` of `url`'s answers, asked again and again until it is no longer `old` (or `seconds` pass).

    The request that finds a model refresh due is answered by the model in memory while the check and any new
    model's load run beside it (recommender.serving.ModelHolder); the answers after the swap carry the new one."""
    versions = [client.get(url).json["model_version"]]
    deadline = time.monotonic() + seconds
    while versions[-1] == old and time.monotonic() < deadline:
        time.sleep(0.01)
        versions.append(client.get(url).json["model_version"])
    return versions


@pytest.fixture
def runtime_stores_closed(monkeypatch):
    """Every event store a Runtime opens during the test (an app instance's, a command's) closed after it: an app
    instance is never let go (its import froze it out of the collector's sight), and on PostgreSQL each one kept its
    connection for the rest of the session."""
    from recommender.runtime import Runtime

    built = []
    build = Runtime.from_settings.__func__

    def recorded(cls, *args, **kwargs):
        built.append(build(cls, *args, **kwargs))
        return built[-1]

    monkeypatch.setattr(Runtime, "from_settings", classmethod(recorded))
    yield
    for runtime in built:
        runtime.store.close()


@pytest.fixture
def store_of(env):
    """The event store a test app writes to, opened on the same SQLite file."""
    opened = []

    def open_for(_client):
        from recommender.store import open_event_store

        store = open_event_store(env["EVENT_STORE_URL"])
        opened.append(store)
        return store

    yield open_for
    for store in opened:
        store.close()


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_function(process_env: dict[str, str], target: str = "app", output: list[str] | None = None):
    """`functions-framework --target TARGET` as a real process on a free loopback port; yields its base URL.

    What the process writes (stdout and stderr) is read as it comes, so a chatty process never blocks on a full
    pipe; pass `output` to receive its lines, complete once the block has exited. It is stopped with SIGINT,
    gunicorn's quick shutdown, once the block's requests are answered: on SIGTERM its worker kept each connection a
    test's `requests.get`/`post` had left open for 2 s more (gunicorn's keep-alive linger), in every such test."""
    import signal
    import subprocess
    import sys
    import threading
    import time

    import requests

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "functions_framework", "--target", target, "--source", str(ROOT / "main.py"),
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env={**process_env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    lines = output if output is not None else []
    reader = threading.Thread(target=lambda: lines.extend(line.decode(errors="replace").rstrip("\n")
                                                          for line in process.stdout), daemon=True)
    reader.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/healthz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    reader.join(timeout=10)
                    pytest.fail("functions-framework did not start: " + "\n".join(lines))
                time.sleep(0.1)
        yield base
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)
        reader.join(timeout=10)
