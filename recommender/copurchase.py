"""Frequently bought together: top-K co-purchase neighbours per item, computed at training time.

Only purchases in the same order count (views say "considered together", not "bought together").
Score of j for i: cosine over orders, shrunk toward zero for pairs seen rarely:

    score(i, j) = c_ij / sqrt(n_i · n_j) · c_ij / (c_ij + 1)

where c_ij is the number of orders holding both and n_i the orders holding i.
Imports scipy: training only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import scipy.sparse as sp

from recommender.events import EventKind
from recommender.store import Interaction


@dataclass(frozen=True)
class CoPurchase:
    """neighbors: int32[n_items, k] (−1 pads); scores: float32[n_items, k]; orders: int32[n_items]."""

    neighbors: np.ndarray
    scores: np.ndarray
    orders: np.ndarray


def copurchase_neighbors(interactions: Iterable[Interaction], item_index: dict[str, int], k: int = 20) -> CoPurchase:
    n_items = len(item_index)
    order_index: dict[str, int] = {}
    pairs: set[tuple[int, int]] = set()
    for event in interactions:
        if event.kind is not EventKind.PURCHASE or not event.order_id or event.product_id not in item_index:
            continue
        pairs.add((order_index.setdefault(event.order_id, len(order_index)), item_index[event.product_id]))
    neighbors = np.full((n_items, k), -1, dtype=np.int32)
    scores = np.zeros((n_items, k), dtype=np.float32)
    if not pairs:
        return CoPurchase(neighbors, scores, np.zeros(n_items, dtype=np.int32))
    rows, cols = zip(*pairs)
    orders_items = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                                 shape=(len(order_index), n_items))
    together = (orders_items.T @ orders_items).tocsr()  # items × items, diagonal = orders holding the item
    per_item = together.diagonal().astype(np.float64)
    for i in range(n_items):
        start, end = together.indptr[i], together.indptr[i + 1]
        cols_i, counts = together.indices[start:end], together.data[start:end].astype(np.float64)
        keep = cols_i != i
        cols_i, counts = cols_i[keep], counts[keep]
        if len(cols_i) == 0:
            continue
        score = counts / np.sqrt(per_item[i] * per_item[cols_i]) * counts / (counts + 1.0)
        top = np.lexsort((cols_i, -score))[:k]
        neighbors[i, : len(top)] = cols_i[top]
        scores[i, : len(top)] = score[top]
    return CoPurchase(neighbors, scores, per_item.astype(np.int32))
