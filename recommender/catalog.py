"""What is for sale right now: a per-shop catalog snapshot, refreshed without retraining.

A product is sellable unless it is deleted, `draft`/`archived`, unpublished (`published_at` null) or
sold out (every tracked variant at ≤ 0 and none selling past zero). Products the store has no
catalog row for (the catalog not synced yet) are given the benefit of the doubt.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from recommender.events import CatalogProduct
from recommender.store import EventStore


@dataclass(frozen=True)
class CatalogSnapshot:
    products: dict[str, CatalogProduct]
    deleted: frozenset[str]
    taken_at: float = 0.0
    _masks: dict = field(default_factory=dict, compare=False, repr=False)

    def unsellable_reason(self, product_id: str) -> str | None:
        if product_id in self.deleted:
            return "deleted"
        product = self.products.get(product_id)
        if product is None:
            return None
        if product.status != "active":
            return product.status or "inactive"
        if product.published_at is None:
            return "unpublished"
        if not product.available:
            return "sold_out"
        return None

    def sellable(self, product_id: str) -> bool:
        return self.unsellable_reason(product_id) is None

    def matches(self, product_id: str, product_type: str | None, vendor: str | None) -> bool:
        """Optional filters compare case-insensitively; a product without a catalog row matches none."""
        if product_type is None and vendor is None:
            return True
        product = self.products.get(product_id)
        if product is None:
            return False
        if product_type is not None and product.product_type.casefold() != product_type.casefold():
            return False
        return vendor is None or product.vendor.casefold() == vendor.casefold()

    def blocked_mask(self, item_ids: np.ndarray, index: dict[str, int], version: str,
                     product_type: str | None = None, vendor: str | None = None) -> np.ndarray:
        """bool[n_items]: True where the model's item must not be shown. Cached per model and filter."""
        key = (version, product_type, vendor)
        mask = self._masks.get(key)
        if mask is None:
            mask = np.zeros(len(item_ids), dtype=bool)
            unsellable = set(self.deleted) | {pid for pid in self.products if not self.sellable(pid)}
            for pid in unsellable:
                row = index.get(pid)
                if row is not None:
                    mask[row] = True
            if product_type is not None or vendor is not None:
                mask |= np.fromiter((not self.matches(pid, product_type, vendor) for pid in item_ids.tolist()),
                                    dtype=bool, count=len(item_ids))
            if len(self._masks) > 64:  # bounded: filters come from callers
                self._masks.clear()
            self._masks[key] = mask
        return mask


class CatalogCache:
    """One snapshot per shop, re-read from the store at most every `ttl_seconds`."""

    def __init__(self, store: EventStore, ttl_seconds: float, clock: Callable[[], float] = time.monotonic):
        self._store = store
        self._ttl = ttl_seconds
        self._clock = clock
        self._snapshots: dict[str, CatalogSnapshot] = {}
        self._lock = threading.Lock()

    def get(self, shop: str) -> CatalogSnapshot:
        now = self._clock()
        snapshot = self._snapshots.get(shop)
        if snapshot is not None and now - snapshot.taken_at < self._ttl:
            return snapshot
        fresh = CatalogSnapshot(self._store.products(shop), frozenset(self._store.deleted_product_ids(shop)), now)
        with self._lock:
            self._snapshots[shop] = fresh
        return fresh
