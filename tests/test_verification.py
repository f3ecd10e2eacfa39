"""verify_webhook_hmac: the signature over the raw bytes, checked before anything reads the body."""

import base64
import hashlib
import hmac

import pytest

from tests.conftest import TEST_SECRET
from webhooks.verification import VerificationResult, sign_webhook_body, verify_webhook_hmac

BODY = b'{"id": 820982911946154500, "line_items": []}'


def _independent_signature(body: bytes, secret: str) -> str:
    return base64.b64encode(hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()).decode("ascii")


def test_sign_webhook_body_matches_an_independently_computed_hmac():
    # Arrange
    expected = _independent_signature(BODY, TEST_SECRET)

    # Act
    signature = sign_webhook_body(BODY, TEST_SECRET)

    # Assert
    assert signature == expected
    assert len(base64.b64decode(signature)) == 32  # SHA-256 digest


def test_sign_webhook_body_matches_a_fixed_known_value():
    # Arrange: computed once with `printf 'hello' | openssl dgst -sha256 -hmac key -binary | base64`
    body, secret = b"hello", "key"

    # Act
    signature = sign_webhook_body(body, secret)

    # Assert
    assert signature == "kwezuRXvtRcf8U2MtV+8x5jGwO8UVtZt7RpqpyOli3s="
    assert signature == _independent_signature(body, secret)


def test_valid_signature_is_accepted():
    # Arrange
    headers = {"X-Shopify-Hmac-Sha256": _independent_signature(BODY, TEST_SECRET)}

    # Act
    result = verify_webhook_hmac(headers, BODY, TEST_SECRET)

    # Assert
    assert result == VerificationResult(valid=True, reason=None)


def test_signature_made_with_another_secret_is_invalid():
    # Arrange
    headers = {"X-Shopify-Hmac-Sha256": _independent_signature(BODY, "some-other-secret")}

    # Act
    result = verify_webhook_hmac(headers, BODY, TEST_SECRET)

    # Assert
    assert result == VerificationResult(valid=False, reason="invalid_hmac")


def test_missing_header_is_reported_as_missing():
    # Arrange
    headers = {"X-Shopify-Topic": "orders/create"}

    # Act
    result = verify_webhook_hmac(headers, BODY, TEST_SECRET)

    # Assert
    assert result == VerificationResult(valid=False, reason="missing_hmac")


def test_empty_header_is_reported_as_missing():
    # Act
    result = verify_webhook_hmac({"X-Shopify-Hmac-Sha256": ""}, BODY, TEST_SECRET)

    # Assert
    assert result == VerificationResult(valid=False, reason="missing_hmac")


@pytest.mark.parametrize("name", [
    "x-shopify-hmac-sha256",
    "X-SHOPIFY-HMAC-SHA256",
    "X-Shopify-Hmac-SHA256",
    "x-Shopify-hMac-Sha256",
])
def test_header_name_is_matched_in_any_case(name):
    # Arrange
    headers = {"Content-Type": "application/json", name: _independent_signature(BODY, TEST_SECRET)}

    # Act
    result = verify_webhook_hmac(headers, BODY, TEST_SECRET)

    # Assert
    assert result.valid is True


@pytest.mark.parametrize("position", [0, len(BODY) // 2, len(BODY) - 1])
def test_body_with_one_byte_changed_is_rejected(position):
    # Arrange
    headers = {"X-Shopify-Hmac-Sha256": _independent_signature(BODY, TEST_SECRET)}
    tampered = bytearray(BODY)
    tampered[position] ^= 0x01
    tampered = bytes(tampered)
    assert tampered != BODY and len(tampered) == len(BODY)

    # Act
    result = verify_webhook_hmac(headers, tampered, TEST_SECRET)

    # Assert
    assert result == VerificationResult(valid=False, reason="invalid_hmac")


def test_body_with_one_byte_appended_is_rejected():
    # Arrange
    headers = {"X-Shopify-Hmac-Sha256": _independent_signature(BODY, TEST_SECRET)}

    # Act
    result = verify_webhook_hmac(headers, BODY + b" ", TEST_SECRET)

    # Assert
    assert result == VerificationResult(valid=False, reason="invalid_hmac")


@pytest.mark.parametrize("header", [
    "not base64 at all!",
    "****",
    "abc",  # wrong padding
    "\u00e9t\u00e9",  # non-ASCII
])
def test_non_base64_header_is_rejected(header):
    # Act
    result = verify_webhook_hmac({"X-Shopify-Hmac-Sha256": header}, BODY, TEST_SECRET)

    # Assert
    assert result == VerificationResult(valid=False, reason="invalid_hmac")


def test_valid_base64_of_a_truncated_digest_is_rejected():
    # Arrange: the right digest minus its last byte, re-encoded as valid base64
    digest = hmac.new(TEST_SECRET.encode(), BODY, hashlib.sha256).digest()
    headers = {"X-Shopify-Hmac-Sha256": base64.b64encode(digest[:-1]).decode()}

    # Act
    result = verify_webhook_hmac(headers, BODY, TEST_SECRET)

    # Assert
    assert result == VerificationResult(valid=False, reason="invalid_hmac")


def test_hex_digest_instead_of_base64_is_rejected():
    # Arrange: a common integration mistake; hex is not Shopify's encoding
    headers = {"X-Shopify-Hmac-Sha256": hmac.new(TEST_SECRET.encode(), BODY, hashlib.sha256).hexdigest()}

    # Act
    result = verify_webhook_hmac(headers, BODY, TEST_SECRET)

    # Assert
    assert result == VerificationResult(valid=False, reason="invalid_hmac")
