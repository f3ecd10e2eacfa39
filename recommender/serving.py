"""Serving: a published artifact in memory, a shopper's latest events, a ranked list.

Imports numpy and nothing heavier (no scipy, no implicit): cold start is the product.
A shopper's vector is never stored; it is folded in from their stored events at
request time, so a purchase made a second ago already counts.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from recommender.artifact import ModelArtifact
from recommender.errors import InvalidParameter, ModelNotReady
from recommender.events import EventKind, user_key
from recommender.model_store import ModelStore, check_shop_domain
from recommender.store import EventStore, Interaction

MAX_RESULTS = 50


@dataclass(frozen=True)
class Recommendation:
    product_id: str
    score: float


@dataclass(frozen=True)
class RecommendationResult:
    recommendations: tuple[Recommendation, ...]
    strategy: str  # "personalized" | "popular"
    model_version: str


class ServingModel:
    """An artifact unpacked for fast scoring: float32 factors, an id index, a precomputed λI + YᵀY."""

    def __init__(self, artifact: ModelArtifact):
        self.version = artifact.version
        self.item_ids = artifact.item_ids
        self.index = {pid: row for row, pid in enumerate(artifact.item_ids.tolist())}
        self.factors = np.ascontiguousarray(artifact.item_factors, dtype=np.float32)  # float16 matmul is ~30x slower
        n_factors = self.factors.shape[1]
        self.regularized_gramian = artifact.gramian.astype(np.float64) + artifact.regularization * np.eye(n_factors)
        self.alpha = artifact.alpha
        weights = artifact.metadata.get("event_weights", {})
        self.event_weights = {kind: float(weights.get(kind.value, 0.0)) for kind in EventKind}
        popularity = artifact.popularity.astype(np.float32)
        self.popular_rows = np.argsort(-popularity, kind="stable")
        top = float(popularity.max()) if len(popularity) else 1.0
        self.popularity_score = popularity / (top or 1.0)

    def fold_in_user_vector(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Solve the ALS user step for one shopper.

        rows: int[k] item rows the shopper touched; weights: float[k] summed event weights.
        x = (YᵀY + λI + Yₖᵀ(Cₖ − I)Yₖ)⁻¹ Yₖᵀ Cₖ 1, with Cₖ = 1 + alpha·weights — the same
        equation implicit solves for a user during training. Returns float32[factors].
        """
        y = self.factors[rows].astype(np.float64)
        confidence = 1.0 + self.alpha * np.asarray(weights, dtype=np.float64)
        a = self.regularized_gramian + (y.T * (confidence - 1.0)) @ y
        b = y.T @ confidence
        return np.linalg.solve(a, b).astype(np.float32)

    def history_weights(self, history: Sequence[Interaction]) -> tuple[np.ndarray, np.ndarray]:
        """Sum the event weights of known products: (rows int[k], weights float[k])."""
        summed: dict[int, float] = {}
        for event in history:
            row = self.index.get(event.product_id)
            weight = self.event_weights.get(event.kind, 0.0)
            if row is not None and weight > 0:
                summed[row] = summed.get(row, 0.0) + weight
        rows = np.fromiter(summed.keys(), dtype=np.int64, count=len(summed))
        weights = np.fromiter(summed.values(), dtype=np.float64, count=len(summed))
        return rows, weights

    def top_rows(self, scores: np.ndarray, n: int, excluded_rows: set[int]) -> list[int]:
        """The n best rows by score, excluded rows dropped, best first (ties by row)."""
        candidates = min(len(scores), n + len(excluded_rows))
        if candidates <= 0:
            return []
        part = np.argpartition(-scores, candidates - 1)[:candidates]
        ordered = part[np.lexsort((part, -scores[part]))]
        return [int(r) for r in ordered if int(r) not in excluded_rows][:n]

    def personalized(self, history: Sequence[Interaction], n: int,
                     exclude_purchased: bool = True) -> list[Recommendation] | None:
        rows, weights = self.history_weights(history)
        if len(rows) == 0:
            return None
        vector = self.fold_in_user_vector(rows, weights)
        scores = self.factors @ vector
        excluded = {self.index[e.product_id] for e in history
                    if exclude_purchased and e.kind is EventKind.PURCHASE and e.product_id in self.index}
        return [Recommendation(str(self.item_ids[r]), float(scores[r])) for r in self.top_rows(scores, n, excluded)]

    def popular(self, n: int, excluded_rows: set[int] = frozenset()) -> list[Recommendation]:
        picked = []
        for row in self.popular_rows:
            if int(row) in excluded_rows:
                continue
            picked.append(Recommendation(str(self.item_ids[row]), float(self.popularity_score[row])))
            if len(picked) == n:
                break
        return picked


class ModelHolder:
    """Loads each shop's latest artifact once per instance, lazily and thread-safely."""

    def __init__(self, model_store: ModelStore):
        self._model_store = model_store
        self._models: dict[str, ServingModel] = {}
        self._lock = threading.Lock()

    def get(self, shop: str) -> ServingModel:
        model = self._models.get(shop)
        if model is not None:
            return model
        with self._lock:
            model = self._models.get(shop)
            if model is None:
                manifest = self._model_store.latest(shop)
                if manifest is None:
                    raise ModelNotReady(
                        f"no model has been trained for {shop} yet: run `python -m recommender train --shop {shop}`"
                        " or POST /train"
                    )
                model = ServingModel(self._model_store.load(manifest))
                self._models[shop] = model
        return model


def parse_count(raw: str | None, default: int = 10) -> int:
    if raw is None or raw == "":
        return default
    try:
        n = int(raw)
    except ValueError:
        raise InvalidParameter("n", f"n must be an integer from 1 to {MAX_RESULTS}, got {raw!r}") from None
    if not 1 <= n <= MAX_RESULTS:
        raise InvalidParameter("n", f"n must be an integer from 1 to {MAX_RESULTS}, got {raw!r}")
    return n


def parse_customer_id(raw: str | None) -> str | None:
    """Shopify customer ids are positive integers; anything else is a caller error."""
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 20:
        raise InvalidParameter("customer_id", f"customer_id must be a Shopify customer id (digits), got {raw!r}")
    return raw


def recommend_for_customer(store: EventStore, holder: ModelHolder, shop: str, customer_id: str | None,
                           n: int, history_limit: int) -> RecommendationResult:
    """Personalized for a customer with known history, popular items otherwise."""
    shop = check_shop_domain(shop)
    model = holder.get(shop)
    if customer_id:
        history = store.history(shop, user_key(customer_id), history_limit)
        picked = model.personalized(history, n)
        if picked is not None:
            return RecommendationResult(tuple(picked), "personalized", model.version)
    return RecommendationResult(tuple(model.popular(n)), "popular", model.version)
