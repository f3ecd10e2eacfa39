"""bench.train_job_probe, small: the real `python -m recommender train` in processes of its own, beside implicit's fit
of the same matrix (the probe's floor)."""

from __future__ import annotations

import os
import sys

import numpy as np

from bench import train_job_probe
from recommender.store import SQLiteEventStore


def test_the_probes_shop_has_its_planted_tastes(tmp_path):
    events = [event for chunk in train_job_probe.shop_events(4_000, 400, 400) for event in chunk]
    per_taste = 400 // train_job_probe.TASTES
    in_taste = [(int(e.product_id) - 8_000_000_000_000) // 1_499 // per_taste
                == (int(e.customer_id) - 7_000_000_000_000) % train_job_probe.TASTES for e in events]

    assert len(events) == 4_000
    # four in five from the shopper's taste, and a share of the rest by chance (1 in 40 tastes)
    assert 0.78 < np.mean(in_taste) < 0.84
    assert {e.kind.value for e in events} == {"view", "add_to_cart", "purchase"}
    assert all(e.order_id for e in events if e.kind.value == "purchase")


def test_the_job_publishes_the_model_of_the_matrix_the_floor_fits(tmp_path):
    result = train_job_probe.measure(events=20_000, users=2_000, items=1_000, rounds=1, work=tmp_path, arenas=2)

    assert list(result["runs"]) == ["job", "job, no gate", "job, MALLOC_ARENA_MAX=2", "floor"]
    job, ungated, arenas, floor = (result["runs"][mode][0] for mode in result["runs"])
    # the planted tastes beat best sellers, with glibc's malloc arenas as they come or two
    assert job["outcome"] == ungated["outcome"] == arenas["outcome"] == "published"
    assert job["model"] == ungated["model"] == arenas["model"]
    assert job["model"]["users"] == result["users"] and job["model"]["items"] == result["items"]
    assert job["model"]["events"] == 20_000
    assert floor["outcome"] == "fitted" and result["arenas"] == 2
    for run in (job, ungated, arenas, floor):
        assert run["seconds"] > 0 and 40 < run["peak_mib"] < 4_000  # a Python process with numpy, not a parent's peak
    assert result["job_over_floor"]["job"]["seconds"] == round(job["seconds"] / floor["seconds"], 2)
    # the events stayed in the store the probe made
    store = SQLiteEventStore(tmp_path / "events.sqlite3")
    try:
        assert len(store.interaction_columns(train_job_probe.SHOP)) == 20_000
    finally:
        store.close()


def test_a_child_reports_its_own_peak_not_the_probes(tmp_path):
    """ru_maxrss of a spawned child counts its parent's resident memory at the spawn; the probe holds a shop's
    columns then. A child that allocates 64 MiB reports about that over an interpreter, whatever the probe holds."""
    held = np.ones(600 * 2**20 // 8)  # 600 MiB touched in this process
    small = train_job_probe.measured([sys.executable, "-c", train_job_probe.PEAK + "x = bytearray(64 * 2**20)"],
                                     dict(os.environ), tmp_path)
    bigger = train_job_probe.measured(  # its peak, not what it holds as it exits
        [sys.executable, "-c", train_job_probe.PEAK + "x = bytearray(256 * 2**20); del x"], dict(os.environ), tmp_path)

    assert held.sum() > 0
    assert 64 < small["peak_mib"] < 200
    assert 190 < bigger["peak_mib"] - small["peak_mib"] < 200


def test_a_child_that_fails_raises_with_its_error_unless_its_status_is_allowed(tmp_path):
    command = [sys.executable, "-c", train_job_probe.PEAK + "import sys; print('{}'); sys.exit(1)"]

    try:
        train_job_probe.measured(command, dict(os.environ), tmp_path)
    except RuntimeError as exc:
        assert "failed (1)" in str(exc)
    else:
        raise AssertionError("a child exiting 1 was taken as a measurement")
    assert train_job_probe.measured(command, dict(os.environ), tmp_path, ok=(0, 1))["stdout"].strip() == "{}"


def test_the_jobs_report_is_read_as_published_kept_skipped_or_failed():
    assert train_job_probe.job_outcome('{"trained": [], "kept": [{"shop": "s", "reason": "r"}], "skipped": [],'
                                       ' "failed": []}') == ("kept: r", {})
    assert train_job_probe.job_outcome('{"trained": [], "kept": [], "skipped": [{"shop": "s", "reason": "few"}],'
                                       ' "failed": []}') == ("skipped: few", {})
    assert train_job_probe.job_outcome('{"trained": [], "kept": [], "skipped": [],'
                                       ' "failed": [{"shop": "s", "error": "OSError: x"}]}') == ("failed: OSError: x", {})


def test_another_checkouts_job_runs_in_each_round_beside_this_ones(tmp_path):
    result = train_job_probe.measure(events=6_000, users=600, items=400, rounds=1, work=tmp_path,
                                     before=train_job_probe.ROOT)

    assert list(result["runs"]) == ["job", "job, no gate", "job (before)", "job, no gate (before)", "floor"]
    assert result["before"] == str(train_job_probe.ROOT)
    for mode in ("job", "job (before)"):
        [run] = result["runs"][mode]
        assert run["outcome"] == "published" and run["model"]["events"] == 6_000, mode
    assert result["runs"]["job (before)"][0]["model"] == result["runs"]["job"][0]["model"]  # the same code, the same model
