"""Every ranking metric against values worked out by hand, edge cases included."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recommender.metrics import (
    average_precision_at_k, catalog_coverage, hit_matrix, hit_rate_at_k, ndcg_at_k, precision_at_k,
    ranking_metrics, recall_at_k,
)

# One user, relevant {1, 2, 9}; the list hits at ranks 2 and 4.
RECOMMENDED = np.array([[3, 1, 7, 2]])
RELEVANT = [np.array([1, 2, 9])]
N_RELEVANT = np.array([3])


def hits() -> np.ndarray:
    return hit_matrix(RECOMMENDED, RELEVANT)


def test_hit_matrix_marks_the_places_that_hold_a_relevant_item():
    assert hits().tolist() == [[False, True, False, True]]


def test_precision_is_hits_over_k():
    assert precision_at_k(hits(), 4)[0] == pytest.approx(2 / 4)
    assert precision_at_k(hits(), 2)[0] == pytest.approx(1 / 2)
    assert precision_at_k(hits(), 1)[0] == 0.0


def test_recall_is_hits_over_the_users_relevant_items():
    assert recall_at_k(hits(), N_RELEVANT, 4)[0] == pytest.approx(2 / 3)
    assert recall_at_k(hits(), N_RELEVANT, 2)[0] == pytest.approx(1 / 3)


def test_ndcg_discounts_by_log2_of_rank_plus_one_against_the_ideal_list():
    dcg_4 = 1 / math.log2(3) + 1 / math.log2(5)
    ideal_4 = 1 + 1 / math.log2(3) + 1 / math.log2(4)  # min(3 relevant, K=4) = 3 hits at the top
    assert ndcg_at_k(hits(), N_RELEVANT, 4)[0] == pytest.approx(dcg_4 / ideal_4)
    ideal_2 = 1 + 1 / math.log2(3)  # min(3, 2) = 2
    assert ndcg_at_k(hits(), N_RELEVANT, 2)[0] == pytest.approx((1 / math.log2(3)) / ideal_2)


def test_average_precision_sums_precision_at_each_hit_over_min_relevant_k():
    assert average_precision_at_k(hits(), N_RELEVANT, 4)[0] == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert average_precision_at_k(hits(), N_RELEVANT, 2)[0] == pytest.approx((1 / 2) / 2)


def test_hit_rate_is_one_when_any_of_the_top_k_is_relevant():
    assert hit_rate_at_k(hits(), 4)[0] == 1.0
    assert hit_rate_at_k(hits(), 1)[0] == 0.0


def test_fewer_relevant_items_than_k_can_still_score_one():
    h = hit_matrix(np.array([[5, 0, 1]]), [np.array([5])])
    n = np.array([1])
    assert precision_at_k(h, 3)[0] == pytest.approx(1 / 3)
    assert recall_at_k(h, n, 3)[0] == 1.0
    assert ndcg_at_k(h, n, 3)[0] == 1.0
    assert average_precision_at_k(h, n, 3)[0] == 1.0


def test_no_hits_scores_zero_everywhere():
    h = hit_matrix(np.array([[0, 1, 2]]), [np.array([7, 8])])
    n = np.array([2])
    for value in (precision_at_k(h, 3), recall_at_k(h, n, 3), ndcg_at_k(h, n, 3),
                  average_precision_at_k(h, n, 3), hit_rate_at_k(h, 3)):
        assert value[0] == 0.0


def test_k_larger_than_the_list_counts_missing_places_as_misses():
    h = hit_matrix(np.array([[4, 2]]), [np.array([2, 8])])  # two places, K = 5
    n = np.array([2])
    assert precision_at_k(h, 5)[0] == pytest.approx(1 / 5)
    assert recall_at_k(h, n, 5)[0] == pytest.approx(1 / 2)
    assert ndcg_at_k(h, n, 5)[0] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert average_precision_at_k(h, n, 5)[0] == pytest.approx((1 / 2) / 2)
    assert hit_rate_at_k(h, 5)[0] == 1.0


def test_padding_never_counts_as_a_hit_even_where_keys_would_collide():
    # -1 padding of user 1 must not match item `stride - 1` of user 0.
    h = hit_matrix(np.array([[0, 9], [-1, -1]]), [np.array([9]), np.array([3])])
    assert h.tolist() == [[False, True], [False, False]]


def test_duplicate_relevant_items_count_once():
    h = hit_matrix(np.array([[1, 2]]), [np.array([1, 1, 1])])
    metrics = ranking_metrics(np.array([[1, 2]]), [np.array([1, 1, 1])], [2], n_items=3)
    assert h.tolist() == [[True, False]]
    assert metrics["recall@2"] == 1.0


def test_catalog_coverage_counts_distinct_items_in_the_top_k_over_the_catalog():
    recommended = np.array([[0, 1, -1], [1, 2, -1]])
    assert catalog_coverage(recommended, 10, 1) == pytest.approx(2 / 10)
    assert catalog_coverage(recommended, 10, 3) == pytest.approx(3 / 10)


def test_ranking_metrics_averages_over_users_with_relevant_items_at_every_k():
    recommended = np.array([[3, 1, 7, 2], [0, 1, 2, 3], [5, 6, 7, 8]])
    relevant = [np.array([1, 2, 9]), np.array([], dtype=np.int64), np.array([8])]  # user 1 has nothing held out

    metrics = ranking_metrics(recommended, relevant, [2, 4], n_items=10)

    assert metrics["users"] == 2
    assert metrics["precision@4"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert metrics["recall@4"] == pytest.approx((2 / 3 + 1) / 2)
    ndcg_0 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3) + 1 / math.log2(4))
    ndcg_2 = (1 / math.log2(5)) / 1
    assert metrics["ndcg@4"] == pytest.approx((ndcg_0 + ndcg_2) / 2)
    assert metrics["map@4"] == pytest.approx(((1 / 2 + 2 / 4) / 3 + (1 / 4) / 1) / 2)
    assert metrics["ndcg@4_se"] == pytest.approx(abs(ndcg_0 - ndcg_2) / 2)  # two users: sd = |a-b|/√2, / √2
    assert metrics["hit_rate@2"] == pytest.approx(1 / 2)
    assert metrics["coverage@2"] == pytest.approx(4 / 10)  # {3, 1} and {5, 6}: user 1 is not scored


def test_nobody_to_score_gives_nan_not_zero():
    metrics = ranking_metrics(np.array([[0, 1]]), [np.array([], dtype=np.int64)], [2], n_items=2)
    assert metrics["users"] == 0 and math.isnan(metrics["ndcg@2"])


def test_invalid_input_is_refused():
    with pytest.raises(ValueError, match="at least one relevant"):
        recall_at_k(hits(), np.array([0]), 2)
    with pytest.raises(ValueError, match="K must be >= 1"):
        precision_at_k(hits(), 0)
    with pytest.raises(ValueError, match="users"):
        hit_matrix(RECOMMENDED, [np.array([1]), np.array([2])])
