"""Model stores: the file store's no-clobber publishing across processes, and the gs:// store on a real emulator.

The Cloud Storage tests run against gcp-storage-emulator started as its own process on a free loopback
port, with STORAGE_EMULATOR_HOST pointing the real google-cloud-storage client at it. They skip, saying
why, where the emulator cannot be started.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import pytest

from recommender.artifact import ModelArtifact
from recommender.errors import ArtifactError, ConfigError, InvalidParameter
from recommender.model_store import (
    GCSModelStore, JsonApiReads, LocalModelStore, Manifest, ModelStoreUnavailable, PublishConflict,
    open_model_store,
)
from recommender.prefetch import Prefetch
from recommender.preload import Preloader
from recommender.settings import Settings
from tests.conftest import ROOT, SHOP

OTHER_SHOP = "other-shop.myshopify.com"
V1 = "20261101T000000000000Z"
V2 = "20261102T000000000000Z"
ITEM_IDS = ["8000000000001", "8000000000002", "8000000000003", "8000000000004"]
BUCKET = "recommender-models-test"


def artifact(version: str) -> ModelArtifact:
    """A real artifact: 4 items × 3 factors, items ranked 1 > 2 > 3 > 4 by popularity."""
    factors = np.random.default_rng(3).standard_normal((len(ITEM_IDS), 3)).astype(np.float32)
    return ModelArtifact.build(ITEM_IDS, factors, np.array([4.0, 3.0, 2.0, 1.0]), 0.05, 2.0, {"version": version})


def _flip_inside(data: bytes, member: str) -> bytes:
    """`data` with one bit flipped in the middle of a zip member's stored bytes."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo(member)
    at = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# --- choosing a store by MODEL_STORE_URL -------------------------------------------------


def test_open_model_store_picks_the_store_by_scheme(tmp_path):
    # Act
    local = open_model_store(f"file://{tmp_path}/models")
    gcs = open_model_store("gs://my-bucket/shops/models/")
    bare = open_model_store("gs://my-bucket")

    # Assert
    assert isinstance(local, LocalModelStore) and local.root == tmp_path / "models"
    assert isinstance(gcs, GCSModelStore) and (gcs.bucket_name, gcs.prefix) == ("my-bucket", "shops/models")
    assert isinstance(bare, GCSModelStore) and (bare.bucket_name, bare.prefix) == ("my-bucket", "")


@pytest.mark.parametrize("url", ["gs://", "gs:///models", "gs://My_Bucket/models", "gs://b/models",
                                 "gs://bucket/../models", "s3://bucket/models"])
def test_a_model_store_url_that_names_no_usable_place_is_a_config_error(url):
    # Act / Assert
    with pytest.raises(ConfigError, match="^MODEL_STORE_URL"):
        open_model_store(url)


def test_settings_accept_a_gs_model_store_url():
    # Act
    settings = Settings.from_mapping({"MODEL_STORE_URL": "gs://my-bucket/models"})

    # Assert
    assert settings.model_store_url == "gs://my-bucket/models"


def test_a_gs_store_is_opened_without_importing_the_google_client():
    # Arrange: the serving path pays for google-cloud-storage only when it first talks to the bucket
    script = ("import sys\n"
              "from recommender.model_store import open_model_store\n"
              "open_model_store('gs://my-bucket/models')\n"
              "print(sorted(m for m in sys.modules if m.startswith(('google.cloud.storage', 'google.api_core',"
              " 'google.auth'))))")

    # Act
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)

    # Assert
    assert result.stdout.strip() == "[]"


# --- the file store ----------------------------------------------------------------------


def test_file_publish_returns_the_change_token_that_latest_reports(tmp_path):
    # Arrange
    models = LocalModelStore(tmp_path / "models")

    # Act
    published = models.publish(SHOP, artifact(V1))
    latest = models.latest(SHOP)

    # Assert
    stat = (tmp_path / "models" / SHOP / "latest.json").stat()
    assert published.change_token == latest.change_token == f"{stat.st_ino}:{stat.st_mtime_ns}"
    assert models.latest(SHOP).change_token == latest.change_token  # reading does not move it


def test_file_change_token_changes_when_latest_moves(tmp_path):
    # Arrange
    models = LocalModelStore(tmp_path / "models")
    first = models.publish(SHOP, artifact(V1))

    # Act
    second = models.publish(SHOP, artifact(V2))

    # Assert
    assert second.change_token != first.change_token
    assert models.latest(SHOP).change_token == second.change_token
    assert Manifest(SHOP, V2, second.sha256, second.size) == second  # the token is not part of identity


def test_file_publishing_an_existing_version_is_refused_and_the_original_kept(tmp_path):
    # Arrange
    models = LocalModelStore(tmp_path / "models")
    folder = tmp_path / "models" / SHOP
    original = models.publish(SHOP, artifact(V1))
    original_bytes = (folder / f"{V1}.npz").read_bytes()
    different = ModelArtifact.build(ITEM_IDS[:2], np.ones((2, 3)), np.ones(2), 0.1, 1.0, {"version": V1})

    # Act
    with pytest.raises(PublishConflict, match=f"{V1}.npz already exists; versions are never overwritten"):
        models.publish(SHOP, different)

    # Assert
    assert (folder / f"{V1}.npz").read_bytes() == original_bytes
    assert models.latest(SHOP) == original
    assert files(folder) == {f"{V1}.npz", f"{V1}.json", "latest.json"}


RACER = """
import json, sys
import numpy as np
from recommender.artifact import ModelArtifact
from recommender.model_store import LocalModelStore, PublishConflict
root, shop, version = sys.argv[1:]
artifact = ModelArtifact.build(["a", "b", "c"], np.eye(3, 2, dtype=np.float32), np.ones(3), 0.1, 2.0,
                               {"version": version})
try:
    print(json.dumps({"won": LocalModelStore(root, lock_timeout=60).publish(shop, artifact).version}))
except PublishConflict as exc:
    print(json.dumps({"conflict": str(exc)}))
"""


def test_file_two_processes_publishing_from_the_same_base_exactly_one_wins(tmp_path):
    # Arrange: v1 is published; the test holds the pointer lock, as a third publisher in the middle of
    # its move would, so both racers read v1 as their base and queue before either can move `latest`.
    root = tmp_path / "models"
    LocalModelStore(root).publish(SHOP, artifact(V1))
    folder = root / SHOP
    lock = folder / "latest.json.lock"
    lock.write_text("held by the test")
    racers = {version: subprocess.Popen([sys.executable, "-c", RACER, str(root), SHOP, version], cwd=ROOT,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for version in ("v-a", "v-b")}
    _wait_for(lambda: all((folder / f"{v}.json").exists() for v in racers), racers.values(),
              "both racers to create their version files")  # created after each one read its base

    # Act: release the lock; they race for it
    lock.unlink()
    outcomes = {}
    for version, process in racers.items():
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        outcomes[version] = json.loads(out)

    # Assert
    winners = [v for v, outcome in outcomes.items() if "won" in outcome]
    losers = [v for v, outcome in outcomes.items() if "conflict" in outcome]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    (winner,), (loser,) = winners, losers
    assert "another trainer published first" in outcomes[loser]["conflict"]
    assert LocalModelStore(root).latest(SHOP).version == winner
    assert files(folder) == {f"{V1}.npz", f"{V1}.json", f"{winner}.npz", f"{winner}.json", "latest.json"}


def test_file_lock_left_by_a_crash_is_reported_and_the_publish_undone(tmp_path):
    # Arrange
    models = LocalModelStore(tmp_path / "models", lock_timeout=0.05)
    first = models.publish(SHOP, artifact(V1))
    folder = tmp_path / "models" / SHOP
    (folder / "latest.json.lock").write_text("pid 1 on crashed-host\n")

    # Act
    held = r"latest\.json\.lock is held by another publisher.*crash left it: delete it"
    with pytest.raises(PublishConflict, match=held):
        models.publish(SHOP, artifact(V2))

    # Assert
    assert models.latest(SHOP) == first
    assert files(folder) == {f"{V1}.npz", f"{V1}.json", "latest.json", "latest.json.lock"}


def test_file_version_that_is_not_a_file_name_is_refused_before_anything_is_written(tmp_path):
    # Arrange
    models = LocalModelStore(tmp_path / "models")

    # Act / Assert
    with pytest.raises(ArtifactError, match="model version must be"):
        models.publish(SHOP, artifact("../../evil"))
    assert list(tmp_path.iterdir()) == []


def test_file_unreadable_pointer_is_an_artifact_error(tmp_path):
    # Arrange
    models = LocalModelStore(tmp_path / "models")
    models.publish(SHOP, artifact(V1))
    (tmp_path / "models" / SHOP / "latest.json").write_text("{not json")

    # Act / Assert
    with pytest.raises(ArtifactError, match="latest.json is unreadable"):
        models.latest(SHOP)


def test_file_a_pointer_naming_only_its_version_is_resolved_through_the_manifest_file(tmp_path):
    # Arrange: V1 published, then its pointer as publishing wrote it before pointers carried the manifest
    models = LocalModelStore(tmp_path / "models")
    published = models.publish(SHOP, artifact(V1))
    (tmp_path / "models" / SHOP / "latest.json").write_text(json.dumps({"version": V1}))

    # Act
    latest = models.latest(SHOP)

    # Assert: the manifest file's checksum and size, and the model loads
    assert latest == published
    assert models.load(latest).item_ids.tolist() == ITEM_IDS


@pytest.mark.parametrize("fields", [{"sha256": "not hex", "size": 10}, {"sha256": "a" * 64, "size": -1},
                                    {"sha256": "a" * 64}, {"sha256": "a" * 64, "size": "10"}])
def test_file_a_pointer_with_a_malformed_checksum_or_size_is_unreadable(tmp_path, fields):
    # Arrange
    models = LocalModelStore(tmp_path / "models")
    models.publish(SHOP, artifact(V1))
    (tmp_path / "models" / SHOP / "latest.json").write_text(json.dumps({"version": V1, **fields}))

    # Act / Assert
    with pytest.raises(ArtifactError, match="latest.json is unreadable"):
        models.latest(SHOP)


def test_file_a_pointer_whose_size_disagrees_with_the_artifact_is_refused_at_load(tmp_path):
    # Arrange: a pointer that names V1 with a size one byte off
    models = LocalModelStore(tmp_path / "models")
    published = models.publish(SHOP, artifact(V1))
    (tmp_path / "models" / SHOP / "latest.json").write_text(
        json.dumps({"version": V1, "sha256": published.sha256, "size": published.size + 1}))

    # Act / Assert
    with pytest.raises(ArtifactError, match=f"is {published.size} bytes, its manifest says {published.size + 1}"):
        models.load(models.latest(SHOP))


def test_file_delete_shop_removes_that_shop_only(tmp_path):
    # Arrange
    models = LocalModelStore(tmp_path / "models")
    models.publish(SHOP, artifact(V1))
    models.publish(SHOP, artifact(V2))
    kept = models.publish(OTHER_SHOP, artifact(V1))

    # Act
    deleted = models.delete_shop(SHOP)

    # Assert
    assert deleted == 5
    assert models.latest(SHOP) is None
    assert files(tmp_path / "models") == {OTHER_SHOP}
    assert models.latest(OTHER_SHOP) == kept
    assert models.delete_shop(SHOP) == 0  # a second redact finds nothing


def test_file_delete_shop_refuses_a_shop_that_is_not_a_domain(tmp_path):
    # Act / Assert
    with pytest.raises(InvalidParameter):
        LocalModelStore(tmp_path / "models").delete_shop("../models")


# --- Cloud Storage, on a real emulator -------------------------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    status: int


@dataclass(frozen=True)
class Emulator:
    host: str  # for STORAGE_EMULATOR_HOST
    log: Path  # the emulator's own log: one line per HTTP request it served

    def mark(self) -> int:
        return self.log.stat().st_size

    def requests_since(self, mark: int) -> list[Request]:
        """The requests the emulator logged after `mark`, in order."""
        with open(self.log, "rb") as handle:
            handle.seek(mark)
            text = handle.read().decode(errors="replace")
        served = re.findall(r'"(GET|POST|PUT|PATCH|DELETE) (\S+) HTTP/1\.[01]" (\d{3})', text)
        return [Request(method, urlsplit(target).path, parse_qs(urlsplit(target).query), int(status))
                for method, target, status in served]


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """gcp-storage-emulator as a real process on a free loopback port, with BUCKET created."""
    try:
        import gcp_storage_emulator  # noqa: F401  (runs in its own process; this only checks it is installed)
        import google.cloud.storage  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"Cloud Storage tests need gcp-storage-emulator and google-cloud-storage ({exc});"
                    " install requirements-dev.txt")
    folder = tmp_path_factory.mktemp("gcs-emulator")
    failures = []
    for attempt in range(3):  # a free port can be taken between finding it and the emulator binding it
        log = folder / f"emulator-{attempt}.log"
        port = _free_port()
        with open(log, "wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port", str(port),
                 "--in-memory", "--default-bucket", BUCKET],
                cwd=folder, stdout=sink, stderr=subprocess.STDOUT,
            )
        try:
            failure = _wait_until_serving(process, port, log)
            if failure is None:
                yield Emulator(f"http://127.0.0.1:{port}", log)
                return
            failures.append(failure)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    pytest.skip(f"gcp-storage-emulator could not be started: {failures[-1]}")


@dataclass(frozen=True)
class GCS:
    store: GCSModelStore  # the store under test, opened from its MODEL_STORE_URL
    bucket: object  # a plain google.cloud.storage Bucket, to arrange and inspect objects directly
    prefix: str
    emulator: Emulator

    def key(self, name: str, shop: str = SHOP) -> str:
        return f"{self.prefix}/{shop}/{name}"

    def names(self, shop: str = SHOP) -> set[str]:
        return {blob.name.rsplit("/", 1)[-1] for blob in self.bucket.list_blobs(prefix=f"{self.prefix}/{shop}/")}


@pytest.fixture
def gcs(gcs_emulator, monkeypatch) -> GCS:
    """A gs:// store under a prefix of its own, so tests sharing the emulator never see each other's objects."""
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.host)
    prefix = f"test-{uuid.uuid4().hex[:12]}/models"
    return GCS(open_model_store(f"gs://{BUCKET}/{prefix}"), storage.Client().bucket(BUCKET), prefix, gcs_emulator)


def client_with_uploads(upload):
    """A real google Client whose blobs' `upload_from_string` is `upload(blob, send, kwargs)`, where `send()` makes the
    real upload (to the emulator): a test double of the client's answers alone, the emulator doing the work."""
    from google.cloud import storage

    class StandInBlob(storage.Blob):
        def upload_from_string(self, data, *args, **kwargs):
            return upload(self, lambda: super(StandInBlob, self).upload_from_string(data, *args, **kwargs), kwargs)

    class StandInBucket(storage.Bucket):
        def blob(self, blob_name, *args, **kwargs):
            return StandInBlob(blob_name, self, *args, **kwargs)

    class StandInClient(storage.Client):
        def bucket(self, bucket_name, user_project=None, generation=None):
            return StandInBucket(self, bucket_name, user_project=user_project, generation=generation)

    return StandInClient()


def conflicting_client(uploads: list, fail_on: str):
    """A client whose blobs record every upload's if_generation_match and answer 412 for `fail_on`.

    The emulator accepts if_generation_match but does not enforce it, so it never answers 412 the way Cloud
    Storage does when the precondition fails. This stands in for exactly that answer: google.api_core's own
    PreconditionFailed at the upload of `fail_on`, every other upload sent on to the emulator unchanged.
    """
    from google.api_core.exceptions import PreconditionFailed

    def upload(blob, send, kwargs):
        uploads.append((blob.name.rsplit("/", 1)[-1], kwargs.get("if_generation_match")))
        if blob.name.endswith(f"/{fail_on}"):
            raise PreconditionFailed(f"POST {blob.name}: At least one of the pre-conditions you specified did"
                                     " not hold. (raised by the test double)")
        return send()

    return client_with_uploads(upload)


@pytest.mark.parametrize("shop", ["../evil", "Evil.myshopify.com", ""])
def test_gcs_shop_that_is_not_a_domain_is_refused_before_any_request(shop):
    # Arrange: no client, no emulator: the check comes first
    models = GCSModelStore(BUCKET, "models")

    # Act / Assert
    for call in (lambda: models.publish(shop, artifact(V1)), lambda: models.latest(shop),
                 lambda: models.load(Manifest(shop, V1, "0" * 64, 1)), lambda: models.delete_shop(shop)):
        with pytest.raises(InvalidParameter):
            call()
    assert models._client is None


def test_gcs_publish_latest_load_round_trip(gcs):
    # Arrange
    published_artifact = artifact(V1)

    # Act
    published = gcs.store.publish(SHOP, published_artifact)
    latest = gcs.store.latest(SHOP)
    loaded = gcs.store.load(latest)

    # Assert
    stored = gcs.bucket.blob(gcs.key(f"{V1}.npz")).download_as_bytes()
    assert published == latest == Manifest(SHOP, V1, hashlib.sha256(stored).hexdigest(), len(stored))
    pointer = gcs.bucket.get_blob(gcs.key("latest.json"))
    assert published.change_token == latest.change_token == str(pointer.generation)
    assert json.loads(pointer.download_as_bytes()) == {"version": V1, "sha256": published.sha256,
                                                       "size": published.size}
    assert json.loads(gcs.bucket.blob(gcs.key(f"{V1}.json")).download_as_bytes()) == {
        "version": V1, "sha256": published.sha256, "size": published.size, "metadata": {"version": V1}}
    assert gcs.names() == {f"{V1}.npz", f"{V1}.json", "latest.json"}
    assert loaded.item_ids.tolist() == ITEM_IDS
    np.testing.assert_array_equal(loaded.item_factors, published_artifact.item_factors)
    np.testing.assert_array_equal(loaded.gramian, published_artifact.gramian)


def test_gcs_latest_is_none_before_anything_is_published(gcs):
    # Act / Assert
    assert gcs.store.latest(SHOP) is None


def test_gcs_a_second_publish_moves_latest_and_its_change_token(gcs):
    # Arrange
    first = gcs.store.publish(SHOP, artifact(V1))

    # Act
    second = gcs.store.publish(SHOP, artifact(V2))

    # Assert
    latest = gcs.store.latest(SHOP)
    assert latest == second and latest.change_token == second.change_token != first.change_token
    assert gcs.store.load(first).version == V1  # the old version stays readable


def test_gcs_publish_sends_generation_preconditions(gcs):
    """Every upload carries ifGenerationMatch: 0 to create, the pointer's generation read beforehand to move it."""
    # Arrange
    mark = gcs.emulator.mark()

    # Act
    first = gcs.store.publish(SHOP, artifact(V1))
    second = gcs.store.publish(SHOP, artifact(V2))

    # Assert: as the emulator received them (object names travel in the body; the order is the publish's)
    uploads = [r for r in gcs.emulator.requests_since(mark) if r.method == "POST" and r.path.startswith("/upload/")]
    assert [r.query.get("ifGenerationMatch") for r in uploads] == [
        ["0"], ["0"], ["0"],  # v1.npz, v1.json, latest.json created
        ["0"], ["0"], [first.change_token],  # v2.npz, v2.json, latest.json moved from the generation v1 left
    ]
    assert all(r.status == 200 for r in uploads)
    assert second.change_token != first.change_token


def test_gcs_pointer_moved_by_another_trainer_is_a_publish_conflict_that_leaves_nothing(gcs):
    from google.api_core.exceptions import PreconditionFailed

    # Arrange
    first = gcs.store.publish(SHOP, artifact(V1))
    uploads = []
    racing = GCSModelStore(BUCKET, gcs.prefix, client=conflicting_client(uploads, fail_on="latest.json"))

    # Act
    with pytest.raises(PublishConflict, match="moved while .* another trainer published first") as raised:
        racing.publish(SHOP, artifact(V2))

    # Assert
    assert uploads == [(f"{V2}.npz", 0), (f"{V2}.json", 0), ("latest.json", int(first.change_token))]
    assert isinstance(raised.value.__cause__, PreconditionFailed)
    latest = gcs.store.latest(SHOP)
    assert latest == first and latest.change_token == first.change_token
    assert gcs.names() == {f"{V1}.npz", f"{V1}.json", "latest.json"}  # v2's objects were removed again


def answer_lost_client(error: BaseException):
    """A client whose move of an existing `latest` is made on the emulator, and then `error` is raised as its answer:
    what google-cloud-storage shows when the write was made and its answer lost (its retry finds the generation
    moved: 412), or its retries run out (a connection reset)."""

    def upload(blob, send, kwargs):
        made = send()
        if blob.name.endswith("/latest.json") and kwargs.get("if_generation_match"):
            raise error
        return made

    return client_with_uploads(upload)


@pytest.mark.parametrize("lost", ["412 on the retry", "connection reset"])
def test_gcs_a_pointer_moved_with_its_answer_lost_is_published_and_its_files_kept(gcs, lost):
    """The publish took the error for a failed move and deleted the artifact `latest` then named: every new instance
    of the shop answered 503 until the next training."""
    import requests
    from google.api_core.exceptions import PreconditionFailed

    gcs.store.publish(SHOP, artifact(V1))
    error = (PreconditionFailed("At least one of the pre-conditions you specified did not hold.")
             if lost.startswith("412") else requests.ConnectionError("Connection reset by peer"))
    publisher = GCSModelStore(BUCKET, gcs.prefix, client=answer_lost_client(error))

    published = publisher.publish(SHOP, artifact(V2))

    latest = gcs.store.latest(SHOP)
    assert latest.version == published.version == V2
    assert latest.change_token == published.change_token
    assert gcs.store.load(latest).version == V2
    assert {f"{V2}.npz", f"{V2}.json"} <= gcs.names()


def test_gcs_a_move_left_unanswered_keeps_the_files_it_may_yet_name(gcs):
    """The move's last attempt times out, sent and unanswered, and `latest` has not moved when the publish looks: the
    write may still land after it. Its files used to be removed then, and a late write named nothing."""
    import requests

    from recommender.model_store import _pointer_json

    first = gcs.store.publish(SHOP, artifact(V1))

    def unanswered(blob, send, kwargs):
        if blob.name.endswith("/latest.json") and kwargs.get("if_generation_match"):
            raise requests.ReadTimeout("Read timed out. (read timeout=60)")  # sent; its answer never came
        return send()

    publisher = GCSModelStore(BUCKET, gcs.prefix, client=client_with_uploads(unanswered))
    with pytest.raises(ModelStoreUnavailable, match="Read timed out"):
        publisher.publish(SHOP, artifact(V2))
    assert gcs.store.latest(SHOP) == first  # the publish did not stand
    assert {f"{V2}.npz", f"{V2}.json"} <= gcs.names()  # and its files stay, in case the write lands

    # the write lands late: the version it names is there to load
    late = gcs.bucket.blob(gcs.key("latest.json"))
    late.upload_from_string(_pointer_json(gcs.store.manifest(SHOP, V2)), content_type="application/json")
    assert gcs.store.load(gcs.store.latest(SHOP)).version == V2


def test_file_a_failure_once_latest_was_replaced_keeps_the_files_it_names(tmp_path, monkeypatch):
    """A failure after the pointer's rename (its folder's fsync failing; a worker's timeout landing there) deleted
    the files `latest` then named."""
    import recommender.model_store as model_store

    models = LocalModelStore(tmp_path / "models")
    models.publish(SHOP, artifact(V1))
    renamed = []
    real_replace, real_fsync = os.replace, model_store._fsync_dir

    def replace(source, target):
        real_replace(source, target)
        renamed.append(str(target).endswith("latest.json"))

    def fsync(folder):
        if renamed and renamed.pop():
            raise OSError(5, "Input/output error")
        real_fsync(folder)

    monkeypatch.setattr(model_store.os, "replace", replace)
    monkeypatch.setattr(model_store, "_fsync_dir", fsync)
    with pytest.raises(OSError, match="Input/output error"):
        models.publish(SHOP, artifact(V2))
    monkeypatch.undo()

    latest = models.latest(SHOP)
    assert latest.version == V2 and models.load(latest).version == V2


def test_gcs_publishing_an_existing_version_is_a_publish_conflict(gcs):
    # Arrange
    first = gcs.store.publish(SHOP, artifact(V1))
    uploads = []
    racing = GCSModelStore(BUCKET, gcs.prefix, client=conflicting_client(uploads, fail_on=f"{V2}.npz"))

    # Act
    with pytest.raises(PublishConflict, match=f"{V2}.npz already exists; versions are never overwritten"):
        racing.publish(SHOP, artifact(V2))

    # Assert
    assert uploads == [(f"{V2}.npz", 0)]  # nothing after the refused create
    assert gcs.store.latest(SHOP) == first
    assert gcs.names() == {f"{V1}.npz", f"{V1}.json", "latest.json"}


@pytest.mark.parametrize("damage,message", [
    (lambda data: data[:100], r"is 100 bytes, its manifest says \d+"),
    (lambda data: data[:40] + bytes([data[40] ^ 0xFF]) + data[41:], "corrupt or truncated"),  # a member's name
    (lambda data: _flip_inside(data, "popularity.npy"), "popularity.npy does not decompress"),  # its zstd checksum
])
def test_gcs_a_corrupt_artifact_in_the_bucket_is_refused_by_load(gcs, damage, message):
    # Arrange
    gcs.store.publish(SHOP, artifact(V1))
    blob = gcs.bucket.blob(gcs.key(f"{V1}.npz"))
    blob.upload_from_string(damage(blob.download_as_bytes()))

    # Act / Assert
    with pytest.raises(ArtifactError, match=message):
        gcs.store.load(gcs.store.latest(SHOP))


def test_gcs_a_missing_artifact_is_refused_by_load(gcs):
    # Arrange
    manifest = gcs.store.publish(SHOP, artifact(V1))
    gcs.bucket.blob(gcs.key(f"{V1}.npz")).delete()

    # Act / Assert
    with pytest.raises(ArtifactError, match=f"gs://{BUCKET}/.*/{V1}.npz is missing"):
        gcs.store.load(manifest)


def test_gcs_an_unreadable_pointer_is_an_artifact_error(gcs):
    # Arrange
    gcs.store.publish(SHOP, artifact(V1))
    gcs.bucket.blob(gcs.key("latest.json")).upload_from_string(b"{not json")

    # Act / Assert
    with pytest.raises(ArtifactError, match="latest.json is unreadable"):
        gcs.store.latest(SHOP)


def test_gcs_delete_shop_removes_that_shop_only(gcs):
    # Arrange
    gcs.store.publish(SHOP, artifact(V1))
    gcs.store.publish(SHOP, artifact(V2))
    kept = gcs.store.publish(OTHER_SHOP, artifact(V1))

    # Act
    deleted = gcs.store.delete_shop(SHOP)

    # Assert
    assert deleted == 5
    assert gcs.names() == set()
    assert gcs.store.latest(SHOP) is None
    assert gcs.store.latest(OTHER_SHOP) == kept
    assert gcs.store.delete_shop(SHOP) == 0


def test_gcs_a_bucket_that_does_not_exist_is_reported_by_name(gcs):
    # Arrange
    missing = open_model_store(f"gs://no-such-bucket-{uuid.uuid4().hex[:8]}/models")

    # Act / Assert
    where = f"gs://{missing.bucket_name}/models/{SHOP}/{V1}.npz"
    with pytest.raises(ModelStoreUnavailable, match=f"uploading {where} failed"):
        missing.publish(SHOP, artifact(V1))


def test_gcs_store_serves_recommendations_through_the_app(gcs, env, monkeypatch):
    # Arrange: a model published to the bucket, the app configured with MODEL_STORE_URL=gs://
    gcs.store.publish(SHOP, artifact(V1))
    from recommender.store import open_event_store

    open_event_store(env["EVENT_STORE_URL"]).set_shop_installed(SHOP, True)
    env["MODEL_STORE_URL"] = f"gs://{BUCKET}/{gcs.prefix}"
    from functions_framework import create_app

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    client = create_app(target="app", source=str(ROOT / "main.py")).test_client()

    # Act
    response = client.get(f"/recommend?shop={SHOP}&n=2")

    # Assert
    assert response.status_code == 200, response.json
    assert response.json["model_version"] == V1
    assert [r["product_id"] for r in response.json["recommendations"]] == ITEM_IDS[:2]


def test_gcs_serving_reads_go_without_the_google_client(gcs, gcs_emulator):
    # Arrange: published with the client library; then a new process reads as a new serving instance does
    manifest = gcs.store.publish(SHOP, artifact(V1))
    script = ("import sys\n"
              "from recommender.model_store import open_model_store\n"
              f"store = open_model_store('gs://{BUCKET}/{gcs.prefix}')\n"
              f"latest = store.latest('{SHOP}')\n"
              "loaded = store.load(latest)\n"
              "print(latest.version, latest.change_token, loaded.item_ids.tolist())\n"
              "print(sorted(m for m in sys.modules if m.startswith(('google.cloud.storage', 'google.api_core',"
              " 'google.auth'))))")

    # Act
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True,
                            env={**os.environ, "STORAGE_EMULATOR_HOST": gcs_emulator.host})

    # Assert: the same model and pointer generation, and the client library never imported
    version, token, ids = result.stdout.splitlines()[0].split(" ", 2)
    assert (version, token) == (V1, manifest.change_token)
    assert ids == repr(ITEM_IDS)
    assert result.stdout.splitlines()[1] == "[]"


def test_gcs_a_refresh_check_with_nothing_moved_is_one_request_and_a_move_is_still_seen(gcs):
    # Arrange: a holder serving V1, checking at every request
    from recommender.serving import ModelHolder

    gcs.store.publish(SHOP, artifact(V1))
    holder = ModelHolder(gcs.store, refresh_seconds=0)
    assert holder.get(SHOP).version == V1
    mark = gcs.emulator.mark()

    # Act: two checks with nothing moved, then a new version and one more check (each on its own thread)
    for _ in range(2):
        holder.get(SHOP)
        assert holder.settle(timeout=30)
    quiet = gcs.emulator.requests_since(mark)
    gcs.store.publish(SHOP, artifact(V2))
    holder.get(SHOP)
    assert holder.settle(timeout=30)
    served = holder.get(SHOP)

    # Assert: each quiet check asked for the pointer's generation only; the move was picked up
    assert [(r.method, r.path.rsplit("%2F", 1)[-1].rsplit("/", 1)[-1], r.query) for r in quiet] == [
        ("GET", "latest.json", {"fields": ["generation"]})] * 2
    assert served.version == V2


def test_gcs_a_first_load_reads_the_pointer_and_the_artifact_and_no_manifest(gcs):
    # Arrange
    published = gcs.store.publish(SHOP, artifact(V1))
    mark = gcs.emulator.mark()

    # Act: what a new instance does for its first request
    loaded = gcs.store.load(gcs.store.latest(SHOP))

    # Assert: the pointer's generation, that generation's bytes, the artifact; the manifest file is not read
    assert [(r.method, r.path.rsplit("%2F", 1)[-1].rsplit("/", 1)[-1], r.query)
            for r in gcs.emulator.requests_since(mark)] == [
        ("GET", "latest.json", {"fields": ["generation"]}),
        ("GET", "latest.json", {"alt": ["media"], "generation": [published.change_token]}),
        ("GET", f"{V1}.npz", {"alt": ["media"]})]
    assert loaded.version == V1


def test_gcs_prefetched_bytes_are_what_the_preload_serves_and_it_asks_the_store_for_nothing_more(gcs):
    # Arrange: V1 published, then V2: the pointer names V2
    gcs.store.publish(SHOP, artifact(V1))
    gcs.store.publish(SHOP, artifact(V2))
    env = {"MODEL_STORE_URL": f"gs://{BUCKET}/{gcs.prefix}", "PRELOAD_SHOPS": f"{SHOP},{OTHER_SHOP}",
           "STORAGE_EMULATOR_HOST": gcs.emulator.host}
    prefetch = Prefetch()

    # Act: what `main` starts before numpy's import, then the preload that parses what it read
    started = prefetch.start(env)
    prefetch._thread.join(30)
    mark = gcs.emulator.mark()
    preloader = Preloader(prefetch)
    preloader.start(env)
    models = preloader.take()

    # Assert: V2 served from the prefetched bytes; the preload asked only for the shop with no model
    assert started is True
    assert list(models) == [SHOP] and models[SHOP].version == V2
    assert models[SHOP].item_ids.tolist() == ITEM_IDS
    assert [(r.method, r.path.rsplit("%2F", 2)[-2]) for r in gcs.emulator.requests_since(mark)] == [
        ("GET", OTHER_SHOP)]
    assert prefetch.take(SHOP) is None  # handed over once


def test_gcs_prefetch_reads_nothing_for_a_folder_or_without_preload_shops(gcs, tmp_path):
    # Act / Assert
    assert Prefetch().start({"MODEL_STORE_URL": f"file://{tmp_path}", "PRELOAD_SHOPS": SHOP}) is False
    assert Prefetch().start({"MODEL_STORE_URL": f"gs://{BUCKET}/{gcs.prefix}",
                             "STORAGE_EMULATOR_HOST": gcs.emulator.host}) is False
    assert Prefetch().start({"MODEL_STORE_URL": f"gs://{BUCKET}/{gcs.prefix}", "PRELOAD_SHOPS": SHOP}) is False  # no
    # emulator and no K_SERVICE: google-cloud-storage would read (a laptop's credentials), so the preload does


def test_gcs_a_pointer_that_names_no_artifact_is_left_to_the_preload_which_reports_it(gcs, caplog):
    # Arrange: a pointer to a version whose artifact was never uploaded
    gcs.bucket.blob(gcs.key("latest.json")).upload_from_string(json.dumps({"version": V1}))
    env = {"MODEL_STORE_URL": f"gs://{BUCKET}/{gcs.prefix}", "PRELOAD_SHOPS": SHOP,
           "STORAGE_EMULATOR_HOST": gcs.emulator.host}
    prefetch = Prefetch()
    prefetch.start(env)

    # Act
    preloader = Preloader(prefetch)
    preloader.start(env)
    models = preloader.take()

    # Assert: nothing prefetched, nothing preloaded, and the preload said why (the manifest it looked for is missing)
    assert models == {}
    assert "preloading the model of" in caplog.text and "missing" in caplog.text


def test_gcs_a_pointer_naming_only_its_version_is_resolved_through_the_manifest_object(gcs):
    # Arrange: V1 published, then its pointer replaced by one as publishing wrote it before
    published = gcs.store.publish(SHOP, artifact(V1))
    gcs.bucket.blob(gcs.key("latest.json")).upload_from_string(json.dumps({"version": V1}))

    # Act
    latest = gcs.store.latest(SHOP)

    # Assert
    assert latest == published
    assert gcs.store.load(latest).item_ids.tolist() == ITEM_IDS


def test_json_api_reads_are_chosen_by_the_environment():
    # Act / Assert: the emulator needs no token; Cloud Run and Cloud Functions set K_SERVICE; elsewhere the client
    assert JsonApiReads.for_environment("b", {"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9023"})._metadata_host is None
    on_cloud_run = JsonApiReads.for_environment("b", {"K_SERVICE": "recommend"})
    assert (on_cloud_run._host, on_cloud_run._secure, on_cloud_run._metadata_host) == (
        "storage.googleapis.com", True, "metadata.google.internal")
    assert JsonApiReads.for_environment("b", {"K_SERVICE": "recommend", "GCE_METADATA_HOST": "10.0.0.9:8080"}
                                        )._metadata_host == "10.0.0.9:8080"
    assert JsonApiReads.for_environment("b", {"HOME": "/root"}) is None


def test_json_api_reads_over_https_verify_the_server_with_one_context_for_every_thread():
    # Arrange
    import ssl
    import threading

    reads = JsonApiReads("b", JsonApiReads.PUBLIC_ENDPOINT, "metadata.google.internal")
    connections = []

    # Act: each thread opens its own connection (none connects yet)
    threads = [threading.Thread(target=lambda: connections.append(reads._connection())) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Assert: three connections, one context, certificates and host names checked
    contexts = {id(connection._context) for connection in connections}
    assert len(connections) == 3 and len({id(c) for c in connections}) == 3 and len(contexts) == 1
    assert reads._tls.verify_mode == ssl.CERT_REQUIRED and reads._tls.check_hostname


class StandIns(NamedTuple):
    storage: str  # the storage stand-in's endpoint
    metadata: str  # the metadata stand-in's host:port
    seen: list  # (server, path, headers) of every request, in order
    storage_status: list  # [status] the storage stand-in answers with
    objects: dict  # object name → bytes the storage stand-in serves
    generation_header: list  # [whether its media downloads carry X-Goog-Generation]


@pytest.fixture
def stand_ins():
    """Loopback stand-ins for the two Google servers that cannot run here: the metadata server (a token) and
    Cloud Storage answering as it does (the emulator takes no token, so it cannot show one arriving)."""
    import http.server
    import threading

    seen: list[tuple[str, str, dict]] = []
    storage_status = [200]
    objects: dict[str, bytes] = {}  # object name → bytes, served as they are with X-Goog-Generation: 1712
    generation_header = [True]  # whether media downloads carry it, as Cloud Storage's do

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.server.name, self.path, dict(self.headers)))
            if self.server.name == "metadata":
                status, body = 200, json.dumps({"access_token": f"token-{len(seen)}", "expires_in": 3599,
                                                "token_type": "Bearer"}).encode()
            elif storage_status[0] != 200:
                status, body = storage_status[0], b'{"error": {"message": "caller does not have storage.objects.get"}}'
            elif "fields=generation" in self.path:
                status, body = 200, b'{"generation": "1712"}'
            else:
                status, body = 200, objects.get(unquote(urlsplit(self.path).path.rsplit("/o/", 1)[-1]), b"object bytes")
            self.send_response(status)
            if self.server.name == "storage" and status == 200 and "alt=media" in self.path and generation_header[0]:
                self.send_header("X-Goog-Generation", "1712")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    servers = {}
    for name in ("metadata", "storage"):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.name = name
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers[name] = server
    yield StandIns(f"http://127.0.0.1:{servers['storage'].server_port}",
                   f"127.0.0.1:{servers['metadata'].server_port}", seen, storage_status, objects, generation_header)
    for server in servers.values():
        server.shutdown()
        server.server_close()


def test_json_api_reads_send_the_metadata_servers_token_and_fetch_it_once(stand_ins):
    # Arrange
    storage, metadata, seen, *_ = stand_ins
    reads = JsonApiReads("my-bucket", storage, metadata)

    # Act
    generation = reads.generation("models/a.myshopify.com/latest.json", "the pointer")
    data = reads.media("models/a.myshopify.com/latest.json", "the pointer", generation)

    # Assert: one token, asked for as the metadata server requires, sent with both reads
    assert (generation, data) == (1712, b"object bytes")
    assert [(server, path) for server, path, _ in seen] == [
        ("metadata", JsonApiReads.TOKEN_PATH),
        ("storage", "/storage/v1/b/my-bucket/o/models%2Fa.myshopify.com%2Flatest.json?fields=generation"),
        ("storage", "/storage/v1/b/my-bucket/o/models%2Fa.myshopify.com%2Flatest.json?alt=media&generation=1712"),
    ]
    assert seen[0][2]["Metadata-Flavor"] == "Google"
    assert [headers["Authorization"] for server, _, headers in seen if server == "storage"] == ["Bearer token-1"] * 2


def test_json_api_reads_report_a_refusal_by_what_was_read(stand_ins):
    # Arrange: the service account may not read the bucket
    storage, metadata, _, storage_status, *_ = stand_ins
    storage_status[0] = 403
    reads = JsonApiReads("my-bucket", storage, metadata)

    # Act / Assert
    with pytest.raises(ModelStoreUnavailable, match="reading gs://my-bucket/x.npz failed: HTTP 403: .*storage.objects.get"):
        reads.media("x.npz", "gs://my-bucket/x.npz")


def test_json_api_reads_ask_for_a_new_token_after_a_401(stand_ins):
    # Arrange: the storage stand-in refuses the first token
    storage, metadata, seen, storage_status, *_ = stand_ins
    reads = JsonApiReads("my-bucket", storage, metadata)
    storage_status[0] = 401
    with pytest.raises(ModelStoreUnavailable, match="HTTP 401"):
        reads.media("x.npz", "gs://my-bucket/x.npz")
    storage_status[0] = 200

    # Act
    data = reads.media("x.npz", "gs://my-bucket/x.npz")

    # Assert: a second token was fetched and sent
    assert data == b"object bytes"
    assert [server for server, _, _ in seen] == ["metadata", "storage", "metadata", "storage"]
    assert seen[-1][2]["Authorization"] == "Bearer token-3"


def test_on_cloud_storage_latest_is_one_request_for_the_pointer_and_its_generation(stand_ins):
    # Arrange: a pointer as publishing writes it, served as Cloud Storage serves it (X-Goog-Generation)
    storage, metadata, seen, _, objects, _ = stand_ins
    objects[f"models/{SHOP}/latest.json"] = json.dumps({"version": V1, "sha256": "a" * 64, "size": 3264}).encode()
    store = GCSModelStore("my-bucket", "models", reads=JsonApiReads("my-bucket", storage, metadata,
                                                                     generation_header=True))

    # Act
    latest = store.latest(SHOP)

    # Assert: the manifest and change token from one request for the pointer's bytes
    assert latest == Manifest(SHOP, V1, "a" * 64, 3264) and latest.change_token == "1712"
    assert [path for server, path, _ in seen if server == "storage"] == [
        f"/storage/v1/b/my-bucket/o/models%2F{SHOP}%2Flatest.json?alt=media"]


def test_without_the_generation_header_latest_reads_the_generation_first(stand_ins):
    # Arrange: the same pointer from an endpoint not known to send X-Goog-Generation (as the emulator)
    storage, metadata, seen, _, objects, _ = stand_ins
    objects[f"models/{SHOP}/latest.json"] = json.dumps({"version": V1, "sha256": "a" * 64, "size": 3264}).encode()
    store = GCSModelStore("my-bucket", "models", reads=JsonApiReads("my-bucket", storage, metadata))

    # Act
    latest = store.latest(SHOP)

    # Assert: the generation, then exactly that generation's bytes
    assert latest.change_token == "1712"
    assert [path.rsplit("?", 1)[-1] for server, path, _ in seen if server == "storage"] == [
        "fields=generation", "alt=media&generation=1712"]


def test_an_answer_without_the_expected_generation_header_falls_back_to_the_generation_first(stand_ins):
    # Arrange: an endpoint expected to send X-Goog-Generation that does not
    storage, metadata, seen, _, objects, generation_header = stand_ins
    objects[f"models/{SHOP}/latest.json"] = json.dumps({"version": V1, "sha256": "a" * 64, "size": 3264}).encode()
    generation_header[0] = False
    store = GCSModelStore("my-bucket", "models", reads=JsonApiReads("my-bucket", storage, metadata,
                                                                     generation_header=True))

    # Act
    latest = store.latest(SHOP)

    # Assert: the bytes without a generation were not trusted; the generation, then that generation's bytes
    assert latest == Manifest(SHOP, V1, "a" * 64, 3264) and latest.change_token == "1712"
    assert [path.rsplit("?", 1)[-1] for server, path, _ in seen if server == "storage"] == [
        "alt=media", "fields=generation", "alt=media&generation=1712"]


def test_json_api_reads_expect_the_generation_header_on_cloud_run_only():
    # Act / Assert
    assert JsonApiReads.for_environment("b", {"K_SERVICE": "recommend"}).generation_header is True
    assert JsonApiReads.for_environment("b", {"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9023"}).generation_header is False


def test_json_api_reads_without_a_metadata_server_say_so():
    # Arrange: a port nothing listens on
    reads = JsonApiReads("my-bucket", "http://127.0.0.1:9", f"127.0.0.1:{_free_port()}")

    # Act / Assert
    with pytest.raises(ModelStoreUnavailable, match="reading the pointer: no access token from the metadata server"):
        reads.media("latest.json", "the pointer")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(process: subprocess.Popen, port: int, log: Path, patience: float = 20.0) -> str | None:
    """None once the emulator answers on its health route; otherwise why it did not."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"it exited with status {process.returncode}: {log.read_text(errors='replace')[-500:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                if response.status == 200:
                    return None
        except OSError:
            time.sleep(0.05)
    return f"it did not answer on 127.0.0.1:{port} within {patience:g}s: {log.read_text(errors='replace')[-500:]}"


def _wait_for(condition, processes, what: str, patience: float = 60.0) -> None:
    deadline = time.monotonic() + patience
    while not condition():
        for process in processes:
            if process.poll() is not None:
                raise AssertionError(f"a racer exited while waiting for {what}: {process.communicate()}")
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


def test_gcs_shops_read_side_by_side_by_a_new_instance_share_one_json_api_reads(gcs, monkeypatch):
    # Arrange: two shops published; a new instance's store, whose reads are decided on its first read
    import threading

    other = "other-shop.myshopify.com"
    published = {shop: gcs.store.publish(shop, artifact(V1)) for shop in (SHOP, other)}
    store = open_model_store(gcs.store.url)
    made = []
    decide = JsonApiReads.for_environment.__func__

    def slow_decision(cls, bucket, env):  # the real decision, taking long enough for the threads to meet in it
        made.append(threading.current_thread().name)
        threading.Event().wait(0.05)
        return decide(cls, bucket, env)

    monkeypatch.setattr(JsonApiReads, "for_environment", classmethod(slow_decision))
    found = {}
    threads = [threading.Thread(target=lambda s=shop: found.setdefault(s, store.latest(s)), name=f"first-load-{k}")
               for k, shop in enumerate((SHOP, other, SHOP, other))]

    # Act
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    # Assert: decided once (before, each thread that met the undecided store made its own, with its own token)
    assert len(made) == 1
    assert found == published


def test_gcs_prefetch_reads_no_further_than_model_memory_mib_holds(gcs):
    # Arrange: two shops' models; a bound that holds one of them
    from recommender.prefetch import MEMORY_PER_ARTIFACT_BYTE

    first = gcs.store.publish(SHOP, artifact(V1))
    gcs.store.publish(OTHER_SHOP, artifact(V1))
    env = {"MODEL_STORE_URL": f"gs://{BUCKET}/{gcs.prefix}", "PRELOAD_SHOPS": f"{SHOP},{OTHER_SHOP}",
           "STORAGE_EMULATOR_HOST": gcs.emulator.host,
           "MODEL_MEMORY_MIB": str((2 * MEMORY_PER_ARTIFACT_BYTE * first.size - 1) / 2**20)}
    prefetch = Prefetch()

    # Act
    prefetch.start(env)
    prefetch._thread.join(30)

    # Assert: the first shop's bytes read; the second's not (its first request, or the preload, reads them)
    assert prefetch.take(SHOP) is not None
    assert prefetch.take(OTHER_SHOP) is None


def test_gcs_the_preload_keeps_to_model_memory_mib_whatever_the_prefetch_read(gcs):
    # Arrange: two shops' bytes prefetched with no bound (a guess the preload does not take on trust)
    first = gcs.store.publish(SHOP, artifact(V1))
    gcs.store.publish(OTHER_SHOP, artifact(V1))
    env = {"MODEL_STORE_URL": f"gs://{BUCKET}/{gcs.prefix}", "PRELOAD_SHOPS": f"{SHOP},{OTHER_SHOP}",
           "STORAGE_EMULATOR_HOST": gcs.emulator.host}
    prefetch = Prefetch()
    prefetch.start(env)
    prefetch._thread.join(30)
    from recommender.prefetch import MEMORY_PER_ARTIFACT_BYTE
    from recommender.serving import ServingModel

    one = ServingModel(gcs.store.load(first)).full_nbytes

    # Act: the preload, with a bound that holds the first model and not one more of that size
    preloader = Preloader(prefetch)
    preloader.start({**env, "MODEL_MEMORY_MIB": str((one + MEMORY_PER_ARTIFACT_BYTE * first.size - 1) / 2**20)})
    models = preloader.take()

    # Assert: one model preloaded, and the second shop's prefetched bytes let go
    assert list(models) == [SHOP]
    assert prefetch.take(OTHER_SHOP) is None


def test_gcs_newest_runs_lists_once_and_downloads_each_log_only_when_it_is_reached(gcs):
    for n in range(5):
        gcs.store.record_run(SHOP, {"n": n})
    mark = gcs.emulator.mark()

    runs = gcs.store.newest_runs(SHOP)
    newest = next(runs)
    asked = gcs.emulator.requests_since(mark)
    logs = sorted(name for name in gcs.names() if name.startswith("run-"))
    gcs.bucket.blob(gcs.key(logs[3])).delete()  # the second newest, gone after the listing

    assert newest == {"n": 4}
    assert [(r.method, "alt" in r.query) for r in asked] == [("GET", False), ("GET", True)]  # the listing, one log
    assert next(runs) == {"n": 2}  # a log deleted since the listing is passed over
    assert gcs.store.runs(SHOP, limit=2) == [{"n": 4}, {"n": 2}]


def test_gcs_the_quality_gate_reads_the_newest_published_log_only_for_the_current_models_metric(gcs):
    from recommender.retraining import _current_gate, _previous_metric

    for n in range(30):  # a month of nights, each published with its gate's metric
        gcs.store.record_run(SHOP, {"published": True, "gate": {"candidate": {"ndcg@10": n / 100}}})
    gcs.store.record_run(SHOP, {"published": False, "gate": {"candidate": {"ndcg@10": 0.9}}})  # last night: kept
    mark = gcs.emulator.mark()

    metric = _previous_metric(_current_gate(gcs.store, SHOP), "ndcg@10")

    assert metric == 0.29
    assert len(gcs.emulator.requests_since(mark)) == 3  # the listing and the two newest logs, of 31
