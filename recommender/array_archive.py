"""The artifact's container: a zip of `.npy` members, each stored as it is or compressed with Zstandard.

Zip method 93 is Zstandard (PKWARE APPNOTE 6.3.7). Zstandard decodes the factors' high bytes
about 8× faster than zlib inflates them (3.3 against 28 ms for 100k × 64 bytes on the benchmark
machine), at a smaller size (0.69 against 0.72 of the raw bytes), and a new instance's first
request waits for exactly that. `unzip -l` lists the members;
`read_arrays` reads them (deflated members too, as `np.savez_compressed` writes them).

The writer is ours because Python 3.11's zipfile writes no Zstandard. Members carry fixed
timestamps, so the same arrays always give the same bytes. No pickle, ever: object arrays are
refused on the way in and on the way out. Every member is checked on every read: a Zstandard frame
carries its own checksum (XXH64, verified while it decodes, at almost no cost), every other member
is checked against the zip's CRC-32.
"""

from __future__ import annotations

import io
import re
import struct
import threading
import zipfile
import zlib
from typing import Callable, Iterable, Mapping

import numpy as np

from recommender.errors import ArtifactError
from recommender.parallel import on_two_threads

ZIP_ZSTANDARD = 93
ZSTD_LEVEL = 3  # higher levels shrink these arrays by under 1 % and write several times slower
_NPY_HEADER_BYTES = 65_546  # a .npy 1.0 header's most (magic, version, length, 65,535 bytes of header)
# numpy reads a .npy header with ast.literal_eval, and CPython 3.11's AST objects keep one recursion counter
# per interpreter: two threads parsing at once can fail with "SystemError: AST constructor recursion depth
# mismatch" (seen in CI while the two decompression threads read their members' headers). One at a time.
_HEADER_LOCK = threading.Lock()
_DOS_DATE_1980 = (0, 0x21)  # (time, date): 1980-01-01 00:00, zip's earliest
_MAX_ZIP32 = 0xFFFF_FFFF
# General purpose flag bit 11: the names are UTF-8. Ours are ASCII either way; without the bit, Python's zipfile
# decodes them as code page 437, whose codec a new instance would import on its first request (~1.2 ms).
_UTF8_NAMES = 0x800
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Relative cost per byte of the read's work, to share it out between two threads: a stored member's
# CRC-32 runs several times faster than decompressing, and a member with a `then` is also rebuilt.
_CRC_COST = 0.25
_THEN_COST = 3.0
# The header numpy's writer gives an array of a plain dtype, e.g. {'descr': '<f4', 'fortran_order': False,
# 'shape': (100000, 64), } padded with spaces to a multiple of 64 bytes and ending in a newline.
_PLAIN_NPY_HEADER = re.compile(rb"\{'descr': '([<>|=]?[a-zA-Z][0-9]*)', 'fortran_order': (False|True),"
                               rb" 'shape': \(((?:[0-9]+, ?)*[0-9]*)\), \} *\n")


def write_arrays(arrays: Mapping[str, np.ndarray], stored: Iterable[str] = ()) -> bytes:
    """A zip of `name.npy` members: those named in `stored` as they are, the rest Zstandard-compressed."""
    import zstandard  # on first use, like the decoder below: functions that never read a model never load it

    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
    stored = set(stored)
    out = io.BytesIO()
    central = []
    for name, array in arrays.items():
        raw = io.BytesIO()
        np.lib.format.write_array(raw, np.asanyarray(array), allow_pickle=False)
        payload = raw.getvalue()
        method = zipfile.ZIP_STORED if name in stored else ZIP_ZSTANDARD
        body = payload if method == zipfile.ZIP_STORED else compressor.compress(payload)
        if max(len(payload), len(body), out.tell()) > _MAX_ZIP32:
            raise ArtifactError(f"array {name} makes the artifact larger than 4 GiB, which this format does not hold")
        filename = f"{name}.npy".encode()
        fields = (63 if method == ZIP_ZSTANDARD else 20, _UTF8_NAMES, method, *_DOS_DATE_1980, zlib.crc32(payload),
                  len(body), len(payload), len(filename))
        central.append((fields, filename, out.tell()))
        out.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", *fields, 0))
        out.write(filename)
        out.write(body)
    directory_start = out.tell()
    for fields, filename, offset in central:
        out.write(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 63, *fields, 0, 0, 0, 0, 0, offset))
        out.write(filename)
    directory_size = out.tell() - directory_start
    out.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(central), len(central), directory_size,
                          directory_start, 0))
    return out.getvalue()


def read_arrays(data: bytes,
                then: Mapping[str, Callable[[np.ndarray, Mapping[str, np.ndarray]], np.ndarray | None]] | None = None,
                into: Mapping[str, Callable[[int, Mapping[str, np.ndarray]], np.ndarray | None]] | None = None,
                ) -> dict[str, np.ndarray]:
    """Every `.npy` member of the zip in `data`, by name, each checked, without pickle and without copying stored ones.

    Stored members become read-only views of `data` (an mmap stays an mmap); compressed ones are
    decompressed. The work (decompressing, and checking each stored member's CRC-32) is shared out
    between this thread and a second one (zstd, zlib and crc32 release the GIL), the costliest first.
    A Zstandard member whose frame carries its own checksum (XXH64, as `write_arrays` writes them) is
    checked by the decompressor as it goes; any other member against the CRC-32 in the zip. `then[name](array,
    stored)`, if given, runs on the thread that decompressed that member, at once, with the stored members
    by name: work on a large member starts while the other thread is still decompressing, and may start
    before a stored member's CRC has been checked (a bad one still fails the whole read). An array it returns
    replaces the member in the result (the member's own memory can go at once); None keeps the member.
    Corrupt or truncated input raises ArtifactError.

    `into[name](size, stored)`, if given, may return a writable uint8 buffer of `size` bytes (the member's
    whole .npy file) for a Zstandard member to be decompressed into, on the thread that decompresses it,
    instead of new memory; None declines.
    """
    try:
        with zipfile.ZipFile(data if hasattr(data, "seek") else io.BytesIO(data)) as archive:  # an mmap is a file
            infos = [info for info in archive.infolist() if info.filename.endswith(".npy")]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError) as exc:  # a damaged version field
        raise ArtifactError(f"artifact is corrupt or truncated: {exc}") from exc
    view = memoryview(data)
    arrays: dict[str, np.ndarray] = {}
    stored: dict[str, np.ndarray] = {}
    jobs: list[tuple[float, Callable[[], None]]] = []  # (estimated cost, work)
    then = then or {}
    into = into or {}
    for info in infos:
        name = info.filename[:-4]
        if info.compress_type == zipfile.ZIP_STORED:
            raw = _member_bytes(view, info)
            arrays[name] = stored[name] = _npy(raw, info)
            jobs.append((info.file_size * _CRC_COST, lambda raw=raw, info=info: _check_crc(raw, info)))
        elif info.compress_type in (ZIP_ZSTANDARD, zipfile.ZIP_DEFLATED):
            def decompress(member: zipfile.ZipInfo = info, name: str = name) -> None:
                landing = into[name](member.file_size, stored) if name in into else None
                arrays[name] = array = _npy(_decompressed(view, member, landing), member)
                if name in then:
                    replacement = then[name](array, stored)
                    if replacement is not None:
                        arrays[name] = replacement
            jobs.append((info.file_size * (_THEN_COST if name in then else 1.0), decompress))
        else:
            raise ArtifactError(f"{info.filename} uses an unsupported zip compression ({info.compress_type})")
    for name, array in stored.items():
        if name in then:
            replacement = then[name](array, stored)
            if replacement is not None:
                arrays[name] = replacement
    shares: tuple[list[Callable[[], None]], list[Callable[[], None]]] = ([], [])
    totals = [0.0, 0.0]
    for cost, job in sorted(jobs, key=lambda job: -job[0]):  # the costliest first, each to the lighter thread
        lighter = 0 if totals[0] <= totals[1] else 1
        shares[lighter].append(job)
        totals[lighter] += cost
    on_two_threads(lambda: _run_all(shares[1]), lambda: _run_all(shares[0]), name="artifact-decompress")
    return arrays


def _run_all(jobs: list[Callable[[], None]]) -> None:
    for job in jobs:
        job()


def _check_crc(raw: bytes | memoryview, info: zipfile.ZipInfo) -> None:
    if zlib.crc32(raw) != info.CRC:
        raise ArtifactError(f"artifact is corrupt or truncated: bad CRC in {info.filename}")


def _has_frame_checksum(member: memoryview) -> bool:
    """Whether a Zstandard frame carries a content checksum: bit 2 of the byte after the 4-byte magic number."""
    return len(member) > 4 and bytes(member[:4]) == _ZSTD_MAGIC and bool(member[4] & 0x04)


def _decompressed(view: memoryview, info: zipfile.ZipInfo, into: np.ndarray | None = None) -> bytes | np.ndarray:
    """The member's bytes, checked: by the frame's own checksum while decoding, or by the zip's CRC-32 after.

    `into`: a writable uint8 buffer of the member's size to decompress a Zstandard member into."""
    member = _member_bytes(view, info)
    try:
        if info.compress_type == zipfile.ZIP_DEFLATED:
            raw = zlib.decompressobj(-15).decompress(member, info.file_size + 1)
            checked = False
        else:
            import zstandard

            if into is None or len(into) != info.file_size:
                raw = zstandard.ZstdDecompressor().decompress(member, max_output_size=info.file_size + 1)
            else:
                reader = zstandard.ZstdDecompressor().stream_reader(member)
                filled = reader.readinto(into)
                raw = into if filled == len(into) and not reader.read(1) else b""  # read(1): to the frame's end
            checked = _has_frame_checksum(member)
    except Exception as exc:  # zlib.error, zstandard.ZstdError: the bytes are not what they claim
        raise ArtifactError(f"artifact is corrupt or truncated: {info.filename} does not decompress: {exc}") from exc
    if len(raw) != info.file_size:
        raise ArtifactError(f"artifact is corrupt or truncated: {info.filename} decompresses to the wrong size")
    if not checked:
        _check_crc(raw, info)
    return raw


def _member_bytes(view: memoryview, info: zipfile.ZipInfo) -> memoryview:
    """The member's bytes as stored. Zip local header: 30 fixed bytes, then the name (checked against the
    central directory's) and the extra field; bytes 26–29 give their lengths."""
    header = info.header_offset
    if bytes(view[header:header + 4]) != b"PK\x03\x04":
        raise ArtifactError(f"artifact is corrupt or truncated: bad zip header for {info.filename}")
    name_length, extra_length = struct.unpack_from("<HH", view, header + 26)
    if bytes(view[header + 30:header + 30 + name_length]) != _raw_name(info):
        raise ArtifactError(f"artifact is corrupt or truncated: the zip header of {info.filename} names another file")
    start = header + 30 + name_length + extra_length
    member = view[start:start + info.compress_size]
    if len(member) != info.compress_size:
        raise ArtifactError("artifact is corrupt or truncated: a member runs past the end of the file")
    return member


def _raw_name(info: zipfile.ZipInfo) -> bytes:
    """The member's name as the zip stores it: UTF-8 if flag bit 11 is set, else code page 437 (ASCII, as ours
    are, is the same in both, and needs no codec loaded on a new instance's first request)."""
    try:
        return info.orig_filename.encode("ascii")
    except UnicodeEncodeError:
        return info.orig_filename.encode("utf-8" if info.flag_bits & _UTF8_NAMES else "cp437")


def _npy(raw: bytes | memoryview, info: zipfile.ZipInfo) -> np.ndarray:
    """One `.npy` file's array, viewing `raw` (read-only); its bytes are checked by the caller."""
    if len(raw) != info.file_size:
        raise ArtifactError(f"artifact is corrupt or truncated: {info.filename} is the wrong size")
    plain = _plain_header(raw)
    if plain is not None:
        shape, fortran_order, dtype, offset = plain
    else:
        shape, fortran_order, dtype, offset = _numpy_header(raw, info)
    if dtype.hasobject:
        raise ArtifactError(f"{info.filename} holds Python objects, which are never unpickled (allow_pickle=False)")
    if fortran_order:
        raise ArtifactError(f"{info.filename} must be C-ordered")
    count = int(np.prod(shape, dtype=np.int64))
    if offset + count * dtype.itemsize != len(raw):
        raise ArtifactError(f"artifact is corrupt or truncated: {info.filename} holds the wrong number of bytes")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(shape)


def _plain_header(raw: bytes | memoryview) -> tuple[tuple[int, ...], bool, np.dtype, int] | None:
    """(shape, fortran_order, dtype, data offset) of a .npy 1.0 or 2.0 header exactly as numpy writes one for a
    plain dtype, else None. numpy's own reader (tokenize, then ast.literal_eval) takes ~0.25 ms a member, one
    thread at a time, and ~1.5 ms more on a new instance's first call; this takes microseconds."""
    head = bytes(raw[:12])
    if len(head) < 12 or head[:6] != b"\x93NUMPY" or head[7] != 0:
        return None
    if head[6] == 1:
        length, start = int.from_bytes(head[8:10], "little"), 10
    elif head[6] == 2:
        length, start = int.from_bytes(head[8:12], "little"), 12
    else:
        return None
    match = _PLAIN_NPY_HEADER.fullmatch(bytes(raw[start:start + length]))
    if match is None:
        return None
    descr, fortran, dims = match.groups()
    try:
        dtype = np.dtype(descr.decode("ascii"))
    except (TypeError, ValueError, OverflowError):  # a type numpy does not make: its own reader says what is wrong
        return None
    return tuple(int(dim) for dim in dims.split(b",") if dim.strip()), fortran == b"True", dtype, start + length


def _numpy_header(raw: bytes | memoryview, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Any other header, read by numpy (safely: no pickle), one thread at a time."""
    stream = io.BytesIO(raw[:_NPY_HEADER_BYTES])  # the header only: BytesIO copies what it is given
    try:
        version = np.lib.format.read_magic(stream)
        with _HEADER_LOCK:
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
            elif version == (2, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
            else:
                raise ArtifactError(f"{info.filename} uses .npy format {version}, expected 1.0 or 2.0")
    except ArtifactError:
        raise
    except Exception as exc:  # a damaged header: ValueError, or SyntaxError and TokenError from numpy's header parser
        raise ArtifactError(f"artifact is corrupt or truncated: {info.filename}: {exc!r}") from exc
    return shape, fortran_order, dtype, stream.tell()
