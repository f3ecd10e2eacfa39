"""The event store: every event and catalog row, durable before a webhook is acknowledged.

`open_event_store(url)` picks the implementation from `EVENT_STORE_URL`. The
SQLite store runs in WAL mode with `synchronous=FULL`, so a committed delivery
survives a crash; each connection belongs to one thread (gunicorn serves with
threads), and idempotency is enforced by UNIQUE constraints, not by memory.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Protocol

from recommender.errors import ConfigError, StoreError
from recommender.events import CatalogProduct, CatalogVariant, ChangeSet, Delivery, Event, EventKind

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
)


@dataclass(frozen=True)
class Interaction:
    """One stored event as training and fold-in see it."""

    user_key: str
    product_id: str
    kind: EventKind
    occurred_at: datetime


class EventStore(Protocol):
    def apply(self, delivery: Delivery, changes: ChangeSet) -> int | None: ...
    def add_events(self, events: Iterable[Event]) -> int: ...
    def shops(self) -> list[str]: ...
    def interactions(self, shop: str) -> list[Interaction]: ...
    def history(self, shop: str, user_key: str, limit: int) -> list[Interaction]: ...
    def products(self, shop: str) -> dict[str, CatalogProduct]: ...
    def close(self) -> None: ...


def open_event_store(url: str) -> EventStore:
    if url.startswith("sqlite:///"):
        return SQLiteEventStore(url[len("sqlite:///"):])
    raise ConfigError(f"EVENT_STORE_URL: unsupported scheme in {url!r} (use sqlite:///path)")


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _parse_iso(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


class SQLiteEventStore:
    """Events and catalog in one SQLite file; one connection per thread."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._migrate(self._connection())

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open the SQLite event store at {self.path}: {exc}") from exc
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
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
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result
        except sqlite3.Error as exc:
            raise StoreError(f"event store write failed: {exc}") from exc

    def apply(self, delivery: Delivery, changes: ChangeSet) -> int | None:
        """Store one delivery's changes atomically.

        Returns how many events were new (an order line or cart line already stored
        through another delivery counts once), or None when this webhook_id was seen before.
        """

        def work(conn: sqlite3.Connection) -> int | None:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO deliveries (shop, webhook_id, topic, event_id, received_at) VALUES (?, ?, ?, ?, ?)",
                (delivery.shop, delivery.webhook_id, delivery.topic, delivery.event_id, _iso(delivery.received_at)),
            )
            if cursor.rowcount == 0:
                return None
            inserted = self._insert_events(conn, changes.events)
            for product in changes.upsert_products:
                self._upsert_product(conn, product)
            for product_id in changes.delete_product_ids:
                conn.execute(
                    "UPDATE products SET deleted = 1 WHERE shop = ? AND product_id = ?", (delivery.shop, product_id)
                )
                conn.execute(
                    "INSERT OR IGNORE INTO products (shop, product_id, title, handle, status, product_type, vendor, deleted)"
                    " VALUES (?, ?, '', '', 'deleted', '', '', 1)",
                    (delivery.shop, product_id),
                )
            return inserted

        return self._write(work)

    def add_events(self, events: Iterable[Event]) -> int:
        """Insert events in one transaction; returns how many were new (dedupe keys already seen are skipped)."""
        batch = list(events)
        return int(self._write(lambda conn: self._insert_events(conn, batch)))

    @staticmethod
    def _insert_events(conn: sqlite3.Connection, events: Iterable[Event]) -> int:
        inserted = 0
        for e in events:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO events (shop, kind, user_key, customer_id, anonymous_id, product_id, variant_id,"
                " quantity, price, order_id, occurred_at, source_topic, delivery_id, dedupe_key)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (e.shop, e.kind.value, e.user_key, e.customer_id, e.anonymous_id, e.product_id, e.variant_id,
                 e.quantity, e.price, e.order_id, _iso(e.occurred_at), e.source_topic, e.delivery_id, e.dedupe_key),
            )
            inserted += cursor.rowcount
        return inserted

    @staticmethod
    def _upsert_product(conn: sqlite3.Connection, p: CatalogProduct) -> None:
        conn.execute(
            "INSERT INTO products (shop, product_id, title, handle, status, published_at, price, image_url,"
            " product_type, vendor, updated_at, deleted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)"
            " ON CONFLICT (shop, product_id) DO UPDATE SET title = excluded.title, handle = excluded.handle,"
            " status = excluded.status, published_at = excluded.published_at, price = excluded.price,"
            " image_url = excluded.image_url, product_type = excluded.product_type, vendor = excluded.vendor,"
            " updated_at = excluded.updated_at, deleted = 0",
            (p.shop, p.product_id, p.title, p.handle, p.status, _iso(p.published_at), p.price, p.image_url,
             p.product_type, p.vendor, _iso(p.updated_at)),
        )
        conn.execute("DELETE FROM variants WHERE shop = ? AND product_id = ?", (p.shop, p.product_id))
        conn.executemany(
            "INSERT OR REPLACE INTO variants (shop, variant_id, product_id, inventory_item_id, inventory_quantity,"
            " tracked, continue_selling) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(p.shop, v.variant_id, p.product_id, v.inventory_item_id, v.inventory_quantity, int(v.tracked),
              int(v.continue_selling)) for v in p.variants],
        )

    def shops(self) -> list[str]:
        rows = self._connection().execute("SELECT DISTINCT shop FROM events ORDER BY shop").fetchall()
        return [r[0] for r in rows]

    def interactions(self, shop: str) -> list[Interaction]:
        rows = self._connection().execute(
            "SELECT user_key, product_id, kind, occurred_at FROM events WHERE shop = ? ORDER BY id", (shop,)
        ).fetchall()
        return [Interaction(u, p, EventKind(k), datetime.fromisoformat(t)) for u, p, k, t in rows]

    def history(self, shop: str, user_key: str, limit: int) -> list[Interaction]:
        """The shopper's latest `limit` events, newest first."""
        rows = self._connection().execute(
            "SELECT user_key, product_id, kind, occurred_at FROM events WHERE shop = ? AND user_key = ?"
            " ORDER BY occurred_at DESC, id DESC LIMIT ?",
            (shop, user_key, limit),
        ).fetchall()
        return [Interaction(u, p, EventKind(k), datetime.fromisoformat(t)) for u, p, k, t in rows]

    def products(self, shop: str) -> dict[str, CatalogProduct]:
        """Every catalog row of the shop that is not deleted, with its variants."""
        conn = self._connection()
        variants: dict[str, list[CatalogVariant]] = {}
        for product_id, variant_id, item_id, qty, tracked, cont in conn.execute(
            "SELECT product_id, variant_id, inventory_item_id, inventory_quantity, tracked, continue_selling"
            " FROM variants WHERE shop = ? ORDER BY variant_id", (shop,)
        ):
            variants.setdefault(product_id, []).append(
                CatalogVariant(variant_id, item_id, qty, bool(tracked), bool(cont))
            )
        products = {}
        for row in conn.execute(
            "SELECT product_id, title, handle, status, published_at, price, image_url, product_type, vendor, updated_at"
            " FROM products WHERE shop = ? AND deleted = 0", (shop,)
        ):
            pid, title, handle, status, published_at, price, image_url, ptype, vendor, updated_at = row
            products[pid] = CatalogProduct(
                shop, pid, title, handle, status, _parse_iso(published_at), price, image_url, ptype, vendor,
                _parse_iso(updated_at), tuple(variants.get(pid, ())),
            )
        return products

    def deleted_product_ids(self, shop: str) -> set[str]:
        rows = self._connection().execute(
            "SELECT product_id FROM products WHERE shop = ? AND deleted = 1", (shop,)
        ).fetchall()
        return {r[0] for r in rows}

    def count_events(self, shop: str | None = None) -> int:
        if shop is None:
            return self._connection().execute("SELECT COUNT(*) FROM events").fetchone()[0]
        return self._connection().execute("SELECT COUNT(*) FROM events WHERE shop = ?", (shop,)).fetchone()[0]

    def count_deliveries(self) -> int:
        return self._connection().execute("SELECT COUNT(*) FROM deliveries").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()
