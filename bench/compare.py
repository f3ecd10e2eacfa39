"""Several `bench.perf` runs side by side: each goal's figure in every run, the misses in bold, and how many
runs met it; then where each run's lazy cold starts spent their time, from its start timeline.

One run decides little on a shared machine (bench/PERFORMANCE.md: runs of the same code disagree by more
than the goals' margins), so a verdict is read over several:

    python -m bench.compare /tmp/run1 /tmp/run2 /tmp/run3          # each a folder holding perf.json
    python -m bench.compare runs/*/perf.json --out compare.md

Goals are matched by their text; a goal a run did not judge shows as "—" and does not count against it.
Where two runs or more recorded their samples, the cold starts of every configuration, and the warm calls of
every configuration a warm goal is judged on, are also pooled over the runs, each run's rounds paired as it
timed them, and judged once: a figure from many more starts than one run's 13 (and a p99 from many more calls
than one run's 400), with its 95% interval. Last, each kind's round trips to PostgreSQL in each run, and whether
the runs agree. Nothing is measured here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.perf import GOALS, size_label
from bench.report import _table as table
from bench.stats import goal_ratio, median, percentile, ratio_interval


class RunUnreadable(ValueError):
    """A path that holds no readable bench.perf result (perf.json)."""


def load_run(path: Path) -> dict:
    """The results of one run, from `path` (a perf.json file or a folder holding one)."""
    file = path / "perf.json" if path.is_dir() else path
    try:
        results = json.loads(file.read_text())
    except FileNotFoundError:
        raise RunUnreadable(f"{file}: no such file (give a folder holding perf.json, or the file itself)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise RunUnreadable(f"{file}: not a readable perf.json ({exc})") from None
    if not isinstance(results, dict) or not isinstance(results.get("goals"), list) or "meta" not in results:
        raise RunUnreadable(f"{file}: not a bench.perf result (it has no 'meta' and 'goals')")
    return results


def _label(results: dict) -> str:
    """A run's column heading: its start time (UTC) and commit."""
    meta = results["meta"]
    when = str(meta.get("date", "?"))[:16].replace("T", " ")
    commit = (meta.get("code_at_start") or {}).get("commit", "?")
    return f"{when} ({commit})"


def _cell(goal: dict | None) -> str:
    if goal is None:
        return "—"
    return str(goal["measured"]) if goal["met"] else f"**{goal['measured']}**"


def comparison(runs: list[dict]) -> str:
    """Markdown: the runs (date, commit, machine, the cold-start floor), then one row per goal in the order the
    runs judged them, the last column how many of the runs that judged it met it, and the misses per run."""
    if not runs:
        raise ValueError("no runs to compare")
    names: list[str] = []
    for results in runs:
        names += [g["goal"] for g in results["goals"] if g["goal"] not in names]
    by_name = [{g["goal"]: g for g in results["goals"]} for results in runs]
    lines = ["# Goals over several bench.perf runs", ""]
    for number, results in enumerate(runs, 1):
        meta = results["meta"]
        floor = ((results.get("cold_start") or {}).get("floor") or {}).get("first_ok_median_s")
        machine = meta.get("machine") or {}
        blas = (machine.get("blas") or [{}])[0]
        lines.append(f"{number}. {_label(results)}: {meta.get('mode', '?')} mode, {machine.get('nproc', '?')} CPUs"
                     f" ({machine.get('cpu_model', '?')}, BLAS {blas.get('architecture', '?')})"
                     + ("" if floor is None else f"; the bare function's first 200 {floor} s"))
    rows = []
    for name in names:
        judged = [goals.get(name) for goals in by_name]
        counted = [g for g in judged if g is not None]
        rows.append([name, *map(_cell, judged), f"{sum(1 for g in counted if g['met'])} of {len(counted)}"])
    missed = [sum(1 for g in results["goals"] if not g["met"]) for results in runs]
    rows.append(["goals missed", *(f"{m} of {len(r['goals'])}" for m, r in zip(missed, runs)),
                 f"{sum(1 for m in missed if m == 0)} of {len(runs)} runs met every goal"])
    lines += ["", table(["goal", *map(str, range(1, len(runs) + 1)), "met"], rows)]
    return "\n".join(lines + _pooled_starts(runs) + _pooled_warm(runs) + _lazy_steps(runs)
                     + _round_trips(runs)) + "\n"


def _paired_rounds(config: dict, floor: dict | None) -> tuple[list[float], list[float]]:
    """A configuration's starts and its floor's, of the rounds both were timed in (the k-th start of each ran
    in the k-th round of starts, as `bench.perf` pairs them for a goal's interval)."""
    ours, theirs = list(config.get("first_ok_samples_s") or ()), list((floor or {}).get("first_ok_samples_s") or ())
    rounds = min(len(ours), len(theirs))
    return ours[:rounds], theirs[:rounds]


def _verdict(low: float, high: float, line: float, strictly_under: bool = False) -> str:
    """Where a goal's line falls against a pooled figure's interval."""
    if high < line or (high == line and not strictly_under):
        return "met"
    if low > line or (low == line and strictly_under):
        return "missed"
    return "undecided"


def _pooled_starts(runs: list[dict]) -> list[str]:
    """Every cold-start configuration's starts pooled over the runs that recorded them, against the floor's
    (and the floor with one BLAS thread) of the same rounds: the ratio of the pooled medians, its 95% interval
    with rounds drawn from every run (`bench.stats.ratio_interval`), and where the goal's line falls for the
    configurations at the goal's size. Nothing when fewer than two runs recorded starts."""
    pooled: dict[str, dict] = {}
    for results in runs:
        cold = results.get("cold_start") or {}
        for config in cold.get("configs") or ():
            for floor_name in ("floor", "floor_one_blas_thread"):
                ours, theirs = _paired_rounds(config, cold.get(floor_name))
                if not ours:
                    continue
                entry = pooled.setdefault(config["label"], {"items": config.get("items"), "runs": set()})
                entry.setdefault(floor_name, ([], []))
                entry[floor_name][0].extend(ours)
                entry[floor_name][1].extend(theirs)
                entry["runs"].add(id(results))
    line, reference = GOALS["cold_start_ratio"], _reference_size(runs[0])
    rows = []
    for label, entry in pooled.items():
        if len(entry["runs"]) < 2 or "floor" not in entry:
            continue
        ours, theirs = entry["floor"]
        figure = goal_ratio(median(ours), median(theirs))
        low, high = ratio_interval(ours, theirs, None)
        verdict = "" if entry["items"] != reference else {
            "met": f"met: the whole interval at or under {line}", "missed": f"missed: the whole interval over {line}",
            "undecided": f"undecided: the interval straddles {line}"}[_verdict(low, high, line)]
        pinned = entry.get("floor_one_blas_thread")
        rows.append([label, len(entry["runs"]), len(ours), figure, f"{low}–{high}",
                     None if not pinned else goal_ratio(median(pinned[0]), median(pinned[1])), verdict])
    if not rows:
        return []
    return ["", f"Cold starts pooled over the runs (each configuration's first 200 against the bare function's in"
                f" the same rounds; the goal: ≤ {line}× at {size_label(reference)} items):", "",
            table(["instance", "runs", "starts", "pooled ratio of medians", "95% interval, rounds resampled",
                   "against the floor with one BLAS thread", "the goal"], rows)]


# The warm configurations the goals are judged on, at the reference size (bench.perf's goals): a name as the goals
# give it ({at}: the reference size), where its measurements sit in warm_latency, and whether it is also judged
# against implicit's fold-in.
WARM_CONFIGS = (
    ("at {at} (blas_one_thread)", ("sizes", "blas_one_thread"), True),
    ("at {at}, a trained model (blas_one_thread)", ("trained_one_thread",), True),
    ("at {at} with {at} catalog rows (blas_one_thread)", ("with_catalog_one_thread",), False),
    ("at {at} (blas_default_threads)", ("sizes", "blas_default_threads"), True),
    ("at {at} with {at} catalog rows (blas_default_threads)", ("with_catalog",), False),
)
WARM_INTENTS = ("personalized", "related", "complementary")


def _reference_size(results: dict) -> int:
    return (results.get("meta") or {}).get("reference_size", 100_000)


def _warm_measurement(results: dict, where: tuple[str, ...]) -> dict | None:
    warm = results.get("warm_latency") or {}
    if where[0] == "sizes":
        reference = _reference_size(results)
        size = next((s for s in warm.get("sizes") or () if s.get("items") == reference), None)
        return None if size is None else size.get(where[1])
    return warm.get(where[0])


def _pooled_warm(runs: list[dict]) -> list[str]:
    """Each warm goal's configuration and intent with every run's calls pooled (`samples_ms`, the i-th call of
    each name from one interleaved round): the p99 of all of ours over the p99 of all of the floor's (and of
    implicit's fold-in where that is a goal too), with 95% intervals drawn over the pooled rounds. Nothing
    when fewer than two runs recorded samples."""
    line, at = GOALS["warm_p99_vs_floor"], size_label(_reference_size(runs[0]))
    rows = []
    for name, where, against_peer in WARM_CONFIGS:
        for intent in WARM_INTENTS:
            ours: list[float] = []
            floor: list[float] = []
            peer: list[float] = []
            counted = 0
            for results in runs:
                samples = (_warm_measurement(results, where) or {}).get("samples_ms") or {}
                rounds = min(len(samples.get(intent) or ()), len(samples.get("floor") or ()),
                             len(samples.get("implicit_fold_in") or ()))
                if not rounds:
                    continue
                counted += 1
                ours += samples[intent][:rounds]
                floor += samples["floor"][:rounds]
                peer += samples["implicit_fold_in"][:rounds]
            if counted < 2:
                continue
            vs_floor = goal_ratio(percentile(ours, 99), percentile(floor, 99))
            low, high = ratio_interval(ours, floor, 99)
            cells = [f"{intent} p99 {name.format(at=at)}", counted, len(ours), vs_floor, f"{low}–{high}",
                     _verdict(low, high, line)]
            if against_peer:
                vs_peer = goal_ratio(percentile(ours, 99), percentile(peer, 99))
                peer_low, peer_high = ratio_interval(ours, peer, 99)
                cells += [vs_peer, f"{peer_low}–{peer_high}", _verdict(peer_low, peer_high, 1.0, strictly_under=True)]
            else:
                cells += [None, None, None]
            rows.append(cells)
    if not rows:
        return []
    return ["", f"Warm answers pooled over the runs (p99 of every run's calls; goals: ≤ {line}× the floor, and"
                f" faster than implicit's fold-in where that is judged):", "",
            table(["goal's configuration", "runs", "calls", "against the floor", "95% interval", f"≤ {line}×",
                   "against implicit's fold-in", "95% interval", "faster"], rows)]


def _lazy_steps(runs: list[dict]) -> list[str]:
    """Where each run's lazy starts spent their time (bench.start_timeline's medians, in ms): gunicorn's bind
    after the floor's (and after the floor's with one BLAS thread), then in the worker's first request the time
    before the model's load, the load, and the rest of the answer, beside the bare function's whole request.
    Nothing for runs without a timeline."""
    rows = []
    for number, results in enumerate(runs, 1):
        steps = ((results.get("cold_start") or {}).get("timeline") or {}).get("steps_ms") or {}
        floor, pinned = steps.get("floor"), steps.get("floor, one BLAS thread")
        if not floor:
            continue
        for label, s in steps.items():
            if "load" not in s or not {"bound", "request", "loaded", "answered"} <= set(s):
                continue  # the floors, and starts whose model loaded before the first request (PRELOAD_SHOPS)
            rows.append([number, label, f"{s['bound'] - floor['bound']:+.1f}",
                         None if not pinned else f"{s['bound'] - pinned['bound']:+.1f}",
                         f"{s['load'] - s['request']:.1f}", f"{s['loaded'] - s['load']:.1f}",
                         f"{s['answered'] - s['loaded']:.1f}", f"{floor['answered'] - floor['request']:.1f}"])
    if not rows:
        return []
    return ["", "Lazy starts, timed inside their processes (medians, ms):", "",
            table(["run", "instance", "bind after the floor's", "after the floor's, one BLAS thread",
                   "first request to the load", "the load", "after the load", "the floor's request"], rows)]


def _round_trips(runs: list[dict]) -> list[str]:
    """Each kind of answer and webhook write: its round trips to PostgreSQL in every run that counted them, and
    whether the runs agree on the fewest (a count that moved is a change in the code, not noise; psycopg prepares a
    statement on its fifth use on a connection, one round trip more once, in whichever kind reaches it). Nothing
    when no run counted."""
    counts: dict[str, list[list[int] | None]] = {}
    for number, results in enumerate(runs):
        found = results.get("round_trips") or {}
        for side, trips in (("answer", (found.get("answers") or {}).get("round_trips")),
                            ("webhook", ((found.get("deliveries") or {}).get("postgresql") or {}).get("round_trips"))):
            for kind, values in (trips or {}).items():
                counts.setdefault(f"{side}: {kind}", [None] * len(runs))[number] = sorted(set(values))
    if not counts:
        return []
    rows = []
    for kind, cells in counts.items():
        fewest = {cell[0] for cell in cells if cell}
        rows.append([kind, *(", ".join(map(str, cell)) if cell else "—" for cell in cells),
                     "yes" if len(fewest) == 1 else "**no**"])
    return ["", "Round trips to PostgreSQL, counted on the wire (`bench.answer_probe`, `bench.delivery_probe`):", "",
            table(["kind", *map(str, range(1, len(runs) + 1)), "the fewest the same in every run"], rows)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="bench.perf output folders (or their perf.json files)")
    parser.add_argument("--out", type=Path, help="write the table here as well as to stdout")
    args = parser.parse_args(argv)
    try:
        text = comparison([load_run(path) for path in args.runs])
    except RunUnreadable as exc:
        print(f"bench.compare: {exc}", file=sys.stderr)
        return 2
    if args.out:
        args.out.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
