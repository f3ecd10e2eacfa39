"""The example app configuration subscribes every topic the backend handles, and nothing it ignores."""

from __future__ import annotations

import tomllib

from tests.conftest import ROOT
from webhooks.compliance import COMPLIANCE_TOPICS
from webhooks.topics import TRANSLATORS


def test_the_example_app_config_matches_the_handled_topics():
    config = tomllib.loads((ROOT / "shopify.app.toml.example").read_text())
    subscriptions = config["webhooks"]["subscriptions"]
    topics = {t for s in subscriptions for t in s.get("topics", [])}
    compliance = {t for s in subscriptions for t in s.get("compliance_topics", [])}

    assert topics == set(TRANSLATORS) | {"app/uninstalled"}
    assert compliance == set(COMPLIANCE_TOPICS) - {"app/uninstalled"}
    assert config["app_proxy"]["url"].endswith("/recommend")


def test_the_example_app_config_asks_for_the_scope_its_app_proxy_needs():
    # Regression: the [app_proxy] section was configured without write_app_proxy, the access scope Shopify requires
    # for an app proxy, so the storefront's /apps/recs (the only way a customer's own recommendations are served)
    # was not set up.
    config = tomllib.loads((ROOT / "shopify.app.toml.example").read_text())
    scopes = {scope.strip() for scope in config["access_scopes"]["scopes"].split(",")}

    assert "app_proxy" in config
    assert "write_app_proxy" in scopes
