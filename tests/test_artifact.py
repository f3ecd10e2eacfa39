"""ModelArtifact bytes and LocalModelStore files: round trips, and refusal of anything corrupt or pickled."""

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest

from recommender.array_archive import ZIP_ZSTANDARD
from recommender import artifact as artifact_module
from recommender.artifact import FORMAT_VERSION, CoPurchaseLists, ItemIds, ModelArtifact, sha256_hex
from recommender.errors import ArtifactError, InvalidParameter
from recommender.model_store import LocalModelStore, Manifest
from tests.conftest import SHOP

ITEM_IDS = ["788032119674292922", "642667041472713922", "p-3", "p-4", "p-5"]
VERSION = "20240301T120000000000Z"
METADATA = {
    "version": VERSION,
    "shop": SHOP,
    "hyperparameters": {"factors": 8, "regularization": 0.05},
    "event_weights": {"view": 1.0, "add_to_cart": 4.0, "purchase": 10.0},
}


def factors32():
    """float32[5, 8], values that float16 cannot hold exactly."""
    return (np.random.default_rng(7).standard_normal((len(ITEM_IDS), 8)) * 0.3 + 0.1).astype(np.float32)


def build(metadata=None):
    return ModelArtifact.build(ITEM_IDS, factors32(), np.array([5.0, 1.0, 3.0, 0.0, 2.0]), 0.05, 2.0,
                               metadata or METADATA)


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def valid_arrays(artifact):
    return {**artifact.arrays(), "metadata": np.str_(json.dumps(METADATA))}


# --- ModelArtifact -----------------------------------------------------------------------


def test_build_quantises_factors_and_computes_the_gramian_from_what_serving_uses():
    # Arrange
    original = factors32()
    quantised32 = original.astype(np.float16).astype(np.float32)

    # Act
    artifact = build()

    # Assert
    assert artifact.item_factors.dtype == np.float32  # float16 values, in the dtype serving scores with
    assert artifact.item_factors.shape == (5, 8)
    np.testing.assert_array_equal(artifact.item_factors, quantised32)
    assert artifact.gramian.dtype == np.float32
    np.testing.assert_allclose(artifact.gramian, quantised32.T @ quantised32, rtol=1e-6, atol=1e-6)
    assert not np.allclose(artifact.gramian, original.T @ original, rtol=0, atol=1e-7)  # not the unquantised one
    assert artifact.version == VERSION


def test_round_trip_keeps_ids_factors_gramian_and_metadata():
    # Arrange
    artifact = build()
    quantised32 = factors32().astype(np.float16).astype(np.float32)

    # Act
    restored = ModelArtifact.from_bytes(artifact.to_bytes())

    # Assert
    assert restored.item_ids.tolist() == ITEM_IDS
    assert restored.item_factors.dtype == np.float32
    np.testing.assert_array_equal(restored.item_factors, quantised32)
    np.testing.assert_array_equal(restored.gramian, artifact.gramian)
    np.testing.assert_allclose(restored.gramian, quantised32.T @ quantised32, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(restored.popularity, np.array([5, 1, 3, 0, 2], dtype=np.float32))
    assert (restored.regularization, restored.alpha) == (0.05, 2.0)
    assert restored.metadata == METADATA
    assert restored.version == VERSION


def test_to_bytes_is_deterministic():
    # Act / Assert
    assert sha256_hex(build().to_bytes()) == sha256_hex(build().to_bytes())


def test_from_bytes_accepts_the_right_checksum():
    # Arrange
    data = build().to_bytes()

    # Act
    restored = ModelArtifact.from_bytes(data, expected_sha256=hashlib.sha256(data).hexdigest())

    # Assert
    assert restored.item_ids.tolist() == ITEM_IDS


def test_truncated_artifact_is_refused():
    # Arrange
    data = build().to_bytes()

    # Act / Assert
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        ModelArtifact.from_bytes(data[: len(data) // 2])


def test_one_flipped_byte_is_refused_by_the_checksum():
    # Arrange
    data = build().to_bytes()
    expected = hashlib.sha256(data).hexdigest()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF

    # Act / Assert
    with pytest.raises(ArtifactError, match=f"checksum mismatch: expected sha256 {expected}"):
        ModelArtifact.from_bytes(bytes(flipped), expected_sha256=expected)


def test_random_bytes_are_refused():
    # Arrange
    data = np.random.default_rng(0).bytes(4096)

    # Act / Assert
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        ModelArtifact.from_bytes(data)


def test_empty_bytes_are_refused():
    # Act / Assert
    with pytest.raises(ArtifactError):
        ModelArtifact.from_bytes(b"")


def test_npz_missing_an_array_is_refused():
    # Arrange
    arrays = valid_arrays(build())
    del arrays["gramian"]

    # Act / Assert
    with pytest.raises(ArtifactError, match="^artifact is missing arrays: gramian$"):
        ModelArtifact.from_bytes(npz_bytes(**arrays))


def test_unknown_format_version_is_refused():
    # Arrange
    arrays = {**valid_arrays(build()), "format_version": np.int64(FORMAT_VERSION + 1)}

    # Act / Assert
    with pytest.raises(ArtifactError, match=f"format {FORMAT_VERSION + 1} is not supported"):
        ModelArtifact.from_bytes(npz_bytes(**arrays))


def test_factor_planes_of_the_wrong_type_or_shape_are_refused():
    # Arrange
    arrays = valid_arrays(build())
    as_float32 = {**arrays, "factor_columns_low": arrays["factor_columns_low"].astype(np.float32)}
    one_factor_short = {**arrays, "factor_columns_high_1": arrays["factor_columns_high_1"][1:]}

    # Act / Assert
    with pytest.raises(ArtifactError, match="must be two-dimensional uint8 arrays, got float32"):
        ModelArtifact.from_bytes(npz_bytes(**as_float32))
    with pytest.raises(ArtifactError, match="item factor planes do not fit together"):
        ModelArtifact.from_bytes(npz_bytes(**one_factor_short))


def test_npz_with_an_object_array_is_refused_because_pickle_is_off():
    # Arrange: np.savez pickles object arrays; a loader with allow_pickle=True would run that pickle
    arrays = {**valid_arrays(build()), "item_ids": np.array(ITEM_IDS, dtype=object)}
    data = npz_bytes(**arrays)
    with np.load(io.BytesIO(data), allow_pickle=True) as archive:  # the file itself is a readable npz
        assert archive["item_ids"].dtype == object

    # Act / Assert
    with pytest.raises(ArtifactError, match="allow_pickle=False"):
        ModelArtifact.from_bytes(data)


def test_inconsistent_shapes_are_refused():
    # Arrange
    arrays = {**valid_arrays(build()), "popularity": np.zeros(3, dtype=np.float32)}

    # Act / Assert
    with pytest.raises(ArtifactError, match=r"popularity has shape \(3,\), expected \(5,\)"):
        ModelArtifact.from_bytes(npz_bytes(**arrays))


def test_duplicate_item_ids_are_refused():
    # Act / Assert
    with pytest.raises(ArtifactError, match="duplicates"):
        ModelArtifact.build(["a", "a"], np.ones((2, 2)), np.ones(2), 0.1, 1.0, {"version": "v"})


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_factors_that_overflow_float16_are_refused():
    # Act / Assert
    with pytest.raises(ArtifactError, match="overflow float16"):
        ModelArtifact.build(["a", "b"], np.array([[1e6, 0.0], [0.0, 1.0]]), np.ones(2), 0.1, 1.0, {"version": "v"})


def test_bug_a_plain_npy_file_is_refused_with_artifact_error():
    """BUG recommender/artifact.py, ModelArtifact.from_bytes (lines 98 and 119 at 9d2bcd2).

    np.load returns an ndarray, not an NpzFile, for `.npy` bytes; `with np.load(...) as archive`
    then raises TypeError ("does not support the context manager protocol"), which the except
    clause does not translate. The docstring promises ArtifactError for an unknown layout; in
    serving, a TypeError escapes as a 500 "internal_error" instead of 503 "model_unavailable".
    """
    # Arrange
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((5, 8), dtype=np.float16))

    # Act / Assert
    with pytest.raises(ArtifactError):
        ModelArtifact.from_bytes(buffer.getvalue())


# --- numeric ids, co-purchase lists ------------------------------------------------------------


def numeric_artifact():
    """Three Shopify ids given out of order, with per-row values that must move with their row.

    Row 0 = id 30 buys with row 2 (id 10, score 0.5) and row 1 (id 20, score 0.25); row 2 buys with row 0.
    """
    factors = np.array([[3, 3], [2, 2], [1, 1]], dtype=np.float32)
    together = CoPurchaseLists.from_counts(np.array([2, 0, 1]), np.array([2, 1, 0]), np.array([0.5, 0.25, 0.75]),
                                           np.array([4, 0, 2]))
    return ModelArtifact.build(["30", "20", "10"], factors, np.array([300.0, 200.0, 100.0]), 0.1, 1.0,
                               {"version": "v"}, item_support=np.array([3, 2, 1]), copurchase=together)


def test_numeric_ids_are_sorted_and_every_row_moves_with_its_id():
    # Act
    artifact = numeric_artifact()

    # Assert: rows are now ids 10, 20, 30; each row keeps its own factor, popularity, support and lists
    ids = artifact.item_ids
    assert ids.numeric and ids.tolist() == ["10", "20", "30"]
    np.testing.assert_array_equal(artifact.item_factors[:, 0], [1, 2, 3])
    np.testing.assert_array_equal(artifact.popularity, [100, 200, 300])
    np.testing.assert_array_equal(artifact.item_support, [1, 2, 3])
    together = artifact.copurchase
    np.testing.assert_array_equal(together.orders, [2, 0, 4])
    id_30, id_10 = ids.row("30"), ids.row("10")
    neighbors, scores = together.of(id_30)
    assert [ids[r] for r in neighbors] == ["10", "20"] and scores.tolist() == [0.5, 0.25]
    neighbors, scores = together.of(id_10)
    assert [ids[r] for r in neighbors] == ["30"] and scores.tolist() == [0.75]
    assert together.of(ids.row("20"))[0].size == 0


def test_numeric_artifact_round_trips_through_bytes():
    # Arrange
    artifact = numeric_artifact()

    # Act
    restored = ModelArtifact.from_bytes(artifact.to_bytes())

    # Assert
    assert restored.item_ids.numeric and restored.item_ids.tolist() == ["10", "20", "30"]
    np.testing.assert_array_equal(restored.item_factors, artifact.item_factors)
    np.testing.assert_array_equal(restored.copurchase.indptr, [0, 1, 1, 3])
    np.testing.assert_array_equal(restored.copurchase.neighbors, artifact.copurchase.neighbors)
    np.testing.assert_array_equal(restored.copurchase.scores, [0.75, 0.5, 0.25])  # exact in float16
    np.testing.assert_array_equal(restored.item_support, [1, 2, 3])


def test_numeric_ids_are_found_by_value_and_look_alikes_are_not():
    # Arrange
    ids = ItemIds(numbers=np.array([7, 8000000000001, 9223372036854775807]))

    # Act / Assert
    assert ids.row("8000000000001") == 1 and ids.row("9223372036854775807") == 2
    assert [ids.row(pid) for pid in ("007", "+7", " 7", "7.0", "٧", "8000000000002", "9223372036854775808", "")] \
        == [None] * 8
    assert ids.rows_array(["9223372036854775807", "x", "7", "6"]).tolist() == [2, -1, 0, -1]
    assert ids.rows_of(["8000000000001", "nope", "7"]) == [1, 0]
    assert ids.ids_of([2, 0, 0]) == ["9223372036854775807", "7", "7"] == [ids[2], ids[0], ids[0]]
    assert ids.ids_of(np.array([], dtype=np.int64)) == []


def test_remembered_rows_are_the_searched_rows_in_every_order_and_past_the_bound(monkeypatch):
    # Arrange: every third number from 3 to 3,000 is an id; room to remember 50 ids
    monkeypatch.setattr(artifact_module, "FOUND_KEPT", 50)
    ids = ItemIds(numbers=np.arange(3, 3001, 3))
    rng = np.random.default_rng(4)
    asked = [[str(v) for v in rng.integers(0, 3100, size=int(rng.integers(1, 40)))] for _ in range(300)]
    asked += [["x", "07", "3", "3"], [str(v) for v in range(0, 3100, 2)]]  # look-alikes, repeats; 1,550 ids at once

    # Act
    answers = [ids.rows_array(query).tolist() for query in asked]

    # Assert: row = value / 3 − 1 for a multiple of 3 within range, −1 for anything else, whatever was remembered
    def expected(pid: str) -> int:
        value = int(pid) if pid.isdigit() and not pid.startswith("0") else 0
        return value // 3 - 1 if value and value % 3 == 0 and value <= 3000 else -1

    assert answers == [[expected(pid) for pid in query] for query in asked]
    assert answers[-2] == [-1, -1, 0, 0]


def test_string_ids_keep_their_order_and_are_found_by_dictionary():
    # Arrange: one id is not a decimal number, so none is treated as one
    ids, order = ItemIds.of(["b-2", "10", "a-1"])

    # Act / Assert
    assert order is None and not ids.numeric
    assert ids.tolist() == ["b-2", "10", "a-1"] and ids.row("10") == 1 and ids.rows_of(["a-1", "zz", "b-2"]) == [2, 0]
    assert ids.ids_of([2, 1]) == ["a-1", "10"] and all(type(pid) is str for pid in ids.ids_of([0]))


def test_duplicate_numeric_ids_are_refused():
    # Act / Assert
    with pytest.raises(ArtifactError, match="duplicates"):
        ModelArtifact.build(["5", "5"], np.ones((2, 2)), np.ones(2), 0.1, 1.0, {"version": "v"})


def test_copurchase_neighbour_outside_the_table_is_refused():
    # Arrange
    arrays = {**numeric_artifact().arrays(), "copurchase_neighbors": np.array([0, 1, 3], dtype=np.int32)}

    # Act / Assert
    with pytest.raises(ArtifactError, match="outside the item table"):
        ModelArtifact.from_bytes(npz_bytes(**arrays))


def test_copurchase_counts_that_do_not_add_up_are_refused():
    # Arrange
    arrays = {**numeric_artifact().arrays(), "copurchase_counts": np.array([1, 0, 1], dtype=np.int32)}

    # Act / Assert
    with pytest.raises(ArtifactError, match="do not add up"):
        ModelArtifact.from_bytes(npz_bytes(**arrays))


def test_unsorted_numeric_ids_in_a_file_are_refused():
    # Arrange: deltas with a step backwards
    arrays = {**numeric_artifact().arrays(), "item_id_deltas": np.array([10, 20, -5], dtype=np.int64)}

    # Act / Assert
    with pytest.raises(ArtifactError, match="strictly ascending"):
        ModelArtifact.from_bytes(npz_bytes(**arrays))


def test_a_format_2_artifact_asks_for_retraining():
    # Arrange
    arrays = {**valid_arrays(build()), "format_version": np.int64(2)}

    # Act / Assert
    with pytest.raises(ArtifactError, match="format 2 is not supported .*train again"):
        ModelArtifact.from_bytes(npz_bytes(**arrays))


def test_factor_low_bytes_are_stored_and_the_rest_compressed_within_2_1_bytes_per_item_factor():
    # Arrange: 2,000 Shopify-like ids with uneven gaps, 64 factors, sparse co-purchase lists
    rng = np.random.default_rng(3)
    n, f = 2000, 64
    ids = (8_000_000_000_000 + np.cumsum(rng.integers(1, 2_000_000, n))).astype(str).tolist()
    counts = rng.integers(0, 4, n)
    together = CoPurchaseLists.from_counts(counts, rng.integers(0, n, counts.sum()), rng.random(counts.sum()),
                                           counts * 3)
    artifact = ModelArtifact.build(ids, rng.standard_normal((n, f)).astype(np.float32) * 0.1, rng.pareto(1.2, n), 0.1,
                                   1.0, {"version": "v"}, item_support=rng.integers(0, 50, n), copurchase=together)

    # Act
    data = artifact.to_bytes()

    # Assert
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        methods = {info.filename: info.compress_type for info in archive.infolist()}
    assert methods.pop("factor_columns_low.npy") == zipfile.ZIP_STORED
    assert set(methods.values()) == {ZIP_ZSTANDARD}
    # float16 is 2.0; its high bytes compress, which pays for most of the ids, co-purchase lists and the rest
    assert len(data) / (n * f) < 2.1
    np.testing.assert_array_equal(ModelArtifact.from_bytes(data).item_factors.view(np.uint32),
                                  artifact.item_factors.view(np.uint32))  # lossless, bit for bit


# --- LocalModelStore ---------------------------------------------------------------------


def test_publish_latest_load_round_trip(tmp_path):
    # Arrange
    models = LocalModelStore(tmp_path / "models")
    artifact = build()

    # Act
    manifest = models.publish(SHOP, artifact)
    latest = models.latest(SHOP)
    loaded = models.load(latest)

    # Assert
    on_disk = (tmp_path / "models" / SHOP / f"{VERSION}.npz").read_bytes()
    assert manifest == Manifest(SHOP, VERSION, hashlib.sha256(on_disk).hexdigest(), len(on_disk))
    assert latest == manifest
    assert loaded.item_ids.tolist() == ITEM_IDS
    np.testing.assert_array_equal(loaded.item_factors, artifact.item_factors)
    np.testing.assert_array_equal(loaded.gramian, artifact.gramian)
    assert loaded.metadata == METADATA
    assert json.loads((tmp_path / "models" / SHOP / "latest.json").read_text()) == {
        "version": VERSION, "sha256": manifest.sha256, "size": manifest.size}
    written = json.loads((tmp_path / "models" / SHOP / f"{VERSION}.json").read_text())
    assert written == {"version": VERSION, "sha256": manifest.sha256, "size": manifest.size, "metadata": METADATA}


def test_latest_is_none_before_anything_is_published(tmp_path):
    # Act / Assert
    assert LocalModelStore(tmp_path / "models").latest(SHOP) is None


def test_a_second_publish_moves_latest(tmp_path):
    # Arrange
    models = LocalModelStore(tmp_path / "models")
    models.publish(SHOP, build())

    # Act
    newer = models.publish(SHOP, build({**METADATA, "version": "20240302T000000000000Z"}))

    # Assert
    assert models.latest(SHOP) == newer
    assert newer.version == "20240302T000000000000Z"
    assert models.load(models.manifest(SHOP, VERSION)).version == VERSION  # the old one stays readable


def test_publish_leaves_no_temporary_files(tmp_path):
    # Arrange
    models = LocalModelStore(tmp_path / "models")

    # Act
    models.publish(SHOP, build())
    models.publish(SHOP, build({**METADATA, "version": "v2"}))

    # Assert
    folder = tmp_path / "models" / SHOP
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{VERSION}.npz", f"{VERSION}.json", "v2.npz", "v2.json", "latest.json"]
    )
    assert [p.name for p in (tmp_path / "models").iterdir()] == [SHOP]


def test_corrupted_npz_on_disk_is_refused_by_load(tmp_path):
    # Arrange
    models = LocalModelStore(tmp_path / "models")
    manifest = models.publish(SHOP, build())
    path = tmp_path / "models" / SHOP / f"{VERSION}.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))

    # Act / Assert: the damaged member's own checksum (its zstd frame's, or the zip's CRC-32) refuses it
    with pytest.raises(ArtifactError, match="artifact is corrupt or truncated"):
        models.load(models.latest(SHOP))
    assert models.latest(SHOP) == manifest  # the pointer itself is intact


def test_an_artifact_under_another_versions_name_is_refused_by_load(tmp_path):
    # Arrange: v2's files hold v1's artifact, with a manifest that matches those bytes exactly
    models = LocalModelStore(tmp_path / "models")
    first = models.publish(SHOP, build())
    folder = tmp_path / "models" / SHOP
    data = (folder / f"{VERSION}.npz").read_bytes()
    (folder / "v2.npz").write_bytes(data)
    impostor = Manifest(SHOP, "v2", first.sha256, first.size)

    # Act / Assert
    with pytest.raises(ArtifactError, match=f"holds version '{VERSION}', its manifest says 'v2'"):
        models.load(impostor)


def test_truncated_npz_on_disk_is_refused_by_load(tmp_path):
    # Arrange
    models = LocalModelStore(tmp_path / "models")
    manifest = models.publish(SHOP, build())
    path = tmp_path / "models" / SHOP / f"{VERSION}.npz"
    path.write_bytes(path.read_bytes()[:100])

    # Act / Assert
    with pytest.raises(ArtifactError, match=f"is 100 bytes, its manifest says {manifest.size}"):
        models.load(manifest)


def test_missing_npz_is_refused_by_load(tmp_path):
    # Arrange
    models = LocalModelStore(tmp_path / "models")
    manifest = models.publish(SHOP, build())
    (tmp_path / "models" / SHOP / f"{VERSION}.npz").unlink()

    # Act / Assert
    with pytest.raises(ArtifactError, match="is missing"):
        models.load(manifest)


def test_npz_with_an_object_array_on_disk_is_refused_by_load(tmp_path):
    # Arrange: a pickled npz with a manifest that matches it byte for byte
    models = LocalModelStore(tmp_path / "models")
    folder = tmp_path / "models" / SHOP
    folder.mkdir(parents=True)
    data = npz_bytes(**{**valid_arrays(build()), "item_ids": np.array(ITEM_IDS, dtype=object)})
    (folder / "evil.npz").write_bytes(data)
    manifest = Manifest(SHOP, "evil", hashlib.sha256(data).hexdigest(), len(data))

    # Act / Assert
    with pytest.raises(ArtifactError, match="allow_pickle=False"):
        models.load(manifest)


@pytest.mark.parametrize("shop", ["../evil", "..", "a/../../evil", "/etc", "Evil.myshopify.com", ""])
def test_shop_that_is_not_a_domain_is_refused(tmp_path, shop):
    # Arrange
    models = LocalModelStore(tmp_path / "models")

    # Act / Assert
    with pytest.raises(InvalidParameter) as publish_error:
        models.publish(shop, build())
    with pytest.raises(InvalidParameter):
        models.latest(shop)
    with pytest.raises(InvalidParameter):
        models.load(Manifest(shop, VERSION, "0" * 64, 1))
    assert publish_error.value.parameter == "shop"
    assert list(tmp_path.iterdir()) == []  # nothing written anywhere, not even the root


def test_a_flipped_byte_in_the_stored_factors_is_caught_without_a_checksum():
    # Arrange: with 64 factors the stored low bytes of the factors are half the file; flip a byte in their middle
    rng = np.random.default_rng(5)
    artifact = ModelArtifact.build([str(1000 + i) for i in range(200)], rng.standard_normal((200, 64)), np.ones(200),
                                   0.1, 1.0, {"version": "v"})
    data = bytearray(artifact.to_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = archive.getinfo("factor_columns_low.npy")
    data[info.header_offset + info.compress_size // 2] ^= 0x01

    # Act / Assert
    with pytest.raises(ArtifactError, match="bad CRC in factor_columns_low.npy"):
        ModelArtifact.from_bytes(bytes(data))


def test_factors_read_back_equal_what_was_written():
    # Arrange
    rng = np.random.default_rng(6)
    factors = rng.standard_normal((300, 16)).astype(np.float32)
    artifact = ModelArtifact.build([str(5000 + 3 * i) for i in range(300)], factors, np.arange(300.0), 0.1, 1.0,
                                   {"version": "v"})
    data = artifact.to_bytes()

    # Act
    restored = ModelArtifact.from_bytes(data, expected_sha256=sha256_hex(data))

    # Assert
    np.testing.assert_array_equal(restored.item_factors, factors.astype(np.float16).astype(np.float32))


def test_every_finite_float16_reads_back_as_numpys_float32_bit_for_bit():
    # Arrange: all 63,488 finite float16 bit patterns (±0, subnormals, normals up to ±65504) in an odd
    # number of rows (unequal halves) of 31 factors, more than one rebuild block per half
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    finite = bits[np.isfinite(bits.view(np.float16))]
    rows = 20_001
    values = np.resize(finite, rows * 31).view(np.float16).reshape(rows, 31)
    artifact = ModelArtifact(item_ids=ItemIds(numbers=np.arange(1, rows + 1)), item_factors=values.astype(np.float32),
                             gramian=np.zeros((31, 31), dtype=np.float32), popularity=np.ones(rows, dtype=np.float32),
                             regularization=0.1, alpha=1.0, metadata={"version": "v"})

    # Act
    restored = ModelArtifact.from_bytes(artifact.to_bytes()).item_factors

    # Assert
    assert restored.dtype == np.float32 and restored.shape == (rows, 31)
    np.testing.assert_array_equal(restored.view(np.uint32), values.astype(np.float32).view(np.uint32))


@pytest.mark.parametrize("block", [5, 64, 1 << 18], ids=["5 numbers a block", "64", "the default"])
def test_each_high_plane_is_decompressed_into_the_factors_it_becomes_and_rebuilt_in_place(monkeypatch, block):
    """A high plane lands in the last bytes of its own float32 stretch and is rebuilt front to back over
    itself: whatever the block size, every number comes out exactly (no new memory for the planes)."""
    # Arrange: 301 items × 16 factors, odd so the stretch's end is not a block's end
    import recommender.artifact as artifact_module
    from recommender.array_archive import read_arrays

    monkeypatch.setattr(artifact_module, "_REBUILD_BLOCK_ELEMENTS", block)
    rng = np.random.default_rng(8)
    factors = rng.standard_normal((301, 16)).astype(np.float32)
    artifact = ModelArtifact.build([str(7000 + i) for i in range(301)], factors, np.arange(301.0), 0.1, 1.0,
                                   {"version": "v"})
    rebuild = artifact_module._FactorRebuild()

    # Act
    arrays = read_arrays(artifact.to_bytes(), then=rebuild.callbacks(), into=rebuild.landings())
    rebuilt = rebuild.factors(arrays)

    # Assert
    assert np.shares_memory(arrays["factor_columns_high_0"], rebuilt)
    assert np.shares_memory(arrays["factor_columns_high_1"], rebuilt)
    np.testing.assert_array_equal(rebuilt, factors.astype(np.float16).astype(np.float32))


def test_float16_infinity_or_nan_in_the_stored_bytes_is_refused():
    # Arrange: a high byte of 0x7C is the exponent of +infinity, 0xFE that of a negative NaN
    arrays = valid_arrays(build())
    for bad in (0x7C, 0xFE):
        high = arrays["factor_columns_high_1"].copy()
        high[0, 3] = bad

        # Act / Assert
        with pytest.raises(ArtifactError, match="infinity or NaN"):
            ModelArtifact.from_bytes(npz_bytes(**{**arrays, "factor_columns_high_1": high}))


def test_factors_rebuild_when_the_low_plane_is_compressed_too():
    # Arrange: a writer that compresses every member: the reader must not depend on this project's layout
    from recommender.array_archive import write_arrays

    artifact = build()
    data = write_arrays(artifact.arrays(), stored=())

    # Act
    restored = ModelArtifact.from_bytes(data)

    # Assert
    np.testing.assert_array_equal(restored.item_factors, artifact.item_factors)


def format_4_arrays(artifact, rows: int) -> dict:
    """The artifact as format 4 wrote it: the float16 factors' byte planes by item, split at rows // 2."""
    bits = artifact.item_factors.astype(np.float16).view(np.uint16)
    high = (bits >> 8).astype(np.uint8)
    arrays = {key: value for key, value in valid_arrays(artifact).items() if not key.startswith("factor_columns_")}
    return {**arrays, "format_version": np.int64(4), "item_factors_low": (bits & 0xFF).astype(np.uint8),
            "item_factors_high_0": high[:rows // 2], "item_factors_high_1": high[rows // 2:]}


def test_a_format_4_artifact_with_planes_by_item_reads_back_the_same_factors():
    # Arrange: published before the planes were stored factor by factor; enough rows for several blocks
    from recommender.array_archive import write_arrays

    rng = np.random.default_rng(12)
    rows = 9001
    factors = (rng.standard_normal((rows, 64)) * 0.1).astype(np.float32)
    artifact = ModelArtifact.build([str(i + 1) for i in range(rows)], factors, np.ones(rows), 0.1, 1.0, METADATA)
    data = write_arrays(format_4_arrays(artifact, rows), stored=("item_factors_low",))

    # Act
    restored = ModelArtifact.from_bytes(data)

    # Assert: bit for bit, and column-major as serving holds them
    np.testing.assert_array_equal(restored.item_factors.view(np.uint32), artifact.item_factors.view(np.uint32))
    assert restored.item_factors.flags.f_contiguous
    assert FORMAT_VERSION == 6 and "factor_columns_low.npy" in zipfile.ZipFile(io.BytesIO(artifact.to_bytes())).namelist()


def test_format_6_stores_the_per_item_arrays_as_byte_planes_lowest_bytes_first():
    # Arrange: ids 1, 258 and 65,536 are the deltas 1, 257 (0x0101) and 65,278 (0xFEFE); popularity 1.0, 2.0 and
    # 3.0 are the float32 bits 0x3F800000, 0x40000000 and 0x40400000
    from recommender.array_archive import read_arrays

    artifact = ModelArtifact.build(["1", "258", "65536"], np.ones((3, 2)), np.array([1.0, 2.0, 3.0]), 0.1, 1.0,
                                   {"version": "v"}, item_support=np.array([5, 6, 7]))

    # Act
    stored = read_arrays(artifact.to_bytes())

    # Assert: one row of bytes per rank, little end first
    expected_ids = np.zeros((8, 3), dtype=np.uint8)
    expected_ids[0] = [0x01, 0x01, 0xFE]
    expected_ids[1] = [0x00, 0x01, 0xFE]
    np.testing.assert_array_equal(stored["item_id_deltas"], expected_ids)
    np.testing.assert_array_equal(stored["popularity"], [[0, 0, 0], [0, 0, 0], [0x80, 0x00, 0x40], [0x3F, 0x40, 0x40]])
    np.testing.assert_array_equal(stored["item_support"], [[5, 6, 7], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    assert int(stored["format_version"]) == 6
    restored = ModelArtifact.from_bytes(artifact.to_bytes())
    assert restored.item_ids.tolist() == ["1", "258", "65536"]
    np.testing.assert_array_equal(restored.popularity, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(restored.item_support, [5, 6, 7])


def format_5_arrays(artifact) -> dict:
    """The artifact as format 5 wrote it: the per-item arrays typed, one value after another."""
    together = artifact.copurchase
    return {**artifact.arrays(), "format_version": np.int64(5),
            "item_id_deltas": np.diff(artifact.item_ids.numbers, prepend=np.int64(0)),
            "popularity": artifact.popularity.astype(np.float32), "item_support": artifact.item_support.astype(np.int32),
            "copurchase_counts": np.diff(together.indptr).astype(np.int32),
            "copurchase_neighbors": together.neighbors.astype(np.int32),
            "copurchase_orders": together.orders.astype(np.int32)}


def test_a_format_5_artifact_with_typed_per_item_arrays_reads_back_the_same():
    # Arrange: published before the per-item arrays were stored as byte planes
    from recommender.array_archive import write_arrays

    artifact = numeric_artifact()
    data = write_arrays(format_5_arrays(artifact), stored=("factor_columns_low",))

    # Act
    restored = ModelArtifact.from_bytes(data)

    # Assert: the values numeric_artifact's rows hold once sorted by id (10, 20, 30)
    assert restored.item_ids.tolist() == ["10", "20", "30"]
    np.testing.assert_array_equal(restored.popularity, [100, 200, 300])
    np.testing.assert_array_equal(restored.item_support, [1, 2, 3])
    np.testing.assert_array_equal(restored.copurchase.indptr, [0, 1, 1, 3])
    np.testing.assert_array_equal(restored.copurchase.neighbors, artifact.copurchase.neighbors)
    np.testing.assert_array_equal(restored.copurchase.orders, [2, 0, 4])
    np.testing.assert_array_equal(restored.item_factors, artifact.item_factors)


def test_byte_planes_of_the_wrong_shape_are_refused_by_name():
    # Arrange: three planes where int32 orders have four
    arrays = {**numeric_artifact().arrays(), "copurchase_orders": np.zeros((3, 3), dtype=np.uint8)}

    # Act / Assert
    with pytest.raises(ArtifactError, match=r"copurchase_orders must be int32 values or their 4 byte planes"):
        ModelArtifact.from_bytes(npz_bytes(**arrays))


def test_byte_planes_compress_the_per_item_arrays_smaller_than_typed_values():
    # Arrange: 5,000 Shopify-like ids (gaps under 2²¹: three of eight bytes vary), small counts and supports
    from recommender.array_archive import write_arrays

    rng = np.random.default_rng(8)
    n = 5000
    ids = (8_000_000_000_000 + np.cumsum(rng.integers(1, 2_000_000, n))).astype(str).tolist()
    counts = rng.integers(0, 4, n)
    together = CoPurchaseLists.from_counts(counts, rng.integers(0, n, counts.sum()), rng.random(counts.sum()),
                                           counts * 3)
    artifact = ModelArtifact.build(ids, rng.standard_normal((n, 8)).astype(np.float32), np.floor(rng.pareto(1.2, n)),
                                   0.1, 1.0, {"version": "v"}, item_support=rng.integers(0, 50, n), copurchase=together)

    # Act
    planes = zipfile.ZipFile(io.BytesIO(artifact.to_bytes()))
    typed = zipfile.ZipFile(io.BytesIO(write_arrays(format_5_arrays(artifact), stored=("factor_columns_low",))))

    # Assert: every byte-planed member is smaller than the same values typed
    for name in ("item_id_deltas", "popularity", "item_support", "copurchase_counts", "copurchase_neighbors",
                 "copurchase_orders"):
        assert planes.getinfo(f"{name}.npy").compress_size < typed.getinfo(f"{name}.npy").compress_size, name
