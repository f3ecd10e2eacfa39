"""The models offline evaluation compares, behind one contract.

    model.fit(user_items, context)                  user_items: users × items CSR of engineered weights
    model.recommend(users, user_items, k, exclude)  int[len(users), k] item indices, best first, -1 padded

Every model scores every item (a full ranking, no sampled negatives). `recommend` is written once
here: items the model never saw in training cannot be recommended, `exclude` (a users × items
matrix, usually the training rows) is dropped per user, and ties go to the lower item index.
ALS is the project's own: item factors from `recommender.training.fit_item_factors` and each
user folded in from their training row exactly as serving folds in a shopper at request time.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import scipy.sparse as sp
from threadpoolctl import ThreadpoolController

from recommender.offline_data import EvaluationError, Interactions, SignalConfig, row_weights
from recommender.settings import TrainingConfig

MODEL_NAMES = ("pop", "trending", "rebuy", "cosine", "bm25", "als", "bpr")
# users × items scored at once: 32 MiB of float64 whatever the catalog size, with as much again for `top_k`'s indices
# (at 1 << 24 the training job's quality gate peaked at 742 MiB for a 1M-event shop; bench/PERFORMANCE.md, round 32)
SCORES_PER_BATCH = 1 << 22
SYSTEMS_SOLVED_AT_ONCE = 8 << 20  # bytes of the ALS fold-in's factors × factors systems held at once


# threadpoolctl's view of the BLAS libraries loaded, found once (finding them took 3.6 ms a call, 0.9 s of the quality
# gate's ranking at 1M events): numpy's own, which the fold-in's products and solves use, is loaded with numpy
_BLAS = None


def _single_threaded_blas():
    global _BLAS
    if _BLAS is None:
        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


@dataclass(frozen=True, eq=False)
class FitContext:
    """What time-aware models need beyond the matrix: the raw training rows and the end of training."""

    events: Interactions
    signal: SignalConfig
    reference_time: float | None


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """int[n, k]: the k best columns per row, best first, ties to the lower index; -inf and NaN places become -1.

    Each row's candidates are its scores at least the k-th largest of its blocks' maxima (a lower bound of its k-th
    largest score, so every score tied with that one is among them), ranked by score and then column. A quarter of
    the time of `argpartition` over whole rows, which scored 21.7k customers × 50k items in 15.5 s for the quality
    gate, and without its int64 copy of the scores (bench/PERFORMANCE.md, round 32).
    """
    n, m = scores.shape
    width = min(k, m)
    result = np.full((n, k), -1, dtype=np.int64)
    if width == 0 or n == 0:
        return result
    blocks = min(m, max(64, 4 * width))
    size = m // blocks
    maxima = np.fmax.reduce(scores[:, :size * blocks].reshape(n, blocks, size), axis=2)  # NaN hides no score
    if size * blocks < m:  # the last columns, each a block of its own
        maxima = np.concatenate([maxima, scores[:, size * blocks:]], axis=1)
    maxima[np.isnan(maxima)] = -np.inf  # a block of NaN only: no candidate (NaN never is one)
    floor = np.partition(maxima, maxima.shape[1] - width, axis=1)[:, maxima.shape[1] - width]
    rows, columns = np.divmod(np.flatnonzero(scores >= floor[:, None]), m)  # 2-D nonzero: 4x the time
    picked = scores[rows, columns]
    order = np.lexsort((columns, -picked, rows))
    rows, columns, picked = rows[order], columns[order], picked[order]
    place = np.arange(len(rows)) - np.searchsorted(rows, rows)  # each candidate's place in its row's ranking
    kept = place < width
    result[rows[kept], place[kept]] = np.where(np.isneginf(picked[kept]), -1, columns[kept])
    return result


def shared_batches(widths: np.ndarray, batch_size: int) -> list[tuple[int, int, int]]:
    """(start, end, width) of consecutive users, each batch at most `batch_size` users and, unless one user alone
    needs more, at most SCORES_PER_BATCH places: its users times the widest of their `widths`."""
    batches = []
    start = 0
    while start < len(widths):
        end, width = start + 1, int(widths[start])
        while end < len(widths) and end - start < batch_size:
            wider = max(width, int(widths[end]))
            if (end - start + 1) * wider > SCORES_PER_BATCH:
                break
            width, end = wider, end + 1
        batches.append((start, end, width))
        start = end
    return batches


class RankingModel:
    """Base of every model under test: subclasses implement `_fit` and `score`."""

    name = "model"

    def __init__(self) -> None:
        self.known_items: np.ndarray | None = None  # bool[n_items]: items with a training interaction

    def params(self) -> dict:
        return {}

    def fit(self, user_items: sp.csr_matrix, context: FitContext | None = None) -> "RankingModel":
        if not isinstance(user_items, sp.csr_matrix):
            raise ValueError("user_items needs to be a CSR sparse matrix")
        self.known_items = np.diff(user_items.tocsc().indptr) > 0
        self._fit(user_items, context)
        return self

    def _fit(self, user_items: sp.csr_matrix, context: FitContext | None) -> None:
        raise NotImplementedError

    def score(self, users: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        """float[len(users), n_items], an array of its own that `recommend` may change; user_items holds those
        users' rows, in order."""
        raise NotImplementedError

    def recommend(self, users: np.ndarray, user_items: sp.csr_matrix, k: int,
                  exclude: sp.csr_matrix | None = None, batch_size: int = 1024) -> np.ndarray:
        """int[len(users), k] for users (row indices of user_items and exclude), best first, -1 padded."""
        if self.known_items is None:
            raise EvaluationError(f"{self.name} must be fitted before it recommends")
        users = np.asarray(users, dtype=np.int64)
        shared = self.shared_scores()
        if shared is not None:
            return self._recommend_shared(np.asarray(shared, dtype=np.float64), users, k, exclude, batch_size)
        result = np.empty((len(users), k), dtype=np.int64)
        batch_size = max(1, min(batch_size, SCORES_PER_BATCH // max(len(self.known_items), 1)))
        for start in range(0, len(users), batch_size):
            batch = users[start:start + batch_size]
            scores = self.score(batch, user_items[batch])
            if scores.dtype != np.float64 or not scores.flags.writeable:
                scores = np.array(scores, dtype=np.float64)
            scores[:, ~self.known_items] = -np.inf
            if exclude is not None:
                seen = exclude[batch].tocoo()
                scores[seen.row, seen.col] = -np.inf
            result[start:start + batch_size] = top_k(scores, k)
        return result

    def shared_scores(self) -> np.ndarray | None:
        """float[n_items] when every user gets the same scores (best sellers, trending), else None."""
        return None

    def _recommend_shared(self, scores: np.ndarray, users: np.ndarray, k: int, exclude: sp.csr_matrix | None,
                          batch_size: int) -> np.ndarray:
        """`recommend` when every user's scores are `scores`: the items ranked once (best first, ties to the lower
        index), then each user's first k not excluded. Over a shop's holdout customers this is what the quality gate
        asks of best sellers and trending: 20.7 and 17.3 s for 21.7k customers × 50k items through the general path,
        which scores, masks and partitions every user's whole row (bench/PERFORMANCE.md, round 32)."""
        result = np.full((len(users), k), -1, dtype=np.int64)
        ranked = np.flatnonzero(self.known_items & ~np.isneginf(scores) & ~np.isnan(scores))
        ranked = ranked[np.lexsort((ranked, -scores[ranked]))]
        if not len(ranked) or not k:
            return result
        place = np.full(len(scores), len(ranked), dtype=np.int64)  # each item's place in `ranked`; past it: not there
        place[ranked] = np.arange(len(ranked))
        exclude = exclude.tocsr() if exclude is not None else None
        # a user's first k not excluded lie among the first k + |their excluded| of `ranked`
        widths = np.minimum(len(ranked), k + (np.diff(exclude.indptr)[users] if exclude is not None else 0))
        for start, end, width in shared_batches(np.broadcast_to(widths, (len(users),)), batch_size):
            batch = users[start:end]
            shown = np.ones((len(batch), width), dtype=bool)
            if exclude is not None:
                seen = exclude[batch].tocoo()
                at = place[seen.col]
                inside = at < width
                shown[seen.row[inside], at[inside]] = False
            rank = np.cumsum(shown, axis=1, dtype=np.int32)
            rows, columns = np.nonzero(shown & (rank <= k))
            result[start + rows, rank[rows, columns] - 1] = ranked[columns]
        return result


class PopularityModel(RankingModel):
    """Everyone gets the items with the most training weight."""

    name = "pop"

    def _fit(self, user_items, context):
        self.popularity = np.asarray(user_items.sum(axis=0), dtype=np.float64).ravel()

    def score(self, users, user_items):
        return np.broadcast_to(self.popularity, (len(users), len(self.popularity)))

    def shared_scores(self):
        return self.popularity


class TrendingModel(RankingModel):
    """Popularity where an event counts half every `half_life_days` before the end of training."""

    name = "trending"

    def __init__(self, half_life_days: float = 7.0):
        super().__init__()
        if not half_life_days > 0:
            raise EvaluationError(f"trending half_life_days must be > 0, got {half_life_days}")
        self.half_life_days = half_life_days

    def params(self):
        return {"half_life_days": self.half_life_days}

    def _fit(self, user_items, context):
        if context is None or context.events.timestamps is None:
            raise EvaluationError("trending needs timestamped training events")
        events = context.events
        weights = row_weights(events, context.signal, context.reference_time, half_life_days=self.half_life_days)
        self.trend = np.bincount(events.items, weights=weights, minlength=user_items.shape[1])

    def score(self, users, user_items):
        return np.broadcast_to(self.trend, (len(users), len(self.trend)))

    def shared_scores(self):
        return self.trend


class RebuyModel(RankingModel):
    """"Buy it again": the user's own items by their weight, then best sellers. Only useful with repeats allowed."""

    name = "rebuy"

    def _fit(self, user_items, context):
        popularity = np.asarray(user_items.sum(axis=0), dtype=np.float64).ravel()
        self.popularity_share = popularity / (popularity.max(initial=0.0) + 1.0)  # in [0, 1)

    def score(self, users, user_items):
        scores = np.tile(self.popularity_share, (len(users), 1))
        own = user_items.tocoo()
        row_max = np.asarray(user_items.max(axis=1).todense(), dtype=np.float64).ravel()
        scores[own.row, own.col] = 1.0 + own.data / row_max[own.row]  # any own item above any other
        return scores


class ItemKNNModel(RankingModel):
    """implicit's item-item neighbours: a user's score for an item sums its similarity to their items."""

    def __init__(self, similarity: str = "cosine", neighbours: int = 100, k1: float = 1.2, b: float = 0.75):
        super().__init__()
        if similarity not in ("cosine", "bm25"):
            raise EvaluationError(f"item-kNN similarity must be cosine or bm25, got {similarity!r}")
        self.name = similarity
        self.neighbours, self.k1, self.b = neighbours, k1, b

    def params(self):
        params = {"neighbours": self.neighbours}
        if self.name == "bm25":
            params.update(k1=self.k1, b=self.b)
        return params

    def _fit(self, user_items, context):
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

        model = (CosineRecommender(K=self.neighbours) if self.name == "cosine"
                 else BM25Recommender(K=self.neighbours, K1=self.k1, B=self.b))
        with warnings.catch_warnings():
            # implicit converts its own reweighted matrix to CSR inside fit and warns about itself
            warnings.filterwarnings("ignore", message="Method expects CSR input")
            model.fit(user_items, show_progress=False)
        self.similarity = model.similarity.tocsr()  # items × items

    def score(self, users, user_items):
        return (user_items @ self.similarity).toarray()


class ALSModel(RankingModel):
    """The project's ALS: confidence 1 + alpha·w, item factors from training.fit_item_factors, users folded in."""

    name = "als"

    def __init__(self, config: TrainingConfig):
        super().__init__()
        self.config = config

    def params(self):
        c = self.config
        return {"factors": c.factors, "regularization": c.regularization, "alpha": c.alpha,
                "iterations": c.iterations, "seed": c.seed}

    def _fit(self, user_items, context):
        from recommender.training import fit_item_factors

        self.item_factors = fit_item_factors(user_items, self.config).astype(np.float64)
        n_factors = self.item_factors.shape[1]
        gramian = self.item_factors.T @ self.item_factors
        self.regularized_gramian = gramian + self.config.regularization * np.eye(n_factors)
        # the scores' product reads the factors item by item: from a copy laid out that way it takes four fifths of
        # the time (32 factors, 83 customers × 50k products a batch); BLAS may then round a score's last bit otherwise
        # (the gate's 20.9k rankings at 1M events came out the same)
        self.item_factors_by_factor = np.ascontiguousarray(self.item_factors.T)

    def fold_in_user_vectors(self, user_items: sp.csr_matrix) -> np.ndarray:
        """float64[n_rows, factors]: per row, x = (YᵀY + λI + Yₖᵀ(Cₖ − I)Yₖ)⁻¹ Yₖᵀ Cₖ 1, Cₖ = 1 + alpha·wₖ.

        The user step of ALS solved exactly for the final item factors, as serving does per request. Each row's
        system is built on its own and up to SYSTEMS_SOLVED_AT_ONCE bytes of them are solved together (one LAPACK
        solve each, as one at a time did, bit for bit, for a fraction of the calls' overhead).
        """
        n_factors = self.item_factors.shape[1]
        vectors = np.zeros((user_items.shape[0], n_factors))
        rows = np.flatnonzero(np.diff(user_items.indptr) > 0)
        per_solve = max(1, min(len(rows), SYSTEMS_SOLVED_AT_ONCE // (8 * n_factors * n_factors)))
        systems = np.empty((per_solve, n_factors, n_factors))
        sums = np.empty((per_solve, n_factors))
        with _single_threaded_blas():  # thousands of tiny products: threads only add overhead
            for first in range(0, len(rows), per_solve):
                chunk = rows[first:first + per_solve]
                for at, row in enumerate(chunk.tolist()):
                    start, end = user_items.indptr[row], user_items.indptr[row + 1]
                    y = self.item_factors[user_items.indices[start:end]]
                    confidence = 1.0 + self.config.alpha * user_items.data[start:end].astype(np.float64)
                    np.add(self.regularized_gramian, (y.T * (confidence - 1.0)) @ y, out=systems[at])
                    sums[at] = y.T @ confidence
                n = len(chunk)
                vectors[chunk] = np.linalg.solve(systems[:n], sums[:n, :, None])[:, :, 0]
        return vectors

    def score(self, users, user_items):
        return self.fold_in_user_vectors(user_items) @ self.item_factors_by_factor


@dataclass(frozen=True)
class BPRConfig:
    factors: int = 100  # implicit's defaults throughout
    learning_rate: float = 0.01
    regularization: float = 0.01
    iterations: int = 100
    seed: int = 42


class BPRModel(RankingModel):
    """implicit's Bayesian Personalized Ranking, one thread so a seed gives one model."""

    name = "bpr"

    def __init__(self, config: BPRConfig = BPRConfig()):
        super().__init__()
        self.config = config

    def params(self):
        return dataclasses.asdict(self.config)

    def _fit(self, user_items, context):
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        c = self.config
        # One thread: implicit's Hogwild threads race, so a seed would not give one model.
        model = BayesianPersonalizedRanking(factors=c.factors, learning_rate=c.learning_rate,
                                            regularization=c.regularization, iterations=c.iterations,
                                            random_state=c.seed, num_threads=1)
        model.fit(user_items, show_progress=False)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float64)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float64)

    def score(self, users, user_items):
        return self.user_factors[users] @ self.item_factors.T


ALS_PARAMS = ("factors", "regularization", "alpha", "iterations", "seed")
BPR_PARAMS = tuple(f.name for f in dataclasses.fields(BPRConfig))


def build_model(name: str, params: Mapping[str, object] | None = None,
                training: TrainingConfig | None = None) -> RankingModel:
    """A fresh model by name; `params` override its defaults (ALS defaults come from `training`)."""
    params = dict(params or {})
    try:
        if name == "pop":
            model: RankingModel = PopularityModel()
        elif name == "rebuy":
            model = RebuyModel()
        elif name == "trending":
            model = TrendingModel(**params)
        elif name in ("cosine", "bm25"):
            model = ItemKNNModel(name, **params)
        elif name == "als":
            unknown = set(params) - set(ALS_PARAMS)
            if unknown:
                raise TypeError(f"unexpected ALS parameter(s) {sorted(unknown)}")
            model = ALSModel((training or TrainingConfig())._replace(**params))
        elif name == "bpr":
            model = BPRModel(BPRConfig(**params))
        else:
            raise EvaluationError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    except TypeError as exc:
        raise EvaluationError(f"bad parameters for {name}: {exc}") from None
    return model
