"""Warm latency in process: `Recommender.recommend` per intent against a floor and implicit's own `recommend`.

Floor: one float32 matrix-vector product over the model's factors plus `np.argpartition` for
the top 10 — the least any model-scoring answer can cost. Peer: implicit's
AlternatingLeastSquares with the same float32 item factors, `recommend(..., recalculate_user=True)`
on the shopper's confidence row (fold-in, like ours) and with a precomputed user factor.
Ours reads the shopper's history from a real SQLite store on every call; the peer is handed
its row ready-made. All variants are timed interleaved.
"""

from __future__ import annotations

import contextlib
import cProfile
import gc
import os
import pstats
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from bench.stats import interleaved, latency_summary, median, ratio, ratio_interval
from bench.synthetic import SHOP, ShopFiles

INTENTS = ("personalized", "related", "complementary", "trending")
TOP_N = 10


def _runtime(shop: ShopFiles, event_store_url: str | None = None):
    from recommender.runtime import Runtime
    from recommender.settings import Settings

    # Steady state: the catalog snapshot is not re-read during the run (its refresh is measured on its own).
    extra = {"EVENT_STORE_URL": event_store_url} if event_store_url else {}
    settings = Settings.from_mapping(shop.env(CATALOG_TTL_SECONDS="1000000", TRENDING_TTL_SECONDS="1000000", **extra))
    return Runtime.from_settings(settings)


def requests_by_intent(shop: ShopFiles, count: int) -> dict[str, list]:
    """`count` requests per intent; related and complementary ones all differ (none is answered from the cache)."""
    from recommender.intents import RecommendRequest

    return {intent: [RecommendRequest.from_query(shop.query(intent, i)) for i in range(count)] for intent in INTENTS}


def _peer(model, shop: ShopFiles, alpha: float):
    """implicit's ALS holding our float32 factors, and each shopper's confidence row (1 × items CSR)."""
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares

    weights = {"view": 1.0, "add_to_cart": 4.0, "purchase": 10.0}
    peer = AlternatingLeastSquares(factors=model.factors.shape[1], regularization=0.05, alpha=1.0,
                                   dtype=np.float32, random_state=0)
    peer.item_factors = np.ascontiguousarray(model.factors)  # implicit's own layout: one row per item
    rows = []
    for customer in shop.customers:
        summed: dict[int, float] = {}
        for row, kind in shop.history_rows[customer]:
            summed[row] = summed.get(row, 0.0) + weights[kind]
        cols = np.fromiter(summed, dtype=np.int32)
        confidence = 1.0 + alpha * np.fromiter(summed.values(), dtype=np.float32)
        order = np.argsort(cols)
        rows.append(sp.csr_matrix((confidence[order], cols[order], np.array([0, len(cols)])),
                                  shape=(1, model.n_items), dtype=np.float32))
    peer.user_factors = np.stack([peer.recalculate_user(0, row) for row in rows]).astype(np.float32)
    return peer, rows


def measure_size(shop: ShopFiles, repetitions: int, event_store_url: str | None = None) -> dict:
    """All intents, the floor and the peer at one catalog size (the shop's events in SQLite, or at `event_store_url`)."""
    runtime = _runtime(shop, event_store_url)
    recommender = runtime.recommender
    warmup = min(20, repetitions)
    count = repetitions + warmup + 1
    wanted = requests_by_intent(shop, count)
    strategies = {intent: recommender.recommend(wanted[intent][count - 1]).strategy for intent in INTENTS}
    model = runtime.models.get(SHOP)
    # Steady state: an instance builds its model's NormHead (or finds it gets none) a second after the first answer.
    head = model.build_head()
    peer, peer_rows = _peer(model, shop, model.alpha)
    rng = np.random.default_rng(5)
    user_vectors = rng.standard_normal((64, model.factors.shape[1])).astype(np.float32) * np.float32(0.1)
    factors = model.factors
    n_items = len(factors)

    def floor(i: int) -> None:
        scores = factors @ user_vectors[i % 64]
        np.argpartition(scores, n_items - TOP_N)[n_items - TOP_N:]

    calls = {"floor": floor}
    for intent in INTENTS:
        calls[intent] = (lambda intent: lambda i: recommender.recommend(wanted[intent][i % count]))(intent)
    calls["cached_answer"] = lambda i: recommender.recommend(wanted["related"][count - 1])  # the same request again
    calls["implicit_fold_in"] = lambda i: peer.recommend(
        i % len(peer_rows), peer_rows[i % len(peer_rows)], N=TOP_N, recalculate_user=True)
    calls["implicit_user_factor"] = lambda i: peer.recommend(
        i % len(peer_rows), peer_rows[i % len(peer_rows)], N=TOP_N, recalculate_user=False)
    # As main.py does once imported, what exists before the first request is frozen out of the cyclic
    # collector's sight (here: the set-up's shops and requests, which an instance does not hold).
    gc.collect()
    gc.freeze()
    try:
        samples = interleaved(calls, repetitions, warmup=warmup)
    finally:
        gc.unfreeze()
    summaries = {name: latency_summary(values) for name, values in samples.items()}
    # A shopper's first answer on an instance also looks up their products' rows and reads the answer's cards;
    # later ones find both remembered. On a deployed instance most answers are a shopper's first there.
    first = _first_answers(wanted["personalized"], count, repetitions, warmup)
    by_turn = {"first_answers": [s for s, new in zip(samples["personalized"], first) if new],
               "repeat_answers": [s for s, new in zip(samples["personalized"], first) if not new]}
    floor_p99, floor_p50 = summaries["floor"]["p99_ms"], summaries["floor"]["p50_ms"]
    peer_p99 = summaries["implicit_fold_in"]["p99_ms"]
    intents = {}
    for intent in INTENTS:
        s = summaries[intent]
        intents[intent] = {**s, "strategy": strategies[intent], "p99_vs_floor": ratio(s["p99_ms"], floor_p99),
                           "p50_vs_floor": ratio(s["p50_ms"], floor_p50),
                           "p99_vs_implicit_fold_in": ratio(s["p99_ms"], peer_p99),
                           # the rounds resampled (bench.stats.ratio_interval): how much of a ratio is luck
                           "p99_vs_floor_interval": ratio_interval(samples[intent], samples["floor"], 99),
                           "p99_vs_implicit_fold_in_interval": ratio_interval(samples[intent],
                                                                              samples["implicit_fold_in"], 99)}
    intents["personalized"].update({turn: latency_summary(values) for turn, values in by_turn.items() if values})
    runtime.store.close()
    norm_head = {"rows": len(head.rows) if head else 0, "tries": model.head_tries, "hits": model.head_hits}
    return {"items": shop.n_items, "norm_head": norm_head,
            "floor": summaries["floor"], "implicit_fold_in": summaries["implicit_fold_in"],
            "implicit_user_factor": summaries["implicit_user_factor"], "intents": intents,
            "cached_answer": summaries["cached_answer"],
            "implicit_threads": "implicit default (num_threads=0: all cores)",
            # every timed call, in ms, the i-th of each name from the same interleaved round: what
            # `bench.compare` pools over several runs to judge a p99 from many more calls than one run's
            "samples_ms": {name: [round(value * 1e3, 4) for value in samples[name]]
                           for name in ("floor", "implicit_fold_in", *INTENTS)}}


def _first_answers(personalized: list, count: int, repetitions: int, warmup: int) -> list[bool]:
    """For each timed personalized call (i = 0 … repetitions − 1), whether its shopper was asked for the first time:
    before them came the call that names each intent's strategy (request count − 1) and the warm-up rounds
    (requests repetitions … repetitions + warmup − 1), in that order (`measure_size`, `stats.interleaved`)."""
    asked = {personalized[count - 1].customer_id}
    asked.update(personalized[repetitions + k].customer_id for k in range(warmup))
    flags = []
    for i in range(repetitions):
        customer = personalized[i % count].customer_id
        flags.append(customer not in asked)
        asked.add(customer)
    return flags


@contextlib.contextmanager
def shoppers_written_to(store, shop: ShopFiles) -> Iterator[None]:
    """The shop's shoppers and their events written to another event `store` (PostgreSQL, as deployed), the shop
    installed there (the catalog is not: its 100k rows would take minutes to apply); the shop's rows deleted after."""
    from bench.synthetic import shoppers

    store.redact_shop(SHOP)
    try:
        people = shoppers(shop.n_items, len(shop.customers))
        assert people.customer_ids == shop.customers, "the same shoppers as the SQLite store's"
        store.add_events(people.events)
        store.set_shop_installed(SHOP, True)
        yield
    finally:
        store.redact_shop(SHOP)


def with_postgres(shop: ShopFiles, repetitions: int) -> dict:
    """`measure_size` with the shop's events in PostgreSQL (TEST_POSTGRES_URL), as deployed instances read them:
    every answer's reads are round trips to another process (`shoppers_written_to`)."""
    url = os.environ.get("TEST_POSTGRES_URL")
    if not url:
        return {"skipped": "TEST_POSTGRES_URL is not set"}
    from recommender.errors import RecommenderError
    from recommender.store import open_event_store

    try:
        store = open_event_store(url)
    except (RecommenderError, ImportError) as exc:
        return {"skipped": f"the event store does not accept {url.split('@')[-1]!r}: {exc}"}
    try:
        with shoppers_written_to(store, shop):
            measured = measure_size(shop, repetitions, event_store_url=url)
    finally:
        store.close()
    return {**measured, "event_store": "PostgreSQL at " + url.split("@")[-1], "catalog_rows": 0}


def profile_intent(shop: ShopFiles, intent: str, calls: int = 300, top: int = 14) -> dict:
    """cProfile of `calls` warm requests of one intent: the functions with the most own time."""
    runtime = _runtime(shop)
    wanted = requests_by_intent(shop, calls + 20)[intent]
    for request in wanted[calls:]:
        runtime.recommender.recommend(request)
    profiler = cProfile.Profile()
    begin = time.perf_counter()
    profiler.enable()
    for i in range(calls):
        runtime.recommender.recommend(wanted[i])
    profiler.disable()
    wall = time.perf_counter() - begin
    stats = pstats.Stats(profiler)
    total = sum(row[2] for row in stats.stats.values())  # own time of every function
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:top]
    runtime.store.close()
    return {
        "intent": intent, "items": shop.n_items, "calls": calls, "wall_ms_per_call": round(wall / calls * 1e3, 3),
        "top_own_time": [{"function": _name(key), "own_ms_per_call": round(row[2] / calls * 1e3, 3),
                          "share": round(row[2] / total, 3), "calls_per_request": round(row[1] / calls, 1)}
                         for key, row in rows],
    }


def _name(key: tuple) -> str:
    filename, line, function = key
    if filename == "~":
        return function
    path = Path(filename)
    parts = path.parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else filename
    return f"{short}:{line}({function})"


def catalog_refresh(shop: ShopFiles, repeats: int) -> dict:
    """One catalog re-read (every CATALOG_TTL_SECONDS, on the request that finds it stale) against a raw fetch.

    Ours: CatalogCache.get (store.products + deleted ids) + the blocked mask over the model.
    Floor: the same rows fetched with sqlite3 and nothing built from them.
    """
    import sqlite3

    from recommender.catalog import CatalogCache
    from recommender.store import SQLiteEventStore

    runtime = _runtime(shop)
    model = runtime.models.get(SHOP)
    store = SQLiteEventStore(shop.events_path)
    raw = sqlite3.connect(shop.events_path)

    def ours(_: int) -> None:
        CatalogCache(store, 0).get(SHOP).blocked_mask(model.item_ids, model.version)

    def floor(_: int) -> None:
        raw.execute("SELECT * FROM products WHERE shop = ?", (SHOP,)).fetchall()
        raw.execute("SELECT * FROM variants WHERE shop = ?", (SHOP,)).fetchall()

    samples = interleaved({"ours": ours, "floor": floor}, repeats, warmup=1)
    raw.close()
    store.close()
    runtime.store.close()
    ours_s, floor_s = median(samples["ours"]), median(samples["floor"])
    # Microseconds kept: the refresh is one index read, well under 0.1 ms for a small catalog on a fast machine.
    return {"products": shop.catalog_rows, "median_s": round(ours_s, 7), "floor_median_s": round(floor_s, 7),
            "ratio": ratio(ours_s, floor_s)}


HISTORY_READ = 20  # events per read: the benchmark shoppers' history length (HISTORY_LIMIT, the deployed bound, defaults to 200)


def _postgres_plans(store, shop: str, key: str) -> dict[str, str]:
    """The plan of the history read as PostgreSQL just ran it: the statement inside `latest_events` (migration 4),
    as auto_explain reports it with its timings and buffers. Loading auto_explain takes a superuser; without one,
    the reason is reported instead."""
    import psycopg

    conn = store._connection()
    try:
        conn.execute("LOAD 'auto_explain'")
    except psycopg.Error as exc:
        return {"user_key": key, "nested": f"not available: LOAD 'auto_explain' was refused ({exc})"}
    plans: list[str] = []
    conn.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
    conn.execute("SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on;"
                 " SET auto_explain.log_analyze = on; SET auto_explain.log_buffers = on; SET client_min_messages = log")
    try:
        store.history(shop, key, HISTORY_READ)
    finally:
        conn.execute("RESET client_min_messages; RESET auto_explain.log_min_duration")
    return {"user_key": key, "nested": "\n\n".join(plans)}


def history_depth(workdir: Path, repeats: int, depths: tuple[int, ...]) -> dict:
    """The read a personalized answer starts with, for shoppers with few and with very many events: the latest 20
    of each, in SQLite and (with TEST_POSTGRES_URL) in PostgreSQL. The floor is the same read of a shopper with
    `depths[0]` events: a read that stops at its limit costs the same at every depth."""
    from datetime import datetime, timedelta, timezone

    from recommender.changes import Event
    from recommender.events import EventKind, user_key
    from recommender.store import open_event_store

    shop = "history-depth.myshopify.com"
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    urls = {"SQLite": f"sqlite:///{workdir / 'history-depth.sqlite3'}"}
    if os.environ.get("TEST_POSTGRES_URL"):
        urls["PostgreSQL"] = os.environ["TEST_POSTGRES_URL"]
    workdir.mkdir(parents=True, exist_ok=True)
    out = {}
    plans = None
    for backend, url in urls.items():
        store = open_event_store(url)
        try:
            store.redact_shop(shop)
            for depth in depths:
                events = [Event(EventKind.VIEW, shop, str(1000 + k % 500), start + timedelta(seconds=k),
                                customer_id=str(depth)) for k in range(depth)]
                for first in range(0, depth, 5_000):
                    store.add_events(events[first:first + 5_000])
            calls = {str(depth): (lambda key: lambda _: store.history(shop, key, HISTORY_READ))(user_key(str(depth))) for depth in depths}
            samples = interleaved(calls, repeats, warmup=5)
            floor = median(samples[str(depths[0])])
            out[backend] = [{"events": depth, "median_ms": round(median(samples[str(depth)]) * 1e3, 3),
                             "vs_floor": ratio(median(samples[str(depth)]), floor)} for depth in depths]
            slow = [row["events"] for row in out[backend] if row["vs_floor"] > 2]
            if slow and backend == "PostgreSQL":  # a read that grew with the shopper's events: which plan did it get?
                plans = _postgres_plans(store, shop, user_key(str(slow[-1])))
        finally:
            store.redact_shop(shop)
            store.close()
    return {"limit": HISTORY_READ, "backends": out, **({"postgresql_plans": plans} if plans else {})}

