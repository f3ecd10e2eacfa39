"""The event store: every event and catalog row, durable before a webhook is acknowledged.

`open_event_store(url)` picks the implementation from `EVENT_STORE_URL`: this
module's SQLite store (`sqlite:///path`) or `recommender.store_postgres`
(`postgresql://…`), which behave the same way and pass the same tests
(tests/test_store.py). The SQLite store runs in WAL mode with `synchronous=FULL`,
so a committed delivery survives a crash; each connection belongs to one thread
(gunicorn serves with threads), and idempotency is enforced by UNIQUE
constraints, not by memory.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable, Mapping, NamedTuple, Protocol, Sequence

from recommender.errors import ConfigError, StoreError
from recommender.events import CatalogProduct, CatalogVariant, EventKind, MerchantPicks, order_line_key

if TYPE_CHECKING:
    from recommender.changes import ChangeSet, Delivery, Event  # written by the webhook paths, not read here
    from recommender.event_columns import ColumnTexts, InteractionColumns  # numpy: read where columns are read

log = logging.getLogger(__name__)

# A product is not for sale when it is deleted, not active, unpublished, or has variants and none of them can be
# bought (none untracked, none selling past zero, none in stock). Written against the `products` table by name, so
# the same text serves UPDATE products and SELECT … FROM products ({yes}/{no}: boolean literals). Migration 6, which
# set the first flags, reads this (a migration's text never changes: the `hidden` column came with migration 12).
NOT_ON_SALE = """(
    products.deleted = {yes} OR products.status <> 'active' OR products.published_at IS NULL
    OR (EXISTS (SELECT 1 FROM variants v WHERE v.shop = products.shop AND v.product_id = products.product_id)
        AND NOT EXISTS (SELECT 1 FROM variants v WHERE v.shop = products.shop AND v.product_id = products.product_id
                        AND (v.tracked = {no} OR v.continue_selling = {yes} OR COALESCE(v.inventory_quantity, 0) > 0))))"""
# A product with variants none of which holds stock on hand or goes untracked: for sale only where one sells past zero
# (Shopify's "continue selling when out of stock"). Complementary answers leave such a product out, as Shopify's own
# do: a "pair it with" product must ship with the cart (its stock above 0), where a related one may be backordered.
# Migration 13, which set the first `backordered` flags, reads this text.
NOTHING_ON_HAND = """(
    EXISTS (SELECT 1 FROM variants v WHERE v.shop = products.shop AND v.product_id = products.product_id)
    AND NOT EXISTS (SELECT 1 FROM variants v WHERE v.shop = products.shop AND v.product_id = products.product_id
                    AND (v.tracked = {no} OR COALESCE(v.inventory_quantity, 0) > 0)))"""
# What no answer shows: a product not on sale, or one hidden (a gift card, free, or tagged HIDE_TAG: the reason is
# its `hidden`, recommender.events).
NOT_FOR_SALE = "(products.hidden IS NOT NULL OR " + NOT_ON_SALE + ")"
# An upsert's new reason, both backends: a gift card stays one (Shopify makes a product a gift card when it is
# created, and only GraphQL says so: a REST-shaped products payload, every webhook's, cannot undo it).
HIDDEN_ON_UPDATE = "CASE WHEN products.hidden = 'gift_card' THEN products.hidden ELSE excluded.hidden END"
# An upsert's merchant picks: a payload that carried no metafields (NULL) leaves the stored ones (both backends).
PICKS_ON_UPDATE = "COALESCE(excluded.picks, products.picks)"

# A variant's stock after a stock level of its inventory item is stored, as an SQL expression over the item's levels
# (`{total}`: their sum over the locations that track it; `{known}`: whether every location's level is known) and
# the variant's row, the same on both backends. An `inventory_levels/update` carries one location's new level and
# nothing else (no previous level, no total), and a location never heard from is not a location holding 0: the sum
# of the levels heard since the install is not the stock while some location has never reported. The products
# payload's `inventory_quantity` (`listed_quantity`: Shopify's total over all locations when it was sent; NULL when
# it did not track the variant) stays the floor until the item's locations are known: a level raises the stock above
# it, never below it, so one location's report can make a variant sellable but not unsellable (location B counting 0
# cannot hide what location A still holds). A wrong "sold out" hides a product the shop sells from every answer; a
# wrong "in stock" shows one whose product page says sold out, until the next products payload sets the total again.
# Once a backfill has read every location's level of the item (`inventory_levels.all_locations`), the sum is exact
# and is the stock, either way.
STOCK_OF_VARIANT = ("CASE WHEN {known} OR listed_quantity IS NULL OR {total} >= listed_quantity THEN {total}"
                    " ELSE listed_quantity END")

# Each entry migrates the schema from version i to i + 1 (PRAGMA user_version).
SQLITE_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE deliveries (
        shop TEXT NOT NULL,
        webhook_id TEXT NOT NULL,
        topic TEXT NOT NULL,
        event_id TEXT,
        received_at TEXT NOT NULL,
        PRIMARY KEY (shop, webhook_id)
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        shop TEXT NOT NULL,
        kind TEXT NOT NULL,
        user_key TEXT NOT NULL,
        customer_id TEXT,
        anonymous_id TEXT,
        product_id TEXT NOT NULL,
        variant_id TEXT,
        quantity INTEGER NOT NULL,
        price REAL,
        order_id TEXT,
        occurred_at TEXT NOT NULL,
        source_topic TEXT NOT NULL,
        delivery_id TEXT NOT NULL,
        dedupe_key TEXT,
        UNIQUE (shop, dedupe_key)
    );
    CREATE INDEX events_by_user ON events (shop, user_key, occurred_at);
    CREATE TABLE products (
        shop TEXT NOT NULL,
        product_id TEXT NOT NULL,
        title TEXT NOT NULL,
        handle TEXT NOT NULL,
        status TEXT NOT NULL,
        published_at TEXT,
        price REAL,
        image_url TEXT,
        product_type TEXT NOT NULL,
        vendor TEXT NOT NULL,
        updated_at TEXT,
        deleted INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (shop, product_id)
    );
    CREATE TABLE variants (
        shop TEXT NOT NULL,
        variant_id TEXT NOT NULL,
        product_id TEXT NOT NULL,
        inventory_item_id TEXT,
        inventory_quantity INTEGER,
        tracked INTEGER NOT NULL,
        continue_selling INTEGER NOT NULL,
        PRIMARY KEY (shop, variant_id)
    );
    CREATE INDEX variants_by_product ON variants (shop, product_id);
    """,
    """
    ALTER TABLE events ADD COLUMN weight_factor REAL NOT NULL DEFAULT 1.0;
    CREATE INDEX events_by_order ON events (shop, order_id);
    CREATE INDEX events_by_anonymous ON events (shop, anonymous_id);
    CREATE INDEX events_by_time ON events (shop, occurred_at);
    CREATE INDEX variants_by_inventory_item ON variants (shop, inventory_item_id);
    CREATE TABLE identity_links (
        shop TEXT NOT NULL,
        anonymous_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        PRIMARY KEY (shop, anonymous_id)
    );
    CREATE TABLE inventory_levels (
        shop TEXT NOT NULL,
        inventory_item_id TEXT NOT NULL,
        location_id TEXT NOT NULL,
        available INTEGER,
        PRIMARY KEY (shop, inventory_item_id, location_id)
    );
    CREATE TABLE adjustments (
        shop TEXT NOT NULL,
        adjustment_key TEXT NOT NULL,
        PRIMARY KEY (shop, adjustment_key)
    );
    """,
    """
    CREATE INDEX events_by_customer ON events (shop, customer_id);
    CREATE INDEX events_by_occurred_at ON events (occurred_at);
    CREATE INDEX deliveries_by_received_at ON deliveries (received_at);
    CREATE INDEX identity_links_by_customer ON identity_links (shop, customer_id);
    CREATE TABLE data_exports (
        shop TEXT NOT NULL,
        export_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (shop, export_id)
    );
    CREATE TABLE shop_state (
        shop TEXT PRIMARY KEY,
        installed INTEGER NOT NULL,
        changed_at TEXT NOT NULL
    );
    """,
    # Whether each product is for sale, kept at write time so the catalog snapshot is an index read.
    "ALTER TABLE products ADD COLUMN sellable INTEGER NOT NULL DEFAULT 1;"
    f" UPDATE products SET sellable = 0 WHERE {NOT_ON_SALE.format(yes='1', no='0')};"
    " CREATE INDEX products_by_sellable ON products (shop, sellable);",
    # The training job's queue (retraining.py): when it last started each shop, what the shop's last finished
    # training took, how many of its trainings in a row were started and never finished (cut off), and whether it
    # was the first shop the last run's time budget left out.
    "ALTER TABLE shop_state ADD COLUMN train_started_at TEXT;"
    " ALTER TABLE shop_state ADD COLUMN train_seconds REAL;"
    " ALTER TABLE shop_state ADD COLUMN train_unfinished INTEGER NOT NULL DEFAULT 0;"
    " ALTER TABLE shop_state ADD COLUMN train_deferred INTEGER NOT NULL DEFAULT 0;",
    # The training runs going on (retraining.py), each saying it is alive every so often, and which run last
    # started each shop: a shop whose run is alive is that run's (being trained or trained), not cut off.
    "ALTER TABLE shop_state ADD COLUMN train_run TEXT;"
    " CREATE TABLE training_runs (run_id TEXT PRIMARY KEY, started_at TEXT NOT NULL, alive_at TEXT NOT NULL);",
    # Refund lines whose order line was not stored when they came (orders/create still being retried, an order from
    # before the install and backfilled later): each waits here, keyed as its adjustment, until the purchase with
    # its line's dedupe key is inserted, which it then shrinks in the same transaction, and leaves.
    "CREATE TABLE pending_refunds (shop TEXT NOT NULL, adjustment_key TEXT NOT NULL, order_id TEXT NOT NULL,"
    " dedupe_key TEXT NOT NULL, quantity INTEGER NOT NULL, received_at TEXT NOT NULL,"
    " PRIMARY KEY (shop, adjustment_key));"
    " CREATE INDEX pending_refunds_by_line ON pending_refunds (shop, dedupe_key);",
    # Stock levels no longer hide what a location never heard from holds (`STOCK_OF_VARIANT`): each variant keeps
    # its products payload's total, and each level whether a backfill read it with the item's other locations'. A
    # variant's total is taken from its stock as stored (a sum of the levels heard, if one replaced the payload's),
    # until its product's next payload.
    "ALTER TABLE variants ADD COLUMN listed_quantity INTEGER;"
    " UPDATE variants SET listed_quantity = inventory_quantity WHERE tracked = 1;"
    " ALTER TABLE inventory_levels ADD COLUMN all_locations INTEGER NOT NULL DEFAULT 0;",
    # What customers/redact erased (`redact_customer`): the customer, and each order it named, with when. The
    # operator's paths (`import`, `backfill`) read them and store none of it again from an old file or from Shopify.
    # `kind` is 'customer' or 'order'; shop/redact deletes the shop's rows with the rest.
    "CREATE TABLE redactions (shop TEXT NOT NULL, kind TEXT NOT NULL, redacted_id TEXT NOT NULL,"
    " redacted_at TEXT NOT NULL, PRIMARY KEY (shop, kind, redacted_id));",
    # What storefronts did with `/recommend`'s answers (recommender.attribution): a row per product an answer showed
    # (`kind` 'view', `position` its place in the answer) or a click named ('click'), keyed by the pixel's client id,
    # one per pixel event and product. Apart from `events`, so that training never reads them; pruned and erased with
    # the shop's events.
    "CREATE TABLE recommendation_events (shop TEXT NOT NULL, event_id TEXT NOT NULL, product_id TEXT NOT NULL,"
    " kind TEXT NOT NULL, recommendation_id TEXT NOT NULL, intent TEXT NOT NULL, position INTEGER NOT NULL,"
    " client_id TEXT NOT NULL, occurred_at TEXT NOT NULL, PRIMARY KEY (shop, event_id, product_id));"
    " CREATE INDEX recommendation_events_by_time ON recommendation_events (shop, occurred_at);"
    " CREATE INDEX recommendation_events_by_occurred_at ON recommendation_events (occurred_at);"
    " CREATE INDEX recommendation_clicks_by_client ON recommendation_events (shop, client_id, product_id, occurred_at)"
    " WHERE kind = 'click';",
    # The currency of an event's price (ISO 4217), where its source names it: a checkout's lines are priced in the
    # currency the shopper paid in, which for a shop selling in several is not the shop's own (attribution's revenue).
    "ALTER TABLE events ADD COLUMN currency TEXT;",
    # Why no answer shows a product that may be for sale (recommender.events.HIDDEN_REASONS): a gift card, every
    # variant free, or the merchant's HIDE_TAG. NULL: shown when for sale (every row written before this migration).
    "ALTER TABLE products ADD COLUMN hidden TEXT;",
    # Which products for sale have nothing on hand (NOTHING_ON_HAND: sold past zero only), which complementary
    # answers leave out; a partial index, as few products are, so the catalog snapshot reads them from it.
    "ALTER TABLE products ADD COLUMN backordered INTEGER NOT NULL DEFAULT 0;"
    f" UPDATE products SET backordered = 1 WHERE sellable = 1 AND {NOTHING_ON_HAND.format(no='0')};"
    " CREATE INDEX products_backordered ON products (shop) WHERE backordered = 1;",
    # The merchant's picks for each product's page (recommender.events.MerchantPicks: '' none, NULL never named), read
    # with the catalog snapshot from a partial index, as few products have any.
    "ALTER TABLE products ADD COLUMN picks TEXT;"
    " CREATE INDEX products_with_picks ON products (shop) WHERE picks <> '';",
)

# Every table that holds a shop's data, in both backends: what redact_shop empties.
SHOP_TABLES: tuple[str, ...] = (
    "events", "deliveries", "products", "variants", "inventory_levels", "identity_links", "adjustments",
    "pending_refunds", "data_exports", "shop_state", "redactions", "recommendation_events",
)

# Topics that can arrive after the app was removed, so their delivery does not prove it is installed.
TOPICS_NOT_PROVING_INSTALL = frozenset({"app/uninstalled", "shop/redact", "customers/redact", "customers/data_request"})

# The start of the source_topic of events a storefront's Web Pixel posted (`/collect`, webhooks.pixel). Those requests
# are unsigned: their anonymous id is whatever the sender wrote, so no identity link ever joins them to a customer.
PIXEL_SOURCE_PREFIX = "pixel/"


# The start of the dedupe key of a pixel client's cart signal for a product (webhooks.pixel): one row that holds the
# latest of its beacons by their time (an add 1, a removal 0), whichever arrives first. Every other key's row is only
# ever lowered by a repeat (a refund, a cancellation, a line seen again).
CART_STATE_PREFIX = "pixel-cart:"
# What a later event of such a key replaces in its row, besides the weight factor (both backends).
CART_STATE_COLUMNS = ("occurred_at", "source_topic", "delivery_id", "variant_id", "price", "currency")


def latest_wins(dedupe_key: str | None) -> bool:
    """The row of this dedupe key holds its latest event (`CART_STATE_PREFIX`), not its lowest weight."""
    return dedupe_key is not None and dedupe_key.startswith(CART_STATE_PREFIX)


def later(event: Event, than: Event) -> bool:
    """`event` replaces `than` under a `latest_wins` key: it happened later or, at the same time, weighs less (an add
    and a removal at one instant leave the product out of the cart, whichever arrives first)."""
    return (event.occurred_at, -event.weight_factor) > (than.occurred_at, -than.weight_factor)


def not_from_pixel(source_topic: str = "source_topic") -> str:
    """SQL, both backends: the row of column `source_topic` is not a pixel's event (`PIXEL_SOURCE_PREFIX`)."""
    return f"substr({source_topic}, 1, {len(PIXEL_SOURCE_PREFIX)}) <> '{PIXEL_SOURCE_PREFIX}'"


def from_pixel(source_topic: str = "source_topic") -> str:
    """SQL, both backends: the row of column `source_topic` is a pixel's event (`PIXEL_SOURCE_PREFIX`)."""
    return f"substr({source_topic}, 1, {len(PIXEL_SOURCE_PREFIX)}) = '{PIXEL_SOURCE_PREFIX}'"


# One order seen twice: by the pixel's checkout_completed (unsigned, keyed by its client) and by the signed orders
# webhook (keyed by the customer or cart token). The webhook's purchase is the record: a pixel's purchase of an order
# and product that a purchase of any other source (a webhook, a backfill, an import) holds weighs 0, stored so or set
# to 0 when that one comes, in either order. Never the other way: a pixel's row, forged or not, lowers no other.
# SQL, both backends: such a purchase is stored (`{shop}`, `{order_id}`, `{product_id}`: the pixel purchase's values).
SIGNED_PURCHASE_OF = ("EXISTS (SELECT 1 FROM events AS s WHERE s.shop = {shop} AND s.order_id = {order_id}"
                      " AND s.product_id = {product_id} AND s.kind = 'purchase' AND "
                      + not_from_pixel("s.source_topic") + ")")

# What customers/redact erased is not stored again (`redactions`, migration 9): an event of an order it named, or of
# its customer that occurred at or before the customer's redaction (an order's events occur at its created_at; an
# event after it is new data of a customer who came back, and is stored). The event's own customer id is read, not a
# cart token's link (the redaction deleted the customer's links). SQL, both backends (`{shop}`, `{order_id}`,
# `{customer_id}`, `{occurred_at}`: the event's values): such an event, each look an index read of the primary key.
# `Redactions.withholds` is the same rule in Python, for import and backfill to count what they leave out.
REDACTED_EVENT = ("(EXISTS (SELECT 1 FROM redactions AS x WHERE x.shop = {shop} AND x.kind = 'order'"
                  " AND x.redacted_id = {order_id})"
                  " OR EXISTS (SELECT 1 FROM redactions AS x WHERE x.shop = {shop} AND x.kind = 'customer'"
                  " AND x.redacted_id = {customer_id} AND x.redacted_at >= {occurred_at}))")


def log_withheld(shop: str, topic: str, delivery_id: str, withheld: int) -> None:
    """The events of a delivery `REDACTED_EVENT` kept out (the delivery itself is stored and acknowledged)."""
    log.info("%s delivery %s of %s: %d event(s) not stored, of a customer or order customers/redact erased",
             topic, delivery_id, shop, withheld)


# The columns of `events` a customer's data export lists, in this order, in both backends.
EVENT_EXPORT_COLUMNS: tuple[str, ...] = (
    "id", "shop", "kind", "user_key", "customer_id", "anonymous_id", "product_id", "variant_id", "quantity", "price",
    "order_id", "occurred_at", "source_topic", "delivery_id", "dedupe_key", "weight_factor", "currency",
)


# --- attribution (recommender.attribution) -----------------------------------------------------------------------
# What storefronts did with `/recommend`'s answers, as a theme publishes it and the pixel forwards it to `/collect`
# (`recommendations_viewed`, `recommendations_clicked`), kept in `recommendation_events` (migration 10), never in
# `events`: training does not read them.

SIGNAL_VIEW, SIGNAL_CLICK = "view", "click"  # `recommendation_events.kind`


class RecommendationSignal(NamedTuple):
    """A product an answer showed (`SIGNAL_VIEW`: one per product of a `recommendations_viewed` event, `position` its
    place in the answer) or the product a click named (`SIGNAL_CLICK`), keyed by the pixel's client id; stored once per
    pixel event id and product."""

    shop: str
    kind: str
    event_id: str
    client_id: str
    recommendation_id: str
    intent: str
    product_id: str
    position: int
    occurred_at: datetime


class RecommendationClick(NamedTuple):
    """A stored click on a product of an answer (`EventStore.recommendation_clicks`)."""

    client_id: str
    product_id: str
    occurred_at: datetime
    intent: str
    recommendation_id: str
    event_id: str


class PixelPurchase(NamedTuple):
    """A purchase the pixel sent (`checkout_completed`) of a product its browser clicked in an answer, its order not
    cancelled (`EventStore.attributable_purchases`): one order line."""

    client_id: str
    product_id: str
    occurred_at: datetime
    quantity: int
    price: float | None  # the variant's price as the checkout listed it (before discounts)
    order_id: str | None
    dedupe_key: str | None
    # the share of the line's units the signed webhooks still count: their line of the same order and product, after
    # its refunds (1 where they stored none; 0.5: one unit of two refunded)
    kept: float = 1.0
    currency: str | None = None  # the checkout's (ISO 4217); None for a line stored before migration 11


# The columns of `recommendation_events` a beacon writes, in RecommendationSignal's order, in both backends.
RECOMMENDATION_EVENT_COLUMNS: tuple[str, ...] = (
    "shop", "kind", "event_id", "client_id", "recommendation_id", "intent", "product_id", "position", "occurred_at")

# The shop's signals between two times ({p}: the dialect's marker; parameters shop, since, until).
_SIGNALS_BETWEEN = " FROM recommendation_events WHERE shop = {p} AND occurred_at >= {p} AND occurred_at <= {p}"
# The answers viewed (distinct recommendation ids), the products they showed and the products clicked in them (each a
# distinct pair of answer and product: an answer viewed twice, or a product clicked twice in it, counts once).
_SIGNAL_COUNTS = ("count(DISTINCT CASE WHEN kind = 'view' THEN recommendation_id END),"
                  " count(DISTINCT CASE WHEN kind = 'view' THEN recommendation_id || ' ' || product_id END),"
                  " count(DISTINCT CASE WHEN kind = 'click' THEN recommendation_id || ' ' || product_id END)")
# Per intent, then for every intent together (intent NULL); parameters shop, since, until, twice.
RECOMMENDATION_SUMMARY_SQL = ("SELECT intent, " + _SIGNAL_COUNTS + _SIGNALS_BETWEEN + " GROUP BY intent"
                              " UNION ALL SELECT NULL, " + _SIGNAL_COUNTS + _SIGNALS_BETWEEN)
# A control group's answer's recommendation_id starts with these two hex digits, and no other answer's does (its id is
# drawn again: recommender.intents.model_answer_id): the report tells the arms apart by the id alone.
CONTROL_ID_PREFIX = "00"
ARM_MODEL, ARM_CONTROL = "model", "control"  # an answer's arm (recommender.intents' `arm`, the report's `by_arm`)
# Each answer of every intent but trending (no control group is drawn from it) that was viewed or clicked: its id,
# the products it showed, the products clicked in it; parameters shop, since, until. The report's arms are sums of
# these, and their intervals take each answer as one unit.
RECOMMENDATION_ANSWERS_SQL = ("SELECT recommendation_id, count(DISTINCT CASE WHEN kind = 'view' THEN product_id END),"
                              " count(DISTINCT CASE WHEN kind = 'click' THEN product_id END)" + _SIGNALS_BETWEEN
                              + " AND intent <> 'trending' GROUP BY recommendation_id")
RECOMMENDATION_CLICKS_SQL = ("SELECT client_id, product_id, occurred_at, intent, recommendation_id, event_id"
                             + _SIGNALS_BETWEEN + " AND kind = 'click'")
# A signed webhook's purchase of the order of the pixel's purchase `e` ({weighing}: and that still counts).
_SIGNED_LINE_OF_ORDER = ("EXISTS (SELECT 1 FROM events w WHERE w.shop = e.shop AND w.order_id = e.order_id"
                         " AND w.kind = 'purchase' AND " + not_from_pixel("w.source_topic") + "{weighing})")
# The pixel's purchases between two times of a product their browser (the same client id) clicked in an answer at or
# after a time and not after the purchase; parameters shop, since, until, and the clicks' since. Whatever their own
# weight factor (a pixel purchase whose order and product the signed webhooks stored too weighs 0, `SIGNED_PURCHASE_OF`,
# so that training counts the order once), but not those of a cancelled order: where the signed webhooks stored the order, it counts if one of
# its lines still does (a cancellation voids them all, and so does a refund of every line); where they did not, the
# pixel's line counts if its own weight does (a cancellation voids the pixel's lines of the order as well).
ATTRIBUTABLE_PURCHASES_SQL = (
    "SELECT e.anonymous_id, e.product_id, e.occurred_at, e.quantity, e.price, e.currency, e.order_id, e.dedupe_key,"
    # the units of the product the signed webhooks stored in the same order, the share of them refunds left (NULL: none)
    " (SELECT SUM(w.weight_factor * w.quantity) / SUM(w.quantity) FROM events w WHERE w.shop = e.shop"
    " AND w.order_id = e.order_id AND w.product_id = e.product_id AND w.kind = 'purchase' AND w.quantity > 0"
    " AND " + not_from_pixel("w.source_topic") + ") FROM events e"
    " WHERE e.shop = {p} AND e.kind = 'purchase' AND e.occurred_at >= {p} AND e.occurred_at <= {p}"
    " AND " + from_pixel("e.source_topic") +
    " AND EXISTS (SELECT 1 FROM recommendation_events c WHERE c.shop = e.shop AND c.kind = 'click'"
    " AND c.client_id = e.anonymous_id AND c.product_id = e.product_id AND c.occurred_at >= {p}"
    " AND c.occurred_at <= e.occurred_at)"
    " AND CASE WHEN " + _SIGNED_LINE_OF_ORDER.format(weighing="")
    + " THEN " + _SIGNED_LINE_OF_ORDER.format(weighing=" AND w.weight_factor > 0")
    + " ELSE e.weight_factor > 0 END"
)


class CatalogState(NamedTuple):
    """What a shop's answers leave out, by its products' flags: `unsellable`, not for sale (no answer shows one), and
    `backordered`, for sale with nothing on hand (NOTHING_ON_HAND: no complementary answer shows one); and what they
    show first: each product's `picks`, the merchant's, for the products that have any."""

    unsellable: frozenset[str]
    backordered: frozenset[str]
    picks: Mapping[str, MerchantPicks] = MappingProxyType({})


# The state of a shop not installed: nothing is read for it.
NOTHING_LEFT_OUT = CatalogState(frozenset(), frozenset())


class ProductCard(NamedTuple):
    """What a storefront shows of a recommended product: its catalog row's display fields and whether it is for
    sale now (active, published, and a variant can be bought or there is no variant data), read in one statement
    for an answer's products (and kept with the catalog snapshot: `recommender.catalog`)."""

    title: str
    handle: str
    price: float | None
    image_url: str | None
    available: bool
    product_type: str
    vendor: str


class Interaction(NamedTuple):
    """One stored event as training and fold-in see it (a named tuple: training reads millions of them)."""

    user_key: str
    product_id: str
    kind: EventKind
    occurred_at: datetime
    order_id: str | None = None
    weight_factor: float = 1.0  # < 1 after a refund; events voided to 0 are never returned


class ActivityBucket(NamedTuple):
    """Events of one kind on one product on one UTC day, their weight factors summed."""

    product_id: str
    kind: EventKind
    day: str  # YYYY-MM-DD
    mass: float


_INTERACTION_COLUMNS = "user_key, product_id, kind, occurred_at, order_id, weight_factor"

# One customer's events: keyed to them, or still anonymous under a cart token linked to them.
_SQLITE_CUSTOMER_EVENTS = (
    "shop = :shop AND (customer_id = :customer_id OR user_key = :user_key"
    " OR (customer_id IS NULL AND anonymous_id IN"
    " (SELECT anonymous_id FROM identity_links WHERE shop = :shop AND customer_id = :customer_id)))"
)


# `REDACTED_EVENT` with SQLite's named markers: parameters (shop, order_id, customer_id, occurred_at), in order.
_SQLITE_REDACTED_EVENT = REDACTED_EVENT.format(shop="?1", order_id="?2", customer_id="?3", occurred_at="?4")


KINDS = {kind.value: kind for kind in EventKind}  # a dict lookup is several times faster than EventKind(value)


def _interaction(row: tuple) -> Interaction:
    user, product, kind, occurred_at, order_id, factor = row
    return Interaction(user, product, KINDS[kind], datetime.fromisoformat(occurred_at), order_id, factor)


class EventStore(Protocol):
    """What every backend does; reads and writes raise StoreError when the database fails."""

    def apply(self, delivery: Delivery, changes: ChangeSet) -> int | None: ...
    def apply_many(self, items: Sequence[tuple[Delivery, ChangeSet]]) -> list[int | None]: ...
    def add_events(self, events: Iterable[Event]) -> int: ...
    def add_events_if_installed(self, shop: str, events: Sequence[Event]) -> int | None: ...
    def shops(self) -> list[str]: ...
    def interactions(self, shop: str) -> list[Interaction]: ...
    def interaction_columns(self, shop: str, times: bool = False) -> InteractionColumns: ...
    def history(self, shop: str, user_key: str, limit: int) -> list[Interaction]: ...
    def installed_with_histories(self, shop: str, user_keys: Sequence[str],
                                 limit: int) -> tuple[bool, list[list[Interaction]]]: ...
    def installed_with_histories_and_unsellable(self, shop: str, user_keys: Sequence[str], limit: int
                                                ) -> tuple[bool, list[list[Interaction]], CatalogState]: ...
    def products(self, shop: str, product_ids: Collection[str] | None = None) -> dict[str, CatalogProduct]: ...
    def product_cards(self, shop: str, product_ids: Collection[str]) -> dict[str, ProductCard]: ...
    def deleted_product_ids(self, shop: str) -> set[str]: ...
    def unsellable_product_ids(self, shop: str) -> set[str]: ...
    def catalog_state(self, shop: str) -> CatalogState: ...
    def products_matching(self, shop: str, product_type: str | None, vendor: str | None) -> set[str]: ...
    def gift_card_product_ids(self, shop: str) -> set[str]: ...
    def activity_since(self, shop: str, since: datetime, product_id: str | None = None) -> list[ActivityBucket]: ...
    # Privacy and lifecycle (Shopify's mandatory webhooks, uninstalls, retention).
    def redact_customer(self, shop: str, customer_id: str, order_ids: Sequence[str]) -> int: ...
    def redact_shop(self, shop: str) -> None: ...
    def redacted(self, shop: str) -> Redactions: ...
    def export_customer(self, shop: str, customer_id: str, order_ids: Sequence[str] = ()) -> dict: ...
    def save_data_export(self, shop: str, export_id: str, customer_id: str, body: dict) -> None: ...
    def data_export(self, shop: str, export_id: str) -> dict | None: ...
    def set_shop_installed(self, shop: str, installed: bool) -> None: ...
    def mark_uninstalled(self, delivery: Delivery) -> bool | None: ...
    def is_shop_installed(self, shop: str) -> bool: ...
    def installed_with_unsellable(self, shop: str) -> tuple[bool, CatalogState]: ...
    def installed_shops(self) -> list[str]: ...
    def training_queue(self) -> list["QueuedShop"]: ...
    def training_run_began(self, run: str, at: datetime | None = None) -> None: ...
    def training_run_alive(self, run: str, at: datetime | None = None) -> None: ...
    def training_run_ended(self, run: str) -> None: ...
    def training_started(self, shop: str, at: datetime, run: str | None = None,
                         expect_started_at: object = ...) -> bool: ...
    def training_finished(self, shop: str, seconds: float | None, run: str | None = None) -> bool: ...
    def training_deferred(self, shop: str, expect_started_at: object = ...) -> bool: ...
    def close_thread_connection(self) -> None: ...
    def prune_events(self, older_than: datetime) -> int: ...
    def close(self) -> None: ...
    # Attribution (recommender.attribution): storefronts' views and clicks of answers, kept apart from `events`.
    def add_beacon_if_installed(self, shop: str, events: Sequence[Event],
                                signals: Sequence[RecommendationSignal]) -> tuple[int, int] | None: ...
    def recommendation_summary(self, shop: str, since: datetime,
                               until: datetime) -> list[tuple[str | None, int, int, int]]: ...
    def recommendation_answers(self, shop: str, since: datetime, until: datetime) -> list[tuple[str, int, int]]: ...
    def recommendation_clicks(self, shop: str, since: datetime, until: datetime) -> list[RecommendationClick]: ...
    def attributable_purchases(self, shop: str, since: datetime, until: datetime) -> list[PixelPurchase]: ...


_INSTALLED_SQL = "SELECT 1 FROM shop_state WHERE shop = ? AND installed = 1"


class Redactions(NamedTuple):
    """What customers/redact erased in one shop (`EventStore.redacted`): what no webhook, import or backfill stores
    again (`withholds`)."""

    customers: Mapping[str, datetime]  # each redacted customer's id → the time of their latest redaction
    order_ids: frozenset[str]

    def withholds(self, order_id: str | None, customer_id: str | None, occurred_at: datetime) -> bool:
        """Whether an event of this order and customer that occurred then is one the redactions erased
        (`REDACTED_EVENT`, the stores' own check): of an order they named, or of their customer, at or before the
        customer's redaction."""
        if order_id is not None and order_id in self.order_ids:
            return True
        redacted_at = self.customers.get(customer_id) if customer_id is not None else None
        return redacted_at is not None and occurred_at <= redacted_at


class QueuedShop(NamedTuple):
    """An installed shop in the training job's queue."""

    shop: str
    expected_seconds: float | None  # what its last finished training took (None: none finished yet)
    unfinished: int  # its trainings in a row that were started and never finished: killed, or still going on
    started_at: datetime | None = None  # when its last training was started (None: never)
    run_alive_at: datetime | None = None  # when the run that started it last said it was alive (None: that run
    # has ended, or the shop was started before migration 6)
    run_silent_seconds: float | None = None  # how long ago that was, by the event store's clock


# The training job's order ({never_started}: how the backend sorts a shop never started first):
# - a shop whose last training was cut off once (it may only have been started too late for the timeout), with the
#   whole run before it;
# - the shop the last run's budget left out first (its last time did not fit in what was left), so that a shop
#   needing most of a run gets one, whatever new shops are installed meanwhile;
# - the others, never started first (a new shop's first model), then the one started longest ago;
# - last, a shop cut off twice or more in a row: it dies whenever it runs (more memory or time than the function
#   has) and would take the shops after it down with it.
# ({silent}: the seconds since the run's alive_at by the database's clock, one clock for every run's writes and
# reads: the processes of runs on different machines may disagree.)
_TRAINING_QUEUE_SQL = ("SELECT s.shop, s.train_seconds, s.train_unfinished, s.train_started_at, r.alive_at, {silent}"
                      " FROM shop_state s LEFT JOIN training_runs r ON r.run_id = s.train_run"
                      " WHERE s.installed = {yes}"
                      " ORDER BY CASE WHEN s.train_unfinished >= 2 THEN 3 WHEN s.train_unfinished = 1 THEN 0"
                      " WHEN s.train_deferred = 1 THEN 1 ELSE 2 END, {never_started}")
# A start (with the run's id; {claim}: only if the start the run read in the queue is still there ({same}: the
# dialect's null-safe =), so that of two runs reaching the shop one starts it), the end of a training ({mine}: only
# if the run that started it is the one ending it) and the mark of the first shop a run's budget left out.
_TRAINING_STARTED_SQL = ("UPDATE shop_state SET train_started_at = {p}, train_run = {p},"
                        " train_unfinished = train_unfinished + 1, train_deferred = 0 WHERE shop = {p}{claim}")
_TRAINING_CLAIM_SQL = " AND train_started_at {same} {p}"
_TRAINING_DEFERRED_SQL = "UPDATE shop_state SET train_deferred = 1 WHERE shop = {p}{claim}"
_TRAINING_FINISHED_SQL = ("UPDATE shop_state SET train_unfinished = 0, train_seconds = coalesce({p}, train_seconds)"
                         " WHERE shop = {p}{mine}")
# The runs going on: a run's row is made when it begins, its time of life moved while it goes on, and deleted when
# it ends; rows a day without a sign of life (runs killed) are deleted when the next run begins.
# ({now}: the database's clock, for a time not given.)
_TRAINING_RUN_BEGAN_SQL = ("INSERT INTO training_runs (run_id, started_at, alive_at)"
                           " VALUES ({p}, coalesce({p}, {now}), coalesce({p}, {now}))")
_TRAINING_RUNS_GONE_SQL = "DELETE FROM training_runs WHERE alive_at < {day_before}"
_TRAINING_RUN_ALIVE_SQL = "UPDATE training_runs SET alive_at = coalesce({p}, {now}) WHERE run_id = {p}"
_TRAINING_RUN_ENDED_SQL = "DELETE FROM training_runs WHERE run_id = {p}"

# Shared by both backends ({p}: the parameter marker; {no}/{yes}: the boolean literals): the flags `apply` keeps.
UNSELLABLE_SQL = "SELECT product_id FROM products WHERE shop = {p} AND sellable = {no}"
BACKORDERED_SQL = "SELECT product_id FROM products WHERE shop = {p} AND backordered = {yes}"
PICKS_SQL = "SELECT product_id, picks FROM products WHERE shop = {p} AND picks <> '' AND deleted = {no}"
# The display fields of some products ({only}: which ones) and whether each is for sale now: the flag `apply`
# keeps (the catalog filter's verdict, as fresh as the last delivery), not a second look at the variants, which
# cost an answer ~50 µs more on SQLite with a 100k-product catalog (bench/PERFORMANCE.md).
PRODUCT_CARDS_SQL = ("SELECT p.product_id, p.title, p.handle, p.price, p.image_url, p.product_type, p.vendor, p.sellable"
                     " FROM products p WHERE p.shop = {p} AND p.deleted = {no}{only}")
# The flags recomputed for some products ({where}: which ones), at the end of the transaction that changed them; a
# row whose flags stay the same is not written again (a redelivery, most product updates).
_SELLABLE_NOW = "CASE WHEN " + NOT_FOR_SALE + " THEN {no} ELSE {yes} END"
_BACKORDERED_NOW = "CASE WHEN " + NOT_FOR_SALE + " THEN {no} WHEN " + NOTHING_ON_HAND + " THEN {yes} ELSE {no} END"
REFRESH_SELLABLE_SQL = ("UPDATE products SET sellable = " + _SELLABLE_NOW + ", backordered = " + _BACKORDERED_NOW
                        + " WHERE shop = {p} AND {where} AND (sellable <> " + _SELLABLE_NOW
                        + " OR backordered <> " + _BACKORDERED_NOW + ")")
REFRESH_BATCH = 500  # ids per statement: SQLite builds differ in how many parameters one statement may take


def encoded_picks(product: CatalogProduct) -> str | None:
    """The `picks` an upsert writes: None (NULL) where the payload named none, which keeps the stored ones."""
    return None if product.picks is None else product.picks.encoded()


POSTGRES_SCHEMES = ("postgresql://", "postgres://")  # an EVENT_STORE_URL naming PostgreSQL starts with one of these


def open_event_store(url: str) -> EventStore:
    if url.startswith("sqlite:///"):
        return SQLiteEventStore(url[len("sqlite:///"):])
    if url.startswith(POSTGRES_SCHEMES):
        from recommender.store_postgres import PostgresEventStore  # psycopg is imported only where it is used

        return PostgresEventStore(url)
    raise ConfigError(f"EVENT_STORE_URL: unsupported scheme in {url!r} (use sqlite:///path or postgresql://...)")


def iso_utc(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _parse_iso(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def require_aware(moment: datetime, name: str) -> datetime:
    """A naive datetime would be read as the server's local time: refuse it."""
    if moment.tzinfo is None:
        raise ValueError(f"{name} must carry a timezone, got {moment!r}")
    return moment


def of_one_shop(shop: str, items: Iterable[Any], what: str = "events") -> list[Any]:
    """`items` (events, or an answer's views and clicks) as a list, each checked to be `shop`'s
    (`add_events_if_installed` and `add_beacon_if_installed` check that shop alone)."""
    batch = list(items)
    strangers = {item.shop for item in batch} - {shop}
    if strangers:
        raise ValueError(f"{what} of {', '.join(sorted(strangers))} given with {shop}'s install check")
    return batch


def refund_adjustment_key(refund_id: str, line_item_id: str) -> str:
    """One refund line shrinks its purchase once, however often the refund is delivered."""
    return f"refund:{refund_id}:line:{line_item_id}"


def export_json(body: dict) -> str:
    """The text a data export is stored as; fails before any write if `body` is not JSON-serialisable."""
    return json.dumps(body, ensure_ascii=False, allow_nan=False)


def customer_export(shop: str, customer_id: str, events: Iterable[Sequence[Any]],
                    links: Iterable[Sequence[Any]], refunds: Iterable[Sequence[Any]] = (),
                    redactions: Iterable[Sequence[Any]] = ()) -> dict:
    """Rows of EVENT_EXPORT_COLUMNS, (anonymous_id, customer_id), kept refunds (order_id, dedupe_key, quantity) and
    redaction records (kind, redacted_id, redacted_at as ISO 8601 text) → the JSON-serialisable export."""
    return {
        "shop": shop,
        "customer_id": customer_id,
        "events": [dict(zip(EVENT_EXPORT_COLUMNS, row)) for row in events],
        "identity_links": [{"anonymous_id": anonymous, "customer_id": linked_to} for anonymous, linked_to in links],
        "kept_refunds": [{"order_id": order_id, "order_line": line, "quantity": quantity}
                         for order_id, line, quantity in refunds],
        # What customers/redact kept of the customer and of the orders requested: stored data about them too.
        "redactions": [{"kind": kind, "id": redacted_id, "redacted_at": at} for kind, redacted_id, at in redactions],
    }


def _enable_wal(conn: sqlite3.Connection, attempts: int = 100) -> None:
    """Switch to WAL. While another connection creates a new database file the switch can fail with
    "database is locked" without waiting on the busy timeout, so it is retried briefly."""
    for attempt in range(attempts):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.01 * (1 + attempt % 10))


class SharedQueries:
    """The queries both SQL backends write the same way but for the parameter marker `_P`."""

    _P = "?"

    def _read(self, sql: str, params=()) -> list[tuple]: ...
    def _write(self, work): ...

    @staticmethod
    def _to_interaction(row: tuple) -> Interaction:
        return _interaction(row)

    def interactions(self, shop: str) -> list[Interaction]:
        """Every event of the shop that still counts (voided ones left out), in arrival order."""
        rows = self._read(f"SELECT {_INTERACTION_COLUMNS} FROM events WHERE shop = {self._P} AND weight_factor > 0"
                          " ORDER BY id", (shop,))
        return [self._to_interaction(row) for row in rows]

    # How each dialect writes the pieces of the columnar read (these are SQLite's).
    _CONCAT = "group_concat"  # an aggregate joining text with a separator
    _SEP_SQL = "'\x1f'"  # recommender.event_columns.SEP, as a literal: char(31) would run once per row (+60 ms)
    _FACTOR_SQL = "quote(weight_factor)"  # exact: quote() writes 20 digits when 15 do not round-trip
    _TIME_SQL = "occurred_at"  # as iso_utc stored it
    _ID_ORDER_CHECKED = False  # True: also read the ids and sort by them (the rows may arrive out of order)

    def interaction_columns(self, shop: str, times: bool = False) -> InteractionColumns:
        """`interactions(shop)` as integer-coded numpy columns (`recommender.event_columns`), read in one
        statement: what training reads (a tenth of the time of one object per event). `times` adds
        each event's time in µs since the epoch, which the quality gate needs and training does not."""
        from recommender.event_columns import InteractionColumns, ValueWithSeparator, decode

        try:
            columns = decode(self._column_texts(shop, times), self._parse_factor, self._parse_times if times else None)
        except ValueWithSeparator:  # a stored id holds the separator: read one object per event instead
            columns = InteractionColumns.from_interactions(self.interactions(shop), times=times)
        # A gift card's views and cart adds come from the pixel, which cannot tell one: once the catalog knows it
        # (`hidden`, recommender.events), nothing learns from them (its order and cart webhook lines count nothing).
        gift_cards = self.gift_card_product_ids(shop)
        return columns.without_products(gift_cards) if gift_cards else columns

    def gift_card_product_ids(self, shop: str) -> set[str]:
        """The products the catalog holds as gift cards (deleted ones too: what was one stays one)."""
        return {row[0] for row in self._read(
            f"SELECT product_id FROM products WHERE shop = {self._P} AND hidden = 'gift_card'", (shop,))}

    def _column_texts(self, shop: str, times: bool) -> ColumnTexts:
        """One aggregate statement: each column of the shop's events joined into one string (ColumnTexts)."""
        from recommender.event_columns import ColumnTexts

        sql = f"SELECT {self._column_select(times)} FROM {self._events_in_id_order(shop, times)}"
        return ColumnTexts(*self._read(sql, (shop,))[0])

    def _column_select(self, times: bool) -> str:
        """The aggregates of the columnar read, in ColumnTexts' order."""
        from recommender.event_columns import EVENT_KINDS

        agg, sep = self._CONCAT, self._SEP_SQL

        def kind_char(with_order: bool) -> str:  # see ColumnTexts.kinds
            shift = len(EVENT_KINDS) if with_order else 0
            return "CASE kind " + " ".join(f"WHEN '{kind.value}' THEN '{chr(48 + code + shift)}'"
                                           for code, kind in enumerate(EVENT_KINDS)) + " ELSE '~' END"

        selected = ["count(*)",
                    f"{agg}(user_key, {sep})",
                    f"{agg}(product_id, {sep})",
                    f"{agg}(CASE WHEN order_id <> '' THEN order_id END, {sep})",  # NULLs are skipped
                    f"{agg}(CASE WHEN order_id <> '' THEN {kind_char(True)} ELSE {kind_char(False)} END, '')",
                    f"{agg}(CASE WHEN weight_factor = 1 THEN '' ELSE {self._FACTOR_SQL} END, ',')",
                    f"{agg}({self._TIME_SQL}, {sep})" if times else "NULL",
                    f"{agg}(CAST(id AS TEXT), ',')" if self._ID_ORDER_CHECKED else "NULL"]
        return ", ".join(selected)

    def _events_in_id_order(self, shop: str, times: bool) -> str:
        """The FROM clause handing the shop's events that count to the aggregates in id order (arrival
        order: first-seen codes and the order weights are summed in follow it). Where the dialect does
        not promise the order, `_ID_ORDER_CHECKED` has the ids read too."""
        return (f"(SELECT {self._columns_read(times)} FROM events WHERE shop = {self._P} AND weight_factor > 0"
                " ORDER BY id) AS e")

    def _columns_read(self, times: bool) -> str:
        """The events' columns the columnar read's aggregates take."""
        return "user_key, product_id, order_id, kind, weight_factor" + (", occurred_at" if times else "") + (
            ", id" if self._ID_ORDER_CHECKED else "")

    @staticmethod
    def _parse_factor(text: str) -> float:
        return float(text)

    @staticmethod
    def _parse_times(text: str, n: int):
        from recommender.event_columns import sqlite_times

        return sqlite_times(text, n)

    def history(self, shop: str, user_key: str, limit: int) -> list[Interaction]:
        """The shopper's latest `limit` events that still count, newest first."""
        return [self._to_interaction(row) for row in self._read(self._history_sql(), (shop, user_key, limit))]

    def _history_rows(self) -> str:
        """Where a shopper's latest events come from, newest first: parameters shop, user key, limit."""
        p = self._P
        return (f"FROM events WHERE shop = {p} AND user_key = {p} AND weight_factor > 0"
                f" ORDER BY occurred_at DESC, id DESC LIMIT {p}")

    def _history_sql(self) -> str:
        return f"SELECT {_INTERACTION_COLUMNS} {self._history_rows()}"

    def _history_with_check_sql(self) -> str:
        """`_history_sql` with the shop check as a last column (a constant subquery, run once); parameters: the shop,
        then the history's (shop, user key, limit)."""
        check = f"(SELECT installed FROM shop_state WHERE shop = {self._P})"
        return f"SELECT {_INTERACTION_COLUMNS}, {check} {self._history_rows()}"

    def installed_with_unsellable(self, shop: str) -> tuple[bool, CatalogState]:
        """`is_shop_installed(shop)` and, if it is, `catalog_state(shop)` (else nothing left out): what an answer for
        everyone reads when the shop's check and its catalog's snapshot are both due, as they are for a quiet shop's
        answers. PostgreSQL sends both reads together: one round trip."""
        installed = self.is_shop_installed(shop)
        return installed, self.catalog_state(shop) if installed else NOTHING_LEFT_OUT

    def installed_with_histories(self, shop: str, user_keys: Sequence[str],
                                 limit: int) -> tuple[bool, list[list[Interaction]]]:
        """`is_shop_installed(shop)` and, if it is, `history(shop, key, limit)` for each key (else no histories):
        what a shopper's answer reads before anything else. The check rides in the first key's statement, so a
        shopper with events costs one statement (one round trip on a networked store; bench/PERFORMANCE.md); one
        with none gets the check on its own."""
        if not user_keys:
            return self.is_shop_installed(shop), []
        return self._checked_histories(shop, self._read_histories_with_check(shop, user_keys, limit))

    def installed_with_histories_and_unsellable(self, shop: str, user_keys: Sequence[str], limit: int
                                                ) -> tuple[bool, list[list[Interaction]], CatalogState]:
        """`installed_with_histories` (for at least one key) and, if the shop is installed, `catalog_state(shop)`
        (else nothing left out): a shopper's answer when the shop's catalog snapshot is due too, as it is for a quiet
        shop.
        PostgreSQL sends the reads together, one round trip, the check then taken with the unsellable products in one
        statement (one snapshot of the database: a reinstall between two reads cannot leave it "installed, nothing
        unsellable")."""
        histories, checked = self._read_histories_check_and_unsellable(shop, user_keys, limit)
        if checked is None:  # read one after the other: what it does not sell only once the check says installed
            installed, interactions = self._checked_histories(shop, histories)
            return installed, interactions, self.catalog_state(shop) if installed else NOTHING_LEFT_OUT
        installed, state = checked
        if not installed:
            return False, [], NOTHING_LEFT_OUT
        return True, self._interactions_of(histories), state

    def _read_histories_check_and_unsellable(self, shop: str, user_keys: Sequence[str], limit: int
                                             ) -> tuple[list[list[tuple]], tuple[bool, CatalogState] | None]:
        """The histories (the first with the check's column), and the check with the unsellable products where the
        backend reads them in the same round trip (None: read them after, if the shop is installed)."""
        return self._read_histories_with_check(shop, user_keys, limit), None

    def _checked_histories(self, shop: str, read: list[list[tuple]]) -> tuple[bool, list[list[Interaction]]]:
        """The shop check and the histories from `_read_histories_with_check`'s rows: a shopper with no events has no
        row to carry the check, which is then asked on its own."""
        first = read[0]
        if not (first[0][-1] if first else self.is_shop_installed(shop)):
            return False, []
        return True, self._interactions_of(read)

    def _interactions_of(self, read: list[list[tuple]]) -> list[list[Interaction]]:
        first, *others = read
        return [[self._to_interaction(row[:-1]) for row in first],
                *([self._to_interaction(row) for row in rows] for rows in others)]

    def _read_histories_with_check(self, shop: str, user_keys: Sequence[str], limit: int) -> list[list[tuple]]:
        """The first key's rows with the check's column, then each other key's rows."""
        return [self._read(self._history_with_check_sql(), (shop, shop, user_keys[0], limit)),
                *(self._read(self._history_sql(), (shop, key, limit)) for key in user_keys[1:])]

    def redact_shop(self, shop: str) -> None:
        """Delete every row the shop has, in every table."""

        def work(conn) -> None:
            for table in SHOP_TABLES:
                conn.execute(f"DELETE FROM {table} WHERE shop = {self._P}", (shop,))

        self._write(work)

    def redacted(self, shop: str) -> Redactions:
        """The customers (with their latest redaction's time) and orders `redact_customer` erased in the shop (one
        read, for a whole import or backfill)."""
        rows = self._read(f"SELECT kind, redacted_id, redacted_at FROM redactions WHERE shop = {self._P}", (shop,))
        return Redactions({i: self._to_time(at) for kind, i, at in rows if kind == "customer"},
                          frozenset(i for kind, i, _ in rows if kind == "order"))

    _TRUE, _FALSE = "1", "0"  # how the dialect writes booleans

    # The training job's queue (_TRAINING_QUEUE_SQL). How the dialect sorts a shop never started first (these are
    # SQLite's), compares two values that may be null, writes a time, and writes one statement (its row count).
    _NEVER_STARTED_FIRST = "train_started_at IS NOT NULL, train_started_at, shop"
    _SAME = "IS"
    _time_param = staticmethod(iso_utc)
    # The training runs' clock (the database's, as iso_utc writes it), a day before a time ({p}, or now), and the
    # seconds since a run's alive_at: one host reads and writes a SQLite file, with one clock.
    _NOW = "strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now')"
    _DAY_BEFORE = "strftime('%Y-%m-%dT%H:%M:%f000+00:00', coalesce({p}, 'now'), '-1 day')"
    _SILENT_SECONDS = "(julianday('now') - julianday(r.alive_at)) * 86400.0"

    def _write_statement(self, sql: str, params: tuple) -> int:
        return self._write(lambda conn: conn.execute(sql, params).rowcount)

    def training_queue(self) -> list[QueuedShop]:
        """The installed shops in the order the training job takes them (_TRAINING_QUEUE_SQL)."""
        sql = _TRAINING_QUEUE_SQL.format(yes=self._TRUE, never_started=self._NEVER_STARTED_FIRST,
                                         silent=self._SILENT_SECONDS)
        return [QueuedShop(shop, seconds, unfinished, self._to_time(started), self._to_time(alive),
                           float(silent) if silent is not None else None)
                for shop, seconds, unfinished, started, alive, silent in self._read(sql)]

    def _time(self, at: datetime, name: str):
        return self._time_param(require_aware(at, name))

    def _claim(self, expect_started_at: object) -> tuple[str, tuple]:
        """The condition on the start a run read in the queue (`...`: none), and its parameter."""
        if expect_started_at is ...:
            return "", ()
        expected = self._time(expect_started_at, "expect_started_at") if expect_started_at is not None else None
        return _TRAINING_CLAIM_SQL.format(same=self._SAME, p=self._P), (expected,)

    def _time_or_now(self, at: datetime | None):
        return self._time(at, "at") if at is not None else None

    def training_run_began(self, run: str, at: datetime | None = None) -> None:
        """A training run `run` (an id of its own) begins at `at` (None: now, by the event store's clock); the rows
        of runs silent for a day before go."""
        began = self._time_or_now(at)
        self._write_statement(_TRAINING_RUNS_GONE_SQL.format(day_before=self._DAY_BEFORE.format(p=self._P)),
                              (began,))
        self._write_statement(_TRAINING_RUN_BEGAN_SQL.format(p=self._P, now=self._NOW), (run, began, began))

    def training_run_alive(self, run: str, at: datetime | None = None) -> None:
        """The training run `run` is still going on at `at` (None: now, by the event store's clock)."""
        self._write_statement(_TRAINING_RUN_ALIVE_SQL.format(p=self._P, now=self._NOW),
                              (self._time_or_now(at), run))

    def training_run_ended(self, run: str) -> None:
        """The training run `run` has ended: the shops it started are nobody's now."""
        self._write_statement(_TRAINING_RUN_ENDED_SQL.format(p=self._P), (run,))

    def training_started(self, shop: str, at: datetime, run: str | None = None,
                         expect_started_at: object = ...) -> bool:
        """The training job (the run `run`) starts `shop` at `at`: it goes to the back of the queue, counted
        unfinished until `training_finished`. With `expect_started_at` (the `started_at` the run read in the queue,
        None for never) only if no other run started the shop since: False if one did, or if the shop has no row."""
        claim, expected = self._claim(expect_started_at)
        return self._write_statement(_TRAINING_STARTED_SQL.format(p=self._P, claim=claim),
                                     (self._time(at, "at"), run, shop, *expected)) == 1

    def training_finished(self, shop: str, seconds: float | None, run: str | None = None) -> bool:
        """The training job is done with `shop` (trained, kept, skipped or failed); `seconds` (None: keep the last
        figure) is what it took, the next run's estimate. With `run`, only if that run is the one that last started
        the shop: False if another has started it since (it then is that run's to finish)."""
        mine, params = (f" AND train_run = {self._P}", (run,)) if run is not None else ("", ())
        return self._write_statement(_TRAINING_FINISHED_SQL.format(p=self._P, mine=mine),
                                     (seconds, shop, *params)) == 1

    def training_deferred(self, shop: str, expect_started_at: object = ...) -> bool:
        """The run's budget left `shop` out, the first it did: it leads the next run's normal order. With
        `expect_started_at`, only if no run has started the shop since it was read (False then)."""
        claim, expected = self._claim(expect_started_at)
        return self._write_statement(_TRAINING_DEFERRED_SQL.format(p=self._P, claim=claim), (shop, *expected)) == 1

    def close_thread_connection(self) -> None:
        """Close the calling thread's connection, if it has one (a thread that ends: the training run's signs of
        life); the store stays open for the others. (Each backend keeps a connection per thread in `_local.conn`
        and the open ones in the set `_connections`, under `_lock`.)"""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            return
        self._local.conn = None
        with self._lock:
            self._connections.discard(conn)
        conn.close()

    def _apply_changes(self, conn: Any, delivery: Delivery, changes: ChangeSet) -> int:
        """A new delivery's changes, inside its transaction (after its row was inserted and its locks taken):
        events, catalog rows, deletions, adjustments, and the shop marked installed; returns events inserted."""
        inserted = self._insert_events(conn, changes.events)
        for product in changes.upsert_products:
            self._upsert_product(conn, product)
        p, yes = self._P, self._TRUE
        for product_id in changes.delete_product_ids:
            conn.execute(
                "INSERT INTO products (shop, product_id, title, handle, status, product_type, vendor, deleted)"
                f" VALUES ({p}, {p}, '', '', 'deleted', '', '', {yes})"
                f" ON CONFLICT (shop, product_id) DO UPDATE SET deleted = {yes}",
                (delivery.shop, product_id),
            )
        for product_id in changes.gift_card_product_ids:  # a row of its own until the catalog's comes (it keeps this)
            conn.execute(
                "INSERT INTO products (shop, product_id, title, handle, status, product_type, vendor, hidden)"
                f" VALUES ({p}, {p}, '', '', 'active', '', '', 'gift_card') ON CONFLICT (shop, product_id)"
                " DO UPDATE SET hidden = 'gift_card' WHERE products.hidden IS NULL OR products.hidden <> 'gift_card'",
                (delivery.shop, product_id),
            )
        self._apply_adjustments(conn, delivery, changes)
        self._refresh_sellable(conn, delivery.shop, changes)
        if delivery.topic not in TOPICS_NOT_PROVING_INSTALL:
            self._mark_installed(conn, delivery.shop, delivery.happened_at)
        return inserted

    def _refresh_sellable(self, conn: Any, shop: str, changes: ChangeSet) -> None:
        """Recompute `products.sellable` for every product this delivery touched: upserted or deleted ones,
        and those owning a variant whose inventory item got a new level."""
        fmt = {"p": self._P, "yes": self._TRUE, "no": self._FALSE}
        products = changes.catalog_product_ids()
        for start in range(0, len(products), REFRESH_BATCH):  # a bound on the statement's parameters
            batch = products[start:start + REFRESH_BATCH]
            only = f"product_id IN ({', '.join([self._P] * len(batch))})"
            conn.execute(REFRESH_SELLABLE_SQL.format(where=only, **fmt), (shop, *batch))
        items = changes.inventory_item_ids()
        for start in range(0, len(items), REFRESH_BATCH):
            batch = items[start:start + REFRESH_BATCH]
            owners = (f"product_id IN (SELECT product_id FROM variants WHERE shop = {self._P}"
                      f" AND inventory_item_id IN ({', '.join([self._P] * len(batch))}))")
            conn.execute(REFRESH_SELLABLE_SQL.format(where=owners, **fmt), (shop, shop, *batch))

    @staticmethod
    def _to_time(value) -> datetime | None:
        return _parse_iso(value)

    def _only_ids(self, product_ids: Collection[str] | None) -> tuple[str, tuple]:
        ids = tuple(product_ids)
        return f" AND product_id IN ({', '.join([self._P] * len(ids))})", ids

    def products(self, shop: str, product_ids: Collection[str] | None = None) -> dict[str, CatalogProduct]:
        """The shop's catalog rows that are not deleted, with their variants (only `product_ids` if given)."""
        only, params = "", (shop,)
        if product_ids is not None:
            if not product_ids:
                return {}
            only, ids = self._only_ids(product_ids)
            params = (shop, *ids)
        variants: dict[str, list[CatalogVariant]] = {}
        for product_id, variant_id, item_id, qty, tracked, cont in self._read(
            "SELECT product_id, variant_id, inventory_item_id, inventory_quantity, tracked, continue_selling"
            f" FROM variants WHERE shop = {self._P}{only}", params  # no ORDER BY: it would walk every variant
        ):
            variants.setdefault(product_id, []).append(
                CatalogVariant(variant_id, item_id, qty, bool(tracked), bool(cont)))
        for rows in variants.values():
            rows.sort(key=lambda variant: variant.variant_id)
        products = {}
        for row in self._read(
            "SELECT product_id, title, handle, status, published_at, price, image_url, product_type, vendor, updated_at,"
            f" hidden, picks FROM products WHERE shop = {self._P} AND deleted = {self._FALSE}{only}", params
        ):
            pid, title, handle, status, published_at, price, image_url, ptype, vendor, updated_at, hidden, picks = row
            products[pid] = CatalogProduct(
                shop, pid, title, handle, status, self._to_time(published_at), price, image_url, ptype, vendor,
                self._to_time(updated_at), tuple(variants.get(pid, ())), hidden, MerchantPicks.decoded(picks),
            )
        return products

    def product_cards(self, shop: str, product_ids: Collection[str]) -> dict[str, ProductCard]:
        """The display fields of those products that are in the catalog (not deleted), in one statement: what an
        answer shows of its products, without building their variants (`products` reads two statements)."""
        if not product_ids:
            return {}
        only, ids = self._only_ids(product_ids)
        sql = PRODUCT_CARDS_SQL.format(p=self._P, no=self._FALSE, only=only.replace("product_id", "p.product_id"))
        return {pid: ProductCard(title, handle, price, image_url, bool(sellable), product_type, vendor)
                for pid, title, handle, price, image_url, product_type, vendor, sellable
                in self._read(sql, (shop, *ids))}

    def unsellable_product_ids(self, shop: str) -> set[str]:
        """Products not for sale: deleted, not active, unpublished, every variant sold out, or hidden."""
        rows = self._read(UNSELLABLE_SQL.format(p=self._P, no=self._FALSE), (shop,))
        return {r[0] for r in rows}

    def catalog_state(self, shop: str) -> CatalogState:
        """The products not for sale, those for sale with nothing on hand and the merchant's picks, each read from its
        index."""
        backordered = self._read(BACKORDERED_SQL.format(p=self._P, yes=self._TRUE), (shop,))
        picks = self._read(PICKS_SQL.format(p=self._P, no=self._FALSE), (shop,))
        return CatalogState(frozenset(self.unsellable_product_ids(shop)), frozenset(r[0] for r in backordered),
                         {pid: MerchantPicks.decoded(text) for pid, text in picks})

    def count_events(self, shop: str | None = None) -> int:
        if shop is None:
            return self._read("SELECT COUNT(*) FROM events")[0][0]
        return self._read(f"SELECT COUNT(*) FROM events WHERE shop = {self._P}", (shop,))[0][0]

    def count_deliveries(self) -> int:
        return self._read("SELECT COUNT(*) FROM deliveries")[0][0]

    # --- attribution (recommender.attribution) ---------------------------------------------------------------

    def recommendation_summary(self, shop: str, since: datetime,
                               until: datetime) -> list[tuple[str | None, int, int, int]]:
        """Between `since` and `until` (both included), per intent and then for all of them (intent None): the answers
        viewed, the products they showed and the products clicked in them (`RECOMMENDATION_SUMMARY_SQL`)."""
        between = (shop, self._time(since, "since"), self._time(until, "until"))
        return [(intent, int(viewed), int(shown), int(clicked)) for intent, viewed, shown, clicked
                in self._read(RECOMMENDATION_SUMMARY_SQL.format(p=self._P), between * 2)]

    def recommendation_answers(self, shop: str, since: datetime, until: datetime) -> list[tuple[str, int, int]]:
        """Between `since` and `until` (both included), each answer of every intent but trending that was viewed or
        clicked: (recommendation id, products shown, products clicked) (`RECOMMENDATION_ANSWERS_SQL`)."""
        between = (shop, self._time(since, "since"), self._time(until, "until"))
        return [(answer, int(shown), int(clicked)) for answer, shown, clicked
                in self._read(RECOMMENDATION_ANSWERS_SQL.format(p=self._P), between)]

    def recommendation_clicks(self, shop: str, since: datetime, until: datetime) -> list[RecommendationClick]:
        """The clicks on answers' products between `since` and `until` (both included)."""
        rows = self._read(RECOMMENDATION_CLICKS_SQL.format(p=self._P),
                          (shop, self._time(since, "since"), self._time(until, "until")))
        return [RecommendationClick(client, product, self._to_time(at), intent, recommendation, event)
                for client, product, at, intent, recommendation, event in rows]

    def attributable_purchases(self, shop: str, since: datetime, until: datetime) -> list[PixelPurchase]:
        """The pixel's purchases between `since` and `until` (both included) of products their browser clicked in an
        answer at or after `since` and not after the purchase; none of a cancelled order (`ATTRIBUTABLE_PURCHASES_SQL`)."""
        start = self._time(since, "since")
        rows = self._read(ATTRIBUTABLE_PURCHASES_SQL.format(p=self._P),
                          (shop, start, self._time(until, "until"), start))
        return [PixelPurchase(client, product, self._to_time(at), int(quantity), price, order_id, dedupe_key,
                              1.0 if kept is None else float(kept), currency)
                for client, product, at, quantity, price, currency, order_id, dedupe_key, kept in rows]


WRITE_BATCH = 64  # works committed together at most (SQLite group commit)
SQLITE_MMAP_BYTES = 1 << 30  # address space for reading the database file through a map (pages are the OS's cache)


class _Ticket:
    """One queued write: its work, then its result or error once the transaction that held it has ended."""

    __slots__ = ("work", "value", "error", "done")

    def __init__(self, work: Callable[[sqlite3.Connection], object]):
        self.work = work
        self.value: object = None
        self.error: BaseException | None = None
        self.done = False

    def result(self) -> object:
        if self.error is None:
            return self.value
        if isinstance(self.error, sqlite3.Error):
            raise StoreError(f"event store write failed: {self.error}") from self.error
        raise self.error


class SQLiteEventStore(SharedQueries):
    """Events and catalog in one SQLite file; one connection per thread."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._uri = False
        if self.path == ":memory:":
            # One private in-memory database that every thread's connection shares (tests, trials).
            self.path, self._uri = f"file:events-{uuid.uuid4().hex}?mode=memory&cache=shared", True
        else:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: set[sqlite3.Connection] = set()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Ticket] = []  # works waiting for the next commit (group commit, `_write`)
        self.group_commits = 0  # transactions `_write` has committed, each holding one or more works
        self._migrate(self._connection())

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"event store read failed: {exc}") from exc

    # A shop read in two halves at once needs at least this many ids (below, one statement is quick anyway).
    SPLIT_READ_MIN_IDS = 50_000

    def _column_texts(self, shop: str, times: bool) -> ColumnTexts:
        """The columnar read's one aggregate statement, run as two over the two halves of the ids on two
        connections at once when the shop's events are most of the table (SQLite releases the GIL while
        it reads: 0.2 s become 0.1 s for 500k events on two cores). The halves are used only if no write
        was committed while they ran (PRAGMA data_version), so they saw the same database; else one
        statement reads again."""
        from recommender.event_columns import ColumnTexts

        if not self._shop_is_most_of_the_table(shop):
            return super()._column_texts(shop, times)  # through the index on shop, sorted by id
        # The table itself, read in rowid (= id) order: the rows reach the aggregates in id order. (A subquery
        # ordering them would copy each row, +0.2 s for 500k.)
        sql = (f"SELECT {self._column_select(times)} FROM events NOT INDEXED WHERE shop = ? AND weight_factor > 0")
        low, high = self._read("SELECT (SELECT min(id) FROM events), (SELECT max(id) FROM events)")[0]  # rowid ends
        if low is not None and high - low >= self.SPLIT_READ_MIN_IDS:
            halves = self._read_halves(sql, shop, (low + high) // 2)
            if halves is not None:
                return halves
        return ColumnTexts(*self._read(sql, (shop,))[0])

    def _read_halves(self, sql: str, shop: str, middle: int) -> ColumnTexts | None:
        """`sql` over ids ≤ middle here and ids > middle on a second connection, at once; joined, or None
        when a write was committed meanwhile."""
        from recommender.event_columns import ColumnTexts, join_column_texts

        upper: dict[str, Any] = {}

        def read_upper() -> None:
            try:
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, uri=self._uri)
                try:
                    upper["row"] = conn.execute(f"{sql} AND id > ?", (shop, middle)).fetchone()
                finally:
                    conn.close()
            except sqlite3.Error as exc:
                upper["error"] = exc

        conn = self._connection()
        try:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            worker = threading.Thread(target=read_upper, name="event-columns-upper-half", daemon=True)
            worker.start()
            try:
                lower = conn.execute(f"{sql} AND id <= ?", (shop, middle)).fetchone()
            finally:
                worker.join()
            if "error" in upper:
                raise upper["error"]
            unchanged = conn.execute("PRAGMA data_version").fetchone()[0] == version
        except sqlite3.Error as exc:
            raise StoreError(f"event store read failed: {exc}") from exc
        return join_column_texts([ColumnTexts(*lower), ColumnTexts(*upper["row"])]) if unchanged else None

    def _shop_is_most_of_the_table(self, shop: str) -> bool:
        """Whether reading the whole table in order beats fetching the shop's rows through the index on
        shop and sorting them (0.1 s against 1.3 s for 500k events: a row fetched through the index costs
        about 14 read in order): yes when the shop has at least a tenth of the events."""
        others = self._read("SELECT EXISTS (SELECT 1 FROM events WHERE shop < ?) OR"
                            " EXISTS (SELECT 1 FROM events WHERE shop > ?)", (shop, shop))[0][0]
        if not others:
            return True
        mine = self._read("SELECT count(*) FROM events WHERE shop = ?", (shop,))[0][0]
        return mine * 10 >= self._read("SELECT count(*) FROM events")[0][0]

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False,
                                       uri=self._uri)
                _enable_wal(conn)
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
                # Reads through a memory map: a page SQLite's own cache does not hold is a memory access, not
                # a read() call (an answer's ten catalog rows lie on ~50 pages). Writes still go through the WAL;
                # nothing here shrinks the file (no VACUUM), which is what a mapping must not see.
                conn.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open the SQLite event store at {self.path}: {exc}") from exc
            self._local.conn = conn
            with self._lock:
                self._connections.add(conn)
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(SQLITE_MIGRATIONS):
                raise StoreError(f"the event store's schema version {version} is newer than this code knows")
            for target, script in enumerate(SQLITE_MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _write(self, work) -> object:
        """Run `work(conn)` in a committed transaction: group commit.

        One writer at a time within the process (SQLite allows one anyway, and its busy handler's growing
        sleeps, up to 1 s, made concurrent webhooks wait far longer than a queue does). A writer queues its
        work, then takes the write lock; holding it, it commits every work queued by then in one
        transaction, each inside a savepoint of its own, so one fsync acknowledges them all and a work that
        fails is rolled back alone. Writers whose work was committed meanwhile find it done. Nobody is
        answered before the COMMIT that holds their work has returned (bench/PERFORMANCE.md).
        """
        ticket = _Ticket(work)
        with self._queue_lock:
            self._queue.append(ticket)
        with self._write_lock:
            while not ticket.done:  # the oldest works first, WRITE_BATCH at a time, until this one is in
                with self._queue_lock:
                    batch, self._queue = self._queue[:WRITE_BATCH], self._queue[WRITE_BATCH:]
                self._commit(batch)
        return ticket.result()

    def _commit(self, batch: list["_Ticket"]) -> None:
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for ticket in batch:
                conn.execute("SAVEPOINT work")
                try:
                    ticket.value = ticket.work(conn)
                except Exception as exc:  # this work alone is undone; the others still commit
                    conn.execute("ROLLBACK TO work")
                    ticket.error = exc
                conn.execute("RELEASE work")
            conn.execute("COMMIT")
            self.group_commits += 1
        except BaseException as exc:
            try:
                if conn.in_transaction:  # a failed COMMIT leaves the transaction open: end it so the next write works
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            for ticket in batch:  # nothing of the batch was committed
                ticket.value, ticket.error = None, exc
            if not isinstance(exc, Exception):
                raise
        finally:
            for ticket in batch:
                ticket.done = True

    def apply(self, delivery: Delivery, changes: ChangeSet) -> int | None:
        """Store one delivery's changes atomically.

        Returns how many events were new (an order line or cart line already stored
        through another delivery counts once), or None when this webhook_id was seen before.
        """
        return self._write(lambda conn: self._apply_delivery(conn, delivery, changes))

    def apply_many(self, items: Sequence[tuple[Delivery, ChangeSet]]) -> list[int | None]:
        """Many deliveries (a backfill's page), each stored as `apply` stores it, all in one transaction: the page
        is stored whole or not at all. What `apply` would have returned for each."""
        return self._write(lambda conn: [self._apply_delivery(conn, delivery, changes) for delivery, changes in items])

    def _apply_delivery(self, conn: sqlite3.Connection, delivery: Delivery, changes: ChangeSet) -> int | None:
        if not self._insert_delivery(conn, delivery):
            return None
        return self._apply_changes(conn, delivery, changes)

    @staticmethod
    def _insert_delivery(conn: sqlite3.Connection, delivery: Delivery) -> bool:
        """The delivery's row; False if it was stored before (a redelivery)."""
        return conn.execute(
            "INSERT OR IGNORE INTO deliveries (shop, webhook_id, topic, event_id, received_at) VALUES (?, ?, ?, ?, ?)",
            (delivery.shop, delivery.webhook_id, delivery.topic, delivery.event_id, iso_utc(delivery.received_at)),
        ).rowcount > 0

    def add_events(self, events: Iterable[Event]) -> int:
        """Insert events in one transaction; returns how many were new (dedupe keys already seen are skipped)."""
        batch = list(events)
        return int(self._write(lambda conn: self._insert_events(conn, batch)))

    def add_events_if_installed(self, shop: str, events: Sequence[Event]) -> int | None:
        """`add_events` of one shop's events if the shop is installed (checked in the same transaction), else None
        and nothing stored."""
        batch = of_one_shop(shop, events)
        if not batch:  # nothing to write: not through the writers' queue
            return 0 if self.is_shop_installed(shop) else None

        def work(conn: sqlite3.Connection) -> int | None:
            if not conn.execute(_INSTALLED_SQL, (shop,)).fetchone():
                return None
            return self._insert_events(conn, batch)

        return self._write(work)

    def add_beacon_if_installed(self, shop: str, events: Sequence[Event],
                                signals: Sequence[RecommendationSignal]) -> tuple[int, int] | None:
        """A pixel's beacon: `add_events_if_installed` of its events and its signals (`recommendation_events`, each
        pixel event and product once) in the same transaction, if the shop is installed: (events new, signals new), or
        None and nothing stored."""
        batch, marks = of_one_shop(shop, events), of_one_shop(shop, signals, "signals")
        if not marks:
            stored = self.add_events_if_installed(shop, batch)
            return None if stored is None else (stored, 0)
        insert = (f"INSERT OR IGNORE INTO recommendation_events ({', '.join(RECOMMENDATION_EVENT_COLUMNS)})"
                  f" VALUES ({', '.join('?' * len(RECOMMENDATION_EVENT_COLUMNS))})")
        rows = [(*mark[:-1], iso_utc(mark.occurred_at)) for mark in marks]

        def work(conn: sqlite3.Connection) -> tuple[int, int] | None:
            if not conn.execute(_INSTALLED_SQL, (shop,)).fetchone():
                return None
            stored = self._insert_events(conn, batch) if batch else 0
            return stored, conn.executemany(insert, rows).rowcount

        return self._write(work)

    @staticmethod
    def _insert_events(conn: sqlite3.Connection, events: Iterable[Event]) -> int:
        """Insert new events; an event whose dedupe key exists only lowers that event's weight factor (a pixel's cart
        signal replaces it if it is later: `CART_STATE_PREFIX`). A new event whose key refunds were kept for
        (`pending_refunds`: they came before it) is inserted shrunk by them. A guest's event joins the customer its
        token was linked to, unless a pixel sent it (`PIXEL_SOURCE_PREFIX`). A pixel's purchase of an order weighs 0 if
        another source's purchase of that order and product is stored, and is set to 0 when one comes
        (`SIGNED_PURCHASE_OF`). An event of a customer or order customers/redact erased is not stored
        (`REDACTED_EVENT`: of an order it named, or of the customer and at or before their redaction); how many of a
        delivery's were left out is logged."""
        inserted = 0
        redacted: dict[tuple, bool] = {}  # a delivery's lines share their order, customer and time: one look each
        withheld: dict[tuple[str, str, str], int] = {}
        for e in events:
            look = (e.shop, e.order_id, e.customer_id, iso_utc(e.occurred_at))
            if look[1] is not None or look[2] is not None:
                if look not in redacted:
                    redacted[look] = bool(conn.execute("SELECT " + _SQLITE_REDACTED_EVENT, look).fetchone()[0])
                if redacted[look]:
                    key = (e.shop, e.source_topic, e.delivery_id)
                    withheld[key] = withheld.get(key, 0) + 1
                    continue
            customer_id, user = e.customer_id, e.user_key
            pixel = e.source_topic.startswith(PIXEL_SOURCE_PREFIX)
            if customer_id is None and e.anonymous_id and not pixel:
                link = conn.execute("SELECT customer_id FROM identity_links WHERE shop = ? AND anonymous_id = ?",
                                    (e.shop, e.anonymous_id)).fetchone()
                if link:  # a guest who has since logged in: their events join the customer's
                    customer_id, user = link[0], f"c:{link[0]}"
            weight_factor = e.weight_factor
            if e.kind is EventKind.PURCHASE and e.order_id is not None:
                order = (e.shop, e.order_id, e.product_id)
                if not pixel:  # the record: the pixel's purchases of its order and product stop counting
                    conn.execute("UPDATE events SET weight_factor = 0 WHERE shop = ? AND order_id = ?"
                                 f" AND product_id = ? AND kind = 'purchase' AND {from_pixel()}"
                                 " AND weight_factor <> 0", order)
                elif conn.execute("SELECT " + SIGNED_PURCHASE_OF.format(shop="?", order_id="?", product_id="?"),
                                  order).fetchone()[0]:
                    weight_factor = 0.0
            exists = e.dedupe_key is not None and conn.execute(
                "SELECT 1 FROM events WHERE shop = ? AND dedupe_key = ?", (e.shop, e.dedupe_key)).fetchone()
            if exists and latest_wins(e.dedupe_key):  # a later beacon replaces the row; an earlier one is stale
                replaced = {column: getattr(e, column) for column in CART_STATE_COLUMNS}
                replaced["occurred_at"] = when = iso_utc(e.occurred_at)
                conn.execute("UPDATE events SET weight_factor = ?, " + ", ".join(f"{c} = ?" for c in replaced) +
                             " WHERE shop = ? AND dedupe_key = ?"
                             " AND (occurred_at < ? OR (occurred_at = ? AND weight_factor > ?))",  # `later`
                             (e.weight_factor, *replaced.values(), e.shop, e.dedupe_key, when, when, e.weight_factor))
                continue
            if exists:
                conn.execute("UPDATE events SET weight_factor = MIN(weight_factor, ?) WHERE shop = ? AND dedupe_key = ?",
                             (weight_factor, e.shop, e.dedupe_key))
                continue
            refunded = e.kind is EventKind.PURCHASE and e.dedupe_key is not None and conn.execute(
                "SELECT SUM(quantity) FROM pending_refunds WHERE shop = ? AND dedupe_key = ?",
                (e.shop, e.dedupe_key)).fetchone()[0]
            if refunded:  # as `_apply_adjustments` shrinks a stored line, by all of them at once
                weight_factor = max(0.0, weight_factor - refunded / e.quantity)
                conn.execute("DELETE FROM pending_refunds WHERE shop = ? AND dedupe_key = ?", (e.shop, e.dedupe_key))
            conn.execute(
                "INSERT INTO events (shop, kind, user_key, customer_id, anonymous_id, product_id, variant_id,"
                " quantity, price, order_id, occurred_at, source_topic, delivery_id, dedupe_key, weight_factor,"
                " currency) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (e.shop, e.kind.value, user, customer_id, e.anonymous_id, e.product_id, e.variant_id,
                 e.quantity, e.price, e.order_id, iso_utc(e.occurred_at), e.source_topic, e.delivery_id, e.dedupe_key,
                 weight_factor, e.currency),
            )
            inserted += 1
        for (shop, topic, delivery_id), count in withheld.items():
            log_withheld(shop, topic, delivery_id, count)
        return inserted

    @staticmethod
    def _apply_adjustments(conn: sqlite3.Connection, delivery: Delivery, changes: ChangeSet) -> None:
        shop = delivery.shop
        for order_id in changes.void_order_ids:
            conn.execute("UPDATE events SET weight_factor = 0 WHERE shop = ? AND order_id = ? AND kind = 'purchase'",
                         (shop, order_id))
        for refund in changes.refunds:
            adjustment = refund_adjustment_key(refund.refund_id, refund.line_item_id)
            fresh = conn.execute("INSERT OR IGNORE INTO adjustments (shop, adjustment_key) VALUES (?, ?)",
                                 (shop, adjustment)).rowcount
            if not fresh:
                continue
            line = order_line_key(refund.order_id, refund.line_item_id)
            shrunk = conn.execute(
                "UPDATE events SET weight_factor = MAX(0, weight_factor - CAST(? AS REAL) / quantity)"
                " WHERE shop = ? AND dedupe_key = ?",
                (refund.quantity, shop, line),
            ).rowcount
            if not shrunk:  # its line is not stored yet: kept until it is (`_insert_events`), or pruned
                conn.execute("INSERT INTO pending_refunds (shop, adjustment_key, order_id, dedupe_key, quantity,"
                             " received_at) VALUES (?, ?, ?, ?, ?, ?)",
                             (shop, adjustment, refund.order_id, line, refund.quantity, iso_utc(delivery.received_at)))
        for level in changes.inventory_levels:
            conn.execute(
                "INSERT INTO inventory_levels (shop, inventory_item_id, location_id, available, all_locations)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (shop, inventory_item_id, location_id) DO UPDATE SET"
                " available = excluded.available, all_locations = MAX(all_locations, excluded.all_locations)",
                (shop, level.inventory_item_id, level.location_id, level.available, int(level.all_locations)),
            )
            total = conn.execute(
                "SELECT SUM(available), COUNT(available), MAX(all_locations) FROM inventory_levels"
                " WHERE shop = ? AND inventory_item_id = ?",
                (shop, level.inventory_item_id),
            ).fetchone()
            if total[1]:  # at least one location tracks it: the stock follows the levels (`STOCK_OF_VARIANT`)
                stock = STOCK_OF_VARIANT.format(known="?", total="?")
                conn.execute(f"UPDATE variants SET inventory_quantity = {stock}, tracked = 1"
                             " WHERE shop = ? AND inventory_item_id = ?",
                             (total[2], total[0], total[0], shop, level.inventory_item_id))
        for link in changes.identity_links:
            conn.execute("INSERT OR REPLACE INTO identity_links (shop, anonymous_id, customer_id) VALUES (?, ?, ?)",
                         (shop, link.anonymous_id, link.customer_id))
            conn.execute("UPDATE events SET customer_id = ?, user_key = ? WHERE shop = ? AND anonymous_id = ?"
                         f" AND customer_id IS NULL AND {not_from_pixel()}",
                         (link.customer_id, f"c:{link.customer_id}", shop, link.anonymous_id))

    @staticmethod
    def _mark_installed(conn: sqlite3.Connection, shop: str, happened_at: datetime) -> None:
        """A webhook arrived, so the app is installed; written only when that is news.

        A retry of a delivery triggered before the shop uninstalled proves nothing: it is ignored. `changed_at` is
        when the delivery that changed the state happened by Shopify's clock (its X-Shopify-Triggered-At, else its
        arrival), for install and uninstall alike: a delivery's processing time said a slow first webhook, triggered
        before a quick uninstall, came after it, and the uninstall was taken for a stale one.
        """
        state = conn.execute("SELECT installed, changed_at FROM shop_state WHERE shop = ?", (shop,)).fetchone()
        if state is not None and not state[0] and state[1] and iso_utc(happened_at) <= state[1]:
            return
        if state is None or not state[0]:
            conn.execute(
                "INSERT INTO shop_state (shop, installed, changed_at) VALUES (?, 1, ?)"
                " ON CONFLICT (shop) DO UPDATE SET installed = 1, changed_at = excluded.changed_at",
                (shop, iso_utc(happened_at)),  # Shopify's clock, as an uninstall's is compared with it
            )

    @staticmethod
    def _upsert_product(conn: sqlite3.Connection, p: CatalogProduct) -> None:
        """Insert or update a catalog row; a deleted product stays deleted and an older update is ignored.

        Shopify retries with the original payload and does not guarantee order, so an update whose
        `updated_at` is older than the stored row's must not overwrite it.
        """
        stored = conn.execute("SELECT updated_at, deleted FROM products WHERE shop = ? AND product_id = ?",
                              (p.shop, p.product_id)).fetchone()
        if stored is not None:
            stored_at, deleted = stored
            if deleted or (stored_at and p.updated_at and iso_utc(p.updated_at) < stored_at):
                return
        conn.execute(
            "INSERT INTO products (shop, product_id, title, handle, status, published_at, price, image_url,"
            " product_type, vendor, updated_at, hidden, picks, deleted)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)"
            " ON CONFLICT (shop, product_id) DO UPDATE SET title = excluded.title, handle = excluded.handle,"
            " status = excluded.status, published_at = excluded.published_at, price = excluded.price,"
            " image_url = excluded.image_url, product_type = excluded.product_type, vendor = excluded.vendor,"
            " updated_at = excluded.updated_at, hidden = " + HIDDEN_ON_UPDATE + ", picks = " + PICKS_ON_UPDATE
            + ", deleted = 0",
            (p.shop, p.product_id, p.title, p.handle, p.status, iso_utc(p.published_at), p.price, p.image_url,
             p.product_type, p.vendor, iso_utc(p.updated_at), p.hidden, encoded_picks(p)),
        )
        conn.execute("DELETE FROM variants WHERE shop = ? AND product_id = ?", (p.shop, p.product_id))
        conn.executemany(  # the payload's total is also the floor the stock levels keep (`STOCK_OF_VARIANT`)
            "INSERT OR REPLACE INTO variants (shop, variant_id, product_id, inventory_item_id, inventory_quantity,"
            " listed_quantity, tracked, continue_selling) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(p.shop, v.variant_id, p.product_id, v.inventory_item_id, v.inventory_quantity,
              v.inventory_quantity if v.tracked else None, int(v.tracked), int(v.continue_selling))
             for v in p.variants],
        )

    def shops(self) -> list[str]:
        rows = self._read("SELECT DISTINCT shop FROM events ORDER BY shop")
        return [r[0] for r in rows]

    def activity_since(self, shop: str, since: datetime, product_id: str | None = None) -> list[ActivityBucket]:
        """Per product, kind and UTC day since `since`: the summed weight factors (for trending); one product's alone
        where `product_id` names it (`python -m recommender product`)."""
        one = " AND product_id = ?" if product_id is not None else ""
        rows = self._read(
            "SELECT product_id, kind, substr(occurred_at, 1, 10), SUM(weight_factor) FROM events"
            f" WHERE shop = ? AND occurred_at >= ? AND weight_factor > 0{one} GROUP BY 1, 2, 3",
            (shop, iso_utc(since), *([product_id] if product_id is not None else [])),
        )
        return [ActivityBucket(p, EventKind(k), d, float(m)) for p, k, d, m in rows]

    def deleted_product_ids(self, shop: str) -> set[str]:
        rows = self._read("SELECT product_id FROM products WHERE shop = ? AND deleted = 1", (shop,))
        return {r[0] for r in rows}

    def products_matching(self, shop: str, product_type: str | None, vendor: str | None) -> set[str]:
        """Products of this type and vendor (case-insensitive; None matches any)."""
        rows = self._read(
            "SELECT product_id FROM products WHERE shop = ? AND deleted = 0"
            " AND (? IS NULL OR lower(product_type) = lower(?)) AND (? IS NULL OR lower(vendor) = lower(?))",
            (shop, product_type, product_type, vendor, vendor),
        )
        return {r[0] for r in rows}

    # --- privacy and lifecycle -----------------------------------------------------------

    def redact_customer(self, shop: str, customer_id: str, order_ids: Sequence[str]) -> int:
        """Delete the customer's events, their orders' events and their identity links; returns events deleted.

        The customer's events are those keyed to them and any still-anonymous event of a cart token
        linked to them. Data exports prepared for the customer go too: they are copies of the same data. So do
        the refunds of the listed orders kept for lines not stored yet (`pending_refunds`). The customer and the
        orders are recorded in `redactions` in the same transaction, so that no webhook, import or backfill stores
        them again (`REDACTED_EVENT`, `redacted`): the customer with the time of their latest redaction (what it
        erased occurred before it: a customer redacted again loses what they did in between too), each order with
        its first.
        """
        at = iso_utc(datetime.now(timezone.utc))

        def work(conn: sqlite3.Connection) -> int:
            conn.execute("INSERT INTO redactions (shop, kind, redacted_id, redacted_at) VALUES (?, 'customer', ?, ?)"
                         " ON CONFLICT (shop, kind, redacted_id) DO UPDATE SET"
                         " redacted_at = max(redacted_at, excluded.redacted_at)", (shop, customer_id, at))
            conn.executemany("INSERT OR IGNORE INTO redactions (shop, kind, redacted_id, redacted_at)"
                             " VALUES (?, 'order', ?, ?)", [(shop, o, at) for o in order_ids])
            deleted = conn.execute(
                f"DELETE FROM events WHERE {_SQLITE_CUSTOMER_EVENTS}",
                {"shop": shop, "customer_id": customer_id, "user_key": f"c:{customer_id}"},
            ).rowcount
            for order_id in order_ids:
                deleted += conn.execute("DELETE FROM events WHERE shop = ? AND order_id = ?", (shop, order_id)).rowcount
                conn.execute("DELETE FROM pending_refunds WHERE shop = ? AND order_id = ?", (shop, order_id))
            conn.execute("DELETE FROM identity_links WHERE shop = ? AND customer_id = ?", (shop, customer_id))
            conn.execute("DELETE FROM data_exports WHERE shop = ? AND customer_id = ?", (shop, customer_id))
            return deleted

        return int(self._write(work))

    def export_customer(self, shop: str, customer_id: str, order_ids: Sequence[str] = ()) -> dict:
        """Everything stored about the customer: their events and those of `order_ids` (every column; the events
        `redact_customer` deletes, given the same orders), their identity links, and the refunds of those orders kept
        for lines not stored yet (which it deletes too)."""
        params = {"shop": shop, "customer_id": customer_id, "user_key": f"c:{customer_id}",
                  "order_ids": json.dumps(list(order_ids))}
        events = self._read(
            f"SELECT {', '.join(EVENT_EXPORT_COLUMNS)} FROM events WHERE {_SQLITE_CUSTOMER_EVENTS}"
            " OR (shop = :shop AND order_id IN (SELECT value FROM json_each(:order_ids)))"
            " ORDER BY occurred_at, id", params)
        links = self._read("SELECT anonymous_id, customer_id FROM identity_links WHERE shop = ? AND customer_id = ?"
                           " ORDER BY anonymous_id", (shop, customer_id))
        refunds = self._read("SELECT order_id, dedupe_key, quantity FROM pending_refunds WHERE shop = :shop"
                             " AND order_id IN (SELECT value FROM json_each(:order_ids)) ORDER BY order_id, dedupe_key",
                             params)
        redactions = self._read("SELECT kind, redacted_id, redacted_at FROM redactions WHERE shop = :shop"
                                " AND ((kind = 'customer' AND redacted_id = :customer_id) OR (kind = 'order' AND"
                                " redacted_id IN (SELECT value FROM json_each(:order_ids)))) ORDER BY kind, redacted_id",
                                params)
        return customer_export(shop, customer_id, events, links, refunds, redactions)

    def save_data_export(self, shop: str, export_id: str, customer_id: str, body: dict) -> None:
        """Keep an export for the merchant to retrieve; saving the same export_id again replaces it."""
        text = export_json(body)
        self._write(lambda conn: conn.execute(
            "INSERT INTO data_exports (shop, export_id, customer_id, body, created_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (shop, export_id) DO UPDATE SET customer_id = excluded.customer_id, body = excluded.body,"
            " created_at = excluded.created_at",
            (shop, export_id, customer_id, text, iso_utc(datetime.now(timezone.utc))),
        ))

    def data_export(self, shop: str, export_id: str) -> dict | None:
        rows = self._read("SELECT body FROM data_exports WHERE shop = ? AND export_id = ?", (shop, export_id))
        return json.loads(rows[0][0]) if rows else None

    def set_shop_installed(self, shop: str, installed: bool) -> None:
        self._write(lambda conn: conn.execute(
            "INSERT INTO shop_state (shop, installed, changed_at) VALUES (?, ?, ?)"
            " ON CONFLICT (shop) DO UPDATE SET installed = excluded.installed, changed_at = excluded.changed_at",
            (shop, int(installed), iso_utc(datetime.now(timezone.utc))),
        ))

    def mark_uninstalled(self, delivery: Delivery) -> bool | None:
        """An app/uninstalled delivery: the shop no longer served, and the delivery kept, in one transaction. None for
        a delivery kept before (a retry: nothing done twice); False, nothing changed, for one triggered before the
        shop was last marked installed (a late retry of an uninstall the merchant has undone since, as
        `_mark_installed` ignores a late retry of a delivery from before an uninstall); else True."""

        def work(conn: sqlite3.Connection) -> bool | None:
            if not self._insert_delivery(conn, delivery):
                return None
            state = conn.execute("SELECT installed, changed_at FROM shop_state WHERE shop = ?",
                                 (delivery.shop,)).fetchone()
            if state is not None and state[0] and iso_utc(delivery.happened_at) < state[1]:
                return False
            conn.execute(
                "INSERT INTO shop_state (shop, installed, changed_at) VALUES (?, 0, ?)"
                " ON CONFLICT (shop) DO UPDATE SET installed = 0, changed_at = excluded.changed_at",
                (delivery.shop, iso_utc(delivery.happened_at)),
            )
            return True

        return self._write(work)

    def is_shop_installed(self, shop: str) -> bool:
        """True only if the shop was marked installed (or sent a webhook) and not since uninstalled."""
        return bool(self._read(_INSTALLED_SQL, (shop,)))

    def installed_shops(self) -> list[str]:
        return [r[0] for r in self._read("SELECT shop FROM shop_state WHERE installed = 1 ORDER BY shop")]

    def prune_events(self, older_than: datetime) -> int:
        """Delete events and storefronts' views and clicks of answers (`recommendation_events`) that occurred, and
        deliveries and refunds kept for lines never stored received, before `older_than`; returns events deleted."""
        cutoff = iso_utc(require_aware(older_than, "older_than"))

        def work(conn: sqlite3.Connection) -> int:
            conn.execute("DELETE FROM deliveries WHERE received_at < ?", (cutoff,))
            conn.execute("DELETE FROM pending_refunds WHERE received_at < ?", (cutoff,))
            conn.execute("DELETE FROM recommendation_events WHERE occurred_at < ?", (cutoff,))  # attribution's
            return conn.execute("DELETE FROM events WHERE occurred_at < ?", (cutoff,)).rowcount

        return int(self._write(work))

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()
