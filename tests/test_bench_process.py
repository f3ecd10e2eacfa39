"""`bench.process.spawn(..., cores=...)`: a real functions-framework server kept on the cores it is given."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench import process, synthetic
from tests.conftest import ROOT


def test_first_cores_are_the_lowest_allowed_and_a_count_out_of_range_is_refused():
    allowed = sorted(os.sched_getaffinity(0))
    assert process.first_cores(1) == allowed[:1]
    assert process.first_cores(len(allowed)) == allowed
    for count in (0, len(allowed) + 1):
        with pytest.raises(ValueError, match=f"{count} cores asked for; this process may run on {len(allowed)}"):
            process.first_cores(count)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core: every process runs on it anyway")
def test_a_server_spawned_on_one_core_runs_its_master_and_worker_there_and_still_answers(tmp_path):
    core = process.first_cores(1)
    server = process.spawn("floor", synthetic.write_floor_source(tmp_path / "floor"), {}, tmp_path / "logs",
                           cores=core)
    try:
        startup = process.wait_until_serving(server, "/")
        assert startup.first_ok_s > 0
        pids = server.pids()
        assert len(pids) >= 2, server.output()  # gunicorn's master and the worker it forked
        assert [sorted(os.sched_getaffinity(pid)) for pid in pids] == [core] * len(pids)
    finally:
        server.stop()
    assert len(os.sched_getaffinity(0)) >= 2  # the caller's own cores are untouched


def test_cold_probe_refuses_more_cores_than_it_may_use_before_building_anything():
    allowed = len(os.sched_getaffinity(0))
    run = subprocess.run([sys.executable, "-m", "bench.cold_probe", "--cpus", str(allowed + 1)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert f"--cpus: {allowed + 1} cores asked for; this process may run on {allowed}" in run.stderr
    assert "instances on cores" not in run.stdout
