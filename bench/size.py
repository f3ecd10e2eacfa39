"""Artifact size: bytes per item·factor, array by array, against the float16 factors alone (2 bytes).

The floor is the factor matrix itself at half precision; everything else an artifact carries
(ids, co-purchase table, popularity, support, the zip container) is measured as overhead.
"""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import numpy as np

FLOOR_BYTES_PER_ITEM_FACTOR = 2.0  # float16


def analyze(path: Path, compress_check: bool) -> dict:
    data = path.read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        entries = {info.filename.removesuffix(".npy"): info.compress_size for info in archive.infolist()}
        stored = sorted(info.filename.removesuffix(".npy") for info in archive.infolist()
                        if info.compress_type == zipfile.ZIP_STORED)
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        n_items, factors = arrays["item_factors"].shape
        id_dtype = "int64 deltas" if "item_id_deltas" in arrays.files else str(arrays["item_ids"].dtype)
        counts = arrays["copurchase_counts"]
        per_item = float(counts.mean()) if counts.size else 0.0
        compressed = None
        if compress_check:
            buffer = io.BytesIO()
            begin = time.perf_counter()
            np.savez_compressed(buffer, **{key: arrays[key] for key in arrays.files})
            compressed = {"bytes": buffer.tell(), "seconds": round(time.perf_counter() - begin, 3),
                          "bytes_per_item_factor": round(buffer.tell() / (n_items * factors), 3)}
    per_item_factor = len(data) / (n_items * factors)
    return {
        "items": int(n_items), "factors": int(factors), "bytes": len(data),
        "bytes_per_item_factor": round(per_item_factor, 3),
        "ratio_vs_float16_floor": round(per_item_factor / FLOOR_BYTES_PER_ITEM_FACTOR, 2),
        "bytes_per_item_by_array": {key: round(size / n_items, 2) for key, size in sorted(entries.items(),
                                                                                          key=lambda kv: -kv[1])},
        "stored_uncompressed": stored,
        "item_id_dtype": id_dtype, "copurchase_neighbours_per_item": round(per_item, 2),
        "if_every_array_deflated": compressed,
    }
