"""Fractional vCPUs: a 100k instance's cold start and answers under a CPU quota, beside the bare function's.

    python -m bench.vcpu_probe                                       # 0.167, 0.333, 0.583 and 1 vCPU, 5 starts each
    python -m bench.vcpu_probe --vcpus 0.167,1 --starts 7 --requests 200 --rate 10 --out DIR

Cloud Run functions give an instance of 256 MiB 0.167 vCPU unless the deployment asks for more, one of 512 MiB
0.333 and one of 1 GiB 0.583 (bench/cost.py), and below one vCPU an instance takes one request at a time.
`deploy/deploy.py` asks for 1 vCPU; this probe measures what the smaller shares cost a shopper. Every instance (ours
and the bare function, `synthetic.FLOOR_SOURCE`, each with THREADS=1) runs on one core inside a control group of its
own capped at the share (`process.CpuCap`: the kernel's CFS bandwidth control, `--period-ms` of 100 by default;
how Cloud Run enforces a share in its first-generation sandbox, and its start-up CPU boost, are not reproduced),
the probe on the other core.

Each start, in an order shuffled each round (`cold_start.start_order`), is timed from the spawn to the first 200;
then the instance answers `--requests` personalized requests at random moments, `--rate` a second on average
(a shop's shoppers, one at a time), and as many back to back (an instance kept busy). Reported per share: the
starts' medians, each side's latency percentiles over every start's requests, requests per second back to back,
CPU per request, and how often the quota held the instance. With `--out`, the figures as vcpu.json there.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench import cold_start, cost, process, synthetic
from bench.stats import latency_summary, median, ratio

CLOUD_RUN_SHARES = (0.167, 0.333, 0.583, 1.0)
VARIANTS = ("floor", "recommend")
ARRIVAL_SEED = 5


def _timed(session: requests.Session, url: str) -> float:
    started = time.perf_counter()
    response = session.get(url, timeout=120)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:300]}")
    return elapsed


def _paced(session: requests.Session, urls: list[str], rate: float, rng: random.Random) -> list[float]:
    """Each request at its moment of a Poisson arrival process of `rate` a second (at once if the one before it
    answered late); the time each took to answer."""
    latencies, due = [], time.perf_counter()
    for url in urls:
        due += rng.expovariate(rate)
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        latencies.append(_timed(session, url))
    return latencies


def one_instance(variant: str, cap: process.CpuCap, cores: list[int], shop: synthetic.ShopFiles, floor_source: Path,
                 log_dir: Path, count: int, rate: float, rng: random.Random) -> dict:
    """Spawn one instance of `variant` in `cap`, time its start, its paced requests and its back-to-back ones."""
    if variant == "floor":
        server = process.spawn("floor", floor_source, {}, log_dir, threads=1, cores=cores, cap=cap)
        paths = ["/"] * (2 * count + 1)
    else:
        server = process.spawn("recommend", process.ROOT / "main.py", shop.env(), log_dir, threads=1, cores=cores,
                               cap=cap)
        paths = ["/?" + shop.storefront_query("personalized", i) for i in range(2 * count + 1)]
    try:
        held_before = cap.throttling()
        startup = process.wait_until_serving(server, paths[0])
        start_cpu = process.cpu_seconds(server.pids())
        held_start = cap.throttling()
        with requests.Session() as session:
            paced = _paced(session, [server.base + path for path in paths[1:count + 1]], rate, rng)
            cpu_before, held_paced = process.cpu_seconds(server.pids()), cap.throttling()
            began = time.perf_counter()
            busy = [_timed(session, server.base + path) for path in paths[count + 1:]]
            wall = time.perf_counter() - began
            cpu_busy = process.cpu_seconds(server.pids()) - cpu_before
            held_busy = cap.throttling()
    finally:
        server.stop()
    return {
        "first_ok_s": startup.first_ok_s,
        "start_cpu_s": start_cpu,
        "start_throttled_ms": held_start["throttled_ms"] - held_before["throttled_ms"],
        "paced_s": paced,
        "paced_throttled": held_paced["throttled"] - held_start["throttled"],
        "busy_s": busy,
        "busy_per_s": len(busy) / wall,
        "busy_cpu_ms": 1e3 * cpu_busy / len(busy),
        "busy_throttled": held_busy["throttled"] - held_paced["throttled"],
        "busy_periods": held_busy["periods"] - held_paced["periods"],
    }


def tier_mib(share: float) -> int:
    """The memory tier below 2 GiB whose default vCPU is `share` (bench/cost.py), else the deployed `recommend`'s
    (`cost.deploy_tiers`: 1 vCPU at 512 MiB; Cloud Run gives 1 vCPU by default only from 2 GiB, but a function may
    ask for it)."""
    deployed_mib, _ = cost.deploy_tiers().get("recommend", (512, 1.0))
    return next((mib for mib, vcpu in cost.TIERS_MIB_VCPU if vcpu == share and mib < 2048), deployed_mib)


def summarize(starts: dict[str, list[dict]], share: float) -> dict:
    """Per variant: the median start, latency percentiles over every start's requests, the busy figures' medians;
    ours against the floor; and what a million of our requests cost at that share (`cost.per_million`, from the CPU
    each took back to back, on `tier_mib(share)`)."""
    out = {}
    for variant, runs in starts.items():
        out[variant] = {
            "first_ok_s": round(median([run["first_ok_s"] for run in runs]), 3),
            "first_ok_range_s": [round(min(run["first_ok_s"] for run in runs), 3),
                                 round(max(run["first_ok_s"] for run in runs), 3)],
            "start_cpu_s": round(median([run["start_cpu_s"] for run in runs]), 3),
            "start_throttled_ms": round(median([run["start_throttled_ms"] for run in runs]), 1),
            "paced": latency_summary([s for run in runs for s in run["paced_s"]]),
            "paced_throttled_periods": sum(run["paced_throttled"] for run in runs),
            "busy": latency_summary([s for run in runs for s in run["busy_s"]]),
            "busy_per_s": round(median([run["busy_per_s"] for run in runs]), 1),
            "busy_cpu_ms": round(median([run["busy_cpu_ms"] for run in runs]), 2),
            "busy_throttled_share": round(sum(run["busy_throttled"] for run in runs)
                                          / max(1, sum(run["busy_periods"] for run in runs)), 2),
        }
    ours, floor = out["recommend"], out["floor"]
    out["ratios"] = {"start": ratio(ours["first_ok_s"], floor["first_ok_s"]),
                     "start_cpu": ratio(ours["start_cpu_s"], floor["start_cpu_s"]),
                     "paced_p99": ratio(ours["paced"]["p99_ms"], floor["paced"]["p99_ms"]),
                     "busy_per_s": ratio(ours["busy_per_s"], floor["busy_per_s"])}
    out["cost"] = {"tier_mib": tier_mib(share), **cost.per_million(ours["busy_cpu_ms"], tier_mib(share), share)}
    return out


def table(results: dict[str, dict]) -> str:
    rows = ["| vCPU | cold start, ours (floor) | ours ÷ floor (its CPU) | paced p50 / p99, ours (floor) |"
            " periods held while paced, ours | back to back p50 / p99, ours | req/s back to back, ours (floor) |"
            " CPU per request, ours | periods held back to back, ours | $ per million, busy / isolated (tier) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for share, figures in results.items():
        ours, floor = figures["recommend"], figures["floor"]
        rows.append(
            f"| {share} | {ours['first_ok_s']:.3f} s ({floor['first_ok_s']:.3f}) | {figures['ratios']['start']}×"
            f" ({figures['ratios']['start_cpu']}×) |"
            f" {ours['paced']['p50_ms']:.1f} / {ours['paced']['p99_ms']:.1f} ms ({floor['paced']['p50_ms']:.1f} /"
            f" {floor['paced']['p99_ms']:.1f}) | {ours['paced_throttled_periods']} |"
            f" {ours['busy']['p50_ms']:.1f} / {ours['busy']['p99_ms']:.1f} ms |"
            f" {ours['busy_per_s']:.0f} ({floor['busy_per_s']:.0f}) | {ours['busy_cpu_ms']:.2f} ms |"
            f" {ours['busy_throttled_share']:.0%} | {figures['cost']['busy_usd_per_million']:.2f} /"
            f" {figures['cost']['isolated_usd_per_million']:.2f} ({figures['cost']['tier_mib']} MiB) |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vcpus", default=",".join(map(str, CLOUD_RUN_SHARES)),
                        help="the shares of one core to measure, comma-separated (Cloud Run's: 0.08 to 1)")
    parser.add_argument("--starts", type=int, default=5, help="starts of each variant per share")
    parser.add_argument("--requests", type=int, default=100, help="paced requests per start, and as many back to back")
    parser.add_argument("--rate", type=float, default=10.0, help="paced requests per second, on average")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--period-ms", type=float, default=100.0, help="the quota's period (the kernel's default)")
    parser.add_argument("--out", type=Path, default=None, help="write vcpu.json to this folder")
    args = parser.parse_args(argv)
    try:
        shares = [float(value) for value in args.vcpus.split(",")]
    except ValueError:
        parser.error(f"--vcpus: numbers separated by commas, not {args.vcpus!r}")
    if any(not 0.01 <= share <= 1 for share in shares):
        parser.error("--vcpus: each share between 0.01 and 1 (one core)")
    if args.starts < 1 or args.requests < 1 or args.rate <= 0:
        parser.error("--starts and --requests at least 1, --rate above 0")
    cores = process.first_cores(1)
    others = sorted(os.sched_getaffinity(0) - set(cores))
    try:  # refuse at once, before building anything, where no group can be made
        process.CpuCap.create(shares[0], round(args.period_ms * 1000)).remove()
    except process.CpuCapUnavailable as exc:
        raise SystemExit(f"bench.vcpu_probe needs a CPU-capped control group: {exc}") from None
    if others:  # the probe's polls and requests stay off the instance's core, as a shopper's come from elsewhere
        os.sched_setaffinity(0, others)

    work = Path(tempfile.mkdtemp(prefix="vcpu-probe-"))
    rng = random.Random(ARRIVAL_SEED)
    results: dict[str, dict] = {}
    try:
        artifact = synthetic.build_artifact(args.items)
        synthetic.publish_artifact(work / "models", artifact)
        shop = synthetic.prepare_shop(work / "shop", artifact, work / "models")
        floor_source = synthetic.write_floor_source(work / "floor")
        for share in shares:
            cap = process.CpuCap.create(share, round(args.period_ms * 1000))
            starts: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
            try:
                for variant in cold_start.start_order({variant: args.starts for variant in VARIANTS}):
                    starts[variant].append(one_instance(variant, cap, cores, shop, floor_source, work / "logs",
                                                        args.requests, args.rate, rng))
            finally:
                cap.remove()
            results[str(share)] = {**summarize(starts, share), "starts": starts}
            print(f"{share} vCPU done", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(results))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        settings = {key: value for key, value in vars(args).items() if key != "out"}
        (args.out / "vcpu.json").write_text(json.dumps({"settings": settings, "cores": cores, "results": results},
                                                       indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
