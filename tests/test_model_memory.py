"""MODEL_MEMORY_MIB: an instance serving many shops keeps the models of those asked for most recently, within it."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from recommender.artifact import ModelArtifact
from recommender.model_store import LocalModelStore
from recommender.runtime import Runtime
from recommender.serving import ModelHolder, ServingModel
from recommender.settings import Settings

ITEMS, FACTORS = 2_000, 16
SHOPS = [f"shop-{name}.myshopify.com" for name in "abcd"]


def artifact(version: str, items: int = ITEMS) -> ModelArtifact:
    rng = np.random.default_rng(len(version))
    return ModelArtifact.build([str(1000 + k) for k in range(items)],
                               rng.standard_normal((items, FACTORS)).astype(np.float32),
                               rng.random(items).astype(np.float32), 0.1, 2.0, {"version": version})


class CountingStore(LocalModelStore):
    """The real folder store, which also notes each artifact load, and can run `on_load` as one begins."""

    def __init__(self, root):
        super().__init__(root)
        self.loads: list[str] = []
        self.on_load = lambda manifest: None

    def load(self, manifest):
        self.loads.append(manifest.shop)
        self.on_load(manifest)
        return super().load(manifest)


@pytest.fixture
def store(tmp_path):
    store = CountingStore(tmp_path / "models")
    for shop in SHOPS:
        store.publish(shop, artifact(f"{shop[5]}-v1"))
    return store


def one_model_bytes(store) -> int:
    return ModelHolder(store).get(SHOPS[0]).nbytes


def kept(holder: ModelHolder) -> list[str]:
    return [shop for shop in SHOPS if holder.in_memory(shop, refresh=False) is not None]


def test_a_models_bytes_grow_by_what_its_first_answers_build():
    model = ServingModel(artifact("v1"))
    as_loaded = model.nbytes

    model.norms
    with_norms = model.nbytes
    model.inverse_norms
    model.popular_rows

    assert as_loaded >= ITEMS * FACTORS * 4  # the float32 factors at least
    assert with_norms == as_loaded + ITEMS * 4  # float32 norms
    assert model.nbytes == with_norms + ITEMS * 4 + ITEMS * 8  # float32 inverse norms, int64 rows


def test_the_least_recently_asked_shops_model_is_let_go_and_loaded_again_when_asked(store):
    # Arrange: room for two models and a half
    holder = ModelHolder(store, memory_budget=int(one_model_bytes(store) * 2.5))
    store.loads.clear()
    a, b, c = SHOPS[:3]

    # Act / Assert
    holder.get(a)
    holder.get(b)
    holder.get(a)  # a asked again: b is now the least recent
    holder.get(c)
    assert kept(holder) == [a, c]
    model = holder.get(b)  # loaded again; a is the least recent now
    assert model.version == "b-v1"
    assert kept(holder) == [b, c]
    assert store.loads == [a, b, c, b]


def test_without_a_budget_every_shops_model_is_kept(store):
    holder = ModelHolder(store)

    for shop in SHOPS:
        holder.get(shop)

    assert kept(holder) == SHOPS


def test_room_is_made_before_the_load_begins(store):
    # Arrange: two models fit; a third's expected size does not fit beside them
    holder = ModelHolder(store, memory_budget=int(one_model_bytes(store) * 2.5))
    a, b, c = SHOPS[:3]
    holder.get(a)
    holder.get(b)
    seen = []
    store.on_load = lambda manifest: seen.append((manifest.shop, kept(holder)))

    # Act
    holder.get(c)

    # Assert: a had gone before c's artifact was read
    assert seen == [(c, [b])]
    assert kept(holder) == [b, c]


def test_a_model_larger_than_the_budget_is_still_served_and_kept_alone(store):
    holder = ModelHolder(store, memory_budget=1)
    a, b = SHOPS[:2]

    first = holder.get(a)
    second = holder.get(b)

    assert (first.version, second.version) == ("a-v1", "b-v1")
    assert kept(holder) == [b]


def test_answers_served_from_the_instances_cache_count_as_asking_for_the_shop(store):
    holder = ModelHolder(store, memory_budget=int(one_model_bytes(store) * 2.5))
    a, b, c = SHOPS[:3]
    holder.get(a)
    holder.get(b)

    holder.in_memory(a)  # a cached answer for a: its refresh check, and its place in the order
    holder.get(c)

    assert kept(holder) == [a, c]


def test_a_refresh_that_ends_after_its_model_was_let_go_does_not_bring_it_back(store):
    # Arrange: a's refresh check finds v2 and its load is held while a's model is let go
    holder = ModelHolder(store, refresh_seconds=0, memory_budget=int(one_model_bytes(store) * 1.5))
    a, b = SHOPS[:2]
    holder.get(a)
    store.publish(a, artifact("a-v2"))
    release, began = threading.Event(), threading.Event()

    def hold(manifest):
        if manifest.version == "a-v2":
            began.set()
            assert release.wait(10)

    store.on_load = hold
    holder.in_memory(a)  # starts the check
    assert began.wait(10)

    # Act: b's first load lets a go; then the refresh ends
    store.on_load = lambda manifest: None
    loading_b = threading.Thread(target=holder.get, args=(b,))
    loading_b.start()
    loading_b.join(0.5)
    release.set()
    loading_b.join(10)
    assert holder.settle(10)

    # Assert
    assert kept(holder) == [b]


def test_a_runtime_reads_its_budget_from_model_memory_mib(tmp_path):
    store = LocalModelStore(tmp_path / "models")
    for shop in SHOPS[:3]:
        store.publish(shop, artifact(f"{shop[5]}-v1"))
    size = ModelHolder(store).get(SHOPS[0]).nbytes
    settings = Settings.from_mapping({"EVENT_STORE_URL": f"sqlite:///{tmp_path / 'events.sqlite3'}",
                                      "MODEL_STORE_URL": f"file://{tmp_path / 'models'}",
                                      "MODEL_MEMORY_MIB": str(size * 1.5 / 2**20)})
    runtime = Runtime.from_settings(settings)

    for shop in SHOPS[:3]:
        runtime.models.get(shop)

    assert [shop for shop in SHOPS if runtime.models.in_memory(shop, refresh=False)] == [SHOPS[2]]
    runtime.store.close()


def test_a_model_is_counted_at_the_size_its_first_answers_make_it():
    # Arrange: a trained-like model (norms falling fast with the row), large enough for a NormHead
    items = 20_000
    rng = np.random.default_rng(7)
    factors = rng.standard_normal((items, FACTORS)).astype(np.float32) / np.arange(1, items + 1, dtype=np.float32)[:, None]
    model = ServingModel(ModelArtifact.build([str(1000 + k) for k in range(items)], factors,
                                             rng.random(items).astype(np.float32), 0.1, 2.0, {"version": "v1"}))
    as_loaded, counted = model.nbytes, model.full_nbytes

    # Act: what its answers build on first use
    model.norms
    model.inverse_norms
    model.popular_rows
    model.inverse_gramian
    head = model.build_head()

    # Assert: a head of 30% of the rows was built, and the model now takes what was counted for it from the start
    assert head is not None and len(head.rows) == 6_000
    assert model.nbytes == counted == model.full_nbytes
    assert counted - as_loaded == (items * (4 + 4 + 8) + 8 * FACTORS * FACTORS  # norms, inverse norms, rows, inverse
                                   + 6_000 * (4 * FACTORS + 8) + 4 * items)  # the head's factors, its rows, places


def test_a_model_loaded_beside_its_request_is_not_the_first_to_go(store):
    # Arrange: room for two and a half models; a and b asked, then c loaded by load_soon before its request's get
    holder = ModelHolder(store, memory_budget=int(one_model_bytes(store) * 2.5))
    a, b, c, d = SHOPS
    holder.get(a)
    holder.get(b)
    holder.load_soon(c)
    for thread in threading.enumerate():
        if thread.name == "model-first-load":
            thread.join(10)

    # Act: another shop's first load needs room
    holder.get(d)

    # Assert: b, asked before c came in, went (before, c went first: it had never been asked for)
    assert kept(holder) == [c, d]
    assert holder.get(c).version == "c-v1"


def test_a_refresh_asked_for_a_model_since_let_go_neither_makes_room_nor_loads(store):
    holder = ModelHolder(store, memory_budget=int(one_model_bytes(store) * 1.5))
    a, b = SHOPS[:2]
    let_go = holder.get(a)
    holder.get(b)  # a goes
    store.publish(a, artifact("a-v2"))
    store.loads.clear()

    holder._refresh(a, let_go)  # as the refresh thread runs a check asked for before a went

    assert store.loads == [] and kept(holder) == [b]


def test_the_exact_count_once_the_model_is_in_keeps_the_budget_when_the_estimate_falls_short(store, monkeypatch):
    from recommender import serving

    monkeypatch.setattr(serving, "MEMORY_PER_ARTIFACT_BYTE", 0)  # no room made before the load
    holder = ModelHolder(store, memory_budget=int(one_model_bytes(store) * 1.5))
    a, b = SHOPS[:2]

    holder.get(a)
    holder.get(b)

    assert kept(holder) == [b]


def test_a_model_loaded_again_soon_after_it_was_let_go_is_warned_of_once_a_minute(store, caplog):
    # Arrange: room for one model and a half; the holder's clock is the test's
    now = [1000.0]
    holder = ModelHolder(store, clock=lambda: now[0], memory_budget=int(one_model_bytes(store) * 1.5))
    a, b = SHOPS[:2]
    holder.get(a)
    holder.get(b)  # a let go at 1000

    # Act
    with caplog.at_level("WARNING", logger="recommender.serving"):
        for at, shop in ((1010, a), (1020, b), (1200, a), (1210, b)):
            now[0] = at
            holder.get(shop)

    # Assert: a again 10 s after it went: warned; b 10 s after: within the minute of that warning, not again; a
    # 180 s after it went: no warning; b 10 s after, more than a minute after the first warning: warned
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 2
    assert warnings[0].startswith(f"model for {a} loaded again 10.0 s after it was let go: MODEL_MEMORY_MIB (")
    assert warnings[1].startswith(f"model for {b} loaded again 10.0 s after it was let go")


def test_a_model_let_go_before_its_norm_head_is_built_is_freed_at_once(tmp_path, monkeypatch):
    """A model's first personalized answer times its NormHead's build for a moment later. The timer held the model:
    a model let go meanwhile (shops asked in turn faster than that) stayed in memory until it fired, and an instance
    answering 24 shops of 100k items within a 230 MiB bound passed 1 GiB (bench.many_shops_probe --intent
    personalized, round 35)."""
    import gc
    import weakref

    from recommender import serving

    monkeypatch.setattr(serving, "HEAD_BUILD_DELAY_SECONDS", 60.0)  # the timer is pending throughout the test
    store = LocalModelStore(tmp_path / "models")
    for shop in SHOPS[:2]:
        store.publish(shop, artifact(f"{shop[5]}-v1", items=serving.HEAD_MIN_ITEMS))
    holder = ModelHolder(store, memory_budget=1)  # room for the model being asked for alone
    first = holder.get(SHOPS[0])
    terms = first.fold_in_terms(np.array([0, 1]), np.array([1.0, 4.0]))  # a shopper who bought two products
    first.personalized_top(terms, 10)  # its first personalized answer: the head's build is timed for later
    gone = weakref.ref(first)
    gc.disable()  # freed by its count of references alone, not by a collection
    try:
        del first
        holder.get(SHOPS[1])  # lets the first shop's model go

        assert kept(holder) == [SHOPS[1]]
        assert gone() is None
    finally:
        gc.enable()


def test_a_model_kept_gets_its_norm_head_from_the_timer(monkeypatch):
    from recommender import serving

    monkeypatch.setattr(serving, "HEAD_BUILD_DELAY_SECONDS", 0.01)
    items = serving.HEAD_MIN_ITEMS
    rng = np.random.default_rng(7)  # trained-like: norms falling fast with the row, which a NormHead pays for
    factors = rng.standard_normal((items, FACTORS)).astype(np.float32) / np.arange(1, items + 1, dtype=np.float32)[:, None]
    model = ServingModel(ModelArtifact.build([str(1000 + k) for k in range(items)], factors,
                                             rng.random(items).astype(np.float32), 0.1, 2.0, {"version": "v1"}))

    model.personalized_top(model.fold_in_terms(np.array([0, 1]), np.array([1.0, 4.0])), 10)

    deadline = time.monotonic() + 30
    while model.head is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert model.head is not None and len(model.head.rows) == int(np.ceil(items * serving.HEAD_SHARE))


class HeldStore(LocalModelStore):
    """The real folder store, whose pointer check for `held` waits until `release` is set."""

    def __init__(self, root, held: str):
        super().__init__(root)
        self.held, self.release, self.waiting = held, threading.Event(), threading.Event()

    def pointer_token(self, shop):
        if shop == self.held:
            self.waiting.set()
            self.release.wait(30)
        return super().pointer_token(shop)


def test_a_refresh_check_waiting_its_turn_keeps_no_model_let_go(tmp_path):
    import gc
    import weakref

    a, b, c = SHOPS[:3]
    store = HeldStore(tmp_path / "models", held=b)
    for shop in (a, b, c):
        store.publish(shop, artifact(f"{shop[5]}-v1"))
    holder = ModelHolder(store, refresh_seconds=0, memory_budget=int(one_model_bytes(store) * 2.5))
    holder.get(b)
    gone = weakref.ref(holder.get(a))
    gc.disable()
    try:
        holder.get(b)  # b's check begins, and waits on the store
        assert store.waiting.wait(30)
        holder.get(a)  # a's check waits behind it
        holder.get(b)
        holder.get(c)  # a, asked least recently, is let go

        assert kept(holder) == [b, c]
        assert gone() is None  # not held by its check in the queue
    finally:
        gc.enable()
        store.release.set()
        assert holder.settle(30)
