"""The event store on PostgreSQL: the same contract as the SQLite store, shared by many instances.

Chosen by `EVENT_STORE_URL=postgresql://user:password@host:5432/db` (or `postgres://`;
any libpq parameter, e.g. `?options=-csearch_path%3Dshop_events`, passes through).
Each thread has its own connection (gunicorn serves with threads). Writes run in
one READ COMMITTED transaction each; instead of SQLite's single writer, they stay
correct under concurrency by doing every check-then-write as one statement
(`ON CONFLICT … DO NOTHING/UPDATE … WHERE`) or under a transaction-level advisory
lock (a shopper's cart token, an inventory item), and they are retried when
PostgreSQL breaks a deadlock. A delivery of events alone that needs no lock (an
order of a known customer: the common webhook) is one statement, its own transaction,
one round trip (`_APPLY_EVENTS`); so is each other common webhook (a guest's order or cart, a checkout, a
product's update or deletion, a stock level), its statements sent together in pipeline mode; a backfill's
page of products or orders is a few set-wise statements (`apply_many`); every other write goes statement by
statement.
The schema is versioned in `schema_migrations`: found current on open with one
statement, or else migrated under an advisory lock, so instances may start at the same time.
Timestamps are `timestamptz`; every value read back is an aware UTC datetime.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import weakref
import zlib
from dataclasses import fields, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Collection, Iterable, Sequence, TypeVar

import psycopg
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from recommender.errors import ConfigError, StoreError
from recommender.changes import ChangeSet, Delivery, Event, RefundLine
from recommender.events import CatalogProduct, EventKind, MerchantPicks, order_line_key
from recommender.store import (
    BACKORDERED_SQL, CART_STATE_COLUMNS, CART_STATE_PREFIX, EVENT_EXPORT_COLUMNS, HIDDEN_ON_UPDATE, KINDS,
    NOTHING_LEFT_OUT, NOTHING_ON_HAND, NOT_ON_SALE, PICKS_ON_UPDATE, PICKS_SQL, REDACTED_EVENT, STOCK_OF_VARIANT,
    SIGNED_PURCHASE_OF, TOPICS_NOT_PROVING_INSTALL, UNSELLABLE_SQL, ActivityBucket, CatalogState, Interaction,
    SharedQueries, customer_export, encoded_picks, export_json, from_pixel, iso_utc, later, latest_wins, log_withheld,
    not_from_pixel, of_one_shop, refund_adjustment_key, require_aware,
)
from recommender.store import RECOMMENDATION_EVENT_COLUMNS, RecommendationSignal  # attribution's

if TYPE_CHECKING:
    from recommender.event_columns import ColumnTexts  # numpy: imported where columns are read

T = TypeVar("T")

# The schema's version, and whether the `schema_migrations` the search_path finds is the one in current_schema().
_SCHEMA_VERSION = ("SELECT (SELECT coalesce(max(version), 0) FROM schema_migrations), to_regclass('schema_migrations')"
                   " = to_regclass(quote_ident(current_schema()) || '.schema_migrations')")

# Each entry migrates the schema from version i to i + 1; `schema_migrations` records the versions applied.
POSTGRES_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE deliveries (
        shop text NOT NULL,
        webhook_id text NOT NULL,
        topic text NOT NULL,
        event_id text,
        received_at timestamptz NOT NULL,
        PRIMARY KEY (shop, webhook_id)
    );
    CREATE INDEX deliveries_by_received_at ON deliveries (received_at);
    CREATE TABLE events (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        shop text NOT NULL,
        kind text NOT NULL,
        user_key text NOT NULL,
        customer_id text,
        anonymous_id text,
        product_id text NOT NULL,
        variant_id text,
        quantity integer NOT NULL,
        price double precision,
        order_id text,
        occurred_at timestamptz NOT NULL,
        source_topic text NOT NULL,
        delivery_id text NOT NULL,
        dedupe_key text,
        weight_factor double precision NOT NULL DEFAULT 1.0,
        UNIQUE (shop, dedupe_key)
    );
    CREATE INDEX events_by_user ON events (shop, user_key, occurred_at);
    CREATE INDEX events_by_order ON events (shop, order_id);
    CREATE INDEX events_by_anonymous ON events (shop, anonymous_id);
    CREATE INDEX events_by_customer ON events (shop, customer_id);
    CREATE INDEX events_by_time ON events (shop, occurred_at);
    CREATE INDEX events_by_occurred_at ON events (occurred_at);
    CREATE TABLE products (
        shop text NOT NULL,
        product_id text NOT NULL,
        title text NOT NULL,
        handle text NOT NULL,
        status text NOT NULL,
        published_at timestamptz,
        price double precision,
        image_url text,
        product_type text NOT NULL,
        vendor text NOT NULL,
        updated_at timestamptz,
        deleted boolean NOT NULL DEFAULT false,
        PRIMARY KEY (shop, product_id)
    );
    CREATE TABLE variants (
        shop text NOT NULL,
        variant_id text NOT NULL,
        product_id text NOT NULL,
        inventory_item_id text,
        inventory_quantity bigint,
        tracked boolean NOT NULL,
        continue_selling boolean NOT NULL,
        PRIMARY KEY (shop, variant_id)
    );
    CREATE INDEX variants_by_product ON variants (shop, product_id);
    CREATE INDEX variants_by_inventory_item ON variants (shop, inventory_item_id);
    CREATE TABLE identity_links (
        shop text NOT NULL,
        anonymous_id text NOT NULL,
        customer_id text NOT NULL,
        PRIMARY KEY (shop, anonymous_id)
    );
    CREATE INDEX identity_links_by_customer ON identity_links (shop, customer_id);
    CREATE TABLE inventory_levels (
        shop text NOT NULL,
        inventory_item_id text NOT NULL,
        location_id text NOT NULL,
        available bigint,
        PRIMARY KEY (shop, inventory_item_id, location_id)
    );
    CREATE TABLE adjustments (
        shop text NOT NULL,
        adjustment_key text NOT NULL,
        PRIMARY KEY (shop, adjustment_key)
    );
    CREATE TABLE data_exports (
        shop text NOT NULL,
        export_id text NOT NULL,
        customer_id text NOT NULL,
        body json NOT NULL,
        created_at timestamptz NOT NULL,
        PRIMARY KEY (shop, export_id)
    );
    CREATE TABLE shop_state (
        shop text PRIMARY KEY,
        installed boolean NOT NULL,
        changed_at timestamptz NOT NULL
    );
    """,
    # Whether each product is for sale, kept at write time so the catalog snapshot is an index read.
    "ALTER TABLE products ADD COLUMN sellable boolean NOT NULL DEFAULT true;"
    f" UPDATE products SET sellable = false WHERE {NOT_ON_SALE.format(yes='true', no='false')};"
    " CREATE INDEX products_by_sellable ON products (shop, sellable);",
    # A shopper's events in the order `history` reads them (occurred_at, then id, both newest first), so the
    # read stops at its limit instead of sorting all of the shopper's events: 5,000 events took 1.6 ms and
    # 50,000 took 11.6 ms to read 20 (bench/PERFORMANCE.md). SQLite's index ends with the rowid (the id) anyway.
    # Built in the migration's transaction: writes wait for it, once, on a large table, unless it was built by hand
    # beforehand with CREATE INDEX CONCURRENTLY (README, "PostgreSQL").
    "CREATE INDEX IF NOT EXISTS events_by_user_latest ON events (shop, user_key, occurred_at, id);"
    " DROP INDEX IF EXISTS events_by_user;",
    # The same read as a function whose plan cannot depend on the table's statistics. A shopper whose key the
    # planner thinks rare (most keys, and every key the statistics have not seen yet) got a bitmap scan of all of
    # their events and a sort: 36–77 ms for the latest 20 of 50,000 in the benchmark, where walking the index
    # backwards stops after 20 rows (0.15 ms). Bitmap scans and sorts are off inside it alone; PL/pgSQL keeps its
    # plan per connection, so the call costs 0.03–0.05 ms more than the statement did (bench/PERFORMANCE.md).
    "CREATE OR REPLACE FUNCTION latest_events(p_shop text, p_user_key text, p_limit integer)"
    " RETURNS TABLE (user_key text, product_id text, kind text, occurred_at timestamptz, order_id text,"
    " weight_factor double precision, id bigint)"
    " LANGUAGE plpgsql STABLE ROWS 20"
    " SET enable_bitmapscan = off SET enable_sort = off SET enable_incremental_sort = off"
    " AS $$ BEGIN RETURN QUERY"
    " SELECT e.user_key, e.product_id, e.kind, e.occurred_at, e.order_id, e.weight_factor, e.id FROM events e"
    " WHERE e.shop = p_shop AND e.user_key = p_user_key AND e.weight_factor > 0"
    " ORDER BY e.occurred_at DESC, e.id DESC LIMIT p_limit; END $$;",
    # The training job's queue (retraining.py): when it last started each shop, what the shop's last finished
    # training took, how many of its trainings in a row were started and never finished (cut off), and whether it
    # was the first shop the last run's time budget left out.
    "ALTER TABLE shop_state ADD COLUMN train_started_at timestamptz, ADD COLUMN train_seconds double precision,"
    " ADD COLUMN train_unfinished integer NOT NULL DEFAULT 0, ADD COLUMN train_deferred integer NOT NULL DEFAULT 0;",
    # The training runs going on (retraining.py), each saying it is alive every so often, and which run last
    # started each shop: a shop whose run is alive is that run's (being trained or trained), not cut off.
    "ALTER TABLE shop_state ADD COLUMN train_run text;"
    " CREATE TABLE training_runs (run_id text PRIMARY KEY, started_at timestamptz NOT NULL,"
    " alive_at timestamptz NOT NULL);",
    # Refund lines whose order line was not stored when they came, each waiting, keyed as its adjustment, until the
    # purchase with its line's dedupe key is inserted (recommender.store's migration 7).
    "CREATE TABLE pending_refunds (shop text NOT NULL, adjustment_key text NOT NULL, order_id text NOT NULL,"
    " dedupe_key text NOT NULL, quantity integer NOT NULL, received_at timestamptz NOT NULL,"
    " PRIMARY KEY (shop, adjustment_key));"
    " CREATE INDEX pending_refunds_by_line ON pending_refunds (shop, dedupe_key);",
    # Each variant's products payload total and each level's "read with every location's" (recommender.store's
    # migration 8, `STOCK_OF_VARIANT`).
    "ALTER TABLE variants ADD COLUMN listed_quantity bigint;"
    " UPDATE variants SET listed_quantity = inventory_quantity WHERE tracked;"
    " ALTER TABLE inventory_levels ADD COLUMN all_locations boolean NOT NULL DEFAULT false;",
    # What customers/redact erased, the customer and each order it named, for import and backfill to skip
    # (recommender.store's migration 9).
    "CREATE TABLE redactions (shop text NOT NULL, kind text NOT NULL, redacted_id text NOT NULL,"
    " redacted_at timestamptz NOT NULL, PRIMARY KEY (shop, kind, redacted_id));",
    # Storefronts' views and clicks of answers, for attribution, apart from `events` (recommender.store's migration 10).
    "CREATE TABLE recommendation_events (shop text NOT NULL, event_id text NOT NULL, product_id text NOT NULL,"
    " kind text NOT NULL, recommendation_id text NOT NULL, intent text NOT NULL, position integer NOT NULL,"
    " client_id text NOT NULL, occurred_at timestamptz NOT NULL, PRIMARY KEY (shop, event_id, product_id));"
    " CREATE INDEX recommendation_events_by_time ON recommendation_events (shop, occurred_at);"
    " CREATE INDEX recommendation_events_by_occurred_at ON recommendation_events (occurred_at);"
    " CREATE INDEX recommendation_clicks_by_client ON recommendation_events (shop, client_id, product_id, occurred_at)"
    " WHERE kind = 'click';",
    # The currency of an event's price (recommender.store's migration 11).
    "ALTER TABLE events ADD COLUMN currency text;",
    # Why no answer shows a product that may be for sale (recommender.store's migration 12).
    "ALTER TABLE products ADD COLUMN hidden text;",
    # Which products for sale have nothing on hand, for complementary answers to leave out (recommender.store's
    # migration 13).
    "ALTER TABLE products ADD COLUMN backordered boolean NOT NULL DEFAULT false;"
    f" UPDATE products SET backordered = true WHERE sellable AND {NOTHING_ON_HAND.format(no='false')};"
    " CREATE INDEX products_backordered ON products (shop) WHERE backordered;",
    # The merchant's picks for each product's page (recommender.store's migration 14).
    "ALTER TABLE products ADD COLUMN picks text;"
    " CREATE INDEX products_with_picks ON products (shop) WHERE picks <> '';",
)

# Advisory lock keys. Migrations take one 64-bit key for the whole database; writes take (namespace, key) pairs, a
# key space PostgreSQL keeps apart from the 64-bit one: crc32 of shop and id for cart tokens and inventory items
# (`_lock_key`), sha256 for products, which the server computes too (`_product_lock`, `_lock_key_sql`).
MIGRATION_LOCK = 0x7265636F6D6D656E  # "recommen"
ANONYMOUS_ID_LOCK = 0x72650001  # a cart token: its events and its link to a customer
INVENTORY_ITEM_LOCK = 0x72650002  # an inventory item: its levels and the sum written to its variants
PRODUCT_LOCK = 0x72650003  # a product: its row, its variants and the `sellable` flag computed from them
WRITE_ATTEMPTS = 3  # a transaction PostgreSQL chose as a deadlock victim is run again this many times in all
EVENTS_PER_STATEMENT = 2_000  # `add_events`' rows a statement: a history import's file goes as many statements

# `apply` for a delivery of events alone that takes no lock, as one statement (atomic on its own, one round trip):
# the delivery row; if it is new, the events, each a new row or, when its dedupe key is stored already, only
# lowering that row's weight factor (ON CONFLICT sees a row a concurrent writer committed meanwhile, as the
# separate UPDATE of the general path does); then the shop marked installed when that is news (`_mark_installed`).
# An event counts as new when the id it was given is the id of the row its insert returned. The events come
# as one JSON array of objects (one parameter: far cheaper to send than an array per column), dedupe keys
# unique among them.
_EVENT_COLUMNS = ("shop text, kind text, user_key text, customer_id text, anonymous_id text, product_id text,"
                  " variant_id text, quantity integer, price double precision, order_id text, occurred_at timestamptz,"
                  " source_topic text, delivery_id text, dedupe_key text, weight_factor double precision,"
                  " currency text")
_EVENT_NAMES = ", ".join(column.split()[0] for column in _EVENT_COLUMNS.split(", "))
# The shop marked installed by a delivery that happened at %(happened_at)s: written only when that is news, and
# not by a delivery that happened before the shop's uninstall (a retry of one triggered while it was installed).
# `changed_at` is when the delivery that changed the state happened (Shopify's clock), for install and uninstall
# alike, as SQLite's `_mark_installed` writes it.
_NOT_YET_INSTALLED = (" NOT EXISTS (SELECT FROM shop_state WHERE shop = %(shop)s"
                      " AND (installed OR changed_at >= %(happened_at)s))")
# The check again on the conflicting row, locked: an uninstall committed since the statement's snapshot wins.
_INSTALL_CONFLICT = (" ON CONFLICT (shop) DO UPDATE SET installed = true, changed_at = excluded.changed_at"
                     " WHERE NOT shop_state.installed AND (shop_state.changed_at IS NULL"
                     " OR shop_state.changed_at < %(happened_at)s)")
_MARK_INSTALLED = ("INSERT INTO shop_state (shop, installed, changed_at) SELECT %(shop)s, true, %(happened_at)s"
                   " WHERE" + _NOT_YET_INSTALLED + _INSTALL_CONFLICT)
# The proposed rows of an events statement: each guest's event (no customer id at all, a cart token; not a pixel's:
# `not_from_pixel`) joined to the customer its token was linked to, as SQLite's `_insert_events` joins it (the
# statement runs after the token's lock), each event shrunk by the refunds kept for its dedupe key (`refunded`:
# their units, NULL for none; they came before the line), as `_insert_events` shrinks it, and a pixel's purchase of
# an order and product a signed purchase already holds weighing 0 (`signed`: SIGNED_PURCHASE_OF). A subquery a row,
# not a join, so that the rows keep their order and their ids ascend with it; OFFSET 0 keeps the planner from
# copying it into each column that reads it (two index probes a row instead of one).
_LINKED_COLUMNS = {"user_key": "coalesce('c:' || e.linked, e.user_key)",
                   "customer_id": "coalesce(e.linked, e.customer_id)",
                   "weight_factor": "CASE WHEN e.signed THEN 0 WHEN e.refunded IS NULL THEN e.weight_factor ELSE"
                                    " greatest(0, e.weight_factor - e.refunded::double precision / e.quantity) END"}
_PROPOSED = ", ".join(f"{_LINKED_COLUMNS[name]} AS {name}" if name in _LINKED_COLUMNS else f"e.{name}"
                      for name in _EVENT_NAMES.split(", ")) + ", e.refunded"


def _events_linked(rows: str, extra: str = "") -> str:
    """FROM the JSON recordset `rows` (a parameter), each row with the customer its guest's token was linked to (none
    for a pixel's), for a purchase (an order line: nothing else is refunded) the units refunds kept for its dedupe
    key refunded (`pending_refunds`) and, for a pixel's purchase of an order, whether a signed purchase of its order
    and product is stored (`SIGNED_PURCHASE_OF`; one of the same statement is not seen). A row of a customer or order
    customers/redact erased is left out (`REDACTED_EVENT`: two probes of the primary key of `redactions`, a row
    with neither an order nor a customer id none), so nothing is written of it."""
    return (" FROM (SELECT e.*, (SELECT l.customer_id FROM identity_links AS l WHERE e.customer_id IS NULL"
            f" AND e.anonymous_id <> '' AND {not_from_pixel('e.source_topic')}"
            " AND l.shop = e.shop AND l.anonymous_id = e.anonymous_id) AS linked,"
            " CASE WHEN e.kind = 'purchase' THEN (SELECT sum(r.quantity) FROM pending_refunds AS r"
            " WHERE r.shop = e.shop AND r.dedupe_key = e.dedupe_key) END AS refunded,"
            f" CASE WHEN e.kind = 'purchase' AND e.order_id IS NOT NULL AND {from_pixel('e.source_topic')} THEN "
            + SIGNED_PURCHASE_OF.format(shop="e.shop", order_id="e.order_id", product_id="e.product_id") +
            " END AS signed"
            f" FROM ROWS FROM (json_to_recordset({rows}::json) AS ({_EVENT_COLUMNS}{extra}))"
            f" WITH ORDINALITY AS e ({_EVENT_NAMES}{', item' if extra else ''}, position)"
            " WHERE (e.order_id IS NULL AND e.customer_id IS NULL) OR NOT " + REDACTED_EVENT.format(
                shop="e.shop", order_id="e.order_id", customer_id="e.customer_id", occurred_at="e.occurred_at") +
            " OFFSET 0) AS e")


# A stored row holds the latest of its key's events, not the lowest weight (a pixel's cart signal: CART_STATE_PREFIX;
# of two at the same time, the lower: `recommender.store.later`).
_LATEST_WINS = f"left(events.dedupe_key, {len(CART_STATE_PREFIX)}) = '{CART_STATE_PREFIX}'"

# The rows of `proposed` (ids drawn in the order given) inserted in that order: each new event a row, one whose dedupe
# key is stored only lowering that row's weight factor (a pixel's cart signal: replacing it if later, `_LATEST_WINS`). `stored JOIN proposed USING (id)` are the new ones; the refunds
# kept for their keys, which shrank them, are done with (`settled`, the rows `proposed` summed: one snapshot). Each
# signed purchase of an order, new or stored before, sets the pixel's stored purchases of its order and product to 0
# (`pixel_zeroed`: SIGNED_PURCHASE_OF; rows `proposed` names are left to the upsert: no row is written twice). A
# known gap, left rather than taking a lock on this path: a pixel's purchase and a signed one of the same order and
# product written at once (neither committed when the other's statement began) do not see each other, and both
# count until the order's next webhook (orders/paid after orders/create, a retry) sets the pixel's to 0.
_STORE_PROPOSED = (
    " stored AS ("
    f" INSERT INTO events (id, {_EVENT_NAMES}) OVERRIDING SYSTEM VALUE"
    f" SELECT id, {_EVENT_NAMES} FROM proposed ORDER BY position"
    " ON CONFLICT (shop, dedupe_key) DO UPDATE SET weight_factor = excluded.weight_factor"
    + "".join(f", {column} = CASE WHEN {_LATEST_WINS} THEN excluded.{column} ELSE events.{column} END"
              for column in CART_STATE_COLUMNS) +
    f" WHERE CASE WHEN {_LATEST_WINS} THEN (excluded.occurred_at, -excluded.weight_factor)"
    " > (events.occurred_at, -events.weight_factor) ELSE excluded.weight_factor < events.weight_factor END"
    " RETURNING id),"
    " settled AS ("
    " DELETE FROM pending_refunds AS r USING stored JOIN proposed USING (id)"
    " WHERE proposed.refunded IS NOT NULL AND r.shop = proposed.shop AND r.dedupe_key = proposed.dedupe_key),"
    " pixel_zeroed AS ("
    " UPDATE events SET weight_factor = 0 FROM proposed"
    f" WHERE proposed.kind = 'purchase' AND proposed.order_id IS NOT NULL AND {not_from_pixel('proposed.source_topic')}"
    " AND events.shop = proposed.shop AND events.order_id = proposed.order_id"
    f" AND events.product_id = proposed.product_id AND events.kind = 'purchase' AND {from_pixel('events.source_topic')}"
    " AND events.weight_factor <> 0"
    " AND NOT EXISTS (SELECT FROM proposed AS p WHERE p.shop = events.shop AND p.dedupe_key = events.dedupe_key)"
    " RETURNING events.id)"
)

# One delivery's row (`delivery`: a row if it is new), and the install mark it makes if it is new and proves one.
# The order in which a statement's CTEs write is not defined; the mark has been seen locking the shop's row before the
# statement's other writes lock theirs. A deadlock with a writer taking them the other way is retried (WRITE_ATTEMPTS).
_DELIVERY_ROW = (
    "delivery AS ("
    " INSERT INTO deliveries (shop, webhook_id, topic, event_id, received_at)"
    " VALUES (%(shop)s, %(webhook_id)s, %(topic)s, %(event_id)s, %(received_at)s)"
    " ON CONFLICT (shop, webhook_id) DO NOTHING RETURNING true)"
)
_INSTALLED_BY_DELIVERY = (
    " installed AS ("
    " INSERT INTO shop_state (shop, installed, changed_at) SELECT %(shop)s, true, %(happened_at)s"
    " WHERE %(proves_install)s AND EXISTS (SELECT FROM delivery) AND" + _NOT_YET_INSTALLED + _INSTALL_CONFLICT + ")"
)

# An app/uninstalled delivery (`mark_uninstalled`), one statement: its row and, if it is new, the shop marked not
# installed, unless the shop was marked installed after the uninstall was triggered (checked on the locked row, as
# `_INSTALL_CONFLICT` checks the mirror). Whether the delivery was new, and whether the shop was uninstalled.
_UNINSTALL = (
    "WITH " + _DELIVERY_ROW + ","
    " uninstalled AS ("
    " INSERT INTO shop_state (shop, installed, changed_at) SELECT %(shop)s, false, %(happened_at)s"
    " WHERE EXISTS (SELECT FROM delivery)"
    " ON CONFLICT (shop) DO UPDATE SET installed = false, changed_at = excluded.changed_at"
    " WHERE NOT shop_state.installed OR shop_state.changed_at <= %(happened_at)s RETURNING true)"
    " SELECT EXISTS (SELECT FROM delivery), EXISTS (SELECT FROM uninstalled)"
)


def _links_stored(condition: str = "") -> str:
    """Each cart token's link (`%(links)s`: anonymous_id, customer_id) of `%(shop)s`, a new one or its new customer."""
    return ("INSERT INTO identity_links (shop, anonymous_id, customer_id)"
            " SELECT %(shop)s, l.anonymous_id, l.customer_id"
            " FROM json_to_recordset(%(links)s::json) AS l (anonymous_id text, customer_id text)" + condition +
            " ON CONFLICT (shop, anonymous_id) DO UPDATE SET customer_id = excluded.customer_id")


def _links_joined(condition: str = "") -> str:
    """Each token's guest events (no customer yet; not a pixel's) joined to the customer `%(links)s` links it to."""
    return ("UPDATE events SET customer_id = l.customer_id, user_key = 'c:' || l.customer_id"
            " FROM json_to_recordset(%(links)s::json) AS l (anonymous_id text, customer_id text)"
            " WHERE events.shop = %(shop)s AND events.anonymous_id = l.anonymous_id AND events.customer_id IS NULL"
            f" AND {not_from_pixel('events.source_topic')}" + condition)


def _apply_events(void: str = "") -> str:
    """`_APPLY_EVENTS`, with `void` (a CTE or none) among its writes."""
    return (
        "WITH " + _DELIVERY_ROW + ","
        " proposed AS ("
        f" SELECT nextval((SELECT pg_get_serial_sequence('events', 'id'))) AS id, {_PROPOSED}, e.position"
        + _events_linked("%(events)s") +
        " WHERE EXISTS (SELECT FROM delivery)),"
        + _STORE_PROPOSED + "," + _INSTALLED_BY_DELIVERY + void +
        " SELECT EXISTS (SELECT FROM delivery), (SELECT count(*) FROM stored JOIN proposed USING (id)),"
        " json_array_length(%(events)s::json) - (SELECT count(*) FROM proposed)"  # withheld, if the delivery is new
    )


_APPLY_EVENTS = _apply_events()
# The same for a cancellation: if the delivery is new, its orders' other purchases (`%(voids)s`) made void too, in
# the statement (the rows its own events' dedupe keys name are lowered by their upsert, the pixel's purchases of its
# lines' products by `pixel_zeroed`: no row is written twice).
_APPLY_EVENTS_VOIDING = _apply_events(
    ", void AS (UPDATE events SET weight_factor = 0 WHERE shop = %(shop)s AND order_id = ANY(%(voids)s)"
    " AND kind = 'purchase' AND weight_factor <> 0 AND EXISTS (SELECT FROM delivery)"
    " AND NOT EXISTS (SELECT FROM proposed WHERE proposed.dedupe_key = events.dedupe_key)"
    " AND id NOT IN (SELECT id FROM pixel_zeroed))")

# One delivery of checkouts' links alone (a checkout naming its cart's customer), after its tokens' locks: the
# delivery row and, only if it is new, each link, each token's guest events joined to its customer and the install
# mark, in one statement (one round trip with the locks, where the page of one takes two).
_APPLY_LINKS = (
    "WITH " + _DELIVERY_ROW + ","
    " link AS (" + _links_stored(" WHERE EXISTS (SELECT FROM delivery)") + "),"
    " joined AS (" + _links_joined(" AND EXISTS (SELECT FROM delivery)") + "),"
    + _INSTALLED_BY_DELIVERY +
    " SELECT EXISTS (SELECT FROM delivery), 0"
)

# A beacon's events, stored only if their shop is installed (`add_events_if_installed`): whether it is, and how
# many events were new; both looks at shop_state see the statement's one snapshot.
_INSTALLED_SHOPS_EVENTS = (
    "WITH proposed AS ("
    f" SELECT nextval((SELECT pg_get_serial_sequence('events', 'id'))) AS id, {_PROPOSED}, e.position"
    + _events_linked("%(events)s") +
    " WHERE EXISTS (SELECT FROM shop_state WHERE shop = %(shop)s AND installed)),"
    + _STORE_PROPOSED +
    " SELECT EXISTS (SELECT FROM shop_state WHERE shop = %(shop)s AND installed),"
    " (SELECT count(*) FROM stored JOIN proposed USING (id))"
)

# A beacon's storefront signals (`add_beacon_if_installed`: views and clicks of answers, for attribution), stored only
# if their shop is installed, each pixel event and product once: whether the shop is installed, and how many were new.
# Sent in the pipeline after the beacon's events (`_INSTALLED_SHOPS_EVENTS`), in the same transaction.
_INSTALLED_SHOPS_SIGNALS = (
    "WITH signal AS ("
    f" INSERT INTO recommendation_events ({', '.join(RECOMMENDATION_EVENT_COLUMNS)})"
    f" SELECT %(shop)s, {', '.join('s.' + c for c in RECOMMENDATION_EVENT_COLUMNS[1:])}"
    " FROM json_to_recordset(%(signals)s::json) AS s (kind text, event_id text, client_id text, recommendation_id text,"
    " intent text, product_id text, position integer, occurred_at timestamptz)"
    " WHERE EXISTS (SELECT FROM shop_state WHERE shop = %(shop)s AND installed)"
    " ON CONFLICT (shop, event_id, product_id) DO NOTHING RETURNING true)"
    " SELECT EXISTS (SELECT FROM shop_state WHERE shop = %(shop)s AND installed), (SELECT count(*) FROM signal)"
)

# A catalog row's upsert, one product or a page: a deleted product stays deleted and an older update is ignored,
# the check evaluated on the locked row (two updates of one product at once keep the newer, whichever commits last);
# the products it changed are returned.
_PRODUCT_CONFLICT = (
    " ON CONFLICT (shop, product_id) DO UPDATE SET title = excluded.title, handle = excluded.handle,"
    " status = excluded.status, published_at = excluded.published_at, price = excluded.price,"
    " image_url = excluded.image_url, product_type = excluded.product_type, vendor = excluded.vendor,"
    " updated_at = excluded.updated_at, hidden = " + HIDDEN_ON_UPDATE + ", picks = " + PICKS_ON_UPDATE +
    " WHERE NOT products.deleted AND (products.updated_at IS NULL OR excluded.updated_at IS NULL"
    " OR excluded.updated_at >= products.updated_at)"
    " RETURNING product_id"
)
_VARIANT_CONFLICT = (
    " ON CONFLICT (shop, variant_id) DO UPDATE SET product_id = excluded.product_id,"
    " inventory_item_id = excluded.inventory_item_id, inventory_quantity = excluded.inventory_quantity,"
    " listed_quantity = excluded.listed_quantity, tracked = excluded.tracked,"
    " continue_selling = excluded.continue_selling"
)
# `apply_many` for a page of catalog upserts (a backfill's), set-wise: its products' locks in one statement, the
# page's delivery rows in one, every product in one upsert (each row's own check), the variants of the products it
# changed in one delete and one insert. Rows come as one JSON array of objects, as `_APPLY_EVENTS`' events do.
_PAGE_DELIVERIES = (
    "INSERT INTO deliveries (shop, webhook_id, topic, event_id, received_at)"
    " SELECT %s, d.webhook_id, d.topic, d.event_id, d.received_at"
    " FROM json_to_recordset(%s::json) AS d (webhook_id text, topic text, event_id text, received_at timestamptz)"
    " ON CONFLICT (shop, webhook_id) DO NOTHING RETURNING webhook_id"
)
def _products_upserted(condition: str = "") -> str:
    """Each product of `%(products)s` (a JSON array of rows) of `%(shop)s` inserted or updated (`_PRODUCT_CONFLICT`),
    those `condition` keeps; the ones it changed returned."""
    return (
        "INSERT INTO products (shop, product_id, title, handle, status, published_at, price, image_url, product_type,"
        " vendor, updated_at, hidden, picks, deleted)"
        " SELECT %(shop)s, r.product_id, r.title, r.handle, r.status, r.published_at, r.price, r.image_url,"
        " r.product_type, r.vendor, r.updated_at, r.hidden, r.picks, false"
        " FROM json_to_recordset(%(products)s::json) AS r (product_id text, title text, handle text, status text,"
        " published_at timestamptz, price double precision, image_url text, product_type text, vendor text,"
        " updated_at timestamptz, hidden text, picks text)" + condition + _PRODUCT_CONFLICT
    )


_VARIANT_ROWS = ("json_to_recordset(%(variants)s::json) AS v (variant_id text, product_id text, inventory_item_id text,"
                 " inventory_quantity bigint, tracked boolean, continue_selling boolean)")


def _variants_upserted(rows: str) -> str:
    """Each variant of `rows` (a FROM item naming them `v`) of `%(shop)s` inserted, or its row updated; the payload's
    total is also the floor the stock levels keep (`STOCK_OF_VARIANT`)."""
    return ("INSERT INTO variants (shop, variant_id, product_id, inventory_item_id, inventory_quantity,"
            " listed_quantity, tracked, continue_selling)"
            " SELECT %(shop)s, v.variant_id, v.product_id, v.inventory_item_id, v.inventory_quantity,"
            " CASE WHEN v.tracked THEN v.inventory_quantity END, v.tracked, v.continue_selling FROM " + rows
            + _VARIANT_CONFLICT)


_PAGE_PRODUCTS = _products_upserted()
_PAGE_VARIANTS = _variants_upserted(_VARIANT_ROWS)
_DELETED_PRODUCTS = (  # a deleted product keeps its row, marked, so that an older update cannot bring it back
    "INSERT INTO products (shop, product_id, title, handle, status, product_type, vendor, deleted)"
    " SELECT %(shop)s, product_id, '', '', 'deleted', '', '', true FROM unnest(%(deleted)s::text[]) AS product_id"
)
_DELETION_CONFLICT = " ON CONFLICT (shop, product_id) DO UPDATE SET deleted = true"
# The products an order's lines sell as gift cards (`ChangeSet.gift_card_product_ids`), marked so for good; a row of
# their own for those the catalog has not synced (recommender.store's `_apply_changes` does the same one by one).
_GIFT_CARDS = (
    "INSERT INTO products (shop, product_id, title, handle, status, product_type, vendor, hidden)"
    " SELECT %(shop)s, product_id, '', '', 'active', '', '', 'gift_card' FROM unnest(%(gift_cards)s::text[]) AS product_id"
    " ON CONFLICT (shop, product_id) DO UPDATE SET hidden = 'gift_card'"
    " WHERE products.hidden IS DISTINCT FROM 'gift_card'"
)

# `apply` for one delivery of catalog upserts and deletions alone, after its products' locks: the delivery row and,
# only if it is new, the deletions, the upserts, the variants of the products the upsert changed (the ones the
# delivery no longer names deleted, the others inserted or updated: no row is written twice in the statement) and
# the install mark, in one statement. The `sellable` flags follow in a statement of their own, which sees these rows.
_APPLY_CATALOG = (
    "WITH " + _DELIVERY_ROW + ","
    " gone AS (" + _DELETED_PRODUCTS + " WHERE EXISTS (SELECT FROM delivery)" + _DELETION_CONFLICT + "),"
    " changed AS (" + _products_upserted(" WHERE EXISTS (SELECT FROM delivery)") + "),"
    " variant AS (SELECT v.* FROM " + _VARIANT_ROWS + " WHERE v.product_id IN (SELECT product_id FROM changed)),"
    " dropped AS (DELETE FROM variants WHERE shop = %(shop)s AND product_id IN (SELECT product_id FROM changed)"
    " AND variant_id NOT IN (SELECT variant_id FROM variant)),"
    " kept AS (" + _variants_upserted("variant AS v") + "),"
    + _INSTALLED_BY_DELIVERY +
    " SELECT EXISTS (SELECT FROM delivery), 0"
)

# A page of stock levels (`_apply_inventory_page`): each level upserted, then each item's stock from its levels
# (`STOCK_OF_VARIANT`: their sum over the locations that track it, or the products payload's total while it is more
# and not every location is known) written to its variants (none tracking it: the variants keep what they had).
_LEVEL_ROWS = ("json_to_recordset(%(levels)s::json) AS l (inventory_item_id text, location_id text, available bigint,"
               " all_locations boolean)")
_LEVELS_UPSERTED = (
    "INSERT INTO inventory_levels (shop, inventory_item_id, location_id, available, all_locations)"
    " SELECT %(shop)s, l.inventory_item_id, l.location_id, l.available, l.all_locations FROM {rows}"
    " ON CONFLICT (shop, inventory_item_id, location_id) DO UPDATE SET available = excluded.available,"
    " all_locations = inventory_levels.all_locations OR excluded.all_locations"
)
_PAGE_LEVELS = _LEVELS_UPSERTED.format(rows=_LEVEL_ROWS)
_STOCK_FROM = (
    "UPDATE variants SET inventory_quantity = " + STOCK_OF_VARIANT.format(known="s.known", total="s.total") + ","
    " tracked = true"
    " FROM (SELECT inventory_item_id, SUM(available)::bigint AS total, COUNT(available) AS tracking,"
    " bool_or(all_locations) AS known FROM {levels} GROUP BY inventory_item_id) AS s"
    " WHERE variants.shop = %(shop)s AND variants.inventory_item_id = s.inventory_item_id AND s.tracking > 0"
)
_STOCK_OF_ITEMS = _STOCK_FROM.format(
    levels="inventory_levels WHERE shop = %(shop)s AND inventory_item_id = ANY(%(items)s)")


def _lock_key_sql(shop: str, product_id: str) -> str:
    """`_product_lock`'s key of the SQL expressions `shop` and `product_id`, computed by the server (the NUL between
    them decoded from hex: a string literal's backslash depends on standard_conforming_strings)."""
    return ("('x' || left(encode(sha256(convert_to(" + shop + ", 'UTF8') || decode('00', 'hex') || convert_to("
            + product_id + ", 'UTF8')), 'hex'), 8))::bit(32)::int4")


# One delivery of stock levels: the inventory items' locks (`%(namespaces)s`, `%(keys)s`) and those of the products
# whose variants they stock, found and taken by the server in one statement (`_take_locks`' order: namespace, then
# key), where reading the products first took a round trip of its own.
_STOCK_LOCKS = (
    "SELECT pg_advisory_xact_lock(k.namespace, k.key) FROM ("
    " SELECT namespace, key FROM unnest(%(namespaces)s::int4[], %(keys)s::int4[]) AS u (namespace, key)"
    " UNION SELECT %(product_lock)s::int4, " + _lock_key_sql("%(shop)s", "v.product_id") +
    " FROM variants AS v WHERE v.shop = %(shop)s AND v.inventory_item_id = ANY(%(items)s)"
    " ORDER BY namespace, key) AS k"
)
# Then, in one statement: the delivery row and, only if it is new, its levels upserted, each item's stock from its
# locations' levels written to its variants (the levels stored before at the other locations, with the new ones: the
# statement does not see its own upsert; whether every location is known, from the levels stored before at any of
# them, the replaced ones too, and the new ones) and the install mark. The `sellable` flags follow in a statement of
# their own.
_APPLY_LEVELS = (
    "WITH " + _DELIVERY_ROW + ","
    " l AS (SELECT l.* FROM " + _LEVEL_ROWS + " WHERE EXISTS (SELECT FROM delivery)),"
    " level AS (" + _LEVELS_UPSERTED.format(rows="l") + "),"
    " stock AS (" + _STOCK_FROM.format(levels=(
        "(SELECT i.inventory_item_id, CASE WHEN NOT EXISTS (SELECT FROM l WHERE l.inventory_item_id ="
        " i.inventory_item_id AND l.location_id = i.location_id) THEN i.available END AS available, i.all_locations"
        " FROM inventory_levels AS i WHERE i.shop = %(shop)s"
        " AND i.inventory_item_id IN (SELECT inventory_item_id FROM l)"
        " UNION ALL SELECT inventory_item_id, available, all_locations FROM l) AS a")) + "),"
    + _INSTALLED_BY_DELIVERY +
    " SELECT EXISTS (SELECT FROM delivery), 0"
)
# A page of checkouts' links (`_apply_links_page`): each cart token's link, then the token's guest events joined to
# its customer.
_PAGE_LINKS = _links_stored()
_LINKED_EVENTS = _links_joined()
# Advisory locks taken in one statement, in the order given (the subquery's ORDER BY runs before the calls).
_TAKE_LOCKS = ("SELECT pg_advisory_xact_lock(k.namespace, k.key) FROM (SELECT * FROM unnest(%s::int4[], %s::int4[])"
               " WITH ORDINALITY AS u (namespace, key, position) ORDER BY position) AS k")

# `apply_many` for a page of orders (a backfill's): every new event of the page in one statement, as
# `_APPLY_EVENTS` stores one delivery's, with the index of its delivery (`item`), to count each delivery's new ones.
_PAGE_EVENTS = (
    "WITH proposed AS ("
    f" SELECT nextval((SELECT pg_get_serial_sequence('events', 'id'))) AS id, {_PROPOSED}, e.item, e.position"
    + _events_linked("%s", ", item integer") + "),"
    + _STORE_PROPOSED +
    " SELECT item, count(*) FROM stored JOIN proposed USING (id) GROUP BY item"
)
# Each refund line of the page once (its adjustment row new), its purchase shrunk by the refunded share; a line whose
# purchase is not stored kept until it is (`pending_refunds`, `_STORE_PROPOSED`'s `settled`). Shrunk or kept, by one
# snapshot. Lines of one dedupe key twice in `%(refunds)s` would shrink it once: they go a statement each. A line whose
# first insert commits while this statement runs is seen by neither (READ COMMITTED, no lock shared with the order's
# one statement): the refund stays kept, and the line's next delivery keeps the lower weight it proposes (the upsert).
_PAGE_REFUNDS = (
    "WITH refund AS (SELECT * FROM json_to_recordset(%(refunds)s::json) AS r (adjustment_key text, order_id text,"
    " dedupe_key text, quantity integer, received_at timestamptz)),"
    " fresh AS (INSERT INTO adjustments (shop, adjustment_key) SELECT %(shop)s, adjustment_key FROM refund"
    " ON CONFLICT DO NOTHING RETURNING adjustment_key),"
    " shrunk AS (UPDATE events SET weight_factor = GREATEST(0, events.weight_factor - refund.quantity::double precision"
    " / events.quantity)"
    " FROM refund JOIN fresh USING (adjustment_key)"
    " WHERE events.shop = %(shop)s AND events.dedupe_key = refund.dedupe_key RETURNING refund.adjustment_key)"
    " INSERT INTO pending_refunds (shop, adjustment_key, order_id, dedupe_key, quantity, received_at)"
    " SELECT %(shop)s, refund.adjustment_key, refund.order_id, refund.dedupe_key, refund.quantity, refund.received_at"
    " FROM refund JOIN fresh USING (adjustment_key)"
    " WHERE NOT EXISTS (SELECT FROM shrunk WHERE shrunk.adjustment_key = refund.adjustment_key)"
)

_CUSTOMER_EVENTS = (  # see recommender.store._SQLITE_CUSTOMER_EVENTS
    "shop = %(shop)s AND (customer_id = %(customer_id)s OR user_key = %(user_key)s"
    " OR (customer_id IS NULL AND anonymous_id IN"
    " (SELECT anonymous_id FROM identity_links WHERE shop = %(shop)s AND customer_id = %(customer_id)s)))"
)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _first_of_each_key(events: Sequence[Event]) -> list[Event]:
    """One event per dedupe key (ON CONFLICT DO UPDATE may touch a row once per statement): the key's first event,
    with the key's lowest weight factor, as if the later ones had been inserted and lowered it (a pixel's cart
    signal: its latest event, `latest_wins`)."""
    unique: dict[object, Event] = {}
    for position, e in enumerate(events):
        key = (e.shop, e.dedupe_key) if e.dedupe_key is not None else position
        if key not in unique:
            unique[key] = e
        elif latest_wins(e.dedupe_key):
            if later(e, unique[key]):
                unique[key] = e
        elif e.weight_factor < unique[key].weight_factor:
            unique[key] = replace(unique[key], weight_factor=e.weight_factor)
    return list(unique.values())


def _event_row(e: Event) -> dict:
    """An event as a row of `_EVENT_COLUMNS`, for json_to_recordset."""
    return {"shop": e.shop, "kind": e.kind.value, "user_key": e.user_key, "customer_id": e.customer_id,
            "anonymous_id": e.anonymous_id, "product_id": e.product_id, "variant_id": e.variant_id,
            "quantity": e.quantity, "price": e.price, "order_id": e.order_id, "occurred_at": e.occurred_at.isoformat(),
            "source_topic": e.source_topic, "delivery_id": e.delivery_id, "dedupe_key": e.dedupe_key,
            "weight_factor": e.weight_factor, "currency": e.currency}


def _product_rows(products: Sequence[CatalogProduct]) -> str:
    """`%(products)s` of `_products_upserted`: the catalog rows as one JSON array."""
    return json.dumps([{"product_id": p.product_id, "title": p.title, "handle": p.handle, "status": p.status,
                        "published_at": _iso(p.published_at), "price": p.price, "image_url": p.image_url,
                        "product_type": p.product_type, "vendor": p.vendor, "updated_at": _iso(p.updated_at),
                        "hidden": p.hidden, "picks": encoded_picks(p)}
                       for p in products])


def _variant_rows(products: Sequence[CatalogProduct]) -> str:
    """`%(variants)s` of `_VARIANT_ROWS`: the products' variants as one JSON array."""
    return json.dumps([{"variant_id": v.variant_id, "product_id": p.product_id, "inventory_item_id": v.inventory_item_id,
                        "inventory_quantity": v.inventory_quantity, "tracked": v.tracked,
                        "continue_selling": v.continue_selling} for p in products for v in p.variants])


def _level_rows(levels) -> str:
    """`%(levels)s` of `_LEVEL_ROWS`: the stock levels as one JSON array."""
    return json.dumps([{"inventory_item_id": level.inventory_item_id, "location_id": level.location_id,
                        "available": level.available, "all_locations": level.all_locations} for level in levels])


def _nothing_but(changes: ChangeSet, *kinds: str) -> bool:
    """Whether `changes` changes nothing but `kinds` (ChangeSet's field names)."""
    return not any(getattr(changes, f.name) for f in fields(ChangeSet) if f.name not in kinds)


def _orders_page(items: Sequence[tuple[Delivery, ChangeSet]]) -> bool:
    """Deliveries of events, cancellations and refunds alone, of one shop, no two of which touch the same order,
    dedupe key or refunded line, and no refund twice: what `apply_many` may store set-wise (every event, then every
    cancellation, then every refund) with the same outcome as one delivery after another."""
    if not items:
        return False
    shop = items[0][0].shop
    orders: set[str] = set()
    keys: set[str] = set()  # the events' dedupe keys and the refunded lines', each delivery's own
    adjustments: set[str] = set()
    for delivery, c in items:
        if (delivery.shop != shop or not _nothing_but(c, "events", "void_order_ids", "refunds", "gift_card_product_ids")
                or any(e.shop != shop for e in c.events)):
            return False
        mine = ({e.order_id for e in c.events if e.order_id} | set(c.void_order_ids)
                | {r.order_id for r in c.refunds})
        lines = [order_line_key(r.order_id, r.line_item_id) for r in c.refunds]
        my_keys = {e.dedupe_key for e in c.events if e.dedupe_key is not None} | set(lines)
        refunds = [refund_adjustment_key(r.refund_id, r.line_item_id) for r in c.refunds]
        if (orders & mine or keys & my_keys or len(set(lines)) < len(lines)
                or adjustments.intersection(refunds) or len(set(refunds)) < len(refunds)):
            return False
        orders |= mine
        keys |= my_keys
        adjustments.update(refunds)
    return True


def _catalog_page(items: Sequence[tuple[Delivery, ChangeSet]]) -> bool:
    """Deliveries of catalog upserts and deletions alone, of one shop, that name no product and no variant twice:
    what `apply_many` may store set-wise with the same outcome as one delivery after another."""
    if not items:
        return False
    shop = items[0][0].shop
    products: set[str] = set()
    variants: set[str] = set()
    count = 0
    for delivery, c in items:
        if delivery.shop != shop or not _nothing_but(c, "upsert_products", "delete_product_ids"):
            return False
        for p in c.upsert_products:
            if p.shop != shop:
                return False
            products.add(p.product_id)
            variants.update(v.variant_id for v in p.variants)
            count += 1 + len(p.variants)
        products.update(c.delete_product_ids)
        count += len(c.delete_product_ids)
    return len(products) + len(variants) == count


def _links_page(items: Sequence[tuple[Delivery, ChangeSet]]) -> bool:
    """Deliveries of identity links alone (a checkout's cart token and customer), of one shop, no cart token twice:
    what `apply_many` may store set-wise with the same outcome as one delivery after another."""
    if not items:
        return False
    shop = items[0][0].shop
    tokens = [link.anonymous_id for _, c in items for link in c.identity_links]
    if any(delivery.shop != shop or not c.identity_links or not _nothing_but(c, "identity_links")
           for delivery, c in items):
        return False
    return len(set(tokens)) == len(tokens)


def _inventory_page(items: Sequence[tuple[Delivery, ChangeSet]]) -> bool:
    """Deliveries of inventory levels alone (inventory_levels/update, a backfill's levels), of one shop, no level (an
    inventory item at a location) twice: what `apply_many` may store set-wise (every level, then each item's stock
    from all of its levels) with the same outcome as one delivery after another."""
    if not items:
        return False
    shop = items[0][0].shop
    levels = [level for _, c in items for level in c.inventory_levels]
    if any(delivery.shop != shop or not c.inventory_levels or not _nothing_but(c, "inventory_levels")
           for delivery, c in items):
        return False
    return len({(level.inventory_item_id, level.location_id) for level in levels}) == len(levels)


def _utc(moment: datetime | None) -> datetime | None:
    return moment.astimezone(timezone.utc) if moment is not None else None


def _interaction(row: tuple) -> Interaction:
    user, product, kind, occurred_at, order_id, factor = row
    return Interaction(user, product, KINDS[kind], _utc(occurred_at), order_id, factor)


def _lock_key(namespace: int, shop: str, value: str) -> tuple[int, int]:
    """A two-int advisory lock key; a crc32 collision only makes two writers take turns."""
    digest = zlib.crc32(f"{shop}\0{value}".encode())
    return namespace, (digest - (1 << 32) if digest >= 1 << 31 else digest)  # as a signed int4


def _product_lock(shop: str, product_id: str) -> tuple[int, int]:
    """A product's advisory lock key: the first four bytes of sha256(shop NUL id), signed, which the server computes
    too (`_lock_key_sql`) for the products a stock level's inventory item belongs to. Before round 30 of
    bench/PERFORMANCE.md it was crc32, which PostgreSQL before 18 cannot compute: while a deploy replaces instances
    of that code, two deliveries for one product, one handled by each, do not take turns (the README says so)."""
    return PRODUCT_LOCK, int.from_bytes(hashlib.sha256(f"{shop}\0{product_id}".encode()).digest()[:4], "big",
                                        signed=True)


_INSTALLED_SQL = "SELECT 1 FROM shop_state WHERE shop = %s AND installed"
# The shop check and what the shop does not sell, in one statement (one snapshot of the database): nothing for a shop
# not installed (its catalog stays until shop/redact, and a request naming it would fetch every row for nothing).
# One row: installed, the ids not for sale, those backordered and the picks (NULL when not installed). Parameters:
# the shop four times.
_UNSELLABLE_ARRAY = "ARRAY(" + UNSELLABLE_SQL.format(p="%s", no="false") + ")"
_BACKORDERED_ARRAY = "ARRAY(" + BACKORDERED_SQL.format(p="%s", yes="true") + ")"
_PICKS_ARRAY = "ARRAY(SELECT ARRAY[product_id, picks] FROM (" + PICKS_SQL.format(p="%s", no="false") + ") picked)"
_CATALOG_STATE = f"{_UNSELLABLE_ARRAY}, {_BACKORDERED_ARRAY}, {_PICKS_ARRAY}"  # parameters: the shop thrice
_INSTALLED_AND_UNSELLABLE = (
    f"SELECT coalesce(s.installed, false), CASE WHEN s.installed THEN {_UNSELLABLE_ARRAY} END,"
    f" CASE WHEN s.installed THEN {_BACKORDERED_ARRAY} END, CASE WHEN s.installed THEN {_PICKS_ARRAY} END"
    " FROM (SELECT (SELECT installed FROM shop_state WHERE shop = %s) AS installed) s")


def _catalog_state(unsellable: list[str], backordered: list[str], picks: list[list[str]]) -> CatalogState:
    return CatalogState(frozenset(unsellable), frozenset(backordered),
                     {pid: MerchantPicks.decoded(text) for pid, text in picks})


def _installed_and_unsellable(rows: list[tuple]) -> tuple[bool, CatalogState]:
    (installed, *state), = rows
    if not installed:
        return False, NOTHING_LEFT_OUT
    return True, _catalog_state(*state)


class PostgresEventStore(SharedQueries):
    """Events and catalog in one PostgreSQL database (or schema); one connection per thread."""

    _P = "%s"
    _TRUE, _FALSE = "true", "false"
    _NEVER_STARTED_FIRST = 'train_started_at NULLS FIRST, shop COLLATE "C"'
    _SAME = "IS NOT DISTINCT FROM"
    _NOW = "statement_timestamp()"
    _DAY_BEFORE = "coalesce({p}::timestamptz, statement_timestamp()) - interval '1 day'"
    _SILENT_SECONDS = "extract(epoch FROM statement_timestamp() - r.alive_at)"
    _time_param = staticmethod(lambda at: at)
    _to_interaction = staticmethod(_interaction)
    _to_time = staticmethod(_utc)

    @staticmethod
    def _only_ids(product_ids: Collection[str]) -> tuple[str, tuple]:
        return " AND product_id = ANY(%s)", (list(product_ids),)

    def __init__(self, url: str):
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(f"EVENT_STORE_URL is not a valid PostgreSQL URL: {exc}") from None
        params.setdefault("connect_timeout", "10")
        params.setdefault("application_name", "shopify-recommender")
        self._conninfo = make_conninfo(**params)
        # Where, for messages: never the password.
        self.description = f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname', '')}"
        self._local = threading.local()
        # Weak: a connection closes with the thread that opened it; close() closes the ones still alive.
        self._connections: weakref.WeakSet[psycopg.Connection] = weakref.WeakSet()
        self._lock = threading.Lock()
        if not self._schema_is_current():
            self._write(self._migrate)

    # --- connections and transactions -------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:  # closed also after the server dropped it (restart, idle timeout)
            try:
                conn = psycopg.connect(self._conninfo, autocommit=True)
            except psycopg.Error as exc:
                raise StoreError(f"cannot open the PostgreSQL event store at {self.description}: {exc}") from exc
            self._local.conn = conn
            with self._lock:
                self._connections.add(conn)
        return conn

    def _read(self, sql: str, params: Sequence | dict = ()) -> list[tuple]:
        return self._reading(lambda conn: conn.execute(sql, params).fetchall())

    def _read_together(self, statements: Sequence[tuple[str, Sequence]]) -> list[list[tuple]]:
        """Each statement's rows, the statements sent together in pipeline mode and answered in one round trip."""

        def read(conn: psycopg.Connection) -> list[list[tuple]]:
            with conn.pipeline():
                cursors = [conn.execute(sql, params) for sql, params in statements]
            return [cursor.fetchall() for cursor in cursors]

        return self._reading(read)

    def _reading(self, read: Callable[[psycopg.Connection], T]) -> T:
        """`read` on this thread's connection; once more on a new one if it had died while idle (a server
        restart, an idle timeout): reading again is safe."""
        try:
            try:
                return read(self._connection())
            except psycopg.OperationalError:
                if not self._local.conn.closed:
                    raise
                return read(self._connection())
        except psycopg.Error as exc:
            raise StoreError(f"event store read failed: {exc}") from exc

    def _write(self, work: Callable[[psycopg.Connection], T], *, one_statement: bool = False) -> T:
        """Run `work` in one transaction; a deadlock victim is rolled back and run again.

        `one_statement`: `work` runs a single statement, a transaction of its own (autocommit),
        which saves the round trips of BEGIN and COMMIT.
        A write on a connection that died while idle fails once (StoreError: Shopify retries the
        webhook); the thread's next call reconnects.
        """
        return self._attempts(lambda conn: work(conn) if one_statement else self._in_transaction(conn, work))

    def _write_pipelined(self, work: Callable[[psycopg.Connection], Callable[[], T]]) -> T:
        """`_write` in pipeline mode: BEGIN, every statement `work` sends and COMMIT go to the server together,
        and the client waits only where `work` reads a result to decide what to send next (a fetch), and once at
        COMMIT. `work` sends the rest of its statements without reading them and returns what reads their results
        once the transaction has committed. Nothing in `work` may rely on a cursor's `rowcount` before it is
        fetched: in pipeline mode it is -1 until the result arrives.

        BEGIN and COMMIT are statements of their own on the autocommit connection: psycopg's `transaction()` in
        pipeline mode waits for the server after BEGIN and twice more at its end (bench/PERFORMANCE.md, round 28).
        After an error PostgreSQL skips the rest up to the pipeline's end, and the transaction is rolled back.
        """

        def attempt(conn: psycopg.Connection) -> T:
            try:
                with conn.pipeline():
                    conn.execute("BEGIN")
                    outcome = work(conn)
                    conn.execute("COMMIT")
            except BaseException:
                self._roll_back(conn)
                raise
            return outcome()

        return self._attempts(attempt)

    @staticmethod
    def _roll_back(conn: psycopg.Connection) -> None:
        """End a failed pipelined transaction; a connection that cannot is closed (the server then rolls it back),
        and the thread's next call opens a new one."""
        try:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
        except psycopg.Error:
            conn.close()

    @staticmethod
    def _in_transaction(conn: psycopg.Connection, work: Callable[[psycopg.Connection], T]) -> T:
        with conn.transaction():
            return work(conn)

    def _attempts(self, attempt: Callable[[psycopg.Connection], T]) -> T:
        """`attempt` on this thread's connection, again (up to WRITE_ATTEMPTS in all) when PostgreSQL chose its
        transaction as a deadlock victim or failed it for serialization; any other error is a StoreError."""
        tries = 1
        while True:
            conn = self._connection()
            try:
                return attempt(conn)
            except (errors.DeadlockDetected, errors.SerializationFailure) as exc:
                if tries == WRITE_ATTEMPTS:
                    raise StoreError(f"event store write failed after {tries} attempts: {exc}") from exc
                tries += 1
                time.sleep(0.01 * tries)
            except psycopg.Error as exc:
                raise StoreError(f"event store write failed: {exc}") from exc

    def _schema_is_current(self) -> bool:
        """Whether the schema the tables go in (`current_schema()`) holds every migration already: one statement and
        no lock, where `_migrate` takes six round trips on every instance's start. Anything else (no such table, an
        older version, the table found in another schema of the search_path) goes to `_migrate`."""
        try:
            version, here = self._read(_SCHEMA_VERSION)[0]
        except StoreError as exc:
            if isinstance(exc.__cause__, errors.UndefinedTable):
                return False
            raise
        if not here:  # another schema's table: `_migrate` makes this one's
            return False
        if version > len(POSTGRES_MIGRATIONS):
            raise StoreError(f"the event store's schema version {version} is newer than this code knows")
        return version == len(POSTGRES_MIGRATIONS)

    @staticmethod
    def _migrate(conn: psycopg.Connection) -> None:
        # The lock comes first: two instances running CREATE TABLE IF NOT EXISTS at once can both fail.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        if conn.execute("SELECT current_schema()").fetchone()[0] is None:
            raise StoreError("EVENT_STORE_URL: the search_path names no existing schema to create the tables in")
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations"
                     " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        version = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
        if version > len(POSTGRES_MIGRATIONS):
            raise StoreError(f"the event store's schema version {version} is newer than this code knows")
        for target, script in enumerate(POSTGRES_MIGRATIONS[version:], start=version + 1):
            conn.execute(script)
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (target,))

    @staticmethod
    def _take_locks(conn: psycopg.Connection, keys: Iterable[tuple[int, int]]) -> None:
        """Take transaction-level advisory locks, always in the same order, so two writers cannot deadlock on them;
        several in one round trip."""
        ordered = sorted(set(keys))
        if len(ordered) == 1:
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", ordered[0])
        elif ordered:
            conn.execute(_TAKE_LOCKS, ([namespace for namespace, _ in ordered], [key for _, key in ordered]))

    # --- writes -------------------------------------------------------------------------------

    def apply(self, delivery: Delivery, changes: ChangeSet) -> int | None:
        """Store one delivery's changes atomically.

        Returns how many events were new (an order line or cart line already stored
        through another delivery counts once), or None when this webhook_id was seen before.
        Events alone (an order, a cart) go as one statement (`_APPLY_EVENTS`), after their guests' locks if they
        have any, in one round trip either way; a checkout's link likewise (`_APPLY_LINKS`), a product's update or
        deletion (`_APPLY_CATALOG`) and a stock level (`_APPLY_LEVELS`, after the locks `_STOCK_LOCKS` finds on the
        server), each followed by its products' `sellable` flags in the same round trip; a cancellation as
        `_APPLY_EVENTS_VOIDING`, a refund as `_APPLY_EVENTS` with its lines sent after it, in one.
        """
        if _orders_page([(delivery, changes)]):  # an order, a cart, a cancellation, a refund
            params = self._events_params(delivery, changes.events)
            locks = [*self._anonymous_locks(changes.events),
                     *(_product_lock(delivery.shop, product_id) for product_id in changes.gift_card_product_ids)]
            if not locks and self._events_alone(changes):  # one statement, its own transaction
                return self._write(lambda conn: self._store_events(conn, params), one_statement=True)

            def after_the_locks(conn: psycopg.Connection) -> Callable[[], int | None]:
                self._take_locks(conn, locks)
                if changes.void_order_ids:  # the void inside the statement, only if the delivery is new
                    sent = conn.execute(_APPLY_EVENTS_VOIDING, {**params, "voids": sorted(set(changes.void_order_ids))})
                else:
                    sent = conn.execute(_APPLY_EVENTS, params)
                # Whether or not the delivery was new: each refund line counts once by its own key (`adjustments`),
                # so the refunds need no answer from the statement.
                self._send_adjustments(conn, delivery.shop, (), [(r, delivery.received_at) for r in changes.refunds])
                self._send_gift_cards(conn, delivery.shop, changes.gift_card_product_ids)
                return lambda: self._stored_events(sent, params)

            return self._write_pipelined(after_the_locks)
        if _links_page([(delivery, changes)]):  # a checkout's link: one statement after its tokens' locks
            params = {**self._delivery_params(delivery), "links": json.dumps([
                {"anonymous_id": link.anonymous_id, "customer_id": link.customer_id}
                for link in changes.identity_links])}

            def linked(conn: psycopg.Connection) -> Callable[[], int | None]:
                self._take_locks(conn, [_lock_key(ANONYMOUS_ID_LOCK, delivery.shop, link.anonymous_id)
                                        for link in changes.identity_links])
                sent = conn.execute(_APPLY_LINKS, params)
                return lambda: self._stored_events(sent)

            return self._write_pipelined(linked)
        if _catalog_page([(delivery, changes)]):  # a product's update or deletion: one statement after the locks
            params = {**self._delivery_params(delivery), "deleted": list(changes.delete_product_ids),
                      "products": _product_rows(changes.upsert_products),
                      "variants": _variant_rows(changes.upsert_products)}

            def cataloged(conn: psycopg.Connection) -> Callable[[], int | None]:
                self._take_locks(conn, [_product_lock(delivery.shop, product_id)
                                        for product_id in changes.catalog_product_ids()])
                sent = conn.execute(_APPLY_CATALOG, params)
                self._refresh_sellable(conn, delivery.shop, changes)
                return lambda: self._stored_events(sent)

            return self._write_pipelined(cataloged)
        if _inventory_page([(delivery, changes)]):  # a stock level: the locks, then one statement
            items = [_lock_key(INVENTORY_ITEM_LOCK, delivery.shop, item) for item in changes.inventory_item_ids()]
            params = {**self._delivery_params(delivery), "levels": _level_rows(changes.inventory_levels),
                      "items": changes.inventory_item_ids(), "namespaces": [namespace for namespace, _ in items],
                      "keys": [key for _, key in items], "product_lock": PRODUCT_LOCK}

            def stocked(conn: psycopg.Connection) -> Callable[[], int | None]:
                conn.execute(_STOCK_LOCKS, params)
                sent = conn.execute(_APPLY_LEVELS, params)
                self._refresh_sellable(conn, delivery.shop, changes)
                return lambda: self._stored_events(sent)

            return self._write_pipelined(stocked)
        return self._write(lambda conn: self._apply_delivery(conn, delivery, changes))

    def _apply_delivery(self, conn: psycopg.Connection, delivery: Delivery, changes: ChangeSet) -> int | None:
        if self._events_alone_without_locks(changes):
            return self._store_events(conn, self._events_params(delivery, changes.events))
        # A second instance holding the same webhook waits here until the first commits, then sees it.
        fresh = conn.execute(
            "INSERT INTO deliveries (shop, webhook_id, topic, event_id, received_at) VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (shop, webhook_id) DO NOTHING",
            (delivery.shop, delivery.webhook_id, delivery.topic, delivery.event_id, delivery.received_at),
        ).rowcount
        if not fresh:
            return None
        self._take_locks(conn, self._locks_of(conn, delivery, changes))
        return self._apply_changes(conn, delivery, changes)

    def _locks_of(self, conn: psycopg.Connection, delivery: Delivery, changes: ChangeSet) -> list[tuple[int, int]]:
        """The advisory locks a delivery's changes take (its cart tokens, inventory items and products)."""
        return [
            *self._anonymous_locks(changes.events),
            *(_lock_key(ANONYMOUS_ID_LOCK, delivery.shop, link.anonymous_id) for link in changes.identity_links),
            *(_lock_key(INVENTORY_ITEM_LOCK, delivery.shop, level.inventory_item_id)
              for level in changes.inventory_levels),
            *(_product_lock(delivery.shop, product_id)
              for product_id in self._products_changed(conn, delivery.shop, changes)),
        ]

    def apply_many(self, items: Sequence[tuple[Delivery, ChangeSet]]) -> list[int | None]:
        """Many deliveries (a backfill's page), each stored as `apply` stores it, all in one transaction: the page
        is stored whole or not at all. What `apply` would have returned for each.

        A page of catalog upserts of one shop that names no product or variant twice (a backfill's page of
        products) goes as set-wise statements in pipeline mode: three round trips for the page, BEGIN and COMMIT
        included (bench/PERFORMANCE.md, rounds 27 and 28). So does a page of orders whose deliveries share no
        order, dedupe key or refunded line (a backfill's page of orders), in two, and a page of stock levels or of
        checkouts' links, each item or cart token once, in two. Anything else goes delivery by delivery.
        """
        if _catalog_page(items):
            return self._write_pipelined(lambda conn: self._apply_catalog_page(conn, items))
        if _orders_page(items):
            return self._write_pipelined(lambda conn: self._apply_orders_page(conn, items))
        if _inventory_page(items):
            return self._write_pipelined(lambda conn: self._apply_inventory_page(conn, items))
        if _links_page(items):
            return self._write_pipelined(lambda conn: self._apply_links_page(conn, items))

        def one_by_one(conn: psycopg.Connection) -> list[int | None]:
            # Every lock of the page first, in the one order all writers take them: taken delivery by delivery,
            # they would pile up in the page's order, and a webhook holding one of them could deadlock the page.
            self._take_locks(conn, [key for delivery, changes in items
                                    for key in self._locks_of(conn, delivery, changes)])
            return [self._apply_delivery(conn, delivery, changes) for delivery, changes in items]

        return self._write(one_by_one)

    @staticmethod
    def _send_deliveries(conn: psycopg.Connection, items: Sequence[tuple[Delivery, ChangeSet]]) -> psycopg.Cursor:
        """The page's delivery rows in one statement, sent; `_fresh_of_page` reads what it returns."""
        return conn.execute(_PAGE_DELIVERIES, (items[0][0].shop, json.dumps([
            {"webhook_id": d.webhook_id, "topic": d.topic, "event_id": d.event_id,
             "received_at": d.received_at.isoformat()} for d, _ in items])))

    @staticmethod
    def _fresh_of_page(sent: psycopg.Cursor, items: Sequence[tuple[Delivery, ChangeSet]]
                       ) -> tuple[list[int | None], list[tuple[int, Delivery, ChangeSet]]]:
        """From the delivery rows' insert (`_send_deliveries`): None for each delivery stored before (or earlier in
        the page), 0 for each new one, and the new ones with their index in the page."""
        new = {row[0] for row in sent.fetchall()}
        results: list[int | None] = []
        fresh: list[tuple[int, Delivery, ChangeSet]] = []
        for index, (delivery, changes) in enumerate(items):
            if delivery.webhook_id in new:
                new.discard(delivery.webhook_id)  # a second copy in the page is a duplicate, as a redelivery is
                fresh.append((index, delivery, changes))
                results.append(0)
            else:
                results.append(None)
        return results, fresh

    def _mark_installed_by(self, conn: psycopg.Connection, shop: str, fresh: Sequence[tuple[int, Delivery, ChangeSet]]
                           ) -> None:
        proving = [d.happened_at for _, d, _ in fresh if d.topic not in TOPICS_NOT_PROVING_INSTALL]
        if proving:  # what one delivery after another would leave: the latest of them decides
            self._mark_installed(conn, shop, max(proving))

    def _apply_orders_page(self, conn: psycopg.Connection, items: Sequence[tuple[Delivery, ChangeSet]]
                           ) -> Callable[[], list[int | None]]:
        """A page of orders (`_orders_page`), in pipeline mode (`_write_pipelined`): the locks and the delivery rows go
        in the first round trip; the events (guests' joined to their customers), cancellations, refunds, install
        mark and COMMIT in the second."""
        shop = items[0][0].shop
        # The guests' (and gift cards' products') locks before anything is written or read, as the page delivery by
        # delivery takes them.
        self._take_locks(conn, [*self._anonymous_locks(e for _, changes in items for e in changes.events),
                                *(_product_lock(shop, product_id) for _, changes in items
                                  for product_id in changes.gift_card_product_ids)])
        results, fresh = self._fresh_of_page(self._send_deliveries(conn, items), items)
        events = [(index, e) for index, _, changes in fresh for e in _first_of_each_key(changes.events)]
        counted = None
        if events:  # a guest who has since logged in: their events join the customer's (`_events_linked`)
            counted = conn.execute(_PAGE_EVENTS, (json.dumps([{**_event_row(e), "item": index}
                                                              for index, e in events]),))
        self._send_adjustments(conn, shop, [order_id for _, _, changes in fresh for order_id in changes.void_order_ids],
                               [(r, delivery.received_at) for _, delivery, changes in fresh for r in changes.refunds])
        self._send_gift_cards(conn, shop, sorted({product_id for _, _, changes in fresh
                                                  for product_id in changes.gift_card_product_ids}))
        self._mark_installed_by(conn, shop, fresh)

        def outcome() -> list[int | None]:
            for index, inserted in counted.fetchall() if counted is not None else ():
                results[index] = inserted
            return results

        return outcome

    def _apply_catalog_page(self, conn: psycopg.Connection, items: Sequence[tuple[Delivery, ChangeSet]]
                            ) -> Callable[[], list[int | None]]:
        """A page of catalog upserts and deletions (`_catalog_page`), in pipeline mode (`_write_pipelined`): the
        locks and the delivery rows in the first round trip, the products' upsert in the second, the variants of
        the products it changed, the deletions, the `sellable` flags, the install mark and COMMIT in the third (in
        the second for deletions alone)."""
        shop = items[0][0].shop
        # The products' locks before anything is written, as the page delivery by delivery takes them.
        self._take_locks(conn, [_product_lock(shop, product_id)
                                for _, changes in items for product_id in changes.catalog_product_ids()])
        results, fresh = self._fresh_of_page(self._send_deliveries(conn, items), items)
        products = [p for _, _, changes in fresh for p in changes.upsert_products]
        deleted = sorted({product_id for _, _, changes in fresh for product_id in changes.delete_product_ids})
        if deleted:
            conn.execute(_DELETED_PRODUCTS + _DELETION_CONFLICT, {"shop": shop, "deleted": deleted})
            self._refresh_sellable(conn, shop, ChangeSet(delete_product_ids=tuple(deleted)))
        if products:
            changed = {row[0] for row in conn.execute(_PAGE_PRODUCTS, {"shop": shop,
                                                                        "products": _product_rows(products)})}
            if changed:
                conn.execute("DELETE FROM variants WHERE shop = %s AND product_id = ANY(%s)", (shop, sorted(changed)))
                variants = [p for p in products if p.product_id in changed]
                if any(p.variants for p in variants):
                    conn.execute(_PAGE_VARIANTS, {"shop": shop, "variants": _variant_rows(variants)})
            self._refresh_sellable(conn, shop, ChangeSet(upsert_products=tuple(products)))
        self._mark_installed_by(conn, shop, fresh)
        return lambda: results

    def _apply_inventory_page(self, conn: psycopg.Connection, items: Sequence[tuple[Delivery, ChangeSet]]
                              ) -> Callable[[], list[int | None]]:
        """Stock levels (`_inventory_page`), in pipeline mode (`_write_pipelined`): the delivery rows and the
        products whose variants the items stock in the first round trip; their locks, the levels, each item's sum
        over its locations written to its variants, their products' `sellable` flags, the install mark and COMMIT
        in the second (as `_apply_delivery` does it, in ten)."""
        shop = items[0][0].shop
        sent = self._send_deliveries(conn, items)
        stocked = sorted({level.inventory_item_id for _, c in items for level in c.inventory_levels})
        owners = conn.execute("SELECT DISTINCT product_id FROM variants WHERE shop = %s"
                              " AND inventory_item_id = ANY(%s)", (shop, stocked))
        results, fresh = self._fresh_of_page(sent, items)
        levels = [level for _, _, changes in fresh for level in changes.inventory_levels]
        if levels:
            self._take_locks(conn, [
                *(_lock_key(INVENTORY_ITEM_LOCK, shop, level.inventory_item_id) for level in levels),
                *(_product_lock(shop, product_id) for (product_id,) in owners.fetchall())])
            conn.execute(_PAGE_LEVELS, {"shop": shop, "levels": _level_rows(levels)})
            conn.execute(_STOCK_OF_ITEMS, {"shop": shop, "items": sorted({level.inventory_item_id for level in levels})})
            self._refresh_sellable(conn, shop, ChangeSet(inventory_levels=tuple(levels)))
        self._mark_installed_by(conn, shop, fresh)
        return lambda: results

    def _apply_links_page(self, conn: psycopg.Connection, items: Sequence[tuple[Delivery, ChangeSet]]
                          ) -> Callable[[], list[int | None]]:
        """Checkouts' links (`_links_page`), in pipeline mode (`_write_pipelined`): the cart tokens' locks and the
        delivery rows in the first round trip; the links, each token's guest events joined to its customer, the
        install mark and COMMIT in the second (as `_apply_delivery` does it, in seven)."""
        shop = items[0][0].shop
        self._take_locks(conn, [_lock_key(ANONYMOUS_ID_LOCK, shop, link.anonymous_id)
                                for _, changes in items for link in changes.identity_links])
        results, fresh = self._fresh_of_page(self._send_deliveries(conn, items), items)
        links = json.dumps([{"anonymous_id": link.anonymous_id, "customer_id": link.customer_id}
                            for _, _, changes in fresh for link in changes.identity_links])
        if fresh:
            conn.execute(_PAGE_LINKS, {"shop": shop, "links": links})
            conn.execute(_LINKED_EVENTS, {"shop": shop, "links": links})
        self._mark_installed_by(conn, shop, fresh)
        return lambda: results

    @staticmethod
    def _send_adjustments(conn: psycopg.Connection, shop: str, voids: Sequence[str],
                          refunds: Sequence[tuple[RefundLine, datetime]]) -> None:
        """Cancelled orders' purchases made void (those not void already) and refund lines (each with when its
        delivery was received; no dedupe key twice) applied, each once by its adjustment row, or kept for a line not
        stored: set-wise, sent without waiting for their answers."""
        if voids:
            conn.execute("UPDATE events SET weight_factor = 0 WHERE shop = %s AND order_id = ANY(%s)"
                         " AND kind = 'purchase' AND weight_factor <> 0", (shop, sorted(set(voids))))
        if refunds:
            conn.execute(_PAGE_REFUNDS, {"shop": shop, "refunds": json.dumps([
                {"adjustment_key": refund_adjustment_key(r.refund_id, r.line_item_id), "order_id": r.order_id,
                 "dedupe_key": order_line_key(r.order_id, r.line_item_id), "quantity": r.quantity,
                 "received_at": received_at.isoformat()}
                for r, received_at in refunds])})

    @staticmethod
    def _products_changed(conn: psycopg.Connection, shop: str, changes: ChangeSet) -> set[str]:
        """The products whose `sellable` flag this delivery recomputes. Two deliveries changing one product (two
        of its variants' stock, say) take its lock in turn, before touching any row, so the second one's
        recomputation reads what the first committed."""
        products = set(changes.catalog_product_ids())
        items = changes.inventory_item_ids()
        if items:
            products.update(row[0] for row in conn.execute(
                "SELECT product_id FROM variants WHERE shop = %s AND inventory_item_id = ANY(%s)", (shop, items)))
        return products

    def _send_gift_cards(self, conn: psycopg.Connection, shop: str, product_ids: Sequence[str]) -> None:
        """The products an order's lines sell as gift cards marked so (`_GIFT_CARDS`), and their `sellable` flags,
        sent in pipeline mode: no answer read, no round trip of their own."""
        if product_ids:
            conn.execute(_GIFT_CARDS, {"shop": shop, "gift_cards": list(product_ids)})
            self._refresh_sellable(conn, shop, ChangeSet(gift_card_product_ids=tuple(product_ids)))

    @staticmethod
    def _events_alone(changes: ChangeSet) -> bool:
        """Nothing but events (an order, a cart, a pixel's)."""
        return _nothing_but(changes, "events")

    def _events_alone_without_locks(self, changes: ChangeSet) -> bool:
        """Nothing but events, none of a guest (whose events take their cart token's lock and read its link)."""
        return self._events_alone(changes) and not self._anonymous_locks(changes.events)

    @staticmethod
    def _events_params(delivery: Delivery, events: Sequence[Event]) -> dict:
        """`_APPLY_EVENTS`' parameters for a delivery of events alone (a guest's after its token's lock)."""
        return {**PostgresEventStore._delivery_params(delivery),
                "events": json.dumps([_event_row(e) for e in _first_of_each_key(events)])}

    @staticmethod
    def _delivery_params(delivery: Delivery) -> dict:
        """The parameters of `_DELIVERY_ROW` and `_INSTALLED_BY_DELIVERY`."""
        return {"shop": delivery.shop, "webhook_id": delivery.webhook_id, "topic": delivery.topic,
                "event_id": delivery.event_id, "received_at": delivery.received_at,
                "happened_at": delivery.happened_at, "proves_install": delivery.topic not in TOPICS_NOT_PROVING_INSTALL}

    @staticmethod
    def _store_events(conn: psycopg.Connection, params: dict) -> int | None:
        """`apply` of events alone that take no lock: `_APPLY_EVENTS`, one statement, one round trip."""
        return PostgresEventStore._stored_events(conn.execute(_APPLY_EVENTS, params), params)

    @staticmethod
    def _stored_events(sent: psycopg.Cursor, params: dict | None = None) -> int | None:
        """What `_APPLY_EVENTS`, `_APPLY_LINKS` or `_INSTALLED_SHOPS_EVENTS` answered: the events new, or None for a
        delivery stored before or a shop not installed (nothing stored). `_APPLY_EVENTS` (its `params` given) also
        answers how many of a new delivery's events were withheld as redacted, which is logged."""
        fresh, inserted, *withheld = sent.fetchone()
        if fresh and params is not None and withheld and withheld[0]:
            log_withheld(params["shop"], params["topic"], params["webhook_id"], withheld[0])
        return inserted if fresh else None

    def add_events(self, events: Iterable[Event]) -> int:
        """Insert events in one transaction; returns how many were new (dedupe keys already seen are skipped).

        Set-wise in pipeline mode, as a page of orders stores its events (`_PAGE_EVENTS`, at most
        EVENTS_PER_STATEMENT a statement): one round trip for all, guests' events (a pixel's beacon of page views)
        too, where event by event it took two or three a guest's event.
        """
        batch = list(events)
        if not batch:
            return 0

        def work(conn: psycopg.Connection) -> Callable[[], int]:
            # The guests' locks, then their events, each joined to its token's customer (`_events_linked`).
            self._take_locks(conn, self._anonymous_locks(batch))
            sent = self._send_events(conn, batch)
            return lambda: self._counted(sent)

        return self._write_pipelined(work)

    def add_events_if_installed(self, shop: str, events: Sequence[Event]) -> int | None:
        """`add_events` of one shop's events if the shop is installed, else None and nothing stored: the guests'
        locks and one statement (`_INSTALLED_SHOPS_EVENTS`), one round trip where the check and the write took two."""
        batch = of_one_shop(shop, events)
        if not batch:
            return 0 if self.is_shop_installed(shop) else None
        params = {"shop": shop, "events": json.dumps([_event_row(e) for e in _first_of_each_key(batch)])}

        def work(conn: psycopg.Connection) -> Callable[[], int | None]:
            self._take_locks(conn, self._anonymous_locks(batch))
            sent = conn.execute(_INSTALLED_SHOPS_EVENTS, params)
            return lambda: self._stored_events(sent)

        return self._write_pipelined(work)

    def add_beacon_if_installed(self, shop: str, events: Sequence[Event],
                                signals: Sequence[RecommendationSignal]) -> tuple[int, int] | None:
        """A pixel's beacon: its events as `add_events_if_installed` stores them and its signals
        (`_INSTALLED_SHOPS_SIGNALS`), each only if the shop is installed, in one transaction and one round trip (the
        guests' locks and both statements pipelined): (events new, signals new), or None and nothing stored."""
        batch, marks = of_one_shop(shop, events), of_one_shop(shop, signals, "signals")
        if not marks:
            stored = self.add_events_if_installed(shop, batch)
            return None if stored is None else (stored, 0)
        signal_params = {"shop": shop, "signals": json.dumps([
            {**dict(zip(RECOMMENDATION_EVENT_COLUMNS, mark)), "occurred_at": mark.occurred_at.isoformat()}
            for mark in marks])}

        def work(conn: psycopg.Connection) -> Callable[[], tuple[int, int] | None]:
            sent = None
            if batch:
                self._take_locks(conn, self._anonymous_locks(batch))
                sent = conn.execute(_INSTALLED_SHOPS_EVENTS, {
                    "shop": shop, "events": json.dumps([_event_row(e) for e in _first_of_each_key(batch)])})
            marked = conn.execute(_INSTALLED_SHOPS_SIGNALS, signal_params)

            def outcome() -> tuple[int, int] | None:
                stored = self._stored_events(sent) if sent is not None else 0
                installed, new_signals = marked.fetchone()
                # Each statement checks the shop in its own snapshot: an install or uninstall committed between the two
                # leaves one of them storing nothing, which the counts say.
                if not installed and stored is None:
                    return None
                return stored or 0, int(new_signals)

            return outcome

        return self._write_pipelined(work)

    @staticmethod
    def _anonymous_locks(events: Iterable[Event]) -> list[tuple[int, int]]:
        """Guests' events read the identity links: they take the lock a new link takes."""
        return [_lock_key(ANONYMOUS_ID_LOCK, e.shop, e.anonymous_id) for e in events
                if e.customer_id is None and e.anonymous_id]

    @staticmethod
    def _send_events(conn: psycopg.Connection, events: Iterable[Event]) -> list[psycopg.Cursor]:
        """Events set-wise (`_PAGE_EVENTS`, at most EVENTS_PER_STATEMENT a statement), sent: each new one a row, one
        whose dedupe key is stored only lowering that row's weight factor, a guest's joined to the customer its
        token was linked to (`_events_linked`). `_counted` reads how many were new."""
        rows = [{**_event_row(e), "item": 0} for e in _first_of_each_key(list(events))]
        return [conn.execute(_PAGE_EVENTS, (json.dumps(rows[start:start + EVENTS_PER_STATEMENT]),))
                for start in range(0, len(rows), EVENTS_PER_STATEMENT)]

    @staticmethod
    def _counted(sent: Sequence[psycopg.Cursor]) -> int:
        return sum(count for cursor in sent for _, count in cursor.fetchall())

    def _insert_events(self, conn: psycopg.Connection, events: Iterable[Event]) -> int:
        """Insert new events (`_send_events`); returns how many were new."""
        return self._counted(self._send_events(conn, events))

    def _apply_adjustments(self, conn: psycopg.Connection, delivery: Delivery, changes: ChangeSet) -> None:
        shop = delivery.shop
        for order_id in changes.void_order_ids:
            conn.execute("UPDATE events SET weight_factor = 0 WHERE shop = %s AND order_id = %s AND kind = 'purchase'",
                         (shop, order_id))
        for refund in changes.refunds:  # a statement each: two refunds of one line shrink it in turn
            self._send_adjustments(conn, shop, (), [(refund, delivery.received_at)])
        for level in changes.inventory_levels:  # under the item's advisory lock (apply)
            conn.execute(
                "INSERT INTO inventory_levels (shop, inventory_item_id, location_id, available, all_locations)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (shop, inventory_item_id, location_id) DO UPDATE SET"
                " available = excluded.available,"
                " all_locations = inventory_levels.all_locations OR excluded.all_locations",
                (shop, level.inventory_item_id, level.location_id, level.available, level.all_locations),
            )
            conn.execute(_STOCK_OF_ITEMS, {"shop": shop, "items": [level.inventory_item_id]})
        for link in changes.identity_links:  # under the cart token's advisory lock (apply)
            conn.execute(
                "INSERT INTO identity_links (shop, anonymous_id, customer_id) VALUES (%s, %s, %s)"
                " ON CONFLICT (shop, anonymous_id) DO UPDATE SET customer_id = excluded.customer_id",
                (shop, link.anonymous_id, link.customer_id),
            )
            conn.execute("UPDATE events SET customer_id = %s, user_key = %s WHERE shop = %s AND anonymous_id = %s"
                         f" AND customer_id IS NULL AND {not_from_pixel()}",
                         (link.customer_id, f"c:{link.customer_id}", shop, link.anonymous_id))

    @staticmethod
    def _mark_installed(conn: psycopg.Connection, shop: str, happened_at: datetime) -> None:
        """A webhook arrived, so the app is installed; written only when that is news (the row is every delivery's).

        A retry of a delivery triggered before the shop uninstalled proves nothing: it is ignored. One statement
        whose result nobody reads, as `_APPLY_EVENTS`' own mark is: in pipeline mode it costs no round trip.
        """
        conn.execute(_MARK_INSTALLED, {"shop": shop, "happened_at": happened_at})

    @staticmethod
    def _upsert_product(conn: psycopg.Connection, p: CatalogProduct) -> None:
        """Insert or update a catalog row and its variants (`_PRODUCT_CONFLICT`: a deleted product stays deleted
        and an older update is ignored)."""
        applied = conn.execute(
            "INSERT INTO products (shop, product_id, title, handle, status, published_at, price, image_url,"
            " product_type, vendor, updated_at, hidden, picks, deleted)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, false)" + _PRODUCT_CONFLICT,
            (p.shop, p.product_id, p.title, p.handle, p.status, p.published_at, p.price, p.image_url,
             p.product_type, p.vendor, p.updated_at, p.hidden, encoded_picks(p)),
        ).fetchone()
        if applied is None:
            return
        conn.execute("DELETE FROM variants WHERE shop = %s AND product_id = %s", (p.shop, p.product_id))
        with conn.cursor() as cursor:  # the payload's total is also the floor the stock levels keep
            cursor.executemany(
                "INSERT INTO variants (shop, variant_id, product_id, inventory_item_id, inventory_quantity,"
                " listed_quantity, tracked, continue_selling) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                + _VARIANT_CONFLICT,
                [(p.shop, v.variant_id, p.product_id, v.inventory_item_id, v.inventory_quantity,
                  v.inventory_quantity if v.tracked else None, v.tracked, v.continue_selling) for v in p.variants],
            )

    # --- reads --------------------------------------------------------------------------------

    # The columnar read (SharedQueries.interaction_columns) in PostgreSQL's words.
    _CONCAT = "string_agg"
    _SEP_SQL = "chr(31)"
    _FACTOR_SQL = "encode(float8send(weight_factor), 'hex')"  # the float's own 8 bytes: exact whatever the settings
    _TIME_SQL = "((extract(epoch FROM occurred_at) * 1000000)::bigint)::text"  # µs since the epoch
    _ID_ORDER_CHECKED = True  # a parallel plan may hand the aggregates rows out of order: ids say where each goes

    # libpq keeps its input buffer at the size of the largest message its connection has received. When the columnar
    # read was one row holding every event's ids and times as text (~55 bytes an event), the connection held 54 MiB at
    # 1M events after it for the rest of the training job (and for an `app` instance's life; bench/PERFORMANCE.md,
    # round 32). A read with a row this large (a row of COLUMN_ROW_IDS events is ~14 MiB) is followed by a new
    # connection.
    LARGE_READ_BYTES = 8 * 2**20

    # The columnar read comes back as a row for each run of this many event ids, streamed: each row is handed over and
    # made text before the next arrives. As one row, the 5M-event read peaked at 877 MiB for 236 MiB of text: libpq's
    # buffer, its result and Python's strings each held all of it (bench/PERFORMANCE.md, round 33).
    COLUMN_ROW_IDS = 250_000

    def _column_texts(self, shop: str, times: bool) -> ColumnTexts:
        from recommender.event_columns import ColumnTexts, join_column_texts

        # Runs of ids, not of the shop's events: numbering the events (row_number) took a second sort, 2.4 s more at
        # 5M events; sorted by run and id, the rows reach each run's aggregates in id order with one sort, as before.
        # A small shop among many comes back in more, smaller rows.
        sql = (f"SELECT {self._column_select(times)} FROM (SELECT {self._columns_read(times)}, id / %s AS run"
               " FROM events WHERE shop = %s AND weight_factor > 0 ORDER BY run, id) AS e GROUP BY run ORDER BY run")

        def read(conn: psycopg.Connection) -> list[ColumnTexts]:
            with conn.cursor() as cursor:
                return [ColumnTexts(*row) for row in cursor.stream(sql, (self.COLUMN_ROW_IDS, shop))]

        try:
            runs = self._reading(read)
        except StoreError:
            self._drop_connection()  # it may have grown to a large row's size before the failure
            raise
        largest = max((sum(len(text) for text in (run.users, run.products, run.orders, run.kinds, run.factors,
                                                  run.times, run.ids) if text) for run in runs), default=0)
        if largest > self.LARGE_READ_BYTES:  # the buffer grew to the largest row
            self._drop_connection()
        return join_column_texts(runs) if runs else ColumnTexts(0, None, None, None, None, None)

    def _drop_connection(self) -> None:
        """Close this thread's connection; its next statement opens a new one."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @staticmethod
    def _parse_factor(text: str) -> float:
        import struct

        return struct.unpack(">d", bytes.fromhex(text))[0]

    @staticmethod
    def _parse_times(text: str, n: int):
        from recommender.event_columns import integer_times

        return integer_times(text, n)

    def shops(self) -> list[str]:
        rows = self._read('SELECT shop FROM events GROUP BY shop ORDER BY shop COLLATE "C"')
        return [r[0] for r in rows]

    def activity_since(self, shop: str, since: datetime, product_id: str | None = None) -> list[ActivityBucket]:
        """Per product, kind and UTC day since `since`: the summed weight factors (for trending); one product's alone
        where `product_id` names it."""
        one = " AND product_id = %s" if product_id is not None else ""
        rows = self._read(
            "SELECT product_id, kind, to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), SUM(weight_factor)"
            f" FROM events WHERE shop = %s AND occurred_at >= %s AND weight_factor > 0{one} GROUP BY 1, 2, 3",
            (shop, since, *([product_id] if product_id is not None else [])),
        )
        return [ActivityBucket(p, EventKind(k), d, float(m)) for p, k, d, m in rows]

    def deleted_product_ids(self, shop: str) -> set[str]:
        rows = self._read("SELECT product_id FROM products WHERE shop = %s AND deleted", (shop,))
        return {r[0] for r in rows}

    def products_matching(self, shop: str, product_type: str | None, vendor: str | None) -> set[str]:
        rows = self._read(
            "SELECT product_id FROM products WHERE shop = %(shop)s AND NOT deleted"
            " AND (%(type)s::text IS NULL OR lower(product_type) = lower(%(type)s))"
            " AND (%(vendor)s::text IS NULL OR lower(vendor) = lower(%(vendor)s))",
            {"shop": shop, "type": product_type, "vendor": vendor},
        )
        return {r[0] for r in rows}

    # --- privacy and lifecycle (the contract is documented on recommender.store.SQLiteEventStore) ---------

    def redact_customer(self, shop: str, customer_id: str, order_ids: Sequence[str]) -> int:
        def work(conn: psycopg.Connection) -> int:
            # The customer's record takes the latest redaction's time, an order's keeps its first (each order once:
            # a row this statement inserted cannot be updated by it).
            conn.execute("INSERT INTO redactions (shop, kind, redacted_id, redacted_at)"
                         " SELECT %(shop)s, 'customer', %(customer_id)s, now()"
                         " UNION ALL SELECT %(shop)s, 'order', o, now()"
                         " FROM (SELECT DISTINCT unnest(%(orders)s::text[]) AS o) AS d"
                         " ON CONFLICT (shop, kind, redacted_id) DO UPDATE SET redacted_at = excluded.redacted_at"
                         " WHERE redactions.kind = 'customer' AND redactions.redacted_at < excluded.redacted_at",
                         {"shop": shop, "customer_id": customer_id, "orders": list(order_ids)})
            deleted = conn.execute(
                f"DELETE FROM events WHERE {_CUSTOMER_EVENTS}",
                {"shop": shop, "customer_id": customer_id, "user_key": f"c:{customer_id}"},
            ).rowcount
            deleted += conn.execute("DELETE FROM events WHERE shop = %s AND order_id = ANY(%s)",
                                    (shop, list(order_ids))).rowcount
            conn.execute("DELETE FROM pending_refunds WHERE shop = %s AND order_id = ANY(%s)", (shop, list(order_ids)))
            conn.execute("DELETE FROM identity_links WHERE shop = %s AND customer_id = %s", (shop, customer_id))
            conn.execute("DELETE FROM data_exports WHERE shop = %s AND customer_id = %s", (shop, customer_id))
            return deleted

        return self._write(work)

    def export_customer(self, shop: str, customer_id: str, order_ids: Sequence[str] = ()) -> dict:
        params = {"shop": shop, "customer_id": customer_id, "user_key": f"c:{customer_id}",
                  "order_ids": list(order_ids)}
        rows = self._read(f"SELECT {', '.join(EVENT_EXPORT_COLUMNS)} FROM events WHERE {_CUSTOMER_EVENTS}"
                          " OR (shop = %(shop)s AND order_id = ANY(%(order_ids)s::text[]))"
                          " ORDER BY occurred_at, id", params)
        at = EVENT_EXPORT_COLUMNS.index("occurred_at")
        events = [(*row[:at], iso_utc(row[at]), *row[at + 1:]) for row in rows]  # the text SQLite stores
        links = self._read("SELECT anonymous_id, customer_id FROM identity_links WHERE shop = %s AND customer_id = %s"
                           ' ORDER BY anonymous_id COLLATE "C"', (shop, customer_id))
        refunds = self._read("SELECT order_id, dedupe_key, quantity FROM pending_refunds WHERE shop = %(shop)s"
                             ' AND order_id = ANY(%(order_ids)s::text[]) ORDER BY order_id COLLATE "C",'
                             ' dedupe_key COLLATE "C"', params)
        redactions = self._read("SELECT kind, redacted_id, redacted_at FROM redactions WHERE shop = %(shop)s"
                                " AND ((kind = 'customer' AND redacted_id = %(customer_id)s) OR (kind = 'order'"
                                " AND redacted_id = ANY(%(order_ids)s::text[])))"
                                ' ORDER BY kind COLLATE "C", redacted_id COLLATE "C"', params)
        return customer_export(shop, customer_id, events, links, refunds,
                               [(kind, redacted_id, iso_utc(at)) for kind, redacted_id, at in redactions])

    def save_data_export(self, shop: str, export_id: str, customer_id: str, body: dict) -> None:
        text = export_json(body)
        self._write(lambda conn: conn.execute(
            "INSERT INTO data_exports (shop, export_id, customer_id, body, created_at) VALUES (%s, %s, %s, %s, now())"
            " ON CONFLICT (shop, export_id) DO UPDATE SET customer_id = excluded.customer_id, body = excluded.body,"
            " created_at = excluded.created_at",
            (shop, export_id, customer_id, text),
        ))

    def data_export(self, shop: str, export_id: str) -> dict | None:
        rows = self._read("SELECT body FROM data_exports WHERE shop = %s AND export_id = %s", (shop, export_id))
        return rows[0][0] if rows else None

    def set_shop_installed(self, shop: str, installed: bool) -> None:
        self._write(lambda conn: conn.execute(
            "INSERT INTO shop_state (shop, installed, changed_at) VALUES (%s, %s, now())"
            " ON CONFLICT (shop) DO UPDATE SET installed = excluded.installed, changed_at = excluded.changed_at",
            (shop, installed),
        ))

    def mark_uninstalled(self, delivery: Delivery) -> bool | None:
        """`_UNINSTALL`, one statement, one round trip."""
        params = self._delivery_params(delivery)
        fresh, uninstalled = self._write(lambda conn: conn.execute(_UNINSTALL, params).fetchone(), one_statement=True)
        return uninstalled if fresh else None

    def is_shop_installed(self, shop: str) -> bool:
        return bool(self._read(_INSTALLED_SQL, (shop,)))

    def installed_with_unsellable(self, shop: str) -> tuple[bool, CatalogState]:
        return _installed_and_unsellable(self._read(_INSTALLED_AND_UNSELLABLE, (shop, shop, shop, shop)))

    def catalog_state(self, shop: str) -> CatalogState:
        """The three reads in one statement (one round trip)."""
        (state,) = self._read(f"SELECT {_CATALOG_STATE}", (shop, shop, shop))
        return _catalog_state(*state)

    def _history_rows(self) -> str:
        """Through `latest_events` (migration 4), whose plan walks the index whatever the statistics say; its order
        said again, as SQL keeps no other."""
        return "FROM latest_events(%s, %s, %s) ORDER BY occurred_at DESC, id DESC"

    def _read_histories_with_check(self, shop: str, user_keys: Sequence[str], limit: int) -> list[list[tuple]]:
        """One statement for one key; for more, all of them in one round trip (pipeline mode). A single statement
        beats the check and the history pipelined (0.61 → 0.35 ms on loopback, bench/PERFORMANCE.md)."""
        first = (self._history_with_check_sql(), (shop, shop, user_keys[0], limit))
        if len(user_keys) == 1:
            return [self._read(*first)]
        return self._read_together([first, *((self._history_sql(), (shop, key, limit)) for key in user_keys[1:])])

    def _read_histories_check_and_unsellable(self, shop: str, user_keys: Sequence[str], limit: int
                                             ) -> tuple[list[list[tuple]], tuple[bool, CatalogState]]:
        """Every key's history (the first with the check) and the check with what the shop does not sell, in one
        pipeline."""
        *histories, checked = self._read_together([
            (self._history_with_check_sql(), (shop, shop, user_keys[0], limit)),
            *((self._history_sql(), (shop, key, limit)) for key in user_keys[1:]),
            (_INSTALLED_AND_UNSELLABLE, (shop, shop, shop, shop))])
        return histories, _installed_and_unsellable(checked)

    def installed_shops(self) -> list[str]:
        return [r[0] for r in self._read('SELECT shop FROM shop_state WHERE installed ORDER BY shop COLLATE "C"')]

    def _write_statement(self, sql: str, params: tuple) -> int:
        return self._write(lambda conn: conn.execute(sql, params).rowcount, one_statement=True)

    def prune_events(self, older_than: datetime) -> int:
        cutoff = require_aware(older_than, "older_than")

        def work(conn: psycopg.Connection) -> int:
            conn.execute("DELETE FROM deliveries WHERE received_at < %s", (cutoff,))
            conn.execute("DELETE FROM pending_refunds WHERE received_at < %s", (cutoff,))
            conn.execute("DELETE FROM recommendation_events WHERE occurred_at < %s", (cutoff,))  # attribution's
            return conn.execute("DELETE FROM events WHERE occurred_at < %s", (cutoff,)).rowcount

        return self._write(work)

    def close(self) -> None:
        with self._lock:
            for conn in list(self._connections):
                conn.close()
            self._connections.clear()
        self._local = threading.local()
