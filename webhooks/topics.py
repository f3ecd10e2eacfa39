"""Topic payloads → `ChangeSet`s of events and catalog rows.

Each translator takes the shop, the parsed body and the delivery id, and returns
what to store; it raises MalformedPayload when the body lacks what its topic
promises. Ids are kept as decimal strings: never through float.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

from recommender.errors import InvalidEvent
from recommender.changes import ChangeSet, Event, IdentityLink, InventoryLevel, RefundLine
from recommender.events import (HIDE_TAG, MAX_QUANTITY, PICKS_KEYS, PICKS_NAMESPACE, CatalogProduct, CatalogVariant,
                               EventKind, MerchantPicks, order_line_key, parse_timestamp)
from webhooks import MalformedPayload


@dataclass(frozen=True)
class TopicContext:
    shop: str
    topic: str
    delivery_id: str


Translator = Callable[[TopicContext, dict], ChangeSet]


def shopify_id(value: Any, field: str, required: bool = True) -> str | None:
    """An id as a decimal string: ints, digit strings and GraphQL gids are accepted; floats never."""
    if value is None or value == "":
        if required:
            raise MalformedPayload(f"{field} is missing")
        return None
    if isinstance(value, bool):
        raise MalformedPayload(f"{field} must be an id, got {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        tail = value.rsplit("/", 1)[-1] if value.startswith("gid://") else value
        if tail.isdigit():
            return tail
    raise MalformedPayload(f"{field} must be an integer id, got {value!r}")


def _token(value: Any, field: str) -> str:
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
        return str(value)
    raise MalformedPayload(f"{field} is missing or not a string")


def _list(payload: dict, field: str) -> list:
    value = payload.get(field)
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedPayload(f"{field} must be a list")
    return value


def money(value: Any, field: str = "price") -> float | None:
    """A price as a float, or None when absent. NaN and infinities are refused: float() takes "NaN", "inf" and
    "1e400", and PostgreSQL's JSON parameters (`_APPLY_EVENTS`, a backfill's page) cannot carry them."""
    if value is None or value == "":
        return None
    try:
        amount = float(value)
    except (TypeError, ValueError):
        raise MalformedPayload(f"{field} must be a decimal number, got {value!r}") from None
    if not math.isfinite(amount):
        raise MalformedPayload(f"{field} must be a finite decimal number, got {value!r}")
    return amount


def _quantity(value: Any, field: str) -> int:
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_QUANTITY:
        raise MalformedPayload(f"{field} must be an integer from 1 to {MAX_QUANTITY}, got {value!r}")
    return value


def _timestamp(payload: dict, *fields: str) -> datetime:
    for field in fields:
        if payload.get(field):
            try:
                return parse_timestamp(payload[field], field)
            except InvalidEvent as exc:
                raise MalformedPayload(str(exc)) from None
    raise MalformedPayload(f"{' or '.join(fields)} is missing")


CURRENCY_CODE = re.compile(r"^[A-Z]{3}$")  # ISO 4217, as Shopify writes a currency (an order's, a MoneyV2's)


def order_occurred_at(order: dict) -> datetime:
    """When an order's events occurred: the order's `created_at` (`processed_at` if it has none), whichever topic or
    version of the order carries it (an orders/updated of an old order is as old as the order)."""
    return _timestamp(order, "created_at", "processed_at")


def has_gift_card_line(order: dict) -> bool:
    """Whether any of an order's lines sells a gift card."""
    return any(isinstance(line, dict) and _gift_card(line) for line in _list(order, "line_items"))


def _gift_card(line: dict) -> bool:
    """Whether an order's or a cart's line sells a gift card (its `gift_card`): a means of payment, not a taste, and
    bought beside anything, so such lines teach nothing (Shopify's own recommendations never show one either). The
    pixel's views and cart adds of one cannot tell a gift card: stored as any product's, training leaves them out
    once the catalog knows it (`EventStore.interaction_columns`)."""
    return line.get("gift_card") is True


def order_created(ctx: TopicContext, order: dict) -> ChangeSet:
    """A purchase per line item that names a product; custom lines (no product_id) are skipped.

    orders/create, orders/updated and orders/paid all resend the whole order; each line is stored
    once (its dedupe key), and an order that carries `cancelled_at` counts for nothing. A gift card's line is
    stored counting for nothing too: the order's record, so the Web Pixel's purchase of it (which cannot tell a
    gift card) weighs nothing either, and a refund of it finds its line; and its product is a gift card from then
    on (`ChangeSet.gift_card_product_ids`).
    """
    order_id = shopify_id(order.get("id"), "id")
    customer = order.get("customer") or {}
    if not isinstance(customer, dict):
        raise MalformedPayload("customer must be an object")
    customer_id = shopify_id(customer.get("id"), "customer.id", required=False)
    # A guest order still teaches "bought together": key it by its cart, else by the order itself.
    anonymous_id = None if customer_id else str(order.get("cart_token") or f"order-{order_id}")
    occurred_at = order_occurred_at(order)
    cancelled = bool(order.get("cancelled_at")) or ctx.topic == "orders/cancelled"
    # the lines' `price` is in the shop's currency, which `currency` names (`presentment_currency`: what the buyer paid
    # in); kept where it is a currency code, never a reason to refuse the order
    currency = order.get("currency")
    currency = currency if isinstance(currency, str) and CURRENCY_CODE.match(currency) else None
    events, gift_cards = [], set()
    for position, line in enumerate(_list(order, "line_items")):
        if not isinstance(line, dict):
            raise MalformedPayload(f"line_items[{position}] must be an object")
        product_id = shopify_id(line.get("product_id"), f"line_items[{position}].product_id", required=False)
        if product_id is None:
            continue
        gift_card = _gift_card(line)
        if gift_card:
            gift_cards.add(product_id)
        line_id = shopify_id(line.get("id"), f"line_items[{position}].id", required=False) or str(position)
        events.append(Event(
            kind=EventKind.PURCHASE, shop=ctx.shop, product_id=product_id, occurred_at=occurred_at,
            customer_id=customer_id, anonymous_id=anonymous_id,
            variant_id=shopify_id(line.get("variant_id"), f"line_items[{position}].variant_id", required=False),
            quantity=_quantity(line.get("quantity"), f"line_items[{position}].quantity"),
            price=money(line.get("price")), currency=currency, order_id=order_id, source_topic=ctx.topic,
            delivery_id=ctx.delivery_id, dedupe_key=order_line_key(order_id, line_id),
            weight_factor=0.0 if cancelled or gift_card else 1.0,
        ))
    return ChangeSet(events=tuple(events), void_order_ids=(order_id,) if cancelled else (),
                     gift_card_product_ids=tuple(sorted(gift_cards)))


def refund_created(ctx: TopicContext, refund: dict) -> ChangeSet:
    """Each refunded line shrinks its purchase's weight by the refunded share of its quantity. A line the refund
    names more than once (units restocked to two locations, say) counts with the sum of its quantities: the stores
    apply a refund's line once (its refund and line ids are its key), so the parts are added up here."""
    refund_id = shopify_id(refund.get("id"), "id")
    order_id = shopify_id(refund.get("order_id"), "order_id")
    quantities: dict[str, int] = {}
    for position, line in enumerate(_list(refund, "refund_line_items")):
        if not isinstance(line, dict):
            raise MalformedPayload(f"refund_line_items[{position}] must be an object")
        line_item_id = shopify_id(line.get("line_item_id"), f"refund_line_items[{position}].line_item_id")
        quantity = _quantity(line.get("quantity"), f"refund_line_items[{position}].quantity")
        quantities[line_item_id] = quantities.get(line_item_id, 0) + quantity
    return ChangeSet(refunds=tuple(RefundLine(refund_id=refund_id, order_id=order_id, line_item_id=line_item_id,
                                              quantity=quantity) for line_item_id, quantity in quantities.items()))


def checkout_updated(ctx: TopicContext, checkout: dict) -> ChangeSet:
    """A checkout names both the cart token and, once the shopper logs in, the customer: link them."""
    customer = checkout.get("customer") or {}
    if not isinstance(customer, dict):
        raise MalformedPayload("customer must be an object")
    customer_id = shopify_id(customer.get("id"), "customer.id", required=False)
    cart_token = checkout.get("cart_token")
    if customer_id is None or not cart_token:
        return ChangeSet()
    return ChangeSet(identity_links=(IdentityLink(_token(cart_token, "cart_token"), customer_id),))


MAX_STOCK = MAX_QUANTITY * 1000  # units in stock, either way (Shopify's stock goes below 0 when oversold)


def _stock(value: Any, field: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or abs(value) > MAX_STOCK):
        raise MalformedPayload(f"{field} must be an integer (at most {MAX_STOCK:,} units either way) or null, "
                               f"got {value!r}")
    return value


def inventory_level_updated(ctx: TopicContext, level: dict) -> ChangeSet:
    available = _stock(level.get("available"), "available")
    return ChangeSet(inventory_levels=(InventoryLevel(
        inventory_item_id=shopify_id(level.get("inventory_item_id"), "inventory_item_id"),
        location_id=shopify_id(level.get("location_id"), "location_id"),
        available=available,
    ),))


def cart_updated(ctx: TopicContext, cart: dict) -> ChangeSet:
    """An add_to_cart per product in the cart, keyed by the cart token; a product counts once per cart (gift cards
    not at all)."""
    token = _token(cart.get("token") or cart.get("id"), "token")
    occurred_at = _timestamp(cart, "updated_at", "created_at")
    events = []
    for position, line in enumerate(_list(cart, "line_items")):
        if not isinstance(line, dict):
            raise MalformedPayload(f"line_items[{position}] must be an object")
        product_id = shopify_id(line.get("product_id"), f"line_items[{position}].product_id", required=False)
        if product_id is None or _gift_card(line):
            continue
        events.append(Event(
            kind=EventKind.ADD_TO_CART, shop=ctx.shop, product_id=product_id, occurred_at=occurred_at,
            anonymous_id=token,
            variant_id=shopify_id(line.get("variant_id"), f"line_items[{position}].variant_id", required=False),
            quantity=_quantity(line.get("quantity"), f"line_items[{position}].quantity"),
            price=money(line.get("price")), source_topic=ctx.topic, delivery_id=ctx.delivery_id,
            dedupe_key=f"cart:{token}:product:{product_id}",
        ))
    return ChangeSet(events=tuple(events))


def _variant(raw: Any, position: int) -> CatalogVariant:
    if not isinstance(raw, dict):
        raise MalformedPayload(f"variants[{position}] must be an object")
    quantity = _stock(raw.get("inventory_quantity"), f"variants[{position}].inventory_quantity")
    # Newer API versions drop `inventory_management`; a reported quantity then means tracked.
    tracked = raw["inventory_management"] is not None if "inventory_management" in raw else quantity is not None
    return CatalogVariant(
        variant_id=shopify_id(raw.get("id"), f"variants[{position}].id"),
        inventory_item_id=shopify_id(raw.get("inventory_item_id"), f"variants[{position}].inventory_item_id",
                                     required=False),
        inventory_quantity=quantity,
        tracked=tracked,
        continue_selling=raw.get("inventory_policy") == "continue",
    )


def product_tags(product: dict) -> set[str]:
    """A product's tags, trimmed and lowercased: REST gives them as one comma-separated string, GraphQL as a list."""
    tags = product.get("tags")
    if tags is None:
        return set()
    if isinstance(tags, str):
        tags = tags.split(",")
    elif not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise MalformedPayload(f"tags must be a comma-separated string or a list of strings, got {tags!r}")
    return {tag.strip().lower() for tag in tags} - {""}


def hidden_reason(product: dict, prices: list[float | None] | None = None) -> str | None:
    """Why no answer may show this product though it may be for sale (recommender.events.HIDDEN_REASONS), or None:
    a gift card (`gift_card`, which the GraphQL backfill gives from `isGiftCard`), tagged HIDE_TAG, or every variant
    priced 0 (a product with no variant or a price unknown is not free). `prices`: each variant's, if read already."""
    if prices is None:
        prices = [money(v.get("price") if isinstance(v, dict) else None) for v in _list(product, "variants")]
    if product.get("gift_card") is True:
        return "gift_card"
    if HIDE_TAG in product_tags(product):
        return "tag"
    if prices and all(price is not None and price <= 0 for price in prices):
        return "free"
    return None


def merchant_picks(product: dict) -> MerchantPicks | None:
    """The merchant's picks for the product's page from its `metafields` (PICKS_NAMESPACE's `related_products` and
    `complementary_products`: each a JSON list of product GIDs, as a string), or None where the payload carries no
    `metafields` (a subscription not asking for the namespace: the stored picks stand). A payload that carries them
    without one of the two has none of that kind: the merchant removed them, or never picked any. The product itself
    and repeats are left out, in the merchant's order."""
    if "metafields" not in product:
        return None
    chosen: dict[str, tuple[str, ...]] = {}
    for position, field in enumerate(_list(product, "metafields")):
        if (not isinstance(field, dict) or field.get("namespace") != PICKS_NAMESPACE
                or field.get("key") not in PICKS_KEYS):
            continue
        where = f"metafields[{position}] ({field.get('key')})"
        value = field.get("value")
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise MalformedPayload(f"{where}: value must be a JSON list of product ids") from None
        if value is None:
            value = []
        if not isinstance(value, list):
            raise MalformedPayload(f"{where}: value must be a list of product ids, got {value!r}")
        ids = (shopify_id(item, f"{where}[{k}]") for k, item in enumerate(value))
        chosen[PICKS_KEYS[field["key"]]] = tuple(dict.fromkeys(pid for pid in ids if pid != str(product.get("id"))))
    return MerchantPicks(**chosen)


def product_upserted(ctx: TopicContext, product: dict) -> ChangeSet:
    product_id = shopify_id(product.get("id"), "id")
    variants = tuple(_variant(v, i) for i, v in enumerate(_list(product, "variants")))
    listed = [money(v.get("price")) for v in _list(product, "variants")]
    prices = [p for p in listed if p is not None]
    image = product.get("image") if isinstance(product.get("image"), dict) else None
    images = [i for i in _list(product, "images") if isinstance(i, dict)]
    image_url = (image or (images[0] if images else {})).get("src")
    published_at = product.get("published_at")
    row = CatalogProduct(
        shop=ctx.shop,
        product_id=product_id,
        title=str(product.get("title") or ""),
        handle=str(product.get("handle") or ""),
        status=str(product.get("status") or "active"),
        published_at=_timestamp(product, "published_at") if published_at else None,
        price=min(prices) if prices else None,
        image_url=image_url,
        product_type=str(product.get("product_type") or ""),
        vendor=str(product.get("vendor") or ""),
        updated_at=_timestamp(product, "updated_at") if product.get("updated_at") else None,
        variants=variants,
        hidden=hidden_reason(product, listed),
        picks=merchant_picks(product),
    )
    return ChangeSet(upsert_products=(row,))


def product_deleted(ctx: TopicContext, product: dict) -> ChangeSet:
    return ChangeSet(delete_product_ids=(shopify_id(product.get("id"), "id"),))


TRANSLATORS: dict[str, Translator] = {
    "orders/create": order_created,
    "orders/updated": order_created,
    "orders/paid": order_created,
    "orders/cancelled": order_created,
    "refunds/create": refund_created,
    "checkouts/create": checkout_updated,
    "checkouts/update": checkout_updated,
    "inventory_levels/update": inventory_level_updated,
    "carts/create": cart_updated,
    "carts/update": cart_updated,
    "products/create": product_upserted,
    "products/update": product_upserted,
    "products/delete": product_deleted,
}
