"""A night of the training job for an app installed in many shops, with the models in Cloud Storage.

    python -m bench.nightly_probe                                    # 100 shops of 3,000 events, SQLite, gs:// 20 ms away
    TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test python -m bench.nightly_probe --postgres
    python -m bench.nightly_probe --shops 300 --nights 2 --rtt-ms 0
    python -m bench.nightly_probe --code /path/to/another/checkout          # the same probe, another version's job
    python -m bench.nightly_probe --nights 4 --timeout 40                   # nights longer than the function's timeout
    python -m bench.nightly_probe --runs 2                                  # two jobs at once each night

The `train` function runs `python -m recommender train` once a night: the installed shops one after another, started
longest ago first, in one request with a 30-minute timeout, starting no shop past its time budget. How many shops a
night holds is set by what one shop costs, and for the small shops most installs are, that is mostly waiting on the
model store: each request to Cloud Storage takes a round
trip, which `bench.train_job_probe` (one big shop, models on local disk) does not show.

The probe fills --shops shops of --events events each (shoppers in tastes of their own, as bench.train_job_probe
makes them, so the quality gate judges and publishes), marks them installed, and starts gcp-storage-emulator behind
a relay adding --rtt-ms to each request (bench/latency_proxy.py). The job runs a first night (night 0: each shop's
first model and run log), after which each shop's folder gets --history more run logs, copies of that first one: what
it holds after that many nights. Then the job runs --nights more times in a row. Each night runs in a process of its
own, and for each the probe prints its wall time, its peak RSS, what became of the shops, and the requests the model
store answered (the emulator's own log), per shop; and how many such shops the deployed function's 25-minute time
budget (TRAIN_BUDGET_SECONDS, 5/6 of its 30-minute timeout) would hold at that pace. With --postgres the database
must hold no other installed shop (the job trains every installed shop).

With --timeout the nights after the first hold fewer shops than are installed, as a night of the deployed function
does once an app has more shops than its timeout holds: each is killed at --timeout seconds and given the time
budget deploy/deploy.py derives from that timeout (TRAIN_BUDGET_SECONDS, 5/6 of it). The shops a night got to are
read from their run logs, and the probe reports how many nights each shop has waited since it was last trained.

With --runs N each night after the first starts N jobs at once, as when a run started by hand (or the next
scheduled one, while a timed-out run goes on) meets the scheduled one: the probe counts each shop's run logs of the
night, so a shop trained by two of them counts twice (`trainings`, `shops_trained_twice`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from datetime import datetime, timezone

from bench import process
from bench.train_job_probe import JOB, add_job_arguments, measured, postgres_url, write_out
from deploy.deploy import TRAIN_BUDGET_SHARE

TIMEOUT_SECONDS = 30 * 60  # the deployed `train` function's
BUDGET_SECONDS = TIMEOUT_SECONDS * TRAIN_BUDGET_SHARE  # the time it starts shops in (TRAIN_BUDGET_SECONDS, 1500)


def shop_name(index: int) -> str:
    return f"nightly-probe-{index:05d}.myshopify.com"


def requests_logged(log: Path) -> list[str]:
    """The request lines gcp-storage-emulator has logged so far (`"GET /storage/v1/... HTTP/1.1" 200 -`)."""
    return [line for line in log.read_text().splitlines() if line.startswith('"') and " HTTP/" in line]


OUTCOMES = ("trained", "kept", "skipped", "failed", "deferred", "other_runs")


def night_outcome(stdout: str) -> dict[str, int]:
    """What the job printed, counted (a job without a time budget prints no `deferred`, one before round 35 no
    `other_runs`); nothing if it was killed."""
    if not stdout:
        return {}
    result = json.loads(stdout)
    return {key: len(result.get(key, ())) for key in OUTCOMES}


def nights_outcome(stdouts: list[str]) -> dict[str, int]:
    """`night_outcome` of a night's jobs, added up."""
    total: dict[str, int] = {}
    for stdout in stdouts:
        for key, count in night_outcome(stdout).items():
            total[key] = total.get(key, 0) + count
    return total


def measured_at_once(command: list[str], env: dict[str, str], code: Path, runs: int,
                     timeout: float | None) -> list[dict]:
    """`runs` jobs started together, each `measured` (a scheduled run and one started by hand, say)."""
    with ThreadPoolExecutor(max_workers=runs) as pool:
        return list(pool.map(lambda _: measured(command, env, code, ok=(0, 1), timeout=timeout), range(runs)))


def trainings_since(endpoint: str, shops: list[str], since: datetime, runs: int = 1) -> dict[str, int]:
    """How many of each shop's newest `runs` run logs, read through `endpoint`, are of a run started at `since` or
    later: the shops a night got to (and how often, with `runs` jobs at once), whatever became of its jobs
    afterwards (a job killed at its timeout prints nothing). Shops not trained are left out."""
    from recommender.model_store import open_model_store

    with process.emulator_host(endpoint):
        store = open_model_store(f"gs://{process.STORAGE_BUCKET}/models")
        counts = {shop: sum(1 for log in store.runs(shop, limit=runs)
                            if datetime.fromisoformat(log["started_at"]) >= since) for shop in shops}
    return {shop: count for shop, count in counts.items() if count}


def waiting_nights(trained_by_night: list[list[str]], shops: list[str]) -> dict[str, int]:
    """After the last night, how many nights each shop has gone untrained since it last was (0: trained the last
    night), the first night training every shop."""
    last = {shop: night for night, trained in enumerate(trained_by_night) for shop in trained}
    final = len(trained_by_night) - 1
    return {shop: final - last.get(shop, 0) for shop in shops}


def write_history(endpoint: str, shops: list[str], copies: int) -> None:
    """`copies` more run logs per shop, each the shop's newest log again, written through `endpoint` (shops the first
    night left no log are left as they are)."""
    from recommender.model_store import open_model_store

    with process.emulator_host(endpoint):
        store = open_model_store(f"gs://{process.STORAGE_BUCKET}/models")

        for shop in shops:  # one at a time: the emulator, one server thread, let connections wait past their timeout
            for newest in store.runs(shop, limit=1):
                for _ in range(copies):
                    store.record_run(shop, newest)


# The probe's own writes to the event store, made by the checkout whose job runs (`code`): the schema they leave is
# one that checkout's job opens (a newer checkout's store migrates the schema past what an older job knows).
# Needs the checkout's bench.train_job_probe.fill(store, events, users, items, shop=, seed=).
EVENTS_OF_CODE = """
import json, sys, time
from bench.train_job_probe import fill
from recommender.store import open_event_store
command, url, names, events, users, items = json.loads(sys.argv[1])
store = open_event_store(url)
started = time.perf_counter()
for index, shop in enumerate(names):
    store.redact_shop(shop)
    if command == "fill":
        fill(store, events, users, items, shop=shop, seed=index)
        store.set_shop_installed(shop, True)
print(json.dumps({"seconds": round(time.perf_counter() - started, 1), "installed": store.installed_shops()}))
store.close()
"""


def events_of(code: Path, store_url: str, command: str, names: list[str], events: int = 0, users: int = 0,
              items: int = 0) -> dict:
    """`fill` (each shop emptied, filled and installed) or `redact` the probe's shops, by `code`'s own store."""
    done = subprocess.run([sys.executable, "-c", EVENTS_OF_CODE, json.dumps([command, store_url, names, events, users,
                                                                             items])],
                          cwd=code, env={**os.environ, "PYTHONPATH": str(code)}, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the probe's {command} with the store of {code} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def measure(shops: int, events: int, users: int, items: int, nights: int, history: int, rtt_ms: float,
            postgres_url: str | None, code: Path, work: Path, timeout: float | None = None, runs: int = 1) -> dict:
    """`timeout`: the nights after the first are killed at that many seconds, as the `train` function is at its
    timeout, and run with the time budget deploy/deploy.py sets for it (a job that has none ignores it). `runs`:
    the nights after the first start that many jobs at once."""
    names = [shop_name(i) for i in range(shops)]
    store_url = postgres_url or f"sqlite:///{work / 'events.sqlite3'}"
    emulator = None
    try:
        prepared = events_of(code, store_url, "fill", names, events, users, items)
        fill_seconds = prepared["seconds"]
        others = sorted(set(prepared["installed"]) - set(names))
        if others:  # the job trains every installed shop: the figures a shop would count them too
            raise SystemExit(f"the event store holds {len(others)} other installed shops ({', '.join(others[:3])}, ...):"
                             " use a database of the probe's own")
        emulator, gcs_env = process.start_storage_emulator(work / "logs", rtt_ms=rtt_ms)
        log = next((work / "logs").glob("storage-emulator-*.log"))
        env = {**os.environ, **gcs_env, "EVENT_STORE_URL": store_url, "PYTHONPATH": str(code), "LOG_LEVEL": "WARNING",
               "RETENTION_DAYS": "0"}  # nothing pruned: the probe's events are up to 300 days old
        env.pop("TEST_POSTGRES_URL", None)
        command = [sys.executable, "-c", JOB, "train"]
        nights_run, trained_by_night = [], []
        for night in range(nights + 1):  # night 0 publishes each shop's first model and leaves its first log
            before = len(requests_logged(log))
            started_at = datetime.now(timezone.utc)
            budget = "0" if night == 0 or timeout is None else f"{timeout * TRAIN_BUDGET_SHARE:.3f}"
            jobs = measured_at_once(command, {**env, "TRAIN_BUDGET_SECONDS": budget}, code, 1 if night == 0 else runs,
                                    None if night == 0 else timeout)
            counted = requests_logged(log)[before:]
            trainings = trainings_since(gcs_env["STORAGE_EMULATOR_HOST"], names, started_at, runs)
            trained_by_night.append(list(trainings))
            outcome = nights_outcome([job["stdout"] for job in jobs])
            handled = (sum(n for key, n in outcome.items() if key not in ("deferred", "other_runs"))
                       or sum(trainings.values()))
            peaks = [job["peak_mib"] for job in jobs if job["peak_mib"] is not None]
            seconds = max(job["seconds"] for job in jobs)  # the night's: its longest job's wall time
            entry = {"night": night, "seconds": seconds,
                     "killed": any(job["killed"] for job in jobs), "peak_mib": max(peaks) if peaks else None,
                     **outcome, "shops_trained": len(trainings), "trainings": sum(trainings.values()),
                     "shops_trained_twice": sum(1 for count in trainings.values() if count > 1),
                     "requests": len(counted),
                     "requests_per_shop": round(len(counted) / handled, 1) if handled else None,
                     "seconds_per_shop": round(seconds / handled, 4) if handled else None,
                     "downloads": sum(1 for line in counted if "alt=media" in line),
                     "uploads": sum(1 for line in counted if line.startswith('"POST /upload')),
                     "shops_in_budget": int(BUDGET_SECONDS / (seconds / handled)) if handled else None}
            nights_run.append(entry)
            ended = (f"killed at {timeout:g} s" if entry["killed"] else
                     f"peak {entry['peak_mib']:.0f} MiB, {outcome}")
            twice = f" ({entry['trainings']} trainings, {entry['shops_trained_twice']} shops twice)" if runs > 1 else ""
            print(f"  night {night}: {entry['seconds']:.1f} s, {ended}, {entry['shops_trained']} shops trained{twice}, "
                  f"{entry['requests']} requests ({entry['requests_per_shop']} a shop: {entry['downloads']} downloads,"
                  f" {entry['uploads']} uploads) -> {entry['shops_in_budget']} such shops in the "
                  f"{BUDGET_SECONDS / 60:g}-minute budget", flush=True)
            if night == 0 and history:  # through the relay: the emulator keeps the address an object was written
                # through in its media link, which later downloads follow (written around it, they skipped the relay)
                write_history(gcs_env["STORAGE_EMULATOR_HOST"], names, history)
    finally:
        if emulator is not None:
            emulator.stop()
        if postgres_url:
            events_of(code, store_url, "redact", names)
    waiting = waiting_nights(trained_by_night, names)
    return {"shops": shops, "events_per_shop": events, "store": "postgresql" if postgres_url else "sqlite",
            "rtt_ms": rtt_ms, "history": history, "code": str(code), "fill_seconds": round(fill_seconds, 1),
            "timeout": timeout, "runs_at_once": runs, "nights": nights_run, "most_nights_waiting": max(waiting.values()),
            "shops_untrained_since_night_0": sum(1 for nights_waiting in waiting.values() if nights_waiting == nights
                                                 and nights > 0)}


def positive_count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"a whole number >= 1, got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"a number of seconds > 0, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shops", type=int, default=100)
    parser.add_argument("--events", type=int, default=3_000, help="events per shop")
    parser.add_argument("--users", type=int, default=300, help="shoppers per shop")
    parser.add_argument("--items", type=int, default=400, help="products per shop")
    parser.add_argument("--nights", type=int, default=2, help="nights measured after the first")
    parser.add_argument("--history", type=int, default=49,
                        help="run logs each shop's folder holds before the nights measured, besides the first night's")
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="added to each request to the model store")
    parser.add_argument("--timeout", type=positive_seconds,
                        help="kill each night after the first at this many seconds, as the function's timeout does, "
                             "and give it the time budget deploy.py derives from that timeout")
    parser.add_argument("--runs", type=positive_count, default=1,
                        help="jobs started at once each night after the first (a scheduled run and one by hand)")
    add_job_arguments(parser)
    args = parser.parse_args(argv)
    url = postgres_url(parser, args)
    print(f"{args.shops} shops of {args.events:,} events ({args.users} shoppers, {args.items} products); "
          f"{'PostgreSQL' if url else 'SQLite'}; models in gs:// {args.rtt_ms:g} ms away, {args.history} run logs "
          f"a shop after the first night; the job of {args.code}", flush=True)
    with tempfile.TemporaryDirectory(prefix="nightly-probe-") as scratch:
        result = measure(args.shops, args.events, args.users, args.items, args.nights, args.history, args.rtt_ms,
                         url, args.code.resolve(), Path(scratch), args.timeout, args.runs)
    if args.timeout:
        print(f"after {args.nights} nights of {args.timeout:g} s: shops trained each night "
              f"{[night['shops_trained'] for night in result['nights'][1:]]}, "
              f"{result['shops_untrained_since_night_0']} shops untrained since night 0, "
              f"the longest wait {result['most_nights_waiting']} nights", flush=True)
    write_out(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
