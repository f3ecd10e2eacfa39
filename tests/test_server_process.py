"""functions-framework as a real process on a loopback port, driven with `requests`."""

from __future__ import annotations

import os

import pytest
import requests

from tests.conftest import CATEGORY_A, SHOP, as_body, planted_orders, running_function, signed_headers


@pytest.fixture
def server(env):
    with running_function({**os.environ, **env, "ALS_FACTORS": "2"}) as base:
        yield base


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
