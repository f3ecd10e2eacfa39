"""Where artifacts are published and found: `MODEL_STORE_URL`.

Two stores, one layout, one contract:
    file://dir              LocalModelStore: a folder (local use, one machine)
    gs://bucket[/prefix]    GCSModelStore: a Cloud Storage bucket shared by every instance

    <root>/<shop>/<version>.npz    the artifact
    <root>/<shop>/<version>.json   its manifest (sha256, size, metadata)
    <root>/<shop>/latest.json      pointer to the version to serve: {"version": ...}

Publishing never clobbers. A publisher first reads what `latest` holds; a version
is created only if its name is free; the artifact and manifest are read back and
verified; and `latest` moves only if it still holds what was read at the start.
Of two trainers racing from the same starting point exactly one wins; the other
gets PublishConflict, and the files it created are removed again.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import mmap
import os
import re
import secrets
import socket
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Protocol

from recommender.artifact import ModelArtifact, sha256_hex
from recommender.errors import ArtifactError, ConfigError
from recommender.gcs_reads import (  # noqa: F401 (re-exported: the names every caller imports from here)
    LATEST, JsonApiReads, ModelStoreUnavailable, check_shop_domain, check_version, object_key, parse_gcs_url,
)

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class PublishConflict(ArtifactError):
    """Another publisher created this version or moved `latest` first; this publish left nothing behind."""


class Manifest:
    """One published artifact: whose, which version, its sha256 and size in bytes.

    `change_token` is a cheap token of the `latest` pointer this manifest was found through (file:
    inode and mtime_ns, GCS: object generation); "" when not read through the pointer. It tells a
    poller whether `latest` moved, not which artifact this is, so equality ignores it.
    A plain class, not a dataclass: it is imported by every serving instance at cold start.
    """

    __slots__ = ("shop", "version", "sha256", "size", "change_token")

    def __init__(self, shop: str, version: str, sha256: str, size: int, change_token: str = ""):
        self.shop = shop
        self.version = version
        self.sha256 = sha256
        self.size = size
        self.change_token = change_token

    def with_token(self, change_token: str) -> "Manifest":
        return Manifest(self.shop, self.version, self.sha256, self.size, change_token)

    def _identity(self) -> tuple[str, str, str, int]:
        return self.shop, self.version, self.sha256, self.size

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Manifest) and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __repr__(self) -> str:
        return (f"Manifest(shop={self.shop!r}, version={self.version!r}, sha256={self.sha256!r}, size={self.size!r},"
                f" change_token={self.change_token!r})")


class ModelStore(Protocol):
    def publish(self, shop: str, artifact: ModelArtifact) -> Manifest: ...
    def latest(self, shop: str) -> Manifest | None: ...
    def pointer_token(self, shop: str) -> str | None: ...
    def manifest(self, shop: str, version: str) -> Manifest: ...
    def load(self, manifest: Manifest) -> ModelArtifact: ...
    def delete_shop(self, shop: str) -> int: ...
    def record_run(self, shop: str, record: dict) -> None: ...
    def runs(self, shop: str, limit: int = 20) -> list[dict]: ...
    def newest_runs(self, shop: str) -> Iterator[dict]: ...


def open_model_store(url: str) -> ModelStore:
    """`file://dir` or `gs://bucket[/prefix]`; opening does no I/O (a GCS client is made on first use)."""
    if url.startswith("file://"):
        return LocalModelStore(url[len("file://"):])
    if url.startswith("gs://"):
        return GCSModelStore(*parse_gcs_url(url))
    raise ConfigError(f"MODEL_STORE_URL: unsupported scheme in {url!r} (use file://dir or gs://bucket/prefix)")


class LocalModelStore:
    def __init__(self, root: str | Path, lock_timeout: float = 10.0):
        self.root = Path(root)
        # How long to wait for another publisher to finish moving `latest` (it takes milliseconds);
        # a lock held longer was left by a crash and must be removed by hand.
        self.lock_timeout = lock_timeout

    def _dir(self, shop: str) -> Path:
        return self.root / check_shop_domain(shop)

    def publish(self, shop: str, artifact: ModelArtifact) -> Manifest:
        """Create the artifact and its manifest, read both back and verify, then move `latest` if nobody else did."""
        folder = self._dir(shop)
        data = artifact.to_bytes()
        manifest = Manifest(shop, check_version(artifact.version), sha256_hex(data), len(data))
        folder.mkdir(parents=True, exist_ok=True)
        base = _read_if_exists(folder / LATEST)  # `latest` moves only if it still holds exactly this
        created: list[Path] = []
        try:
            for name, body in ((f"{manifest.version}.npz", data),
                               (f"{manifest.version}.json", _manifest_json(manifest, artifact))):
                _create_new(folder / name, body)
                created.append(folder / name)
            self._verify(manifest)
            token = self._move_latest(folder, base, manifest)
        except BaseException:
            # A failure once `latest` was replaced (its folder's fsync, a worker's timeout landing there) leaves it
            # naming this version: its files stay, or the shop's next load finds the pointer naming nothing.
            if _pointer_version(shop, _read_if_exists(folder / LATEST)) != manifest.version:
                for path in reversed(created):
                    path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    _fsync_dir(folder)
            raise
        return manifest.with_token(token)

    def latest(self, shop: str) -> Manifest | None:
        pointer = self._dir(shop) / LATEST
        try:
            with open(pointer, "rb") as handle:
                token = _file_token(os.fstat(handle.fileno()))  # of exactly the file read: rename swaps inodes
                data = handle.read()
        except FileNotFoundError:
            return None
        return _pointed(self, shop, data, str(pointer)).with_token(token)

    def pointer_token(self, shop: str) -> str | None:
        """The change token `latest` would report now (None: no pointer), without reading the pointer or a manifest."""
        try:
            return _file_token(os.stat(self._dir(shop) / LATEST))
        except FileNotFoundError:
            return None

    def manifest(self, shop: str, version: str) -> Manifest:
        path = self._dir(shop) / f"{check_version(version)}.json"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"model manifest {path} is missing") from None
        return _parse_manifest(shop, data, str(path))

    def load(self, manifest: Manifest) -> ModelArtifact:
        """Parse the artifact straight from the page cache (mmap): no copy of the file into the heap.

        Published files are never written again (a new version is a new file, renamed into place), so the
        mapping cannot change under the parser; the stored factors are cast to float32 from it directly.
        """
        return self._load(manifest, whole_file=False)

    def _load(self, manifest: Manifest, whole_file: bool) -> ModelArtifact:
        path = self._dir(manifest.shop) / f"{check_version(manifest.version)}.npz"
        try:
            with open(path, "rb") as file:
                if os.fstat(file.fileno()).st_size == 0:
                    return _parse_artifact(b"", manifest, str(path), whole_file)
                data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise ArtifactError(f"model artifact {path} is missing") from None
        return _parse_artifact(data, manifest, str(path), whole_file)

    def delete_shop(self, shop: str) -> int:
        """Delete the shop's pointer, artifacts and manifests (shop/redact); returns how many files went."""
        folder = self._dir(shop)
        try:
            paths = sorted(folder.iterdir(), key=lambda p: p.name != LATEST)  # the pointer first: no reader follows it
        except FileNotFoundError:
            return 0
        for path in paths:
            path.unlink(missing_ok=True)
        folder.rmdir()
        _fsync_dir(self.root)
        return len(paths)

    def record_run(self, shop: str, record: dict) -> None:
        """Keep one training run's log (when, events, metrics, published or why not) beside the models."""
        folder = self._dir(shop)
        folder.mkdir(parents=True, exist_ok=True)
        _create_new(folder / _run_name(), json.dumps(record, sort_keys=True).encode())

    def runs(self, shop: str, limit: int = 20) -> list[dict]:
        """The newest `limit` run logs, newest first."""
        return list(itertools.islice(self.newest_runs(shop), limit))

    def newest_runs(self, shop: str) -> Iterator[dict]:
        """Every run log, newest first, each read when it is reached."""
        try:
            names = sorted((p for p in self._dir(shop).iterdir() if p.name.startswith(RUN_PREFIX)), reverse=True)
        except FileNotFoundError:
            return
        for path in names:
            yield json.loads(path.read_bytes())

    def _verify(self, manifest: Manifest) -> None:
        """Refuse to point `latest` at anything that does not read back exactly as written."""
        if self.manifest(manifest.shop, manifest.version) != manifest:
            raise ArtifactError(f"model manifest {manifest.version}.json read back differently from what was written")
        self._load(manifest, whole_file=True)

    def _move_latest(self, folder: Path, base: bytes | None, manifest: Manifest) -> str:
        """Swap in the new pointer if the current one still holds `base`; returns the new pointer's change token."""
        pointer, version = folder / LATEST, manifest.version
        staged = _write_temporary(folder, LATEST, _pointer_json(manifest))
        try:
            token = _file_token(os.stat(staged))
            with self._pointer_lock(folder):
                current = _read_if_exists(pointer)
                if current != base:
                    raise PublishConflict(
                        f"{pointer} moved while {version} was being published (it held {_describe(base)}, now"
                        f" {_describe(current)}): another trainer published first; {version} was not kept"
                    )
                os.replace(staged, pointer)
                _fsync_dir(folder)
        finally:
            Path(staged).unlink(missing_ok=True)
        return token

    @contextlib.contextmanager
    def _pointer_lock(self, folder: Path) -> Iterator[None]:
        """Held only to compare and swap `latest`. O_CREAT|O_EXCL: exactly one creator succeeds."""
        lock = folder / f"{LATEST}.lock"
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                if time.monotonic() >= deadline:
                    raise PublishConflict(
                        f"{lock} is held by another publisher ({_read_if_exists(lock)!r}) for over"
                        f" {self.lock_timeout:g}s; if no trainer is running, a crash left it: delete it"
                    ) from None
                time.sleep(0.01)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
            yield
        finally:
            lock.unlink(missing_ok=True)
            _fsync_dir(folder)


_UNDECIDED = object()  # GCSModelStore's reads before the environment was looked at


class GCSModelStore:
    """The same layout in a Cloud Storage bucket; generation preconditions make publishing safe across instances.

    google-cloud-storage is imported on first use, never on the serving import path, and a serving
    instance's reads (the pointer, manifests, artifacts) go without it where they can (`JsonApiReads`).
    `client` (a google.cloud.storage.Client) is made from the environment when not given.
    """

    def __init__(self, bucket: str, prefix: str = "", client: Any = None, reads: "JsonApiReads | None" = None):
        self.bucket_name = bucket
        self.prefix = prefix.strip("/")
        self._client = client
        self._client_lock = threading.Lock()
        self._reads_lock = threading.Lock()
        # JsonApiReads.for_environment decides on the first read, unless a client or reads were given; None: the
        # client reads.
        self._reads: JsonApiReads | None | object = reads if reads is not None or client is not None else _UNDECIDED

    @property
    def url(self) -> str:
        return f"gs://{self.bucket_name}/{self.prefix}".rstrip("/")

    def publish(self, shop: str, artifact: ModelArtifact) -> Manifest:
        """Create the artifact and its manifest (generation 0: never overwrite), verify, then move `latest`
        with a precondition on the generation read at the start."""
        check_shop_domain(shop)
        data = artifact.to_bytes()
        manifest = Manifest(shop, check_version(artifact.version), sha256_hex(data), len(data))
        bucket = self._bucket()
        base = self._pointer_generation(shop)  # 0 if none: then `latest` may only be created, not replaced
        created: list[Any] = []
        try:
            for name, body, content_type in ((f"{manifest.version}.npz", data, "application/octet-stream"),
                                             (f"{manifest.version}.json", _manifest_json(manifest, artifact),
                                              "application/json")):
                blob = bucket.blob(self._key(shop, name))
                with _gcs_errors(f"uploading {self._url(shop, name)}", conflict=(
                        f"model version {self._url(shop, name)} already exists; versions are never overwritten")):
                    blob.upload_from_string(body, content_type=content_type, if_generation_match=0)
                created.append(blob)
            self._verify(manifest)
        except BaseException:
            self._remove(created)
            raise
        pointer = bucket.blob(self._key(shop, LATEST))
        try:
            with _gcs_errors(f"moving {self._url(shop, LATEST)}", conflict=(
                    f"{self._url(shop, LATEST)} moved while {manifest.version} was being published (expected"
                    f" generation {base}): another trainer published first; {manifest.version} was not kept")):
                pointer.upload_from_string(_pointer_json(manifest), content_type="application/json",
                                           if_generation_match=base)
        except BaseException as exc:
            # The write may have been made with its answer lost: google-cloud-storage retries it, and the retry of a
            # write made finds the generation moved (412), or the retries run out. What `latest` names decides.
            try:
                now = self._bucket().get_blob(self._key(shop, LATEST))
                generation = None if now is None else now.generation  # as read, before the bytes of that generation
                named = None if now is None else _pointer_version(
                    shop, now.download_as_bytes(if_generation_match=generation))
            except Exception:  # noqa: BLE001 - out of reach: the files stay, a pointer may name them
                log.warning("could not read %s after its move failed; %s kept", self._url(shop, LATEST),
                            manifest.version)
                raise exc
            if named != manifest.version:
                # removed only when the move cannot land any more: refused (412), or `latest` moved past the
                # generation it was made on. Still there after an answer that never came, it may yet land (a request
                # sent, not answered): the files stay, unnamed if it does not (an orphan costs their bytes alone).
                if isinstance(exc, PublishConflict) or (generation or 0) != base:
                    self._remove(created)
                else:
                    log.warning("moving %s to %s ended in %s with the pointer unmoved; %s kept in case the move lands",
                                self._url(shop, LATEST), manifest.version, type(exc).__name__, manifest.version)
                raise
            if not isinstance(exc, Exception):
                raise
            log.warning("moving %s to %s reported %s, but it names %s: published", self._url(shop, LATEST),
                        manifest.version, type(exc).__name__, manifest.version)
            return manifest.with_token(str(generation))
        return manifest.with_token(str(pointer.generation))

    def latest(self, shop: str) -> Manifest | None:
        key, where = self._key(shop, LATEST), self._url(shop, LATEST)
        reads = self._light_reads()
        if reads is not None:
            found = reads.pointer(key, where)
            return None if found is None else self.pointed(shop, *found)
        for _ in range(3):
            # The pointer's generation first, then exactly that generation's bytes, so the token is that of
            # these bytes; a 404 for them means `latest` moved in between: read the new one.
            with _gcs_errors(f"reading {where}"):
                pointer = self._bucket().get_blob(key)
            if pointer is None:
                return None
            token = str(pointer.generation)  # taken now: a download resets it from response headers
            data = self._download(pointer, where)  # the blob's media link pins the generation just read
            if data is not None:
                return _pointed(self, shop, data, where).with_token(token)
        raise ModelStoreUnavailable(f"{where} kept moving while being read; retry")

    def pointed(self, shop: str, pointer: bytes, generation: int) -> Manifest:
        """The manifest that `latest`'s bytes of that generation point at (what `latest` returns)."""
        return _pointed(self, shop, pointer, self._url(shop, LATEST)).with_token(str(generation))

    def load_bytes(self, manifest: Manifest, data: bytes) -> ModelArtifact:
        """`load`, with the artifact's bytes already read (recommender.prefetch): the same checks, no request."""
        name = f"{check_version(manifest.version)}.npz"
        return _parse_artifact(data, manifest, self._url(check_shop_domain(manifest.shop), name), whole_file=False)

    def pointer_token(self, shop: str) -> str | None:
        """The pointer's generation as `latest` would report it now (None: no pointer): one small request for the
        generation alone, with neither the pointer's bytes nor a manifest."""
        reads = self._light_reads()
        if reads is not None:
            generation = reads.generation(self._key(shop, LATEST), self._url(shop, LATEST))
        else:
            generation = self._pointer_generation(shop) or None  # 0: no pointer
        return None if generation is None else str(generation)

    def manifest(self, shop: str, version: str) -> Manifest:
        where = self._url(shop, f"{check_version(version)}.json")
        data = self._read(self._key(shop, f"{version}.json"), where)
        if data is None:
            raise ArtifactError(f"model manifest {where} is missing")
        return _parse_manifest(shop, data, where)

    def load(self, manifest: Manifest) -> ModelArtifact:
        return self._load(manifest, whole_file=False)

    def _load(self, manifest: Manifest, whole_file: bool) -> ModelArtifact:
        name = f"{check_version(manifest.version)}.npz"
        where = self._url(check_shop_domain(manifest.shop), name)
        data = self._read(self._key(manifest.shop, name), where)
        if data is None:
            raise ArtifactError(f"model artifact {where} is missing")
        return _parse_artifact(data, manifest, where, whole_file)

    def delete_shop(self, shop: str) -> int:
        """Delete every generation of the shop's pointer, artifacts and manifests (shop/redact); returns the count.

        The bucket's soft-delete policy still keeps deleted objects for its retention period.
        """
        from google.api_core.exceptions import NotFound

        prefix = self._key(check_shop_domain(shop), "")
        bucket = self._bucket()
        with _gcs_errors(f"deleting {self._url(shop, '')}"):
            blobs = list(bucket.list_blobs(prefix=prefix, versions=True))
            blobs.sort(key=lambda blob: blob.name != prefix + LATEST)  # the pointer first: no reader follows it
            for blob in blobs:
                with contextlib.suppress(NotFound):  # already gone: that is what was asked
                    blob.delete()
        return len(blobs)

    def _client_or_new(self) -> Any:
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    from google.auth.exceptions import DefaultCredentialsError
                    from google.cloud import storage  # heavy: only when gs:// is configured

                    try:
                        self._client = storage.Client()
                    except DefaultCredentialsError as exc:
                        raise ConfigError(f"MODEL_STORE_URL={self.url} needs Google Cloud credentials: {exc}") from exc
        return self._client

    def _bucket(self) -> Any:
        return self._client_or_new().bucket(self.bucket_name)

    def _key(self, shop: str, name: str) -> str:
        return object_key(self.prefix, shop, name)

    def _url(self, shop: str, name: str) -> str:
        return f"gs://{self.bucket_name}/{self._key(shop, name)}"

    def _pointer_generation(self, shop: str) -> int:
        with _gcs_errors(f"reading {self._url(shop, LATEST)}"):
            pointer = self._bucket().get_blob(self._key(shop, LATEST))
        return int(pointer.generation) if pointer is not None else 0

    def _light_reads(self) -> "JsonApiReads | None":
        if self._reads is _UNDECIDED:
            with self._reads_lock:  # shops' first loads run side by side: one JsonApiReads, one token and TLS context
                if self._reads is _UNDECIDED:
                    self._reads = JsonApiReads.for_environment(self.bucket_name, os.environ)
        return self._reads  # type: ignore[return-value]

    def _read(self, key: str, where: str) -> bytes | None:
        """An object's bytes (None if it does not exist), without google-cloud-storage where the environment allows."""
        reads = self._light_reads()
        if reads is not None:
            return reads.media(key, where)
        return self._download(self._bucket().blob(key), where)

    def _download(self, blob: Any, where: str) -> bytes | None:
        """The object's bytes, or None if it does not exist."""
        from google.api_core.exceptions import NotFound

        with _gcs_errors(f"reading {where}"):
            try:
                return blob.download_as_bytes()
            except NotFound:
                return None

    def record_run(self, shop: str, record: dict) -> None:
        name = _run_name()
        with _gcs_errors(f"writing {self._url(shop, name)}"):
            self._bucket().blob(self._key(shop, name)).upload_from_string(
                json.dumps(record, sort_keys=True).encode(), content_type="application/json", if_generation_match=0)

    def runs(self, shop: str, limit: int = 20) -> list[dict]:
        return list(itertools.islice(self.newest_runs(shop), limit))

    def newest_runs(self, shop: str) -> Iterator[dict]:
        """Every run log, newest first: one listing, then each log's download when it is reached (the training job's
        gate wants the newest published one, and reading fifty of them took fifty requests a shop every night)."""
        prefix = self._key(shop, RUN_PREFIX)
        with _gcs_errors(f"listing {self._url(shop, RUN_PREFIX)}*"):
            blobs = sorted(self._client_or_new().list_blobs(self.bucket_name, prefix=prefix),
                           key=lambda blob: blob.name, reverse=True)
        for blob in blobs:
            data = self._download(blob, f"gs://{self.bucket_name}/{blob.name}")
            if data is not None:  # deleted since the listing
                yield json.loads(data)

    def _verify(self, manifest: Manifest) -> None:
        """Refuse to point `latest` at anything that does not read back exactly as written."""
        if self.manifest(manifest.shop, manifest.version) != manifest:
            raise ArtifactError(f"model manifest {manifest.version}.json read back differently from what was written")
        self._load(manifest, whole_file=True)

    def _remove(self, blobs: list[Any]) -> None:
        """Undo a publish that did not complete: delete exactly the generations it created."""
        for blob in reversed(blobs):
            try:
                with _gcs_errors(f"removing gs://{self.bucket_name}/{blob.name}"):
                    blob.delete(if_generation_match=blob.generation)
            except ArtifactError as exc:  # the publish's own error matters more; this one is logged
                log.warning("could not remove %s after a failed publish: %s", blob.name, exc)


@contextlib.contextmanager
def _gcs_errors(action: str, conflict: str | None = None) -> Iterator[None]:
    """Translate google-cloud-storage failures into this package's errors, saying what was being done."""
    import requests
    from google.api_core import exceptions as api
    from google.auth.exceptions import GoogleAuthError
    from google.cloud.storage.exceptions import DataCorruption, InvalidResponse

    try:
        yield
    except api.PreconditionFailed as exc:
        if conflict is None:
            raise ModelStoreUnavailable(f"{action}: {exc}") from exc
        raise PublishConflict(conflict) from exc
    except (api.GoogleAPIError, GoogleAuthError, InvalidResponse, DataCorruption, requests.RequestException) as exc:
        raise ModelStoreUnavailable(f"{action} failed: {exc}") from exc


RUN_PREFIX = "run-"


def _run_name() -> str:
    """Sortable and unique enough: UTC time to the microsecond plus a random tail."""
    return f"{RUN_PREFIX}{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(3)}.json"


def _pointer_json(manifest: Manifest) -> bytes:
    """`latest`: the version it points at, and that version's checksum and size as its manifest holds them, so that
    a serving instance's first load reads the pointer and the artifact, not the manifest between them (one round
    trip fewer to Cloud Storage, bench/PERFORMANCE.md). The manifest file stays the version's own record."""
    return json.dumps({"version": manifest.version, "sha256": manifest.sha256, "size": manifest.size}).encode()


def _pointed(store: ModelStore, shop: str, pointer: bytes, where: str) -> Manifest:
    """The manifest `latest` points at: from the pointer itself, or from the manifest file of a pointer without it."""
    version, manifest = _parse_pointer(shop, pointer, where)
    return manifest if manifest is not None else store.manifest(shop, version)


def _parse_pointer(shop: str, data: bytes, where: str) -> tuple[str, Manifest | None]:
    """(version, its manifest if the pointer carries it); a pointer written before it did names the version only."""
    try:
        fields = json.loads(data)
        version = check_version(fields["version"])
        if "sha256" not in fields and "size" not in fields:
            return version, None
        sha256, size = fields["sha256"], fields["size"]
        if not isinstance(sha256, str) or not _SHA256.match(sha256) or type(size) is not int or size < 0:
            raise ValueError(f"sha256 {sha256!r} and size {size!r} are not a checksum and a byte count")
        return version, Manifest(shop, version, sha256, size)
    except (ValueError, KeyError, TypeError, ArtifactError) as exc:
        raise ArtifactError(f"model pointer {where} is unreadable: {exc}") from exc


def _manifest_json(manifest: Manifest, artifact: ModelArtifact) -> bytes:
    body = {"version": manifest.version, "sha256": manifest.sha256, "size": manifest.size,
            "metadata": dict(artifact.metadata)}
    return json.dumps(body, indent=2, sort_keys=True).encode()


def _parse_manifest(shop: str, data: bytes, where: str) -> Manifest:
    try:
        fields = json.loads(data)
        return Manifest(shop, fields["version"], fields["sha256"], int(fields["size"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"model manifest {where} is unreadable: {exc}") from exc


def _parse_artifact(data: bytes | mmap.mmap, manifest: Manifest, where: str, whole_file: bool) -> ModelArtifact:
    """The artifact, if it is the one its manifest describes: its size, its version, every member's checksum.

    `whole_file` adds the sha256 of the whole file, as a publish reads its artifact back. A serving load
    goes without it: the members' own checksums (recommender/array_archive.py) already refuse a damaged
    file, and the sha256 was a third of the load's CPU, paid by a new instance's first shopper
    (bench/PERFORMANCE.md).
    """
    if len(data) != manifest.size:
        raise ArtifactError(f"model artifact {where} is {len(data)} bytes, its manifest says {manifest.size}")
    artifact = ModelArtifact.from_bytes(data, expected_sha256=manifest.sha256 if whole_file else None)
    if artifact.version != manifest.version:
        raise ArtifactError(f"model artifact {where} holds version {artifact.version!r}, its manifest says"
                            f" {manifest.version!r}")
    return artifact


def _pointer_version(shop: str, pointer: bytes | None) -> str | None:
    """The version a `latest` pointer's bytes name; None for none, or bytes that name nothing readable."""
    try:
        return None if pointer is None else _parse_pointer(shop, pointer, LATEST)[0]
    except ArtifactError:
        return None


def _describe(pointer: bytes | None) -> str:
    return "nothing" if pointer is None else pointer.decode(errors="replace")


def _file_token(stat: os.stat_result) -> str:
    return f"{stat.st_ino}:{stat.st_mtime_ns}"


def _read_if_exists(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _write_temporary(folder: Path, name: str, data: bytes) -> str:
    """A fsynced file beside its final name, for a rename or link into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def _create_new(path: Path, data: bytes) -> None:
    """Write a complete file under `path` only if that name is free: os.link never replaces."""
    tmp = _write_temporary(path.parent, path.name, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise PublishConflict(f"model version file {path} already exists; versions are never overwritten") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
