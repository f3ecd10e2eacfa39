"""Webhook ingest: signed `orders/create` deliveries through the real app, in process and over HTTP.

In process: functions-framework's `create_app(target="app").test_client()`, one delivery at a
time. Floor: the same rows committed with sqlite3 alone (same schema, WAL, synchronous=FULL,
one transaction per delivery) — what durability costs before any verification or parsing.
Over HTTP: functions-framework on loopback at concurrency 1 and 8, beside the floor function
answering the same POSTs, each level after an untimed warm-up of four deliveries per client from twice as
many clients: gunicorn's thread pool grows a thread only when every thread it has is busy, and each thread
opens its own store connection on its first delivery, so a warm-up at the level's own concurrency could leave
a thread to start (and connect, 40–120 ms with PostgreSQL) inside the timed batch (bench/PERFORMANCE.md).
Then three timed batches, each followed by the floor's, and p50/p99 over all their deliveries: at one batch of
500, a single stall of ~0.15 s that caught all eight clients (seen at one client too) set the p99 alone; each
batch's p99 and steal are kept. Every delivery is distinct (no duplicates), three order lines each.
PostgreSQL runs when TEST_POSTGRES_URL is set and the event store accepts it.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import requests

from bench import process
from bench.stats import CpuShares, latency_summary, ratio
from bench.synthetic import SECRET, SHOP, SignedDelivery, signed_orders, write_floor_source

MAIN = process.ROOT / "main.py"
SHOPIFY_DEADLINE_S = 5.0
WARMUP = 5  # deliveries before timing starts: the first opens the store (connection, schema check)
WARM_PER_CLIENT = 4  # untimed deliveries per client before each HTTP level, from twice the level's clients
BATCHES = 3  # timed batches per HTTP level, each followed by the floor's; p50/p99 over all of them


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _in_process(store_url: str, deliveries: list[SignedDelivery]) -> dict:
    from functions_framework import create_app

    with _environment({"SHOPIFY_API_SECRET": SECRET, "EVENT_STORE_URL": store_url}):
        client = create_app(target="app", source=str(MAIN)).test_client()
        latencies = []
        first_ms = None
        for delivery in deliveries[:WARMUP]:
            begin = time.perf_counter()
            client.post("/webhooks", data=delivery.body, headers=delivery.headers)
            first_ms = first_ms if first_ms is not None else round((time.perf_counter() - begin) * 1e3, 3)
        for delivery in deliveries[WARMUP:]:
            begin = time.perf_counter()
            response = client.post("/webhooks", data=delivery.body, headers=delivery.headers)
            latencies.append(time.perf_counter() - begin)
            if response.status_code != 200 or response.get_json()["status"] != "stored":
                raise RuntimeError(f"delivery not stored: {response.status_code} {response.get_data(as_text=True)}")
    total = sum(latencies)
    return {**latency_summary(latencies), "deliveries_per_s": round(len(latencies) / total, 1),
            "first_delivery_ms": first_ms}


def _sqlite_floor(path: Path, deliveries: list[SignedDelivery]) -> dict:
    """The same deliveries' rows, committed one transaction each with sqlite3 and no product code in the loop."""
    import json

    from recommender.store import SQLiteEventStore

    SQLiteEventStore(path).close()  # the product's schema, migrated
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    latencies = []
    for delivery in deliveries:
        order = json.loads(delivery.body)  # decoded outside the timed part: the floor is storage alone
        webhook_id = delivery.headers["X-Shopify-Webhook-Id"]
        rows = [(SHOP, "purchase", f"c:{order['customer']['id']}", str(order["customer"]["id"]), str(line["product_id"]),
                 str(line["variant_id"]), 1, 19.0, str(order["id"]), order["created_at"], "orders/create", webhook_id,
                 f"order:{order['id']}:line:{line['id']}") for line in order["line_items"]]
        begin = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT OR IGNORE INTO deliveries (shop, webhook_id, topic, event_id, received_at)"
                     " VALUES (?, ?, ?, ?, ?)", (SHOP, webhook_id, "orders/create", None, order["created_at"]))
        conn.executemany("INSERT INTO events (shop, kind, user_key, customer_id, product_id, variant_id, quantity,"
                         " price, order_id, occurred_at, source_topic, delivery_id, dedupe_key)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
        latencies.append(time.perf_counter() - begin)
    conn.close()
    return {**latency_summary(latencies), "deliveries_per_s": round(len(latencies) / sum(latencies), 1)}


def _over_http(store_url: str, deliveries: list[SignedDelivery], workdir: Path, concurrencies: tuple[int, ...],
               per_level: int, max_seconds: float) -> list[dict]:
    floor_source = write_floor_source(workdir / "floor")
    log_dir = workdir / "logs"
    ours = process.spawn("app", MAIN, {"SHOPIFY_API_SECRET": SECRET, "EVENT_STORE_URL": store_url}, log_dir)
    floor = process.spawn("floor", floor_source, {}, log_dir)
    levels = []
    try:
        process.wait_until_serving(ours, "/healthz")
        process.wait_until_serving(floor, "/")
        first_ms = None
        with requests.Session() as session:
            for delivery in deliveries[:WARMUP]:
                begin = time.perf_counter()
                session.post(ours.base + "/webhooks", data=delivery.body, headers=delivery.headers, timeout=60)
                first_ms = first_ms if first_ms is not None else round((time.perf_counter() - begin) * 1e3, 3)
                session.post(floor.base + "/", data=delivery.body, headers=delivery.headers, timeout=60)
        offset = WARMUP
        for concurrency in concurrencies:
            # Untimed, from twice this level's clients: every thread the pool will have at this level has
            # started and opened its store connection (once per instance) before the timed batch.
            warm = deliveries[offset: offset + WARM_PER_CLIENT * 2 * concurrency]
            offset += len(warm)
            for server, path in ((ours, "/webhooks"), (floor, "/")):
                process.run_load(server.port, lambda i, path=path: ("POST", path, warm[i].body, warm[i].headers),
                                 2 * concurrency, len(warm), max_seconds)
            batches = [deliveries[offset + k * per_level: offset + (k + 1) * per_level] for k in range(BATCHES)]
            offset += BATCHES * per_level
            ours_summary, floor_summary = _timed_batches(ours, floor, batches, concurrency, max_seconds)
            levels.append({"concurrency": concurrency, "ours": ours_summary, "floor": floor_summary,
                           "first_delivery_ms": first_ms,
                           "rate_vs_floor": ratio(ours_summary["deliveries_per_s"], floor_summary["deliveries_per_s"]),
                           "p99_vs_floor": ratio(ours_summary["p99_ms"], floor_summary["p99_ms"])})
        levels[-1]["memory_after_mib"] = process.instance_memory_mib(ours)
    finally:
        ours.stop()
        floor.stop()
    return levels


def _timed_batches(ours: process.Server, floor: process.Server, batches: list[list[SignedDelivery]], concurrency: int,
                   max_seconds: float) -> tuple[dict, dict]:
    """Each batch to ours, then the same to the floor, at `concurrency`: a stall falls on one batch, not all.

    Returns ours and the floor's p50/p99/max over every delivery of every batch, the rate, the worst batch's
    steal, and each batch's own figures (`batches`); ours also with the server's CPU per delivery.
    """
    pids = ours.pids()
    pooled = {"ours": process.LoadResult(), "floor": process.LoadResult()}
    per_batch: dict[str, list[dict]] = {"ours": [], "floor": []}
    cpu = 0.0
    for batch in batches:
        shares = CpuShares()
        shares.mark("ours")
        cpu_before = process.cpu_seconds(pids)
        mine = process.run_load(ours.port, lambda i: ("POST", "/webhooks", batch[i].body, batch[i].headers),
                                concurrency, len(batch), max_seconds)
        cpu += process.cpu_seconds(pids) - cpu_before
        shares.mark("floor")
        base = process.run_load(floor.port, lambda i: ("POST", "/", batch[i].body, batch[i].headers),
                                concurrency, len(batch), max_seconds)
        shares.mark("end")
        if not mine.latencies_s:
            raise RuntimeError(f"no delivery stored over HTTP: {mine.statuses}\n{ours.output()}")
        steal = shares.shares()
        for side, result in (("ours", mine), ("floor", base)):
            pooled[side].latencies_s += result.latencies_s
            pooled[side].errors += result.errors
            pooled[side].wall_s += result.wall_s
            per_batch[side].append({**latency_summary(result.latencies_s),
                                    "steal_pct": steal.get(side, {}).get("steal_pct")})
    summaries = {}
    for side, result in pooled.items():
        steals = [b["steal_pct"] for b in per_batch[side] if b["steal_pct"] is not None]
        summaries[side] = {**latency_summary(result.latencies_s), "errors": result.errors,
                           "deliveries_per_s": round(result.requests / result.wall_s, 1),
                           "steal_pct": max(steals) if steals else None, "batches": per_batch[side]}
    summaries["ours"]["server_cpu_ms_per_delivery"] = round(cpu / max(pooled["ours"].requests, 1) * 1e3, 3)
    return summaries["ours"], summaries["floor"]


def _http_count(concurrencies: tuple[int, ...], per_level: int) -> int:
    """Deliveries an HTTP run sends: the first few one by one, then per level a warm-up and the timed batches."""
    return WARMUP + sum(WARM_PER_CLIENT * 2 * c + BATCHES * per_level for c in concurrencies)


def measure(workdir: Path, in_process_count: int, http_concurrencies: tuple[int, ...], http_per_level: int,
            max_seconds: float, n_items: int = 10_000) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    first = 5_000_000_000_000
    in_process_batch = signed_orders(in_process_count + WARMUP, n_items, first, seed=3)
    floor_batch = signed_orders(in_process_count, n_items, first + 1_000_000, seed=4)
    http_batch = signed_orders(_http_count(http_concurrencies, http_per_level), n_items, first + 2_000_000, seed=5)
    sqlite_inproc = _in_process(f"sqlite:///{workdir / 'ingest-inproc.sqlite3'}", in_process_batch)
    sqlite_floor = _sqlite_floor(workdir / "ingest-floor.sqlite3", floor_batch)
    sqlite_http = _over_http(f"sqlite:///{workdir / 'ingest-http.sqlite3'}", http_batch, workdir, http_concurrencies,
                             http_per_level, max_seconds)
    result = {
        "topic": "orders/create", "lines_per_delivery": 3, "shopify_deadline_s": SHOPIFY_DEADLINE_S,
        "sqlite": {
            "in_process": {**sqlite_inproc, "p99_vs_storage_floor": ratio(sqlite_inproc["p99_ms"], sqlite_floor["p99_ms"]),
                           "rate_vs_storage_floor": ratio(sqlite_inproc["deliveries_per_s"],
                                                          sqlite_floor["deliveries_per_s"])},
            "storage_floor": sqlite_floor,
            "http": sqlite_http,
        },
        "postgresql": postgres(workdir, in_process_count, http_concurrencies, http_per_level, max_seconds, n_items),
    }
    return result


def postgres(workdir: Path, count: int, concurrencies: tuple[int, ...], per_level: int, max_seconds: float,
             n_items: int) -> dict:
    """The same in-process and HTTP runs against TEST_POSTGRES_URL, when set and supported; else why not."""
    url = os.environ.get("TEST_POSTGRES_URL")
    if not url:
        return {"skipped": "TEST_POSTGRES_URL is not set"}
    from recommender.errors import RecommenderError
    from recommender.settings import Settings
    from recommender.store import open_event_store

    try:
        Settings.from_mapping({"EVENT_STORE_URL": url})
        open_event_store(url).close()
    except (RecommenderError, ImportError) as exc:
        return {"skipped": f"the event store does not accept {url.split('@')[-1]!r} yet: {exc}"}
    shop = f"bench-{uuid.uuid4().hex[:12]}.myshopify.com"  # a shop of its own in a shared database
    first = 6_000_000_000_000
    inproc = _in_process(url, signed_orders(count + WARMUP, n_items, first, seed=6, shop=shop))
    http = _over_http(url, signed_orders(_http_count(concurrencies, per_level), n_items, first + 1_000_000, seed=7,
                                         shop=shop),
                      workdir, concurrencies, per_level, max_seconds)
    return {"in_process": inproc, "http": http, "shop": shop}
