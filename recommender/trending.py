"""Trending: popularity with exponential time decay, read from the event store.

    score(item) = Σ weight(kind) · mass · 0.5 ^ (age_days / half_life_days)

over the last four half-lives (older events weigh ≤ 1/16). It needs no model, so a product
launched after the last training can trend at once. Cached per shop for `ttl_seconds`.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Callable, Mapping

from recommender.events import EventKind
from recommender.store import ActivityBucket, EventStore

WINDOW_HALF_LIVES = 4


def trending_scores(buckets: list[ActivityBucket], now: datetime, half_life_days: float,
                    weights: Mapping[EventKind, float]) -> list[tuple[str, float]]:
    """(product_id, score) best first; ties broken by product id for a stable order."""
    totals: dict[str, float] = {}
    for bucket in buckets:
        day_middle = datetime.fromisoformat(bucket.day).replace(tzinfo=timezone.utc) + timedelta(hours=12)
        age_days = max(0.0, (now - day_middle).total_seconds() / 86400)
        score = weights.get(bucket.kind, 0.0) * bucket.mass * 0.5 ** (age_days / half_life_days)
        if score > 0:
            totals[bucket.product_id] = totals.get(bucket.product_id, 0.0) + score
    return sorted(totals.items(), key=lambda item: (-item[1], item[0]))


class TrendingCache:
    def __init__(self, store: EventStore, half_life_days: float, weights: Mapping[EventKind, float],
                 ttl_seconds: float, clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self._store = store
        self._half_life = half_life_days
        self._weights = dict(weights)
        self._ttl = ttl_seconds
        self._clock = clock
        self._now = now
        self._cache: dict[str, tuple[float, list[tuple[str, float]]]] = {}  # let go once older than the TTL
        self._lock = threading.Lock()
        self._swept_at = clock()

    def get(self, shop: str) -> list[tuple[str, float]]:
        tick = self._clock()
        cached = self._cache.get(shop)
        if cached is not None and tick - cached[0] < self._ttl:
            return cached[1]
        now = self._now()
        since = now - timedelta(days=self._half_life * WINDOW_HALF_LIVES)
        ranked = trending_scores(self._store.activity_since(shop, since), now, self._half_life, self._weights)
        with self._lock:
            self._cache[shop] = (tick, ranked)
            if tick - self._swept_at >= self._ttl:  # shops not asked within the TTL: theirs would be computed again
                self._swept_at = tick
                for other in [name for name, (made, _) in self._cache.items() if tick - made >= self._ttl]:
                    del self._cache[other]
        return ranked
