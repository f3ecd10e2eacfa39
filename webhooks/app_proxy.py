"""Shopify App Proxy requests: verify the `signature` query parameter.

Shopify signs every proxied request: drop `signature`, form `key=value` for each
parameter (several values of one key joined with ","), sort those strings, join
them with nothing, HMAC-SHA256 with the app secret, hex digest. The request must
also be fresh (`timestamp` within ±90 s), and the shopper is `logged_in_customer_id`
— never a parameter the browser chose.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Iterable, NamedTuple

from recommender.errors import InvalidParameter

LIST_PARAMETERS = ("product_ids", "exclude")  # /recommend's comma-separated ids: given twice, joined with ","

MAX_CLOCK_SKEW_SECONDS = 90
# What Shopify's app proxy adds to every request it forwards. On such a request they are Shopify's, read by the
# verification, and given twice (a copy typed into the storefront's URL, or a signed query regrouped) the request is
# refused (`_refuse_regrouping`); on a direct call they are the caller's (its `shop`) or ignored.
PROXY_PARAMETERS = frozenset({"shop", "logged_in_customer_id", "path_prefix", "timestamp", "signature"})


class ProxyVerification(NamedTuple):
    """The outcome of checking one proxied request."""

    valid: bool
    reason: str | None = None  # "missing_signature" | "invalid_signature" | "stale_timestamp" | "missing_shop"
    shop: str | None = None
    logged_in_customer_id: str | None = None  # None for a shopper who is not logged in


def _values_by_key(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Each parameter's values, in the order given (the signature joins them with ",")."""
    grouped: dict[str, list[str]] = {}
    for key, value in pairs:
        grouped.setdefault(key, []).append(value)
    return grouped


def _signed_message(grouped: dict[str, list[str]]) -> str:
    """What Shopify signs: `key=value` per parameter but `signature` (values joined with ","), sorted, concatenated."""
    return "".join(sorted(f"{key}={','.join(values)}" for key, values in grouped.items() if key != "signature"))


def app_proxy_signature(pairs: Iterable[tuple[str, str]], secret: str) -> str:
    """The hex signature Shopify computes over the query's (key, value) pairs, `signature` excluded."""
    message = _signed_message(_values_by_key(pairs))
    return hmac.new(secret.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()


def verify_app_proxy_request(pairs: list[tuple[str, str]], secret: str, now: float) -> ProxyVerification:
    """Check the signature over every query pair, then the timestamp's freshness."""
    supplied = [value for key, value in pairs if key == "signature"]
    if len(supplied) != 1 or not supplied[0]:
        return ProxyVerification(False, "missing_signature")
    expected = app_proxy_signature(pairs, secret)
    if not hmac.compare_digest(expected.encode(), supplied[0].encode()):
        return ProxyVerification(False, "invalid_signature")
    values = dict(pairs)
    try:
        timestamp = int(values.get("timestamp", ""))
    except ValueError:
        return ProxyVerification(False, "stale_timestamp")
    if abs(now - timestamp) > MAX_CLOCK_SKEW_SECONDS:
        return ProxyVerification(False, "stale_timestamp")
    shop = values.get("shop")
    if not shop:
        return ProxyVerification(False, "missing_shop")
    return ProxyVerification(True, shop=shop.lower(), logged_in_customer_id=values.get("logged_in_customer_id") or None)


class AccessDenied(Exception):
    """The request may not see what it asked for; `status` and `code` say how to answer."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code


def storefront_query(pairs: list[tuple[str, str]], secret: str | None, trust_customer_param: bool,
                     now: float) -> dict[str, str]:
    """The /recommend parameters this caller may use.

    A request carrying `signature` came through the app proxy: it must verify, its shop is
    Shopify's, and its customer is `logged_in_customer_id` alone. Any other request is a
    direct browser call: it gets anonymous, product- or cart-based results only, since
    anyone can type a customer id (unless TRUST_CUSTOMER_ID_PARAM is on, for local use).
    """
    grouped = _values_by_key(pairs)
    if "signature" in grouped:
        if secret is None:
            raise AccessDenied(500, "misconfigured", "SHOPIFY_API_SECRET is not set: app proxy requests cannot be verified")
        proof = verify_app_proxy_request(pairs, secret, now)
        if not proof.valid:
            raise AccessDenied(401, proof.reason or "invalid_signature", "the app proxy signature did not verify")
        _refuse_regrouping(pairs, grouped)
        query = _one_value_each(grouped, exempt=PROXY_PARAMETERS)
        asked = query.get("customer_id")
        if asked and asked != proof.logged_in_customer_id:
            raise AccessDenied(403, "forbidden", "customer_id must be the logged-in customer of the app proxy request")
        query.pop("customer_id", None)
        query["shop"] = proof.shop or ""
        if proof.logged_in_customer_id:
            query["customer_id"] = proof.logged_in_customer_id
        return query
    query = _one_value_each(grouped, exempt=PROXY_PARAMETERS - {"shop"})  # a direct call's shop is its own choice
    if query.get("customer_id") and not trust_customer_param:
        raise AccessDenied(403, "forbidden", "personalized results for a customer are served only through the "
                                             "Shopify app proxy, for the logged-in customer; call without customer_id "
                                             "for anonymous, product- or cart-based results")
    return query


def _refuse_regrouping(pairs: list[tuple[str, str]], grouped: dict[str, list[str]]) -> None:
    """The signature covers its pieces `key=value` one after another with nothing between them, so the same signature
    covers the query regrouped: a signed `intent=...&m=x,1000` read as `logged_in_customer_id=m=x` and
    `logged_in_customer_id=1000` verified, and the last of Shopify's parameters was taken as the customer. A signed
    query with `=` inside a key or a value, or one of Shopify's own parameters more than once, is refused: every
    regrouping puts an `=` inside a key or a value, or repeats the customer Shopify appended.

    Not every one: a signed `l=l&mlogged_in_customer_id=1000` also reads `l=&llogged_in_customer_id=m&
    logged_in_customer_id=1000`, Shopify's blank customer turned into the key `llogged_in_customer_id`. So the signed
    message must hold `logged_in_customer_id=` once: Shopify's own piece. The customer read is then Shopify's (a
    piece sorted after it starts with no digit, so the digits read are Shopify's, none added and none left out)."""
    for key, value in pairs:
        if "=" in key or "=" in value:
            raise InvalidParameter(key, f"{key!r}: an app proxy request's keys and values may not hold '='")
    if _signed_message(grouped).count("logged_in_customer_id=") > 1:
        raise InvalidParameter("logged_in_customer_id", "an app proxy request may name logged_in_customer_id only as "
                                                        "Shopify's own parameter, not inside another key or a value")
    for key in PROXY_PARAMETERS:
        if len(grouped.get(key, ())) > 1:
            raise InvalidParameter(key, f"{key} is Shopify's own on an app proxy request and was given more than once")


def _one_value_each(grouped: dict[str, list[str]], exempt: frozenset[str]) -> dict[str, str]:
    """The query as /recommend reads it: a list parameter's values joined with "," (as the signature joins them);
    any other parameter given more than once with different values is refused, naming it, but those in `exempt`
    (Shopify's own, read by the verification), of which the last is kept."""
    query: dict[str, str] = {}
    for key, values in grouped.items():
        distinct = list(dict.fromkeys(values))
        if key in LIST_PARAMETERS:
            query[key] = ",".join(values)
        elif len(distinct) == 1 or key in exempt:
            query[key] = values[-1]
        else:
            raise InvalidParameter(key, f"{key} takes one value, got {len(distinct)}: "
                                        f"{', '.join(repr(value) for value in distinct)}")
    return query
