"""Frequently bought together: top-K co-purchase neighbours per item, computed at training time.

Only purchases in the same order count (views say "considered together", not "bought together").
Score of j for i: cosine over orders, shrunk toward zero for pairs seen rarely:

    score(i, j) = c_ij / sqrt(n_i · n_j) · c_ij / (c_ij + 1)

where c_ij is the number of orders holding both and n_i the orders holding i.
Imports scipy: training only.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import scipy.sparse as sp

from recommender.artifact import CoPurchaseLists
from recommender.events import EventKind
from recommender.store import Interaction


def copurchase_neighbors(interactions: Iterable[Interaction], item_index: dict[str, int], k: int = 20) -> CoPurchaseLists:
    """Each item's k best co-purchase neighbours, best first (ties by row), and the orders holding it."""
    n_items = len(item_index)
    order_index: dict[str, int] = {}
    pairs: set[tuple[int, int]] = set()
    for event in interactions:
        if event.kind is not EventKind.PURCHASE or not event.order_id or event.product_id not in item_index:
            continue
        pairs.add((order_index.setdefault(event.order_id, len(order_index)), item_index[event.product_id]))
    if not pairs:
        return CoPurchaseLists.empty(n_items)
    rows, cols = zip(*pairs)
    orders_items = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                                 shape=(len(order_index), n_items))
    together = (orders_items.T @ orders_items).tocsr()  # items × items, diagonal = orders holding the item
    per_item = together.diagonal().astype(np.float64)
    counts = np.zeros(n_items, dtype=np.int64)
    kept_neighbors, kept_scores = [], []
    for i in range(n_items):
        start, end = together.indptr[i], together.indptr[i + 1]
        cols_i, pair_counts = together.indices[start:end], together.data[start:end].astype(np.float64)
        keep = cols_i != i
        cols_i, pair_counts = cols_i[keep], pair_counts[keep]
        if len(cols_i) == 0:
            continue
        score = pair_counts / np.sqrt(per_item[i] * per_item[cols_i]) * pair_counts / (pair_counts + 1.0)
        top = np.lexsort((cols_i, -score))[:k]
        counts[i] = len(top)
        kept_neighbors.append(cols_i[top])
        kept_scores.append(score[top])
    return CoPurchaseLists.from_counts(counts, np.concatenate(kept_neighbors), np.concatenate(kept_scores),
                                       per_item.astype(np.int32))
