"""Where artifacts are published and found: `MODEL_STORE_URL`.

The file store lays out one folder per shop:
    <root>/<shop>/<version>.npz    the artifact
    <root>/<shop>/<version>.json   its manifest (sha256, size, metadata)
    <root>/<shop>/latest.json      pointer to the version to serve
Every file is written under a temporary name, fsynced, then renamed, so a
reader sees either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from recommender.artifact import ModelArtifact, sha256_hex
from recommender.errors import ArtifactError, ConfigError, InvalidParameter

_SHOP = re.compile(r"^[a-z0-9][a-z0-9.-]{0,254}$")


@dataclass(frozen=True)
class Manifest:
    shop: str
    version: str
    sha256: str
    size: int


class ModelStore(Protocol):
    def publish(self, shop: str, artifact: ModelArtifact) -> Manifest: ...
    def latest(self, shop: str) -> Manifest | None: ...
    def load(self, manifest: Manifest) -> ModelArtifact: ...


def open_model_store(url: str) -> ModelStore:
    if url.startswith("file://"):
        return LocalModelStore(url[len("file://"):])
    raise ConfigError(f"MODEL_STORE_URL: unsupported scheme in {url!r} (use file://dir)")


def check_shop_domain(shop: str) -> str:
    """A shop domain as used for keys and paths: lower-case host name characters only."""
    if not isinstance(shop, str) or not _SHOP.match(shop) or ".." in shop:
        raise InvalidParameter("shop", f"shop must be a shop domain such as 'example.myshopify.com', got {shop!r}")
    return shop


class LocalModelStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _dir(self, shop: str) -> Path:
        return self.root / check_shop_domain(shop)

    def publish(self, shop: str, artifact: ModelArtifact) -> Manifest:
        """Write the artifact and its manifest, read both back and verify, then move `latest`."""
        data = artifact.to_bytes()
        manifest = Manifest(shop, artifact.version, sha256_hex(data), len(data))
        folder = self._dir(shop)
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(folder / f"{manifest.version}.npz", data)
        _atomic_write(folder / f"{manifest.version}.json", _manifest_json(manifest, artifact))
        self.load(manifest)  # refuse to point `latest` at anything that does not read back
        _atomic_write(folder / "latest.json", json.dumps({"version": manifest.version}).encode())
        return manifest

    def latest(self, shop: str) -> Manifest | None:
        pointer = self._dir(shop) / "latest.json"
        try:
            version = json.loads(pointer.read_bytes())["version"]
            return self.manifest(shop, version)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"model pointer {pointer} is unreadable: {exc}") from exc

    def manifest(self, shop: str, version: str) -> Manifest:
        path = self._dir(shop) / f"{version}.json"
        try:
            fields = json.loads(path.read_bytes())
            return Manifest(shop, fields["version"], fields["sha256"], int(fields["size"]))
        except FileNotFoundError:
            raise ArtifactError(f"model manifest {path} is missing") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"model manifest {path} is unreadable: {exc}") from exc

    def load(self, manifest: Manifest) -> ModelArtifact:
        path = self._dir(manifest.shop) / f"{manifest.version}.npz"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"model artifact {path} is missing") from None
        if len(data) != manifest.size:
            raise ArtifactError(f"model artifact {path} is {len(data)} bytes, its manifest says {manifest.size}")
        return ModelArtifact.from_bytes(data, expected_sha256=manifest.sha256)


def _manifest_json(manifest: Manifest, artifact: ModelArtifact) -> bytes:
    body = {"version": manifest.version, "sha256": manifest.sha256, "size": manifest.size,
            "metadata": dict(artifact.metadata)}
    return json.dumps(body, indent=2, sort_keys=True).encode()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
