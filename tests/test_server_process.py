"""functions-framework as a real process on a loopback port, driven with `requests`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import requests

from tests.conftest import CATEGORY_A, ROOT, SHOP, as_body, planted_orders, signed_headers


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server(env):
    port = free_port()
    process_env = {**os.environ, **env, "ALS_FACTORS": "2", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "functions_framework", "--target", "app", "--source", str(ROOT / "main.py"),
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=process_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{base}/healthz", timeout=1).ok:
                break
        except requests.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read().decode() if process.stdout else ""
                pytest.fail(f"functions-framework did not start: {output}")
            time.sleep(0.2)
    yield base
    process.terminate()
    process.wait(timeout=10)


def test_webhooks_train_and_recommend_over_http(server):
    session = requests.Session()
    for order in planted_orders():
        body = as_body(order)
        response = session.post(f"{server}/webhooks", data=body, headers=signed_headers(body, "orders/create"),
                                timeout=10)
        assert response.status_code == 200, response.text

    trained = session.post(f"{server}/train", headers={"Authorization": "Bearer test-train-token"}, timeout=120)
    assert trained.status_code == 200, trained.text
    assert trained.json()["trained"][0]["events"] == 240

    personal = session.get(f"{server}/recommend", params={"shop": SHOP, "customer_id": 1000, "n": 4}, timeout=10)
    unknown = session.get(f"{server}/recommend", params={"shop": SHOP, "customer_id": 1, "n": 4}, timeout=10)

    assert personal.status_code == 200 and personal.json()["strategy"] == "personalized"
    assert all(int(r["product_id"]) in CATEGORY_A for r in personal.json()["recommendations"])
    assert unknown.json()["strategy"] == "popular"
    assert len(unknown.json()["recommendations"]) == 4


def test_bad_json_over_http_is_a_400_naming_the_problem(server):
    body = b'{"id": 1, "line_items": ['
    response = requests.post(f"{server}/webhooks", data=body, headers=signed_headers(body, "orders/create"),
                             timeout=10)
    assert response.status_code == 400
    assert response.json()["error"] == "malformed_json"
