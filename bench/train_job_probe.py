"""The nightly training job for one big shop: its wall time and peak memory, against implicit's fit of the same matrix.

    python -m bench.train_job_probe                                        # 1M events, SQLite, 3 rounds
    TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test python -m bench.train_job_probe --postgres
    python -m bench.train_job_probe --events 3000000 --users 600000 --items 100000 --rounds 1
    python -m bench.train_job_probe --code /path/to/another/checkout        # the same probe, another version's job
    python -m bench.train_job_probe --before /path/to/the/code/before       # both versions' jobs in each round, in turn
    python -m bench.train_job_probe --arenas 2                              # the job with MALLOC_ARENA_MAX=2 too, in turn

The `train` function runs `python -m recommender train` on a schedule, in a 2 GiB instance with a 30-minute timeout.
What decides whether a shop fits is the job's own time and peak, which the benchmark's training goal (500k events,
timed in process against implicit's fit) does not show: the job reads the events, judges a candidate with the
quality gate (a model trained on all but the last 7 days, ranked for each customer of those days beside best
sellers and trending) and only then trains the model it publishes.

The probe stores a shop's events through `EventStore.add_events` (SQLite in a scratch folder, or PostgreSQL at
TEST_POSTGRES_URL under a shop of its own, removed afterwards): shoppers in tastes of their own (four events in five
from their taste's products, the rest from the whole catalogue, both by a power law), views, carts and orders
(70/20/10) over 300 days, so that the candidate beats best sellers and the gate publishes. Then, in each round, in
turn, each in a process of its own:

- `job`: `python -m recommender train --shop SHOP` as deployed (the quality gate on);
- `job, no gate`: the same with QUALITY_GATE=false;
- `floor`: a process that imports implicit, loads the job's confidence matrix (saved by the probe) and fits it with
  the job's settings (BLAS on one thread, implicit's threads on every core): what no job can go below.

Prints each one's wall time and peak RSS (its own high-water mark, which it reports as it exits), their medians, and the job's against
the floor's. The events are stored by this checkout's code: --code and --before must know its event store's schema
(a checkout from before a migration refuses a newer schema, and its job fails saying so; measure such a one with
this probe from its own checkout).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHOP = "train-job-probe.myshopify.com"
TASTES = 40
IN_TASTE = 0.8
DAYS = 300
CHUNK = 50_000

# Each measured process reports its own peak RSS (VmHWM, its memory's high-water mark since exec) as it exits. The
# kernel's ru_maxrss for a child also counts the probe's own resident memory at the spawn (the probe holds a
# shop's columns by then): the first probes here read the floor's peak as 1,617 MiB at 5M events, its own 403.
PEAK = """
import atexit, sys
def _peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            sys.stderr.write("\\nPEAK_KIB " + line.split()[1] + "\\n")
atexit.register(_peak)
"""

# The job: `python -m recommender train ...` in a process that reports its peak.
JOB = PEAK + """
import runpy
sys.argv = ["recommender", *sys.argv[1:]]
runpy.run_module("recommender", run_name="__main__", alter_sys=True)
"""

# The floor: implicit's ALS on the job's confidence matrix, as recommender.training.fit_item_factors runs it.
FLOOR = PEAK + """
import json, time
import numpy as np, scipy.sparse as sp
from threadpoolctl import threadpool_limits
from implicit.cpu.als import AlternatingLeastSquares
matrix = sp.load_npz(sys.argv[1]).tocsr()
settings = json.loads(sys.argv[2])
with threadpool_limits(limits=1, user_api="blas"):
    model = AlternatingLeastSquares(factors=settings["factors"], regularization=settings["regularization"], alpha=1.0,
                                    iterations=settings["iterations"], random_state=settings["seed"])
    model.fit(matrix, show_progress=False)
print(json.dumps({"items": int(np.asarray(model.item_factors).shape[0])}))
"""


def shop_events(n_events: int, n_users: int, n_items: int, seed: int = 5, now: datetime | None = None,
                shop: str = SHOP):
    """The shop's events, CHUNK at a time (recommender.changes.Event), as the module's docstring describes."""
    from recommender.changes import Event
    from recommender.events import EventKind

    rng = np.random.default_rng(seed)
    now = now or datetime.now(timezone.utc)
    per_taste = n_items // TASTES
    global_p = 1.0 / np.arange(1, n_items + 1) ** 0.9
    global_p /= global_p.sum()
    taste_p = 1.0 / np.arange(1, per_taste + 1) ** 0.9
    taste_p /= taste_p.sum()
    kinds = (EventKind.VIEW, EventKind.ADD_TO_CART, EventKind.PURCHASE)
    for start in range(0, n_events, CHUNK):
        n = min(CHUNK, n_events - start)
        users = rng.integers(0, n_users, n)
        in_taste = rng.random(n) < IN_TASTE
        items = np.where(in_taste, (users % TASTES) * per_taste + rng.choice(per_taste, n, p=taste_p),
                         rng.choice(n_items, n, p=global_p))
        kind = rng.choice(3, n, p=[0.7, 0.2, 0.1])
        ages = rng.integers(0, DAYS * 86_400, n)
        yield [Event(kind=kinds[k], shop=shop, product_id=str(8_000_000_000_000 + 1_499 * item),
                     customer_id=str(7_000_000_000_000 + user), occurred_at=now - timedelta(seconds=age),
                     order_id=f"o{user}-{age // 86_400}" if k == 2 else None, source_topic="bench")
               for user, item, k, age in zip(users.tolist(), items.tolist(), kind.tolist(), ages.tolist())]


def fill(store, n_events: int, n_users: int, n_items: int, shop: str = SHOP, seed: int = 5) -> float:
    started = time.perf_counter()
    for chunk in shop_events(n_events, n_users, n_items, seed=seed, shop=shop):
        store.add_events(chunk)
    return time.perf_counter() - started


def save_floor_matrix(store, path: Path) -> dict:
    """The confidence matrix the job fits (all the shop's events, the shipped settings), for the floor's process."""
    import scipy.sparse as sp

    from recommender.settings import TrainingConfig
    from recommender.training import confidence_matrix, user_items_from_columns

    config = TrainingConfig()
    data = user_items_from_columns(store.interaction_columns(SHOP), dict(config.event_weights))
    sp.save_npz(path, confidence_matrix(data.matrix, config.alpha), compressed=False)
    users, items = data.matrix.shape
    return {"users": users, "items": items, "nonzeros": int(data.matrix.nnz),
            "settings": {"factors": config.factors, "regularization": config.regularization,
                         "iterations": config.iterations, "seed": config.seed}}


def measured(command: list[str], env: dict[str, str], cwd: Path, ok: tuple[int, ...] = (0,),
             timeout: float | None = None) -> dict:
    """`command` (JOB or FLOOR) run as a child: its wall time, and the peak RSS it reported (MiB). An exit status
    outside `ok` raises. Past `timeout` seconds the child is killed, as a function past its timeout is: then
    `killed` is true, and nothing it would have printed at its end is there (no peak, no stdout)."""
    started = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"seconds": round(time.perf_counter() - started, 3), "peak_mib": None, "stdout": "", "stderr": "",
                "killed": True}
    seconds = time.perf_counter() - started
    if done.returncode not in ok:
        raise RuntimeError(f"{' '.join(command[:4])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    peaks = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("PEAK_KIB ")]
    return {"seconds": round(seconds, 3), "peak_mib": round(int(peaks[-1]) / 1024, 1), "stdout": done.stdout,
            "stderr": done.stderr, "killed": False}


def job_outcome(stdout: str) -> tuple[str, dict]:
    """What the job printed: published, kept (the gate's reason) or skipped; and the model's shape if published."""
    result = json.loads(stdout)
    if result.get("failed"):
        return "failed: " + "; ".join(f["error"] for f in result["failed"]), {}
    if result["trained"]:
        return "published", {key: result["trained"][0][key] for key in ("users", "items", "events")}
    if result["kept"]:
        return "kept: " + result["kept"][0].get("reason", ""), {}
    return "skipped: " + "; ".join(s["reason"] for s in result["skipped"]), {}


def measure(events: int, users: int, items: int, rounds: int, postgres_url: str | None = None,
            code: Path = ROOT, work: Path | None = None, before: Path | None = None,
            arenas: int | None = None) -> dict:
    """`before`: another checkout whose job (with and without the gate) runs in each round too, beside `code`'s.
    `arenas`: `code`'s job also runs with MALLOC_ARENA_MAX set to it (glibc's malloc arenas, which it reads at a
    process's start) in each round, in turn with glibc's default."""
    from recommender.store import SQLiteEventStore

    if work is None:  # a scratch folder of its own, removed at the end (5M events take 2.5 GB in SQLite)
        with tempfile.TemporaryDirectory(prefix="train-job-probe-") as scratch:
            return measure(events, users, items, rounds, postgres_url, code, Path(scratch), before, arenas)
    work.mkdir(parents=True, exist_ok=True)
    if postgres_url:
        from recommender.store_postgres import PostgresEventStore

        store, store_url = PostgresEventStore(postgres_url), postgres_url
        store.redact_shop(SHOP)
    else:
        store_url = f"sqlite:///{work / 'events.sqlite3'}"
        store = SQLiteEventStore(work / "events.sqlite3")
    try:
        fill_s = fill(store, events, users, items)
        shape = save_floor_matrix(store, work / "confidence.npz")
        env = {**os.environ, "EVENT_STORE_URL": store_url, "LOG_LEVEL": "WARNING"}
        env.pop("TEST_POSTGRES_URL", None)
        env.pop("MALLOC_ARENA_MAX", None)  # glibc's default unless a mode sets it
        job = [sys.executable, "-c", JOB, "train", "--shop", SHOP]
        modes = {  # mode: (command, environment, checkout)
            "job": (job, {}, code),
            "job, no gate": (job, {"QUALITY_GATE": "false"}, code),
            **({"job (before)": (job, {}, before), "job, no gate (before)": (job, {"QUALITY_GATE": "false"}, before)}
               if before is not None else {}),
            **({f"job, MALLOC_ARENA_MAX={arenas}": (job, {"MALLOC_ARENA_MAX": str(arenas)}, code)}
               if arenas is not None else {}),
            "floor": ([sys.executable, "-c", FLOOR, str(work / "confidence.npz"), json.dumps(shape["settings"])], {},
                      code),
        }
        runs: dict[str, list[dict]] = {mode: [] for mode in modes}
        for round_ in range(rounds):
            for number, (mode, (command, extra, checkout)) in enumerate(modes.items()):
                models = work / f"models-{round_}-{number}"
                # the job exits 1 when it published nothing (the gate kept the current model) or a shop failed: its
                # report says which
                run = measured(command, {**env, **extra, "PYTHONPATH": str(checkout),
                                         "MODEL_STORE_URL": f"file://{models}"}, checkout,
                               ok=(0,) if mode == "floor" else (0, 1))
                run["outcome"], run["model"] = job_outcome(run["stdout"]) if mode != "floor" else ("fitted", {})
                runs[mode].append({key: run[key] for key in ("seconds", "peak_mib", "outcome", "model")})
                shutil.rmtree(models, ignore_errors=True)
                print(f"  round {round_ + 1} {mode}: {run['seconds']:.2f} s, peak {run['peak_mib']:.0f} MiB,"
                      f" {run['outcome'][:100]}", flush=True)
    finally:
        if postgres_url:
            store.redact_shop(SHOP)
        store.close()
    medians = {mode: {"seconds": statistics.median(r["seconds"] for r in found),
                      "peak_mib": statistics.median(r["peak_mib"] for r in found)} for mode, found in runs.items()}
    floor = medians["floor"]
    return {
        "events": events, "store": "postgresql" if postgres_url else "sqlite", "code": str(code),
        "before": None if before is None else str(before), "arenas": arenas,
        "fill_seconds": round(fill_s, 1), **{k: v for k, v in shape.items() if k != "settings"},
        "runs": runs, "medians": medians,
        "job_over_floor": {mode: {"seconds": round(m["seconds"] / floor["seconds"], 2),
                                  "peak": round(m["peak_mib"] / floor["peak_mib"], 2)}
                           for mode, m in medians.items() if mode != "floor"},
    }


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """--postgres, --code and --out, as this probe and bench.nightly_probe take them."""
    parser.add_argument("--postgres", action="store_true", help="store the events in TEST_POSTGRES_URL's database")
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout whose `python -m recommender` runs")
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")


def postgres_url(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """TEST_POSTGRES_URL with --postgres (a usage error without it), else None."""
    if not args.postgres:
        return None
    url = os.environ.get("TEST_POSTGRES_URL")
    if not url:
        parser.error("--postgres needs TEST_POSTGRES_URL")
    return url


def write_out(path: Path | None, result: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", type=Path,
                        help="another checkout whose job runs in each round too, in turn with --code's")
    parser.add_argument("--arenas", type=int,
                        help="the job also runs with MALLOC_ARENA_MAX set to this, in turn with glibc's default")
    add_job_arguments(parser)
    args = parser.parse_args(argv)
    url = postgres_url(parser, args)
    print(f"{args.events:,} events, {args.users:,} shoppers, {args.items:,} products; "
          f"{'PostgreSQL' if url else 'SQLite'}; the job of {args.code}", flush=True)
    result = measure(args.events, args.users, args.items, args.rounds, url, args.code.resolve(),
                     before=args.before.resolve() if args.before else None, arenas=args.arenas)
    print(f"stored in {result['fill_seconds']} s: {result['users']:,} shoppers × {result['items']:,} products, "
          f"{result['nonzeros']:,} nonzeros")
    for mode, m in result["medians"].items():
        against = result["job_over_floor"].get(mode)
        tail = f" ({against['seconds']}× the floor's time, {against['peak']}× its peak)" if against else ""
        print(f"{mode}: {m['seconds']:.2f} s, peak {m['peak_mib']:.0f} MiB at the median{tail}")
    write_out(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
