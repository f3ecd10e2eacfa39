"""Who may start training: Cloud Scheduler's Google-signed OIDC token, or a shared bearer token.

Cloud Scheduler calls the `train` function with `Authorization: Bearer <ID token>` minted for
a service account. The token is verified against Google's public certificates (signature,
expiry, audience), then its `email` must be the configured service account and verified.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")


@dataclass(frozen=True)
class CallerCheck:
    allowed: bool
    # "missing_token" | "invalid_token" | "wrong_account" | "training_disabled" | "certificates_unavailable"
    reason: str | None = None
    caller: str | None = None  # who called, or what went wrong


def bearer_token(authorization: str | None) -> str | None:
    if not authorization or not authorization.startswith("Bearer "):
        return None
    return authorization[len("Bearer "):].strip() or None


def verify_google_id_token(token: str, audience: str, service_account: str,
                           certs_url: str = GOOGLE_CERTS_URL) -> CallerCheck:
    """Verify a Google-signed ID token for `audience` issued to `service_account`."""
    import google.auth.exceptions
    import google.auth.transport.requests
    from google.oauth2 import id_token

    try:
        claims = id_token.verify_token(token, google.auth.transport.requests.Request(), audience=audience,
                                       certs_url=certs_url, clock_skew_in_seconds=10)
    except google.auth.exceptions.TransportError as exc:  # Google's keys out of reach: the token is not judged
        return CallerCheck(False, "certificates_unavailable", f"{certs_url}: {str(exc)[:200]}")
    except (ValueError, google.auth.exceptions.GoogleAuthError) as exc:
        return CallerCheck(False, "invalid_token", str(exc)[:200])
    if claims.get("iss") not in GOOGLE_ISSUERS:
        return CallerCheck(False, "invalid_token", f"issuer {claims.get('iss')!r}")
    if claims.get("email") != service_account or not claims.get("email_verified"):
        return CallerCheck(False, "wrong_account", claims.get("email"))
    return CallerCheck(True, caller=service_account)


def check_train_caller(authorization: str | None, shared_token: str | None, service_account: str | None,
                       audience: str, certs_url: str = GOOGLE_CERTS_URL) -> CallerCheck:
    """The shared token (local use) or a Scheduler OIDC token; with neither configured, training is off."""
    if shared_token is None and service_account is None:
        return CallerCheck(False, "training_disabled")
    supplied = bearer_token(authorization)
    if supplied is None:
        return CallerCheck(False, "missing_token")
    if shared_token is not None and hmac.compare_digest(supplied.encode(), shared_token.encode()):
        return CallerCheck(True, caller="shared-token")
    if service_account is not None:
        return verify_google_id_token(supplied, audience, service_account, certs_url)
    return CallerCheck(False, "invalid_token")
