"""Who may train: Cloud Scheduler's OIDC token verified against (locally served) Google-style certificates."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from functions_framework import create_app
from google.auth import crypt, jwt

from tests.conftest import ROOT, order_payload, post_webhook
from webhooks.oidc import check_train_caller

ACCOUNT = "scheduler@my-recs.iam.gserviceaccount.com"
AUDIENCE = "https://us-central1-my-recs.cloudfunctions.net/train"


@pytest.fixture(scope="module")
def google_like_certs():
    """An RSA key pair, its public key served on loopback the way Google serves its OIDC certs."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    body = json.dumps({"test-key": public_pem}).encode()

    class Certs(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Certs)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    signer = crypt.RSASigner.from_string(private_pem, "test-key")
    yield signer, f"http://127.0.0.1:{server.server_address[1]}/certs"
    server.shutdown()


def token(signer, **overrides) -> str:
    now = int(time.time())
    claims = {"iss": "https://accounts.google.com", "aud": AUDIENCE, "email": ACCOUNT, "email_verified": True,
              "sub": "1234", "iat": now, "exp": now + 600, **overrides}
    return jwt.encode(signer, claims).decode()


def check(google_like_certs, authorization, shared=None):
    _, certs_url = google_like_certs
    return check_train_caller(authorization, shared, ACCOUNT, AUDIENCE, certs_url)


def test_a_scheduler_token_for_the_right_account_and_audience_is_accepted(google_like_certs):
    signer, _ = google_like_certs
    result = check(google_like_certs, f"Bearer {token(signer)}")
    assert (result.allowed, result.caller) == (True, ACCOUNT)


@pytest.mark.parametrize("overrides, reason", [
    ({"email": "someone@else.iam.gserviceaccount.com"}, "wrong_account"),
    ({"email_verified": False}, "wrong_account"),
    ({"aud": "https://elsewhere.example/train"}, "invalid_token"),
    ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, "invalid_token"),
    ({"iss": "https://evil.example"}, "invalid_token"),
])
def test_wrong_tokens_are_refused_with_the_reason(google_like_certs, overrides, reason):
    signer, _ = google_like_certs
    assert check(google_like_certs, f"Bearer {token(signer, **overrides)}").reason == reason


def test_a_token_signed_by_another_key_is_refused(google_like_certs):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    forged = token(crypt.RSASigner.from_string(other, "test-key"))
    assert check(google_like_certs, f"Bearer {forged}").reason == "invalid_token"


def test_the_shared_token_still_works_for_local_use(google_like_certs):
    assert check(google_like_certs, "Bearer local-secret", shared="local-secret").allowed
    assert check(google_like_certs, None, shared="local-secret").reason == "missing_token"


def test_the_train_function_accepts_scheduler_tokens(google_like_certs, env):
    signer, certs_url = google_like_certs
    env.pop("TRAIN_TOKEN")
    os.environ.pop("TRAIN_TOKEN", None)
    os.environ.update({**env, "TRAIN_SERVICE_ACCOUNT": ACCOUNT, "TRAIN_AUDIENCE": AUDIENCE,
                       "OIDC_CERTS_URL": certs_url})
    client = create_app(target="app", source=str(ROOT / "main.py")).test_client()
    post_webhook(client, "orders/create", order_payload(1, 2, [3, 4]))

    refused = client.post("/train", headers={"Authorization": f"Bearer {token(signer, aud='x')}"})
    accepted = client.post("/train", headers={"Authorization": f"Bearer {token(signer)}"})

    assert (refused.status_code, refused.json["reason"]) == (401, "invalid_token")
    assert accepted.status_code == 200


@pytest.mark.parametrize("certs", ["refused", "500"])
def test_bug_google_certificates_out_of_reach_are_a_503_not_a_bad_token(google_like_certs, env, certs):
    """BUG webhooks/oidc.py: with Google's certificates out of reach (no connection, or an error answer) a
    scheduler's valid token was a 401 invalid_token, so an outage read as a wrong configuration; it is a 503 naming
    the certificates, a failure of ours that the scheduler's retry may clear."""
    signer, _ = google_like_certs

    class Failing(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(500)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    port = server.server_address[1]
    if certs == "refused":
        server.shutdown()
        server.server_close()  # nothing listens there any more
    try:
        env.pop("TRAIN_TOKEN")
        os.environ.pop("TRAIN_TOKEN", None)
        os.environ.update({**env, "TRAIN_SERVICE_ACCOUNT": ACCOUNT, "TRAIN_AUDIENCE": AUDIENCE,
                           "OIDC_CERTS_URL": f"http://127.0.0.1:{port}/certs"})
        client = create_app(target="app", source=str(ROOT / "main.py")).test_client()

        response = client.post("/train", headers={"Authorization": f"Bearer {token(signer)}"})
    finally:
        if certs != "refused":
            server.shutdown()
            server.server_close()

    assert (response.status_code, response.json["error"]) == (503, "certificates_unavailable")
    assert "http://127.0.0.1" in response.json["message"]
