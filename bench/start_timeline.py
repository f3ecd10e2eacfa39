"""A functions-framework start timed from inside its processes: where a cold start's time goes.

    python -m bench.start_timeline --target recommend --source main.py --host 127.0.0.1 --port 8080

runs functions-framework as its command line does, with a clock at each step of a start: the wrapper's first line
(`up`), the listening socket bound by gunicorn's master (`bound`), the master about to fork its worker (`forking`;
a `PRELOAD_SHOPS` load is waited for after it), the worker's first line (`forked`), its accept loop (`accepting`),
the first request's dispatch by Flask (`request`), the model holder's first load in the worker (`load`, `loaded`)
and the end of that first dispatch (`answered`). Each event is written once, at its first occurrence, to stderr as

    start-timeline <milliseconds since the spawn> <pid> <event>

where the spawn is START_TIMELINE_SPAWNED, the spawning process's `time.perf_counter()` just before it started this
one (CLOCK_MONOTONIC on Linux: one clock for every process). `python -m bench.cold_probe --timeline` spawns the
floor and our instances this way and reports the medians of each step. Nothing of the project's is imported before
functions-framework imports the source (`main.py` pins the BLAS threads before numpy loads): the model holder is
timed from the worker's first line on, once the source is imported.
"""

from __future__ import annotations

import os
import re
import sys
import time

EVENTS = ("up", "bound", "forking", "forked", "accepting", "request", "load", "loaded", "answered")
PREFIX = "start-timeline"
SPAWNED_VARIABLE = "START_TIMELINE_SPAWNED"
_LINE = re.compile(rf"^{PREFIX} (-?\d+(?:\.\d+)?) (\d+) ({'|'.join(EVENTS)})$", re.MULTILINE)
# A start's steps in order, with what its client saw: the port first accepting ("listening", after gunicorn's bind)
# and the first 200 ("first 200").
COLUMNS = (*EVENTS[:2], "listening", *EVENTS[2:], "first 200")


def events(log: str) -> dict[str, float]:
    """Each event's milliseconds since the spawn, from a start's output (its first occurrence)."""
    found: dict[str, float] = {}
    for match in _LINE.finditer(log):
        found.setdefault(match.group(3), float(match.group(1)))
    return found


def medians(starts: list[dict[str, float]]) -> dict[str, float]:
    """Each column's median over the starts that have it (ms since the spawn)."""
    import statistics  # here, not at the top: the wrapper's own start stays as light as it can

    return {column: statistics.median(values) for column in COLUMNS
            if (values := [start[column] for start in starts if column in start])}


def table(at: dict[str, dict[str, float]], gaps: bool = False) -> str:
    """Markdown, a row per variant: its `medians`, or with `gaps` each step's time after the step before it (two steps
    that overlap, as the client's "listening" and gunicorn's "forking" may, give a negative gap)."""
    rows = ["| variant | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for label, steps in at.items():
        cells, before = [], 0.0
        for column in COLUMNS:
            if column not in steps:
                cells.append("")
                continue
            cells.append(f"{steps[column] - before:+.1f}" if gaps else f"{steps[column]:.1f}")
            before = steps[column]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


class _Clock:
    def __init__(self, spawned: float):
        self.spawned = spawned
        self.said: set[str] = set()

    def say(self, event: str) -> None:
        if event in self.said:
            return
        self.said.add(event)
        milliseconds = (time.perf_counter() - self.spawned) * 1000
        os.write(2, f"{PREFIX} {milliseconds:.2f} {os.getpid()} {event}\n".encode())


def _clock_around(clock: _Clock, owner: type, name: str, before: str | None = None, after: str | None = None) -> None:
    """`owner.name` says `before` as it is called and `after` as it returns (or raises)."""
    original = getattr(owner, name)

    def timed(*args, **kwargs):
        if before:
            clock.say(before)
        try:
            return original(*args, **kwargs)
        finally:
            if after:
                clock.say(after)

    setattr(owner, name, timed)


def install(clock: _Clock) -> None:
    import flask
    import gunicorn.arbiter
    import gunicorn.workers.base

    _clock_around(clock, gunicorn.arbiter.Arbiter, "start", after="bound")
    _clock_around(clock, gunicorn.arbiter.Arbiter, "spawn_worker", before="forking")
    _clock_around(clock, flask.Flask, "full_dispatch_request", before="request", after="answered")
    original_init = gunicorn.workers.base.Worker.init_process

    def init_process(worker):  # in the worker, whose copy of the clock knows what the master said before the fork
        clock.say("forked")
        serving = sys.modules.get("recommender.serving")  # the source's import brought it (ours does; the floor not)
        if serving is not None:
            _clock_around(clock, serving.ModelHolder, "_load_first", before="load", after="loaded")
        run = worker.run

        def accepting():
            clock.say("accepting")
            return run()

        worker.run = accepting
        return original_init(worker)

    gunicorn.workers.base.Worker.init_process = init_process


def main() -> None:
    spawned = float(os.environ[SPAWNED_VARIABLE])
    clock = _Clock(spawned)
    clock.say("up")
    install(clock)
    from functions_framework._cli import _cli

    _cli(prog_name="python -m bench.start_timeline")


if __name__ == "__main__":
    main()
