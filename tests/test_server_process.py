"""functions-framework as a real process on a loopback port, driven with `requests`."""

from __future__ import annotations

import json
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


def _uninstall_and_read_log(env: dict[str, str]) -> list[str]:
    """Start functions-framework with `env`, uninstall the test shop by webhook, stop it; its output lines."""
    output: list[str] = []
    with running_function({**os.environ, **env}, output=output) as base:
        body = as_body({"id": 1, "domain": SHOP, "myshopify_domain": SHOP})
        response = requests.post(f"{base}/webhooks", data=body, headers=signed_headers(body, "app/uninstalled"),
                                 timeout=10)
        assert response.status_code == 200, response.text
    return output


UNINSTALLED = f"app/uninstalled: {SHOP} is no longer served"


def test_info_lines_reach_the_log_as_json_by_default(env):
    # functions-framework gives the root logger no handler: without ours, INFO lines (this audit line among
    # them) were dropped.
    lines = _uninstall_and_read_log({**env, "LOG_LEVEL": ""})
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert {"severity": "INFO", "message": UNINSTALLED, "logger": "webhooks.compliance"}.items() \
        <= next(e for e in entries if e.get("message") == UNINSTALLED).items()
    assert all(e["time"].endswith("Z") and e["severity"] in ("DEBUG", "INFO", "WARNING", "ERROR") for e in entries)


@pytest.mark.parametrize("level, info_logged, warned", [("warning", False, False), ("LOUD", True, True)])
def test_log_level_filters_and_an_unknown_level_is_named(env, level, info_logged, warned):
    lines = _uninstall_and_read_log({**env, "LOG_LEVEL": level})
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert any(e["message"] == UNINSTALLED for e in entries) is info_logged
    named = [e for e in entries if e["severity"] == "WARNING" and "LOG_LEVEL='LOUD'" in e["message"]]
    assert len(named) == int(warned)


def test_with_log_execution_id_our_lines_go_through_functions_frameworks_handler_once(env):
    lines = _uninstall_and_read_log({**env, "LOG_EXECUTION_ID": "true"})
    ours = [json.loads(line) for line in lines if UNINSTALLED in line]
    assert len(ours) == 1 and ours[0]["message"] == UNINSTALLED and "execution_id" in ours[0][
        "logging.googleapis.com/labels"]


def test_the_report_is_served_over_http_behind_its_token(env):
    """`/report` as an app's admin calls it: a shop installed by its first order, nothing yet shown or clicked."""
    with running_function({**os.environ, **env, "REPORT_TOKEN": "admin-token"}) as base:
        body = as_body(planted_orders()[0])
        assert requests.post(f"{base}/webhooks", data=body, headers=signed_headers(body, "orders/create"),
                             timeout=10).status_code == 200
        refused = requests.get(f"{base}/report", params={"shop": SHOP}, timeout=10)
        served = requests.get(f"{base}/report", params={"shop": SHOP, "days": "7"},
                              headers={"Authorization": "Bearer admin-token"}, timeout=10)

    assert refused.status_code == 401
    assert served.status_code == 200, served.text
    assert (served.json()["shop"], served.json()["days"], served.json()["total"]["answers_viewed"]) == (SHOP, 7.0, 0)
    assert served.json()["by_arm"]["lift"] == {"click_through_rate": None, "purchases_per_thousand_shown": None}
