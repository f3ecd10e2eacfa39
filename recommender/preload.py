"""Loading named shops' models while an instance starts, so its first shopper does not wait for them.

With `PRELOAD_SHOPS=a.myshopify.com,b.myshopify.com`, `main` starts one thread as soon as the
serving modules are imported. The thread reads, verifies and unpacks those shops' latest models
while the rest of the code is still being imported and functions-framework's gunicorn is starting;
reading, hashing, inflating and casting to float32 run without the GIL, so on a two-core instance
most of a model's load hides behind start-up work that has to happen anyway.

gunicorn imports `main` in its master process, binds the port, and then forks the worker that
serves. `main`'s import ends by waiting for the thread (`wait`, at most `FORK_WAIT_SECONDS`), so
the port opens only once the models are loaded: Cloud Run routes requests to a new instance as soon
as its port accepts connections, and none of them waits for the load. A fork waits for the thread
too, for any process that forks without importing `main` first. The worker starts with the finished
models (pages shared copy-on-write, never written); the master then drops its references. Without a
fork (tests, `functions-framework --debug`) the first request adopts the models the same way.

With the models in gs://, their bytes are read from the start of `main`'s import, before numpy's
(recommender/prefetch.py), and this thread parses what that read. A shop whose model is missing or
refused is logged and simply loads on its first request, as every shop does when PRELOAD_SHOPS is
unset. The thread reads the environment (MODEL_STORE_URL, MODEL_MEMORY_MIB and, for gs://, the
bucket's settings) only when PRELOAD_SHOPS is set; main.py's docstring lists what its import reads.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Mapping

from recommender.errors import RecommenderError
from recommender.model_store import GCSModelStore, open_model_store
from recommender.prefetch import PREFETCH, Prefetch, beyond_budget, models_budget, preload_shops
from recommender.serving import ServingModel

log = logging.getLogger(__name__)

FORK_WAIT_SECONDS = 60.0  # `main`'s import, and a fork, wait this long for the preload at most


class Preloader:
    """One background load of the shops' models; `take()` hands them over once."""

    def __init__(self, prefetch: Prefetch | None = None) -> None:
        self._prefetch = prefetch  # the gs:// bytes read while `main` was importing, if any
        self._thread: threading.Thread | None = None
        self._models: dict[str, ServingModel] = {}
        self._lock = threading.Lock()
        self._hooked = False
        self.seconds: float | None = None  # how long the load took, for the log and the benchmark

    def start(self, env: Mapping[str, str]) -> bool:
        """Start loading the PRELOAD_SHOPS models in the background; False when there is nothing to load."""
        shops = preload_shops(env)
        if not shops or self._thread is not None:
            return False
        url = env.get("MODEL_STORE_URL") or _default_model_store_url()
        self._thread = threading.Thread(target=self._run, args=(url, shops, models_budget(env)), name="model-preload",
                                        daemon=True)
        if not self._hooked:
            os.register_at_fork(before=self.wait, after_in_parent=self._forget_in_parent)
            self._hooked = True
        self._thread.start()
        return True

    def wait(self, timeout: float = FORK_WAIT_SECONDS) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("model preload still running after %.0f s; forking without waiting longer", timeout)

    def take(self) -> dict[str, ServingModel]:
        """The preloaded models (waiting for the load if it is still running), handed over once."""
        self.wait()
        with self._lock:
            models, self._models = self._models, {}
        return models

    def _run(self, url: str, shops: list[str], budget: int | None = None) -> None:
        started = time.perf_counter()
        planned = 0  # the models preloaded so far, counted as serving counts them against MODEL_MEMORY_MIB
        try:
            store = open_model_store(url)
            for number, shop in enumerate(shops):
                try:
                    fetched = self._prefetch.take(shop) if self._prefetch is not None else None
                    if fetched is not None and isinstance(store, GCSModelStore):
                        manifest = store.pointed(shop, fetched.pointer, fetched.generation)
                    else:
                        fetched = None
                        manifest = store.latest(shop)
                        if manifest is None:
                            log.warning("PRELOAD_SHOPS: %s has no model yet; it loads on its first request once"
                                        " trained", shop)
                            continue
                    if beyond_budget(planned, manifest.size, budget):  # the prefetch's reads were a guess
                        self._stop_at_budget(shops[number:], budget)
                        break
                    model = ServingModel(store.load(manifest) if fetched is None
                                         else store.load_bytes(manifest, fetched.artifact))
                except RecommenderError as exc:
                    log.error("preloading the model of %s failed (it loads on its first request): %s", shop, exc)
                    continue
                planned += model.full_nbytes
                with self._lock:
                    self._models[shop] = model
        except Exception:  # never let a preload failure stop the instance: requests load lazily instead
            log.exception("model preload failed; models load on their first request")
        finally:
            self.seconds = time.perf_counter() - started
            log.info("preloaded %d of %d models in %.3f s", len(self._models), len(shops), self.seconds)

    def _stop_at_budget(self, left: list[str], budget: int) -> None:
        log.warning("PRELOAD_SHOPS: the models of %s fill MODEL_MEMORY_MIB (%.0f MiB): %s load on their first request",
                    ", ".join(self._models), budget / 2**20, ", ".join(left))
        if self._prefetch is not None:
            for shop in left:  # bytes the prefetch read for them are not kept for nothing
                self._prefetch.take(shop)

    def _forget_in_parent(self) -> None:
        """After forking a worker, the process that forked keeps no models: the worker has its own copy."""
        with self._lock:
            self._models = {}


def _default_model_store_url() -> str:
    from recommender.settings import DEFAULT_MODEL_STORE_URL

    return DEFAULT_MODEL_STORE_URL


PRELOADER = Preloader(PREFETCH)
