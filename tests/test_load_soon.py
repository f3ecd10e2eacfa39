"""A shop's first model load beside the event store's opening: `ModelHolder.load_soon` and `LazyRuntime.load_soon`."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from recommender.artifact import ModelArtifact
from recommender.errors import ModelNotReady
from recommender.model_store import LocalModelStore
from recommender.runtime import LazyRuntime
from recommender.serving import ModelHolder
from tests.conftest import SHOP

OTHER_SHOP = "other-shop.myshopify.com"


def artifact(version: str) -> ModelArtifact:
    return ModelArtifact.build(["1", "2", "3"], np.eye(3, 2, dtype=np.float32), np.array([3.0, 2.0, 1.0]), 0.1,
                               2.0, {"version": version})


class WatchedStore(LocalModelStore):
    """The real folder store, which also notes which thread loads and looks up each model, and can hold a load back
    until `release` is set."""

    def __init__(self, root):
        super().__init__(root)
        self.loads: list[str] = []
        self.lookups: list[str] = []
        self.release = threading.Event()
        self.release.set()

    def latest(self, shop):
        self.lookups.append(threading.current_thread().name)
        return super().latest(shop)

    def load(self, manifest):
        self.loads.append(threading.current_thread().name)
        assert self.release.wait(10), "the test never released the load"
        return super().load(manifest)


@pytest.fixture
def store(tmp_path):
    return WatchedStore(tmp_path / "models")


def _loaders_done() -> None:
    for thread in threading.enumerate():
        if thread.name == "model-first-load":
            thread.join(10)


def test_the_first_load_runs_on_its_own_thread_while_the_caller_goes_on(store):
    store.publish(SHOP, artifact("v1"))
    holder = ModelHolder(store)
    store.release.clear()  # the load is held back: were it made on this thread, load_soon would not return

    holder.load_soon(SHOP)
    began = threading.Event()
    for _ in range(1000):  # the load begins on its own thread, while this one goes on
        if store.loads:
            began.set()
            break
        threading.Event().wait(0.01)
    store.release.set()
    model = holder.get(SHOP)  # waits for the load that began, and does not load again

    assert began.is_set() and store.loads == ["model-first-load"]
    assert model.version == "v1" and holder.get(SHOP) is model


def test_load_soon_does_nothing_for_a_model_in_memory_or_on_its_way(store):
    store.publish(SHOP, artifact("v1"))
    holder = ModelHolder(store)
    store.release.clear()

    holder.load_soon(SHOP)
    holder.load_soon(SHOP)  # on its way: no second thread
    store.release.set()
    holder.get(SHOP)
    _loaders_done()
    holder.load_soon(SHOP)  # in memory

    assert store.loads == ["model-first-load"]
    assert not [thread for thread in threading.enumerate() if thread.name == "model-first-load"]


def test_a_shop_without_a_model_gets_its_error_from_get_and_starts_no_thread_per_request(store):
    holder = ModelHolder(store, refresh_seconds=60)

    holder.load_soon(OTHER_SHOP)
    with pytest.raises(ModelNotReady):
        holder.get(OTHER_SHOP)
    _loaders_done()
    for _ in range(5):  # the next requests within the refresh interval start no background look-ups
        holder.load_soon(OTHER_SHOP)

    assert store.lookups.count("model-first-load") == 1
    assert not [thread for thread in threading.enumerate() if thread.name == "model-first-load"]


def test_lazy_runtime_loads_the_model_before_it_opens_the_event_store(tmp_path):
    LocalModelStore(tmp_path / "models").publish(SHOP, artifact("v1"))
    events = tmp_path / "events.sqlite3"
    runtime = LazyRuntime({"EVENT_STORE_URL": f"sqlite:///{events}", "MODEL_STORE_URL": f"file://{tmp_path / 'models'}",
                           "SHOPIFY_API_SECRET": "test-secret"})

    runtime.load_soon(SHOP)
    opened_before = events.exists()  # the event store is created on open: not yet
    built = runtime.get()

    assert not opened_before and events.exists()
    assert built.models.get(SHOP).version == "v1"
    runtime.load_soon(SHOP)  # once the runtime is built, nothing more to overlap
    built.store.close()
