"""Serving: a published artifact in memory, scored with numpy alone.

Imports numpy and nothing heavier (no scipy, no implicit): cold start is the product.
A shopper's vector is never stored; it is folded in from their stored events at
request time, so a purchase made a second ago already counts.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
import weakref
from typing import Callable, Iterator, Sequence

import numpy as np

from recommender.artifact import ModelArtifact
from recommender.errors import ArtifactError, ModelNotReady
from recommender.events import EventKind
from recommender.model_store import Manifest, ModelStore
from recommender.prefetch import MEMORY_PER_ARTIFACT_BYTE  # a load makes room for this much; the exact count after
from recommender.store import Interaction

log = logging.getLogger(__name__)

COPURCHASE_SHRINK = 5.0  # orders an item needs before co-purchase outweighs factor similarity
TOP_SAMPLE_STRIDE = 32  # top_rows: one score in this many bounds the n-th best from below
TOP_SAMPLE_MIN_ITEMS = 4096  # below this, top_rows partitions the whole array
CHECKER_WAKE_SECONDS = 60.0  # how often an idle refresh thread looks whether its holder is gone
# Personalized answers from the items of largest norm first (NormHead; bench/PERFORMANCE.md, round 17).
HEAD_MIN_ITEMS = 20_000  # below this one product takes ~0.1 ms: nothing worth a second matrix
HEAD_SHARE = 0.3  # the share of the items, largest norms first, kept as the head
HEAD_SKEW = 0.5  # built only when the largest norm outside the head is below this share of the largest of all
HEAD_STEPS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)  # how much of the head is scored before each check of the bound
HEAD_MARGIN = 1e-4  # relative: float32 products may exceed the exact bound by a few parts in a million
HEAD_TRIAL = 64  # answers after which a head that answered fewer than HEAD_MIN_HIT_RATE of them is dropped
HEAD_MIN_HIT_RATE = 0.25
HEAD_BUILD_DELAY_SECONDS = 1.0  # after a model's first personalized answer: the cold start's first answers go first
# The strategy that serves personalized answers in place of a model the quality gate published below a baseline
# (recommender/retraining.py): the baseline that won, by the name its log gives it.
BASELINE_STRATEGIES = {"best_sellers": "popular", "trending": "trending"}


def below_baseline_strategy(metadata: dict) -> str | None:
    """`popular` or `trending` for an artifact whose gate's verdict was `below_baseline` (the baseline that beat it);
    None for any other."""
    quality = metadata.get("quality")
    if not isinstance(quality, dict) or quality.get("verdict") != "below_baseline":
        return None
    return BASELINE_STRATEGIES.get(quality.get("baseline"), "popular")


class NormHead:
    """The items of largest norm as a matrix of their own, in decreasing order of norm, for personalized answers.

    An item's score for a shopper u is y·u ≤ |y|·|u| (Cauchy–Schwarz). Scored in decreasing order of norm, once the
    n-th best allowed score found exceeds |u| times the largest norm not yet scored, no other item can enter the
    top n or tie with it: the answer is the full product's, to float rounding, from a fraction of its work. Where
    the bound never closes (a shopper whose best items all have small norms) the caller scores every item as
    before. Trained models have very unequal norms (popular items long, rare ones short); random ones do not, and
    get no head.
    """

    __slots__ = ("rows", "factors", "stops", "bounds", "position")

    def __init__(self, factors: np.ndarray, norms: np.ndarray, size: int, outside: float):
        order = np.argpartition(-norms, size - 1)[:size]
        self.rows = order[np.lexsort((order, -norms[order]))]  # decreasing norm, ties by row
        # Gathered column by column from the column-major factors: half the time of gathering rows and then
        # transposing the copy (115 against 264 ms for 300,000 of 1M rows, bench/PERFORMANCE.md round 18).
        self.factors = np.asfortranarray(np.take(factors.T, self.rows, axis=1).T)
        self.stops = sorted({max(1, min(size, round(size * step))) for step in HEAD_STEPS})
        # After scoring head[:stop], the largest norm left anywhere: the head's next row's, or the rest's largest.
        self.bounds = [float(norms[self.rows[stop]]) if stop < size else outside for stop in self.stops]
        self.position = np.full(len(norms), -1, dtype=np.int32)  # model row -> place in the head, or -1
        self.position[self.rows] = np.arange(size)

    @classmethod
    def build(cls, factors: np.ndarray, norms: np.ndarray) -> "NormHead | None":
        """A head for these factors, or None where the norms are too equal for the bound to close early."""
        n = len(norms)
        size = int(np.ceil(n * HEAD_SHARE))
        if n < HEAD_MIN_ITEMS or not 0 < size < n:
            return None
        largest = float(norms.max())
        outside = float(-np.partition(-norms, size)[size])  # the (size + 1)-th largest norm
        if not largest > 0 or outside >= HEAD_SKEW * largest:
            return None
        return cls(factors, norms, size, outside)

    def top(self, user: np.ndarray, n: int, blocked: np.ndarray | None,
            also: np.ndarray | None) -> tuple[list[int], np.ndarray] | None:
        """The n best allowed rows for the shopper vector `user` (best first, ties by row) and their scores, or None
        if the bound did not close within the head."""
        length = float(np.sqrt(np.dot(user.astype(np.float64), user.astype(np.float64))))
        scores = np.empty(len(self.rows), dtype=np.float32)
        excluded = self.position[also] if also is not None and len(also) else None
        if excluded is not None:
            excluded = excluded[excluded >= 0]
        start = 0
        for stop, bound in zip(self.stops, self.bounds):
            part = scores[start:stop]
            np.matmul(self.factors[start:stop], user, out=part)
            if blocked is not None:
                part[blocked[self.rows[start:stop]]] = -np.inf
            if excluded is not None:
                inside = excluded[(excluded >= start) & (excluded < stop)]
                scores[inside] = -np.inf
            start = stop
            if stop < n:
                continue
            seen = scores[:stop]
            best = np.argpartition(seen, stop - n)[stop - n:]
            nth = float(seen[best].min())
            if nth > -np.inf and nth > length * bound * (1.0 + HEAD_MARGIN):
                rows = self.rows[best]
                ordered = np.lexsort((rows, -seen[best]))
                return rows[ordered].tolist(), seen[best][ordered]
        return None


def _check_forever(holder: "weakref.ReferenceType[ModelHolder]", due: queue.SimpleQueue) -> None:
    """A ModelHolder's checking thread: its due checks one after another, until the holder is gone."""
    while True:
        try:
            work = due.get(timeout=CHECKER_WAKE_SECONDS)
        except queue.Empty:
            if holder() is None:
                return
            continue
        alive = holder()
        if alive is None:
            return
        freed = alive._check(*work)
        del alive, work  # nothing of the holder's is held while waiting
        if freed:  # now that the check holds the model it replaced or dropped no more
            release_freed_memory()


def top_rows(scores: np.ndarray, n: int, blocked: np.ndarray | None = None,
             also: np.ndarray | None = None) -> list[int]:
    """The n best rows of `scores`, best first, ties by row, without the rows where `blocked` (a bool mask,
    only read) is set or that `also` (an array of rows) lists.

    A large array is not partitioned whole. Every TOP_SAMPLE_STRIDE-th unblocked score is a sample, and its
    n-th largest value t is a lower bound of the n-th largest unblocked score (a subset's n-th largest is
    never above its superset's), so the rows scoring ≥ t, about n·stride of them, hold the answer. Finding
    them is one comparison pass; the mask is read only at the sample and at those rows. At 100k items this
    takes a fraction of `np.argpartition`'s time and of masking every score (bench/PERFORMANCE.md).
    `scores` must be the caller's own fresh array: it may be changed in place.
    """
    take = min(n, len(scores))
    if take <= 0:
        return []
    if also is not None and len(also):
        scores[also] = -np.inf
    if len(scores) >= TOP_SAMPLE_MIN_ITEMS:
        sample = scores[::TOP_SAMPLE_STRIDE]
        if blocked is not None:
            sample = sample[~blocked[::TOP_SAMPLE_STRIDE]]
        if len(sample) >= take:
            bound = np.partition(sample, len(sample) - take)[len(sample) - take]
            if bound > -np.inf:
                candidates = np.flatnonzero(scores >= bound)
                if blocked is not None:
                    candidates = candidates[~blocked[candidates]]
                return _best_of(scores, candidates, take)
    if blocked is not None:
        scores[blocked] = -np.inf
    part = np.argpartition(scores, len(scores) - take)[len(scores) - take:]  # the take largest, unordered
    return [r for r in _best_of(scores, part, take) if scores[r] > -np.inf]


def _best_of(scores: np.ndarray, rows: np.ndarray, take: int) -> list[int]:
    """The `take` best of `rows` by score, best first, ties by row."""
    ordered = rows[np.lexsort((rows, -scores[rows]))]
    return ordered[:take].tolist()


def _build_head_if_kept(model: "weakref.ReferenceType[ServingModel]") -> None:
    """The NormHead's delayed build, for a model still held by someone (the ModelHolder, an answer): a strong
    reference here kept each model let go by MODEL_MEMORY_MIB alive for the delay and built its head, and with shops
    asked in turn faster than that an instance held every one of them (bench/PERFORMANCE.md, round 35)."""
    kept = model()
    if kept is not None:
        kept.build_head()


class ServingModel:
    """An artifact unpacked for fast scoring: float32 factors, their inverse norms, an id index, λI + YᵀY.

    Cosine similarity (related, complementary) is scored from the same factors as personalized, scaled
    by each item's inverse norm, so an instance holds one factor matrix, not a second one of unit rows.
    """

    def __init__(self, artifact: ModelArtifact):
        self.version = artifact.version
        self.item_ids = artifact.item_ids  # ItemIds: ids[row] -> product id, ids.row(product id) -> row
        # Column-major (as loaded: no copy): a matrix-vector product over it is 64 streaming passes
        # of y += column·u, 1.4–3× faster (by CPU) with one BLAS thread than 100k short dot products over
        # rows (bench/PERFORMANCE.md); the few rows a fold-in gathers cost ~0.1 ms more from cold cache.
        self.factors = np.asfortranarray(artifact.item_factors, dtype=np.float32)
        self._inverse_norms: np.ndarray | None = None  # made on first use: personalized requests never need them
        self._norms: np.ndarray | None = None  # made on first use: by the NormHead's build or the inverse norms
        # NormHead for personalized answers: None until asked for, then built on a thread of its own while answers
        # score every item; False where the model gets none (too small, norms too equal, or it answered too few).
        self._head: NormHead | None | bool = None
        self._head_lock = threading.Lock()
        self.head_tries = self.head_hits = 0
        n_factors = self.factors.shape[1]
        self.regularized_gramian = artifact.gramian.astype(np.float64) + artifact.regularization * np.eye(n_factors)
        self._inverse_gramian: np.ndarray | None = None  # (λI + YᵀY)⁻¹, made on the first fold-in
        self.alpha = artifact.alpha
        # Read once here, not per answer: the baseline personalized answers serve instead (None: the model serves them)
        self.below_baseline = below_baseline_strategy(artifact.metadata)
        if self.below_baseline is not None:
            self._head = False  # it scores no shopper: no NormHead, nor one counted in `full_nbytes`
        weights = artifact.metadata.get("event_weights", {})
        self.event_weights = {kind: float(weights.get(kind.value, 0.0)) for kind in EventKind}
        self._popularity = artifact.popularity
        self._popular_rows: np.ndarray | None = None  # sorted on first use
        top = float(artifact.popularity.max()) if len(artifact.popularity) else 1.0
        self.popularity_score = artifact.popularity.astype(np.float32) / (top or 1.0)
        self.item_support = artifact.item_support
        self.copurchase = artifact.copurchase
        self.copurchase_orders = artifact.copurchase.orders

    @property
    def nbytes(self) -> int:
        """What this model's arrays take in memory, as far as they are built (norms and NormHead come on first use)."""
        head = self._head
        arrays = [self.factors, self.regularized_gramian, self._inverse_gramian, self._popularity, self._popular_rows,
                  self.popularity_score, self.item_support, self._norms, self._inverse_norms, *self.copurchase]
        if isinstance(head, NormHead):
            arrays += [head.rows, head.factors, head.position]
        return sum(array.nbytes for array in arrays if isinstance(array, np.ndarray)) + self.item_ids.nbytes

    @property
    def full_nbytes(self) -> int:
        """`nbytes` once its answers have built what they build on first use: the norms, the inverse norms, the rows by
        popularity, the inverse Gramian and, for a model of HEAD_MIN_ITEMS or more whose head is not yet decided, a
        NormHead (HEAD_SHARE of the rows). What MODEL_MEMORY_MIB counts, so that a model kept does not outgrow it."""
        n, k = self.factors.shape
        later = sum(size for array, size in ((self._norms, 4 * n), (self._inverse_norms, 4 * n),
                                             (self._popular_rows, 8 * n), (self._inverse_gramian, 8 * k * k))
                    if array is None)
        if self._head in (None, True) and n >= HEAD_MIN_ITEMS:
            rows = int(np.ceil(n * HEAD_SHARE))
            later += rows * (4 * k + 8) + 4 * n
        return self.nbytes + later

    @property
    def popular_rows(self) -> np.ndarray:
        """Rows by popularity, most popular first (ties by row); sorted once, on first use."""
        rows = self._popular_rows
        if rows is None:
            rows = self._popular_rows = np.argsort(-self._popularity, kind="stable")
        return rows

    @property
    def norms(self) -> np.ndarray:
        """float32[n_items]: |factors[i]|; made on first use."""
        norms = self._norms
        if norms is None:  # two threads may both compute it; either result is the same
            norms = self._norms = np.sqrt(np.einsum("ij,ij->i", self.factors, self.factors))
        return norms

    @property
    def inverse_norms(self) -> np.ndarray:
        """float32[n_items]: 1 / max(|factors[i]|, 1e-12), so an all-zero row's cosines are 0; made on first use."""
        inverse = self._inverse_norms
        if inverse is None:  # two threads may both compute it; either result is the same
            inverse = self._inverse_norms = (1.0 / np.maximum(self.norms, 1e-12)).astype(np.float32)
        return inverse

    def build_head(self) -> NormHead | None:
        """Build (once) and return this model's NormHead, or None where it gets none."""
        with self._head_lock:
            if self._head is None or self._head is True:
                began = time.perf_counter()
                head = NormHead.build(self.factors, self.norms)
                self._head = head or False
                if head is None:
                    log.info("model %s: no NormHead (%d items, norms too equal or too few items)",
                             self.version, self.n_items)
                else:
                    log.info("model %s: NormHead of %d of %d items (largest norms) built in %.0f ms", self.version,
                             len(head.rows), self.n_items, (time.perf_counter() - began) * 1000)
        return self._head or None

    @property
    def head(self) -> NormHead | None:
        """This model's NormHead once built; None before, while it is built, or where the model gets none."""
        head = self._head
        return head if isinstance(head, NormHead) else None

    def _usable_head(self) -> NormHead | None:
        head = self._head
        if head is None:  # first ask: built a moment later beside the answers, which score every item meanwhile
            with self._head_lock:
                if self._head is None:
                    self._head = True  # being built
                    if self.n_items < HEAD_MIN_ITEMS:
                        self._head = False
                    else:  # the timer holds the model weakly: a model let go meanwhile is freed, not built for
                        builder = threading.Timer(HEAD_BUILD_DELAY_SECONDS, _build_head_if_kept, (weakref.ref(self),))
                        builder.daemon = True
                        builder.name = "norm-head"
                        builder.start()
            return None
        return self.head

    def personalized_top(self, terms: np.ndarray, n: int, blocked: np.ndarray | None = None,
                         also: np.ndarray | None = None) -> tuple[list[int], np.ndarray]:
        """The shopper's n best rows (best first, ties by row; none blocked or in `also`) and their scores, for the
        shopper whose `fold_in_terms` these are: from the NormHead where its bound closes, else from every item."""
        user = self.user_vector(terms)
        head = self._usable_head()
        if head is not None:
            found = head.top(user, n, blocked, also)
            self.head_tries += 1  # counts race between threads at worst: they only decide when to give up
            if found is not None:
                self.head_hits += 1
                return found
            if self.head_tries >= HEAD_TRIAL and self.head_hits < HEAD_MIN_HIT_RATE * self.head_tries:
                self._head = False  # it rarely answers for this model's shoppers: score every item, free its memory
                log.info("model %s: NormHead dropped, it answered %d of %d personalized requests", self.version,
                         self.head_hits, self.head_tries)
        scores = self.factors @ user
        top = top_rows(scores, n, blocked, also)
        return top, scores[np.asarray(top, dtype=np.int64)]

    def unit_rows(self, rows: Sequence[int]) -> np.ndarray:
        """float32[len(rows), factors]: those items' factors scaled to unit length."""
        rows = np.asarray(rows, dtype=np.int64)
        return self.factors[rows] * self.inverse_norms[rows, None]

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def rows_of(self, product_ids: Sequence[str]) -> list[int]:
        """Rows of the products the model knows, in the given order, unknown ones dropped."""
        return self.item_ids.rows_of(product_ids)

    def history_weights(self, history: Sequence[Interaction],
                        rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Sum the event weights of known products: (rows int[k], weights float[k]).

        `rows`: the events' rows if the caller looked them up already (`item_ids.rows_array`, −1 unknown).
        """
        if rows is None:
            rows = self.item_ids.rows_array([event.product_id for event in history])
        summed: dict[int, float] = {}
        for event, row in zip(history, rows.tolist()):
            weight = self.event_weights.get(event.kind, 0.0) * event.weight_factor
            if row >= 0 and weight > 0:
                summed[row] = summed.get(row, 0.0) + weight
        rows = np.fromiter(summed.keys(), dtype=np.int64, count=len(summed))
        weights = np.fromiter(summed.values(), dtype=np.float64, count=len(summed))
        return rows, weights

    def fold_in_terms(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Solve the ALS user step for one shopper, one term per history item: float64[factors, k].

        rows: int[k] item rows the shopper touched; weights: float[k] summed event weights.
        The user vector x = (YᵀY + λI + Yₖᵀ(Cₖ − I)Yₖ)⁻¹ Yₖᵀ Cₖ 1, with Cₖ = 1 + alpha·weights (the
        equation implicit solves for a user during training), is the sum of the columns A⁻¹ cₖ yₖ
        returned here; they also say which history item a recommendation is owed to (`explain`), so
        one solve serves both.
        """
        y = self.factors[rows].astype(np.float64)
        confidence = 1.0 + self.alpha * np.asarray(weights, dtype=np.float64)
        extra = confidence - 1.0
        if not 0 < len(rows) <= y.shape[1] or extra.min() <= 0:
            a = self.regularized_gramian + (y.T * extra) @ y
            return np.linalg.solve(a, (y * confidence[:, None]).T)
        # Fewer history items than factors: by the Woodbury identity, with G = λI + YᵀY, P = G⁻¹Yₖᵀ and
        # D = Cₖ − I, A⁻¹YₖᵀCₖ = P (D⁻¹ + YₖP)⁻¹ D⁻¹Cₖ: a k × k inverse with its columns scaled by D⁻¹Cₖ in place
        # of the factors × factors solve (the same terms, to rounding: tests; 3× less time at 64 factors and
        # 20 events; one LAPACK call and no diagonal matrix built, bench/PERFORMANCE.md).
        p = self.inverse_gramian @ y.T
        m = y @ p
        m.flat[::len(m) + 1] += 1.0 / extra  # the diagonal
        scaled = np.linalg.inv(m)
        scaled *= confidence / extra
        return p @ scaled

    @property
    def inverse_gramian(self) -> np.ndarray:
        inverse = self._inverse_gramian
        if inverse is None:  # two threads may both compute it; either result is the same
            inverse = self._inverse_gramian = np.linalg.inv(self.regularized_gramian)
        return inverse

    @staticmethod
    def user_vector(terms: np.ndarray) -> np.ndarray:
        """The float32[factors] vector of the shopper whose `fold_in_terms` these are: the sum of its terms."""
        return terms.sum(axis=1).astype(np.float32)

    def fold_in_user_vector(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The shopper's float32[factors] vector (see `fold_in_terms`)."""
        return self.user_vector(self.fold_in_terms(rows, weights))

    def explain(self, rows: np.ndarray, terms: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """For each candidate row, the history row that contributed most to its score.

        score_j = y_jᵀ A⁻¹ Σₖ cₖ yₖ splits exactly into per-history-item terms y_jᵀ A⁻¹ cₖ yₖ.
        Returns int[len(candidates)] of history rows.
        """
        contributions = self.factors[candidates].astype(np.float64) @ terms  # candidates × k
        return rows[np.argmax(contributions, axis=1)]

    def personalized_scores(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Every item's score for the shopper with these history rows and weights: a fresh float32[n_items]."""
        return self.factors @ self.fold_in_user_vector(rows, weights)

    def related_scores(self, seed_rows: Sequence[int]) -> np.ndarray:
        """Each item's best cosine to any seed: a fresh float32[n_items].

        cos(i, s) = (factors[i] · unit[s]) / |factors[i]|, and the maximum over seeds commutes with the
        positive 1 / |factors[i]|, so the seeds' unit rows are scored against the factors themselves.
        """
        scores = self._max_over_seeds(self.unit_rows(seed_rows))
        scores *= self.inverse_norms
        return scores

    def related_parts(self, seed_rows: Sequence[int], columns: Sequence[int]) -> np.ndarray:
        """Cosine of each of `columns` to each seed: float32[seeds, columns] (for `best_rows`)."""
        return self.unit_rows(seed_rows) @ self.unit_rows(columns).T

    def complementary_scores(self, cart_rows: Sequence[int]) -> np.ndarray:
        """Each item's complementary score to the cart: a fresh float32[n_items].

        Cart item i trusts its co-purchase list by β = orders_i / (orders_i + COPURCHASE_SHRINK) and
        factor similarity by 1 − β; an item's score sums both over the cart. The factor part is
        Σᵢ (1 − βᵢ)·cos(item, i) = (factors · Σᵢ (1 − βᵢ)·unitᵢ) / |factors|: one matrix-vector product for
        the whole cart, where cutting each cart item's negative cosines at 0 would take a (cart × f)(f × n)
        product, 2.2× the time with one BLAS thread (bench/PERFORMANCE.md).
        """
        rows, beta = self._cart(cart_rows)
        scores = self.factors @ ((1.0 - beta) @ self.unit_rows(rows))
        scores *= self.inverse_norms
        for position, row in enumerate(rows):
            if beta[position] > 0:
                neighbors, together = self.copurchase.of(row)
                scores[neighbors] += beta[position] * together  # a row's neighbours are distinct
        return scores

    def complementary_parts(self, cart_rows: Sequence[int], columns: Sequence[int]) -> np.ndarray:
        """Each cart item's term of each of `columns`' complementary score: float32[cart, columns]."""
        rows, beta = self._cart(cart_rows)
        columns = np.asarray(columns, dtype=np.int64)
        parts = (self.unit_rows(rows) @ self.unit_rows(columns).T) * (1.0 - beta)[:, None]
        where: dict[int, list[int]] = {}  # column row -> its positions in `columns` (a row may repeat)
        for position, column in enumerate(columns.tolist()):
            where.setdefault(column, []).append(position)
        for position, row in enumerate(rows.tolist()):
            if beta[position] > 0:
                neighbors, together = self.copurchase.of(row)
                for neighbor, score in zip(neighbors.tolist(), (beta[position] * together).tolist()):
                    for at in where.get(neighbor, ()):
                        parts[position, at] += score
        return parts

    def _cart(self, cart_rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(cart_rows, dtype=np.int64)
        orders = self.copurchase_orders[rows].astype(np.float32)
        return rows, orders / (orders + COPURCHASE_SHRINK)

    def _max_over_seeds(self, seeds: np.ndarray) -> np.ndarray:
        """max over the seeds of factors · seed: a fresh float32[n_items], one matrix-vector product per seed.

        Over column-major factors each product streams the columns once; a (n_items × seeds) product
        followed by a maximum across its rows took 2.5× as long at 3 seeds (bench/PERFORMANCE.md).
        """
        scores = self.factors @ seeds[0]
        if len(seeds) > 1:
            other = np.empty_like(scores)
            for seed in seeds[1:]:
                np.matmul(self.factors, seed, out=other)
                np.maximum(scores, other, out=scores)
        return scores

    @staticmethod
    def best_rows(parts: np.ndarray, part_rows: Sequence[int]) -> list[int]:
        """For each column of `parts` (seeds or cart items × returned items), the seed or cart item that gave most."""
        if not parts.shape[1]:
            return []
        return [int(part_rows[i]) for i in np.argmax(parts, axis=0)]

    def top_rows(self, scores: np.ndarray, n: int, blocked: np.ndarray | None = None,
                 also: np.ndarray | None = None) -> list[int]:
        """The n best rows by score, best first (ties by row), without blocked rows (bool mask) and `also`'s rows.

        `scores` must be the caller's own fresh array: it may be changed in place.
        """
        return top_rows(scores, n, blocked, also)

    def popular_ranking(self, blocked: np.ndarray | None = None) -> np.ndarray:
        """Rows by popularity, most popular first (ties by row), without the blocked ones (bool mask)."""
        return self.popular_rows if blocked is None else self.popular_rows[~blocked[self.popular_rows]]

    def popular_rows_allowed(self, n: int, blocked: np.ndarray | None = None,
                             also: np.ndarray | None = None) -> list[int]:
        """The n most popular rows without blocked ones (bool mask) and those `also` lists."""
        rows = self.popular_ranking(blocked)
        skip = set() if also is None else set(np.asarray(also).tolist())
        return [int(r) for r in rows[:n + len(skip)] if int(r) not in skip][:n]


# Artifact reads side by side (`_LoadGate`): while those in flight and the next sum to at most this many bytes, or
# the next is at most 1/PAST_SMALLEST_SHARE of the smallest in flight. The rest wait their turn: on two cores, loads of
# like size that run together all end late (six 200k-item shops from a local folder: 171 ms on average to their
# models all together, 97 one after the other; `python -m bench.first_load_probe`), and each holds its artifact's
# bytes and its half-built model meanwhile.
LOADS_TOGETHER_BYTES = 32 * 2**20
PAST_SMALLEST_SHARE = 4


THRASH_SECONDS = 60.0  # a model loaded again this soon after it was let go is logged as a warning (once a minute)


def release_freed_memory() -> None:
    """Hand freed pages back to the system: glibc keeps freed memory of this size for the process (measured: ten
    100k-item models loaded, nine let go, 127 MiB resident after, 68 with this; the training job's read of 1M events,
    229 → 176 MiB, and the gate's peak after it 398 → 365)."""
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class _LoadGate:
    """Admits model loads (first loads and refreshes) by their artifacts' sizes: small loads go side by side, a
    small shop's load goes past a big one's (its first shopper does not wait for the big download), and big ones
    take turns. Artifact bytes in flight stay under 4/3 × max(LOADS_TOGETHER_BYTES, the largest of them)."""

    def __init__(self, together_bytes: int | None = None, past_share: int | None = None):
        self._together = LOADS_TOGETHER_BYTES if together_bytes is None else together_bytes
        self._past_share = PAST_SMALLEST_SHARE if past_share is None else past_share
        self._running: list[int] = []
        self._changed = threading.Condition()

    def _admits(self, size: int) -> bool:
        running = self._running
        return (not running or sum(running) + size <= self._together
                or size * self._past_share <= min(running))

    @contextlib.contextmanager
    def turn(self, size: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self._admits(size))
            self._running.append(size)
        try:
            yield
        finally:
            with self._changed:
                self._running.remove(size)
                self._changed.notify_all()


class _FirstLoad:
    """The outcome of a first load begun by `ModelHolder.load_soon`: set once by its thread, waited for by a request
    (concurrent.futures would cost every cold start its import)."""

    def __init__(self):
        self._done = threading.Event()
        self._model: ServingModel | None = None
        self._error: BaseException | None = None
        self.abandoned = False  # no request took it (`ModelHolder.forget_soon`); under the holder's `_soon_lock`

    def end(self, model: ServingModel | None = None, error: BaseException | None = None) -> None:
        self._model, self._error = model, error
        self._done.set()

    def model_if_done(self) -> ServingModel | None:
        return self._model if self._done.is_set() else None

    def wait(self, timeout: float) -> bool:
        """Whether it has ended, within `timeout` seconds."""
        return self._done.wait(timeout)

    def result(self) -> ServingModel:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._model


class ModelHolder:
    """Each shop's latest artifact, loaded once per instance and swapped when `latest` moves.

    `get` serves the model in memory. At most every `refresh_seconds` per shop, the request that
    finds a check due hands it to the holder's own thread (one check per shop at a time) and is
    answered at once by the model in memory: no shopper waits for the model store's pointer, nor
    for a new version's download and parse. A new version is loaded and verified off to the side
    and swapped in with one assignment, so a request sees the old model or the new one, never a
    mix; the requests after the swap get the new one. An artifact that fails its checksum or does
    not parse is refused, logged, and the last good model keeps serving. Only a shop's first
    load, with no model to answer from yet, runs on the request; it waits for no other shop's.

    With `memory_budget` (bytes; MODEL_MEMORY_MIB), the models kept stay within it: before a load, and again once
    its model is in, the models of the shops asked for least recently are let go (their next request loads
    again), never the one being loaded; an instance serving many shops holds those it is asked for most.
    """

    def __init__(self, model_store: ModelStore, refresh_seconds: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, preloaded: dict[str, ServingModel] | None = None,
                 memory_budget: int | None = None):
        self._model_store = model_store
        self._budget = memory_budget
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._models: dict[str, ServingModel] = dict(preloaded or {})  # loaded at start-up (recommender.preload)
        self._ticks = itertools.count()
        # with a budget: each shop's place in the order of the last `get`s (or of its model's coming in)
        self._asked: dict[str, int] = {shop: next(self._ticks) for shop in self._models}
        self._room_lock = threading.Lock()  # making room, and a refresh's swap, one at a time
        self._let_go_at: dict[str, float] = {}  # when each shop's model was last let go, until it loads again
        self._warned_at = -THRASH_SECONDS
        self._checked_at: dict[str, float] = {shop: clock() for shop in self._models}
        self._tokens: dict[str, str] = {}  # the pointer's change token when each shop's model was found
        # one first load per shop at a time; a shop's first load does not wait for another shop's to end, only for
        # its turn at the gate (a small shop's first shopper went behind a big shop's whole load: bench.first_load_probe)
        self._first_loads: dict[str, threading.Lock] = {}
        self._gate = _LoadGate()
        # `load_soon`: each shop's first load begun on a thread of its own, until a `get` takes its outcome
        self._soon_lock = threading.Lock()
        self._soon: dict[str, _FirstLoad] = {}
        self._refreshing: dict[str, threading.Lock] = {}
        # Due checks go to one thread of the holder's own, started with the first, which keeps its connection to the
        # model store from one check to the next (a thread per check would open a new one, with TLS, each time).
        # It holds the holder weakly, and ends once the holder is gone: a process that makes several holders
        # (tests, benchmarks) keeps none of them, nor their models, alive through it.
        self._due: queue.SimpleQueue[tuple[str, ServingModel, threading.Lock]] = queue.SimpleQueue()
        self._checker: threading.Thread | None = None
        self._pending = 0  # checks asked for and not finished (`settle` waits for none)
        self._idle = threading.Condition()

    def get(self, shop: str) -> ServingModel:
        if self._budget is not None:
            self._asked[shop] = next(self._ticks)
        if self._soon:
            with self._soon_lock:
                begun = self._soon.pop(shop, None)
            if begun is not None:  # `load_soon`'s load: its model, or its error, once
                return begun.result()
        model = self.in_memory(shop)
        if model is None:
            with self._first_lock(shop):
                model = self._models.get(shop)
                if model is None:
                    return self._load_first(shop)
        return model

    def _first_lock(self, shop: str) -> threading.Lock:
        lock = self._first_loads.get(shop)
        return lock if lock is not None else self._first_loads.setdefault(shop, threading.Lock())  # atomic: one wins

    def in_memory(self, shop: str, refresh: bool = True) -> ServingModel | None:
        """The shop's model if this instance has loaded it, else None: never a read of the model store. With
        `refresh`, the model's refresh check is started if it is due."""
        model = self._models.get(shop)
        if model is None or not refresh:
            return model
        if self._budget is not None:  # an answer served from the instance's cache: the shop was asked for
            self._asked[shop] = next(self._ticks)
        if self._clock() - self._checked_at.get(shop, 0.0) >= self._refresh_seconds:
            lock = self._refreshing.setdefault(shop, threading.Lock())
            if lock.acquire(blocking=False):  # one check per shop at a time; every request keeps being answered
                self._checked_at[shop] = self._clock()
                self._start_check(shop, model, lock)
        return model

    def load_soon(self, shop: str) -> None:
        """Begin `shop`'s first load on a thread of its own, so that it runs beside what the request does before it
        needs the model (opening the event store and checking the shop: with PostgreSQL a connection and round
        trips, during which the thread has the CPU; bench/PERFORMANCE.md, round 30). The next `get` takes its
        outcome, the model or the error, and does not load again. Nothing when the model is in memory or on its
        way."""
        with self._soon_lock:
            if shop in self._models or shop in self._soon:
                return
            outcome = _FirstLoad()
            self._soon[shop] = outcome

        def load() -> None:
            try:
                with self._first_lock(shop):
                    model = self._models.get(shop)
                    if model is None:
                        model = self._load_first(shop)
            except BaseException as exc:  # the request's `get` raises it, as its own load would have
                outcome.end(error=exc)
            else:
                outcome.end(model=model)
                with self._soon_lock:
                    if outcome.abandoned:
                        self._drop(shop, model)

        try:
            threading.Thread(target=load, name="model-first-load", daemon=True).start()
        except Exception:  # no thread to be had: the load runs here, on the request, as it would without
            load()

    def model_within(self, shop: str, seconds: float) -> ServingModel | None:
        """The shop's model if it is in memory, or if its first load (begun here unless begun) ends within `seconds`:
        then its model, or its error, as `get` gives them. None if it has not ended by then: it goes on, and a later
        request takes it. For an answer that can do without the model (trending): with the model store hanging, each
        waited for the load's every attempt to time out (a minute) and queued behind it."""
        model = self.in_memory(shop)
        if model is not None:
            return model
        self.load_soon(shop)
        with self._soon_lock:
            begun = self._soon.get(shop)
        if begun is not None and not begun.wait(seconds):
            with self._soon_lock:  # left to run on its own: the request's `forget_soon` must not abandon it, and
                if self._soon.get(shop) is begun:  # the model it brings stays for the next requests
                    del self._soon[shop]
            return None
        return self.get(shop)

    def forget_soon(self, shop: str) -> None:
        """The load `load_soon` began for `shop`, if no `get` took its outcome (the request ended before it needed the
        model: a shop not installed, the event store out of reach), is forgotten, and its model too once loaded: the
        shop's next request finds what the model store holds then, as if no load had begun."""
        if not self._soon:
            return
        with self._soon_lock:
            outcome = self._soon.pop(shop, None)
            if outcome is None:
                return
            outcome.abandoned = True
            model = outcome.model_if_done()
            if model is not None:
                self._drop(shop, model)

    def _drop(self, shop: str, model: ServingModel) -> None:
        if self._models.get(shop) is model:
            self._models.pop(shop, None)
            self._tokens.pop(shop, None)
            self._checked_at.pop(shop, None)

    def _make_room(self, keep: str, incoming: int = 0) -> bool:
        """Let go of the least recently asked shops' models (never `keep`'s) until those kept, with `incoming` more
        bytes, fit the budget; True if any went."""
        if self._budget is None:
            return False
        let_go = []
        with self._room_lock:
            models = dict(self._models)
            sizes = {shop: model.full_nbytes for shop, model in models.items()}
            total = sum(sizes.values()) + incoming
            for shop in sorted(models, key=lambda name: self._asked.get(name, -1)):
                if total <= self._budget:
                    break
                if shop != keep:
                    self._drop(shop, models[shop])
                    self._let_go_at[shop] = self._clock()
                    total -= sizes[shop]
                    let_go.append(f"{shop} ({sizes[shop] / 2**20:.1f} MiB)")
        if let_go:
            log.info("models let go to stay within MODEL_MEMORY_MIB (%.0f MiB) for %s: %s",
                     self._budget / 2**20, keep, ", ".join(let_go))
        return bool(let_go)

    def _warn_if_loaded_again(self, shop: str) -> None:
        """A model let go and asked for again within THRASH_SECONDS: the bound holds fewer models than the shops being
        asked for, and each answer may pay a load. Said at most once a THRASH_SECONDS per instance."""
        now = self._clock()
        went = self._let_go_at.pop(shop, None)
        if went is None or now - went >= THRASH_SECONDS or now - self._warned_at < THRASH_SECONDS:
            return
        self._warned_at = now
        log.warning("model for %s loaded again %.1f s after it was let go: MODEL_MEMORY_MIB (%.0f MiB) holds fewer"
                    " models than the shops asking for them; raise it (and the function's memory) or expect a load on"
                    " many answers", shop, now - went, self._budget / 2**20)

    def _start_check(self, shop: str, current: ServingModel, lock: threading.Lock) -> None:
        with self._idle:
            if self._checker is None or not self._checker.is_alive():
                checker = threading.Thread(target=_check_forever, args=(weakref.ref(self), self._due),
                                           name="model-refresh", daemon=True)
                try:
                    checker.start()
                except RuntimeError:  # no thread to be had (the interpreter is shutting down): the next check tries again
                    lock.release()
                    return
                self._checker = checker
            self._pending += 1
        self._due.put((shop, weakref.ref(current), lock))  # weakly: a check waiting its turn keeps no model let go

    def _check(self, shop: str, asked: "weakref.ReferenceType[ServingModel]", lock: threading.Lock) -> bool:
        """The refresh check of the model `asked` was for (nothing if it has been let go since); True if a model
        was replaced, dropped or let go, whose pages the caller hands back once it holds the model no more."""
        current = asked()
        version = current.version if current is not None else None
        try:
            return current is not None and self._refresh(shop, current)
        except Exception:  # anything unexpected: logged, and the model in memory keeps serving
            log.exception("model refresh for %s failed, still serving %s", shop, version)
            return False
        finally:
            lock.release()
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until the refresh checks asked for so far (and any swap they make) are done; False on `timeout`."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def _load_first(self, shop: str) -> ServingModel:
        manifest = self._model_store.latest(shop)
        self._checked_at[shop] = self._clock()
        if manifest is None:
            raise ModelNotReady(
                f"no model has been trained for {shop} yet: run `python -m recommender train --shop {shop}`"
                " or POST /train"
            )
        model, made_room = self._load_in_room(shop, manifest)
        if self._budget is not None:  # as if asked now: a load begun by `load_soon` is asked for once its request gets here
            self._asked[shop] = next(self._ticks)
            self._warn_if_loaded_again(shop)
        self._models[shop] = model
        self._tokens[shop] = manifest.change_token
        self._kept_in_room(shop, made_room)
        return model

    def _load_in_room(self, shop: str, manifest: Manifest) -> tuple[ServingModel, bool]:
        """The manifest's model, loaded once room is made for it (MODEL_MEMORY_MIB) and its turn at the gate comes;
        and whether models were let go for it."""
        made_room = self._make_room(shop, MEMORY_PER_ARTIFACT_BYTE * manifest.size)
        with self._gate.turn(manifest.size):
            return ServingModel(self._model_store.load(manifest)), made_room

    def _kept_in_room(self, shop: str, made_room: bool) -> None:
        """Once the shop's new model is in: the bound by exact count, and the pages of the models let go handed back."""
        if self._make_room(shop) or made_room:
            release_freed_memory()

    def _refresh(self, shop: str, current: ServingModel) -> bool:
        """Runs on the holder's checking thread. When `latest` has not moved since the current model was found, that is
        one look at the pointer's change token (on gs://, one request, where reading `latest` takes two). True if a
        model was replaced, dropped or let go (its pages are handed back by the caller, once `current` is let go
        too: handed back here, the replaced model's were still held)."""
        try:
            if self._models.get(shop) is not current:  # let go since the check was asked for: nothing to refresh
                return False
            known = self._tokens.get(shop)
            if known and self._model_store.pointer_token(shop) == known:
                return False
            manifest = self._model_store.latest(shop)
            if manifest is None:  # the shop's models were deleted (shop/redact): this one is served no more
                if self._models.get(shop) is current:
                    self._drop(shop, current)
                    log.info("model for %s gone from the model store: %s no longer served", shop, current.version)
                    return True
                return False
            if manifest.version == current.version:
                self._tokens[shop] = manifest.change_token
                return False
            if self._models.get(shop) is not current:
                return False
            fresh, made_room = self._load_in_room(shop, manifest)
        except ArtifactError as exc:
            log.error("model refresh for %s refused, still serving %s: %s", shop, current.version, exc)
            return False
        with self._room_lock:
            if self._models.get(shop) is not current:  # let go meanwhile (MODEL_MEMORY_MIB, shop/redact): not brought back
                return True  # nor the fresh one kept
            self._models[shop] = fresh
            self._tokens[shop] = manifest.change_token
        log.info("model for %s swapped: %s -> %s", shop, current.version, fresh.version)
        self._make_room(shop)  # the bound by exact count; the pages of what went are handed back by the caller
        return True
