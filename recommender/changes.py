"""What a webhook delivery changes in the store: events, refunds, inventory levels, identity links.

One delivery becomes one ChangeSet, applied in one transaction. These records live apart from
`recommender.events` because only the write paths (webhooks, the pixel, history imports) build
them: `/recommend` imports none of them, and each record class costs about a millisecond to create
at import (dataclasses compile their methods), which every cold start would pay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from recommender.errors import InvalidEvent
from recommender.events import MAX_QUANTITY, CatalogProduct, EventKind, user_key


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
    currency: str | None = None  # the price's ISO 4217 code, where the source names it (an order's, a checkout's)
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
    # Read with every other location's level of its item (a backfill's `inventory_levels.json`), so the item's
    # locations are all known and their sum is its stock; an `inventory_levels/update` names one location only.
    all_locations: bool = False


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
    # Products an order's lines sell as gift cards: their catalog rows say so for good (`hidden`), a row made for one
    # the catalog has not synced yet (REST's products payload, every webhook's, cannot tell a gift card).
    gift_card_product_ids: tuple[str, ...] = ()

    def catalog_product_ids(self) -> list[str]:
        """The products whose catalog row this changes (upserted, deleted or found a gift card), sorted."""
        return sorted({p.product_id for p in self.upsert_products} | set(self.delete_product_ids)
                      | set(self.gift_card_product_ids))

    def inventory_item_ids(self) -> list[str]:
        """The inventory items that get a new level, sorted (their variants' products change stock)."""
        return sorted({level.inventory_item_id for level in self.inventory_levels})
