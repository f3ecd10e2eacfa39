"""Cold start, many interleaved starts of a few variants: is the bytecode or PRELOAD_SHOPS worth it here?

    python -m bench.cold_probe --starts 13            # floor, lazy, PRELOAD_SHOPS (bytecode present)
    python -m bench.cold_probe --starts 9 --bytecode  # floor, lazy with bytecode, lazy compiling from source
    python -m bench.cold_probe --starts 9 --gcs       # floor, lazy from a folder, lazy and PRELOAD_SHOPS from gs://
    python -m bench.cold_probe --starts 9 --gcs --rtt-ms 20   # the same, each request to the emulator 20 ms longer
    python -m bench.cold_probe --starts 11 --prime-mib 256    # every start finds 256 MiB freed a moment ago
    python -m bench.cold_probe --starts 11 --idle-s 3         # every start finds memory the hypervisor took back
    python -m bench.cold_probe --starts 11 --timeline         # and each step of every start, timed inside its processes
    python -m bench.cold_probe --starts 11 --postgres [--rtt-ms 2]   # the shoppers' events in PostgreSQL (TEST_POSTGRES_URL)
    python -m bench.cold_probe --starts 13 --cpus 1          # every instance on one core, as a 1-vCPU instance runs

`--gcs` publishes the model to Cloud Storage as deployed instances find it (gs://, here gcp-storage-emulator
on loopback, an in-memory Python server; a real bucket's distance and speed are not measured here).
`--postgres` writes the shoppers' events to the PostgreSQL event store at TEST_POSTGRES_URL, as deployed instances
read them, and starts instances on it beside the SQLite ones (`--rtt-ms`: through a relay that far away).
`--cpus 1` runs every instance, the floors as ours, on one core (its processes' affinity, set before Python
starts), as a Cloud Run instance of one vCPU runs, and this probe on the other: the benchmark's own starts use
both cores, where our model's load decodes on two threads.

Each round starts every variant once, in an order shuffled each round (`cold_start.start_order`), so the
machine's noise falls on all of them alike;
prints the median spawn → first 200 of each and its ratio to the floor. Two floors: the bare function as it
starts by default, and with one BLAS thread, as `main.py` starts ours (bench/cold_start.py). A 100k-item
model, as in `bench.perf`. Deletes and rewrites the project's __pycache__ folders (git ignores them).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import cold_start, latency, process, start_timeline, synthetic
from recommender.model_store import open_model_store


def _compile() -> None:
    subprocess.run([sys.executable, "-m", "compileall", "-q", "--invalidation-mode", "checked-hash",
                    "main.py", "recommender", "webhooks"], cwd=process.ROOT, check=True)


def _remove_bytecode() -> None:
    for name in ("__pycache__", "recommender/__pycache__", "webhooks/__pycache__"):
        shutil.rmtree(process.ROOT / name, ignore_errors=True)


def _before_start(prime_mib: int, idle_s: float) -> None:
    """The same memory state before every start: `prime_mib` MiB touched and freed, then `idle_s` seconds of rest."""
    if prime_mib:
        scratch = bytearray(prime_mib << 20)
        for offset in range(0, len(scratch), 4096):  # one byte a page: every page becomes the process's own
            scratch[offset] = 1
        del scratch
    if idle_s:
        time.sleep(idle_s)


def _postgres_events(shop: synthetic.ShopFiles, rtt_ms: float, log_dir: Path, stack: contextlib.ExitStack) -> str:
    """The shop's shoppers written to the PostgreSQL event store at TEST_POSTGRES_URL (`latency.shoppers_written_to`)
    and the URL instances read them from: that one, or through a relay `rtt_ms` away (PostgreSQL on loopback only).
    `stack` closes what this opens."""
    from recommender.store import open_event_store

    url = os.environ["TEST_POSTGRES_URL"]
    store = stack.enter_context(contextlib.closing(open_event_store(url)))
    stack.enter_context(latency.shoppers_written_to(store, shop))
    return process.relayed_postgres_url(url, rtt_ms, log_dir, stack)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=13, help="starts per variant")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--bytecode", action="store_true", help="compare with and without bytecode instead")
    parser.add_argument("--gcs", action="store_true", help="also load the model from gs:// (an emulator on loopback)")
    parser.add_argument("--rtt-ms", type=float, default=0.0,
                        help="with --gcs or --postgres: add this round trip to every request to the emulator or to"
                             " PostgreSQL (bench/latency_proxy.py)")
    parser.add_argument("--postgres", action="store_true",
                        help="also start instances whose events are in PostgreSQL (TEST_POSTGRES_URL)")
    parser.add_argument("--prime-mib", type=int, default=0,
                        help="before every start, touch and free this much memory here, so that every start finds"
                             " that much memory freed a moment ago")
    parser.add_argument("--idle-s", type=float, default=0.0,
                        help="before every start, wait this long, so that the memory freed before it has gone back"
                             " to the hypervisor (about 2 s on these VMs)")
    parser.add_argument("--timeline", action="store_true",
                        help="start every instance through bench.start_timeline and report the medians of its steps")
    parser.add_argument("--cpus", type=int, default=None,
                        help="run every instance (the floors too) on this many cores, as an instance of that many"
                             " vCPUs runs; this probe, which polls and asks, then runs on the other cores")
    args = parser.parse_args(argv)
    if args.timeline and time.get_clock_info("perf_counter").implementation != "clock_gettime(CLOCK_MONOTONIC)":
        parser.error("--timeline needs time.perf_counter to be CLOCK_MONOTONIC, one clock for every process (Linux)")
    if args.postgres and not os.environ.get("TEST_POSTGRES_URL"):
        parser.error("--postgres needs TEST_POSTGRES_URL (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    if args.postgres and (args.gcs or args.bytecode):
        parser.error("--postgres goes with neither --gcs nor --bytecode")
    cores = None
    if args.cpus is not None:
        try:
            cores = process.first_cores(args.cpus)
        except ValueError as exc:
            parser.error(f"--cpus: {exc}")
        others = sorted(os.sched_getaffinity(0) - set(cores))
        if others:  # the client's polls and requests stay off the instance's cores, as a shopper's come from elsewhere
            os.sched_setaffinity(0, others)
        print(f"instances on cores {cores}; this probe on {others or cores}")

    work = Path(tempfile.mkdtemp(prefix="cold-probe-"))
    artifact = synthetic.build_artifact(args.items)
    synthetic.publish_artifact(work / "models", artifact)
    shop = synthetic.prepare_shop(work / "shop", artifact, work / "models")
    floor_source = synthetic.write_floor_source(work / "floor")
    variants = (("lazy, bytecode", True, {}), ("lazy, compiling", False, {})) if args.bytecode else (
        ("lazy", True, {}), ("PRELOAD_SHOPS", True, {"PRELOAD_SHOPS": synthetic.SHOP}))
    emulator = None
    stack = contextlib.ExitStack()  # the PostgreSQL store, its shoppers' rows and a relay, closed at the end
    if args.postgres:
        try:
            url = _postgres_events(shop, args.rtt_ms, work / "logs", stack)
        except BaseException:
            stack.close()
            raise
        variants = (("lazy", True, {}), ("PostgreSQL lazy", True, {"EVENT_STORE_URL": url}),
                    ("PostgreSQL PRELOAD_SHOPS", True, {"EVENT_STORE_URL": url, "PRELOAD_SHOPS": synthetic.SHOP}))
    if args.gcs:
        emulator, gcs = process.start_storage_emulator(work / "logs", rtt_ms=args.rtt_ms)
        variants = (("lazy", True, {}), ("gs:// lazy", True, gcs),
                    ("gs:// PRELOAD_SHOPS", True, {**gcs, "PRELOAD_SHOPS": synthetic.SHOP}))
        os.environ["STORAGE_EMULATOR_HOST"] = gcs["STORAGE_EMULATOR_HOST"]  # for the publisher's client library
        open_model_store(gcs["MODEL_STORE_URL"]).publish(synthetic.SHOP, artifact)
    floors = {"floor": {}, cold_start.PINNED_FLOOR: dict(cold_start.PINNED)}
    by_label = {label: (bytecode, extra) for label, bytecode, extra in variants}
    seconds: dict[str, list[float]] = {label: [] for label in [*floors, *by_label]}
    steps: dict[str, list[dict[str, float]]] = {label: [] for label in seconds}
    have_bytecode = None
    try:
        for label in cold_start.start_order({label: args.starts for label in seconds}):
            bytecode, extra = by_label.get(label, (have_bytecode, {}))
            if bytecode != have_bytecode:  # before the memory is set: compiling is a process of its own
                _compile() if bytecode else _remove_bytecode()
                have_bytecode = bytecode
            _before_start(args.prime_mib, args.idle_s)
            if label in floors:
                server = process.spawn("floor", floor_source, floors[label], work / "logs", timeline=args.timeline,
                                       cores=cores)
                path = "/"
            else:
                server = process.spawn("recommend", process.ROOT / "main.py", shop.env(**extra), work / "logs",
                                       timeline=args.timeline, cores=cores)
                path = "/?" + shop.storefront_query("personalized", 0)
            try:
                startup = process.wait_until_serving(server, path)
                seconds[label].append(startup.first_ok_s)
            finally:
                server.stop()
            if args.timeline:
                steps[label].append(process.start_steps(server, startup))
    finally:
        _compile()
        if emulator is not None:
            emulator.stop()
        stack.close()
        shutil.rmtree(work, ignore_errors=True)
    floor = statistics.median(seconds["floor"])
    for label, values in seconds.items():
        median = statistics.median(values)
        print(f"{label:22s} median {median:.3f} s  {median / floor:.2f}× floor  samples {[round(v, 3) for v in values]}")
    if args.timeline:
        at = {label: start_timeline.medians(starts) for label, starts in steps.items()}
        print("Milliseconds from the spawn to each step (medians):\n\n" + start_timeline.table(at)
              + "\n\nEach step's time after the step before it, from the medians above (listening is when the client's"
              " poll first connected):\n\n" + start_timeline.table(at, gaps=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
