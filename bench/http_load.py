"""Recommendations over HTTP on loopback: functions-framework's gunicorn (`--target app`) against the floor function.

functions-framework runs gunicorn with WORKERS (default 1) processes of THREADS (default
4 × cpu_count) threads each; both servers here get the same settings. The client is Python
threads with one requests.Session each, on the same two cores as the server, so the figures
are a lower bound on what the server alone could do; the floor shares every one of those costs.
Every level is bounded by a request count and a time limit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from bench import process
from bench.stats import latency_summary, ratio
from bench.synthetic import ShopFiles, write_floor_source

MAIN = process.ROOT / "main.py"


def default_threads() -> int:
    """What functions-framework gives gunicorn when THREADS is unset."""
    return int(os.environ.get("THREADS", (os.cpu_count() or 1) * 4))


def _level(server: process.Server, path: Callable[[int], str], concurrency: int, max_requests: int,
           max_seconds: float) -> dict:
    pids = server.pids()
    cpu_before = process.cpu_seconds(pids)
    result = process.run_load(server.port, lambda i: ("GET", path(i), None, {}), concurrency, max_requests,
                              max_seconds)
    cpu = process.cpu_seconds(pids) - cpu_before
    if not result.latencies_s:
        raise RuntimeError(f"no successful request at concurrency {concurrency}: {result.statuses}\n{server.output()}")
    return {**latency_summary(result.latencies_s), "concurrency": concurrency, "errors": result.errors,
            "rps": round(result.requests / result.wall_s, 1), "server_cpu_s": round(cpu, 3),
            "server_cpu_ms_per_request": round(cpu / max(result.requests, 1) * 1e3, 3)}


SERVER_VARIANTS = (
    ("OPENBLAS_NUM_THREADS unset: main.py's default, 1, as deploy/deploy.py also sets it", {}),
    ("OPENBLAS_NUM_THREADS=2: OpenBLAS's own pool on both cores", {"OPENBLAS_NUM_THREADS": "2"}),
)


def measure(shop: ShopFiles, workdir: Path, concurrencies: tuple[int, ...], max_requests: int, max_seconds: float,
            threads: int | None = None) -> dict:
    """Personalized requests (the shoppers in turn, signed as the app proxy signs them) at each concurrency,
    for each server variant; the floor is measured right after ours at every level."""
    floor_source = write_floor_source(workdir / "floor")
    log_dir = workdir / "logs"

    def path(i: int) -> str:  # signed per request, as Shopify's app proxy forwards it
        return "/recommend?" + shop.storefront_query("personalized", i)

    def floor_path(_: int) -> str:
        return "/"

    floor = process.spawn("floor", floor_source, {}, log_dir, threads=threads)
    runs = []
    try:
        process.wait_until_serving(floor, "/")
        # Warm-up from twice as many clients as the pool has threads: gunicorn's pool grows a thread only when
        # every thread it has is busy, and each thread opens its own store connection on its first request.
        pool = threads or default_threads()
        warm_clients, warm = 2 * pool, min(4 * 2 * pool, max_requests)
        _level(floor, floor_path, warm_clients, warm, max_seconds)
        for label, server_env in SERVER_VARIANTS:
            ours = process.spawn("app", MAIN, shop.env(**server_env), log_dir, threads=threads)
            try:
                process.wait_until_serving(ours, path(0))
                _level(ours, path, warm_clients, warm, max_seconds)  # the model, caches, every thread's connection
                levels = []
                for concurrency in concurrencies:
                    mine = _level(ours, path, concurrency, max_requests, max_seconds)
                    base = _level(floor, floor_path, concurrency, max_requests, max_seconds)
                    levels.append({"concurrency": concurrency, "ours": mine, "floor": base,
                                   "rps_vs_floor": ratio(mine["rps"], base["rps"]),
                                   "p99_vs_floor": ratio(mine["p99_ms"], base["p99_ms"])})
                runs.append({"label": label, "server_env": server_env, "levels": levels,
                             "memory_after_mib": process.instance_memory_mib(ours)})
            finally:
                ours.stop()
    finally:
        floor.stop()
    return {"items": shop.n_items, "intent": "personalized", "gunicorn_workers": int(os.environ.get("WORKERS", 1)),
            "gunicorn_threads": threads or default_threads(), "runs": runs,
            "bounds": {"max_requests": max_requests, "max_seconds": max_seconds}}
