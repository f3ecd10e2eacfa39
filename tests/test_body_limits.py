"""Request bodies past what an endpoint reads: a 413 that names the limit, the rest never read, nothing stored."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3

import pytest
import requests

from recommender.errors import ConfigError
from recommender.settings import DEFAULT_WEBHOOK_MAX_BODY_BYTES, Settings
from tests.conftest import SHOP, order_payload, running_function, signed_headers

LIMIT = 65_536


def order_of_size(order_id: int, size: int) -> bytes:
    """A signed-able orders/create body of exactly `size` bytes: one line for product 301, padded with a note."""
    payload = {**order_payload(order_id, 7, [301]), "note": ""}
    short = len(json.dumps(payload).encode())
    payload["note"] = "x" * (size - short)
    body = json.dumps(payload).encode()
    assert len(body) == size
    return body


def stored_orders(env: dict[str, str]) -> list[str]:
    """The orders whose events the deployment's SQLite store holds."""
    with contextlib.closing(sqlite3.connect(env["EVENT_STORE_URL"][len("sqlite:///"):])) as db:
        return [row[0] for row in db.execute("SELECT DISTINCT order_id FROM events WHERE shop = ? AND order_id"
                                             " IS NOT NULL ORDER BY order_id", (SHOP,))]


def test_the_webhook_limit_defaults_to_8_mib_and_is_validated():
    assert Settings.from_mapping({}).webhook_max_body_bytes == DEFAULT_WEBHOOK_MAX_BODY_BYTES == 8 * 1024 * 1024
    assert Settings.from_mapping({"WEBHOOK_MAX_BODY_BYTES": "100000"}).webhook_max_body_bytes == 100_000
    for bad in ("100", "abc", str(64 * 1024 * 1024), "-1"):
        with pytest.raises(ConfigError, match="WEBHOOK_MAX_BODY_BYTES"):
            Settings.from_mapping({"WEBHOOK_MAX_BODY_BYTES": bad})


def test_a_webhook_at_the_limit_is_stored_and_one_byte_over_is_a_413(app_client, env, monkeypatch):
    monkeypatch.setenv("WEBHOOK_MAX_BODY_BYTES", str(LIMIT))  # read by the instance's first request
    client = app_client
    at_limit, over = order_of_size(1, LIMIT), order_of_size(2, LIMIT + 1)

    stored = client.post("/webhooks", data=at_limit, headers=signed_headers(at_limit, "orders/create"))
    refused = client.post("/webhooks", data=over, headers=signed_headers(over, "orders/create"))

    assert stored.status_code == 200, stored.json
    assert refused.status_code == 413
    assert refused.json == {"error": "payload_too_large", "limit_bytes": LIMIT,
                            "message": f"the body is larger than {LIMIT} bytes"}
    assert stored_orders(env) == ["1"]


def test_a_chunked_body_is_cut_off_at_the_pixel_limit(installed):
    """No Content-Length: the body is refused once read, before it is parsed (it was a 400 from the parser)."""
    from webhooks.pixel import MAX_BODY_BYTES

    response = installed.post(f"/collect?shop={SHOP}", input_stream=io.BytesIO(b"x" * (MAX_BODY_BYTES + 1)),
                              headers={"Content-Type": "text/plain"},
                              environ_overrides={"wsgi.input_terminated": True})

    assert response.status_code == 413
    assert response.json["error"] == "payload_too_large" and response.json["limit_bytes"] == MAX_BODY_BYTES


def test_over_http_a_webhook_past_the_limit_is_refused_logged_and_stored_once_the_limit_is_raised(env):
    """functions-framework as deployed: a 413 for the body past WEBHOOK_MAX_BODY_BYTES, sent with a Content-Length
    or chunked, with an error line naming what it claims to be; the same delivery, retried after the limit is raised,
    is stored. A chunked body within the limit is read whole and its HMAC checked over all of it."""
    big = order_of_size(10, LIMIT + 4096)
    headers = signed_headers(big, "orders/create", webhook_id="big-order-10")
    small = order_of_size(11, LIMIT // 2)
    output: list[str] = []
    with running_function({**os.environ, **env, "WEBHOOK_MAX_BODY_BYTES": str(LIMIT)}, output=output) as base:
        sized = requests.post(f"{base}/webhooks", data=big, headers=headers, timeout=10)
        chunked = requests.post(f"{base}/webhooks", data=(big[i:i + 8192] for i in range(0, len(big), 8192)),
                                headers=headers, timeout=10)
        chunked_small = requests.post(f"{base}/webhooks", data=(small[i:i + 4096] for i in range(0, len(small), 4096)),
                                      headers=signed_headers(small, "orders/create"), timeout=10)
        after = requests.get(f"{base}/healthz", timeout=10)

    assert (sized.status_code, sized.json()["error"], sized.json()["limit_bytes"]) == (413, "payload_too_large", LIMIT)
    assert (chunked.status_code, chunked.json()["error"]) == (413, "payload_too_large")
    assert chunked_small.status_code == 200, chunked_small.text
    assert after.status_code == 200
    refusals = [line for line in output if "WEBHOOK_MAX_BODY_BYTES" in line]
    assert len(refusals) == 2 and all("'orders/create'" in line and "'big-order-10'" in line for line in refusals)
    assert f"Content-Length {len(big)}" in refusals[0] and "Content-Length None" in refusals[1]
    assert stored_orders(env) == ["11"]

    with running_function({**os.environ, **env, "WEBHOOK_MAX_BODY_BYTES": str(2 * LIMIT)}) as base:
        retried = requests.post(f"{base}/webhooks", data=big, headers=headers, timeout=10)

    assert retried.status_code == 200, retried.text
    assert stored_orders(env) == ["10", "11"]
