"""Hot refresh as a shopper meets it: the requests around a refresh check, with the model in gs://.

    python -m bench.refresh_probe --rounds 7            # 100k items, gcp-storage-emulator on loopback
    python -m bench.refresh_probe --rounds 7 --rtt-ms 20   # each request to the emulator 20 ms longer

A serving instance looks at the model store's pointer at most every MODEL_REFRESH_SECONDS per shop,
from the request that finds the check due; when a newer model is there, it is downloaded and parsed.
This probe serves personalized answers in process (`Recommender.recommend`, the shopper's events in
SQLite) from a model in gs:// (gcp-storage-emulator on loopback, an in-memory Python server; a real
bucket's distance is not measured here) and times, in each round:

- ordinary: requests that find no check due, one after another (the floor of this probe);
- after a pause, no check due: a request after as long a pause as precedes the checks, to tell what the
  pause alone costs (caches and CPU gone cold) from what the check costs;
- check, nothing moved: the request that finds the check due while `latest` has not moved;
- check, new model: the request that finds the check due after a new version was published, and then
  every request until the answers carry the new version: how long that took, and the slowest of them.

Prints medians over the rounds (ms) and each against the ordinary request's median.

BLAS runs one thread, as `main.py` pins it in every instance (`--blas-threads default`: OpenBLAS's own
pool). With OpenBLAS's pool, a request whose product met the load's work and the emulator's on two cores
waited up to ~0.1 s for the pool's threads, spinning (bench/PERFORMANCE.md, round 15): not what a
deployed instance does.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import process, synthetic
from bench.latency import requests_by_intent
from recommender.model_store import open_model_store

REFRESH_SECONDS = 1.0
PAUSE_SECONDS = 0.6  # before the control request: shorter than REFRESH_SECONDS, so no check is due
ORDINARY_PER_ROUND = 20
SWAP_DEADLINE_SECONDS = 30.0


def _timed(call) -> tuple[float, object]:
    started = time.perf_counter()
    result = call()
    return (time.perf_counter() - started) * 1e3, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--rtt-ms", type=float, default=0.0,
                        help="add this round trip to every request to the emulator (bench/latency_proxy.py)")
    parser.add_argument("--blas-threads", choices=("one", "default"), default="one",
                        help="one BLAS thread, as main.py pins it (the default), or OpenBLAS's own pool")
    args = parser.parse_args(argv)
    if args.blas_threads == "one":
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return _probe(args)
    return _probe(args)


def _probe(args: argparse.Namespace) -> int:
    from threadpoolctl import threadpool_info

    blas_threads = max((pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"), default=0)

    from recommender.runtime import Runtime
    from recommender.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="refresh-probe-"))
    emulator, gcs = process.start_storage_emulator(work / "logs", rtt_ms=args.rtt_ms)
    hosted = contextlib.ExitStack()
    hosted.enter_context(process.emulator_host(gcs["STORAGE_EMULATOR_HOST"]))  # for the publisher's client library
    try:
        artifacts = [synthetic.build_artifact(args.items, seed=seed) for seed in range(2)]
        synthetic.publish_artifact(work / "models", artifacts[0])
        shop = synthetic.prepare_shop(work / "shop", artifacts[0], work / "models")
        publisher = open_model_store(gcs["MODEL_STORE_URL"])
        publisher.publish(synthetic.SHOP, artifacts[0])
        settings = Settings.from_mapping(shop.env(**gcs, MODEL_REFRESH_SECONDS=str(REFRESH_SECONDS),
                                                  CATALOG_TTL_SECONDS="1000000", TRENDING_TTL_SECONDS="1000000"))
        runtime = Runtime.from_settings(settings)
        wanted = requests_by_intent(shop, 200)["personalized"]
        recommend = runtime.recommender.recommend
        serial = iter(range(10**9))

        def ask():
            return recommend(wanted[next(serial) % len(wanted)])

        version = ask().model_version  # the first load
        last_check = time.perf_counter()  # when the holder last looked: the first load, then each new model's request
        figures: dict[str, list[float]] = {"ordinary": [], "after a pause, no check due": [],
                                           "check, nothing moved": [], "check, new model": [],
                                           "new model served after": [], "slowest until then": []}
        for round_ in range(args.rounds):
            for _ in range(ORDINARY_PER_ROUND):
                figures["ordinary"].append(_timed(ask)[0])
            time.sleep(PAUSE_SECONDS)
            if time.perf_counter() - last_check >= REFRESH_SECONDS:
                raise RuntimeError("the control request came after the refresh interval; the machine is too slow")
            figures["after a pause, no check due"].append(_timed(ask)[0])
            time.sleep(REFRESH_SECONDS * 1.1 - PAUSE_SECONDS)
            figures["check, nothing moved"].append(_timed(ask)[0])
            expected = f"refresh-probe-{round_}"
            fresh = artifacts[(round_ + 1) % 2]
            fresh.metadata = {**fresh.metadata, "version": expected}
            publisher.publish(synthetic.SHOP, fresh)
            time.sleep(REFRESH_SECONDS * 1.1)
            started = last_check = time.perf_counter()
            first_ms, answer = _timed(ask)
            figures["check, new model"].append(first_ms)
            slowest = first_ms
            while answer.model_version != expected:
                if time.perf_counter() - started > SWAP_DEADLINE_SECONDS:
                    raise RuntimeError(f"the new model {expected} was not served within {SWAP_DEADLINE_SECONDS} s")
                elapsed, answer = _timed(ask)
                slowest = max(slowest, elapsed)
            figures["new model served after"].append((time.perf_counter() - started) * 1e3)
            figures["slowest until then"].append(slowest)
            version = answer.model_version
        runtime.store.close()
    finally:
        emulator.stop()
        hosted.close()
        shutil.rmtree(work, ignore_errors=True)
    ordinary = statistics.median(figures["ordinary"])
    print(f"{args.items:,} items, {args.rounds} rounds, the model in gs:// (gcp-storage-emulator"
          f"{f', {args.rtt_ms:g} ms added to each round trip' if args.rtt_ms else ''}), last {version},"
          f" {blas_threads} BLAS thread{'' if blas_threads == 1 else 's'}")
    for label, values in figures.items():
        median = statistics.median(values)
        print(f"{label:28s} median {median:8.2f} ms  {median / ordinary:7.1f}× ordinary"
              f"  samples {[round(v, 2) for v in values] if label != 'ordinary' else f'{len(values)} requests'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
