"""`python -m recommender product`: why a product is or is not recommended, on a planted shop trained by `/train`, on
SQLite and PostgreSQL.

The shop: 501 is bought in ten orders of the last ten days (and one 40 days ago), each beside one of 502 (draft), 503
(tagged hide-from-recommendations), 504 (sold out), 506 (deleted after training) and 507, two orders each; 508 is bought
alone once. 505 is for sale and never had an event; 999 was never heard of. A purchase weighs 10, so the model ranks
501 first and 502-507, which tie at 20, by row (by id), then 508 at 10.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from recommender.__main__ import main as command_line
from recommender.events import PICKS_NAMESPACE
from recommender.model_store import open_model_store
from recommender.product_status import DELETED, GIFT_CARD_NOT_SYNCED, NO_MODEL, NOT_INSTALLED, SOLD_OUT, STALE_FLAG
from tests.conftest import AUTH, ROOT, SHOP, order_payload, post_webhook
from tests.postgres_schema import run

pytestmark = pytest.mark.usefixtures("runtime_stores_closed")

BOUGHT_BESIDE_501 = [502, 503, 504, 506, 507]
OTHER_SHOP = "other-shop.myshopify.com"


def ago(days: float) -> str:
    when = datetime.now(timezone.utc) - timedelta(days=days)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def product(pid: int, *, status: str = "active", published: bool = True, quantity: int = 5, tags: str = "") -> dict:
    """A products/create body in Shopify's shape: one tracked variant at 12.00 that does not sell past zero."""
    return {
        "id": pid, "title": f"Product {pid}", "handle": f"product-{pid}", "status": status, "tags": tags,
        "published_at": "2026-10-01T00:00:00Z" if published else None, "updated_at": "2026-10-01T00:00:00Z",
        "product_type": "Gear", "vendor": "Brew Lab",
        "variants": [{"id": pid * 10, "price": "12.00", "inventory_item_id": pid * 100, "inventory_quantity": quantity,
                      "inventory_management": "shopify", "inventory_policy": "deny"}],
    }


def viewed(event_id: str, pid: int, client: str) -> dict:
    """A product_viewed event as the Web Pixel posts it to /collect."""
    return {"id": event_id, "name": "product_viewed", "timestamp": ago(2), "clientId": client, "seq": 3,
            "type": "standard",
            "data": {"productVariant": {"id": f"{pid}0", "price": {"amount": 12.0, "currencyCode": "USD"},
                                        "product": {"id": str(pid), "title": "T", "vendor": "V", "type": "X",
                                                    "url": "/products/t"}}}}


def cart(token: str, pid: int) -> dict:
    """A carts/create body holding one unit of `pid`."""
    return {"id": token, "token": token, "updated_at": ago(2),
            "line_items": [{"product_id": pid, "variant_id": pid * 10, "quantity": 1, "price": "12.00"}]}


@pytest.fixture
def app(env, event_store_url, monkeypatch):
    """The app as deployed, on SQLite or PostgreSQL, with pixel rate limits of its own."""
    from functions_framework import create_app

    from webhooks import pixel

    monkeypatch.setattr(pixel, "PER_CLIENT", pixel.RateLimiter(rate=1.0, burst=60))
    monkeypatch.setattr(pixel, "PER_ADDRESS", pixel.RateLimiter(rate=5.0, burst=300))
    os.environ.update({**env, "EVENT_STORE_URL": event_store_url})
    return create_app(target="app", source=str(ROOT / "main.py")).test_client()


@pytest.fixture
def shop(app):
    """The planted shop of the module docstring, trained, then 506 deleted."""
    for pid in [501, 502, 503, 504, 505, 506, 507, 508]:
        payload = product(pid, status="draft" if pid == 502 else "active", quantity=0 if pid == 504 else 5,
                          tags="Clearance, hide-from-recommendations" if pid == 503 else "Clearance")
        assert post_webhook(app, "products/create", payload).status_code == 200
    for n in range(10):
        order = order_payload(9000 + n, 1 + n, [501, BOUGHT_BESIDE_501[n % 5]], created_at=ago(1 + n))
        assert post_webhook(app, "orders/create", order).status_code == 200
    assert post_webhook(app, "orders/create", order_payload(9100, 11, [508], created_at=ago(3))).status_code == 200
    assert post_webhook(app, "orders/create", order_payload(9101, 12, [501], created_at=ago(40))).status_code == 200
    for token in ("cart-1", "cart-2"):
        assert post_webhook(app, "carts/create", cart(token, 501)).status_code == 200
    for n in range(3):
        response = app.post(f"/collect?shop={SHOP}", data=json.dumps(viewed(f"sh-view-{n}", 501, "browser-1")),
                            headers={"Content-Type": "text/plain"})
        assert response.status_code == 200, response.json
    response = app.post("/train", headers=AUTH)
    assert response.status_code == 200, response.json
    assert post_webhook(app, "products/delete", {"id": 506}).status_code == 200
    return app


def product_command(capsys, product_id: str, shop: str = SHOP) -> dict:
    """`python -m recommender product PRODUCT_ID --shop SHOP` through its main function: its JSON."""
    assert command_line(["product", product_id, "--shop", shop]) == 0
    return json.loads(capsys.readouterr().out)


def published_version() -> str:
    return open_model_store(os.environ["MODEL_STORE_URL"]).latest(SHOP).version


def published_trained_at() -> str:
    models = open_model_store(os.environ["MODEL_STORE_URL"])
    return models.load(models.latest(SHOP)).metadata["trained_at"]


def catalog_row(pid: int, for_sale: bool, *, status: str = "active", hidden: str | None = None,
                available: int = 1, backordered: bool = False) -> dict:
    """A planted product's catalog fields, as `product` stored them."""
    return {"title": f"Product {pid}", "status": status, "published_at": "2026-10-01T00:00:00+00:00", "price": 12.0,
            "product_type": "Gear", "vendor": "Brew Lab", "hidden": hidden, "variants": 1,
            "variants_available": available, "for_sale": for_sale, "backordered": backordered, "picks": None}


def unknown_to(version: str) -> str:
    return (f"the model ({version}) does not know it: none of its events weighed anything when the model was trained,"
            " so no personalized, related, complementary or best-seller answer shows it until a training sees it"
            " viewed, carted or bought")


def sql(url: str, statement: str) -> None:
    """One statement on the event store at `url`, through a connection of its own."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            with conn:
                conn.execute(statement)
        finally:
            conn.close()
    else:
        run(url, statement)


def test_the_best_seller_is_shown_first_among_the_models_items(shop, capsys):
    # Act
    body = product_command(capsys, "501")

    # Assert: eleven customers' orders (ten in the window), two carts and three views of one browser: 14 shoppers
    assert body == {
        "shop": SHOP, "product_id": "501", "shown": True, "reasons": [], "installed": True,
        "catalog": catalog_row(501, True),
        "model": {"version": published_version(), "trained_at": published_trained_at(), "items": 7, "known": True,
                  "popularity_rank": 1, "shoppers": 14, "bought_with": 5},
        "events_last_30_days": {"view": 3.0, "add_to_cart": 2.0, "purchase": 10.0},
    }


@pytest.mark.parametrize("pid, reasons, catalog, rank", [
    (502, ["status is draft, not active"], catalog_row(502, False, status="draft"), 2),
    (503, ["tagged hide-from-recommendations: removing the tag shows it again"],
     catalog_row(503, False, hidden="tag"), 3),
    (504, [SOLD_OUT], catalog_row(504, False, available=0), 4),
], ids=["draft", "tagged", "sold-out"])
def test_a_product_not_for_sale_says_why_though_the_model_knows_it(shop, capsys, pid, reasons, catalog, rank):
    # Act
    body = product_command(capsys, str(pid))

    # Assert: bought twice, beside 501; 502-507 tie at 20 and rank by id after 501
    assert (body["shown"], body["reasons"]) == (False, reasons)
    assert body["catalog"] == catalog
    assert {key: body["model"][key] for key in ("known", "popularity_rank", "shoppers", "bought_with")} == {
        "known": True, "popularity_rank": rank, "shoppers": 2, "bought_with": 1}
    assert body["events_last_30_days"] == {"view": 0.0, "add_to_cart": 0.0, "purchase": 2.0}


def test_a_product_sold_past_zero_with_nothing_on_hand_is_shown_and_says_it_is_backordered(shop, capsys):
    # Arrange: 507 at 0 units, selling past zero
    backordered = product(507, quantity=0)
    backordered["variants"][0]["inventory_policy"] = "continue"
    backordered["updated_at"] = "2026-10-02T00:00:00Z"
    assert post_webhook(shop, "products/update", backordered).status_code == 200

    # Act
    body = product_command(capsys, "507")

    # Assert: for sale (complementary answers alone leave it out)
    assert (body["shown"], body["reasons"]) == (True, [])
    assert body["catalog"] == catalog_row(507, True, backordered=True)


def test_a_products_picks_are_reported_as_the_merchant_ordered_them(shop, capsys):
    # Arrange: 505's page picks 507 then 501 as complementary (Search & Discovery's metafield)
    picked = product(505)
    picked["updated_at"] = "2026-10-02T00:00:00Z"
    picked["metafields"] = [{"namespace": PICKS_NAMESPACE, "key": "complementary_products",
                             "value": '["gid://shopify/Product/507", "gid://shopify/Product/501"]'}]
    assert post_webhook(shop, "products/update", picked).status_code == 200

    # Act
    body = product_command(capsys, "505")

    # Assert
    assert body["catalog"]["picks"] == {"related": [], "complementary": ["507", "501"]}


def test_a_product_for_sale_with_no_events_is_unknown_to_the_model(shop, capsys):
    body = product_command(capsys, "505")

    assert (body["shown"], body["reasons"]) == (False, [unknown_to(published_version())])
    assert body["catalog"] == catalog_row(505, True)
    assert body["model"] == {"version": published_version(), "trained_at": published_trained_at(), "items": 7,
                             "known": False, "popularity_rank": None, "shoppers": None, "bought_with": None}
    assert body["events_last_30_days"] == {"view": 0.0, "add_to_cart": 0.0, "purchase": 0.0}


def test_a_gift_card_an_order_sold_before_the_catalog_synced_it_says_so(shop, capsys):
    # Arrange: an order sells 601, unknown to the catalog, as a gift card
    gift = order_payload(70001, 1234, [601], created_at=ago(1))
    gift["line_items"][0]["gift_card"] = True
    assert post_webhook(shop, "orders/create", gift).status_code == 200

    # Act
    body = product_command(capsys, "601")

    # Assert: the order's reason alone (its row has no publication or status of the catalog's to judge)
    assert (body["shown"], body["reasons"]) == (False, [GIFT_CARD_NOT_SYNCED, unknown_to(published_version())])
    assert body["catalog"] == {"synced": False, "hidden": "gift_card", "for_sale": False}


def test_a_product_never_heard_of_has_no_catalog_row_and_only_the_models_reason(shop, capsys):
    body = product_command(capsys, "999")

    assert (body["shown"], body["reasons"], body["catalog"]) == (False, [unknown_to(published_version())], None)
    assert body["model"]["known"] is False


def test_a_deleted_product_is_left_out_though_the_model_knows_it(shop, capsys):
    body = product_command(capsys, "506")

    assert (body["shown"], body["reasons"], body["catalog"]) == (False, [DELETED], {"deleted": True})
    assert (body["model"]["known"], body["model"]["popularity_rank"]) == (True, 5)


def test_a_stale_flag_is_reported_as_the_stores_reading_when_the_row_shows_no_reason(shop, capsys, event_store_url):
    """The store's flag, which answers read, governs: a product whose row looks for sale but whose flag does not (a
    flag older than its row) is not shown, and the reason says so rather than nothing."""
    # Arrange: 507, for sale and known, its flag set as a stock reading left it
    assert product_command(capsys, "507")["shown"] is True
    sql(event_store_url, f"UPDATE products SET sellable = {'false' if 'postgres' in event_store_url else 0}"
                         " WHERE product_id = '507'")

    # Act
    body = product_command(capsys, "507")

    # Assert
    assert (body["shown"], body["reasons"]) == (False, [STALE_FLAG])
    assert body["catalog"] == catalog_row(507, False)


def test_a_shop_with_no_model_yet_says_so(app, capsys):
    # Arrange: a shop whose only delivery is a product
    assert post_webhook(app, "products/create", product(601), shop=OTHER_SHOP).status_code == 200

    # Act
    body = product_command(capsys, "601", shop=OTHER_SHOP)

    # Assert
    assert (body["shown"], body["reasons"], body["installed"], body["model"]) == (False, [NO_MODEL], True, None)
    assert body["catalog"] == catalog_row(601, True)


def test_a_shop_that_never_installed_the_app_is_answered_nothing(app, capsys):
    body = product_command(capsys, "501", shop="never-installed.myshopify.com")

    assert (body["shown"], body["reasons"]) == (False, [NOT_INSTALLED, NO_MODEL])
    assert (body["installed"], body["catalog"], body["model"]) == (False, None, None)


def test_the_command_runs_as_a_process(shop, capsys):
    # Arrange
    in_process = product_command(capsys, "501")

    # Act
    result = subprocess.run([sys.executable, "-m", "recommender", "product", "501", "--shop", SHOP], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)

    # Assert
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == in_process
    assert in_process["model"]["popularity_rank"] == 1
    assert result.stdout.startswith('{\n  "shop": ')  # indented by 2


@pytest.mark.parametrize("args, message", [
    (["product", "abc", "--shop", SHOP], "error: product_id must be a Shopify product id (digits), got 'abc'\n"),
    (["product", "gid://shopify/Product/1", "--shop", SHOP],
     "error: product_id must be a Shopify product id (digits), got 'gid://shopify/Product/1'\n"),
    (["product", "501", "--shop", "Bad Shop"],
     "error: shop must be a shop domain such as 'example.myshopify.com', got 'Bad Shop'\n"),
], ids=["letters", "gid", "shop"])
def test_bad_input_exits_2_saying_what_is_wrong(env, capsys, args, message):
    os.environ.update(env)

    code = command_line(args)

    captured = capsys.readouterr()
    assert (code, captured.err, captured.out) == (2, message, "")
