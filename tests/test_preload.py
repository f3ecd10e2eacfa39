"""PRELOAD_SHOPS: models loaded while the instance starts, handed to the runtime, inherited by gunicorn's worker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import requests

from recommender.artifact import ModelArtifact
from recommender.model_store import LocalModelStore
from recommender.prefetch import Prefetch
from recommender.preload import Preloader, preload_shops
from recommender.store import open_event_store
from tests.conftest import ROOT, SHOP, running_function

VERSION = "20260101T000000000000Z"
OTHER_SHOP = "other-shop.myshopify.com"


def publish(models_dir, shop=SHOP):
    """Three products; 8000000000002 is closest to 8000000000001 by cosine, 8000000000003 points away."""
    factors = np.array([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.2]], dtype=np.float32)
    artifact = ModelArtifact.build(["8000000000001", "8000000000002", "8000000000003"], factors,
                                   np.array([3.0, 2.0, 1.0]), 0.1, 1.0, {"version": VERSION, "shop": shop},
                                   item_support=np.array([5, 5, 5]))
    return LocalModelStore(models_dir).publish(shop, artifact)


def test_preload_shops_keeps_valid_domains_in_lower_case_and_drops_the_rest():
    # Act
    shops = preload_shops({"PRELOAD_SHOPS": " A-Shop.myshopify.com, ,not a shop!,b.myshopify.com,"})

    # Assert
    assert shops == ["a-shop.myshopify.com", "b.myshopify.com"]


def test_an_invalid_preload_shop_is_reported_once_though_prefetch_and_preload_both_read_the_list(caplog, tmp_path):
    # Arrange: models in gs:// (nothing listens there: both reads fail, which is not what this test looks at)
    env = {"PRELOAD_SHOPS": "not a shop!", "MODEL_STORE_URL": "gs://some-bucket/models",
           "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9"}

    # Act
    Prefetch().start(env)
    Preloader().start(env)

    # Assert
    assert caplog.text.count("that entry is ignored") == 1


def test_nothing_starts_without_preload_shops(tmp_path):
    # Arrange
    preloader = Preloader()

    # Act / Assert
    assert preloader.start({"MODEL_STORE_URL": f"file://{tmp_path}"}) is False
    assert preloader.take() == {}


def test_the_runtime_gets_the_preloaded_models_once_and_a_shop_without_a_model_is_left_out(tmp_path):
    # Arrange
    publish(tmp_path / "models")
    preloader = Preloader()

    # Act
    started = preloader.start({"PRELOAD_SHOPS": f"{SHOP},{OTHER_SHOP}", "MODEL_STORE_URL": f"file://{tmp_path}/models"})
    first, second = preloader.take(), preloader.take()

    # Assert
    assert started is True
    assert list(first) == [SHOP] and first[SHOP].version == VERSION
    assert first[SHOP].item_ids.tolist() == ["8000000000001", "8000000000002", "8000000000003"]
    assert second == {}


def test_mains_import_returns_with_the_preloaded_models_loaded_so_the_port_opens_after_them(env, tmp_path):
    """Cloud Run sends a new instance requests as soon as its port accepts connections (its default TCP startup
    probe), and gunicorn binds the port once `main` is imported: with PRELOAD_SHOPS that import waits for the load,
    so no request routed to a scale-out instance waits for the model. (Before, only the fork waited: the port was
    open ~20–60 ms before the model was ready, bench/PERFORMANCE.md round 20.)"""
    # Arrange: a model large enough that its load outlasts the imports after the preload starts (~20 ms here)
    rng = np.random.default_rng(0)
    n = 100_000
    artifact = ModelArtifact.build([str(8_000_000_000_000 + i) for i in range(n)],
                                   rng.standard_normal((n, 32)).astype(np.float32), np.ones(n), 0.1, 1.0,
                                   {"version": VERSION, "shop": SHOP})
    models_dir = tmp_path / "models"
    LocalModelStore(models_dir).publish(SHOP, artifact)
    run_env = {**os.environ, **env, "MODEL_STORE_URL": f"file://{models_dir}", "PRELOAD_SHOPS": SHOP,
               "PYTHONPATH": str(ROOT)}
    probe = ("import main; models = dict(main.PRELOADER._models); "
             f"print(main.PRELOADER._thread.is_alive(), sorted(models), getattr(models.get({SHOP!r}), 'n_items', None))")

    # Act: import main in a fresh interpreter, as functions-framework does in gunicorn's master before the bind
    run = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=run_env, capture_output=True, text=True,
                         timeout=120)

    # Assert: the preload thread had finished and the model was in memory when the import returned
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["False", f"['{SHOP}']", str(n)], run.stdout


def test_a_worker_serves_the_preloaded_model_even_after_the_model_files_are_gone(env, tmp_path):
    """gunicorn imports main in its master and forks the worker: the worker must start with the model.

    The files are deleted after start-up and before the first /recommend: only a model already in the
    worker's memory can answer. The same steps without PRELOAD_SHOPS answer 503 model_not_ready.
    """
    answers = {}
    for preload in (True, False):
        # Arrange
        models_dir = tmp_path / f"models-{preload}"
        publish(models_dir)
        run_env = {**os.environ, **env, "MODEL_STORE_URL": f"file://{models_dir}"}
        if preload:
            run_env["PRELOAD_SHOPS"] = SHOP
        store = open_event_store(env["EVENT_STORE_URL"])
        store.set_shop_installed(SHOP, True)
        store.close()
        with running_function(run_env) as base:
            shutil.rmtree(models_dir)

            # Act
            answers[preload] = requests.get(f"{base}/recommend", timeout=10, params={
                "shop": SHOP, "intent": "related", "product_id": "8000000000001", "n": 2})

    # Assert
    with_preload, without = answers[True], answers[False]
    assert with_preload.status_code == 200, with_preload.text
    assert with_preload.json()["model_version"] == VERSION
    assert [r["product_id"] for r in with_preload.json()["recommendations"]] == ["8000000000002", "8000000000003"]
    assert without.status_code == 503 and without.json()["error"] == "model_not_ready"


def test_the_preload_stops_where_model_memory_mib_is_full_and_says_which_shops_load_later(tmp_path, caplog):
    # Arrange: three shops' models; a bound that holds one, and not one more of that artifact's size
    shops = [SHOP, OTHER_SHOP, "third-shop.myshopify.com"]
    manifests = [publish(tmp_path / "models", shop) for shop in shops]
    from recommender.model_store import LocalModelStore
    from recommender.prefetch import MEMORY_PER_ARTIFACT_BYTE
    from recommender.serving import ServingModel

    one = ServingModel(LocalModelStore(tmp_path / "models").load(manifests[0])).full_nbytes
    budget_mib = (one + MEMORY_PER_ARTIFACT_BYTE * manifests[1].size - 1) / 2**20
    env = {"MODEL_STORE_URL": f"file://{tmp_path / 'models'}", "PRELOAD_SHOPS": ",".join(shops),
           "MODEL_MEMORY_MIB": str(budget_mib)}

    # Act
    preloader = Preloader()
    preloader.start(env)
    models = preloader.take()
    unbounded = Preloader()
    unbounded.start({**env, "MODEL_MEMORY_MIB": ""})

    # Assert: the first shop preloaded, the others left to their first request, and said so
    assert list(models) == [SHOP]
    assert "load on their first request" in caplog.text and f"{OTHER_SHOP}, third-shop.myshopify.com" in caplog.text
    assert list(unbounded.take()) == shops
