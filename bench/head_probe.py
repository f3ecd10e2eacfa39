"""Personalized answers before, during and after an instance builds its NormHead, on a trained model.

    python -m bench.head_probe                       # 1M items (training them takes ~2.5 min with two cores)
    python -m bench.head_probe --items 100000 --cpus 2

An instance builds a model's NormHead (recommender/serving.py) on a thread of its own, HEAD_BUILD_DELAY_SECONDS
after the model's first personalized answer, while its requests go on scoring every item. This probe trains
item factors as `bench.synthetic.trained_factors` does (our ALS on power-law events: unequal norms), then, in
one process, answers personalized requests back to back (`ServingModel.fold_in_terms` + `personalized_top`,
shoppers of 12 to 20 events drawn by the same popularity) for `--seconds`, and prints their latency in three
phases: before the build starts, while it runs, and once the head answers. It also checks that the head's
answers are the ones scoring every item gives.

One BLAS thread, as `main.py` pins it. `--cpus 1` (the default) keeps the process on one core, as a Cloud Run
instance of one vCPU or less runs: the build then takes its CPU from the answers beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from bench import process


def shoppers(n_items: int, count: int, seed: int = 9) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` histories of 12 to 20 distinct rows drawn by the training log's popularity, with event weights."""
    from bench.synthetic import item_popularity

    rng = np.random.default_rng(seed)
    popularity = item_popularity(n_items)
    out = []
    for _ in range(count):
        rows = np.unique(rng.choice(n_items, size=int(rng.integers(12, 21)), p=popularity))
        out.append((rows.astype(np.int64), rng.choice([1.0, 4.0, 10.0], size=len(rows))))
    return out


def phases(timeline: list[tuple[float, float, str]]) -> dict[str, dict]:
    """p50 / p99 / max (ms) and count of the answers in each phase."""
    out = {}
    for phase in ("before", "during", "after"):
        ms = np.array([ms for _, ms, p in timeline if p == phase])
        if len(ms):
            out[phase] = {"n": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 3),
                          "p99_ms": round(float(np.percentile(ms, 99)), 3), "max_ms": round(float(ms.max()), 3)}
    return out


def probe(n_items: int, seconds: float, cpus: int, log=print) -> dict:
    from threadpoolctl import threadpool_limits

    from bench import synthetic
    from recommender.serving import HEAD_BUILD_DELAY_SECONDS, ServingModel, top_rows

    began = time.perf_counter()
    factors = synthetic.trained_factors(n_items)
    log(f"trained {n_items:,} items in {time.perf_counter() - began:.1f} s")
    model = ServingModel(synthetic.build_artifact(n_items, item_factors=factors))
    del factors
    people = [model.fold_in_terms(rows, weights) for rows, weights in shoppers(n_items, 2_000)]
    os.sched_setaffinity(0, process.first_cores(cpus))  # trained on every core, timed on these
    timeline: list[tuple[float, float, str]] = []
    with threadpool_limits(limits=1, user_api="blas"):
        start = time.perf_counter()
        due = start + HEAD_BUILD_DELAY_SECONDS  # the first answer below starts the build's timer
        built_at = None
        i = 0
        while time.perf_counter() - start < seconds:
            before = time.perf_counter()
            model.personalized_top(people[i % len(people)], 10)
            after = time.perf_counter()
            head = model.head is not None
            if head and built_at is None:
                built_at = after
            phase = "after" if head and before >= built_at else "before" if after < due else "during"
            timeline.append((before - start, (after - before) * 1e3, phase))
            i += 1
        same = 0
        checked = people[:200]
        for terms in checked:  # the head's answer against every item scored
            rows, _ = model.personalized_top(terms, 10)
            same += rows == top_rows(model.factors @ model.user_vector(terms), 10)
    return {"items": n_items, "cpus": sorted(os.sched_getaffinity(0)), "phases": phases(timeline),
            "build_window_s": round(built_at - due, 3) if built_at else None,
            "head_rows": len(model.head.rows) if model.head is not None else None,
            "head_answers": model.head_hits, "head_tries": model.head_tries,
            "same_as_every_item": f"{same} of {len(checked)}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=4.0, help="how long answers are timed (from the first)")
    parser.add_argument("--cpus", type=int, default=1, help="cores the process may run on (default 1)")
    args = parser.parse_args(argv)
    result = probe(args.items, args.seconds, args.cpus, log=lambda line: print(line, file=sys.stderr))
    print(json.dumps(result, indent=1))
    for phase, figures in result["phases"].items():
        print(f"{phase:>6}: {figures['n']:>6} answers, p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f},"
              f" max {figures['max_ms']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
