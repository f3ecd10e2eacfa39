"""Interaction rows for offline evaluation: loading, signal engineering and train/test splits.

An `Interactions` holds one row per event as numpy arrays over a fixed index space
(`user_ids`, `item_ids`), so a split's train and test halves index the same users and
items. Sources: the event store (`from_store`), CSV/TSV files (`read_interaction_files`)
and the public data sets in `recommender.datasets`.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from recommender.errors import RecommenderError
from recommender.events import parse_timestamp
from recommender.settings import DEFAULT_EVENT_WEIGHTS
from recommender.store import Interaction

DAY = 86_400.0
WEIGHTINGS = ("none", "bm25", "tfidf")
PURCHASE = "purchase"


class EvaluationError(RecommenderError):
    """Offline evaluation cannot run as asked; the message says what to change."""


class InteractionFileError(EvaluationError):
    """An interaction file cannot be read; the message names the file and the line."""


@dataclass(frozen=True, eq=False)
class Interactions:
    """Event rows over a fixed index space.

    users, items: int64[n] indices into user_ids / item_ids
    weights:      float32[n] the row's own weight (1 where the source has none)
    timestamps:   float64[n] seconds since the epoch, or None when the source has no time
    kinds:        str[n] event kind ("view", "add_to_cart", "purchase", ...), or None
    """

    users: np.ndarray
    items: np.ndarray
    weights: np.ndarray
    timestamps: np.ndarray | None
    kinds: np.ndarray | None
    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.users)
        for name in ("items", "weights", "timestamps", "kinds"):
            column = getattr(self, name)
            assert column is None or len(column) == n, f"{name} has {len(column)} rows, users has {n}"
        assert n == 0 or (self.users.max() < len(self.user_ids) and self.items.max() < len(self.item_ids))

    @classmethod
    def from_columns(cls, users: Sequence[str], items: Sequence[str], weights: Sequence[float] | None = None,
                     timestamps: Sequence[float] | None = None, kinds: Sequence[str] | None = None) -> "Interactions":
        """Index string ids in first-seen order."""
        user_ids, user_rows = _index(users)
        item_ids, item_rows = _index(items)
        n = len(user_rows)
        return cls(
            users=user_rows,
            items=item_rows,
            weights=np.ones(n, np.float32) if weights is None else np.asarray(weights, dtype=np.float32),
            timestamps=None if timestamps is None else np.asarray(timestamps, dtype=np.float64),
            kinds=None if kinds is None else np.asarray(kinds, dtype=object),
            user_ids=user_ids,
            item_ids=item_ids,
        )

    @classmethod
    def from_store(cls, events: Iterable[Interaction]) -> "Interactions":
        """The event store's rows (`store.interactions(shop)`): kind and time kept, weighed by what
        still counts of each event (its weight_factor: below 1 after a partial refund)."""
        events = list(events)
        return cls.from_columns(
            [e.user_key for e in events], [e.product_id for e in events],
            weights=[e.weight_factor for e in events],
            timestamps=[e.occurred_at.timestamp() for e in events], kinds=[e.kind.value for e in events],
        )

    def __len__(self) -> int:
        return len(self.users)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def select(self, rows: np.ndarray | slice) -> "Interactions":
        """The rows picked by a boolean mask or an index array (copies), or a slice (views), in the same index space."""
        return dataclasses.replace(
            self, users=self.users[rows], items=self.items[rows], weights=self.weights[rows],
            timestamps=None if self.timestamps is None else self.timestamps[rows],
            kinds=None if self.kinds is None else self.kinds[rows],
        )

    def binary_matrix(self) -> sp.csr_matrix:
        """users × items, 1.0 wherever the user has any row for the item (whatever its kind or weight)."""
        matrix = sp.csr_matrix((np.ones(len(self), np.float32), (self.users, self.items)),
                               shape=(self.n_users, self.n_items))
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return matrix


def _index(ids: Sequence[str]) -> tuple[tuple[str, ...], np.ndarray]:
    index: dict[str, int] = {}
    rows = np.fromiter((index.setdefault(str(i), len(index)) for i in ids), dtype=np.int64, count=len(ids))
    return tuple(index), rows


# --- files -----------------------------------------------------------------------------------------

FILE_COLUMNS = {  # canonical column → accepted header names (lower case)
    "user": ("user", "user_id", "customer_id"),
    "item": ("item", "item_id", "product_id"),
    "weight": ("weight", "rating", "quantity"),
    "timestamp": ("timestamp", "occurred_at", "time"),
    "kind": ("kind",),
}


def read_interaction_rows(path: str | Path) -> dict[str, list]:
    """Read one CSV/TSV file of interactions into columns.

    Header row required; the delimiter (comma, tab, semicolon or pipe) is sniffed. Columns:
    `user` and `item` (required); `weight` (a number, default 1); `timestamp` (seconds since
    the epoch or ISO 8601, UTC when no offset); `kind` (view, add_to_cart, purchase or any other
    name given a weight). Aliases: user_id/customer_id, item_id/product_id, rating/quantity,
    occurred_at/time.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InteractionFileError(f"{path}: cannot read: {exc}") from None
    lines = text.splitlines()
    if not lines:
        raise InteractionFileError(
            f"{path}: the file is empty; expected a header row user,item[,weight,timestamp,kind]")
    try:
        dialect = csv.Sniffer().sniff("\n".join(lines[:20]), delimiters=",\t;|")
        delimiter = dialect.delimiter
    except csv.Error:
        delimiter = ","  # a one-column-looking sample: fall back to commas and let the header check speak
    reader = csv.reader(lines, delimiter=delimiter)
    header = [h.strip().lower() for h in next(reader)]
    positions: dict[str, int] = {}
    for column, names in FILE_COLUMNS.items():
        found = [i for i, h in enumerate(header) if h in names]
        if len(found) > 1:
            raise InteractionFileError(f"{path}: more than one column means {column!r}: {[header[i] for i in found]}")
        if found:
            positions[column] = found[0]
    missing = [c for c in ("user", "item") if c not in positions]
    if missing:
        raise InteractionFileError(
            f"{path}: the header {header} lacks {', '.join(missing)}; expected user,item[,weight][,timestamp][,kind]")
    columns: dict[str, list] = {c: [] for c in positions}
    for line, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise InteractionFileError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
        values = {c: row[i].strip() for c, i in positions.items()}
        if not values["user"] or not values["item"]:
            raise InteractionFileError(f"{path}:{line}: user and item are required")
        columns["user"].append(values["user"])
        columns["item"].append(values["item"])
        if "weight" in positions:
            columns["weight"].append(_parse_weight(values["weight"], path, line))
        if "timestamp" in positions:
            columns["timestamp"].append(_parse_time(values["timestamp"], path, line))
        if "kind" in positions:
            columns["kind"].append(values["kind"])
    if not columns["user"]:
        raise InteractionFileError(f"{path}: no rows after the header")
    return columns


def _parse_weight(text: str, path: Path, line: int) -> float:
    try:
        value = float(text) if text else 1.0
    except ValueError:
        raise InteractionFileError(f"{path}:{line}: weight must be a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise InteractionFileError(f"{path}:{line}: weight must be a finite number >= 0, got {text!r}")
    return value


def _parse_time(text: str, path: Path, line: int) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return parse_timestamp(text, "timestamp").timestamp()
    except RecommenderError:
        raise InteractionFileError(
            f"{path}:{line}: timestamp must be seconds since the epoch or ISO 8601, got {text!r}") from None


def read_interaction_files(train_path: str | Path, test_path: str | Path) -> tuple[Interactions, Interactions]:
    """Both files over one index space (train ids first). Optional columns must be in both or neither."""
    train_columns, test_columns = read_interaction_rows(train_path), read_interaction_rows(test_path)
    optional = ("weight", "timestamp", "kind")
    for column in optional:
        if (column in train_columns) != (column in test_columns):
            raise InteractionFileError(
                f"column {column!r} is in {'the train' if column in train_columns else 'the test'} file only; "
                "give it in both files or neither")
    n_train = len(train_columns["user"])
    joined = {c: train_columns[c] + test_columns[c] for c in train_columns}
    data = Interactions.from_columns(joined["user"], joined["item"], joined.get("weight"),
                                     joined.get("timestamp"), joined.get("kind"))
    is_train = np.arange(len(data)) < n_train
    return data.select(is_train), data.select(~is_train)


# --- signal engineering ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SignalConfig:
    """How event rows become the users × items matrix every model is fitted on."""

    # weight per event kind; rows without a kind count their own weight, kinds missing here count 0
    event_weights: Mapping[str, float] = field(
        default_factory=lambda: {kind.value: w for kind, w in DEFAULT_EVENT_WEIGHTS.items()})
    # time decay: an event this many days older than the end of training counts half (None: no decay)
    half_life_days: float | None = None
    # "bm25" or "tfidf" reweighting of the summed matrix (implicit.nearest_neighbours), "none" to keep sums
    weighting: str = "none"
    bm25_k1: float = 100.0  # BM25 saturation: higher lets repeated events keep adding weight
    bm25_b: float = 0.8  # BM25 length normalisation: 1 fully normalises heavy users, 0 not at all
    # "buy it again": keep a user's past items in their ranking, and score re-buys as hits
    repeat_purchase: bool = False

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise EvaluationError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        if self.half_life_days is not None and not self.half_life_days > 0:
            raise EvaluationError(f"half_life_days must be > 0, got {self.half_life_days}")
        if any(not w >= 0 for w in self.event_weights.values()):
            raise EvaluationError(f"event weights must be >= 0, got {dict(self.event_weights)}")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "event_weights": dict(self.event_weights)}


def row_weights(data: Interactions, signal: SignalConfig, reference_time: float | None = None,
                half_life_days: float | None = None) -> np.ndarray:
    """float64[n]: each row's weight × its kind's weight × 0.5 ** (age / half-life)."""
    weights = data.weights.astype(np.float64)
    if data.kinds is not None:
        lookup = {kind: float(w) for kind, w in signal.event_weights.items()}
        weights = weights * np.fromiter((lookup.get(k, 0.0) for k in data.kinds), dtype=np.float64, count=len(data))
    half_life = signal.half_life_days if half_life_days is None else half_life_days
    if half_life is not None:
        if data.timestamps is None:
            raise EvaluationError("time decay needs timestamps, and these interactions have none")
        now = reference_time if reference_time is not None else float(data.timestamps.max(initial=0.0))
        age_days = np.maximum(now - data.timestamps, 0.0) / DAY
        weights = weights * np.exp2(-age_days / half_life)
    return weights


def build_signal_matrix(data: Interactions, signal: SignalConfig, reference_time: float | None = None) -> sp.csr_matrix:
    """users × items float32 CSR of engineered weights: summed row weights, then BM25/TF-IDF if asked.

    Rows whose weight is 0 (a kind weighted 0) are dropped, so they are not interactions at all.
    """
    weights = row_weights(data, signal, reference_time)
    keep = weights > 0
    matrix = sp.csr_matrix((weights[keep], (data.users[keep], data.items[keep])),
                           shape=(data.n_users, data.n_items), dtype=np.float64)
    matrix.sum_duplicates()
    if signal.weighting != "none" and matrix.nnz:
        from implicit.nearest_neighbours import bm25_weight, tfidf_weight

        # implicit weighs items × users (an item is a "document" of the users who touched it).
        item_users = matrix.T.tocsr()
        weighted = (bm25_weight(item_users, K1=signal.bm25_k1, B=signal.bm25_b) if signal.weighting == "bm25"
                    else tfidf_weight(item_users))
        matrix = sp.csr_matrix(weighted.T)
        matrix.sum_duplicates()
        # The IDF term is <= 0 for a user who touched nearly every item; keep the entry, barely.
        np.maximum(matrix.data, 1e-6, out=matrix.data)
    matrix.sort_indices()
    return matrix.astype(np.float32)


# --- splits ----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Split:
    """A train/test pair over one index space; `reference_time` is the end of training (seconds) or None."""

    train: Interactions
    test: Interactions
    protocol: "SplitProtocol"
    description: str
    reference_time: float | None

    def summary(self) -> dict:
        return {
            "protocol": self.protocol.to_dict(),
            "description": self.description,
            "users": self.train.n_users,
            "items": self.train.n_items,
            "train_rows": len(self.train),
            "test_rows": len(self.test),
            "train_users": int(len(np.unique(self.train.users))),
            "test_users": int(len(np.unique(self.test.users))),
            "reference_time": None if self.reference_time is None else _iso(self.reference_time),
            "has_kinds": self.train.kinds is not None,
            "has_timestamps": self.train.timestamps is not None,
        }


SPLIT_KINDS = ("temporal", "last_order", "stratified", "files")


@dataclass(frozen=True)
class SplitProtocol:
    """How a data set is split, and how a validation split is carved from the training part."""

    kind: str  # temporal | last_order | stratified | files
    holdout_days: float | None = None  # temporal: the last N days are the test
    test_share: float = 0.25  # stratified: share of each group's rows that goes to the test
    stratify_by: str = "item"  # stratified: "item" (each item's rows split 75/25) or "user"
    seed: int = 42  # stratified: the shuffle within each group

    def __post_init__(self) -> None:
        if self.kind not in SPLIT_KINDS:
            raise EvaluationError(f"split kind must be one of {', '.join(SPLIT_KINDS)}, got {self.kind!r}")
        if self.kind == "temporal" and not (self.holdout_days and self.holdout_days > 0):
            raise EvaluationError(f"a temporal split needs holdout_days > 0, got {self.holdout_days}")
        if not 0 < self.test_share < 1:
            raise EvaluationError(f"test_share must be between 0 and 1, got {self.test_share}")
        if self.stratify_by not in ("item", "user"):
            raise EvaluationError(f"stratify_by must be 'item' or 'user', got {self.stratify_by!r}")

    def split(self, data: Interactions) -> Split:
        if self.kind == "temporal":
            return temporal_split(data, self.holdout_days)
        if self.kind == "last_order":
            return last_order_split(data)
        if self.kind == "stratified":
            return stratified_split(data, self.test_share, self.stratify_by, self.seed)
        raise EvaluationError("a files split comes from two files (read_interaction_files), not from one data set")

    def validation(self) -> "SplitProtocol":
        """The same kind of split applied again to the training rows (files: each user's rows 80/20)."""
        if self.kind == "files":
            return SplitProtocol("stratified", test_share=0.2, stratify_by="user", seed=self.seed + 1)
        if self.kind == "stratified":
            return dataclasses.replace(self, seed=self.seed + 1)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat(timespec="seconds")


def _drop_cold_test_users(train: Interactions, test: Interactions) -> Interactions:
    """Test rows of users with no training rows go: every model could only show them best sellers."""
    known = np.zeros(train.n_users, dtype=bool)
    known[train.users] = True
    return test.select(known[test.users])


def files_split(train: Interactions, test: Interactions, seed: int = 42) -> Split:
    """The explicit pair of files: test users without training rows are left out."""
    reference = None if train.timestamps is None or not len(train) else float(train.timestamps.max())
    return Split(train, _drop_cold_test_users(train, test), SplitProtocol("files", seed=seed),
                 "explicit train and test files", reference)


def temporal_split(data: Interactions, holdout_days: float) -> Split:
    """Rows in the last `holdout_days` before the newest row are the test; everything earlier trains."""
    if data.timestamps is None or not len(data):
        raise EvaluationError("a temporal split needs timestamps, and these interactions have none")
    boundary = float(data.timestamps.max()) - holdout_days * DAY
    is_test = data.timestamps >= boundary
    train = data.select(~is_test)
    if not len(train):
        raise EvaluationError(f"holding out the last {holdout_days:g} days leaves no training rows")
    test = _drop_cold_test_users(train, data.select(is_test))
    return Split(train, test, SplitProtocol("temporal", holdout_days=holdout_days),
                 f"rows from {_iso(boundary)} on (the last {holdout_days:g} days) held out", boundary)


def last_order_split(data: Interactions) -> Split:
    """Each user's last order is the test; their earlier rows train.

    An order is the user's purchase rows at one moment (an order's lines share its time; rows
    without kinds all count as purchases). Users with one order only stay wholly in training.
    A held-out user's other rows at or after their last order are dropped, so nothing of their
    future trains; other users' rows stay whatever their time (a per-user, not a global, cut).
    """
    if data.timestamps is None or not len(data):
        raise EvaluationError("a last-order split needs timestamps, and these interactions have none")
    is_purchase = np.ones(len(data), bool) if data.kinds is None else (data.kinds == PURCHASE)
    if not is_purchase.any():
        raise EvaluationError("a last-order split needs purchase rows, and there are none")
    last = np.full(data.n_users, -np.inf)
    np.maximum.at(last, data.users[is_purchase], data.timestamps[is_purchase])
    first_order = np.full(data.n_users, np.inf)
    np.minimum.at(first_order, data.users[is_purchase], data.timestamps[is_purchase])
    held_out = first_order < last  # at least two order moments
    user_last = last[data.users]
    in_held_out = held_out[data.users]
    is_test = in_held_out & is_purchase & (data.timestamps == user_last)
    is_future = in_held_out & ~is_test & (data.timestamps >= user_last)
    train = data.select(~is_test & ~is_future)
    test = data.select(is_test)
    reference = float(train.timestamps.max()) if len(train) else None
    return Split(train, test, SplitProtocol("last_order"),
                 f"each customer's last order held out ({int(held_out.sum())} customers with 2+ orders)", reference)


def stratified_split(data: Interactions, test_share: float = 0.25, by: str = "item", seed: int = 42) -> Split:
    """Within each item's (or user's) rows, a seeded random `test_share` goes to the test.

    A group of n rows keeps round(n·(1 − test_share)) rows in training, so a single row always trains.
    """
    if not len(data):
        raise EvaluationError("nothing to split: no interactions")
    groups = data.items if by == "item" else data.users
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(data)), groups))  # grouped, shuffled within each group
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    sizes = np.diff(np.r_[starts, len(data)])
    position = np.arange(len(data)) - np.repeat(starts, sizes)
    n_train = np.floor(sizes * (1.0 - test_share) + 0.5).astype(np.int64)
    is_test = np.zeros(len(data), bool)
    is_test[order] = position >= np.repeat(n_train, sizes)
    train = data.select(~is_test)
    test = _drop_cold_test_users(train, data.select(is_test))
    reference = float(train.timestamps.max()) if train.timestamps is not None and len(train) else None
    share = f"{1 - test_share:.0%}/{test_share:.0%}"
    return Split(train, test, SplitProtocol("stratified", test_share=test_share, stratify_by=by, seed=seed),
                 f"each {by}'s rows split {share} at random (seed {seed})", reference)
