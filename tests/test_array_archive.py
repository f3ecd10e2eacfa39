"""The artifact's zip container: our writer's files read back exactly, by us and by Python's zipfile."""

import io
import zipfile

import numpy as np
import pytest
import zstandard

from recommender.array_archive import ZIP_ZSTANDARD, _plain_header, read_arrays, write_arrays
from recommender.errors import ArtifactError

ARRAYS = {
    "counts": np.arange(1000, dtype=np.int32) % 7,
    "plane": np.random.default_rng(1).integers(0, 256, (50, 8), dtype=np.uint8),
    "scalar": np.float64(0.25),
    "names": np.array(["a", "bb", "ccc"]),
}


def test_what_is_written_reads_back_equal_member_by_member():
    # Act
    data = write_arrays(ARRAYS, stored={"plane"})
    restored = read_arrays(data)

    # Assert
    assert set(restored) == set(ARRAYS)
    for name, array in ARRAYS.items():
        np.testing.assert_array_equal(restored[name], array)
        assert restored[name].dtype == np.asarray(array).dtype


def test_pythons_zipfile_lists_the_members_with_their_methods_and_reads_the_stored_one():
    # Act
    data = write_arrays(ARRAYS, stored={"plane"})

    # Assert: a standard zip (central directory, sizes, CRCs) with Zstandard as method 93
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        methods = {info.filename: info.compress_type for info in archive.infolist()}
        stored = np.lib.format.read_array(io.BytesIO(archive.read("plane.npy")))  # zipfile checks its CRC
        counts_info = archive.getinfo("counts.npy")
    assert methods == {"counts.npy": ZIP_ZSTANDARD, "plane.npy": zipfile.ZIP_STORED, "scalar.npy": ZIP_ZSTANDARD,
                       "names.npy": ZIP_ZSTANDARD}
    np.testing.assert_array_equal(stored, ARRAYS["plane"])
    # 1,000 int32 of period 7 compress far below their 4,000 bytes
    assert counts_info.file_size > 4000 > 10 * counts_info.compress_size


def test_the_same_arrays_give_the_same_bytes():
    assert write_arrays(ARRAYS) == write_arrays(dict(ARRAYS))


def test_a_corrupted_compressed_member_is_an_artifact_error_not_a_crash():
    # Arrange: overwrite the middle of the compressed counts member
    data = bytearray(write_arrays(ARRAYS))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = archive.getinfo("counts.npy")
    start = info.header_offset + 30 + len(info.filename)
    data[start + 4:start + 12] = b"\xff" * 8  # just after the zstd frame's magic number

    # Act / Assert
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        read_arrays(bytes(data))


def test_a_truncated_file_is_an_artifact_error():
    data = write_arrays(ARRAYS)
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        read_arrays(data[: len(data) // 2])


def test_a_damaged_version_field_is_an_artifact_error_not_a_crash():
    """zipfile raises NotImplementedError for a "version needed to extract" it does not know: one flipped bit there
    escaped as that, past every caller that refuses a damaged artifact (trending's answer without a model among them)."""
    data = bytearray(write_arrays(ARRAYS))
    directory = data.index(b"PK\x01\x02")  # the first central directory record
    data[directory + 6] |= 0x80  # its version needed to extract: 12.8 and more

    with pytest.raises(ArtifactError, match="corrupt or truncated: zip file version"):
        read_arrays(bytes(data))


def test_deflated_members_as_numpy_writes_them_are_read_too():
    # Arrange
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **ARRAYS)

    # Act
    restored = read_arrays(buffer.getvalue())

    # Assert
    np.testing.assert_array_equal(restored["counts"], ARRAYS["counts"])


def test_a_member_compressed_in_an_unknown_method_is_refused_by_name():
    # Arrange: rewrite counts.npy's method (local header byte 8, central directory byte 10) to bzip2 (12)
    data = bytearray(write_arrays({"counts": ARRAYS["counts"]}))
    data[8] = 12
    central = data.rindex(b"PK\x01\x02")
    data[central + 10] = 12

    # Act / Assert
    with pytest.raises(ArtifactError, match=r"counts.npy uses an unsupported zip compression \(12\)"):
        read_arrays(bytes(data))


def test_zstandard_frames_in_the_file_are_plain_zstd():
    # The compressed members are ordinary Zstandard frames any zstd tool decodes.
    data = write_arrays({"counts": ARRAYS["counts"]})
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo("counts.npy")
    start = info.header_offset + 30 + len(info.filename)
    raw = zstandard.ZstdDecompressor().decompress(data[start:start + info.compress_size])
    np.testing.assert_array_equal(np.lib.format.read_array(io.BytesIO(raw)), ARRAYS["counts"])


def test_headers_are_parsed_one_at_a_time_while_members_decompress_on_two_threads(monkeypatch):
    """numpy parses .npy headers with ast.literal_eval, which CPython 3.11 cannot run on two threads at once
    (SystemError: AST constructor recursion depth mismatch, seen in CI); the reader parses one at a time."""
    import threading
    import time

    # Arrange: numpy's header reader, watched: how many threads are inside it at once (it lingers a little,
    # without the GIL, so that a second thread would get in if nothing stopped it)
    inside, most = [0], [0]
    guard = threading.Lock()
    real = np.lib.format.read_array_header_1_0

    def watched(stream, *args, **kwargs):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.002)
        try:
            return real(stream, *args, **kwargs)
        finally:
            with guard:
                inside[0] -= 1

    monkeypatch.setattr(np.lib.format, "read_array_header_1_0", watched)
    # compressed: two threads decode; a structured dtype's header is one numpy reads (not the plain layout)
    arrays = {f"a{i}": np.zeros(i + 3, dtype=[("x", "<f4"), ("y", "<i2")]) for i in range(12)}

    # Act
    back = read_arrays(write_arrays(arrays))

    # Assert
    assert most[0] == 1
    assert all(np.array_equal(back[name], value) for name, value in arrays.items())


@pytest.mark.parametrize("array", [
    np.float64(0.25), np.arange(7, dtype=np.int64), np.zeros((3, 5), dtype=np.float32), np.ones((2, 0), dtype=np.uint8),
    np.arange(12, dtype=">i4").reshape(2, 3, 2), np.array(["a", "bbbbb"]), np.array([True, False]),
    np.zeros(4, dtype=np.float16), np.zeros((1, 1), dtype=np.complex64), np.zeros((70_000, 3), dtype=np.uint8),
])
def test_the_plain_header_reader_agrees_with_numpys(array):
    # Arrange: the .npy numpy writes for the array
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    raw = buffer.getvalue()
    stream = io.BytesIO(raw)
    version = np.lib.format.read_magic(stream)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(stream)

    # Act
    plain = _plain_header(raw)

    # Assert
    assert plain == (shape, fortran_order, dtype, stream.tell())
    np.testing.assert_array_equal(read_arrays(write_arrays({"a": array}))["a"], array)


def test_headers_the_plain_reader_does_not_take_go_to_numpys():
    # Arrange: a structured dtype and a Fortran-ordered array (refused: the reader wants C order)
    structured = np.zeros(3, dtype=[("x", "<f4"), ("y", "<i2")])
    fortran = io.BytesIO()
    np.lib.format.write_array(fortran, np.asfortranarray(np.zeros((2, 3))), allow_pickle=False)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("f.npy", fortran.getvalue())

    # Act / Assert
    assert _plain_header(fortran.getvalue()) is not None  # plain layout, Fortran order: refused below
    np.testing.assert_array_equal(read_arrays(write_arrays({"s": structured}))["s"], structured)
    with pytest.raises(ArtifactError, match="f.npy must be C-ordered"):
        read_arrays(archive.getvalue())


def test_a_damaged_npy_header_is_an_artifact_error_whatever_numpy_raises():
    # Arrange: an unbalanced brace makes numpy's header parser raise SyntaxError or tokenize's TokenError
    buffer = io.BytesIO()
    np.save(buffer, np.arange(4, dtype=np.int64))
    npy = buffer.getvalue().replace(b"{'descr'", b"{{'descr'", 1)[:len(buffer.getvalue())]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("a.npy", npy)

    # Act / Assert
    with pytest.raises(ArtifactError, match="corrupt or truncated: a.npy"):
        read_arrays(archive.getvalue())


def _member_start(data: bytes, name: str) -> tuple[int, zipfile.ZipInfo]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo(name)
    return info.header_offset + 30 + len(info.filename), info


def _with_crc(data: bytes, name: str, crc: int) -> bytes:
    """`data` with the CRC-32 of member `name` replaced in its local header (byte 14) and the central directory (16)."""
    out = bytearray(data)
    _, info = _member_start(data, name)
    out[info.header_offset + 14:info.header_offset + 18] = crc.to_bytes(4, "little")
    central = out.index(b"PK\x01\x02")
    while out[central + 46:central + 46 + len(name)] != name.encode():
        central = out.index(b"PK\x01\x02", central + 4)
    out[central + 16:central + 20] = crc.to_bytes(4, "little")
    return bytes(out)


def test_a_zstandard_member_is_checked_by_its_own_frame_checksum():
    # Arrange: the frame ends with its checksum (XXH64, 4 bytes); flip the last one
    data = bytearray(write_arrays({"counts": ARRAYS["counts"]}))
    start, info = _member_start(bytes(data), "counts.npy")
    assert data[start + 4] & 0x04  # the frame header says: content checksum present
    data[start + info.compress_size - 1] ^= 0x01

    # Act / Assert
    with pytest.raises(ArtifactError, match="counts.npy does not decompress: .*checksum"):
        read_arrays(bytes(data))


def test_a_member_is_decompressed_into_the_buffer_offered_for_it_and_read_normally_otherwise():
    # Arrange: a buffer of the right size for counts, none for scalar, a wrong-sized one for names
    data = write_arrays(ARRAYS, stored={"plane"})
    sizes = {}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            sizes[info.filename[:-4]] = info.file_size
    landing = np.zeros(sizes["counts"], dtype=np.uint8)
    offered = {"counts": lambda size, stored: landing, "scalar": lambda size, stored: None,
               "names": lambda size, stored: np.zeros(size - 1, dtype=np.uint8)}

    # Act
    restored = read_arrays(data, into=offered)

    # Assert: every member as written; counts lives in the buffer offered
    for name, array in ARRAYS.items():
        np.testing.assert_array_equal(restored[name], array)
    assert np.shares_memory(restored["counts"], landing)
    assert not np.shares_memory(restored["names"], landing)


def test_what_a_callback_returns_replaces_its_member_and_none_keeps_it():
    # Arrange: counts (compressed) doubled, plane (stored) reversed, names seen but kept
    data = write_arrays(ARRAYS, stored={"plane"})
    seen = []
    then = {"counts": lambda array, stored: array * 2, "plane": lambda array, stored: array[::-1],
            "names": lambda array, stored: seen.append(array.tolist())}

    # Act
    restored = read_arrays(data, then=then)

    # Assert
    np.testing.assert_array_equal(restored["counts"], ARRAYS["counts"] * 2)
    np.testing.assert_array_equal(restored["plane"], ARRAYS["plane"][::-1])
    np.testing.assert_array_equal(restored["names"], ARRAYS["names"])
    assert seen == [["a", "bb", "ccc"]]


def test_a_member_decompressed_into_an_offered_buffer_is_still_checked():
    # Arrange: a flipped bit in the frame's checksum, and a zip claiming 16 bytes fewer than the frame holds
    data = bytearray(write_arrays({"counts": ARRAYS["counts"]}))
    start, info = _member_start(bytes(data), "counts.npy")
    flipped = bytearray(data)
    flipped[start + info.compress_size - 1] ^= 0x01
    shorter = bytearray(data)
    smaller = (info.file_size - 16).to_bytes(4, "little")
    shorter[info.header_offset + 22:info.header_offset + 26] = smaller
    central = shorter.index(b"PK\x01\x02")
    shorter[central + 24:central + 28] = smaller
    offered = {"counts": lambda size, stored: np.zeros(size, dtype=np.uint8)}

    # Act / Assert
    with pytest.raises(ArtifactError, match="counts.npy does not decompress: .*checksum"):
        read_arrays(bytes(flipped), into=offered)
    with pytest.raises(ArtifactError, match="counts.npy decompresses to the wrong size"):
        read_arrays(bytes(shorter), into=offered)


def test_a_stored_member_is_checked_against_its_crc():
    # Arrange: one bit of the stored plane's bytes
    data = bytearray(write_arrays(ARRAYS, stored={"plane"}))
    start, info = _member_start(bytes(data), "plane.npy")
    data[start + info.compress_size - 5] ^= 0x10

    # Act / Assert
    with pytest.raises(ArtifactError, match="bad CRC in plane.npy"):
        read_arrays(bytes(data))


def test_members_without_a_frame_checksum_are_checked_against_their_crc(monkeypatch):
    """Zstandard frames without a checksum (as artifacts written before frames carried one) and deflated members
    are checked against the zip's CRC-32: a CRC that does not match their bytes is refused."""
    # Arrange
    real = zstandard.ZstdCompressor
    monkeypatch.setattr(zstandard, "ZstdCompressor", lambda level, write_checksum: real(level=level))
    plain_zstd = write_arrays({"counts": ARRAYS["counts"]})
    start, info = _member_start(plain_zstd, "counts.npy")
    assert not plain_zstd[start + 4] & 0x04
    deflated = io.BytesIO()
    np.savez_compressed(deflated, counts=ARRAYS["counts"])

    for data in (plain_zstd, deflated.getvalue()):
        _, info = _member_start(data, "counts.npy")
        np.testing.assert_array_equal(read_arrays(data)["counts"], ARRAYS["counts"])  # as written: read

        # Act / Assert: the same bytes under another CRC
        with pytest.raises(ArtifactError, match="bad CRC in counts.npy"):
            read_arrays(_with_crc(data, "counts.npy", info.CRC ^ 0x1))


def test_a_local_header_that_names_another_member_is_refused():
    # Arrange: the name in counts.npy's local header (its central directory entry is left as it is)
    data = bytearray(write_arrays({"counts": ARRAYS["counts"]}))
    data[30] = ord("k")

    # Act / Assert
    with pytest.raises(ArtifactError, match="the zip header of counts.npy names another file"):
        read_arrays(bytes(data))


def test_a_member_with_a_non_ascii_name_is_read_under_that_name():
    # Arrange: Python's zipfile marks a non-ASCII name as UTF-8 (flag bit 11)
    buffer = io.BytesIO()
    np.save(buffer, np.arange(3, dtype=np.int16))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("größe.npy", buffer.getvalue())

    # Act
    restored = read_arrays(archive.getvalue())

    # Assert
    np.testing.assert_array_equal(restored["größe"], np.arange(3, dtype=np.int16))


def test_a_header_naming_a_type_numpy_does_not_make_is_an_artifact_error():
    # Arrange: '<f4' becomes '<f3' (no such type), same length, so only the type is wrong
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(3, dtype=np.float32))
    npy = buffer.getvalue().replace(b"'<f4'", b"'<f3'", 1)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("a.npy", npy)

    # Act / Assert
    assert _plain_header(npy) is None
    with pytest.raises(ArtifactError, match="corrupt or truncated: a.npy"):
        read_arrays(archive.getvalue())
