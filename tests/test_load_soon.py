"""A shop's first model load: beside the event store's opening (`ModelHolder.load_soon`, `LazyRuntime.load_soon`),
and waiting for no other shop's."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from recommender.artifact import ModelArtifact
from recommender.errors import ArtifactError, ModelNotReady
from recommender.model_store import LocalModelStore
from recommender.runtime import LazyRuntime
from recommender import serving
from recommender.serving import ModelHolder, _LoadGate
from tests.conftest import SHOP, order_payload, post_webhook

OTHER_SHOP = "other-shop.myshopify.com"


def artifact(version: str) -> ModelArtifact:
    return ModelArtifact.build(["1", "2", "3"], np.eye(3, 2, dtype=np.float32), np.array([3.0, 2.0, 1.0]), 0.1,
                               2.0, {"version": version})


class WatchedStore(LocalModelStore):
    """The real folder store, which also notes which thread loads and looks up each model, and can hold a load back
    until `release` is set (every shop's, or only `held_shop`'s)."""

    def __init__(self, root):
        super().__init__(root)
        self.loads: list[str] = []
        self.lookups: list[str] = []
        self.release = threading.Event()
        self.release.set()
        self.held_shop: str | None = None

    def latest(self, shop):
        self.lookups.append(threading.current_thread().name)
        return super().latest(shop)

    def load(self, manifest):
        self.loads.append(threading.current_thread().name)
        if self.held_shop in (None, manifest.shop):
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


def test_a_first_load_that_fails_reaches_the_request_once_and_is_not_made_again_for_it(store):
    # Arrange: one shop with no model, one whose artifact is damaged
    manifest = store.publish(OTHER_SHOP, artifact("v1"))
    path = store.root / OTHER_SHOP / f"{manifest.version}.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    holder = ModelHolder(store, refresh_seconds=60)

    # Act
    holder.load_soon(SHOP)
    holder.load_soon(OTHER_SHOP)
    with pytest.raises(ModelNotReady):
        holder.get(SHOP)
    with pytest.raises(ArtifactError):
        holder.get(OTHER_SHOP)
    first = list(store.lookups), list(store.loads)
    with pytest.raises(ModelNotReady):  # a later request tries again itself, as without load_soon
        holder.get(SHOP)

    # Assert: each looked up and loaded once, on the load's thread (before, the request did it all again)
    assert first == (["model-first-load"] * 2, ["model-first-load"])
    assert store.lookups[2:] == [threading.current_thread().name]
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


def test_lazy_runtime_begins_one_load_an_instance_however_many_requests_come_before_its_store_opens(tmp_path):
    # Arrange: two shops with models; requests for both arrive before the runtime is built (a store that is down)
    for shop in (SHOP, OTHER_SHOP):
        LocalModelStore(tmp_path / "models").publish(shop, artifact("v1"))
    runtime = LazyRuntime({"EVENT_STORE_URL": f"sqlite:///{tmp_path / 'events.sqlite3'}",
                           "MODEL_STORE_URL": f"file://{tmp_path / 'models'}", "SHOPIFY_API_SECRET": "test-secret"})

    # Act
    runtime.load_soon(SHOP)
    runtime.load_soon(OTHER_SHOP)
    _loaders_done()
    built = runtime.get()

    # Assert: the first request's shop was loaded beside it; the other waits for its own first request
    assert built.models.in_memory(SHOP, refresh=False).version == "v1"
    assert built.models.in_memory(OTHER_SHOP, refresh=False) is None
    built.store.close()


def test_a_load_no_request_took_is_forgotten_with_its_model_so_the_next_request_finds_the_store_as_it_is_then(store):
    # Arrange: v1 loaded beside a request that ended before it needed the model (its shop not installed, say)
    store.publish(SHOP, artifact("v1"))
    holder = ModelHolder(store, refresh_seconds=3600)
    holder.load_soon(SHOP)
    _loaders_done()

    # Act: the request ends; the shop installs again, with v2 published meanwhile
    holder.forget_soon(SHOP)
    store.publish(SHOP, artifact("v2"))

    # Assert: v1 is not kept (before, it answered until the next refresh check)
    assert holder.in_memory(SHOP, refresh=False) is None
    assert holder.get(SHOP).version == "v2"


def test_a_load_forgotten_while_it_runs_keeps_no_model_once_it_ends(store):
    store.publish(SHOP, artifact("v1"))
    holder = ModelHolder(store)
    store.release.clear()

    holder.load_soon(SHOP)
    holder.forget_soon(SHOP)
    store.release.set()
    _loaders_done()

    assert store.loads == ["model-first-load"]
    assert holder.in_memory(SHOP, refresh=False) is None


def test_with_no_thread_to_be_had_the_load_runs_on_the_request(store, monkeypatch):
    store.publish(SHOP, artifact("v1"))
    holder = ModelHolder(store)

    started = threading.Thread.start

    def refused(self):  # the load's thread only: the load itself may use a second thread to decode
        if self.name == "model-first-load":
            raise MemoryError  # RuntimeError("can't start new thread") too
        return started(self)

    monkeypatch.setattr(threading.Thread, "start", refused)
    holder.load_soon(SHOP)
    model = holder.get(SHOP)  # the outcome is there already: no wait for a thread that never ran

    assert model.version == "v1" and store.loads == [threading.current_thread().name]


def test_a_new_instances_first_request_for_a_shop_not_installed_leaves_no_model_for_its_reinstall(app_client, tmp_path):
    # Arrange: v1 published for a shop that has not installed the app; no request has reached this instance yet
    models = LocalModelStore(tmp_path / "models")
    models.publish(OTHER_SHOP, artifact("v1"))
    first = app_client.get(f"/recommend?shop={OTHER_SHOP}&intent=related&product_id=1")  # its load begins beside
    _loaders_done()

    # Act: the shop installs (its first webhook), and v2 is published
    post_webhook(app_client, "orders/create", order_payload(1, 2, [1]), shop=OTHER_SHOP)
    v2 = models.publish(OTHER_SHOP, artifact("v2")).version
    answer = app_client.get(f"/recommend?shop={OTHER_SHOP}&intent=related&product_id=1")

    # Assert: v2 answers (before, v1 did, loaded for the 404 and kept until a refresh check found v2)
    assert (first.status_code, first.json["error"]) == (404, "shop_not_installed")
    assert answer.status_code == 200 and answer.json["model_version"] == v2


def _get_on_a_thread(holder: ModelHolder, shop: str, name: str) -> tuple[threading.Thread, list]:
    got: list = []
    thread = threading.Thread(target=lambda: got.append(holder.get(shop)), name=name, daemon=True)
    thread.start()
    return thread, got


def _until(condition) -> bool:
    for _ in range(1000):
        if condition():
            return True
        threading.Event().wait(0.01)
    return False


@pytest.mark.parametrize("begun_by", ["request", "load_soon"])
def test_a_shops_first_load_waits_for_no_other_shops(store, begun_by):
    # Arrange: a big shop's first load is under way and held there (a long download)
    store.publish(SHOP, artifact("big-v1"))
    store.publish(OTHER_SHOP, artifact("small-v1"))
    holder = ModelHolder(store)
    store.held_shop = SHOP
    store.release.clear()
    if begun_by == "load_soon":
        holder.load_soon(SHOP)
        big, got_big = None, None
    else:
        big, got_big = _get_on_a_thread(holder, SHOP, "big-shop-request")
    assert _until(lambda: len(store.loads) == 1), "the big shop's load never began"

    # Act: the other shop's first request
    small, got_small = _get_on_a_thread(holder, OTHER_SHOP, "small-shop-request")
    small.join(5)

    # Assert: answered while the big load is still held (before, it waited for that load to end)
    try:
        assert not small.is_alive(), "the other shop's first load waited for the big shop's"
        assert [model.version for model in got_small] == ["small-v1"]
        assert holder.in_memory(SHOP, refresh=False) is None
    finally:
        store.release.set()
    if big is not None:
        big.join(10)
        assert [model.version for model in got_big] == ["big-v1"]
    assert holder.get(SHOP).version == "big-v1"
    _loaders_done()


def test_requests_that_meet_their_shops_first_load_under_way_wait_for_it_and_do_not_load_again(store):
    store.publish(SHOP, artifact("v1"))
    holder = ModelHolder(store)
    store.release.clear()

    first, got_first = _get_on_a_thread(holder, SHOP, "first-request")
    assert _until(lambda: len(store.loads) == 1), "the first load never began"
    second, got_second = _get_on_a_thread(holder, SHOP, "second-request")
    second.join(0.2)
    waited = second.is_alive()  # for the load under way
    store.release.set()
    first.join(10)
    second.join(10)

    assert waited
    assert store.loads == ["first-request"]
    assert got_first[0] is got_second[0] and got_first[0].version == "v1"


def _turn_on_a_thread(gate: _LoadGate, size: int, release: threading.Event) -> tuple[threading.Thread, threading.Event]:
    inside = threading.Event()

    def take() -> None:
        with gate.turn(size):
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    return thread, inside


def test_the_load_gate_lets_small_loads_side_by_side_and_past_a_big_one_and_big_ones_take_turns():
    gate = _LoadGate(together_bytes=100, past_share=4)
    big_done, others_done = threading.Event(), threading.Event()
    big, big_in = _turn_on_a_thread(gate, 60, big_done)
    assert big_in.wait(5)

    # 60 + 40 = 100: side by side; 41 is neither within 100 together nor a quarter of 60: it waits
    side, side_in = _turn_on_a_thread(gate, 40, others_done)
    too_big, too_big_in = _turn_on_a_thread(gate, 41, others_done)
    assert side_in.wait(5)
    assert not too_big_in.wait(0.3)
    # 10 is a quarter of the smallest in flight (60 and 40 are in: 10 * 4 <= 40), although 60 + 40 + 10 > 100
    small, small_in = _turn_on_a_thread(gate, 10, others_done)
    assert small_in.wait(5)

    big_done.set()  # 40 + 10 + 41 = 91: now it fits
    assert too_big_in.wait(5)
    others_done.set()
    for thread in (big, side, too_big, small):
        thread.join(5)
    assert not gate._running


def test_two_big_shops_first_loads_take_turns(store, monkeypatch):
    # Arrange: artifacts "big" for the gate (every load counts more than all that may run together)
    monkeypatch.setattr(serving, "LOADS_TOGETHER_BYTES", 1)
    monkeypatch.setattr(serving, "PAST_SMALLEST_SHARE", 10**9)
    store.publish(SHOP, artifact("a-v1"))
    store.publish(OTHER_SHOP, artifact("b-v1"))
    holder = ModelHolder(store)
    store.held_shop = SHOP
    store.release.clear()
    first, got_first = _get_on_a_thread(holder, SHOP, "first-shop")
    assert _until(lambda: len(store.loads) == 1), "the first shop's load never began"

    # Act
    second, got_second = _get_on_a_thread(holder, OTHER_SHOP, "second-shop")
    second.join(0.3)
    waited = second.is_alive() and store.loads == ["first-shop"]  # its artifact not read yet
    store.release.set()
    first.join(10)
    second.join(10)

    # Assert: the second read its artifact once the first had its model
    assert waited
    assert store.loads == ["first-shop", "second-shop"]
    assert [m.version for m in got_first + got_second] == ["a-v1", "b-v1"]


def test_a_load_a_trending_answer_stopped_waiting_for_keeps_its_model_for_the_next_requests(store):
    """`model_within` (trending's bounded wait) left the load in the request's hands: its `forget_soon` then abandoned
    it, and the model that came was let go, so each answer on a cold instance began a load and threw it away."""
    # Arrange: a load held back past the wait
    store.publish(SHOP, artifact("v1"))
    store.release.clear()
    holder = ModelHolder(store)

    # Act: the wait ends first; the request ends (forgetting what it began); then the load ends
    waited = holder.model_within(SHOP, 0.05)
    holder.forget_soon(SHOP)
    store.release.set()
    _loaders_done()

    # Assert
    assert waited is None
    assert holder.in_memory(SHOP, refresh=False).version == "v1"
    assert store.loads == ["model-first-load"]  # one load, on its own thread
