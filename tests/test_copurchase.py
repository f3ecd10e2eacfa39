"""Co-purchase lists: hand-computed scores on planted orders, and the vectorized computation against
the per-item loop it replaced (kept here as the reference)."""

from __future__ import annotations

from datetime import datetime, timezone
from math import sqrt

import numpy as np
import pytest
import scipy.sparse as sp

from recommender.copurchase import copurchase_neighbors
from recommender.events import EventKind
from recommender.store import Interaction

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def reference_copurchase(interactions, item_index: dict[str, int], k: int):
    """The per-item loop training used before (counts, neighbours, scores, orders per item): the reference."""
    n_items = len(item_index)
    order_index: dict[str, int] = {}
    pairs: set[tuple[int, int]] = set()
    for event in interactions:
        if event.kind is not EventKind.PURCHASE or not event.order_id or event.product_id not in item_index:
            continue
        pairs.add((order_index.setdefault(event.order_id, len(order_index)), item_index[event.product_id]))
    counts = np.zeros(n_items, dtype=np.int64)
    if not pairs:
        return counts, np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(n_items, np.int32)
    rows, cols = zip(*pairs)
    orders_items = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(order_index), n_items))
    together = (orders_items.T @ orders_items).tocsr()
    per_item = together.diagonal().astype(np.float64)
    kept_neighbors, kept_scores = [np.zeros(0, np.int32)], [np.zeros(0)]
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
    return (counts, np.concatenate(kept_neighbors).astype(np.int32), np.concatenate(kept_scores).astype(np.float32),
            per_item.astype(np.int32))


def lists(together, n_items):
    return [(together.neighbors[together.indptr[i]:together.indptr[i + 1]].tolist(),
             together.scores[together.indptr[i]:together.indptr[i + 1]].tolist()) for i in range(n_items)]


def test_scores_match_the_formula_worked_by_hand():
    # Items A=0, B=1, C=2, D=3, E=4. Orders: 1 {A,B}, 2 {A,B,C, B again}, 3 {A,C}, 4 {B}, 5 {D}.
    lines = [(1, 0), (1, 1), (2, 0), (2, 1), (2, 2), (2, 1), (3, 0), (3, 2), (4, 1), (5, 3)]
    orders, items = map(np.array, zip(*lines))

    together = copurchase_neighbors(orders, items, 5, k=20)

    # n_A = 3, n_B = 3 (the repeated line counts once), n_C = 2; c_AB = 2, c_AC = 2, c_BC = 1.
    ab, ac, bc = 2 / sqrt(3 * 3) * 2 / 3, 2 / sqrt(3 * 2) * 2 / 3, 1 / sqrt(3 * 2) * 1 / 2
    expected = [([2, 1], [ac, ab]), ([0, 2], [ab, bc]), ([0, 1], [ac, bc]), ([], []), ([], [])]
    for (got_n, got_s), (want_n, want_s) in zip(lists(together, 5), expected):
        assert got_n == want_n
        assert got_s == pytest.approx(want_s, rel=1e-6)
    assert together.orders.tolist() == [3, 3, 2, 1, 0]
    assert together.scores.dtype == np.float32 and together.neighbors.dtype == np.int32


def test_ties_go_to_the_lower_row_and_k_cuts_each_list():
    # Item 0 is bought once with each of 3, 1 and 2: three equal scores.
    orders, items = np.array([1, 1, 2, 2, 3, 3]), np.array([0, 3, 0, 1, 0, 2])

    together = copurchase_neighbors(orders, items, 4, k=2)

    assert lists(together, 4)[0][0] == [1, 2]
    assert np.diff(together.indptr).tolist() == [2, 1, 1, 1]


def test_no_purchases_give_empty_lists():
    together = copurchase_neighbors(np.zeros(0, np.int64), np.zeros(0, np.int64), 3)
    assert together.indptr.tolist() == [0, 0, 0, 0] and together.orders.tolist() == [0, 0, 0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_the_per_item_loop_on_random_orders(seed):
    rng = np.random.default_rng(seed)
    n_items, k = 60, 5
    events = []
    for n in range(3000):
        order = f"o{int(rng.integers(0, 700))}" if rng.random() < 0.8 else (None if n % 2 else "")
        kind = EventKind.PURCHASE if rng.random() < 0.9 else EventKind.VIEW
        item = int(min(rng.zipf(1.3), n_items + 5)) - 1  # popular items share many orders: ties and long lists
        events.append(Interaction("c:1", f"p{item}", kind, T0, order))
    item_index = {f"p{i}": i for i in range(n_items)}  # p60… are not in the model: left out
    want = reference_copurchase(events, item_index, k)
    order_codes: dict[str, int] = {}
    lines = [(order_codes.setdefault(e.order_id, len(order_codes)), item_index[e.product_id]) for e in events
             if e.kind is EventKind.PURCHASE and e.order_id and e.product_id in item_index]
    orders, items = map(np.array, zip(*lines))

    got = copurchase_neighbors(orders, items, n_items, k)

    np.testing.assert_array_equal(np.diff(got.indptr), want[0])
    np.testing.assert_array_equal(got.neighbors, want[1])
    np.testing.assert_array_equal(got.scores, want[2])
    np.testing.assert_array_equal(got.orders, want[3])
    assert want[0].sum() > n_items  # the lists are not trivial
