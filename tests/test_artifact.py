"""ModelArtifact bytes and LocalModelStore files: round trips, and refusal of anything corrupt or pickled."""

import hashlib
import io
import json

import numpy as np
import pytest

from recommender.artifact import FORMAT_VERSION, ModelArtifact, sha256_hex
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
    return {
        "format_version": np.int64(FORMAT_VERSION),
        "item_ids": artifact.item_ids,
        "item_factors": artifact.item_factors,
        "gramian": artifact.gramian,
        "popularity": artifact.popularity,
        "regularization": np.float64(artifact.regularization),
        "alpha": np.float64(artifact.alpha),
        "metadata": np.str_(json.dumps(METADATA)),
        "item_support": artifact.item_support,
        "copurchase_neighbors": artifact.copurchase_neighbors,
        "copurchase_scores": artifact.copurchase_scores,
        "copurchase_orders": artifact.copurchase_orders,
    }


# --- ModelArtifact -----------------------------------------------------------------------


def test_build_quantises_factors_and_computes_the_gramian_from_what_serving_uses():
    # Arrange
    original = factors32()
    quantised32 = original.astype(np.float16).astype(np.float32)

    # Act
    artifact = build()

    # Assert
    assert artifact.item_factors.dtype == np.float16
    assert artifact.item_factors.shape == (5, 8)
    np.testing.assert_array_equal(artifact.item_factors, original.astype(np.float16))
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
    assert restored.item_factors.dtype == np.float16
    np.testing.assert_array_equal(restored.item_factors, artifact.item_factors)
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


def test_float32_factors_are_refused():
    # Arrange
    artifact = build()
    arrays = {**valid_arrays(artifact), "item_factors": artifact.item_factors.astype(np.float32)}

    # Act / Assert
    with pytest.raises(ArtifactError, match="item_factors must be float16, got float32"):
        ModelArtifact.from_bytes(npz_bytes(**arrays))


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
    assert json.loads((tmp_path / "models" / SHOP / "latest.json").read_text()) == {"version": VERSION}
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

    # Act / Assert
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        models.load(models.latest(SHOP))
    assert models.latest(SHOP) == manifest  # the pointer itself is intact


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
