"""The composition root: settings, event store, model store and loaded models of one instance.

Built on first use, never at import, so importing `main` opens no store (what it reads of the
environment then is listed in main.py's docstring); tests build one from a dict.
"""

from __future__ import annotations

import threading
from typing import Mapping

from recommender.catalog import CatalogCache
from recommender.intents import Recommender
from recommender.model_store import ModelStore, open_model_store
from recommender.preload import Preloader
from recommender.serving import ModelHolder, ServingModel
from recommender.settings import Settings
from recommender.store import EventStore, open_event_store
from recommender.trending import TrendingCache


class Runtime:
    """The instance's settings, stores, models and recommender, built once."""

    __slots__ = ("settings", "store", "model_store", "models", "recommender")

    def __init__(self, settings: Settings, store: EventStore, model_store: ModelStore, models: ModelHolder,
                 recommender: Recommender):
        self.settings = settings
        self.store = store
        self.model_store = model_store
        self.models = models
        self.recommender = recommender

    @classmethod
    def from_settings(cls, settings: Settings, preloaded: dict[str, ServingModel] | None = None,
                      models: tuple[ModelStore, ModelHolder] | None = None) -> "Runtime":
        """`preloaded`: models already loaded for some shops (recommender.preload), served from the start. `models`:
        the model store and holder made already (`model_side`), whose loads may have begun."""
        model_store, models = models or model_side(settings, preloaded)
        store = open_event_store(settings.event_store_url)
        recommender = Recommender(
            store, models, CatalogCache(store, settings.catalog_ttl_seconds),
            TrendingCache(store, settings.trending_half_life_days, settings.training.event_weights,
                          settings.trending_ttl_seconds),
            settings.history_limit, cache_seconds=settings.answer_cache_seconds,
            control_percent=settings.control_percent,
        )
        return cls(settings, store, model_store, models, recommender)


def model_side(settings: Settings, preloaded: dict[str, ServingModel] | None = None) -> tuple[ModelStore, ModelHolder]:
    """The model store and the holder of the shops' models, which need nothing of the event store."""
    model_store = open_model_store(settings.model_store_url)
    budget = None if settings.model_memory_mib is None else int(settings.model_memory_mib * 2**20)
    return model_store, ModelHolder(model_store, settings.model_refresh_seconds, preloaded=preloaded,
                                    memory_budget=budget)


class LazyRuntime:
    """Builds the Runtime from `env` the first time it is asked for, once per instance: the settings and the model
    side first (`settings`, `load_soon`), the event store and the rest with the first `get`."""

    def __init__(self, env: Mapping[str, str], preloader: Preloader | None = None):
        self._env = env
        self._preloader = preloader
        self._settings: Settings | None = None
        self._models: tuple[ModelStore, ModelHolder] | None = None
        self._runtime: Runtime | None = None
        self._soon_asked = False  # `load_soon` was asked once
        self._lock = threading.RLock()

    def settings(self) -> Settings:
        settings = self._settings
        if settings is None:
            with self._lock:
                if self._settings is None:
                    self._settings = Settings.from_mapping(self._env)
                settings = self._settings
        return settings

    def load_soon(self, shop: str) -> None:
        """Start `shop`'s first model load now (`ModelHolder.load_soon`), before the event store is opened, so that
        the two run side by side on a new instance's first request: once an instance, so that requests arriving while
        the event store cannot be opened start no load each."""
        if self._runtime is not None or self._soon_asked:  # every request after the first: no lock taken
            return
        with self._lock:
            if self._runtime is not None or self._soon_asked:
                return
            self._soon_asked = True
        self._model_side()[1].load_soon(shop)

    def forget_soon(self, shop: str) -> None:
        """After the request that asked `load_soon`: its load forgotten if the request did not take it
        (`ModelHolder.forget_soon`)."""
        if self._models is not None:
            self._models[1].forget_soon(shop)

    def get(self) -> Runtime:
        runtime = self._runtime
        if runtime is None:
            with self._lock:
                if self._runtime is None:
                    self._runtime = Runtime.from_settings(self.settings(), models=self._model_side())
                runtime = self._runtime
        return runtime

    def _model_side(self) -> tuple[ModelStore, ModelHolder]:
        models = self._models
        if models is None:
            with self._lock:
                if self._models is None:
                    preloaded = self._preloader.take() if self._preloader is not None else None
                    self._models = model_side(self.settings(), preloaded)
                models = self._models
        return models
