"""Two shops' first loads on one new instance: does a small shop's first shopper wait for a big shop's model?

    python -m bench.first_load_probe --rounds 7                        # models in a local folder
    python -m bench.first_load_probe --rounds 7 --gcs --rtt-ms 20      # in gs:// (gcp-storage-emulator), 20 ms away

An app installed in many stores serves them all from the same instances: a new instance (a deploy, a scale-out)
meets its first request for each shop with that shop's model not yet in memory, and loads it on the request
(`ModelHolder.get`). This probe asks, in each round and on a fresh holder each time (`ModelHolder.get` over the
real model store, the way `Recommender` asks it):

- small alone: the small shop's first load, nothing else loading (the floor of this probe);
- small behind big: the same, asked once the big shop's first load has begun reading its artifact, timed from
  the small shop's request to its model;
- big alone, and big with small beside it: what the big shop's own first load pays for sharing the instance;
- like shops at once: `--like-shops` shops of `--like-items` each, every one's first request at the same moment
  (a new instance meeting its traffic): their mean and slowest time to the model, against one of them alone.

Prints each figure's median over the rounds (ms), and "small behind big" against "small alone".
BLAS runs one thread, as `main.py` pins it.

With `--gcs`, what is left of "small behind big" is mostly the emulator's: gcp-storage-emulator is a plain
`http.server.HTTPServer`, which answers one request at a time, so the small shop's reads wait there for the
rest of the big artifact's download; a bucket answers them side by side. The local folder shows our own part.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import process, synthetic
from recommender.model_store import Manifest, ModelStore, open_model_store

BIG_SHOP = "big-probe.myshopify.com"
SMALL_SHOP = "small-probe.myshopify.com"
LIKE_SHOP = "like-{}-probe.myshopify.com"
NEVER = 1e9  # refresh interval: no refresh check during a round


class _Watched:
    """The real model store, passed through, telling the probe when the big shop's artifact begins loading."""

    def __init__(self, store: ModelStore):
        self._store = store
        self.big_loading = threading.Event()

    def latest(self, shop: str) -> Manifest | None:
        return self._store.latest(shop)

    def pointer_token(self, shop: str) -> str | None:
        return self._store.pointer_token(shop)

    def load(self, manifest: Manifest):
        if manifest.shop == BIG_SHOP:
            self.big_loading.set()
        return self._store.load(manifest)


def _timed_get(holder, shop: str, into: list, start: threading.Barrier | None = None) -> None:
    try:
        if start is not None:
            start.wait(60)
        started = time.perf_counter()
        holder.get(shop)
        into.append((time.perf_counter() - started) * 1e3)
    except BaseException as exc:  # the probe's own thread: the round reports it
        into.append(exc)


def _took(results: list, shop: str) -> float:
    if len(results) != 1 or isinstance(results[0], BaseException):
        raise RuntimeError(f"the first load of {shop} failed: {results!r}")
    return results[0]


def _round(store: ModelStore, like_shops: int) -> dict[str, float]:
    from recommender.serving import ModelHolder

    figures: dict[str, float] = {}
    for label, shop in (("small alone", SMALL_SHOP), ("big alone", BIG_SHOP), ("one like shop alone", LIKE_SHOP.format(0))):
        took: list = []
        _timed_get(ModelHolder(store, refresh_seconds=NEVER), shop, took)
        figures[label] = _took(took, shop)
    watched = _Watched(store)
    holder = ModelHolder(watched, refresh_seconds=NEVER)
    big: list = []
    small: list = []
    loading = threading.Thread(target=_timed_get, args=(holder, BIG_SHOP, big))
    loading.start()
    while not watched.big_loading.wait(0.01):
        if not loading.is_alive():  # it ended before its artifact's read: a failure, reported below
            break
    _timed_get(holder, SMALL_SHOP, small)
    loading.join()
    figures["small behind big"] = _took(small, SMALL_SHOP)
    figures["big with small beside it"] = _took(big, BIG_SHOP)
    holder = ModelHolder(store, refresh_seconds=NEVER)
    start = threading.Barrier(like_shops)
    results: list[list] = [[] for _ in range(like_shops)]
    threads = [threading.Thread(target=_timed_get, args=(holder, LIKE_SHOP.format(k), results[k], start))
               for k in range(like_shops)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    took = [_took(result, LIKE_SHOP.format(k)) for k, result in enumerate(results)]
    figures["like shops at once, mean"] = statistics.fmean(took)
    figures["like shops at once, slowest"] = max(took)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--big-items", type=int, default=1_000_000)
    parser.add_argument("--small-items", type=int, default=10_000)
    parser.add_argument("--like-shops", type=int, default=6)
    parser.add_argument("--like-items", type=int, default=200_000)
    parser.add_argument("--gcs", action="store_true", help="the models in gs:// (gcp-storage-emulator on loopback)")
    parser.add_argument("--rtt-ms", type=float, default=0.0,
                        help="with --gcs: add this round trip to every request to the emulator (bench/latency_proxy.py)")
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _probe(args)


def _probe(args: argparse.Namespace) -> int:
    rounds = measure(args.rounds, args.big_items, args.small_items, args.like_shops, args.like_items, args.gcs,
                     args.rtt_ms)
    where = (f"gs:// (gcp-storage-emulator{f', {args.rtt_ms:g} ms added to each round trip' if args.rtt_ms else ''})"
             if args.gcs else "a local folder")
    print(f"a {args.big_items:,}-item shop and a {args.small_items:,}-item shop; {args.like_shops} shops of"
          f" {args.like_items:,} items; models in {where}, {args.rounds} rounds, a fresh holder each time")
    medians = {label: statistics.median(r[label] for r in rounds) for label in rounds[0]}
    for label, median in medians.items():
        print(f"{label:28s} median {median:9.2f} ms  samples {[round(r[label], 1) for r in rounds]}")
    print(f"small behind big / small alone: {medians['small behind big'] / medians['small alone']:.2f}×;"
          f" like shops at once, mean / one alone:"
          f" {medians['like shops at once, mean'] / medians['one like shop alone']:.2f}×")
    return 0


def measure(rounds: int, big_items: int, small_items: int, like_shops: int, like_items: int, gcs: bool = False,
            rtt_ms: float = 0.0) -> list[dict[str, float]]:
    """Each round's figures (ms), after a warm-up round not counted."""
    work = Path(tempfile.mkdtemp(prefix="first-load-probe-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        if gcs:
            emulator, where = process.start_storage_emulator(work / "logs", rtt_ms=rtt_ms)
            stack.callback(emulator.stop)
            stack.enter_context(process.emulator_host(where["STORAGE_EMULATOR_HOST"]))
            url = where["MODEL_STORE_URL"]
        else:
            url = (work / "models").as_uri()
        store = open_model_store(url)
        shops = [(BIG_SHOP, big_items), (SMALL_SHOP, small_items)]
        shops += [(LIKE_SHOP.format(k), like_items) for k in range(like_shops)]
        for seed, (shop, items) in enumerate(shops):
            artifact = synthetic.build_artifact(items, seed=seed)
            artifact.metadata = {**artifact.metadata, "shop": shop}
            store.publish(shop, artifact)
        _round(store, like_shops)  # a warm-up, not counted: the page cache, the emulator's first requests
        return [_round(store, like_shops) for _ in range(rounds)]


if __name__ == "__main__":
    sys.exit(main())
