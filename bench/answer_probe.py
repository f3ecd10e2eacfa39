"""What a storefront's answer waits for with the events in PostgreSQL: each kind of answer, its round trips to
the store counted on the wire and timed with the store on loopback and farther away.

    python -m bench.answer_probe [--answers 40] [--rtt-ms 2.5] [--items 10000] [--http] [--out DIR]

A synthetic model of --items products (`bench.synthetic`), its shoppers' events written to PostgreSQL
(TEST_POSTGRES_URL, the shop installed there: `bench.latency.shoppers_written_to`), and the instance's
`Runtime` in this process, as `main.py` makes it, on that store. The kinds of answer:

- a new instance's first answer (related): the store's connection opened, the schema found current, the shop
  checked, the catalog's snapshot taken and the answer's cards read; a new `Runtime` for each;
- related, a product asked about for the first time on the instance, and again (the answer cache);
- trending again (the answer cache; its first answer reads the shop's recent activity);
- personalized, a shopper's first answer on the instance (their history with the shop check, then the cards the
  instance has not read), and their next one;
- related and personalized, a quiet shop's: answers for a shop asked too seldom for the instance to hold anything
  of it (its shop check, its catalog's snapshot and its cards all due: an instance with ANSWER_CACHE_SECONDS and
  CATALOG_TTL_SECONDS at 0).

Round trips are counted through `bench.round_trips.RoundTripCounter` (three answers a kind); times are medians of
--answers answers a kind, with --rtt-ms added to each round trip through bench/latency_proxy.py (the way to Cloud
SQL, emulated), beside the floor: a `SELECT 1` over a connection the same distance away. With --http, the warm
kinds are also asked as the storefront asks them (signed as Shopify's app proxy signs them, one at a time) of
`main.py` under functions-framework, a process of its own on the farthest store, beside the floor: the same
requests answered by a bare function in the same framework; that instance runs with its defaults, as deployed (its
catalog snapshot and trending list re-read every 30 s and 300 s, where the in-process instance holds them).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, ContextManager
from urllib.parse import urlsplit

from bench import process
from bench.round_trips import (
    RoundTripCounter, add_distance_argument, http_lines, print_and_write, select_one_ms, summary,
)

KINDS = ("a new instance's first answer", "related, first time", "related, again", "trending, again",
         "personalized, a shopper's first", "personalized, again", "related, a quiet shop's",
         "personalized, a quiet shop's")
WARM_KINDS = KINDS[1:6]  # an instance holding the shop's check, snapshot and cache (asked over HTTP with --http)


def measure(shop, url: str, count: int, probe: Callable[[Callable[[], object]], float],
            after_close: Callable[[], None] = lambda: None,
            unprobed: Callable[[], ContextManager] = contextlib.nullcontext) -> dict[str, list[float]]:
    """`probe(answer)` of `count` answers of each kind (the time it took, or its round trips), the store at `url`;
    `after_close` runs once a new instance's store is closed; the answers that warm an instance up run inside
    `unprobed()`."""
    from bench.latency import _runtime  # as an instance makes it, the catalog's and trending's refresh held off
    from recommender.intents import RecommendRequest

    def request(intent: str, i: int) -> RecommendRequest:
        return RecommendRequest.from_query(shop.query(intent, i))

    found: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for i in range(count):  # each a new instance: its store opened (as main.py's first request does), then asked
        made = []
        try:
            found[KINDS[0]].append(probe(lambda: made.append(_runtime(shop, url)) or
                                         made[0].recommender.recommend(request("related", i))))
        finally:
            if made:
                made[0].store.close()
            after_close()
    runtime = _runtime(shop, url)
    try:
        recommend = runtime.recommender.recommend
        with unprobed():  # the connection, the catalog's snapshot, the model: not probed
            recommend(request("related", count))
            recommend(request("trending", 0))
        for i in range(count):
            for kind, asked in zip(WARM_KINDS, (request("related", count + 1 + i), request("related", count + 1 + i),
                                               request("trending", 0), request("personalized", i),
                                               request("personalized", i))):
                found[kind].append(probe(lambda: recommend(asked)))
    finally:
        runtime.store.close()
    quiet = _quiet_runtime(shop, url)
    try:
        with unprobed():  # the connection and the model: not probed
            quiet.recommender.recommend(request("related", 2 * count + 1))
        for i in range(count):
            for kind, asked in ((KINDS[6], request("related", 2 * count + 2 + i)),
                                (KINDS[7], request("personalized", count + i))):
                found[kind].append(probe(lambda: quiet.recommender.recommend(asked)))
    finally:
        quiet.store.close()
    return found


def _quiet_runtime(shop, url: str):
    """An instance that holds nothing of the shop between answers: every answer finds its shop check and its catalog's
    snapshot due, as a quiet shop's answers do."""
    from recommender.runtime import Runtime
    from recommender.settings import Settings

    return Runtime.from_settings(Settings.from_mapping(shop.env(
        EVENT_STORE_URL=url, ANSWER_CACHE_SECONDS="0", CATALOG_TTL_SECONDS="0", TRENDING_TTL_SECONDS="1000000")))


def timed(answer: Callable[[], object]) -> float:
    begin = time.perf_counter()
    answer()
    return (time.perf_counter() - begin) * 1e3


def counted(shop, url: str, count: int = 3) -> dict[str, list[int]]:
    """Each kind's round trips for `count` answers, counted on the wire through a relay to PostgreSQL on loopback."""
    parts = urlsplit(url)
    if parts.hostname not in (process.LOOPBACK, "localhost"):
        raise SystemExit(f"round trips are counted through a relay to PostgreSQL on loopback, not {parts.hostname}")
    with RoundTripCounter(parts.port or 5432) as relay:
        def turns(answer: Callable[[], object]) -> int:
            relay.reset()
            answer()
            return relay.turns

        # A closed connection's goodbye reaches the relay 50 ms later: not the next answer's round trip. What warms an
        # instance up is not counted: undelayed, no round trip there waits 0.1 s.
        found = measure(shop, relay.url(url), count, turns, after_close=lambda: time.sleep(0.15),
                        unprobed=relay.undelayed)
    return {kind: [int(n) for n in values] for kind, values in found.items()}


def over_http(shop, url: str, count: int, workdir: Path) -> dict:
    """Each warm kind's answers, one at a time, from `main.py` under functions-framework on the store at `url`, and the
    same requests to the bare function: medians in ms."""
    import requests

    from bench.synthetic import write_floor_source

    log_dir = workdir / "logs"
    ours = process.spawn("app", process.ROOT / "main.py", shop.env(EVENT_STORE_URL=url), log_dir, threads=1)
    floor = process.spawn("floor", write_floor_source(workdir / "floor"), {}, log_dir, threads=1)
    taken: dict[str, list[float]] = {kind: [] for kind in WARM_KINDS}
    floors: dict[str, list[float]] = {kind: [] for kind in WARM_KINDS}
    try:
        process.wait_until_serving(ours, "/healthz")
        process.wait_until_serving(floor, "/")
        with requests.Session() as session:
            def ask(server: process.Server, intent: str, i: int) -> float:
                begin = time.perf_counter()
                answer = session.get(f"{server.base}/recommend?{shop.storefront_query(intent, i)}", timeout=60)
                took = (time.perf_counter() - begin) * 1e3
                if server is ours and answer.status_code != 200:
                    raise RuntimeError(f"{intent} {i}: {answer.status_code} {answer.text[:300]}")
                return took

            ask(ours, "related", count)  # the connection, the catalog's snapshot, the model: not timed
            ask(ours, "trending", 0)
            for i in range(count):
                asked = (("related", count + 1 + i), ("related", count + 1 + i), ("trending", 0), ("personalized", i),
                         ("personalized", i))
                for kind, (intent, k) in zip(WARM_KINDS, asked):
                    taken[kind].append(ask(ours, intent, k))
                    floors[kind].append(ask(floor, intent, k))
    finally:
        ours.stop()
        floor.stop()
    return {kind: {**summary(taken[kind]), "floor_median_ms": round(statistics.median(floors[kind]), 3)}
            for kind in taken}


def run(count: int, rtt_ms: float, items: int, workdir: Path, http: bool = False) -> dict:
    from bench import synthetic
    from bench.latency import shoppers_written_to
    from recommender.store import open_event_store

    results: dict = {"answers": count, "rtt_ms": rtt_ms, "items": items, "kinds": list(KINDS)}
    url = os.environ.get("TEST_POSTGRES_URL")
    if not url:
        return {**results, "skipped": "TEST_POSTGRES_URL is not set"}
    import psycopg
    from threadpoolctl import threadpool_limits

    artifact = synthetic.build_artifact(items)
    synthetic.publish_artifact(workdir / "models", artifact)
    shop = synthetic.prepare_shop(workdir / "shop", artifact, workdir / "models")
    with contextlib.closing(open_event_store(url)) as store, shoppers_written_to(store, shop), \
            threadpool_limits(limits=1, user_api="blas"):  # as instances run (main.py)
        results["round_trips"] = counted(shop, url)
        for name, rtt in [("loopback", 0.0)] + ([("relayed", rtt_ms)] if rtt_ms > 0 else []):
            with contextlib.ExitStack() as stack:
                reached = process.relayed_postgres_url(url, rtt, workdir / "logs", stack)
                with psycopg.connect(reached, autocommit=True) as conn:
                    round_trip = select_one_ms(conn)
                taken = measure(shop, reached, count, timed)
                results[name] = {"round_trip_ms": round_trip,
                                 **{kind: round(statistics.median(values), 3) for kind, values in taken.items()}}
                if http and rtt == rtt_ms:  # the farthest store, as a deployment reaches it
                    results["http"] = {"over": name, **over_http(shop, reached, count, workdir)}
    return results


def table(results: dict) -> str:
    if "skipped" in results:
        return f"PostgreSQL: skipped ({results['skipped']})."
    relayed = results.get("relayed")
    head = ["answer", "round trips", f"loopback (a round trip {results['loopback']['round_trip_ms']} ms)"]
    if relayed:
        head += [f"a round trip of {relayed['round_trip_ms']} ms", "÷ one round trip"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind in results["kinds"]:
        row = [kind, ", ".join(map(str, sorted(set(results["round_trips"][kind])))),
               f"{results['loopback'][kind]} ms"]
        if relayed:
            row += [f"{relayed[kind]} ms", f"{relayed[kind] / relayed['round_trip_ms']:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    http = results.get("http")
    if http:
        lines += http_lines(http, [kind for kind in results["kinds"][1:] if kind in http], "answer")
    lines.append(f"\nMedians of {results['answers']} answers a kind, {results['items']:,} items, one BLAS thread;"
                 " round trips counted for three answers a kind.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=40, help="answers of each kind (default 40)")
    add_distance_argument(parser)
    parser.add_argument("--http", action="store_true",
                        help="also ask the warm kinds of main.py under functions-framework, beside a bare function")
    parser.add_argument("--items", type=int, default=10_000, help="the model's products (default 10,000)")
    parser.add_argument("--out", type=Path, help="write answer_probe.json and answer_probe.md here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="answer-probe-") as workdir:
        results = run(args.answers, args.rtt_ms, args.items, Path(workdir), http=args.http)
    print_and_write(results, table(results), args.out, "answer_probe")
    return 0


if __name__ == "__main__":
    sys.exit(main())
