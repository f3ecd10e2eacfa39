"""Frequently bought together: top-K co-purchase neighbours per item, computed at training time.

Only purchases in the same order count (views say "considered together", not "bought together").
Score of j for i: cosine over orders, shrunk toward zero for pairs seen rarely:

    score(i, j) = c_ij / sqrt(n_i · n_j) · c_ij / (c_ij + 1)

where c_ij is the number of orders holding both and n_i the orders holding i.
Computed with one sparse product and one sort over every pair, no Python loop per item.
Imports scipy: training only.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recommender.artifact import CoPurchaseLists


def copurchase_neighbors(orders: np.ndarray, items: np.ndarray, n_items: int, k: int = 20) -> CoPurchaseLists:
    """Each item's k best co-purchase neighbours, best first (ties by row), and the orders holding it.

    `orders[i]`, `items[i]`: one purchase line — an order's code (any non-negative integers naming
    orders) and the item's row in `range(n_items)`; a product bought twice in one order counts once.
    """
    orders = np.asarray(orders, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    if len(orders) == 0:
        return CoPurchaseLists.empty(n_items)
    order_ids, order_rows = np.unique(orders, return_inverse=True)
    orders_items = sp.csr_matrix((np.ones(len(items), dtype=np.float32), (order_rows.ravel(), items)),
                                 shape=(len(order_ids), n_items))
    orders_items.sum_duplicates()
    orders_items.data[:] = 1.0  # in the order or not
    together = (orders_items.T @ orders_items).tocsr()  # items × items, diagonal = orders holding the item
    per_item = together.diagonal().astype(np.float64)
    rows = np.repeat(np.arange(n_items, dtype=np.int64), np.diff(together.indptr))
    cols = together.indices.astype(np.int64)
    off_diagonal = cols != rows
    rows, cols = rows[off_diagonal], cols[off_diagonal]
    pair_counts = together.data[off_diagonal].astype(np.float64)
    score = pair_counts / np.sqrt(per_item[rows] * per_item[cols]) * pair_counts / (pair_counts + 1.0)
    best = np.lexsort((cols, -score, rows))  # by item, then best score first, ties by row
    rows, cols, score = rows[best], cols[best], score[best]
    per_row = np.bincount(rows, minlength=n_items)
    starts = np.cumsum(per_row) - per_row
    keep = np.arange(len(rows)) - starts[rows] < k
    return CoPurchaseLists.from_counts(np.minimum(per_row, k), cols[keep], score[keep], per_item.astype(np.int32))
