"""Web Pixel events: storefront behaviour that never arrives by webhook (product views above all).

A Shopify Web Pixel extension posts standard events with `browser.sendBeacon`:
    {id: "sh-<uuid>", name, timestamp, clientId, data: {...}}
and the custom events a theme publishes about `/recommend`'s answers (`RECOMMENDATION_EVENTS`), with their
`customData`: views and clicks, stored apart from the events for attribution (`recommender.attribution`).
These requests are unsigned, so everything is validated strictly, bodies are capped,
only installed shops are accepted, each client is rate-limited, and events are keyed
by the pixel's `clientId` alone and marked as the pixel's (`PIXEL_SOURCE_PREFIX`), so that no cart token's link to a
customer ever joins them (an unsigned request never writes into a customer's history).
"""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, NamedTuple

from recommender.errors import InvalidEvent
from recommender.changes import Event
from recommender.events import MAX_QUANTITY, EventKind, parse_timestamp
from recommender.intents import CHAINS, MAX_RESULTS
from recommender.store import CART_STATE_PREFIX, PIXEL_SOURCE_PREFIX
from recommender.store import SIGNAL_CLICK, SIGNAL_VIEW, RecommendationSignal
from webhooks import MalformedPayload
from webhooks.topics import CURRENCY_CODE, _quantity, money, shopify_id

MAX_BODY_BYTES = 32 * 1024
MAX_EVENTS_PER_REQUEST = 20
TAKEN = ("product_viewed", "product_added_to_cart", "product_removed_from_cart", "checkout_completed")
# The custom events a theme publishes (`Shopify.analytics.publish(name, customData)`) when it shows an answer of
# `/recommend` and when a shopper clicks one of its products; the extension forwards them with their `customData`.
RECOMMENDATIONS_VIEWED, RECOMMENDATIONS_CLICKED = "recommendations_viewed", "recommendations_clicked"
RECOMMENDATION_EVENTS = (RECOMMENDATIONS_VIEWED, RECOMMENDATIONS_CLICKED)
_EVENT_ID = re.compile(r"^[A-Za-z0-9_\-:.]{1,128}$")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9_\-:.]{1,128}$")
_RECOMMENDATION_ID = re.compile(r"^[0-9a-f]{32}$")  # as `/recommend` makes them: 16 random bytes in lowercase hex
_PRODUCT_ID = re.compile(r"^[0-9]{1,20}$")


class Beacon(NamedTuple):
    """What one beacon holds: the events to store, the storefront's views and clicks of answers (`signals`), and how
    many of its events had other names (ignored)."""

    events: list[Event]
    signals: list[RecommendationSignal]
    ignored: int


def _variant(data: dict, where: str) -> dict:
    variant = data.get("productVariant")
    if variant is None and isinstance(data.get("cartLine"), dict):
        variant = data["cartLine"].get("merchandise")
    if not isinstance(variant, dict):
        raise MalformedPayload(f"{where}.productVariant is missing")
    return variant


def _product_id(variant: dict, where: str,
                required: bool = True) -> tuple[str | None, str | None, float | None, str | None]:
    """The variant's product id, its own id, its price's amount and the price's currency (each None where absent)."""
    product = variant.get("product")
    if not isinstance(product, dict):
        raise MalformedPayload(f"{where}.product is missing")
    price = variant.get("price")
    amount = currency = None
    if isinstance(price, dict):
        amount = money(price.get("amount"), f"{where}.price.amount")
        currency = price.get("currencyCode")
        if currency is not None and not (isinstance(currency, str) and CURRENCY_CODE.match(currency)):
            raise MalformedPayload(f"{where}.price.currencyCode must be a currency code such as USD, got {currency!r}")
    return (shopify_id(product.get("id"), f"{where}.product.id", required),
            shopify_id(variant.get("id"), f"{where}.id", required=False), amount, currency)


def pixel_events(payload: Any, shop: str, now: datetime | None = None) -> tuple[list[Event], int]:
    """`read_beacon`'s events, and how many of the beacon's events are not among them: those of other names, and the
    storefront's views and clicks of answers (which only `read_beacon` returns)."""
    beacon = read_beacon(payload, shop, now)
    return beacon.events, beacon.ignored + len({signal.event_id for signal in beacon.signals})


def read_beacon(payload: Any, shop: str, now: datetime | None = None) -> Beacon:
    """Translate one event or a list of them: the events to store, the views and clicks of answers, and how many
    events had other names. An event dated after `now` (the request's arrival; a browser's clock runs ahead, or a caller
    writes what it likes) is dated `now`: dated in the future it counted whole in trending and stayed a shopper's
    latest event for as long as that lasted, and retention never pruned it."""
    now = now or datetime.now(timezone.utc)
    items = payload if isinstance(payload, list) else [payload]
    if not items or len(items) > MAX_EVENTS_PER_REQUEST:
        raise MalformedPayload(f"send 1 to {MAX_EVENTS_PER_REQUEST} events per request")
    events: list[Event] = []
    signals: list[RecommendationSignal] = []
    ignored = 0
    for position, item in enumerate(items):
        where = f"events[{position}]"
        if not isinstance(item, dict):
            raise MalformedPayload(f"{where} must be an object")
        name = item.get("name")
        if name not in TAKEN and name not in RECOMMENDATION_EVENTS:
            ignored += 1
            continue
        event_id, client_id = item.get("id"), item.get("clientId")
        if not isinstance(event_id, str) or not _EVENT_ID.match(event_id):
            raise MalformedPayload(f"{where}.id must be the pixel event id (e.g. sh-<uuid>)")
        if not isinstance(client_id, str) or not _CLIENT_ID.match(client_id):
            raise MalformedPayload(f"{where}.clientId is missing or malformed")
        try:
            occurred_at = min(parse_timestamp(item.get("timestamp"), f"{where}.timestamp"), now)
        except InvalidEvent as exc:
            raise MalformedPayload(str(exc)) from None
        if name in RECOMMENDATION_EVENTS:
            signals.extend(_signals(item.get("customData"), name, f"{where}.customData", shop=shop,
                                    event_id=event_id, client_id=client_id, occurred_at=occurred_at))
            continue
        data = item.get("data")
        if not isinstance(data, dict):
            raise MalformedPayload(f"{where}.data must be an object")
        common = {"shop": shop, "occurred_at": occurred_at, "anonymous_id": client_id,
                  "source_topic": f"{PIXEL_SOURCE_PREFIX}{name}", "delivery_id": event_id}
        if name == "checkout_completed":
            checkout = data.get("checkout")
            if not isinstance(checkout, dict):
                raise MalformedPayload(f"{where}.data.checkout must be an object")
            order = checkout.get("order") if isinstance(checkout.get("order"), dict) else {}
            order_id = shopify_id(order.get("id"), f"{where}.data.checkout.order.id", required=False)
            lines = checkout.get("lineItems") or []
            if not isinstance(lines, list):
                raise MalformedPayload(f"{where}.data.checkout.lineItems must be a list")
            # One purchase per product, as its dedupe key holds: a product on several lines (two of its variants) is
            # their quantities summed, priced at their mean by unit (so that price × quantity is what they cost), in
            # the first line's variant and currency
            bought: dict[str, list] = {}
            for n, line in enumerate(lines):
                if isinstance(line, dict) and "variant" in line and line["variant"] is None:
                    continue  # a custom item (no variant): skipped, as orders/create skips a line without a product
                if not isinstance(line, dict) or not isinstance(line.get("variant"), dict):
                    raise MalformedPayload(f"{where}.data.checkout.lineItems[{n}].variant is missing")
                product_id, variant_id, price, currency = _product_id(
                    line["variant"], f"{where}.data.checkout.lineItems[{n}].variant", required=False)
                if product_id is None:
                    continue
                # The line's quantity, as orders/create reads it: attribution's revenue is price × quantity
                quantity = _quantity(line.get("quantity"), f"{where}.data.checkout.lineItems[{n}].quantity")
                cost = None if price is None else price * quantity
                if product_id not in bought:
                    bought[product_id] = [variant_id, currency, quantity, cost]
                    continue
                entry = bought[product_id]
                entry[2] += quantity
                entry[3] = None if entry[3] is None or cost is None else entry[3] + cost
            for product_id, (variant_id, currency, quantity, cost) in bought.items():
                quantity = min(quantity, MAX_QUANTITY)  # each line is at most that; their sum is kept within it
                events.append(Event(kind=EventKind.PURCHASE, product_id=product_id, variant_id=variant_id,
                                    price=None if cost is None else cost / quantity, currency=currency,
                                    quantity=quantity, order_id=order_id,
                                    dedupe_key=f"pixel:{event_id}:{product_id}", **common))
            continue
        product_id, variant_id, price, currency = _product_id(_variant(data, f"{where}.data"),
                                                              f"{where}.data.productVariant")
        if name == "product_viewed":
            events.append(Event(kind=EventKind.VIEW, product_id=product_id, variant_id=variant_id, price=price,
                                currency=currency, dedupe_key=f"pixel:{event_id}", **common))
        else:  # one cart signal per client and product, its latest beacon's: an add 1, a removal 0
            events.append(Event(kind=EventKind.ADD_TO_CART, product_id=product_id, variant_id=variant_id, price=price,
                                currency=currency,
                                dedupe_key=f"{CART_STATE_PREFIX}{client_id}:{product_id}",
                                weight_factor=0.0 if name == "product_removed_from_cart" else 1.0, **common))
    return Beacon(events, signals, ignored)


def _brief(value: Any) -> str:
    """A value as an error message quotes it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _product_digits(value: Any, field: str) -> str:
    """A product id as `/recommend` answers it: a string of digits (an integer is taken too)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = str(value)
    if not isinstance(value, str) or not _PRODUCT_ID.match(value):
        raise MalformedPayload(f"{field} must be a product id (digits), got {_brief(value)}")
    return value


def _signals(custom: Any, name: str, where: str, **common: Any) -> list[RecommendationSignal]:
    """A `recommendations_viewed` event's products (each with its place in the answer) or a `recommendations_clicked`
    event's product, from the `customData` the theme published."""
    if not isinstance(custom, dict):
        raise MalformedPayload(f"{where} must be an object")
    recommendation_id = custom.get("recommendation_id")
    if not isinstance(recommendation_id, str) or not _RECOMMENDATION_ID.match(recommendation_id):
        raise MalformedPayload(f"{where}.recommendation_id must be the recommendation_id of a /recommend answer"
                               f" (32 lowercase hexadecimal characters), got {_brief(recommendation_id)}")
    intent = custom.get("intent")
    if not isinstance(intent, str) or intent not in CHAINS:
        raise MalformedPayload(f"{where}.intent must be one of {', '.join(CHAINS)}, got {_brief(intent)}")
    answer = {**common, "recommendation_id": recommendation_id, "intent": intent}
    if name == RECOMMENDATIONS_VIEWED:
        shown = custom.get("product_ids")
        if not isinstance(shown, list) or not 1 <= len(shown) <= MAX_RESULTS:
            raise MalformedPayload(f"{where}.product_ids must be a list of 1 to {MAX_RESULTS} product ids (the"
                                   f" answer's, in its order), got {_brief(shown)}")
        return [RecommendationSignal(kind=SIGNAL_VIEW, product_id=_product_digits(product, f"{where}.product_ids[{n}]"),
                                     position=n, **answer) for n, product in enumerate(shown)]
    product = _product_digits(custom.get("product_id"), f"{where}.product_id")
    position = custom.get("position")
    if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position < MAX_RESULTS:
        raise MalformedPayload(f"{where}.position must be an integer from 0 to {MAX_RESULTS - 1} (the product's place"
                               f" in the answer), got {_brief(position)}")
    return [RecommendationSignal(kind=SIGNAL_CLICK, product_id=product, position=position, **answer)]


def parse_pixel_body(raw: bytes) -> Any:
    if len(raw) > MAX_BODY_BYTES:
        raise MalformedPayload(f"body is larger than {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(raw)
    except ValueError as exc:  # not UTF-8, not JSON, or an integer past Python's 4,300 digits
        raise MalformedPayload(f"body is not JSON: {exc}") from None


class RateLimiter:
    """A token bucket per key, in this instance's memory: `rate` per second, bursts up to `burst`."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        self._rate, self._burst, self._clock, self._max_keys = rate, burst, clock, max_keys
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str, cost: int = 1) -> bool:
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self._burst), now))
            tokens = min(float(self._burst), tokens + (now - last) * self._rate)
            if len(self._buckets) >= self._max_keys and key not in self._buckets:
                self._buckets.clear()  # bounded memory under a flood of new keys
            if tokens < cost:
                self._buckets[key] = (tokens, now)
                return False
            self._buckets[key] = (tokens - cost, now)
            return True


# Unsigned pixel traffic is rate-limited per client and per address, in each instance's memory (main.collect).
PER_CLIENT = RateLimiter(rate=1.0, burst=60)
PER_ADDRESS = RateLimiter(rate=5.0, burst=300)
