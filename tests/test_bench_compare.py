"""`python -m bench.compare`: several bench.perf runs' goals side by side, counted by hand."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.compare import RunUnreadable, comparison, load_run, main
from tests.conftest import ROOT


def _run(date: str, commit: str, floor_s: float, goals: list[tuple[str, float, bool]]) -> dict:
    return {"meta": {"date": date, "mode": "full", "code_at_start": {"commit": commit, "changed": []},
                     "machine": {"nproc": 2, "cpu_model": "AMD EPYC", "blas": [{"architecture": "SkylakeX"}]}},
            "cold_start": {"floor": {"first_ok_median_s": floor_s}},
            "goals": [{"goal": name, "measured": measured, "met": met} for name, measured, met in goals]}


FIRST = _run("2026-12-06T00:57:36+00:00", "aaaaaaa", 0.208,
             [("cold start ≤ 1.2× floor", 1.202, False), ("webhook p99 < 50 ms", 17.4, True)])
SECOND = _run("2026-12-06T01:06:09+00:00", "bbbbbbb", 0.212,
              [("cold start ≤ 1.2× floor", 1.175, True), ("training ≤ 1.3× implicit fit", 1.17, True)])


def _saved(tmp_path, name: str, results) -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "perf.json").write_text(json.dumps(results))
    return str(folder)


def test_each_goal_shows_every_run_with_misses_in_bold_and_the_runs_that_met_it():
    table = comparison([FIRST, SECOND])

    assert "1. 2026-12-06 00:57 (aaaaaaa): full mode, 2 CPUs (AMD EPYC, BLAS SkylakeX); the bare function's" \
           " first 200 0.208 s" in table
    assert "2. 2026-12-06 01:06 (bbbbbbb)" in table
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0] == "| goal | 1 | 2 | met |"
    assert rows[1:] == [
        "| cold start ≤ 1.2× floor | **1.202** | 1.175 | 1 of 2 |",
        "| webhook p99 < 50 ms | 17.4 | — | 1 of 1 |",  # the second run did not judge it: not counted
        "| training ≤ 1.3× implicit fit | — | 1.17 | 1 of 1 |",
        "| goals missed | 1 of 2 | 0 of 2 | 1 of 2 runs met every goal |",
    ]


def test_the_lazy_starts_steps_are_the_gaps_between_the_timeline_medians():
    timed = json.loads(json.dumps(FIRST))
    timed["cold_start"]["timeline"] = {"repeats": 5, "steps_ms": {
        "floor": {"bound": 200.0, "request": 210.0, "answered": 211.0},
        "floor, one BLAS thread": {"bound": 190.0, "request": 199.0, "answered": 200.0},
        "100k items": {"bound": 215.0, "request": 225.0, "load": 228.0, "loaded": 258.0, "answered": 262.0},
        "100k items, PRELOAD_SHOPS": {"bound": 230.0, "request": 240.0, "answered": 247.0},  # loaded before: no row
    }}

    table = comparison([timed, SECOND])  # the second run has no timeline: no rows of its own

    steps = table.split("Lazy starts, timed inside their processes (medians, ms):")[1]
    rows = [line for line in steps.splitlines() if line.startswith("| ") and not line.startswith("| run ")]
    assert rows == ["| 1 | 100k items | +15.0 | +25.0 | 3.0 | 30.0 | 4.0 | 1.0 |"]
    assert "Lazy starts" not in comparison([FIRST, SECOND])  # no run timed: no such table


def test_each_kinds_round_trips_show_per_run_with_a_moved_count_flagged():
    before, after, skipped = (json.loads(json.dumps(run)) for run in (FIRST, SECOND, FIRST))
    before["round_trips"] = {"answers": {"round_trips": {"related, again": [1, 1, 1]}},
                             "deliveries": {"postgresql": {"round_trips": {"product update": [3, 3, 3],
                                                                           "cart": [1, 1, 1],
                                                                           "checkout": [1, 1, 1]}}}}
    after["round_trips"] = {"answers": {"round_trips": {"related, again": [0, 0, 0]}},
                            "deliveries": {"postgresql": {"round_trips": {"product update": [1, 1, 1],
                                                                          "cart": [2, 3, 2],
                                                                          "checkout": [1, 2, 1]}}}}
    skipped["round_trips"] = {"answers": {"skipped": "TEST_POSTGRES_URL is not set"},
                              "deliveries": {"postgresql": {"skipped": "TEST_POSTGRES_URL is not set"}}}

    table = comparison([before, after, skipped])

    trips = table.split("Round trips to PostgreSQL, counted on the wire")[1]
    rows = [line for line in trips.splitlines() if line.startswith("| ")]
    assert rows == ["| kind | 1 | 2 | 3 | the fewest the same in every run |",
                    "| answer: related, again | 1 | 0 | — | **no** |",
                    "| webhook: product update | 3 | 1 | — | **no** |",
                    "| webhook: cart | 1 | 2, 3 | — | **no** |",
                    "| webhook: checkout | 1 | 1, 2 | — | yes |"]  # psycopg's one prepare: not a change
    assert "Round trips to PostgreSQL" not in comparison([FIRST, skipped])  # nothing counted: no such table
    same = comparison([before, before])
    assert "| webhook: product update | 3 | 3 | yes |" in same


def test_no_runs_is_refused():
    with pytest.raises(ValueError, match="no runs"):
        comparison([])


def test_a_folder_or_its_perf_json_loads_the_same(tmp_path):
    _saved(tmp_path, "one", FIRST)

    assert load_run(tmp_path / "one") == load_run(tmp_path / "one" / "perf.json") == FIRST


@pytest.mark.parametrize("content, reason", [
    (None, "no such file"),
    ("{not json", "not a readable perf.json"),
    (json.dumps({"meta": {}}), "not a bench.perf result"),
    (json.dumps([1, 2]), "not a bench.perf result"),
])
def test_a_path_without_a_result_is_named_in_the_error(tmp_path, content, reason):
    folder = tmp_path / "run"
    folder.mkdir()
    if content is not None:
        (folder / "perf.json").write_text(content)

    with pytest.raises(RunUnreadable, match=reason) as caught:
        load_run(folder)
    assert str(folder / "perf.json") in str(caught.value)


def test_the_command_writes_the_table_and_exits_2_naming_an_unreadable_run(tmp_path, capsys):
    first, second = _saved(tmp_path, "a", FIRST), _saved(tmp_path, "b", SECOND)
    out = tmp_path / "compare.md"

    assert main([first, second, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed == out.read_text() == comparison([FIRST, SECOND])

    assert main([first, str(tmp_path / "missing")]) == 2
    assert f"bench.compare: {tmp_path / 'missing'}: no such file" in capsys.readouterr().err


def test_python_dash_m_bench_compare_runs_as_documented(tmp_path):
    first, second = _saved(tmp_path, "a", FIRST), _saved(tmp_path, "b", SECOND)

    run = subprocess.run([sys.executable, "-m", "bench.compare", first, second], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)

    assert run.returncode == 0, run.stderr
    assert "| cold start ≤ 1.2× floor | **1.202** | 1.175 | 1 of 2 |" in run.stdout


def _with_starts(results: dict, floor: list[float], floor_one_thread: list[float],
                 configs: list[tuple[str, int, list[float]]]) -> dict:
    started = json.loads(json.dumps(results))
    started["cold_start"]["floor"]["first_ok_samples_s"] = floor
    started["cold_start"]["floor_one_blas_thread"] = {"first_ok_samples_s": floor_one_thread}
    started["cold_start"]["configs"] = [{"label": label, "items": items, "first_ok_samples_s": samples}
                                        for label, items, samples in configs]
    return started


def _pooled_rows(table: str) -> list[str]:
    pooled = table.split("Cold starts pooled over the runs")[1].split("Lazy starts")[0]
    return [line for line in pooled.splitlines() if line.startswith("| ") and not line.startswith("| instance ")]


def test_cold_starts_pool_every_runs_paired_rounds_and_judge_the_goal_once():
    # Every round of ours took 1.1× its floor's round, so every resample of rounds gives 1.1 exactly. The pooled
    # floor medians: (0.24 + 0.30) / 2 = 0.27 s, and 0.25 with one BLAS thread, so 0.297 / 0.25 = 1.188 there.
    # 1M items has two starts a run: paired with the floor's first two rounds, 3× each. PRELOAD_SHOPS: 1.5× each.
    first = _with_starts(FIRST, [0.20, 0.22, 0.24], [0.18, 0.20, 0.22], [
        ("100k items", 100_000, [0.22, 0.242, 0.264]), ("1M items", 1_000_000, [0.60, 0.66]),
        ("100k items, PRELOAD_SHOPS", 100_000, [0.30, 0.33, 0.36])])
    second = _with_starts(SECOND, [0.30, 0.32, 0.34], [0.28, 0.30, 0.32], [
        ("100k items", 100_000, [0.33, 0.352, 0.374]), ("1M items", 1_000_000, [0.90, 0.96]),
        ("100k items, PRELOAD_SHOPS", 100_000, [0.45, 0.48, 0.51])])

    rows = _pooled_rows(comparison([first, second]))

    assert rows == [
        "| 100k items | 2 | 6 | 1.1 | 1.1–1.1 | 1.188 | met: the whole interval at or under 1.2 |",
        "| 1M items | 2 | 4 | 3.0 | 3.0–3.0 | 3.25 |  |",  # 0.78 / 0.24; not the goal's size: no verdict
        "| 100k items, PRELOAD_SHOPS | 2 | 6 | 1.5 | 1.5–1.5 | 1.62 | missed: the whole interval over 1.2 |",
    ]


def test_a_pooled_interval_across_the_line_is_undecided_and_one_run_is_not_pooled():
    # The floor took 1.0 s in all six rounds, ours 1.0 s in three and 1.4 s in three: the pooled median is 1.2.
    # A resample's median is 1.0 when four or more of its six rounds are 1.0 s ones (22 of 64 draws' chance),
    # 1.4 as often, so the central 95% of resamples runs from 1.0 to 1.4: across the goal's line.
    first = _with_starts(FIRST, [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [("100k items", 100_000, [1.0, 1.0, 1.0])])
    second = _with_starts(SECOND, [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [("100k items", 100_000, [1.4, 1.4, 1.4])])

    assert _pooled_rows(comparison([first, second])) == [
        "| 100k items | 2 | 6 | 1.2 | 1.0–1.4 | 1.2 | undecided: the interval straddles 1.2 |"]
    assert "pooled" not in comparison([first, SECOND])  # one run with starts: its own goal row says it all


def _with_warm_calls(results: dict, calls_ms: dict[str, list[float]]) -> dict:
    timed = json.loads(json.dumps(results))
    timed["meta"]["reference_size"] = 100_000
    timed["warm_latency"] = {"sizes": [{"items": 100_000, "blas_one_thread": {"samples_ms": calls_ms}}]}
    return timed


def test_warm_calls_pool_every_runs_rounds_into_one_p99_against_the_floor_and_implicit():
    # 200 pooled rounds; the floor took 1.0 ms and implicit's fold-in 2.0 ms in every one. Personalized answers took
    # 1.2 ms but for three of the second run's, 1.8 ms: the nearest-rank p99 of 200 is the 198th fastest, 1.8 ms,
    # so 1.8× the floor and 0.9× implicit. A resample's p99 is 1.8 ms when it draws three or more of those three
    # rounds (about 58% of resamples) and 1.2 ms otherwise, so the intervals run 1.2–1.8 and 0.6–0.9: across
    # the floor's line of 1.5, wholly under implicit's 1. Related answers took 1.0 ms in every round.
    first = _with_warm_calls(FIRST, {"floor": [1.0] * 100, "implicit_fold_in": [2.0] * 100,
                                     "personalized": [1.2] * 100, "related": [1.0] * 100})
    second = _with_warm_calls(SECOND, {"floor": [1.0] * 100, "implicit_fold_in": [2.0] * 100,
                                       "personalized": [1.2] * 97 + [1.8] * 3, "related": [1.0] * 100})

    table = comparison([first, second])

    pooled = table.split("Warm answers pooled over the runs")[1]
    rows = [line for line in pooled.splitlines() if line.startswith("| ") and not line.startswith("| goal's")]
    assert rows == [  # no complementary calls and no other configuration recorded: no rows for them
        "| personalized p99 at 100k (blas_one_thread) | 2 | 200 | 1.8 | 1.2–1.8 | undecided | 0.9 | 0.6–0.9 | met |",
        "| related p99 at 100k (blas_one_thread) | 2 | 200 | 1.0 | 1.0–1.0 | met | 0.5 | 0.5–0.5 | met |",
    ]
    assert "Warm answers pooled" not in comparison([first, SECOND])  # one run with calls: nothing to pool
