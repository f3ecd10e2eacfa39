"""One `recommend` instance serving many shops: its memory, with and without MODEL_MEMORY_MIB.

    python -m bench.many_shops_probe                                  # 16 shops of 50k items, a 64 MiB budget
    python -m bench.many_shops_probe --shops 24 --items 100000 --budget-mib 128
    python -m bench.many_shops_probe --shops 24 --items 100000 --budget-mib 230 --intent personalized [--factors trained]
    MALLOC_ARENA_MAX=2 python -m bench.many_shops_probe ...           # the instance as deploy.py starts recommend

An app installed in many stores serves them all from the same instances, and an instance keeps the model of
every shop it has answered for. This probe starts `functions-framework --target recommend` (main.py, SQLite,
models in a local folder, one thread) twice, without a budget and with MODEL_MEMORY_MIB, and in each asks
through the app proxy, signed (related answers for a product, or with --intent personalized a shopper's, whose
purchases in every shop are folded in, and each model's first of which times its NormHead's build a second later;
with --factors trained, factors as training makes them, whose unequal norms get a NormHead, so that each model
grows to its full serving size; the random factors' near-equal norms get none):

- pass 1: one answer for each shop in turn (each shop's first load);
- pass 2: the same again, in the same order (with the budget, the order it is worst at: each shop's model was
  let go before it is asked again);
- hot: 20 answers for each of the last `--hot` shops in turn (shops that fit the budget: the usual case, a few
  busy shops and many quiet ones).

Prints the instance's memory (PSS of master and worker, as a container's limit counts it, the worker's peak RSS, and
that plus the master's RSS: an upper bound of the instance's peak) after each phase, the answers' medians, how many
times models were let go (the instance's log says so at INFO), and the budget's run against the run without it.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import requests

from bench import process, synthetic
from recommender.model_store import LocalModelStore

PATH_PREFIX = "/apps/recommendations"
HOT_REQUESTS = 20


def _shop(k: int) -> str:
    return f"probe-shop-{k:03d}.myshopify.com"


CUSTOMER = "4242"  # the shopper of --intent personalized, with purchases in every shop


def _query(shop: str, product: str, intent: str = "related") -> str:
    from webhooks.app_proxy import app_proxy_signature

    asked = ({"intent": "related", "product_id": product, "logged_in_customer_id": ""} if intent == "related" else
             {"intent": "personalized", "logged_in_customer_id": CUSTOMER})
    params = {"shop": shop, **asked, "n": "10", "path_prefix": PATH_PREFIX, "timestamp": str(int(time.time()))}
    params["signature"] = app_proxy_signature(params.items(), synthetic.SECRET)
    return urlencode(params)


def _prepare(work: Path, shops: int, items: int, trained: bool = False) -> tuple[dict[str, str], list[str]]:
    from datetime import datetime, timedelta, timezone

    from recommender.changes import Event, EventKind
    from recommender.store import SQLiteEventStore

    store = LocalModelStore(work / "models")
    products, purchases = [], []
    now = datetime.now(timezone.utc)
    factors = synthetic.trained_factors(items) if trained else None  # one fit, shared: ~11 s at 100k items
    for k in range(shops):
        artifact = synthetic.build_artifact(items, seed=k, item_factors=factors)
        artifact.metadata = {**artifact.metadata, "shop": _shop(k)}
        store.publish(_shop(k), artifact)
        supported = np.flatnonzero(artifact.item_support >= 2)
        products.append(artifact.item_ids[int(supported[k % len(supported)])])
        purchases += [Event(EventKind.PURCHASE, _shop(k), artifact.item_ids[int(i)], now - timedelta(days=1 + j),
                            customer_id=CUSTOMER, dedupe_key=f"probe:{j}")
                      for j, i in enumerate(supported[k:k + 5])]  # the shopper's history, folded in
    events = SQLiteEventStore(work / "events.sqlite3")
    try:
        events.add_events(purchases)
        for k in range(shops):
            events.set_shop_installed(_shop(k), True)
    finally:
        events.close()
    env = {"SHOPIFY_API_SECRET": synthetic.SECRET, "EVENT_STORE_URL": f"sqlite:///{work / 'events.sqlite3'}",
           "MODEL_STORE_URL": f"file://{work / 'models'}", "MODEL_REFRESH_SECONDS": "3600",
           "ANSWER_CACHE_SECONDS": "0"}
    return env, products


def _let_go(server: process.Server) -> int:
    """How many times the instance has let go of models so far (its log's lines saying so)."""
    return server.log_path.read_text(errors="replace").count("models let go")


def _memory(server: process.Server) -> dict[str, float]:
    memory = process.instance_memory_mib(server)
    return {"pss_mib": memory["pss_sum_mib"], "worker_peak_rss_mib": memory["worker_peak_rss_mib"],
            "peak_upper_bound_mib": process.peak_upper_bound_mib(memory)}


def _run(work: Path, env: dict[str, str], products: list[str], hot: int, intent: str = "related") -> dict:
    server = process.spawn("recommend", process.ROOT / "main.py", env, work / "logs", threads=1)
    try:
        shops = [_shop(k) for k in range(len(products))]
        process.wait_until_serving(server, f"/?{_query(shops[0], products[0], intent)}")
        result: dict = {"started": _memory(server)}
        with requests.Session() as session:
            def ask(k: int) -> float:
                began = time.perf_counter()
                response = session.get(f"{server.base}/?{_query(shops[k], products[k], intent)}", timeout=60)
                took = (time.perf_counter() - began) * 1e3
                if response.status_code != 200:
                    raise RuntimeError(f"{shops[k]}: {response.status_code} {response.text[:300]}")
                if intent == "personalized" and response.json().get("strategy") != "personalized":
                    raise RuntimeError(f"{shops[k]}: not a personalized answer: {response.text[:300]}")
                return took

            for phase, order in (("pass 1", range(1, len(shops))), ("pass 2", range(len(shops))),
                                 ("hot", [k for _ in range(HOT_REQUESTS) for k in range(len(shops) - hot, len(shops))])):
                before = _let_go(server)
                took = [ask(k) for k in order]
                result[phase] = {**_memory(server), "median_ms": round(statistics.median(took), 2),
                                 "slowest_ms": round(max(took), 2), "times_let_go": _let_go(server) - before}
        return result
    finally:
        server.stop()


def measure(shops: int, items: int, budget_mib: float, hot: int, intent: str = "related",
            trained: bool = False) -> dict[str, dict]:
    """The two runs, "no budget" and "MODEL_MEMORY_MIB=<budget>", each phase's figures (`intent`: "related" for a
    product, or "personalized" for a shopper with purchases in every shop; `trained`: factors as training makes
    them, shared by the shops, which personalized answers give a NormHead)."""
    work = Path(tempfile.mkdtemp(prefix="many-shops-probe-"))
    try:
        env, products = _prepare(work, shops, items, trained)
        return {"no budget": _run(work, env, products, hot, intent),
                f"MODEL_MEMORY_MIB={budget_mib:g}": _run(work, {**env, "MODEL_MEMORY_MIB": f"{budget_mib:g}"},
                                                         products, hot, intent)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shops", type=int, default=16)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--budget-mib", type=float, default=64.0)
    parser.add_argument("--hot", type=int, default=3, help="shops asked over and over in the last phase")
    parser.add_argument("--intent", choices=("related", "personalized"), default="related",
                        help="what each request asks: a product's related items, or a shopper's personalized ones")
    parser.add_argument("--factors", choices=("random", "trained"), default="random",
                        help="the models' factors: random (near-equal norms), or as training makes them (one fit, "
                             "shared by the shops), whose personalized answers build a NormHead")
    args = parser.parse_args(argv)
    runs = measure(args.shops, args.items, args.budget_mib, args.hot, args.intent, args.factors == "trained")
    print(f"{args.shops} shops of {args.items:,} items ({args.factors} factors), one recommend instance (one thread),"
          f" {args.intent} answers")
    for label, run in runs.items():
        print(f"{label}: started at PSS {run['started']['pss_mib']} MiB")
        for phase in ("pass 1", "pass 2", "hot"):
            figures = run[phase]
            print(f"  {phase:7s} PSS {figures['pss_mib']:7.1f} MiB  worker peak RSS {figures['worker_peak_rss_mib']:7.1f}"
                  f" MiB (with the master's RSS {figures['peak_upper_bound_mib']:7.1f})"
                  f"  answers: median {figures['median_ms']:7.2f} ms, slowest {figures['slowest_ms']:7.2f} ms;"
                  f" models let go {figures['times_let_go']} times")
    plain, budgeted = runs.values()
    print(f"with the budget against without: PSS after pass 2 {budgeted['pass 2']['pss_mib'] / plain['pass 2']['pss_mib']:.2f}×,"
          f" worker peak {budgeted['hot']['worker_peak_rss_mib'] / plain['hot']['worker_peak_rss_mib']:.2f}×,"
          f" hot answers' median {budgeted['hot']['median_ms'] / plain['hot']['median_ms']:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
