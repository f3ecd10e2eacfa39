"""The model artifact: what a serving instance needs, in one small file, no pickle.

Layout (a zip of `.npy` arrays, recommender/array_archive.py; `ModelArtifact.from_bytes` reads it):
    format_version        int64 scalar
    item_id_deltas        int64[n_items]     Shopify-style ids (decimal integers), ascending: the first
                                             id, then each id minus the one before (small numbers: they
                                             compress). Rows are in id order, so a row is found by
                                             binary search and no per-id dictionary is built at load.
  or item_ids             str[n_items]       any other ids, in row order
    factor_columns_low    uint8[f, n_items]  the low byte of each float16 factor (mantissa bits that do not
                                             compress), one factor after another: stored as it is
    factor_columns_high_0 uint8[h, n_items]  the high byte (sign, exponent, top mantissa bits) of factors
    factor_columns_high_1 uint8[f-h, n_items]  [0, h) and [h, f), h = f // 2: compressed, and in two members
                                             so two threads decompress them at once
    gramian               float32[f, f]      Yᵀ Y of the float32-cast factors, for fold-in
    popularity            float32[n_items]   weighted interaction mass per item
    item_support          int32[n_items]     distinct shoppers per item (is there enough data?)
    copurchase_counts     int32[n_items]     co-purchase neighbours kept per item (≤ K)
    copurchase_neighbors  int32[Σ counts]    each item's neighbours, best first, one item after another
    copurchase_scores     float16[Σ counts]  their co-purchase scores (in [0, 1])
    copurchase_orders     int32[n_items]     orders holding the item
    regularization        float64 scalar     ALS λ, needed by fold-in
    alpha                 float64 scalar     confidence = 1 + alpha * weight
    metadata              str scalar         JSON: version, trained_at, hyperparameters, counts

The factors are float16 on disk, split into byte planes: the high bytes of normally distributed
factors hold about 5.5 bits of information and compress to ~0.69 of their size, the low bytes
not at all. So at 64 factors the whole file is under 2 bytes per item·factor, ids and co-purchase
lists included (bench/size.py measures it), and it is lossless: the float16 values are rebuilt
exactly, straight into the float32 matrix serving scores with (numpy's float16 matrix product is
~30× slower), each half as soon as its high bytes are decompressed. Every array but the low bytes
is compressed (Zstandard). The planes are stored factor by factor (format 5) because serving holds
the factors column-major (recommender/serving.py), so each half is rebuilt into one contiguous
stretch of memory. Since format 6 the per-item arrays (ids, popularity, support, co-purchase counts,
neighbours and orders: `BYTE_PLANES`) are stored as byte planes too, uint8[itemsize, length]: every
value's lowest byte, then every value's next byte, and so on (little-endian). Bytes of one rank
resemble each other (the high bytes of small numbers are zeros), which Zstandard compresses far better
than the bytes interleaved: beside the factors, 12.4 → 10.1 bytes per item on a trained model of 20k
items, which brings the shipped 32 factors under 2.1 bytes per item·factor (bench/PERFORMANCE.md).
Format 4 artifacts, whose planes `item_factors_low`, `item_factors_high_0` and `item_factors_high_1`
hold rows (uint8[n_items, f], split at n_items // 2), and format 5 artifacts, whose per-item arrays
are stored typed, are still read.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import sys
import threading
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from recommender.array_archive import read_arrays, write_arrays
from recommender.errors import ArtifactError

FORMAT_VERSION = 6
READABLE_FORMATS = (4, 5, 6)
_COLUMN_PLANES = ("factor_columns_low", "factor_columns_high_0", "factor_columns_high_1")  # format 5: uint8[f, n]
_ROW_PLANES = ("item_factors_low", "item_factors_high_0", "item_factors_high_1")  # format 4: uint8[n, f]
_COMMON = ("format_version", "gramian", "popularity", "regularization", "alpha", "metadata",
           "item_support", "copurchase_counts", "copurchase_neighbors", "copurchase_scores", "copurchase_orders")
# Format 6: these members are written as byte planes (module docstring), each of its values' type.
BYTE_PLANES = {"item_id_deltas": np.dtype("<i8"), "popularity": np.dtype("<f4"), "item_support": np.dtype("<i4"),
                "copurchase_counts": np.dtype("<i4"), "copurchase_neighbors": np.dtype("<i4"),
                "copurchase_orders": np.dtype("<i4")}
_STORED = {"factor_columns_low"}  # random bits: compressing them would not shrink them, only slow the load
_MAX_ID = np.iinfo(np.int64).max
_REBUILD_BLOCK_ELEMENTS = 1 << 18  # factors rebuilt per block: its uint32 temporaries (1 MiB) stay in cache


def _as_number(product_id: str) -> int | None:
    """The id as an int if it is a canonical positive decimal (what Shopify ids are), else None."""
    if not (product_id.isascii() and product_id.isdigit()) or product_id[0] == "0" or len(product_id) > 19:
        return None
    value = int(product_id)
    return value if value <= _MAX_ID else None


FOUND_PER_CALL = 256  # ItemIds.rows_array remembers the rows of calls for at most this many ids
FOUND_KEPT = 16_384  # and at most this many ids in all (~2 MB); past that it starts over


class ItemIds:
    """The model's product ids in row order, and the row of an id.

    Numeric ids are held as one ascending int64 array and found by binary search; any other ids
    as strings with a dictionary. Both answer the same questions. The rows a request looks up (its
    history, seeds, exclusions: a few dozen ids) are remembered once found: with the array out of
    cache, 20 binary searches over 100k ids and the ids' parsing cost ~40 µs, 20 dictionary hits ~2.
    """

    __slots__ = ("_numbers", "_strings", "_index", "_found", "_nbytes")

    def __init__(self, numbers: np.ndarray | None = None, strings: Sequence[str] | None = None):
        if (numbers is None) == (strings is None):
            raise ArtifactError("item ids need either numbers or strings")
        self._numbers = self._strings = self._index = None
        self._nbytes: int | None = None
        self._found: dict[str, int] = {}  # id -> row (−1: unknown) of the numeric ids looked up so far
        if numbers is not None:
            numbers = np.asarray(numbers, dtype=np.int64)
            if numbers.ndim != 1 or (len(numbers) and (numbers[0] <= 0 or not np.all(numbers[1:] > numbers[:-1]))):
                raise ArtifactError("numeric item ids must be positive and strictly ascending (no duplicates)")
            self._numbers = numbers
        else:
            self._strings = np.asarray(strings, dtype=str)
            if self._strings.ndim != 1:
                raise ArtifactError("item ids must be one-dimensional")
            self._index = {pid: row for row, pid in enumerate(self._strings.tolist())}
            if len(self._index) != len(self._strings):
                raise ArtifactError("item_ids contains duplicates")

    @property
    def numeric(self) -> bool:
        return self._numbers is not None

    @property
    def numbers(self) -> np.ndarray:
        if self._numbers is None:
            raise ArtifactError("these item ids are not numeric")
        return self._numbers

    @property
    def strings(self) -> np.ndarray:
        return self._numbers.astype(str) if self._strings is None else self._strings

    def __len__(self) -> int:
        return len(self._numbers) if self._numbers is not None else len(self._strings)

    @property
    def nbytes(self) -> int:
        """About what these ids take in memory: the array, and for string ids their dictionary, keys and rows (counted
        once)."""
        if self._nbytes is None:
            if self._numbers is not None:
                self._nbytes = self._numbers.nbytes
            else:
                self._nbytes = (self._strings.nbytes + sys.getsizeof(self._index)
                                + sum(sys.getsizeof(pid) + sys.getsizeof(row) for pid, row in self._index.items()))
        return self._nbytes

    def __getitem__(self, row: int) -> str:
        return str(int(self._numbers[row])) if self._numbers is not None else str(self._strings[row])

    def tolist(self) -> list[str]:
        return self.strings.tolist()

    def ids_of(self, rows: Sequence[int] | np.ndarray) -> list[str]:
        """The product ids of these rows, in order (one numpy gather, not a scalar per row)."""
        if self._numbers is not None:
            return [str(number) for number in self._numbers[np.asarray(rows, dtype=np.int64)].tolist()]
        return self._strings[np.asarray(rows, dtype=np.int64)].tolist()

    def row(self, product_id: str) -> int | None:
        if self._index is not None:
            return self._index.get(product_id)
        value = _as_number(product_id)
        if value is None:
            return None
        row = int(np.searchsorted(self._numbers, value))
        return row if row < len(self._numbers) and self._numbers[row] == value else None

    def rows_array(self, product_ids: Iterable[str]) -> np.ndarray:
        """int64 rows of the ids, in order, −1 where the model does not know the id."""
        ids = list(product_ids)
        if not ids:
            return np.empty(0, dtype=np.int64)
        if self._index is not None:
            get = self._index.get
            return np.array([get(pid, -1) for pid in ids], dtype=np.int64)
        if len(ids) > FOUND_PER_CALL:  # a catalog's worth (the "not for sale" mask): searched, not remembered
            return self._search(ids)
        found = self._found
        rows = [found.get(pid) for pid in ids]
        if None in rows:
            missing = [pid for pid, row in zip(ids, rows) if row is None]
            fresh = dict(zip(missing, self._search(missing).tolist()))
            if len(found) + len(fresh) > FOUND_KEPT:  # bounded: ids come from requests
                found.clear()
            found.update(fresh)
            rows = [fresh[pid] if row is None else row for pid, row in zip(ids, rows)]
        return np.array(rows, dtype=np.int64)

    def _search(self, ids: list[str]) -> np.ndarray:
        """rows_array for numeric ids, by binary search."""
        if not len(self._numbers):
            return np.full(len(ids), -1, dtype=np.int64)
        values = np.array([_as_number(pid) or 0 for pid in ids], dtype=np.int64)
        rows = np.searchsorted(self._numbers, values)
        np.minimum(rows, len(self._numbers) - 1, out=rows)  # an id above the largest: compared with the last
        found = (self._numbers[rows] == values) & (values > 0)
        return np.where(found, rows, -1)

    def rows_of(self, product_ids: Iterable[str]) -> list[int]:
        """Rows of the ids the model knows, in the given order, unknown ones dropped."""
        rows = self.rows_array(product_ids)
        return rows[rows >= 0].tolist()

    @classmethod
    def of(cls, product_ids: Sequence[str]) -> tuple["ItemIds", np.ndarray | None]:
        """Ids for a new artifact: (ids, the row permutation that sorts numeric ids, or None)."""
        numbers = [_as_number(str(pid)) for pid in product_ids]
        if numbers and all(value is not None for value in numbers):
            values = np.asarray(numbers, dtype=np.int64)
            order = np.argsort(values, kind="stable")
            return cls(numbers=values[order]), order
        return cls(strings=[str(pid) for pid in product_ids]), None


class CoPurchaseLists(NamedTuple):
    """Each item's co-purchase neighbours, best first: row i's are neighbors[indptr[i]:indptr[i + 1]]."""

    indptr: np.ndarray  # int64[n_items + 1]
    neighbors: np.ndarray  # int32[nnz]
    scores: np.ndarray  # float32[nnz]
    orders: np.ndarray  # int32[n_items]: orders holding the item

    @classmethod
    def empty(cls, n_items: int) -> "CoPurchaseLists":
        return cls(np.zeros(n_items + 1, dtype=np.int64), np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32),
                   np.zeros(n_items, dtype=np.int32))

    @classmethod
    def from_counts(cls, counts: np.ndarray, neighbors: np.ndarray, scores: np.ndarray,
                    orders: np.ndarray) -> "CoPurchaseLists":
        return cls(_offsets(counts), np.asarray(neighbors, dtype=np.int32), np.asarray(scores, dtype=np.float32),
                   np.asarray(orders, dtype=np.int32))

    def of(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.indptr[row], self.indptr[row + 1]
        return self.neighbors[start:end], self.scores[start:end]

    def validate(self, n_items: int) -> None:
        if self.orders.shape != (n_items,) or self.indptr.shape != (n_items + 1,):
            raise ArtifactError("co-purchase lists need one entry per item")
        ascending = np.all(self.indptr[1:] >= self.indptr[:-1])
        if self.indptr[0] != 0 or not ascending or self.indptr[-1] != len(self.neighbors):
            raise ArtifactError("co-purchase counts do not add up to the neighbours stored")
        if self.scores.shape != self.neighbors.shape:
            raise ArtifactError("copurchase_neighbors and copurchase_scores differ in length")
        if len(self.neighbors) and (self.neighbors.min() < 0 or self.neighbors.max() >= n_items):
            raise ArtifactError("copurchase_neighbors points outside the item table")

    def permuted(self, order: np.ndarray) -> "CoPurchaseLists":
        """The same lists after rows move: new row r is old row order[r]."""
        new_row_of = np.empty(len(order), dtype=np.int64)
        new_row_of[order] = np.arange(len(order))
        counts = np.diff(self.indptr)[order]
        new_indptr = np.zeros(len(order) + 1, dtype=np.int64)
        np.cumsum(counts, out=new_indptr[1:])
        take = np.repeat(self.indptr[:-1][order] - new_indptr[:-1], counts) + np.arange(new_indptr[-1])
        return CoPurchaseLists(new_indptr, new_row_of[self.neighbors[take]].astype(np.int32), self.scores[take],
                               self.orders[order])


class ModelArtifact:
    """A trained model as published: the arrays of the module docstring, validated.

    A plain class, not a dataclass: a frozen dataclass compiles its methods at every import, and every
    new serving instance imports this module before its first answer (bench/PERFORMANCE.md).
    """

    __slots__ = ("item_ids", "item_factors", "gramian", "popularity", "regularization", "alpha", "metadata",
                 "item_support", "copurchase")

    def __init__(self, item_ids: ItemIds | Sequence[str], item_factors: np.ndarray, gramian: np.ndarray,
                 popularity: np.ndarray, regularization: float, alpha: float, metadata: Mapping[str, Any],
                 item_support: np.ndarray | None = None, copurchase: CoPurchaseLists | None = None):
        self.item_ids = item_ids if isinstance(item_ids, ItemIds) else ItemIds(strings=[str(pid) for pid in item_ids])
        self.item_factors = item_factors  # float32[n_items, f] of float16 values: what is stored, as serving scores with it
        self.gramian = gramian
        self.popularity = popularity
        self.regularization = regularization
        self.alpha = alpha
        self.metadata = metadata
        n = len(self.item_ids)
        # Optional parts default to "no data": no support, no co-purchases.
        self.item_support = np.zeros(n, dtype=np.int32) if item_support is None else item_support
        self.copurchase = CoPurchaseLists.empty(n) if copurchase is None else copurchase
        if self.item_factors.ndim != 2 or self.item_factors.shape[0] != n:
            raise ArtifactError(f"item_factors has shape {self.item_factors.shape}, expected ({n}, factors)")
        f = self.item_factors.shape[1]
        if self.gramian.shape != (f, f):
            raise ArtifactError(f"gramian has shape {self.gramian.shape}, expected ({f}, {f})")
        if self.popularity.shape != (n,):
            raise ArtifactError(f"popularity has shape {self.popularity.shape}, expected ({n},)")
        if self.item_support.shape != (n,):
            raise ArtifactError("item_support needs one entry per item")
        self.copurchase.validate(n)

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", ""))

    @classmethod
    def build(cls, item_ids: Sequence[str], item_factors: np.ndarray, popularity: np.ndarray,
              regularization: float, alpha: float, metadata: Mapping[str, Any], *,
              item_support: np.ndarray | None = None, copurchase: CoPurchaseLists | None = None) -> "ModelArtifact":
        """Quantise factors to float16 (kept as float32), order rows by id, and compute the Gramian from them.

        Rows of `item_factors`, `popularity`, `item_support` and `copurchase` follow `item_ids`; numeric
        ids are sorted here (every per-item array and every co-purchase neighbour moves with its row).
        """
        factors16 = np.ascontiguousarray(item_factors, dtype=np.float16)
        if not np.all(np.isfinite(factors16)):
            raise ArtifactError("item factors overflow float16 (or are not finite); lower ALS_ALPHA or raise regularization")
        ids, order = ItemIds.of(list(item_ids))
        popularity = np.asarray(popularity, dtype=np.float32)
        support = None if item_support is None else np.asarray(item_support, dtype=np.int32)
        if order is not None and len(order) == len(factors16) == len(popularity):
            factors16 = np.ascontiguousarray(factors16[order])
            popularity = popularity[order]
            support = None if support is None else support[order]
            copurchase = None if copurchase is None else copurchase.permuted(order)
        factors32 = factors16.astype(np.float32)
        return cls(item_ids=ids, item_factors=factors32, gramian=factors32.T @ factors32, popularity=popularity,
                   regularization=float(regularization), alpha=float(alpha), metadata=dict(metadata),
                   item_support=support, copurchase=copurchase)

    def arrays(self) -> dict[str, np.ndarray]:
        """What `to_bytes` writes, by name."""
        ids = self.item_ids
        together = self.copurchase
        if ids.numeric:
            id_array = {"item_id_deltas": byte_planes(np.diff(ids.numbers, prepend=np.int64(0)), "item_id_deltas")}
        else:
            id_array = {"item_ids": ids.strings}
        return {
            "format_version": np.int64(FORMAT_VERSION),
            **id_array,
            **_factor_planes(self.item_factors),
            "gramian": self.gramian.astype(np.float32),
            "popularity": byte_planes(self.popularity, "popularity"),
            "regularization": np.float64(self.regularization),
            "alpha": np.float64(self.alpha),
            "metadata": np.str_(json.dumps(dict(self.metadata), sort_keys=True)),
            "item_support": byte_planes(self.item_support, "item_support"),
            "copurchase_counts": byte_planes(np.diff(together.indptr), "copurchase_counts"),
            "copurchase_neighbors": byte_planes(together.neighbors, "copurchase_neighbors"),
            "copurchase_scores": together.scores.astype(np.float16),
            "copurchase_orders": byte_planes(together.orders, "copurchase_orders"),
        }

    def to_bytes(self) -> bytes:
        """The artifact's file: the factors' low bytes stored, every other array Zstandard-compressed (same model, same bytes)."""
        return write_arrays(self.arrays(), stored=_STORED)

    @classmethod
    def from_bytes(cls, data: bytes, expected_sha256: str | None = None) -> "ModelArtifact":
        """Parse and validate; a damaged member, truncation, unknown layout or checksum mismatch raises ArtifactError.

        Every member is checked on its own (recommender/array_archive.py). `expected_sha256`, when given,
        is also checked against the whole file, on a second thread while the arrays are parsed (hashlib
        releases the GIL), and before any parse error is reported. Publishing reads its artifact back that
        way; serving loads go without (model_store: a third of the load's CPU, bench/PERFORMANCE.md).
        """
        checksum: list[str] = []
        hasher = None
        if expected_sha256 is not None:
            hasher = threading.Thread(target=lambda: checksum.append(sha256_hex(data)), name="artifact-sha256")
            hasher.start()
        try:
            artifact = cls._parse(data)
        except ArtifactError as exc:
            failure: ArtifactError | None = exc
        else:
            failure = None
        if hasher is not None:
            hasher.join()
            if checksum[0] != expected_sha256:
                raise ArtifactError(f"artifact checksum mismatch: expected sha256 {expected_sha256}, got {checksum[0]}")
        if failure is not None:
            raise failure
        return artifact

    @classmethod
    def _parse(cls, data: bytes) -> "ModelArtifact":
        rebuild = _FactorRebuild()
        derived = _Derived()
        arrays = read_arrays(data, then={**rebuild.callbacks(), **derived.callbacks()},
                             into={**rebuild.landings(), **derived.landings()})
        if "format_version" in arrays and int(arrays["format_version"]) not in READABLE_FORMATS:
            raise ArtifactError(f"artifact format {int(arrays['format_version'])} is not supported"
                                f" (this version reads {', '.join(map(str, READABLE_FORMATS))}): train again to"
                                " publish this version's format")
        missing = [key for key in _COMMON if key not in arrays]
        if not any(all(name in arrays for name in planes) for planes in (_COLUMN_PLANES, _ROW_PLANES)):
            missing.append(", ".join(_COLUMN_PLANES))
        if "item_id_deltas" not in arrays and "item_ids" not in arrays:
            missing.append("item_id_deltas or item_ids")
        if missing:
            raise ArtifactError(f"artifact is missing arrays: {', '.join(missing)}")
        factors = rebuild.factors(arrays)
        if "item_id_deltas" in arrays:
            ids = derived.item_ids(arrays["item_id_deltas"])
        else:
            if arrays["item_ids"].dtype.kind != "U":
                raise ArtifactError(f"item_ids must be strings, got {arrays['item_ids'].dtype}")
            ids = ItemIds(strings=arrays["item_ids"])
        try:
            metadata = json.loads(str(arrays["metadata"]))
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"artifact is corrupt or truncated: metadata is not JSON: {exc}") from exc
        return cls(  # arrays already of the right type stay read-only views of what was read: no copies
            item_ids=ids,
            item_factors=factors,
            gramian=arrays["gramian"].astype(np.float32, copy=False),
            popularity=from_byte_planes(arrays["popularity"], "popularity").astype(np.float32, copy=False),
            regularization=float(arrays["regularization"]),
            alpha=float(arrays["alpha"]),
            metadata=metadata,
            item_support=from_byte_planes(arrays["item_support"], "item_support").astype(np.int32, copy=False),
            copurchase=CoPurchaseLists(derived.indptr(arrays["copurchase_counts"]),
                                       from_byte_planes(arrays["copurchase_neighbors"], "copurchase_neighbors"
                                                        ).astype(np.int32, copy=False),
                                       derived.scores(arrays["copurchase_scores"]),
                                       from_byte_planes(arrays["copurchase_orders"], "copurchase_orders"
                                                        ).astype(np.int32, copy=False)),
        )


class _Derived:
    """What the parse computes from single members (typed values from byte planes, item ids from their deltas,
    co-purchase offsets from the counts, float32 scores), done by `read_arrays`'s callbacks on the thread that
    decompressed the member, so it overlaps the other thread's work; whatever was not done that way is done
    when asked for."""

    def __init__(self) -> None:
        self._done: dict[str, Any] = {}

    def callbacks(self) -> dict[str, Callable[[np.ndarray, Mapping[str, np.ndarray]], np.ndarray]]:
        return {name: (lambda array, stored, name=name: self._decode(name, array))
                for name in (*BYTE_PLANES, "copurchase_scores")}

    @staticmethod
    def landings() -> dict[str, Callable[[int, Mapping[str, np.ndarray]], np.ndarray]]:
        """For `read_arrays(into=...)`: each byte-planed member is decompressed into a mapping of its own, which goes
        back to the system as soon as its values are decoded (`_decode`). Buffers from the allocator went back to
        its free lists instead, where a new 1M-item instance kept 15–22 MB of them (bench/PERFORMANCE.md)."""
        return {name: (lambda size, stored: np.frombuffer(mmap.mmap(-1, size), dtype=np.uint8)) for name in BYTE_PLANES}

    def _decode(self, name: str, array: np.ndarray) -> np.ndarray:
        """The member's typed values, which replace its byte planes in what `read_arrays` returns (the planes'
        memory goes at once: a new instance's peak holds each per-item array once), and what derives from them."""
        values = from_byte_planes(array, name) if name in BYTE_PLANES else array
        if name == "item_id_deltas":
            self._done[name] = self.item_ids(values)
        elif name == "copurchase_counts":
            self._done[name] = self.indptr(values)
        elif name == "copurchase_scores":
            self._done[name] = self.scores(values)
        return values

    def item_ids(self, deltas: np.ndarray) -> ItemIds:
        if "item_id_deltas" in self._done:
            return self._done["item_id_deltas"]
        deltas = from_byte_planes(deltas, "item_id_deltas")
        if deltas.dtype.kind != "i" or deltas.dtype.itemsize != 8:
            raise ArtifactError(f"item_id_deltas must be int64, got {deltas.dtype}")
        return ItemIds(numbers=np.cumsum(deltas))

    def indptr(self, counts: np.ndarray) -> np.ndarray:
        if "copurchase_counts" in self._done:
            return self._done["copurchase_counts"]
        counts = from_byte_planes(counts, "copurchase_counts")
        if counts.size and counts.min() < 0:
            raise ArtifactError("copurchase_counts must not be negative")
        return _offsets(counts)

    def scores(self, scores: np.ndarray) -> np.ndarray:
        if "copurchase_scores" in self._done:
            return self._done["copurchase_scores"]
        return scores.astype(np.float32)


def byte_planes(values: np.ndarray, name: str) -> np.ndarray:
    """Member `name`'s values as format 6 stores them: uint8[itemsize, len(values)], the lowest bytes first."""
    typed = np.ascontiguousarray(values, dtype=BYTE_PLANES[name])
    return np.ascontiguousarray(typed.view(np.uint8).reshape(len(typed), typed.itemsize).T)


def from_byte_planes(array: np.ndarray, name: str) -> np.ndarray:
    """The typed values of member `name` as read: from format 6's byte planes, or the array itself if it is
    already one-dimensional (formats 4 and 5 store them typed). Anything else raises ArtifactError."""
    if array.ndim == 1:
        return array
    dtype = BYTE_PLANES[name]
    if array.dtype != np.uint8 or array.ndim != 2 or array.shape[0] != dtype.itemsize:
        raise ArtifactError(f"{name} must be {dtype.name} values or their {dtype.itemsize} byte planes"
                            f" (uint8[{dtype.itemsize}, n]), got {array.dtype}{list(array.shape)}")
    values = np.empty((array.shape[1], dtype.itemsize), dtype=np.uint8)
    for rank, plane in enumerate(array):  # a plane at a time: 1.6–3× faster than numpy's transposing copy
        values[:, rank] = plane
    return values.view(dtype).reshape(-1)


def _offsets(counts: np.ndarray) -> np.ndarray:
    """int64[len(counts) + 1]: 0, then the running sum of the counts."""
    indptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, dtype=np.int64, out=indptr[1:])
    return indptr


def _factor_planes(factors: np.ndarray) -> dict[str, np.ndarray]:
    """The factors as float16, factor by factor: the low-byte plane and the high-byte plane's two halves
    (uint8[·, n_items], split at f // 2)."""
    bits = np.ascontiguousarray(np.asarray(factors).T, dtype=np.float16).view(np.uint16)  # [f, n_items]
    high = (bits >> 8).astype(np.uint8)
    half = len(bits) // 2
    return {"factor_columns_low": (bits & 0xFF).astype(np.uint8), "factor_columns_high_0": high[:half],
            "factor_columns_high_1": high[half:]}


class _FactorRebuild:
    """The float32 factors, column-major, rebuilt from their byte planes: each high half on the thread that
    decompressed it.

    `read_arrays` calls `half` as soon as a high plane is out (the low plane is stored, so it is there
    already); `factors` rebuilds whatever did not arrive that way and returns the whole matrix. Format 5
    planes hold factors (a half is one contiguous stretch of the result), format 4 planes hold items.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._factors: np.ndarray | None = None
        self._done: set[str] = set()

    def callbacks(self) -> dict[str, Callable[[np.ndarray, Mapping[str, np.ndarray]], None]]:
        return {name: (lambda high, stored, name=name, planes=planes: self.half(planes, name, high, stored))
                for planes in (_COLUMN_PLANES, _ROW_PLANES) for name in planes[1:]}

    def landings(self) -> dict[str, Callable[[int, Mapping[str, np.ndarray]], np.ndarray | None]]:
        """For `read_arrays(into=...)`: where each format 5 high plane is decompressed (`landing`)."""
        return {name: (lambda size, stored, name=name: self.landing(name, size, stored))
                for name in _COLUMN_PLANES[1:]}

    def landing(self, name: str, size: int, stored: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """Where a format 5 high plane (a .npy file of `size` bytes) can be decompressed: the last `size` bytes of
        the float32 stretch it becomes, so that its bytes end exactly where the stretch ends. The rebuild then
        runs front to back, each block's high bytes read before the block is written, and never writes past
        bytes it has yet to read (block k writes 4 bytes a number up to 4·end_k ≤ 3·n + end_k, where the high
        bytes of the blocks after it start). The plane needs no memory of its own: 6.4 MB fewer new pages at
        100k × 64, 64 MB at 1M, which a new instance pays for page by page (bench/PERFORMANCE.md). The plane's
        array views that memory, so it is gone once its half is rebuilt."""
        low = stored.get(_COLUMN_PLANES[0])
        if low is None or low.dtype != np.uint8 or low.ndim != 2:
            return None
        split, width = low.shape
        first, count = (0, split // 2) if name == _COLUMN_PLANES[1] else (split // 2, split - split // 2)
        stretch = self._target(_COLUMN_PLANES, (width, split), first, count).reshape(-1).view(np.uint8)
        if size > len(stretch) or size - count * width < 0:
            return None
        return stretch[len(stretch) - size:]

    def _target(self, planes: tuple[str, ...], shape: tuple[int, int], first: int, count: int) -> np.ndarray:
        with self._lock:
            if self._factors is None:
                self._factors = np.empty(shape, dtype=np.float32, order="F")  # as serving scores with it
            elif self._factors.shape != shape:
                raise ArtifactError("item factor planes of two layouts in one artifact")
        part = slice(first, first + count)
        return self._factors.T[part] if planes is _COLUMN_PLANES else self._factors[part]

    def half(self, planes: tuple[str, ...], name: str, high: np.ndarray, stored: Mapping[str, np.ndarray]) -> None:
        low = stored.get(planes[0])
        if low is not None:  # a compressed low plane (not what this project writes) waits for `factors`
            self._rebuild(planes, name, low, high)

    def factors(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        planes = _COLUMN_PLANES if all(name in arrays for name in _COLUMN_PLANES) else _ROW_PLANES
        for name in planes[1:]:
            if name not in self._done:
                self._rebuild(planes, name, arrays[planes[0]], arrays[name])
        assert self._factors is not None
        return self._factors

    def _rebuild(self, planes: tuple[str, ...], name: str, low: np.ndarray, high: np.ndarray) -> None:
        if low.dtype != np.uint8 or low.ndim != 2 or high.dtype != np.uint8 or high.ndim != 2:
            raise ArtifactError("item factor planes must be two-dimensional uint8 arrays, got "
                                f"{low.dtype}{list(low.shape)} and {high.dtype}{list(high.shape)}")
        split, width = low.shape  # columns: (f, n_items); rows: (n_items, f)
        first, count = (0, split // 2) if name == planes[1] else (split // 2, split - split // 2)
        if high.shape != (count, width):
            raise ArtifactError(f"item factor planes do not fit together: {planes[0]} {low.shape}, {name}"
                                f" {high.shape}, expected ({count}, {width})")
        shape = (width, split) if planes is _COLUMN_PLANES else (split, width)
        float32_from_float16_bytes(low[first:first + count], high, self._target(planes, shape, first, count))
        self._done.add(name)


def float32_from_float16_bytes(low: np.ndarray, high: np.ndarray, out: np.ndarray) -> None:
    """out[:] = the float16 numbers whose low and high bytes are `low` and `high` (uint8, out's shape), exactly.

    Integer arithmetic on blocks that stay in cache, instead of numpy's float16 cast, which converts
    one number at a time: a float16's magnitude bits shifted left by 13 are a float32 (normal or
    subnormal) exactly 2¹¹² times smaller, because the two formats' exponent biases differ by 112;
    one multiplication makes it exact, and the sign bit moves from bit 15 to bit 31. Infinity and NaN
    (exponent 31) are refused: no published model holds them (`ModelArtifact.build`). A contiguous
    `out` is written in place; any other layout (format 4's rows into column-major factors) block by
    block of rows through a scratch buffer. At 100k × 64 this takes about 0.6 of numpy's cast alone,
    and the bytes need no joining first (bench/PERFORMANCE.md).
    """
    if out.flags.c_contiguous:
        flat_low, flat_high, flat_out = low.reshape(-1), high.reshape(-1), out.reshape(-1)
        size = len(flat_out)
        block = max(1, min(size, _REBUILD_BLOCK_ELEMENTS))
        scratch = _RebuildScratch(block)
        for start in range(0, size, block):
            stop = min(start + block, size)
            scratch.rebuild(flat_low[start:stop], flat_high[start:stop], flat_out[start:stop])
        return
    n, f = out.shape
    rows = max(1, min(n, _REBUILD_BLOCK_ELEMENTS // max(f, 1)))
    scratch = _RebuildScratch(rows * f)
    values = np.empty(rows * f, dtype=np.float32)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        k = (stop - start) * f
        scratch.rebuild(low[start:stop].reshape(-1), high[start:stop].reshape(-1), values[:k])
        out[start:stop] = values[:k].reshape(stop - start, f)


class _RebuildScratch:
    """The temporaries of `float32_from_float16_bytes` for blocks of up to `size` numbers."""

    def __init__(self, size: int):
        self.top = np.empty(size, dtype=np.uint8)
        self.low_bits = np.empty(size, dtype=np.uint32)

    def rebuild(self, low: np.ndarray, high: np.ndarray, values: np.ndarray) -> None:
        """values (contiguous float32) = the float16 numbers of `low` and `high`, 1-D, of values' length.

        `high` is read before `values` is written: it may lie in memory that `values` overwrites. The sign bit
        goes in before the multiplication by 2¹¹², which keeps it (−0 included) and is exact either way."""
        k = len(values)
        top, low_bits, bits = self.top[:k], self.low_bits[:k], values.view(np.uint32)
        np.bitwise_and(high, np.uint8(0x7F), out=top)  # exponent (5 bits) and the top 2 mantissa bits
        np.left_shift(high, 24, out=low_bits, dtype=np.uint32)  # high's last read: its sign ends up in bit 31
        if k and top.max() >= 0x7C:
            raise ArtifactError("item factors hold float16 infinity or NaN: the artifact is corrupt")
        np.left_shift(top, 21, out=bits, dtype=np.uint32)
        np.bitwise_and(low_bits, np.uint32(0x8000_0000), out=low_bits)
        bits |= low_bits
        np.left_shift(low, 13, out=low_bits, dtype=np.uint32)
        bits |= low_bits
        np.multiply(values, np.float32(2.0**112), out=values)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
