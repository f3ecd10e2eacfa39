"""The vocabulary shared by every path: event kinds, shopper keys, catalog rows, timestamps.

What a webhook delivery writes (events, refunds, inventory levels, identity links) is in
`recommender.changes`, which the serving path never imports.

Ids are strings everywhere (Shopify's ids exceed 2**53, and cart tokens are
not numbers); a shopper is a customer id or, before login, an anonymous id.
"""

from __future__ import annotations

import enum
import json
from datetime import datetime, timezone
from typing import NamedTuple

from recommender.errors import InvalidEvent


MAX_QUANTITY = 1_000_000  # larger quantities are data errors (and overflow SQLite's INTEGER)


class EventKind(str, enum.Enum):
    VIEW = "view"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"


def user_key(customer_id: str | None, anonymous_id: str | None = None) -> str:
    """The key one shopper's events share: customers and anonymous ids never collide."""
    if customer_id:
        return f"c:{customer_id}"
    if anonymous_id:
        return f"a:{anonymous_id}"
    raise InvalidEvent("a shopper needs a customer_id or an anonymous_id")


class CatalogVariant(NamedTuple):
    """One variant's stock, as far as availability needs it."""

    variant_id: str
    inventory_item_id: str | None = None
    inventory_quantity: int | None = None
    tracked: bool = False  # inventory_management set: quantity counts
    continue_selling: bool = False  # inventory_policy "continue": sells below zero

    @property
    def available(self) -> bool:
        if not self.tracked or self.continue_selling:
            return True
        return (self.inventory_quantity or 0) > 0


# Products on sale that no answer shows, as Shopify's own recommendations leave them out, each kept as the reason on
# the product's row: a gift card, a product whose every variant is free (a gift with purchase, a sample), and one the
# merchant tagged HIDE_TAG (shipping protection, a warranty, a fee: anything no shopper should be offered).
HIDE_TAG = "hide-from-recommendations"
HIDDEN_REASONS = ("gift_card", "tag", "free")

# A merchant's own picks for a product's page, as Shopify's Search & Discovery app keeps them: product metafields of
# this namespace, `related_products` ("You may also like") and `complementary_products` ("Pair it with"), each a
# list.product_reference (a JSON list of product GIDs, in the merchant's order). Answers show them first.
PICKS_NAMESPACE = "shopify--discovery--product_recommendation"
PICKS_KEYS = {"related_products": "related", "complementary_products": "complementary"}


class MerchantPicks(NamedTuple):
    """The products a merchant picked for one product's page, in the merchant's order (product ids)."""

    related: tuple[str, ...] = ()
    complementary: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        """Whether any product is picked (a tuple of two empty lists would be true)."""
        return bool(self.related or self.complementary)

    def encoded(self) -> str:
        """As a product row keeps it: '' for none, else compact JSON (`decoded` reads it back)."""
        if not self:
            return ""
        return json.dumps({"related": list(self.related), "complementary": list(self.complementary)},
                          separators=(",", ":"))

    @classmethod
    def decoded(cls, text: str | None) -> "MerchantPicks | None":
        """A row's picks: None where no payload has named any (NULL) or the last one named none ('')."""
        if not text:
            return None
        picks = json.loads(text)
        return cls(tuple(picks.get("related", ())), tuple(picks.get("complementary", ())))


class CatalogProduct(NamedTuple):
    """One catalog row with its variants (a named tuple: a catalog read makes one per product)."""

    shop: str
    product_id: str
    title: str = ""
    handle: str = ""
    status: str = "active"  # active | draft | archived
    published_at: datetime | None = None
    price: float | None = None
    image_url: str | None = None
    product_type: str = ""
    vendor: str = ""
    updated_at: datetime | None = None
    variants: tuple[CatalogVariant, ...] = ()
    hidden: str | None = None  # why no answer shows it though it may be for sale (HIDDEN_REASONS), None: shown
    # The merchant's picks for its page, as its payload named them (none: MerchantPicks()); None where the payload
    # carried no metafields (a subscription without PICKS_NAMESPACE, REST's products.json): the stored ones stand.
    picks: MerchantPicks | None = None

    @property
    def available(self) -> bool:
        """For sale now: at least one variant can be bought (or no variant data at all)."""
        if not self.variants:
            return True
        return any(v.available for v in self.variants)


def order_line_key(order_id: str, line_item_id: str) -> str:
    """The dedupe key of the purchase event one order line produces."""
    return f"order:{order_id}:line:{line_item_id}"


def parse_timestamp(value: object, name: str = "occurred_at") -> datetime:
    """ISO 8601 → aware UTC datetime; naive values are taken as UTC."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidEvent(f"{name} is not an ISO 8601 timestamp: {value!r}") from None
    else:
        raise InvalidEvent(f"{name} is missing or not a string: {value!r}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:  # an offset that takes it past year 1 or 9999 (0001-01-01T00:00:00+01:00)
        raise InvalidEvent(f"{name} is outside the years 1 to 9999 in UTC: {value!r}") from None
