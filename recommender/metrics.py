"""Ranking metrics for top-K lists, binary relevance, pure numpy.

Shapes used throughout:
    recommended  int[n_users, L]   item indices, best first; -1 pads a list that has fewer than L items
    relevant     one int array per user: the user's held-out items (order and duplicates ignored)
    hits         bool[n_users, L]  hits[u, i] is True when recommended[u, i] is one of u's relevant items

Definitions (K is the cut-off; a list shorter than K counts its missing places as misses):
    Precision@K = hits in the top K / K
    Recall@K    = hits in the top K / |relevant|
    NDCG@K      = DCG@K / IDCG@K, DCG@K = sum over ranks r = 1..K of hit_r / log2(r + 1),
                  IDCG@K = the DCG of min(|relevant|, K) hits in the first places
    MAP@K       = mean over users of AP@K = (sum over ranks r with a hit of Precision@r) / min(|relevant|, K)
    HitRate@K   = 1 when at least one of the top K is relevant, else 0
    Coverage@K  = distinct items in all users' top K / catalog size
Per-user values are averaged over the users that have at least one relevant item; NDCG also gets
its standard error over users (sample standard deviation / sqrt(users)), to tell a difference from noise.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

METRICS = ("precision", "recall", "ndcg", "map", "hit_rate")


def hit_matrix(recommended: np.ndarray, relevant: Sequence[np.ndarray]) -> np.ndarray:
    """bool[n_users, L]: which recommended places hold one of the user's relevant items."""
    recommended = np.asarray(recommended, dtype=np.int64)
    if recommended.ndim != 2:
        raise ValueError(f"recommended must be int[n_users, L], got shape {recommended.shape}")
    n_users = recommended.shape[0]
    if len(relevant) != n_users:
        raise ValueError(f"relevant has {len(relevant)} users, recommended has {n_users}")
    sets = [np.unique(np.asarray(r, dtype=np.int64)) for r in relevant]
    lengths = np.fromiter((len(s) for s in sets), dtype=np.int64, count=n_users)
    items = np.concatenate(sets) if n_users else np.empty(0, dtype=np.int64)
    if (items < 0).any():
        raise ValueError("relevant item indices must be >= 0")
    # One integer key per (user, item) pair, so membership is one vectorised isin.
    stride = int(max(items.max(initial=-1), recommended.max(initial=-1))) + 1
    relevant_keys = np.repeat(np.arange(n_users, dtype=np.int64), lengths) * stride + items
    recommended_keys = np.arange(n_users, dtype=np.int64)[:, None] * stride + recommended
    return np.isin(recommended_keys, relevant_keys) & (recommended >= 0)


def relevant_counts(relevant: Sequence[np.ndarray]) -> np.ndarray:
    """int[n_users]: distinct relevant items per user."""
    return np.fromiter((len(np.unique(np.asarray(r))) for r in relevant), dtype=np.int64, count=len(relevant))


def _top(hits: np.ndarray, k: int) -> np.ndarray:
    """The first k places of each list as float[n_users, k]; places past the list's end are misses."""
    if k < 1:
        raise ValueError(f"K must be >= 1, got {k}")
    top = np.zeros((hits.shape[0], k), dtype=np.float64)
    width = min(k, hits.shape[1])
    top[:, :width] = hits[:, :width]
    return top


def _check_counts(n_relevant: np.ndarray, n_users: int) -> np.ndarray:
    n_relevant = np.asarray(n_relevant, dtype=np.float64)
    if n_relevant.shape != (n_users,):
        raise ValueError(f"n_relevant must be float[{n_users}], got shape {n_relevant.shape}")
    if (n_relevant < 1).any():
        raise ValueError("every user needs at least one relevant item (leave the others out)")
    return n_relevant


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def precision_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """float[n_users]: hits in the top k / k."""
    return _top(hits, k).sum(axis=1) / k


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """float[n_users]: hits in the top k / number of relevant items."""
    return _top(hits, k).sum(axis=1) / _check_counts(n_relevant, hits.shape[0])


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """float[n_users]: binary-relevance NDCG with a log2 discount; the ideal list has min(|relevant|, k) hits."""
    n_relevant = _check_counts(n_relevant, hits.shape[0])
    discounts = _discounts(k)
    dcg = _top(hits, k) @ discounts
    ideal = np.cumsum(discounts)[np.minimum(n_relevant, k).astype(np.int64) - 1]
    return dcg / ideal


def average_precision_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """float[n_users]: sum of Precision@r over the ranks r ≤ k that hold a hit, / min(|relevant|, k)."""
    n_relevant = _check_counts(n_relevant, hits.shape[0])
    top = _top(hits, k)
    precision_at_rank = np.cumsum(top, axis=1) / np.arange(1, k + 1, dtype=np.float64)
    return (precision_at_rank * top).sum(axis=1) / np.minimum(n_relevant, k)


def hit_rate_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """float[n_users]: 1.0 when at least one of the top k is relevant."""
    return (_top(hits, k).sum(axis=1) > 0).astype(np.float64)


def catalog_coverage(recommended: np.ndarray, n_items: int, k: int) -> float:
    """Share of the catalog that appears in at least one user's top k (padding ignored)."""
    if n_items < 1:
        raise ValueError(f"the catalog needs at least one item, got n_items={n_items}")
    shown = np.asarray(recommended)[:, :k]
    return len(np.unique(shown[shown >= 0])) / n_items


def ranking_metrics(recommended: np.ndarray, relevant: Sequence[np.ndarray], ks: Sequence[int],
                    n_items: int) -> dict[str, float]:
    """Mean of every metric at every K, e.g. {"ndcg@10": 0.41, "ndcg@10_se": 0.006, ..., "users": 940}.

    Users without relevant items are left out of the means (and of coverage).
    """
    counts = relevant_counts(relevant)
    keep = counts > 0
    recommended = np.asarray(recommended, dtype=np.int64)[keep]
    relevant = [r for r, k in zip(relevant, keep) if k]
    counts = counts[keep]
    result: dict[str, float] = {"users": int(keep.sum())}
    if not keep.any():
        for k in ks:
            result.update({f"{name}@{k}": float("nan") for name in (*METRICS, "coverage")})
            result[f"ndcg@{k}_se"] = float("nan")
        return result
    hits = hit_matrix(recommended, relevant)
    for k in ks:
        result[f"precision@{k}"] = float(precision_at_k(hits, k).mean())
        result[f"recall@{k}"] = float(recall_at_k(hits, counts, k).mean())
        ndcg = ndcg_at_k(hits, counts, k)
        result[f"ndcg@{k}"] = float(ndcg.mean())
        result[f"ndcg@{k}_se"] = float(ndcg.std(ddof=1) / np.sqrt(len(ndcg))) if len(ndcg) > 1 else float("nan")
        result[f"map@{k}"] = float(average_precision_at_k(hits, counts, k).mean())
        result[f"hit_rate@{k}"] = float(hit_rate_at_k(hits, k).mean())
        result[f"coverage@{k}"] = catalog_coverage(recommended, n_items, k)
    return result
