"""The functions through functions-framework's own app: webhooks in, train, /recommend out."""

from __future__ import annotations

import os
import sqlite3

import pytest
from functions_framework import create_app

from tests.conftest import (
    AUTH, CATEGORY_A, CATEGORY_B, ROOT, SHOP, as_body, order_payload, planted_orders, post_webhook, signed_headers,
)



@pytest.fixture
def trained_client(app_client, monkeypatch):
    monkeypatch.setenv("ALS_FACTORS", "2")  # two planted tastes: see tests/test_training.py
    for order in planted_orders():
        assert post_webhook(app_client, "orders/create", order).status_code == 200
    response = app_client.post("/train", headers=AUTH)
    assert response.status_code == 200, response.json
    return app_client


def recommend(client, **params):
    query = "&".join(f"{k}={v}" for k, v in {"shop": SHOP, **params}.items())
    return client.get(f"/recommend?{query}")


def test_train_reports_what_it_published(app_client):
    for order in planted_orders():
        post_webhook(app_client, "orders/create", order)

    response = app_client.post("/train", headers=AUTH)

    assert response.status_code == 200
    [report] = response.json["trained"]
    assert (report["shop"], report["users"], report["items"], report["events"]) == (SHOP, 40, 20, 240)
    assert response.json["skipped"] == []


def test_known_customer_gets_personalized_items_from_their_category(trained_client):
    response = recommend(trained_client, customer_id=1000, n=4)

    assert response.status_code == 200
    body = response.json
    assert body["strategy"] == "personalized"
    assert body["model_version"]
    assert len(body["recommendations"]) == 4
    assert all(int(r["product_id"]) in CATEGORY_A for r in body["recommendations"])
    assert response.headers["Cache-Control"] == "private, no-store"


def test_unknown_customer_gets_popular_items(trained_client):
    response = recommend(trained_client, customer_id=5, n=3)

    assert response.status_code == 200
    assert response.json["strategy"] == "popular"
    scores = [r["score"] for r in response.json["recommendations"]]
    assert scores == sorted(scores, reverse=True) and scores[0] == 1.0


def test_a_purchase_made_after_training_counts_at_once(trained_client):
    """No stored user factors: fold-in reads the latest events, so a new buyer is served immediately."""
    assert recommend(trained_client, customer_id=4242).json["strategy"] == "popular"
    post_webhook(trained_client, "orders/create", order_payload(77001, 4242, CATEGORY_B[:2]))

    body = recommend(trained_client, customer_id=4242, n=4).json

    assert body["strategy"] == "personalized"
    ids = [int(r["product_id"]) for r in body["recommendations"]]
    assert all(pid in CATEGORY_B for pid in ids)
    assert not set(ids) & set(CATEGORY_B[:2]), "what the customer bought is not recommended back"


@pytest.mark.parametrize("query, parameter", [
    ("customer_id=1000&n=0", "n"),
    ("customer_id=1000&n=51", "n"),
    ("customer_id=1000&n=ten", "n"),
    ("customer_id=abc", "customer_id"),
    ("", "shop"),
])
def test_bad_parameters_get_400_naming_the_parameter(trained_client, query, parameter):
    shop = "" if parameter == "shop" else f"shop={SHOP}&"
    response = trained_client.get(f"/recommend?{shop}{query}")

    assert response.status_code == 400
    assert response.json["error"] == "invalid_parameter"
    assert response.json["parameter"] == parameter


def test_no_model_yet_is_a_503_that_says_how_to_train(app_client):
    post_webhook(app_client, "orders/create", order_payload(1, 2, [3]))  # installed, but never trained

    response = recommend(app_client, customer_id=1)

    assert response.status_code == 503
    assert response.json["error"] == "model_not_ready"
    assert "python -m recommender train" in response.json["message"]


def test_train_requires_the_token(app_client):
    assert app_client.post("/train").status_code == 401
    assert app_client.post("/train", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_train_is_disabled_without_a_token_configured(env, monkeypatch):
    env.pop("TRAIN_TOKEN")
    os.environ.update(env)
    os.environ.pop("TRAIN_TOKEN", None)
    client = create_app(target="app", source=str(ROOT / "main.py")).test_client()

    response = client.post("/train")

    assert response.status_code == 403
    assert "TRAIN_TOKEN" in response.json["message"]


def test_webhook_without_a_configured_secret_is_a_5xx_so_shopify_retries(env):
    env.pop("SHOPIFY_API_SECRET")
    os.environ.update(env)
    os.environ.pop("SHOPIFY_API_SECRET", None)
    client = create_app(target="app", source=str(ROOT / "main.py")).test_client()
    body = as_body(order_payload(1, 2, [3]))

    response = client.post("/webhooks", data=body, headers=signed_headers(body, "orders/create"))

    assert response.status_code == 500
    assert response.json["error"] == "misconfigured"
    assert "SHOPIFY_API_SECRET" in response.json["message"]


def test_router_answers_unknown_paths_and_wrong_methods_with_json(app_client):
    assert app_client.get("/nope").status_code == 404
    assert app_client.get("/nope").json["error"] == "not_found"
    assert app_client.get("/webhooks").status_code == 405
    assert app_client.post("/recommend").status_code == 405
    assert app_client.get("/healthz").json == {"status": "ok"}


def test_each_entry_point_deploys_on_its_own(env, trained_client):
    """`recommend` and `webhook` as their own functions answer on any path, as Cloud Functions route them."""
    os.environ.update(env)
    recommend_only = create_app(target="recommend", source=str(ROOT / "main.py")).test_client()
    webhook_only = create_app(target="webhook", source=str(ROOT / "main.py")).test_client()

    assert recommend_only.get(f"/?shop={SHOP}&customer_id=1000").json["strategy"] == "personalized"
    body = as_body(order_payload(88001, 1002, [CATEGORY_A[0]]))
    assert webhook_only.post("/", data=body, headers=signed_headers(body, "orders/create")).json["status"] == "stored"


def test_invalid_signature_is_401_and_stores_nothing(app_client):
    body = as_body(order_payload(1, 2, [3]))
    headers = signed_headers(body, "orders/create", secret="not-the-secret")

    response = app_client.post("/webhooks", data=body, headers=headers)

    assert response.status_code == 401
    assert response.json == {"error": "invalid_hmac"}
    assert app_client.post("/train", headers=AUTH).json["trained"] == []


def test_a_shop_that_never_installed_the_app_is_a_404(app_client):
    response = recommend(app_client, customer_id=1)

    assert (response.status_code, response.json["error"]) == (404, "shop_not_installed")


def test_a_shop_that_fails_to_train_does_not_stop_the_others_and_the_run_answers_500(app_client, tmp_path):
    """Three shops; the middle one's model folder cannot be made (a file is in its place), so its publish fails.
    The shops before and after it are trained, and the run says which failed."""
    shops = ["a-shop.myshopify.com", "b-shop.myshopify.com", "c-shop.myshopify.com"]
    for shop in shops:
        for order in planted_orders():
            assert post_webhook(app_client, "orders/create", order, shop=shop).status_code == 200
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / shops[1]).write_text("not a folder")

    response = app_client.post("/train", headers=AUTH)

    assert response.status_code == 500
    assert [report["shop"] for report in response.json["trained"]] == [shops[0], shops[2]]
    [failed] = response.json["failed"]
    assert failed["shop"] == shops[1] and "FileExistsError" in failed["error"]
    for served in (shops[0], shops[2]):
        answer = recommend(app_client, shop=served, customer_id="1")
        assert answer.status_code == 200 and answer.json["model_version"]


def test_a_run_out_of_time_answers_200_naming_the_shops_left_for_the_next_run(app_client, monkeypatch):
    """TRAIN_BUDGET_SECONDS spent after the first shop: the others are deferred, not failed, and the next run starts
    with them."""
    monkeypatch.setenv("TRAIN_BUDGET_SECONDS", "0.000001")  # read when the instance starts: before any request
    shops = ["a-shop.myshopify.com", "b-shop.myshopify.com", "c-shop.myshopify.com"]
    for shop in shops:
        for order in planted_orders():
            assert post_webhook(app_client, "orders/create", order, shop=shop).status_code == 200

    first = app_client.post("/train", headers=AUTH)
    second = app_client.post("/train", headers=AUTH)

    assert first.status_code == 200 and first.json["failed"] == []
    assert [report["shop"] for report in first.json["trained"]] == [shops[0]]
    assert first.json["deferred"] == [{"shop": shops[1], "expected_seconds": None},
                                      {"shop": shops[2], "expected_seconds": None}]
    assert [report["shop"] for report in second.json["trained"]] == [shops[1]]
    assert [deferred["shop"] for deferred in second.json["deferred"]] == [shops[2], shops[0]]
    assert recommend(app_client, shop=shops[2], customer_id="1").json["error"] == "model_not_ready"


def test_train_refuses_a_bad_shop_name_before_training_anything(app_client):
    response = app_client.post("/train?shop=not%20a%20shop", headers=AUTH)

    assert response.status_code == 400
    assert response.json["error"] != "internal_error"


def test_three_shops_failing_in_a_row_stop_the_run_instead_of_trying_every_shop(app_client, tmp_path):
    """Failures one after another say a store is out of reach: the run stops at the third and answers 500, and the
    shop after them is left for the next run."""
    shops = [f"{name}-shop.myshopify.com" for name in "abcde"]
    for shop in shops:
        for order in planted_orders():
            assert post_webhook(app_client, "orders/create", order, shop=shop).status_code == 200
    (tmp_path / "models").mkdir(exist_ok=True)
    for blocked in shops[1:4]:
        (tmp_path / "models" / blocked).write_text("not a folder")

    response = app_client.post("/train", headers=AUTH)

    assert response.status_code == 500 and response.json["error"] == "internal_error"
    assert recommend(app_client, shop=shops[0], customer_id="1").status_code == 200
    not_tried = recommend(app_client, shop=shops[4], customer_id="1")
    assert not_tried.status_code == 503 and not_tried.json["error"] == "model_not_ready"
    conn = sqlite3.connect(tmp_path / "events.sqlite3")
    try:  # the run's row went with it: the shops it started are nobody's, and the next run is not held back
        assert conn.execute("SELECT count(*) FROM training_runs").fetchone() == (0,)
    finally:
        conn.close()
