"""Hot model refresh: serving instances pick up new models, refuse corrupt ones, and keep serving."""

from __future__ import annotations

import gc
import time
import weakref

import numpy as np
import pytest

from recommender.artifact import ModelArtifact
from recommender.errors import ModelNotReady
from recommender.model_store import LocalModelStore
from recommender.serving import ModelHolder
from tests.conftest import SHOP, planted_orders, post_webhook, versions_until_swapped


def artifact(version: str) -> ModelArtifact:
    return ModelArtifact.build(["1", "2", "3"], np.eye(3, 2, dtype=np.float32), np.array([3.0, 2.0, 1.0]), 0.1,
                               2.0, {"version": version})


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def models(tmp_path):
    return LocalModelStore(tmp_path / "models")


def test_a_new_version_is_swapped_in_after_the_refresh_interval(models):
    clock = Clock()
    holder = ModelHolder(models, refresh_seconds=60, clock=clock)
    models.publish(SHOP, artifact("v1"))
    assert holder.get(SHOP).version == "v1"

    models.publish(SHOP, artifact("v2"))
    clock.now += 59
    assert holder.get(SHOP).version == "v1", "the pointer is looked at most once per interval"
    assert holder.settle(timeout=10) and holder.get(SHOP).version == "v1", "no check was due, none ran"
    clock.now += 1
    assert holder.get(SHOP).version == "v1", "the request that finds the check due is answered by the model in memory"
    assert holder.settle(timeout=10)
    assert holder.get(SHOP).version == "v2"


def test_the_check_and_the_new_models_load_run_off_the_requests_thread(models, caplog):
    # Arrange
    caplog.set_level("INFO", logger="recommender.serving")
    clock = Clock()
    holder = ModelHolder(models, refresh_seconds=60, clock=clock)
    models.publish(SHOP, artifact("v1"))
    holder.get(SHOP)
    models.publish(SHOP, artifact("v2"))
    clock.now += 60

    # Act: two requests while the check is due: one starts it, neither waits for it
    answered = [holder.get(SHOP).version, holder.get(SHOP).version]
    assert holder.settle(timeout=10)

    # Assert: the swap was logged once, by the holder's checking thread
    swaps = [r for r in caplog.records if "swapped" in r.getMessage()]
    assert [(r.getMessage(), r.threadName) for r in swaps] == [(f"model for {SHOP} swapped: v1 -> v2",
                                                              "model-refresh")]
    assert answered[0] == "v1" and holder.get(SHOP).version == "v2"


def test_a_refresh_check_reads_no_manifest_while_latest_has_not_moved(models, caplog):
    # Arrange: V1 served, then its manifest gone (a check that read it would log a refusal)
    holder = ModelHolder(models, refresh_seconds=0, clock=Clock())
    manifest = models.publish(SHOP, artifact("v1"))
    assert holder.get(SHOP).version == "v1"
    (models.root / SHOP / f"{manifest.version}.json").unlink()

    # Act
    served = holder.get(SHOP)
    assert holder.settle(timeout=10)

    # Assert
    assert served.version == "v1" and holder.get(SHOP).version == "v1"
    assert not [r for r in caplog.records if "refused" in r.getMessage()]


def test_a_corrupt_artifact_is_refused_and_the_last_good_model_keeps_serving(models, caplog):
    clock = Clock()
    holder = ModelHolder(models, refresh_seconds=0, clock=clock)
    models.publish(SHOP, artifact("v1"))
    assert holder.get(SHOP).version == "v1"
    manifest = models.publish(SHOP, artifact("v2"))
    path = models.root / SHOP / f"{manifest.version}.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the checksum no longer matches
    path.write_bytes(bytes(data))

    holder.get(SHOP)
    assert holder.settle(timeout=10)

    assert holder.get(SHOP).version == "v1"
    assert any("refused, still serving v1" in r.getMessage() for r in caplog.records)


def test_a_truncated_artifact_is_refused_too(models):
    holder = ModelHolder(models, refresh_seconds=0, clock=Clock())
    models.publish(SHOP, artifact("v1"))
    holder.get(SHOP)
    manifest = models.publish(SHOP, artifact("v2"))
    path = models.root / SHOP / f"{manifest.version}.npz"
    path.write_bytes(path.read_bytes()[:100])

    holder.get(SHOP)
    assert holder.settle(timeout=10)
    assert holder.get(SHOP).version == "v1"


def test_a_model_deleted_from_the_store_is_served_no_more_after_the_next_check(models, caplog):
    # Arrange: v1 served; then the shop's models deleted, as shop/redact deletes them
    caplog.set_level("INFO")
    clock = Clock()
    holder = ModelHolder(models, refresh_seconds=60, clock=clock)
    models.publish(SHOP, artifact("v1"))
    assert holder.get(SHOP).version == "v1"
    assert models.delete_shop(SHOP) > 0

    # Act: the request that finds the check due is still answered from memory; the check finds no model
    clock.now += 60
    served_meanwhile = holder.get(SHOP).version
    assert holder.settle(timeout=10)

    # Assert
    assert served_meanwhile == "v1"
    assert holder.in_memory(SHOP, refresh=False) is None
    with pytest.raises(ModelNotReady):
        holder.get(SHOP)
    assert any("gone from the model store: v1 no longer served" in r.getMessage() for r in caplog.records)


def test_no_model_is_model_not_ready(models):
    with pytest.raises(ModelNotReady):
        ModelHolder(models).get(SHOP)


def test_a_serving_function_answers_with_the_new_model_version_after_retraining(app_client, monkeypatch):
    monkeypatch.setenv("MODEL_REFRESH_SECONDS", "0")
    monkeypatch.setenv("ALS_FACTORS", "2")
    for order in planted_orders():
        post_webhook(app_client, "orders/create", order)
    auth = {"Authorization": "Bearer test-train-token"}
    first = app_client.post("/train", headers=auth).json["trained"][0]["version"]
    assert app_client.get(f"/recommend?shop={SHOP}&customer_id=1000").json["model_version"] == first

    second = app_client.post("/train", headers=auth).json["trained"][0]["version"]
    answered = versions_until_swapped(app_client, f"/recommend?shop={SHOP}&customer_id=1000", first)

    assert second != first
    assert answered[0] == first and answered[-1] == second


def test_a_holder_that_made_checks_is_not_kept_alive_by_its_checking_thread(models):
    # Arrange: a holder whose thread has made a check
    holder = ModelHolder(models, refresh_seconds=0, clock=Clock())
    models.publish(SHOP, artifact("v1"))
    holder.get(SHOP)
    holder.get(SHOP)  # the check is due at once: the thread starts and makes it
    assert holder.settle(timeout=10)
    gone = weakref.ref(holder)

    # Act: the holder dropped (the thread finishes the check it was ending, then holds nothing of it)
    del holder
    deadline = time.monotonic() + 10
    while gone() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)

    # Assert
    assert gone() is None
