"""App proxy signatures: Shopify's documented vectors, freshness, and the privacy rule at /recommend."""

from __future__ import annotations

import time
from urllib.parse import urlencode

import pytest

from tests.conftest import SHOP, TEST_SECRET, planted_orders, post_webhook
from webhooks.app_proxy import app_proxy_signature, verify_app_proxy_request

# Shopify's documented example (secret "hush").
DOC_PAIRS = [("extra", "1"), ("extra", "2"), ("logged_in_customer_id", "1"),
             ("path_prefix", "/apps/awesome_reviews"), ("shop", "shop-name.myshopify.com"), ("timestamp", "1317327555")]


def test_shopifys_documented_signature():
    assert app_proxy_signature(DOC_PAIRS, "hush") == "4c68c8624d737112c91818c11017d24d334b524cb5c2b8ba08daa056f7395ddb"


def test_shopifys_documented_signature_for_a_shopper_not_logged_in():
    pairs = [(k, "" if k == "logged_in_customer_id" else v) for k, v in DOC_PAIRS]
    assert app_proxy_signature(pairs, "hush") == "e072b6d7e6622d85912a5214b860d3100dc1e73d9bc29f43796ac8c9ff8093cb"


def test_verification_accepts_the_documented_request_at_its_own_time():
    pairs = DOC_PAIRS + [("signature", "4c68c8624d737112c91818c11017d24d334b524cb5c2b8ba08daa056f7395ddb")]

    result = verify_app_proxy_request(pairs, "hush", now=1317327555 + 89)

    assert result.valid and result.shop == "shop-name.myshopify.com" and result.logged_in_customer_id == "1"


@pytest.mark.parametrize("now, reason", [(1317327555 + 91, "stale_timestamp"), (1317327555 - 91, "stale_timestamp")])
def test_a_stale_request_is_refused(now, reason):
    pairs = DOC_PAIRS + [("signature", "4c68c8624d737112c91818c11017d24d334b524cb5c2b8ba08daa056f7395ddb")]
    assert verify_app_proxy_request(pairs, "hush", now=now).reason == reason


def test_a_changed_parameter_breaks_the_signature():
    pairs = [(k, "2" if k == "logged_in_customer_id" else v) for k, v in DOC_PAIRS]
    pairs.append(("signature", "4c68c8624d737112c91818c11017d24d334b524cb5c2b8ba08daa056f7395ddb"))
    assert verify_app_proxy_request(pairs, "hush", now=1317327555).reason == "invalid_signature"


# --- the privacy rule at /recommend -------------------------------------------------------------


def proxied(params: dict | list[tuple[str, str]], secret: str = TEST_SECRET, timestamp: int | None = None) -> str:
    """A query string as Shopify's app proxy forwards it, signed (a list of pairs may repeat a parameter)."""
    pairs = [*(params.items() if isinstance(params, dict) else params), ("shop", SHOP), ("path_prefix", "/apps/recs"),
             ("timestamp", str(timestamp or int(time.time())))]
    return urlencode(pairs + [("signature", app_proxy_signature(pairs, secret))])


@pytest.fixture
def strict_shop(app_client, monkeypatch):
    monkeypatch.setenv("TRUST_CUSTOMER_ID_PARAM", "false")
    monkeypatch.setenv("CORS_ALLOWED_ORIGINS", "https://www.example-store.com")
    monkeypatch.setenv("ALS_FACTORS", "2")
    for order in planted_orders():
        post_webhook(app_client, "orders/create", order)
    assert app_client.post("/train", headers={"Authorization": "Bearer test-train-token"}).status_code == 200
    return app_client


def test_a_verified_proxy_request_is_personalized_for_the_logged_in_customer(strict_shop):
    response = strict_shop.get("/recommend?" + proxied({"logged_in_customer_id": "1000", "n": "3"}))

    assert response.status_code == 200, response.json
    assert response.json["strategy"] == "personalized"
    assert response.headers["Cache-Control"] == "private, no-store"


def test_a_direct_call_cannot_ask_for_a_customer(strict_shop):
    response = strict_shop.get(f"/recommend?shop={SHOP}&customer_id=1000")

    assert response.status_code == 403
    assert response.json["error"] == "forbidden"
    assert "app proxy" in response.json["message"]


def test_a_proxy_request_cannot_ask_for_another_customer(strict_shop):
    response = strict_shop.get("/recommend?" + proxied({"logged_in_customer_id": "1000", "customer_id": "1002"}))
    assert response.status_code == 403


def test_a_badly_signed_or_stale_proxy_request_is_401(strict_shop):
    bad = strict_shop.get("/recommend?" + proxied({"logged_in_customer_id": "1000"}, secret="wrong"))
    stale = strict_shop.get("/recommend?" + proxied({"logged_in_customer_id": "1000"},
                                                    timestamp=int(time.time()) - 600))
    assert (bad.status_code, bad.json["error"]) == (401, "invalid_signature")
    assert (stale.status_code, stale.json["error"]) == (401, "stale_timestamp")


def test_direct_calls_still_get_anonymous_product_and_cart_results(strict_shop):
    related = strict_shop.get(f"/recommend?shop={SHOP}&intent=related&product_id=101")
    guest = strict_shop.get(f"/recommend?shop={SHOP}&product_ids=101,102")
    assert related.status_code == 200 and guest.status_code == 200
    assert guest.json["strategy"] == "personalized"


def test_cors_allows_only_the_shops_storefront_origins(strict_shop):
    own = strict_shop.get(f"/recommend?shop={SHOP}&intent=trending", headers={"Origin": f"https://{SHOP}"})
    custom = strict_shop.get(f"/recommend?shop={SHOP}&intent=trending",
                             headers={"Origin": "https://www.example-store.com"})
    other = strict_shop.get(f"/recommend?shop={SHOP}&intent=trending", headers={"Origin": "https://evil.example"})
    preflight = strict_shop.options(f"/recommend?shop={SHOP}", headers={"Origin": f"https://{SHOP}",
                                                                          "Access-Control-Request-Method": "GET"})

    assert own.headers["Access-Control-Allow-Origin"] == f"https://{SHOP}"
    assert custom.headers["Access-Control-Allow-Origin"] == "https://www.example-store.com"
    assert "Access-Control-Allow-Origin" not in other.headers
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Methods"] == "GET, OPTIONS"


def test_errors_carry_the_cors_headers_an_answer_would(strict_shop):
    # Regression: errors from /recommend had no Access-Control-Allow-Origin, so a storefront's script could not read
    # why it was refused.
    own, custom = {"Origin": f"https://{SHOP}"}, {"Origin": "https://www.example-store.com"}

    bad = strict_shop.get(f"/recommend?shop={SHOP}&intent=trending&n=100", headers=own)
    forbidden = strict_shop.get(f"/recommend?shop={SHOP}&customer_id=1000", headers=own)
    not_installed = strict_shop.get("/recommend?shop=other-shop.myshopify.com&intent=trending",
                                    headers={"Origin": "https://other-shop.myshopify.com"})
    bad_custom = strict_shop.get(f"/recommend?shop={SHOP}&intent=similar", headers=custom)
    stranger = strict_shop.get(f"/recommend?shop={SHOP}&intent=trending&n=100",
                               headers={"Origin": "https://evil.example"})

    assert [r.status_code for r in (bad, forbidden, not_installed, bad_custom, stranger)] == [400, 403, 404, 400, 400]
    assert bad.headers["Access-Control-Allow-Origin"] == f"https://{SHOP}"
    assert forbidden.headers["Access-Control-Allow-Origin"] == f"https://{SHOP}"
    assert not_installed.headers["Access-Control-Allow-Origin"] == "https://other-shop.myshopify.com"
    assert bad_custom.headers["Access-Control-Allow-Origin"] == "https://www.example-store.com"
    assert "Access-Control-Allow-Origin" not in stranger.headers
    assert all(r.headers.get("Vary") == "Origin" for r in (bad, forbidden, not_installed, bad_custom, stranger))


def test_every_answer_varies_by_origin_whether_or_not_the_origin_is_allowed(strict_shop):
    # Regression: an answer to a request with no Origin, or one not allowed, had no `Vary: Origin`, so a shared cache
    # could give that copy (public, max-age=60, no Access-Control-Allow-Origin) to the storefront's own script.
    url = f"/recommend?shop={SHOP}&intent=related&product_id=101&n=3"

    answers = [strict_shop.get(url, headers=headers)
               for headers in ({}, {"Origin": "https://evil.example"}, {"Origin": f"https://{SHOP}"})]
    preflight = strict_shop.options(f"/recommend?shop={SHOP}", headers={"Origin": "https://evil.example",
                                                                          "Access-Control-Request-Method": "GET"})

    assert [a.headers["Cache-Control"] for a in answers] == ["public, max-age=60"] * 3
    assert [a.headers.get("Vary") for a in answers] == ["Origin"] * 3
    assert preflight.headers.get("Vary") == "Origin"


# --- parameters given more than once ------------------------------------------------------------


def test_repeated_product_ids_and_exclude_are_read_joined_as_the_signature_joins_them(strict_shop):
    # Regression: only the last of repeated values was kept, so product_ids=201&product_ids=202 was a guest who had
    # seen 202 alone, and exclude=102&exclude=103 let 102 through; the app proxy signed "201,202" all the same.
    guest = strict_shop.get(f"/recommend?shop={SHOP}&product_ids=201&product_ids=202&n=4")
    through_proxy = strict_shop.get("/recommend?" + proxied([("product_ids", "201"), ("product_ids", "202"),
                                                             ("logged_in_customer_id", ""), ("n", "4")]))
    related = strict_shop.get(f"/recommend?shop={SHOP}&intent=related&product_id=101&exclude=102&exclude=103&n=12")

    for answer in (guest, through_proxy):
        assert answer.status_code == 200, answer.json
        assert (answer.json["strategy"], answer.json["fallback_reason"]) == ("personalized", None)
        assert not {"201", "202"} & {item["product_id"] for item in answer.json["recommendations"]}
    assert related.status_code == 200
    assert not {"102", "103"} & {item["product_id"] for item in related.json["recommendations"]}


def test_a_single_valued_parameter_given_twice_with_different_values_is_a_400_naming_it(strict_shop):
    twice = strict_shop.get(f"/recommend?shop={SHOP}&intent=trending&n=3&n=5")
    same = strict_shop.get(f"/recommend?shop={SHOP}&intent=trending&n=3&n=3")
    shops = strict_shop.get(f"/recommend?shop={SHOP}&shop=other-shop.myshopify.com&intent=trending")
    customers = strict_shop.get("/recommend?" + proxied([("logged_in_customer_id", "1000"), ("customer_id", "1002"),
                                                         ("customer_id", "1000")]))

    assert (twice.status_code, twice.json["parameter"]) == (400, "n")
    assert same.status_code == 200 and len(same.json["recommendations"]) == 3
    assert (shops.status_code, shops.json["parameter"]) == (400, "shop")
    assert (customers.status_code, customers.json["parameter"]) == (400, "customer_id")


def test_a_signed_query_regrouped_to_name_a_customer_is_refused(strict_shop):
    """The signature covers its `key=value` pieces with nothing between them: a logged-out shopper's signed
    `m=x,1000`, regrouped as `logged_in_customer_id=m=x&logged_in_customer_id=1000`, verified with the same signature,
    and the last of Shopify's parameters was taken as the customer: customer 1000's purchases went to whoever held the
    URL (a log, a proxy on the way)."""
    timestamp = str(int(time.time()))
    signed = [("intent", "buy_it_again"), ("logged_in_customer_id", ""), ("m", "x,1000"), ("n", "5"),
              ("path_prefix", "/apps/recs"), ("shop", SHOP), ("timestamp", timestamp)]
    signature = app_proxy_signature(signed, TEST_SECRET)
    regrouped = [("intent", "buy_it_again"), ("logged_in_customer_id", "m=x"), ("logged_in_customer_id", "1000"),
                 ("n", "5"), ("path_prefix", "/apps/recs"), ("shop", SHOP), ("timestamp", timestamp)]
    assert app_proxy_signature(regrouped, TEST_SECRET) == signature  # the scheme's own ambiguity

    genuine = strict_shop.get("/recommend?" + urlencode(signed + [("signature", signature)]))
    replayed = strict_shop.get("/recommend?" + urlencode(regrouped + [("signature", signature)]))
    typed = strict_shop.get("/recommend?" + proxied([("intent", "buy_it_again"), ("logged_in_customer_id", "1000"),
                                                     ("logged_in_customer_id", "")]))

    assert genuine.status_code == 200 and genuine.json["strategy"] != "buy_it_again"  # nobody's purchases
    assert (replayed.status_code, replayed.json["error"]) == (400, "invalid_parameter")
    assert "may not hold '='" in replayed.json["message"]
    assert (typed.status_code, typed.json["parameter"]) == (400, "logged_in_customer_id")


def test_a_signed_request_without_a_shop_or_with_two_signatures_is_refused():
    # Arrange: Shopify's documented request, its shop left out and signed again; and the documented one signed twice
    no_shop = [(k, v) for k, v in DOC_PAIRS if k != "shop"]
    no_shop.append(("signature", app_proxy_signature(no_shop, "hush")))
    signature = "4c68c8624d737112c91818c11017d24d334b524cb5c2b8ba08daa056f7395ddb"
    twice = DOC_PAIRS + [("signature", signature), ("signature", signature)]

    # Act / Assert
    assert verify_app_proxy_request(no_shop, "hush", now=1317327555).reason == "missing_shop"
    assert verify_app_proxy_request(twice, "hush", now=1317327555).reason == "missing_signature"


def test_a_proxy_request_with_no_secret_configured_is_a_500_naming_the_variable(app_client, monkeypatch):
    # Arrange: a new instance without SHOPIFY_API_SECRET
    from functions_framework import create_app

    from tests.conftest import ROOT

    monkeypatch.delenv("SHOPIFY_API_SECRET")
    client = create_app(target="app", source=str(ROOT / "main.py")).test_client()

    # Act
    response = client.get("/recommend?" + proxied({"logged_in_customer_id": "1000"}))

    # Assert
    assert (response.status_code, response.json["error"]) == (500, "misconfigured")
    assert "SHOPIFY_API_SECRET" in response.json["message"]


def test_a_signed_query_regrouped_without_an_equals_sign_cannot_name_a_customer(strict_shop):
    """Regression: the pieces can also be regrouped with no `=` inside a key or a value and no parameter twice. A
    logged-out shopper's signed `l=l&mlogged_in_customer_id=1000` reads, regrouped, as `l=&llogged_in_customer_id=m&
    logged_in_customer_id=1000`: Shopify's blank `logged_in_customer_id=` became the key `llogged_in_customer_id`, and
    the shopper's own parameter became the customer, so customer 1000's purchases went to whoever held the URL."""
    timestamp = str(int(time.time()))
    signed = [("intent", "buy_it_again"), ("l", "l"), ("logged_in_customer_id", ""),
              ("mlogged_in_customer_id", "1000"), ("path_prefix", "/apps/recs"), ("shop", SHOP),
              ("timestamp", timestamp)]
    signature = app_proxy_signature(signed, TEST_SECRET)
    regrouped = [("intent", "buy_it_again"), ("l", ""), ("llogged_in_customer_id", "m"),
                 ("logged_in_customer_id", "1000"), ("path_prefix", "/apps/recs"), ("shop", SHOP),
                 ("timestamp", timestamp)]
    assert app_proxy_signature(regrouped, TEST_SECRET) == signature  # the scheme's own ambiguity

    genuine = strict_shop.get("/recommend?" + urlencode(signed + [("signature", signature)]))
    replayed = strict_shop.get("/recommend?" + urlencode(regrouped + [("signature", signature)]))

    # the message signed holds `logged_in_customer_id=` twice, however it is grouped: both are refused
    for response in (genuine, replayed):
        assert (response.status_code, response.json.get("error")) == (400, "invalid_parameter"), response.json
        assert response.json["parameter"] == "logged_in_customer_id"
