"""The model artifact: what a serving instance needs, in one small `.npz`, no pickle.

Layout (all arrays; `np.load(..., allow_pickle=False)` reads it):
    format_version  int64 scalar
    item_ids        str[n_items]             product ids, in matrix column order
    item_factors    float16[n_items, f]      half precision on disk: half the bytes
    gramian         float32[f, f]            Yᵀ Y of the float32-cast factors, for fold-in
    popularity      float32[n_items]         weighted interaction mass per item
    item_support    int32[n_items]           distinct shoppers per item (is there enough data?)
    copurchase_neighbors int32[n_items, K]   items bought in the same orders, best first, −1 pads
    copurchase_scores    float32[n_items, K] their co-purchase scores
    copurchase_orders    int32[n_items]      orders holding the item
    regularization  float64 scalar           ALS λ, needed by fold-in
    alpha           float64 scalar           confidence = 1 + alpha * weight
    metadata        str scalar               JSON: version, trained_at, hyperparameters, counts
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from recommender.errors import ArtifactError

FORMAT_VERSION = 2
_REQUIRED = ("format_version", "item_ids", "item_factors", "gramian", "popularity", "regularization", "alpha",
             "metadata", "item_support", "copurchase_neighbors", "copurchase_scores", "copurchase_orders")


@dataclass(frozen=True)
class ModelArtifact:
    item_ids: np.ndarray
    item_factors: np.ndarray
    gramian: np.ndarray
    popularity: np.ndarray
    regularization: float
    alpha: float
    metadata: Mapping[str, Any]
    item_support: np.ndarray | None = None
    copurchase_neighbors: np.ndarray | None = None
    copurchase_scores: np.ndarray | None = None
    copurchase_orders: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        # Optional parts default to "no data": no support, no co-purchases.
        if self.item_support is None:
            object.__setattr__(self, "item_support", np.zeros(n, dtype=np.int32))
        if self.copurchase_neighbors is None:
            object.__setattr__(self, "copurchase_neighbors", np.full((n, 0), -1, dtype=np.int32))
            object.__setattr__(self, "copurchase_scores", np.zeros((n, 0), dtype=np.float32))
        if self.copurchase_orders is None:
            object.__setattr__(self, "copurchase_orders", np.zeros(n, dtype=np.int32))
        if self.item_factors.ndim != 2 or self.item_factors.shape[0] != n:
            raise ArtifactError(f"item_factors has shape {self.item_factors.shape}, expected ({n}, factors)")
        f = self.item_factors.shape[1]
        if self.gramian.shape != (f, f):
            raise ArtifactError(f"gramian has shape {self.gramian.shape}, expected ({f}, {f})")
        if self.popularity.shape != (n,):
            raise ArtifactError(f"popularity has shape {self.popularity.shape}, expected ({n},)")
        if len(set(self.item_ids.tolist())) != n:
            raise ArtifactError("item_ids contains duplicates")
        if self.item_support.shape != (n,) or self.copurchase_orders.shape != (n,):
            raise ArtifactError("item_support and copurchase_orders need one entry per item")
        if (self.copurchase_neighbors.ndim != 2 or self.copurchase_neighbors.shape[0] != n
                or self.copurchase_scores.shape != self.copurchase_neighbors.shape):
            raise ArtifactError("copurchase_neighbors and copurchase_scores need shape (n_items, K)")
        if self.copurchase_neighbors.size and (self.copurchase_neighbors.max() >= n or self.copurchase_neighbors.min() < -1):
            raise ArtifactError("copurchase_neighbors points outside the item table")

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", ""))

    @classmethod
    def build(cls, item_ids: list[str], item_factors: np.ndarray, popularity: np.ndarray,
              regularization: float, alpha: float, metadata: Mapping[str, Any], *,
              item_support: np.ndarray | None = None, copurchase_neighbors: np.ndarray | None = None,
              copurchase_scores: np.ndarray | None = None,
              copurchase_orders: np.ndarray | None = None) -> "ModelArtifact":
        """Quantise factors to float16 and compute the Gramian from exactly what serving will use."""
        factors16 = np.ascontiguousarray(item_factors, dtype=np.float16)
        if not np.all(np.isfinite(factors16)):
            raise ArtifactError("item factors overflow float16 (or are not finite); lower ALS_ALPHA or raise regularization")
        factors32 = factors16.astype(np.float32)
        return cls(
            item_ids=np.asarray(item_ids, dtype=str),
            item_factors=factors16,
            gramian=factors32.T @ factors32,
            popularity=np.asarray(popularity, dtype=np.float32),
            regularization=float(regularization),
            alpha=float(alpha),
            metadata=dict(metadata),
            item_support=None if item_support is None else np.asarray(item_support, dtype=np.int32),
            copurchase_neighbors=None if copurchase_neighbors is None else np.asarray(copurchase_neighbors, np.int32),
            copurchase_scores=None if copurchase_scores is None else np.asarray(copurchase_scores, np.float32),
            copurchase_orders=None if copurchase_orders is None else np.asarray(copurchase_orders, np.int32),
        )

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            format_version=np.int64(FORMAT_VERSION),
            item_ids=self.item_ids,
            item_factors=self.item_factors,
            gramian=self.gramian.astype(np.float32),
            popularity=self.popularity,
            regularization=np.float64(self.regularization),
            alpha=np.float64(self.alpha),
            metadata=np.str_(json.dumps(dict(self.metadata), sort_keys=True)),
            item_support=self.item_support,
            copurchase_neighbors=self.copurchase_neighbors,
            copurchase_scores=self.copurchase_scores,
            copurchase_orders=self.copurchase_orders,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, expected_sha256: str | None = None) -> "ModelArtifact":
        """Parse and validate; a checksum mismatch, truncation or unknown layout raises ArtifactError."""
        if expected_sha256 is not None:
            actual = sha256_hex(data)
            if actual != expected_sha256:
                raise ArtifactError(f"artifact checksum mismatch: expected sha256 {expected_sha256}, got {actual}")
        try:
            loaded = np.load(io.BytesIO(data), allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise ArtifactError("artifact is not an .npz archive")
            with loaded as archive:
                missing = [key for key in _REQUIRED if key not in archive.files]
                if missing:
                    raise ArtifactError(f"artifact is missing arrays: {', '.join(missing)}")
                fmt = int(archive["format_version"])
                if fmt != FORMAT_VERSION:
                    raise ArtifactError(f"artifact format {fmt} is not supported (expected {FORMAT_VERSION})")
                factors = archive["item_factors"]
                if factors.dtype != np.float16:
                    raise ArtifactError(f"item_factors must be float16, got {factors.dtype}")
                return cls(
                    item_ids=archive["item_ids"].astype(str),
                    item_factors=factors,
                    gramian=archive["gramian"].astype(np.float32),
                    popularity=archive["popularity"].astype(np.float32),
                    regularization=float(archive["regularization"]),
                    alpha=float(archive["alpha"]),
                    metadata=json.loads(str(archive["metadata"])),
                    item_support=archive["item_support"].astype(np.int32),
                    copurchase_neighbors=archive["copurchase_neighbors"].astype(np.int32),
                    copurchase_scores=archive["copurchase_scores"].astype(np.float32),
                    copurchase_orders=archive["copurchase_orders"].astype(np.int32),
                )
        except ArtifactError:
            raise
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"artifact is corrupt or truncated: {exc}") from exc


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
