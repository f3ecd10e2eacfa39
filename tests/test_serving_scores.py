"""Scores of ServingModel against values worked out by hand on planted factors, and its NormHead against scoring
every item."""

import logging

import numpy as np

from recommender.artifact import CoPurchaseLists, ModelArtifact
from recommender.serving import (
    COPURCHASE_SHRINK, HEAD_MIN_ITEMS, HEAD_SHARE, HEAD_TRIAL, TOP_SAMPLE_MIN_ITEMS, ServingModel, top_rows,
)

# Four items in 2-d: a and b point the same way, c at 90°, d opposite a. Exact in float16.
FACTORS = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
A, B, C, D = range(4)


def model(orders=(0, 0, 0, 0), neighbors=None) -> ServingModel:
    """The four items; `neighbors` maps a row to its co-purchase list [(row, score), …]."""
    neighbors = neighbors or {}
    counts = np.array([len(neighbors.get(row, [])) for row in range(4)])
    flat = [pair for row in range(4) for pair in neighbors.get(row, [])]
    together = CoPurchaseLists.from_counts(counts, np.array([r for r, _ in flat], dtype=np.int32),
                                           np.array([s for _, s in flat], dtype=np.float32), np.array(orders))
    artifact = ModelArtifact.build(["a", "b", "c", "d"], FACTORS, np.ones(4), 0.1, 1.0, {"version": "v"},
                                   copurchase=together)
    return ServingModel(artifact)


def test_related_is_the_cosine_to_the_seed_and_the_best_of_several_seeds():
    m = model()
    np.testing.assert_allclose(m.related_scores([A]), [1.0, 1.0, 0.0, -1.0], atol=1e-6)
    # seeds a and c: each item's better cosine of the two
    np.testing.assert_allclose(m.related_scores([A, C]), [1.0, 1.0, 1.0, 0.0], atol=1e-6)
    assert m.best_rows(m.related_parts([A, C], [B, C]), [A, C]) == [A, C]


def test_complementary_without_orders_sums_the_cosine_to_each_cart_item():
    # Arrange: no orders, so β = 0 and factor similarity carries the whole score
    m = model()

    # Act
    scores = m.complementary_scores([A, C])

    # Assert: b = cos(b,a) + cos(b,c) = 1 + 0; d = −1 + 0 (an item opposite a cart item scores lower)
    np.testing.assert_allclose(scores, [1.0, 1.0, 1.0, -1.0], atol=1e-6)


def test_complementary_blends_co_purchase_by_orders_as_worked_by_hand():
    # Arrange: a sits in 5 orders (β = 5 / (5 + 5) = 0.5) with c bought alongside it at score 0.8
    m = model(orders=(5, 0, 0, 0), neighbors={A: [(C, 0.8)]})
    beta = 5 / (5 + COPURCHASE_SHRINK)

    # Act
    scores = m.complementary_scores([A])
    parts = m.complementary_parts([A], [B, C, D])

    # Assert: b = 0.5·1; c = 0.5·0 + 0.5·0.8; d = 0.5·(−1)
    np.testing.assert_allclose(scores, [(1 - beta) * 1.0, (1 - beta) * 1.0, beta * 0.8, -(1 - beta)], atol=1e-6)
    np.testing.assert_allclose(parts, [[0.5, 0.4, -0.5]], atol=1e-6)


def test_because_names_the_cart_item_with_the_largest_term():
    # Arrange: cart a (co-purchased with d at 0.9, β = 0.5) and c; ask for b and d
    m = model(orders=(5, 0, 0, 0), neighbors={A: [(D, 0.9)]})

    # Act
    parts = m.complementary_parts([A, C], [B, D])

    # Assert: b's terms: a 0.5·1 = 0.5, c 0; d's terms: a 0.5·(−1) + 0.5·0.9 = −0.05, c 0 → c gives d most
    np.testing.assert_allclose(parts, [[0.5, -0.05], [0.0, 0.0]], atol=1e-6)
    assert m.best_rows(parts, [A, C]) == [A, C]


def test_complementary_parts_of_each_item_sum_to_its_score():
    # Arrange: 300 random items with random co-purchase lists and order counts; a cart of four, and the
    # items asked for include the cart's neighbours, items listed twice and items in no list
    rng = np.random.default_rng(11)
    n = 300
    counts = rng.integers(0, 6, n)
    neighbors = np.concatenate([rng.choice(n, size=c, replace=False) for c in counts]).astype(np.int32)
    together = CoPurchaseLists.from_counts(counts, neighbors, rng.random(len(neighbors), dtype=np.float32),
                                           rng.integers(0, 12, n).astype(np.int32))
    artifact = ModelArtifact.build([str(i + 1) for i in range(n)], rng.standard_normal((n, 8)).astype(np.float32),
                                   np.ones(n), 0.1, 1.0, {"version": "v"}, copurchase=together)
    m = ServingModel(artifact)
    cart = [int(r) for r in rng.choice(n, size=4, replace=False)]
    close = [int(r) for row in cart for r in m.copurchase.of(row)[0]]
    columns = close + close[:3] + [int(r) for r in rng.choice(n, size=20)]

    # Act
    scores = m.complementary_scores(cart)
    parts = m.complementary_parts(cart, columns)

    # Assert: every column's cart terms add up to its score, a repeated column's terms are the same
    assert parts.shape == (4, len(columns)) and close
    np.testing.assert_allclose(parts.sum(axis=0), scores[columns], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(parts[:, :3], parts[:, len(close):len(close) + 3])


def test_several_seeds_score_each_item_by_its_best_cosine():
    # Arrange: random factors, three seeds
    rng = np.random.default_rng(4)
    n = 8192 * 2 + 17
    factors = rng.standard_normal((n, 8)).astype(np.float32)
    m = ServingModel(ModelArtifact.build([str(i + 1) for i in range(n)], factors, np.ones(n), 0.1, 1.0,
                                         {"version": "v"}))
    seeds = [3, n - 1, 8192]

    # Act
    scores = m.related_scores(seeds)

    # Assert
    unit = m.factors / np.linalg.norm(m.factors, axis=1, keepdims=True)  # the float16-rounded factors
    expected = (unit @ unit[seeds].T).max(axis=1)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


def _sorted_top(scores: np.ndarray, n: int, blocked: np.ndarray) -> list[int]:
    """The definition: every unblocked row ordered by (−score, row), the first n."""
    rows = [r for r in range(len(scores)) if not blocked[r]]
    return sorted(rows, key=lambda r: (-scores[r], r))[:n]


def test_top_rows_of_a_large_array_equal_a_full_sort_with_blocked_rows_and_ties():
    rng = np.random.default_rng(7)
    n = TOP_SAMPLE_MIN_ITEMS * 3 + 5
    for trial in range(30):
        # Arrange: scores rounded to a coarse grid so that ties are common; a few hundred rows blocked,
        # among them in some trials the best-scored rows themselves
        scores = np.round(rng.standard_normal(n) * 4).astype(np.float32)
        blocked = np.zeros(n, dtype=bool)
        blocked[rng.choice(n, 300, replace=False)] = True
        if trial % 3 == 0:
            blocked[np.argsort(-scores, kind="stable")[:50]] = True
        want = _sorted_top(scores, 10, blocked)

        # Act
        got = top_rows(scores.copy(), 10, blocked)

        # Assert
        assert got == want


def test_top_rows_when_blocking_leaves_fewer_than_n_or_none():
    # Arrange: a large array where all but 3 rows are blocked, then all of them
    n = TOP_SAMPLE_MIN_ITEMS * 2
    scores = np.arange(n, dtype=np.float32)
    blocked = np.ones(n, dtype=bool)
    blocked[[5, 17, 4000]] = False

    # Act / Assert: the three unblocked rows, best first; nothing when every row is blocked
    assert top_rows(scores.copy(), 10, blocked) == [4000, 17, 5]
    assert top_rows(scores.copy(), 10, np.ones(n, dtype=bool)) == []
    assert top_rows(scores.copy(), 3, None) == [n - 1, n - 2, n - 3]


def test_history_weights_sum_each_products_events_by_kind_weight_times_what_was_kept():
    # Arrange: the weights the model was trained with travel in its metadata
    from datetime import datetime, timezone

    from recommender.events import EventKind
    from recommender.store import Interaction

    artifact = ModelArtifact.build(["a", "b", "c", "d"], FACTORS, np.ones(4), 0.1, 1.0, {
        "version": "v", "event_weights": {"view": 1.0, "add_to_cart": 4.0, "purchase": 10.0}})
    at = datetime(2026, 11, 1, tzinfo=timezone.utc)
    history = [Interaction("c:1", "a", EventKind.PURCHASE, at, "o1"),
               Interaction("c:1", "a", EventKind.VIEW, at),
               Interaction("c:1", "c", EventKind.ADD_TO_CART, at),
               Interaction("c:1", "c", EventKind.PURCHASE, at, "o2", weight_factor=0.25),  # three units of four refunded
               Interaction("c:1", "zz", EventKind.PURCHASE, at, "o3")]  # a product the model never saw

    # Act
    rows, weights = ServingModel(artifact).history_weights(history)

    # Assert: a = 10 + 1, c = 4 + 10 × 0.25
    assert dict(zip(rows.tolist(), weights.tolist())) == {A: 11.0, C: 6.5}


def test_because_of_a_personalized_item_is_the_history_item_whose_term_is_largest():
    # Arrange: a history of a and c (orthogonal axes; A is diagonal, so a's term points along a and c's along c)
    m = model()
    rows = np.array([A, C])
    terms = m.fold_in_terms(rows, np.array([10.0, 10.0]))

    # Act
    because = m.explain(rows, terms, np.array([B, D, C]))

    # Assert: b (along a) owes its score to a; d (opposite a) gets a negative term from a and 0 from c: c; c to c
    assert because.tolist() == [A, C, C]


def test_fold_in_terms_solve_the_user_step_for_short_and_long_histories():
    # Arrange: 16 factors, so histories of 3 and 16 items take the k × k route and 40 items the direct one
    rng = np.random.default_rng(11)
    n, f = 500, 16
    factors = (rng.standard_normal((n, f)) * 0.3).astype(np.float32)
    m = ServingModel(ModelArtifact.build([str(i + 1) for i in range(n)], factors, np.ones(n), 0.05, 2.0,
                                         {"version": "v"}))
    for k in (3, 16, 40):
        rows = rng.choice(n, k, replace=False)
        weights = rng.uniform(0.5, 10.0, k)

        # Act
        terms = m.fold_in_terms(rows, weights)

        # Assert: the columns solve A x = cₖ yₖ with A = G + Yₖᵀ(Cₖ − I)Yₖ, G = λI + YᵀY as the artifact holds it
        # (its YᵀY is stored in float32), written out here
        y = m.factors[rows].astype(np.float64)
        everything = m.factors.astype(np.float64)
        np.testing.assert_allclose(m.regularized_gramian, everything.T @ everything + 0.05 * np.eye(f), atol=1e-5)
        confidence = 1.0 + 2.0 * weights
        a = m.regularized_gramian + y.T @ np.diag(confidence - 1.0) @ y
        np.testing.assert_allclose(a @ terms, y.T * confidence, rtol=1e-8, atol=1e-10)


def test_rows_listed_in_also_are_left_out_like_blocked_ones():
    # Arrange: a large array, a catalog mask and a request's own excluded rows (among them the best ones)
    rng = np.random.default_rng(3)
    n = TOP_SAMPLE_MIN_ITEMS * 2 + 1
    scores = rng.standard_normal(n).astype(np.float32)
    blocked = np.zeros(n, dtype=bool)
    blocked[rng.choice(n, 100, replace=False)] = True
    also = np.argsort(-scores)[:7]
    union = blocked.copy()
    union[also] = True

    # Act
    got = top_rows(scores.copy(), 10, blocked, also)

    # Assert: as if `also` had been blocked, and the shared mask was only read
    assert got == _sorted_top(scores, 10, union)
    assert blocked.sum() == 100 and not blocked[also].all()


def test_popular_rows_skip_blocked_and_listed_rows():
    # Arrange: popularity 4 > 3 > 2 > 1 for rows 0..3 (ids "a".."d" of the four planted items)
    artifact = ModelArtifact.build(["a", "b", "c", "d"], FACTORS, np.array([4.0, 3.0, 2.0, 1.0]), 0.1, 1.0,
                                   {"version": "v"})
    m = ServingModel(artifact)
    blocked = np.array([False, True, False, False])

    # Act / Assert: b is blocked and a is listed, so c then d
    assert m.popular_rows_allowed(2, blocked, np.array([A])) == [C, D]
    assert m.popular_rows_allowed(3) == [A, B, C]


def test_a_loaded_model_scores_with_the_column_major_factors_it_was_loaded_into():
    # Arrange: a published artifact read back, as a serving instance reads it
    rng = np.random.default_rng(9)
    factors = (rng.standard_normal((300, 16)) * 0.1).astype(np.float32)
    loaded = ModelArtifact.from_bytes(ModelArtifact.build([str(i + 1) for i in range(300)], factors, np.ones(300), 0.1,
                                                          1.0, {"version": "v"}).to_bytes())

    # Act
    m = ServingModel(loaded)

    # Assert: column-major, the very array the load rebuilt (no second copy), and the scores are its products
    assert m.factors.flags.f_contiguous
    assert m.factors is loaded.item_factors
    u = rng.standard_normal(16).astype(np.float32)
    np.testing.assert_allclose(m.factors @ u, factors.astype(np.float16).astype(np.float32) @ u, rtol=1e-5, atol=1e-6)


# --- NormHead: personalized answers from the items of largest norm first ---------------------------------------

def _model_of(factors: np.ndarray) -> ServingModel:
    n = len(factors)
    artifact = ModelArtifact.build([str(10_000_000 + row) for row in range(n)], factors, np.ones(n), 0.5, 2.0,
                                   {"version": "v"})
    return ServingModel(artifact)


def _unequal_norms(n: int = HEAD_MIN_ITEMS + 4_000, f: int = 8, seed: int = 3) -> np.ndarray:
    """Random directions with norms falling as a power of their rank, rows shuffled: a trained model's shape
    (popular items long, rare ones short). Values exact in float16, as an artifact stores them."""
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((n, f))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    norms = 1.0 / (1.0 + np.arange(n) / 50.0)
    factors = (directions * rng.permutation(norms)[:, None]).astype(np.float16).astype(np.float32)
    return factors


def _full(model: ServingModel, terms: np.ndarray, n: int, blocked, also) -> tuple[list[int], np.ndarray]:
    scores = model.factors @ terms.sum(axis=1).astype(np.float32)
    top = top_rows(scores, n, blocked, also)
    return top, scores[top]


def test_the_norm_head_answers_as_every_item_would_with_blocked_and_excluded_rows(caplog):
    model = _model_of(_unequal_norms())
    with caplog.at_level(logging.INFO, logger="recommender.serving"):
        head = model.build_head()
    assert head is not None and len(head.rows) == int(np.ceil(model.n_items * HEAD_SHARE))
    built = f"NormHead of {len(head.rows)} of {model.n_items} items"
    assert [r.getMessage() for r in caplog.records if built in r.getMessage()] != []  # the operator sees it
    assert np.all(np.diff(model.norms[head.rows]) <= 0)  # largest norms first
    rng = np.random.default_rng(4)
    blocked = rng.random(model.n_items) < 0.05
    for _ in range(100):
        history = rng.choice(model.n_items, 12, replace=False)
        terms = model.fold_in_terms(history, rng.integers(1, 10, 12).astype(np.float64))
        also = history[:6]
        rows, scores = model.personalized_top(terms, 10, blocked, also)
        want_rows, want_scores = _full(model, terms, 10, blocked, also)
        assert rows == want_rows
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5)
        assert not blocked[rows].any() and not set(rows) & set(also.tolist())
    assert model.head_tries == 100 and model.head_hits >= 90  # the bound closed inside the head for nearly all


def test_the_first_answer_does_not_wait_for_the_head_and_later_ones_use_it():
    model = _model_of(_unequal_norms())
    terms = model.fold_in_terms(np.array([1, 2, 3]), np.array([4.0, 1.0, 10.0]))
    first = model.personalized_top(terms, 5)
    assert model.head_tries == 0 and model.head is None  # answered from every item while the head is built beside it
    built = model.build_head()  # waits for that build
    assert built is not None and model.head is built
    assert model.personalized_top(terms, 5)[0] == first[0] and (model.head_tries, model.head_hits) == (1, 1)


def test_random_factors_of_near_equal_norms_get_no_head_and_small_models_none_at_all(caplog):
    rng = np.random.default_rng(5)
    random = _model_of((rng.standard_normal((HEAD_MIN_ITEMS + 4_000, 8)) * 0.1).astype(np.float32))
    with caplog.at_level(logging.INFO, logger="recommender.serving"):
        assert random.build_head() is None
    assert any(f"no NormHead ({HEAD_MIN_ITEMS + 4_000} items" in r.getMessage() for r in caplog.records)
    small = _model_of(_unequal_norms(n=HEAD_MIN_ITEMS - 1))
    assert small.build_head() is None
    terms = random.fold_in_terms(np.array([1, 2]), np.array([1.0, 1.0]))
    assert random.personalized_top(terms, 5)[0] == _full(random, terms, 5, None, None)[0]
    assert random.head_tries == 0


def test_a_shopper_the_bound_does_not_close_for_gets_every_item_and_a_head_that_rarely_answers_is_dropped(caplog):
    # The head (the longest 30%) are unit vectors at cos = 0.4 to the shopper's (1, 0); every other item points
    # along it with a norm of 0.45 down to 0.3. Inside the head the n-th best is 0.4 < |u|·0.45, so the answer
    # needs every item, and is the short items that score up to 0.45: a bound taken too loosely would answer 0.4s.
    n = HEAD_MIN_ITEMS + 4_000
    long = int(np.ceil(n * HEAD_SHARE))
    factors = np.zeros((n, 2), dtype=np.float32)
    factors[:long] = [0.4, np.sqrt(1 - 0.4 ** 2)]
    factors[long:, 0] = np.linspace(0.45, 0.3, n - long)
    factors = factors.astype(np.float16).astype(np.float32)
    model = _model_of(factors)
    assert model.build_head() is not None
    terms = np.array([[1.0], [0.0]])  # the shopper's vector (1, 0)
    want = _full(model, terms, 3, None, None)
    assert want[0] == [long, long + 1, long + 2] and want[1][0] == factors[long, 0]
    with caplog.at_level(logging.INFO, logger="recommender.serving"):
        for attempt in range(HEAD_TRIAL):
            rows, scores = model.personalized_top(terms, 3)
            assert rows == want[0]
            np.testing.assert_allclose(scores, want[1])
    assert (model.head_tries, model.head_hits) == (HEAD_TRIAL, 0)
    dropped = [r.getMessage() for r in caplog.records if "NormHead dropped" in r.getMessage()]
    assert dropped == [f"model {model.version}: NormHead dropped, it answered 0 of {HEAD_TRIAL} personalized requests"]
    assert model.build_head() is None  # dropped after HEAD_TRIAL answers it could not give
