"""Verify `X-Shopify-Hmac-Sha256` before anything reads the body.

The header is the base64 HMAC-SHA256 of the raw request bytes keyed with the
app's client secret. Comparison is constant-time; the result carries a reason.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import Mapping

HMAC_HEADER = "x-shopify-hmac-sha256"


@dataclass(frozen=True)
class VerificationResult:
    valid: bool
    reason: str | None = None  # "missing_hmac" | "invalid_hmac" when not valid


def sign_webhook_body(raw_body: bytes, secret: str) -> str:
    """The value Shopify puts in X-Shopify-Hmac-Sha256 for this body."""
    digest = hmac.new(secret.encode("utf-8"), raw_body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_webhook_hmac(headers: Mapping[str, str], raw_body: bytes, secret: str) -> VerificationResult:
    supplied = _header(headers, HMAC_HEADER)
    if not supplied:
        return VerificationResult(False, "missing_hmac")
    try:
        supplied_digest = base64.b64decode(supplied.strip(), validate=True)
    except (binascii.Error, ValueError):
        return VerificationResult(False, "invalid_hmac")
    expected = hmac.new(secret.encode("utf-8"), raw_body, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, supplied_digest):
        return VerificationResult(False, "invalid_hmac")
    return VerificationResult(True)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Header names arrive in any case."""
    value = headers.get(name)
    if value is not None:
        return value
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None
