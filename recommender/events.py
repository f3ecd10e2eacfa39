"""The values that flow into the store: events, catalog rows, deliveries.

Ids are strings everywhere (Shopify's ids exceed 2**53, and cart tokens are
not numbers); a shopper is a customer id or, before login, an anonymous id.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timezone

from recommender.errors import InvalidEvent


MAX_QUANTITY = 1_000_000  # larger quantities are data errors (and overflow SQLite's INTEGER)


class EventKind(str, enum.Enum):
    VIEW = "view"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"


@dataclass(frozen=True)
class Event:
    """One shopper-product interaction."""

    kind: EventKind
    shop: str
    product_id: str
    occurred_at: datetime  # timezone-aware, UTC in storage
    customer_id: str | None = None
    anonymous_id: str | None = None  # cart token or similar, for shoppers not logged in
    variant_id: str | None = None
    quantity: int = 1
    price: float | None = None
    order_id: str | None = None
    source_topic: str = ""
    delivery_id: str = ""
    dedupe_key: str | None = None  # one stored event per key and shop (an order line, a cart line)
    weight_factor: float = 1.0  # 0 for a cancelled order line, reduced by refunds

    def __post_init__(self) -> None:
        if not isinstance(self.kind, EventKind):
            raise InvalidEvent(f"unknown event kind {self.kind!r}")
        if not self.product_id:
            raise InvalidEvent("an event needs a product_id")
        if not (self.customer_id or self.anonymous_id):
            raise InvalidEvent("an event needs a customer_id or an anonymous_id")
        if self.occurred_at.tzinfo is None:
            raise InvalidEvent("occurred_at must carry a timezone")
        if not 1 <= self.quantity <= MAX_QUANTITY:
            raise InvalidEvent(f"quantity must be from 1 to {MAX_QUANTITY}, got {self.quantity}")

    @property
    def user_key(self) -> str:
        return user_key(self.customer_id, self.anonymous_id)


def user_key(customer_id: str | None, anonymous_id: str | None = None) -> str:
    """The key one shopper's events share: customers and anonymous ids never collide."""
    if customer_id:
        return f"c:{customer_id}"
    if anonymous_id:
        return f"a:{anonymous_id}"
    raise InvalidEvent("a shopper needs a customer_id or an anonymous_id")


@dataclass(frozen=True)
class CatalogVariant:
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


@dataclass(frozen=True)
class CatalogProduct:
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

    @property
    def available(self) -> bool:
        """For sale now: at least one variant can be bought (or no variant data at all)."""
        if not self.variants:
            return True
        return any(v.available for v in self.variants)


@dataclass(frozen=True)
class Delivery:
    """One delivery of a webhook; the store keeps each webhook_id once."""

    shop: str
    webhook_id: str
    topic: str
    event_id: str | None = None
    received_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    triggered_at: datetime | None = None  # X-Shopify-Triggered-At: when the merchant action happened

    @property
    def happened_at(self) -> datetime:
        return self.triggered_at or self.received_at


@dataclass(frozen=True)
class RefundLine:
    """`quantity` units of one order line were refunded; the purchase signal shrinks in proportion."""

    refund_id: str
    order_id: str
    line_item_id: str
    quantity: int


@dataclass(frozen=True)
class InventoryLevel:
    """Units available of one inventory item at one location (None: not tracked there)."""

    inventory_item_id: str
    location_id: str
    available: int | None


@dataclass(frozen=True)
class IdentityLink:
    """A guest's anonymous id (cart token) belongs to this customer from now on."""

    anonymous_id: str
    customer_id: str


@dataclass(frozen=True)
class ChangeSet:
    """Everything one delivery changes, applied in one transaction."""

    events: tuple[Event, ...] = ()
    upsert_products: tuple[CatalogProduct, ...] = ()
    delete_product_ids: tuple[str, ...] = ()
    void_order_ids: tuple[str, ...] = ()  # cancelled orders: their purchases stop counting
    refunds: tuple[RefundLine, ...] = ()
    inventory_levels: tuple[InventoryLevel, ...] = ()
    identity_links: tuple[IdentityLink, ...] = ()


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
    return parsed.astimezone(timezone.utc)
