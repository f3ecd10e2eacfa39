"""Cold start and instance memory: a real `functions-framework --target recommend` process, spawn → first 200.

Floor: the same framework serving a function that imports numpy and returns a constant
(`synthetic.FLOOR_SOURCE`), as it starts by default: numpy's OpenBLAS starts a thread per core (unless the
environment already sets OPENBLAS_NUM_THREADS). Beside it, for what we add, the same floor with one BLAS
thread, as `main.py` pins it before numpy loads: the pool's start costs the default floor CPU, and some
wall time, that our instances never pay. Runs are interleaved, every configuration once a round, so the
machine's noise falls on every configuration alike, in an order shuffled each round (`start_order`): on
these VMs memory that another process freed a moment ago is several times faster to touch than memory the
hypervisor has taken back, so in a fixed order each configuration always inherited its predecessor's
(bench/PERFORMANCE.md). After the first 200 each instance serves every intent a few times, then its memory
is read from /proc.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
import requests

from bench import process, start_timeline
from bench.stats import median, ratio
from bench.synthetic import SHOP, ShopFiles, product_id, write_floor_source

INTENTS = ("personalized", "related", "complementary", "trending")
WARM_REQUESTS_PER_INTENT = 10  # after the first 200, before memory is read
MAIN = process.ROOT / "main.py"
PINNED_FLOOR = "floor, one BLAS thread"
PINNED = (("OPENBLAS_NUM_THREADS", "1"),)
ORDER_SEED = 7  # the same start order on every run of the benchmark
TIMELINE_REPEATS = 5  # starts of each configuration but 1M through bench.start_timeline, after the measured ones
TIMELINE_MAX_ITEMS = 100_000


@dataclass(frozen=True)
class Config:
    label: str
    shop: ShopFiles | None  # None: the floor
    repeats: int
    env: tuple[tuple[str, str], ...] = ()  # beyond the shop's own settings, e.g. PRELOAD_SHOPS


def _every_intent(session: requests.Session, server: process.Server, shop: ShopFiles | None) -> dict[str, str | None]:
    """WARM_REQUESTS_PER_INTENT requests of every intent (of "/" for the floor, `shop` None); each intent's strategy."""
    strategies = {}
    for intent in INTENTS:
        for i in range(WARM_REQUESTS_PER_INTENT):
            path = "/" if shop is None else "/?" + shop.storefront_query(intent, i)
            response = session.get(server.base + path, timeout=60)
            response.raise_for_status()
            strategies[intent] = response.json().get("strategy")
    return strategies


def start_order(repeats: dict[str, int], seed: int = ORDER_SEED) -> list[str]:
    """The labels in the order they start: round after round, each label whose `repeats` are not yet done,
    shuffled within the round (the same `seed`, the same order)."""
    shuffle = random.Random(seed).shuffle
    order = []
    for round_index in range(max(repeats.values(), default=0)):
        due = [label for label, count in repeats.items() if round_index < count]
        shuffle(due)
        order += due
    return order


def _spawn(config: Config, floor_source: Path, log_dir: Path, timeline: bool = False) -> tuple[process.Server, str]:
    """An instance of `config` starting (the floor's function, or ours with its shop), and the path of its first request."""
    if config.shop is None:
        return process.spawn("floor", floor_source, dict(config.env), log_dir, timeline=timeline), "/"
    return (process.spawn("recommend", MAIN, config.shop.env(**dict(config.env)), log_dir, timeline=timeline),
            "/?" + config.shop.storefront_query("personalized", 0))


def _one_start(config: Config, floor_source: Path, log_dir: Path) -> dict:
    server, first_path = _spawn(config, floor_source, log_dir)
    try:
        startup = process.wait_until_serving(server, first_path)
        pids = server.pids()
        startup_cpu = process.cpu_seconds(pids)
        with requests.Session() as session:
            strategies = _every_intent(session, server, config.shop)
        served_cpu = process.cpu_seconds(pids) - startup_cpu
        time.sleep(0.05)
        memory = process.instance_memory_mib(server)
    finally:
        server.stop()
    return {"listen_s": startup.listen_s, "first_ok_s": startup.first_ok_s, "startup_cpu_s": startup_cpu,
            "cpu_ms_per_request": served_cpu / (len(INTENTS) * WARM_REQUESTS_PER_INTENT) * 1e3,
            "memory": memory, "strategies": strategies if config.shop is not None else None}


def _import_seconds(statement: str, repeats: int) -> float:
    """Median wall time of `statement` in a fresh interpreter (cwd = the repo)."""
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    samples = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], cwd=process.ROOT, capture_output=True, text=True, check=True)
        samples.append(float(out.stdout.strip().splitlines()[-1]))
    return round(median(samples), 3)


def _load_breakdown(shop: ShopFiles, repeats: int) -> dict:
    """Where the first request's time goes, in process: read, parse (every member checked), unpack, catalog snapshot;
    and the whole-file sha256 a publish adds when it reads its artifact back, for comparison."""
    import hashlib

    from recommender.artifact import ModelArtifact
    from recommender.catalog import CatalogCache
    from recommender.model_store import LocalModelStore
    from recommender.serving import ServingModel
    from recommender.store import SQLiteEventStore

    store = LocalModelStore(shop.models_dir)
    parts: dict[str, list[float]] = {"read_bytes_s": [], "sha256_s": [], "parse_validate_s": [], "serving_model_s": [],
                                     "catalog_snapshot_s": []}
    for _ in range(repeats):
        manifest = store.latest(SHOP)
        path = shop.models_dir / SHOP / f"{manifest.version}.npz"
        t0 = time.perf_counter()
        data = path.read_bytes()
        t1 = time.perf_counter()
        hashlib.sha256(data).hexdigest()
        t2 = time.perf_counter()
        artifact = ModelArtifact.from_bytes(data)
        t3 = time.perf_counter()
        model = ServingModel(artifact)
        t4 = time.perf_counter()
        events = SQLiteEventStore(shop.events_path)
        try:
            snapshot = CatalogCache(events, 0).get(SHOP)
            snapshot.blocked_mask(model.item_ids, model.version)
        finally:
            events.close()
        t5 = time.perf_counter()
        for key, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            parts[key].append(value)
        del data, artifact, model
    return {key: round(median(values), 4) for key, values in parts.items()}


def memory_with_full_caches(shop: ShopFiles, requests_count: int, log_dir: Path) -> dict:
    """One instance's memory after the warm requests of every intent, then after `requests_count` related
    requests for as many different products, each answer computed and kept: the answer cache (2,000 answers)
    and the product cards (10,000; ten an answer) at or past their bounds."""
    server = process.spawn("recommend", MAIN, shop.env(), log_dir)
    try:
        process.wait_until_serving(server, "/?" + shop.storefront_query("personalized", 0))
        step = max(1, shop.n_items // requests_count)
        with requests.Session() as session:
            _every_intent(session, server, shop)
            before = process.instance_memory_mib(server)
            begin = time.perf_counter()
            for k in range(requests_count):
                query = shop.storefront_query("related", 0, product_id=product_id(k * step))
                session.get(server.base + "/?" + query, timeout=60).raise_for_status()
            seconds = time.perf_counter() - begin
        time.sleep(0.05)
        after = process.instance_memory_mib(server)
    finally:
        server.stop()
    return {"items": shop.n_items, "catalog_rows": shop.catalog_rows, "requests": requests_count,
            "seconds": round(seconds, 1), "before": before, "after": after,
            "before_peak_upper_bound_mib": process.peak_upper_bound_mib(before),
            "after_peak_upper_bound_mib": process.peak_upper_bound_mib(after)}


def memory_with_norm_head(shop: ShopFiles, log_dir: Path, settle_s: float = 1.5) -> dict:
    """One instance of a model whose norms are unequal (a trained one): its memory after the warm requests of
    every intent, then after its NormHead was built (a timer starts it HEAD_BUILD_DELAY_SECONDS after the first
    personalized answer; `settle_s` more covers the build) and a personalized answer for every shopper. Whether
    the head was built, and its size, is read from the instance's own log line."""
    from recommender.serving import HEAD_BUILD_DELAY_SECONDS

    server = process.spawn("recommend", MAIN, shop.env(), log_dir)
    try:
        process.wait_until_serving(server, "/?" + shop.storefront_query("personalized", 0))
        with requests.Session() as session:
            _every_intent(session, server, shop)
            before = process.instance_memory_mib(server)
            time.sleep(HEAD_BUILD_DELAY_SECONDS + settle_s)
            for i in range(len(shop.customers)):
                session.get(server.base + "/?" + shop.storefront_query("personalized", i), timeout=60).raise_for_status()
        time.sleep(0.05)
        after = process.instance_memory_mib(server)
    finally:
        server.stop()
    built = re.search(r"NormHead of (\d+) of (\d+) items \(largest norms\) built in (\d+) ms",
                      server.log_path.read_text(errors="replace"))
    return {"items": shop.n_items, "shoppers": len(shop.customers), "before": before, "after": after,
            "head_rows": int(built[1]) if built else None, "head_build_ms": int(built[3]) if built else None,
            "before_peak_upper_bound_mib": process.peak_upper_bound_mib(before),
            "after_peak_upper_bound_mib": process.peak_upper_bound_mib(after)}


def _timed_start(config: Config, floor_source: Path, log_dir: Path) -> dict[str, float]:
    """One start through `bench.start_timeline`, to its first 200: each step's ms since the spawn."""
    server, path = _spawn(config, floor_source, log_dir, timeline=True)
    try:
        startup = process.wait_until_serving(server, path)
    finally:
        server.stop()
    return process.start_steps(server, startup)


def measure(shops: list[tuple], floor_repeats: int, workdir: Path, timeline_repeats: int = TIMELINE_REPEATS,
            import_repeats: int = 3) -> dict:
    """shops: (label, files, repeats[, extra env]). Returns the floor, each configuration and their ratios; then
    `timeline_repeats` starts of each through `bench.start_timeline`, and the imports timed `import_repeats` times."""
    floor_source = write_floor_source(workdir / "floor")
    log_dir = workdir / "logs"
    configs = [Config("floor", None, floor_repeats), Config(PINNED_FLOOR, None, floor_repeats, PINNED)]
    configs += [Config(label, shop, n, tuple(sorted(extra[0].items())) if extra else ())
                for label, shop, n, *extra in shops]
    runs: dict[str, list[dict]] = {c.label: [] for c in configs}
    by_label = {c.label: c for c in configs}
    for label in start_order({c.label: c.repeats for c in configs}):
        runs[label].append(_one_start(by_label[label], floor_source, log_dir))
    # Then where each start's time goes, timed inside its processes: apart from the measured starts, whose processes
    # carry no clocks of ours.
    timed = [c.label for c in configs if c.shop is None or c.shop.n_items <= TIMELINE_MAX_ITEMS]
    steps: dict[str, list[dict[str, float]]] = {label: [] for label in timed}
    for label in start_order({label: timeline_repeats for label in timed}, seed=ORDER_SEED + 1):
        steps[label].append(_timed_start(by_label[label], floor_source, log_dir))
    floor = _summary(runs["floor"])
    results = []
    for config in configs[2:]:
        summary = _summary(runs[config.label])
        results.append({
            "label": config.label, "items": config.shop.n_items, "catalog_rows": config.shop.catalog_rows,
            "env": dict(config.env),
            **summary,
            "ratio_first_ok": ratio(summary["first_ok_median_s"], floor["first_ok_median_s"]),
            "ratio_listen": ratio(summary["listen_median_s"], floor["listen_median_s"]),
            "strategies": runs[config.label][-1]["strategies"],
            "load_breakdown": _load_breakdown(config.shop, repeats=2 if config.shop.n_items >= 1_000_000 else 3),
        })
    imports = {
        "import_main_s": _import_seconds("import main", import_repeats),
        "import_floor_s": _import_seconds("import functions_framework, numpy", import_repeats),
    }
    timeline = {"repeats": timeline_repeats,
                "steps_ms": {label: {step: round(ms, 2) for step, ms in start_timeline.medians(starts).items()}
                             for label, starts in steps.items()}}
    return {"floor": floor, "floor_one_blas_thread": _summary(runs[PINNED_FLOOR]), "configs": results, "imports": imports,
            "timeline": timeline,
            "method": "spawn `python -m functions_framework --target recommend --source main.py` on a free loopback port,"
                      " every configuration once a round in an order shuffled each round (seed"
                      f" {ORDER_SEED});"
                      " listen = the port accepts; first_ok = first 200 of a personalized request (customer with a"
                      " 20-event history), signed as Shopify's app proxy signs it; then 10 requests of every intent (their server"
                      " CPU per request is cpu_ms_per_request_mixed_intents), then memory"}


def _summary(runs: list[dict]) -> dict:
    memory_keys = runs[0]["memory"].keys()
    return {
        "repeats": len(runs),
        "first_ok_median_s": round(median([r["first_ok_s"] for r in runs]), 3),
        "first_ok_samples_s": [round(r["first_ok_s"], 3) for r in runs],
        "listen_median_s": round(median([r["listen_s"] for r in runs]), 3),
        "startup_cpu_median_s": round(median([r["startup_cpu_s"] for r in runs]), 3),
        "cpu_ms_per_request_mixed_intents": round(median([r["cpu_ms_per_request"] for r in runs]), 3),
        "memory_mib": {key: round(median([r["memory"][key] for r in runs]), 1) for key in memory_keys},
    }
