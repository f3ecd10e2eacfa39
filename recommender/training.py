"""Training: stored events → user×item confidence matrix → implicit ALS → artifact.

The events are read as integer-coded columns (`EventStore.interaction_columns`), so the matrix,
the popularity and the co-purchase lists are built with numpy over whole arrays; the old path over
`Interaction` rows (`build_user_items`) stays for callers that hold rows, and builds the same matrix.
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
from recommender.event_columns import EVENT_KINDS, InteractionColumns, first_seen_codes
from recommender.events import EventKind
from recommender.model_store import Manifest, ModelStore
from recommender.settings import TrainingConfig
from recommender.store import EventStore, Interaction

log = logging.getLogger(__name__)


class NotEnoughData(RecommenderError):
    """The shop has too few events to train a model."""


@dataclass(frozen=True)
class UserItems:
    """`matrix` is users × items (CSR, float32) of summed event weights.

    `item_of_product` (from columns only): the matrix column of each product code of the columns,
    −1 for a product none of whose events weigh anything.
    """

    matrix: sp.csr_matrix
    user_keys: list[str]
    item_ids: list[str]
    item_of_product: np.ndarray | None = None


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


def user_items_from_columns(columns: InteractionColumns, weights: dict[EventKind, float]) -> UserItems:
    """`build_user_items` over columns: the same matrix (weights summed in float32 in arrival order,
    rows and columns in first-seen order among the events that weigh something), with numpy."""
    kind_weight = np.array([weights.get(kind, 0.0) for kind in EVENT_KINDS], dtype=np.float64)
    weight = kind_weight[columns.kinds] * columns.weight_factors  # float64, as the row-by-row path multiplies
    users, items = columns.users, columns.items
    user_keys, item_ids = columns.user_keys, columns.product_ids
    item_of_product = np.arange(len(item_ids), dtype=np.int32)
    counted = weight > 0
    if not counted.all():  # renumber: shoppers and products with no counted event drop out
        weight = weight[counted]
        users, first = first_seen_codes(users[counted])
        user_keys = [user_keys[u] for u in columns.users[counted][first].tolist()]
        kept_items = columns.items[counted]
        items, first = first_seen_codes(kept_items)
        old = kept_items[first]
        item_ids = [item_ids[i] for i in old.tolist()]
        item_of_product = np.full(len(columns.product_ids), -1, dtype=np.int32)
        item_of_product[old] = np.arange(len(old), dtype=np.int32)
    matrix = sp.csr_matrix((weight.astype(np.float32), (users, items)), shape=(len(user_keys), len(item_ids)),
                           dtype=np.float32)
    matrix.sum_duplicates()
    return UserItems(matrix, list(user_keys), list(item_ids), item_of_product)


def purchase_lines(columns: InteractionColumns, data: UserItems) -> tuple[np.ndarray, np.ndarray]:
    """(order code, matrix column) of every purchase with an order whose product is in the matrix."""
    item = data.item_of_product[columns.items]
    line = (columns.kinds == EVENT_KINDS.index(EventKind.PURCHASE)) & (columns.orders >= 0) & (item >= 0)
    return columns.orders[line], item[line]


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


@dataclass(frozen=True)
class ShopMatrix:
    """What training takes of a shop's events, without the events: a big shop's columns (320 MiB at 5M events) need
    not be held while it trains. The shoppers' keys are not kept: the artifact holds none."""

    matrix: sp.csr_matrix  # users × items, summed event weights (UserItems.matrix)
    item_ids: list[str]
    purchase_orders: np.ndarray  # purchase_lines: the order code and matrix column of each purchase with an order
    purchase_items: np.ndarray
    events: int
    orders: int


def shop_matrix(columns: InteractionColumns, config: TrainingConfig, shop: str) -> ShopMatrix:
    """The shop's ShopMatrix; NotEnoughData when there is nothing to train on."""
    data = user_items_from_columns(columns, dict(config.event_weights))
    n_users, n_items = data.matrix.shape
    if n_users < 1 or n_items < 2:
        raise NotEnoughData(f"shop {shop} has {len(columns)} events over {n_items} products; need at least 2 products")
    orders, items = purchase_lines(columns, data)
    return ShopMatrix(data.matrix, data.item_ids, orders, items, len(columns), len(columns.order_ids))


def train_shop(store: EventStore, shop: str, config: TrainingConfig, now: datetime | None = None,
               extra_metadata: dict | None = None, interactions: list[Interaction] | None = None,
               columns: InteractionColumns | None = None) -> ModelArtifact:
    """Train on the shop's events (`columns` or `interactions` when the caller has already read them)."""
    if columns is None:
        columns = (store.interaction_columns(shop) if interactions is None
                   else InteractionColumns.from_interactions(interactions, times=False))
    return train_shop_matrix(shop, shop_matrix(columns, config, shop), config, now, extra_metadata)


def train_shop_matrix(shop: str, data: ShopMatrix, config: TrainingConfig, now: datetime | None = None,
                      extra_metadata: dict | None = None) -> ModelArtifact:
    """The shop's model from its ShopMatrix."""
    now = now or datetime.now(timezone.utc)
    n_users, n_items = data.matrix.shape
    item_factors = fit_item_factors(data.matrix, config)
    popularity = np.asarray(data.matrix.sum(axis=0)).ravel()
    support = np.bincount(data.matrix.indices, minlength=n_items)  # distinct shoppers per item
    together = copurchase_neighbors(data.purchase_orders, data.purchase_items, n_items, config.copurchase_k)
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
        "counts": {"users": n_users, "items": n_items, "events": data.events, "nonzeros": int(data.matrix.nnz),
                   "orders": data.orders},
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

