"""The offline models' rankings (what the training job's quality gate and `evaluate` score): each user's best k items,
ties to the lower index, excluded and unknown items never shown, checked against a ranking written out by hand or
sorted the slow way, item by item."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recommender import offline_models
from recommender.offline_data import Interactions, SignalConfig, build_signal_matrix
from recommender.offline_models import (
    FitContext, PopularityModel, RankingModel, TrendingModel, shared_batches, top_k,
)
from recommender.settings import TrainingConfig


def slow_ranking(scores: np.ndarray, k: int) -> np.ndarray:
    """Each row's columns sorted by (score descending, column), the first k, -inf places as -1, -1 padded."""
    result = np.full((scores.shape[0], k), -1, dtype=np.int64)
    for row, values in enumerate(scores):
        best = sorted(range(len(values)), key=lambda column: (-values[column], column))[:k]
        for place, column in enumerate(best):
            result[row, place] = -1 if np.isneginf(values[column]) else column
    return result


def test_top_k_by_hand_ties_go_to_the_lower_column_and_minus_infinity_is_never_shown():
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 3.0],
                       [-np.inf, 5.0, -np.inf, -np.inf, 0.0]])

    assert top_k(scores, 2).tolist() == [[1, 2], [1, 4]]
    assert top_k(scores, 4).tolist() == [[1, 2, 4, 3], [1, 4, -1, -1]]
    assert top_k(scores, 7).tolist() == [[1, 2, 4, 3, 0, -1, -1], [1, 4, -1, -1, -1, -1, -1]]


def test_top_k_breaks_a_tie_across_a_whole_row_by_column():
    """5,000 equal scores and three better ones: the best three, then the first columns. A partition of the whole row
    keeps some k of the tied columns, not the first ones."""
    scores = np.zeros((2, 5_000))
    scores[0, [4_000, 17, 2_500]] = [2.0, 1.0, 2.0]

    assert top_k(scores, 6).tolist() == [[2_500, 4_000, 17, 0, 1, 2], [0, 1, 2, 3, 4, 5]]


def test_top_k_never_shows_a_nan_score_nor_lets_one_hide_a_better_score():
    scores = np.arange(128, dtype=float)[None, :].repeat(2, axis=0)
    scores[0, [0, 2, 4]] = np.nan  # in three of the row's blocks
    scores[1, :] = np.nan
    scores[1, 3] = 1.0

    assert top_k(scores, 3).tolist() == [[127, 126, 125], [3, -1, -1]]


def test_top_k_matches_the_slow_ranking_on_rows_with_ties_and_excluded_places():
    rng = np.random.default_rng(7)
    for trial in range(120):
        n, m, k = int(rng.integers(1, 5)), int(rng.integers(1, 300)), int(rng.integers(1, 40))
        scores = (rng.integers(0, 4, (n, m)).astype(float) if trial % 2 else rng.standard_normal((n, m)))
        scores[rng.random((n, m)) < 0.3] = -np.inf

        assert top_k(scores, k).tolist() == slow_ranking(scores, k).tolist(), (n, m, k)


def shop_events(n_users: int = 60, n_items: int = 300, seed: int = 3) -> Interactions:
    """Popularity with many ties (whole numbers of events), every user with a history of their own."""
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for user in range(n_users):
        for item in rng.choice(n_items, size=int(rng.integers(1, 40)), replace=False, p=None):
            users.append(f"u{user}")
            items.append(f"i{item}")
            times.append(1_790_000_000 + float(rng.integers(0, 30)) * 86_400)
    return Interactions.from_columns(users, items, timestamps=times)


def expected_for_everyone(model: RankingModel, scores: np.ndarray, exclude: sp.csr_matrix, k: int) -> np.ndarray:
    """What a model giving everyone `scores` must return: per user, `scores` with their excluded items and the items
    no one trained on at -inf, ranked the slow way."""
    rows = np.tile(scores.astype(float), (exclude.shape[0], 1))
    rows[:, ~model.known_items] = -np.inf
    seen = exclude.tocoo()
    rows[seen.row, seen.col] = -np.inf
    return slow_ranking(rows, k)


@pytest.mark.parametrize("make", [PopularityModel, lambda: TrendingModel(half_life_days=3.0)])
@pytest.mark.parametrize("k", [1, 10, 400])
def test_best_sellers_and_trending_rank_each_user_as_the_slow_way_does(make, k):
    data = shop_events()
    signal = SignalConfig()
    user_items = build_signal_matrix(data, signal)
    exclude = data.binary_matrix()
    model = make()
    model.fit(user_items, FitContext(data, signal, 1_790_000_000 + 40 * 86_400))
    users = np.arange(data.n_users)[::-1]  # in any order

    ranked = model.recommend(users, user_items, k, exclude=exclude)

    scores = model.popularity if isinstance(model, PopularityModel) else model.trend
    assert ranked.tolist() == expected_for_everyone(model, scores, exclude[users], k).tolist()
    assert (ranked[:, 0] >= 0).all()  # everyone has something left to be shown


def test_shared_batches_by_hand():
    """Consecutive users, at most `batch_size` of them, and at most SCORES_PER_BATCH places (users × the widest)
    unless one user alone needs more."""
    widths = np.array([10, 10, 10, 40, 10, 10, 300, 10])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(offline_models, "SCORES_PER_BATCH", 100)
        assert shared_batches(widths, batch_size=8) == [(0, 3, 10), (3, 5, 40), (5, 6, 10), (6, 7, 300), (7, 8, 10)]
        assert shared_batches(widths, batch_size=2) == [(0, 2, 10), (2, 4, 40), (4, 6, 10), (6, 7, 300), (7, 8, 10)]
    assert shared_batches(widths, batch_size=1024) == [(0, 8, 300)]
    assert shared_batches(np.array([], dtype=np.int64), batch_size=4) == []


def test_best_sellers_in_small_batches_with_a_user_who_saw_most_of_the_catalogue(monkeypatch):
    data = shop_events(n_users=30, n_items=200)
    signal = SignalConfig()
    user_items = build_signal_matrix(data, signal)
    seen = data.binary_matrix().tolil()
    seen[5, :180] = 1  # user 5 has seen 180 of 200 items
    exclude = seen.tocsr()
    model = PopularityModel().fit(user_items)
    users = np.arange(data.n_users)
    expected = expected_for_everyone(model, model.popularity, exclude, 10)

    monkeypatch.setattr(offline_models, "SCORES_PER_BATCH", 250)
    ranked = model.recommend(users, user_items, 10, exclude=exclude, batch_size=8)

    assert ranked.tolist() == expected.tolist()
    assert set(ranked[5].tolist()) <= set(range(180, 200)) | {-1}


class FixedScores(RankingModel):
    """Every user gets the model's own float32 scores, handed out read-only as a view (not a copy)."""

    name = "fixed"

    def __init__(self, scores: np.ndarray):
        super().__init__()
        self.scores = scores

    def _fit(self, user_items, context):
        pass

    def score(self, users, user_items):
        return np.broadcast_to(self.scores, (len(users), len(self.scores)))


def test_a_model_handing_out_its_own_read_only_float32_scores_is_ranked_and_left_unchanged():
    user_items = sp.csr_matrix(np.array([[1, 0, 0, 1, 0], [0, 1, 0, 0, 1]], dtype=np.float32))
    model = FixedScores(np.array([0.5, 2.0, 1.0, 3.0, 1.0], dtype=np.float32)).fit(user_items)  # item 2 unknown

    ranked = model.recommend(np.array([0, 1]), user_items, 3, exclude=user_items)

    assert ranked.tolist() == [[1, 4, -1], [3, 0, -1]]
    assert model.scores.tolist() == [0.5, 2.0, 1.0, 3.0, 1.0]


def test_als_folds_each_user_in_as_worked_out_by_hand_and_an_empty_row_stays_zero():
    # One factor: x = (Σ y² + λ + Σₖ (cₖ − 1) yₖ²)⁻¹ Σₖ cₖ yₖ, cₖ = 1 + alpha·wₖ over the user's items k.
    model = offline_models.ALSModel(TrainingConfig(factors=1, regularization=0.5, alpha=1.0))
    model.item_factors = np.array([[1.0], [2.0], [3.0]])
    model.regularized_gramian = np.array([[14.0 + 0.5]])  # 1 + 4 + 9, + λ
    rows = sp.csr_matrix(np.array([[0.0, 1.0, 0.0],    # c = 2 on y = 2: 4 / (14.5 + 4)
                                   [0.0, 0.0, 0.0],    # no history: no vector
                                   [3.0, 0.0, 1.0]],   # c = 4 on y = 1, c = 2 on y = 3: (4 + 6) / (14.5 + 3 + 9)
                                  dtype=np.float32))
    vectors = model.fold_in_user_vectors(rows)
    assert vectors.shape == (3, 1)
    assert vectors[:, 0].tolist() == pytest.approx([4 / 18.5, 0.0, 10 / 26.5], rel=1e-12)


def test_als_ranks_each_user_by_their_folded_in_vector_against_every_item():
    rng = np.random.default_rng(3)
    user_items = sp.random(40, 30, density=0.15, format="csr", random_state=4, dtype=np.float32)
    user_items.data[:] = rng.integers(1, 4, user_items.nnz)
    model = offline_models.ALSModel(TrainingConfig(factors=4, iterations=3)).fit(user_items)
    users = np.arange(40)
    ranked = model.recommend(users, user_items, 5, exclude=user_items)
    for user in users:  # the slow way: one user at a time, solved on its own
        start, end = user_items.indptr[user], user_items.indptr[user + 1]
        y = model.item_factors[user_items.indices[start:end]]
        confidence = 1.0 + model.config.alpha * user_items.data[start:end].astype(np.float64)
        a = model.item_factors.T @ model.item_factors + model.config.regularization * np.eye(4)
        vector = (np.linalg.solve(a + (y.T * (confidence - 1.0)) @ y, y.T @ confidence) if end > start
                  else np.zeros(4))
        scores = model.item_factors @ vector
        scores[~model.known_items] = -np.inf
        scores[user_items.indices[start:end]] = -np.inf
        assert ranked[user].tolist() == slow_ranking(scores[None, :], 5)[0].tolist(), user


def test_als_fold_in_solved_a_few_systems_at_a_time_gives_what_one_at_a_time_gives(monkeypatch):
    user_items = sp.random(30, 20, density=0.2, format="csr", random_state=8, dtype=np.float32)
    model = offline_models.ALSModel(TrainingConfig(factors=4, iterations=3)).fit(user_items)
    whole = model.fold_in_user_vectors(user_items)
    monkeypatch.setattr(offline_models, "SYSTEMS_SOLVED_AT_ONCE", 3 * 8 * 4 * 4)  # three systems a solve

    assert np.array_equal(model.fold_in_user_vectors(user_items), whole)
    for row in range(30):
        start, end = user_items.indptr[row], user_items.indptr[row + 1]
        y = model.item_factors[user_items.indices[start:end]]
        confidence = 1.0 + model.config.alpha * user_items.data[start:end].astype(np.float64)
        alone = (np.linalg.solve(model.regularized_gramian + (y.T * (confidence - 1.0)) @ y, y.T @ confidence)
                 if end > start else np.zeros(4))
        assert whole[row].tolist() == pytest.approx(alone.tolist(), rel=1e-12, abs=1e-15), row
