"""Performance against floors measured in the same run: `python -m bench.perf [--quick] [--sizes 10000,100000,1000000]`.

Sections (each figure a ratio against a floor or a peer measured in this run):
    cold_start    spawn → first 200 of a real functions-framework process, vs a bare numpy function
    warm_latency  Recommender.recommend per intent, vs one matvec + argpartition, vs implicit's recommend
    http          p50/p99 and requests/s at concurrency 1, 8, 32 through gunicorn, vs the bare function
    ingest        signed orders/create deliveries/s and p99 acknowledgement, vs sqlite3 alone / the bare function
    round_trips   each kind of answer and webhook write on PostgreSQL: its round trips, counted on the wire, and its
                  time, vs one round trip (`bench.answer_probe`, `bench.delivery_probe`; TEST_POSTGRES_URL)
    training      train_and_publish vs implicit's raw fit on the same matrix
    size          artifact bytes per item·factor vs float16 factors alone
    memory        instance RSS/PSS after loading and serving, vs the bare function's
    cost          Cloud Run functions cost per million recommendations and webhooks from the measured CPU and memory

Writes bench/results/perf.json and bench/results/perf.md (or --out DIR). `--quick` uses 2k items
and few repetitions (under a minute); the full run takes about a quarter of an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from bench.stats import goal_ratio, median, ratio_interval

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("cold_start", "warm_latency", "http", "ingest", "round_trips", "training", "size", "memory", "cost")
GOALS = {
    "cold_start_ratio": 1.2,  # first 200 vs the floor, at 100k items
    "warm_p99_vs_floor": 1.5,
    "ingest_p99_ms": 50.0,
    "training_ratio": 1.3,
    "bytes_per_item_factor": 2.1,
    "memory_budget_mib": 256,
    "memory_headroom": 0.8,  # "room to spare": at most 80 % of the budget
}


@dataclass(frozen=True)
class Plan:
    """How much of everything to run; `quick` is the smoke-test plan."""

    mode: str  # "quick" or "full"
    sizes: tuple[int, ...]
    shoppers: int
    cold_repeats: int
    cold_repeats_large: int  # for 1M items
    warm_repetitions: dict[int, int]
    http_concurrencies: tuple[int, ...]
    http_max_requests: int
    http_max_seconds: float
    ingest_in_process: int
    ingest_http_per_level: int
    ingest_concurrencies: tuple[int, ...]
    train_users: int
    train_items: int
    train_events: int
    train_repeats: int
    profile_calls: int
    cache_fill_requests: int  # distinct related answers before memory is read again (the answer cache holds 2,000)
    history_repeats: int  # reads of each shopper's latest events, per depth
    history_depths: tuple[int, ...]  # how many events each of those shoppers has
    probe_count: int  # answers and deliveries of each kind the round-trip probes time
    probe_rtt_ms: float  # added to each round trip to PostgreSQL for the probes' second timing (0: loopback only)
    probe_items: int  # the answer probe's model
    cold_timeline_repeats: int = 5  # starts of each configuration through bench.start_timeline (cold_start.TIMELINE_REPEATS)
    import_repeats: int = 3  # fresh interpreters timing `import main` and the floor's imports

    @classmethod
    def quick(cls, sizes: tuple[int, ...] | None) -> "Plan":
        sizes = sizes or (2_000,)
        return cls("quick", sizes, 50, 2, 1, {n: 100 for n in sizes}, (1, 8, 32), 60, 3.0, 60, 40, (1, 8),
                   2_000, 1_000, 20_000, 2, 100, 300, 20, (20, 2_000), 3, 0.0, 2_000,
                   cold_timeline_repeats=1, import_repeats=1)

    @classmethod
    def full(cls, sizes: tuple[int, ...] | None) -> "Plan":
        sizes = sizes or (10_000, 100_000, 1_000_000)
        reps = {n: 1000 if n <= 10_000 else 400 if n <= 100_000 else 100 for n in sizes}
        # 13 starts per configuration: the floor's own start moves by a quarter between runs on a shared machine,
        # and a 1.2× goal is a margin of a fifth. 5 training pairs: implicit's fit alone took 2.1–3.6 s for the
        # same matrix back to back on one machine, and the median of 3 pairs crossed 1.3× once on that noise
        # (the goal's figure is the median of the pairs' ratios: bench/training.py).
        return cls("full", sizes, 200, 13, 3, reps, (1, 8, 32), 1500, 15.0, 1000, 500, (1, 8),
                   50_000, 20_000, 500_000, 5, 300, 2_500, 200, (20, 5_000, 50_000), 40, 1.0, 10_000)


def _reference_size(sizes: tuple[int, ...]) -> int:
    """The size goals stated at 100k items are judged at: 100k if measured, else the closest."""
    return min(sizes, key=lambda n: abs(math.log(n / 100_000)))


def size_label(n: int) -> str:
    """A catalog size as the goals and tables name it: 2k, 100k, 1M."""
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k" if n >= 1000 else str(n)


def machine() -> dict:
    from threadpoolctl import threadpool_info

    model = "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model)
    except OSError:
        pass
    import numpy

    return {
        "nproc": os.cpu_count(), "cpu_model": model, "python": platform.python_version(), "numpy": numpy.__version__,
        "platform": platform.platform(), "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "blas": [{key: info.get(key) for key in ("internal_api", "version", "architecture", "num_threads",
                                                 "threading_layer")} for info in threadpool_info()],
    }


def code_version() -> dict | None:
    """The commit measured and any uncommitted changes outside bench/ (None where git is unavailable)."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=RESULTS.parent.parent, capture_output=True,
                              text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=RESULTS.parent.parent, capture_output=True,
                                text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": head, "changed": [line[3:] for line in status if not line[3:].startswith("bench/")]}


def _compile_bytecode() -> None:
    """What the deploy uploads beside the sources (deploy/deploy.py): hash-checked bytecode, so spawned instances
    import our modules without compiling them, as deployed ones do."""
    import subprocess

    from bench import process

    subprocess.run([sys.executable, "-m", "compileall", "-q", "--invalidation-mode", "checked-hash",
                    "main.py", "recommender", "webhooks"], cwd=process.ROOT, check=True)


def run(plan: Plan, workdir: Path, log=print) -> dict:
    from threadpoolctl import threadpool_limits

    from bench import cold_start, http_load, ingest, latency, size, synthetic, training
    from bench.stats import CpuShares

    started = time.perf_counter()
    cpu = CpuShares()

    def section(name: str) -> None:
        """A section of the run starts: logged, and marked where its share of the CPU time is counted from."""
        cpu.mark(name)
        log(name)

    reference = _reference_size(plan.sizes)
    results: dict = {"meta": {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "command": " ".join(["python -m bench.perf", *sys.argv[1:]]),
                              "mode": plan.mode,
                              "sizes": list(plan.sizes), "reference_size": reference, "machine": machine(),
                              "code_at_start": code_version(),
                              "goals": GOALS}}

    log("setup: bytecode for main.py, recommender/ and webhooks/, as deploy/deploy.py ships it")
    _compile_bytecode()
    log(f"setup: artifacts of {', '.join(map(size_label, plan.sizes))} items")
    shops = {}
    for n in plan.sizes:
        models_dir = workdir / f"models-{n}"
        artifact = synthetic.build_artifact(n)
        synthetic.publish_artifact(models_dir, artifact)
        shops[n] = synthetic.prepare_shop(workdir / f"shop-{n}", artifact, models_dir, plan.shoppers)
        if n == reference:
            catalog_shop = synthetic.prepare_shop(workdir / f"shop-{n}-catalog", artifact, models_dir, plan.shoppers,
                                                  with_catalog=True)
        del artifact
    log(f"setup: a model trained on power-law events, {size_label(reference)} items")
    trained = synthetic.build_artifact(reference, item_factors=synthetic.trained_factors(reference))
    synthetic.publish_artifact(workdir / "models-trained", trained)
    trained_shop = synthetic.prepare_shop(workdir / "shop-trained", trained, workdir / "models-trained", plan.shoppers)
    del trained

    section("cold start")
    configs = [(f"{size_label(n)} items", shops[n], plan.cold_repeats_large if n >= 1_000_000 else plan.cold_repeats)
               for n in plan.sizes]
    configs.append((f"{size_label(reference)} items, PRELOAD_SHOPS", shops[reference], plan.cold_repeats,
                    {"PRELOAD_SHOPS": synthetic.SHOP}))  # the model loads while the instance starts
    configs.append((f"{size_label(reference)} items + {size_label(reference)} catalog rows", catalog_shop,
                    max(1, plan.cold_repeats - 2)))  # the catalog is read on the first request too
    results["cold_start"] = cold_start.measure(configs, plan.cold_repeats, workdir / "cold",
                                               plan.cold_timeline_repeats, plan.import_repeats)

    section("warm latency")
    warm = []
    for n in plan.sizes:
        default = latency.measure_size(shops[n], plan.warm_repetitions[n])
        with threadpool_limits(limits=1, user_api="blas"):
            pinned = latency.measure_size(shops[n], plan.warm_repetitions[n])
        warm.append({"items": n, "blas_default_threads": default, "blas_one_thread": pinned})
        log(f"  {size_label(n)}: personalized p99 {default['intents']['personalized']['p99_ms']} ms"
            f" (floor {default['floor']['p99_ms']} ms)")
    profiles = []
    for measured in warm:
        calls = plan.profile_calls if measured["items"] <= 100_000 else max(30, plan.profile_calls // 5)
        for intent, numbers in measured["blas_default_threads"]["intents"].items():
            if intent == "trending":
                continue
            if numbers["p99_vs_floor"] > GOALS["warm_p99_vs_floor"] or numbers["p99_vs_implicit_fold_in"] >= 1:
                profiles.append(latency.profile_intent(shops[measured["items"]], intent, calls))
    log("  with the whole catalog in the store")
    with_catalog = latency.measure_size(catalog_shop, plan.warm_repetitions[reference])
    with threadpool_limits(limits=1, user_api="blas"):  # as deployed (main.py pins one BLAS thread)
        with_catalog_pinned = latency.measure_size(catalog_shop, plan.warm_repetitions[reference])
    log("  a trained model (unequal norms: the NormHead answers)")
    with threadpool_limits(limits=1, user_api="blas"):
        with_trained = latency.measure_size(trained_shop, plan.warm_repetitions[reference])
    log("  with the events in PostgreSQL (TEST_POSTGRES_URL)")
    with threadpool_limits(limits=1, user_api="blas"):
        with_postgres = latency.with_postgres(shops[reference], plan.warm_repetitions[reference])
    for intent, numbers in with_catalog["intents"].items():
        if intent != "trending" and numbers["p99_vs_floor"] > GOALS["warm_p99_vs_floor"]:
            profiles.append({**latency.profile_intent(catalog_shop, intent, plan.profile_calls), "catalog_rows": reference})
    results["warm_latency"] = {
        "sizes": warm, "with_catalog": with_catalog, "with_catalog_one_thread": with_catalog_pinned,
        "with_postgres_one_thread": with_postgres, "trained_one_thread": with_trained,
        "profiles": profiles,
        "catalog_refresh": latency.catalog_refresh(catalog_shop, repeats=3),
        "history_depth": latency.history_depth(workdir / "history-depth", plan.history_repeats, plan.history_depths),
        "method": "in process, interleaved; floor = factors @ u + np.argpartition (top 10); peer = implicit"
                  " AlternatingLeastSquares.recommend on the same float32 factors; ours reads a 20-event history"
                  " from SQLite per call; every related and complementary request differs from the others, so each"
                  " is computed (the answer cache serves repeats: 'a repeated related request'); each shopper is asked"
                  " for personalized answers two or three times, and a shopper's first answer (which also finds their"
                  " products' rows and reads the answer's cards) is shown apart from the later ones; catalog snapshot"
                  " cached (its refresh is catalog_refresh); what exists before the first call is frozen out of the"
                  " cyclic collector's sight while the calls run (gc.freeze), as main.py freezes what it imports",
    }

    section("http")
    results["http"] = http_load.measure(shops[reference], workdir / "http", plan.http_concurrencies,
                                        plan.http_max_requests, plan.http_max_seconds)

    section("ingest")
    results["ingest"] = ingest.measure(workdir / "ingest", plan.ingest_in_process, plan.ingest_concurrencies,
                                       plan.ingest_http_per_level, plan.http_max_seconds * 2)

    section("round trips")
    from bench import answer_probe, delivery_probe

    results["round_trips"] = {
        "answers": answer_probe.run(plan.probe_count, plan.probe_rtt_ms, plan.probe_items, workdir / "answer-probe"),
        "deliveries": delivery_probe.run(plan.probe_count, plan.probe_rtt_ms, workdir / "delivery-probe"),
        "method": "`bench.answer_probe` and `bench.delivery_probe` as run alone, without --http: each kind's round trips"
                  " to PostgreSQL counted on the wire (three of each), and its median time on loopback and, with a"
                  " distance, through bench/latency_proxy.py that far away, beside one round trip (a `SELECT 1`)",
    }

    section("training")
    results["training"] = training.measure(workdir / "training", plan.train_users, plan.train_items,
                                           plan.train_events, plan.train_repeats)

    section("size")
    artifacts = []
    for n in plan.sizes:
        folder = workdir / f"models-{n}" / synthetic.SHOP
        path = next(folder.glob("*.npz"))
        artifacts.append({"label": f"synthetic {size_label(n)}", **size.analyze(path, compress_check=n <= 100_000)})
    artifacts.append({"label": "trained, 32 factors (the shipped default)",
                      **size.analyze(Path(results["training"]["artifact_path"]), compress_check=True)})
    artifacts.append({"label": "trained, 64 factors (the same events)",
                      **size.analyze(Path(results["training"]["artifact_64_factors_path"]), compress_check=True)})
    results["size"] = {"floor_bytes_per_item_factor": size.FLOOR_BYTES_PER_ITEM_FACTOR, "artifacts": artifacts}

    results["memory"] = _memory(results["cold_start"])
    section("memory with the caches full")
    results["memory"]["caches_full"] = cold_start.memory_with_full_caches(catalog_shop, plan.cache_fill_requests,
                                                                          workdir / "cache-fill")
    section("memory of a trained model with its NormHead")
    results["memory"]["trained_with_head"] = cold_start.memory_with_norm_head(trained_shop, workdir / "trained-memory")
    cpu.mark("end")
    results["meta"]["cpu_by_section"] = cpu.shares()
    results["cost"] = _cost(results, reference)
    results["goals"] = goals(results)
    results["headline"] = headline_figures(results)
    results["meta"]["seconds"] = round(time.perf_counter() - started, 1)
    results["meta"]["code_at_end"] = code_version()
    return results


def _memory(cold: dict) -> dict:
    """Each cold-start instance's memory beside the floor's, and its peak upper bound (master RSS + worker peak)."""
    from bench import process

    floor = cold["floor"]["memory_mib"]
    instances = []
    for config in cold["configs"]:
        m = config["memory_mib"]
        instances.append({"label": config["label"], "items": config["items"], "catalog_rows": config["catalog_rows"],
                          **m, "instance_peak_upper_bound_mib": process.peak_upper_bound_mib(m),
                          "cpu_ms_per_request_mixed_intents": config["cpu_ms_per_request_mixed_intents"],
                          "pss_vs_floor": round(m["pss_sum_mib"] / floor["pss_sum_mib"], 2),
                          "pss_above_floor_mib": round(m["pss_sum_mib"] - floor["pss_sum_mib"], 1)})
    return {"floor": {**floor, "instance_peak_upper_bound_mib": process.peak_upper_bound_mib(floor)},
            "instances": instances,
            "method": "after the first 200 and 10 requests of every intent: VmRSS/VmHWM from /proc/<pid>/status and Pss"
                      " from smaps_rollup of the gunicorn master and its worker; instance peak upper bound = master"
                      " RSS + worker peak RSS"}


def _cost(results: dict, reference: int) -> dict:
    """Cost scenarios from what this run measured: each cold-start instance, each HTTP server variant, webhooks."""
    from bench import cost, process

    deployed = cost.deploy_tiers()
    scenarios = []

    def at_both_tiers(label: str, cpu_ms: float, memory_mib: float, function: str) -> None:
        """The smallest fitting tier, and the tier deploy/deploy.py gives the function."""
        scenarios.append(cost.Scenario(label, cpu_ms, memory_mib))
        if function in deployed:
            scenarios.append(cost.Scenario(label, cpu_ms, memory_mib, deployed[function], "deploy/deploy.py"))

    for m in results["memory"]["instances"]:
        scenarios.append(cost.Scenario(f"recommend, {m['label']}, all four intents", m["cpu_ms_per_request_mixed_intents"],
                                       m["instance_peak_upper_bound_mib"]))
    for run in results["http"]["runs"]:
        level = next((lv for lv in run["levels"] if lv["concurrency"] == 8), run["levels"][-1])
        memory = process.peak_upper_bound_mib(run["memory_after_mib"])
        label = f"recommend, {size_label(reference)} items, personalized at concurrency {level['concurrency']}, {run['label']}"
        at_both_tiers(label, level["ours"]["server_cpu_ms_per_request"], memory, "recommend")
    webhook = results["ingest"]["sqlite"]["http"][-1]
    memory = process.peak_upper_bound_mib(webhook["memory_after_mib"])
    label = f"webhook orders/create at concurrency {webhook['concurrency']} (SQLite)"
    at_both_tiers(label, webhook["ours"]["server_cpu_ms_per_delivery"], memory, "webhook")
    return cost.estimate(scenarios, "server CPU from /proc over the HTTP runs of this benchmark; instance peak ="
                                    " master RSS + worker peak RSS")


def goals(results: dict) -> list[dict]:
    """Each goal of the issue: what was measured, the target, whether it was met, and the section of the run
    whose timing it comes from (None for sizes and memory, which no neighbour slows)."""
    from bench import process

    reference = results["meta"]["reference_size"]
    out: list[dict] = []

    def add(section: str | None, goal: str, measured: float, met: bool, batch_steal_pct: float | None = None,
            interval: Sequence[float] | None = None) -> None:
        out.append({"goal": goal, "measured": measured, "met": met, "section": section})
        if batch_steal_pct is not None:  # the steal of the worst of the batches the figure comes from
            out[-1]["batch_steal_pct"] = batch_steal_pct
        if interval is not None:  # where the ratio could have landed had other rounds been timed (95%)
            out[-1]["interval"] = list(interval)

    # Ratios are judged to three decimals, from the figures as recorded (the tables round them to two).
    at = size_label(reference)
    floor = results["cold_start"]["floor"]
    for config in results["cold_start"]["configs"]:
        if config["items"] == reference:
            ratio_ = goal_ratio(config["first_ok_median_s"], floor["first_ok_median_s"])
            # The k-th start of each configuration ran in the k-th round of starts (bench.cold_start.start_order), so
            # the rounds both have are paired: a configuration with fewer starts than the floor, with the floor's
            # starts of its own rounds.
            rounds = min(len(config.get("first_ok_samples_s") or ()), len(floor.get("first_ok_samples_s") or ()))
            add("cold start", f"cold start ≤ {GOALS['cold_start_ratio']}× floor ({config['label']})", ratio_,
                ratio_ <= GOALS["cold_start_ratio"],
                interval=ratio_interval(config["first_ok_samples_s"][:rounds], floor["first_ok_samples_s"][:rounds],
                                        None) if rounds else None)
    for blas in ("blas_default_threads", "blas_one_thread"):
        warm = next(w for w in results["warm_latency"]["sizes"] if w["items"] == reference)[blas]
        for intent, numbers in warm["intents"].items():
            vs_floor = goal_ratio(numbers["p99_ms"], warm["floor"]["p99_ms"])
            vs_peer = goal_ratio(numbers["p99_ms"], warm["implicit_fold_in"]["p99_ms"])
            add("warm latency", f"{intent} p99 ≤ {GOALS['warm_p99_vs_floor']}× floor at {at} ({blas})",
                vs_floor, vs_floor <= GOALS["warm_p99_vs_floor"], interval=numbers.get("p99_vs_floor_interval"))
            add("warm latency", f"{intent} p99 faster than implicit fold-in at {at} ({blas})", vs_peer, vs_peer < 1,
                interval=numbers.get("p99_vs_implicit_fold_in_interval"))
    trained = results["warm_latency"].get("trained_one_thread")
    if trained:  # the same goals on a model our training made (unequal norms, as every trained shop's model has)
        for intent, numbers in trained["intents"].items():
            vs_floor = goal_ratio(numbers["p99_ms"], trained["floor"]["p99_ms"])
            vs_peer = goal_ratio(numbers["p99_ms"], trained["implicit_fold_in"]["p99_ms"])
            add("warm latency", f"{intent} p99 ≤ {GOALS['warm_p99_vs_floor']}× floor at {at}, a trained model"
                " (blas_one_thread)", vs_floor, vs_floor <= GOALS["warm_p99_vs_floor"],
                interval=numbers.get("p99_vs_floor_interval"))
            add("warm latency", f"{intent} p99 faster than implicit fold-in at {at}, a trained model (blas_one_thread)",
                vs_peer, vs_peer < 1, interval=numbers.get("p99_vs_implicit_fold_in_interval"))
    for key, blas in (("with_catalog", "blas_default_threads"), ("with_catalog_one_thread", "blas_one_thread")):
        with_catalog = results["warm_latency"].get(key) or {}
        for intent, numbers in with_catalog.get("intents", {}).items():
            vs_floor = goal_ratio(numbers["p99_ms"], with_catalog["floor"]["p99_ms"])
            add("warm latency", f"{intent} p99 ≤ {GOALS['warm_p99_vs_floor']}× floor at {at} with {at} catalog rows"
                f" ({blas})", vs_floor, vs_floor <= GOALS["warm_p99_vs_floor"],
                interval=numbers.get("p99_vs_floor_interval"))
    limit = GOALS["ingest_p99_ms"]
    for store, name in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
        ingest = results["ingest"][store]
        if "skipped" in ingest:
            continue
        p99 = ingest["in_process"]["p99_ms"]
        add("ingest", f"webhook p99 < {limit:g} ms in process ({name})", p99, p99 < limit)
        for level in ingest["http"]:
            p99 = level["ours"]["p99_ms"]
            add("ingest", f"webhook p99 < {limit:g} ms over HTTP at concurrency {level['concurrency']} ({name})",
                p99, p99 < limit, level["ours"].get("steal_pct"))
    from bench.training import pair_ratios_of

    samples = results["training"]
    training = median(pair_ratios_of(samples["train_and_publish_samples_s"], samples["implicit_fit_samples_s"]))
    add("training", f"training ≤ {GOALS['training_ratio']}× implicit fit", training,
        training <= GOALS["training_ratio"])
    for artifact in results["size"]["artifacts"]:
        size = artifact["bytes_per_item_factor"]
        add(None, f"artifact ≤ {GOALS['bytes_per_item_factor']} bytes per item·factor ({artifact['label']})", size,
            size <= GOALS["bytes_per_item_factor"])
    budget = GOALS["memory_budget_mib"] * GOALS["memory_headroom"]
    share = f"({GOALS['memory_headroom']:.0%} of {GOALS['memory_budget_mib']} MiB)"
    for instance in results["memory"]["instances"]:
        if instance["items"] == reference:
            peak = instance["instance_peak_upper_bound_mib"]
            add(None, f"{instance['label']}: instance peak ≤ {budget:g} MiB {share} after 40 requests", peak,
                peak <= budget)
    full = results["memory"].get("caches_full")
    if full and full["items"] == reference:  # PSS: the worker's SQLite connections each map the same file pages
        pss = full["after"]["pss_sum_mib"]
        add(None, f"{at} items + catalog rows: instance PSS ≤ {budget:g} MiB {share} after {full['requests']:,}"
            " distinct related answers (the caches full)", pss, pss <= budget)
    trained = results["memory"].get("trained_with_head")
    if trained and trained["items"] == reference:
        peak = trained["after_peak_upper_bound_mib"]
        head = "its NormHead built" if trained["head_rows"] else "no NormHead built"
        add(None, f"{at} items, a trained model: instance peak ≤ {budget:g} MiB {share} with {head}", peak,
            peak <= budget)
    for run_ in results["http"]["runs"]:
        peak = process.peak_upper_bound_mib(run_["memory_after_mib"])
        add(None, f"{at} items: instance peak ≤ {budget:g} MiB {share} after the HTTP load ({run_['label']})", peak,
            peak <= budget)
    return out


def headline_figures(results: dict) -> dict[str, dict[str, float]]:
    """One positive number per thing each section measures (what the smoke test checks)."""
    reference = results["meta"]["reference_size"]
    cold = results["cold_start"]
    warm = next(w for w in results["warm_latency"]["sizes"] if w["items"] == reference)["blas_default_threads"]
    figures = {
        "cold_start": {"floor_first_ok_s": cold["floor"]["first_ok_median_s"],
                       "floor_one_blas_thread_first_ok_s": cold["floor_one_blas_thread"]["first_ok_median_s"],
                       **{f"{c['label']} first_ok_s": c["first_ok_median_s"] for c in cold["configs"]},
                       **{f"{c['label']} ratio": c["ratio_first_ok"] for c in cold["configs"]}},
        "warm_latency": {"floor_p99_ms": warm["floor"]["p99_ms"], "implicit_fold_in_p99_ms": warm["implicit_fold_in"]["p99_ms"],
                         **{f"{intent}_p99_ms": n["p99_ms"] for intent, n in warm["intents"].items()},
                         "catalog_refresh_s": results["warm_latency"]["catalog_refresh"]["median_s"]},
        "http": {f"{run['label']} c{lv['concurrency']} {who} {key}": lv[who][key] for run in results["http"]["runs"]
                 for lv in run["levels"] for who in ("ours", "floor") for key in ("rps", "p99_ms")},
        "ingest": {"in_process_per_s": results["ingest"]["sqlite"]["in_process"]["deliveries_per_s"],
                   "in_process_p99_ms": results["ingest"]["sqlite"]["in_process"]["p99_ms"],
                   "storage_floor_p99_ms": results["ingest"]["sqlite"]["storage_floor"]["p99_ms"],
                   **{f"http c{lv['concurrency']} per_s": lv["ours"]["deliveries_per_s"]
                      for lv in results["ingest"]["sqlite"]["http"]},
                   **{f"http c{lv['concurrency']} p99_ms": lv["ours"]["p99_ms"] for lv in results["ingest"]["sqlite"]["http"]}},
        "round_trips": _round_trip_figures(results.get("round_trips")),
        "training": {"train_and_publish_s": results["training"]["train_and_publish_median_s"],
                     "implicit_fit_s": results["training"]["implicit_fit_median_s"], "ratio": results["training"]["ratio"]},
        "size": {a["label"]: a["bytes_per_item_factor"] for a in results["size"]["artifacts"]},
        "memory": {"floor_pss_mib": results["memory"]["floor"]["pss_sum_mib"],
                   **{i["label"]: i["instance_peak_upper_bound_mib"] for i in results["memory"]["instances"]}},
        "cost": {f"{r['label']} ({r['tier_from']}) usd_per_million": r["busy_usd_per_million"]
                 for r in results["cost"]["rows"]},
    }
    return figures


def _round_trip_figures(found: dict | None) -> dict[str, float]:
    """Each kind's median time: a delivery's on SQLite always, and on PostgreSQL on loopback when one was reached
    (nothing for runs before round 30 of bench/PERFORMANCE.md, which had no such section)."""
    if not found:
        return {}
    deliveries = found["deliveries"]
    figures = {f"{kind} SQLite ms": deliveries["sqlite"][kind]["median_ms"] for kind in deliveries["kinds"]}
    if "loopback" in deliveries["postgresql"]:
        figures.update({f"{kind} PostgreSQL ms": deliveries["postgresql"]["loopback"][kind]["median_ms"]
                        for kind in deliveries["kinds"]})
    if "loopback" in found["answers"]:
        figures.update({f"{kind} PostgreSQL ms": found["answers"]["loopback"][kind]
                        for kind in found["answers"]["kinds"]})
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.perf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2k items, few repetitions: under a minute")
    parser.add_argument("--sizes", help="comma-separated catalog sizes, e.g. 10000,100000,1000000")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for perf.json and perf.md")
    parser.add_argument("--keep", action="store_true", help="keep the temporary working folder")
    parser.add_argument("--render-only", action="store_true",
                        help="measure nothing: recompute goals from OUT/perf.json and rewrite OUT/perf.md")
    args = parser.parse_args(argv)
    if args.render_only:
        from bench.report import markdown

        results = json.loads((args.out / "perf.json").read_text())
        results["goals"], results["headline"] = goals(results), headline_figures(results)
        (args.out / "perf.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "perf.md").write_text(markdown(results))
        return 0
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else None
    if sizes and any(n < 100 for n in sizes):
        parser.error("--sizes: each size must be at least 100 items")
    plan = Plan.quick(sizes) if args.quick else Plan.full(sizes)
    from bench import process

    workdir = Path(tempfile.mkdtemp(prefix="bench-perf-"))
    log = lambda message: print(f"[bench.perf] {message}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        with process.postgres_of_its_own(log):  # the run's rows in a schema dropped after it
            results = run(plan, workdir, log=log)
    finally:
        if args.keep:
            print(f"[bench.perf] kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    from bench.report import markdown

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "perf.json").write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    (args.out / "perf.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
