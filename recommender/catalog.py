"""What is for sale right now: a per-shop snapshot of the products not to show, refreshed without retraining.

A product is unsellable when it is deleted, `draft`/`archived`, unpublished (`published_at` null),
sold out (every tracked variant at ≤ 0 and none selling past zero) or hidden (a gift card, free, tagged); it
is backordered when it is for sale with nothing on hand (sold past zero only), which complementary answers
leave out, as Shopify's do. The snapshot also holds the merchant's picks for the products that have any
(`MerchantPicks`, read in the same read), which related and complementary answers show first. The store keeps each
verdict as a flag on each product row, recomputed by the delivery that changes the product or its stock, so a
snapshot is a few index reads however large the catalog; products the store has no catalog row for (the catalog not
synced yet) are given the benefit of the doubt. The display fields of the products an answer returns
(`ProductCard`) are read for those products alone, never for the whole catalog, and kept with the
snapshot: a product answered again before the snapshot is re-read is not read again.
"""

from __future__ import annotations

import threading
import time
from types import MappingProxyType
from typing import Callable, Mapping, Sequence

import numpy as np

from recommender.artifact import ItemIds
from recommender.events import MerchantPicks
from recommender.store import CatalogState, EventStore, ProductCard

Filter = tuple[str | None, str | None]  # (product_type, vendor), compared case-insensitively
CARDS_KEPT = 10_000  # product cards a snapshot keeps at most (~5 MB); past that it starts over
CARD_PRODUCT_TYPE = ProductCard._fields.index("product_type")  # where a kept card's tuple holds it
_UNREAD = object()


class CatalogSnapshot:
    """What a shop does not sell (and what it sells with nothing on hand), as read at `taken_at`, with its filters and
    masks cached per model."""

    __slots__ = ("unsellable", "backordered", "picks", "taken_at", "matching", "read_cards", "_filters", "_masks",
                 "_cards")

    def __init__(self, unsellable: frozenset[str], taken_at: float = 0.0,
                 matching: Callable[[Filter], frozenset[str]] = lambda wanted: frozenset(),
                 read_cards: Callable[[list[str]], dict[str, ProductCard]] = lambda ids: {},
                 backordered: frozenset[str] = frozenset(), picks: Mapping[str, MerchantPicks] = MappingProxyType({})):
        self.unsellable = unsellable
        self.backordered = backordered
        self.picks = picks  # the merchant's picks for each product's page, for the products that have any
        self.taken_at = taken_at
        self.matching = matching  # products matching a (product_type, vendor) filter: read on first use, then kept
        self.read_cards = read_cards  # the cards of some products, in one statement
        self._filters: dict[Filter, frozenset[str]] = {}
        self._masks: dict[tuple[str, str | None, str | None, bool], np.ndarray | None] = {}
        # ProductCard's fields as a plain tuple (which the cyclic collector stops tracking); None: no catalog row
        self._cards: dict[str, tuple | None] = {}

    def cards(self, product_ids: Sequence[str]) -> dict[str, tuple]:
        """The cards of those products that have a catalog row, as tuples of `ProductCard`'s fields; only products
        this snapshot has not read yet are read (in one statement), so a card is at most as old as the snapshot's
        TTL allows."""
        kept = self._cards
        found: dict[str, tuple] = {}
        missing = []
        for pid in product_ids:
            card = kept.get(pid, _UNREAD)
            if card is _UNREAD:
                missing.append(pid)
            elif card is not None:
                found[pid] = card
        if missing:
            read = self.read_cards(missing)
            if len(kept) + len(missing) > CARDS_KEPT:  # bounded: answers may range over a large catalog
                kept.clear()
            for pid in missing:
                card = read.get(pid)
                if card is not None:
                    card = found[pid] = tuple(card)
                kept[pid] = card
        return found

    def sellable(self, product_id: str, on_hand: bool = False) -> bool:
        """For sale; with `on_hand`, also with stock on hand (a complementary answer's rule)."""
        return product_id not in self.unsellable and not (on_hand and product_id in self.backordered)

    def matches(self, product_id: str, product_type: str | None, vendor: str | None) -> bool:
        """Optional filters; a product without a catalog row matches none."""
        if product_type is None and vendor is None:
            return True
        return product_id in self._matching((product_type, vendor))

    def _matching(self, wanted: Filter) -> frozenset[str]:
        found = self._filters.get(wanted)
        if found is None:
            if len(self._filters) > 64:  # bounded: filters come from callers
                self._filters.clear()
            found = self._filters[wanted] = self.matching(wanted)
        return found

    def blocked_mask(self, item_ids: ItemIds, version: str, product_type: str | None = None,
                     vendor: str | None = None, on_hand: bool = False) -> np.ndarray | None:
        """bool[n_items]: True where the model's item must not be shown (with `on_hand`, nor a backordered one);
        None when no item is blocked (every reader then skips the mask: at 100k items, reading it cost a
        personalized answer ~0.03 ms of its top-n, bench/PERFORMANCE.md). Cached per model and filter."""
        on_hand = on_hand and bool(self.backordered)  # nothing backordered: the same mask as without the rule
        key = (version, product_type, vendor, on_hand)
        mask = self._masks.get(key, _UNREAD)
        if mask is _UNREAD:
            mask = np.zeros(len(item_ids), dtype=bool)
            mask[item_ids.rows_of(self.unsellable)] = True
            if on_hand:
                mask[item_ids.rows_of(self.backordered)] = True
            if product_type is not None or vendor is not None:
                allowed = np.zeros(len(item_ids), dtype=bool)
                allowed[item_ids.rows_of(self._matching((product_type, vendor)))] = True
                mask |= ~allowed
            if not mask.any():
                mask = None
            if len(self._masks) > 64:
                self._masks.clear()
            self._masks[key] = mask
        return mask


class CatalogCache:
    """One snapshot per shop, re-read from the store at most every `ttl_seconds`. At most once a TTL, a fresh read
    lets go of the snapshots older than that: an instance serving many shops keeps those of the shops asked for
    lately, not one for every shop it ever served."""

    def __init__(self, store: EventStore, ttl_seconds: float, clock: Callable[[], float] = time.monotonic):
        self._store = store
        self._ttl = ttl_seconds
        self._clock = clock
        self._snapshots: dict[str, CatalogSnapshot] = {}
        self._lock = threading.Lock()
        self._swept_at = clock()

    def get(self, shop: str) -> CatalogSnapshot:
        now = self._clock()
        snapshot = self._snapshots.get(shop)
        if snapshot is not None and now - snapshot.taken_at < self._ttl:
            return snapshot
        return self.put(shop, self._store.catalog_state(shop), now)

    def now(self) -> float:
        """A reading of the clock snapshots are timed by."""
        return self._clock()

    def due(self, shop: str) -> bool:
        """Whether the shop's next `get` reads the store."""
        snapshot = self._snapshots.get(shop)
        return snapshot is None or self._clock() - snapshot.taken_at >= self._ttl

    def put(self, shop: str, state: CatalogState, taken_at: float) -> CatalogSnapshot:
        """The snapshot of what the store said at `taken_at` (a clock reading taken before it was asked) is not for
        sale, read by `get` or beside another read (`EventStore.installed_with_unsellable`): kept, and served by `get`
        within the TTL."""
        now = taken_at
        fresh = CatalogSnapshot(
            state.unsellable, now,
            lambda wanted: frozenset(self._store.products_matching(shop, *wanted)),
            lambda ids: self._store.product_cards(shop, ids),
            state.backordered, state.picks,
        )
        with self._lock:
            kept = self._snapshots.get(shop)
            if kept is None or kept.taken_at <= now:  # a slower read begun earlier never replaces a newer snapshot
                self._snapshots[shop] = fresh
            if now - self._swept_at >= self._ttl:  # shops not asked within the TTL: their snapshots would be re-read
                self._swept_at = now
                for other in [name for name, old in self._snapshots.items() if now - old.taken_at >= self._ttl]:
                    del self._snapshots[other]
        return fresh
