"""Training: stored events → user×item confidence matrix → implicit ALS → artifact.

Imports scipy and implicit; the serving path never imports this module.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recommender.artifact import ModelArtifact
from recommender.copurchase import copurchase_neighbors
from recommender.errors import RecommenderError
from recommender.events import EventKind
from recommender.model_store import Manifest, ModelStore
from recommender.settings import TrainingConfig
from recommender.store import EventStore, Interaction

log = logging.getLogger(__name__)


class NotEnoughData(RecommenderError):
    """The shop has too few events to train a model."""


@dataclass(frozen=True)
class UserItems:
    """`matrix` is users × items (CSR, float32) of summed event weights."""

    matrix: sp.csr_matrix
    user_keys: list[str]
    item_ids: list[str]


@dataclass(frozen=True)
class TrainingReport:
    shop: str
    version: str
    users: int
    items: int
    events: int
    seconds: float
    manifest: Manifest | None = None


def build_user_items(interactions: Iterable[Interaction], weights: dict[EventKind, float]) -> UserItems:
    """Sum each shopper's event weights per product; rows and columns in first-seen order."""
    user_index: dict[str, int] = {}
    item_index: dict[str, int] = {}
    rows, cols, vals = [], [], []
    for event in interactions:
        weight = weights.get(event.kind, 0.0) * event.weight_factor
        if weight <= 0:
            continue
        rows.append(user_index.setdefault(event.user_key, len(user_index)))
        cols.append(item_index.setdefault(event.product_id, len(item_index)))
        vals.append(weight)
    matrix = sp.csr_matrix(
        (np.asarray(vals, dtype=np.float32), (np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64))),
        shape=(len(user_index), len(item_index)),
        dtype=np.float32,
    )
    matrix.sum_duplicates()
    return UserItems(matrix, list(user_index), list(item_index))


def confidence_matrix(user_items: sp.csr_matrix, alpha: float) -> sp.csr_matrix:
    """C = 1 + alpha·R on the stored entries (Hu, Koren & Volinsky), as implicit's solver expects."""
    confidence = user_items.copy()
    confidence.data = 1.0 + alpha * confidence.data
    return confidence


def fit_item_factors(user_items: sp.csr_matrix, config: TrainingConfig) -> np.ndarray:
    """Fit ALS on the confidence matrix and return float32 item factors [n_items, factors]."""
    from implicit.cpu.als import AlternatingLeastSquares

    with threadpool_limits(limits=1, user_api="blas"):  # implicit parallelises itself; BLAS threads fight it
        model = AlternatingLeastSquares(
            factors=config.factors,
            regularization=config.regularization,
            alpha=1.0,  # confidence is built explicitly above
            iterations=config.iterations,
            random_state=config.seed,
        )
        model.fit(confidence_matrix(user_items, config.alpha), show_progress=False)
    return np.asarray(model.item_factors, dtype=np.float32)


def train_shop(store: EventStore, shop: str, config: TrainingConfig, now: datetime | None = None,
               extra_metadata: dict | None = None, interactions: list[Interaction] | None = None) -> ModelArtifact:
    """Train on the shop's events (`interactions` when the caller has already read them)."""
    now = now or datetime.now(timezone.utc)
    interactions = store.interactions(shop) if interactions is None else interactions
    data = build_user_items(interactions, dict(config.event_weights))
    n_users, n_items = data.matrix.shape
    if n_users < 1 or n_items < 2:
        raise NotEnoughData(f"shop {shop} has {len(interactions)} events over {n_items} products; need at least 2 products")
    item_factors = fit_item_factors(data.matrix, config)
    popularity = np.asarray(data.matrix.sum(axis=0)).ravel()
    support = np.diff(data.matrix.tocsc().indptr)  # distinct shoppers per item
    together = copurchase_neighbors(interactions, {pid: i for i, pid in enumerate(data.item_ids)}, config.copurchase_k)
    metadata = {
        "version": now.strftime("%Y%m%dT%H%M%S%fZ"),
        "shop": shop,
        "trained_at": now.isoformat(),
        "algorithm": "als",
        "hyperparameters": {
            "factors": config.factors,
            "regularization": config.regularization,
            "alpha": config.alpha,
            "iterations": config.iterations,
            "seed": config.seed,
        },
        "event_weights": {kind.value: weight for kind, weight in config.event_weights.items()},
        "counts": {"users": n_users, "items": n_items, "events": len(interactions), "nonzeros": int(data.matrix.nnz),
                   "orders": int(len({e.order_id for e in interactions if e.order_id}))},
        **(extra_metadata or {}),
    }
    return ModelArtifact.build(data.item_ids, item_factors, popularity, config.regularization, config.alpha, metadata,
                               item_support=support, copurchase=together)


def train_and_publish(store: EventStore, model_store: ModelStore, shop: str, config: TrainingConfig) -> TrainingReport:
    started = time.perf_counter()
    artifact = train_shop(store, shop, config)
    manifest = model_store.publish(shop, artifact)
    counts = artifact.metadata["counts"]
    report = TrainingReport(shop, manifest.version, counts["users"], counts["items"], counts["events"],
                            round(time.perf_counter() - started, 3), manifest)
    log.info("trained %s: version %s, %d users, %d items, %d events in %.2fs",
             shop, report.version, report.users, report.items, report.events, report.seconds)
    return report

