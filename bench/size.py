"""Artifact size: bytes per item·factor, array by array, against the float16 factors alone (2 bytes).

The floor is the factor matrix itself at half precision. The artifact stores those factors as byte
planes (the high bytes compressed), so it can come in under the floor with everything else it carries
(ids, co-purchase lists, popularity, support, the zip container). The peer is numpy's own
`np.savez_compressed` of the same arrays with the factors as one float16 matrix.
"""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import numpy as np

FLOOR_BYTES_PER_ITEM_FACTOR = 2.0  # float16


def analyze(path: Path, compress_check: bool) -> dict:
    """Bytes per item·factor of the published file, array by array; with `compress_check`, the same
    arrays (factors as one float16 matrix) written by `np.savez_compressed` for comparison."""
    from recommender.array_archive import read_arrays
    from recommender.artifact import BYTE_PLANES, ModelArtifact, from_byte_planes

    data = path.read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        entries = {info.filename.removesuffix(".npy"): info.compress_size for info in archive.infolist()}
        stored = sorted(info.filename.removesuffix(".npy") for info in archive.infolist()
                        if info.compress_type == zipfile.ZIP_STORED)
    arrays = read_arrays(data)
    factors, n_items = arrays["factor_columns_low"].shape
    planed = sorted(name for name in BYTE_PLANES if name in arrays and arrays[name].ndim == 2)  # format 6
    for name in planed:
        arrays[name] = from_byte_planes(arrays[name], name)
    id_dtype = "int64 deltas" if "item_id_deltas" in arrays else str(arrays["item_ids"].dtype)
    counts = arrays["copurchase_counts"]
    per_item = float(counts.mean()) if counts.size else 0.0
    compressed = None
    if compress_check:
        plain = {key: value for key, value in arrays.items() if not key.startswith("factor_columns_")}  # typed
        plain["item_factors"] = ModelArtifact.from_bytes(data).item_factors.astype(np.float16)
        buffer = io.BytesIO()
        begin = time.perf_counter()
        np.savez_compressed(buffer, **plain)
        compressed = {"bytes": buffer.tell(), "seconds": round(time.perf_counter() - begin, 3),
                      "bytes_per_item_factor": round(buffer.tell() / (n_items * factors), 3)}
    per_item_factor = len(data) / (n_items * factors)
    return {
        "items": int(n_items), "factors": int(factors), "bytes": len(data),
        "bytes_per_item_factor": round(per_item_factor, 3),
        "ratio_vs_float16_floor": round(per_item_factor / FLOOR_BYTES_PER_ITEM_FACTOR, 2),
        "bytes_per_item_by_array": {key: round(size / n_items, 2) for key, size in sorted(entries.items(),
                                                                                          key=lambda kv: -kv[1])},
        "stored_uncompressed": stored, "byte_planes": planed,
        "item_id_dtype": id_dtype, "copurchase_neighbours_per_item": round(per_item, 2),
        "np_savez_compressed": compressed,
    }
