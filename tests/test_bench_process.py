"""`bench.process.spawn(..., cores=...)`: a real functions-framework server kept on the cores it is given."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench import process, synthetic
from bench.vcpu_probe import summarize, table, tier_mib
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


@pytest.fixture
def cap_of():
    """`cap_of(vcpu)`: a CPU-capped control group (`process.CpuCap`), removed after the test; the test is skipped
    where this process may not make one (not root, no CPU controller), as on most laptops."""
    made = []

    def make(vcpu: float) -> process.CpuCap:
        try:
            cap = process.CpuCap.create(vcpu)
        except process.CpuCapUnavailable as exc:
            pytest.skip(f"no CPU-capped control group here: {exc}")
        made.append(cap)
        return cap

    yield make
    for cap in made:
        cap.remove()
        assert not cap.path.exists()


def test_a_cpu_cap_holds_a_busy_process_to_its_share_of_each_period(cap_of):
    cap = cap_of(0.2)
    quota_file = "cpu.cfs_quota_us" if cap.version == 1 else "cpu.max"
    assert (cap.path / quota_file).read_text().split()[0] == "20000"  # 0.2 of the 100 ms period
    assert cap.throttling()["throttled"] == 0
    busy = "import time\nstart = time.process_time()\nwhile time.process_time() - start < 0.15:\n    pass\n"
    subprocess.run([sys.executable, "-c", busy], preexec_fn=cap.enter, check=True, timeout=60)
    held = cap.throttling()
    # 150 ms of CPU at 20 ms a period cannot run without being held: at least 7 periods end with it stopped.
    assert held["throttled"] >= 7, held
    assert held["throttled_ms"] > 0


def test_a_server_spawned_in_a_cap_runs_its_master_and_worker_there_and_still_answers(cap_of, tmp_path):
    cap = cap_of(0.5)
    server = process.spawn("floor", synthetic.write_floor_source(tmp_path / "floor"), {}, tmp_path / "logs",
                           threads=1, cap=cap)
    try:
        process.wait_until_serving(server, "/")
        pids = server.pids()
        assert len(pids) >= 2, server.output()
        for pid in pids:
            groups = [line.split(":", 2)[2] for line in open(f"/proc/{pid}/cgroup").read().splitlines()]
            assert any(group.endswith("/" + cap.path.name) for group in groups), groups
        assert cap.throttling()["periods"] > 0  # the group's quota has been running
    finally:
        server.stop()
    own = open("/proc/self/cgroup").read()
    assert cap.path.name not in own  # the caller stays where it was


@pytest.mark.parametrize("vcpus, message", [("0", "each share between 0.01 and 1"),
                                            ("1.5", "each share between 0.01 and 1"),
                                            ("half", "numbers separated by commas")])
def test_vcpu_probe_refuses_a_share_it_cannot_emulate_before_building_anything(vcpus, message):
    run = subprocess.run([sys.executable, "-m", "bench.vcpu_probe", "--vcpus", vcpus], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr


def test_vcpu_probe_summary_pools_every_starts_requests_and_sets_ours_beside_the_floor():
    def run(first_ok_s, paced_ms, busy_ms, per_s, cpu_ms, throttled, periods):
        return {"first_ok_s": first_ok_s, "start_cpu_s": first_ok_s / 5, "start_throttled_ms": 10.0,
                "paced_s": [v / 1e3 for v in paced_ms], "paced_throttled": 0, "busy_s": [v / 1e3 for v in busy_ms],
                "busy_per_s": per_s, "busy_cpu_ms": cpu_ms, "busy_throttled": throttled, "busy_periods": periods}

    figures = summarize({
        "floor": [run(1.0, [2, 3], [1, 1], 800, 0.5, 0, 4), run(2.0, [2, 2], [1, 1], 600, 0.7, 0, 4),
                  run(3.0, [4, 2], [1, 1], 700, 0.6, 0, 4)],
        "recommend": [run(1.5, [5, 6], [3, 90], 300, 1.4, 3, 4), run(3.0, [5, 8], [3, 3], 200, 1.6, 1, 4),
                      run(4.5, [5, 5], [3, 3], 250, 1.5, 0, 4)],
    }, share=0.167)
    ours, floor = figures["recommend"], figures["floor"]
    assert (ours["first_ok_s"], floor["first_ok_s"]) == (3.0, 2.0)
    assert ours["first_ok_range_s"] == [1.5, 4.5]
    # Six paced requests a side, pooled: the nearest-rank p99 is the slowest of them.
    assert (ours["paced"]["n"], ours["paced"]["p50_ms"], ours["paced"]["p99_ms"]) == (6, 5.0, 8.0)
    assert (floor["paced"]["p50_ms"], floor["paced"]["p99_ms"]) == (2.0, 4.0)
    assert ours["busy"]["max_ms"] == 90.0
    assert (ours["busy_per_s"], ours["busy_cpu_ms"], ours["busy_throttled_share"]) == (250, 1.5, 0.33)
    assert (ours["start_cpu_s"], floor["start_cpu_s"]) == (0.6, 0.4)
    assert figures["ratios"] == {"start": 1.5, "start_cpu": 1.5, "paced_p99": 2.0, "busy_per_s": 0.36}
    # 0.167 vCPU is the 256 MiB tier's. 1.5 ms of CPU is 8.98 ms there at $0.0000046330 a second (0.167 × $0.000024
    # + 0.25 GiB × $0.0000025), plus $0.40 per million requests: $0.44; an isolated request is billed 100 ms: $0.86.
    assert figures["cost"]["tier_mib"] == 256
    assert (figures["cost"]["busy_usd_per_million"], figures["cost"]["isolated_usd_per_million"]) == (0.44, 0.86)
    row = table({"0.167": figures}).splitlines()[2]
    assert row.startswith("| 0.167 | 3.000 s (2.000) | 1.5× (1.5×) | 5.0 / 8.0 ms (2.0 / 4.0) | 0 | 3.0 / 90.0 ms |")
    assert row.endswith("| 0.44 / 0.86 (256 MiB) |")


def test_vcpu_probe_prices_each_share_on_the_tier_that_comes_with_it_and_one_vcpu_as_deployed():
    assert [tier_mib(share) for share in (0.167, 0.333, 0.583, 1.0, 0.5)] == [256, 512, 1024, 512, 512]


def test_a_bench_run_writes_to_a_postgresql_schema_of_its_own_which_is_dropped_after_it(monkeypatch):
    from recommender.store import open_event_store
    from tests.postgres_schema import run, server_url

    shared = server_url()  # a skip, with the reason, where no server is configured
    monkeypatch.setenv("TEST_POSTGRES_URL", shared)
    said = []

    with process.postgres_of_its_own(said.append):
        inside = os.environ["TEST_POSTGRES_URL"]
        schema = inside.rpartition("search_path%3D")[2]
        store = open_event_store(inside)
        try:
            store.set_shop_installed("bench-own-schema.myshopify.com", True)
        finally:
            store.close()
        tables = run(shared, "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s", (schema,))
        marked = run(shared, f"SELECT installed FROM {schema}.shop_state WHERE shop = 'bench-own-schema.myshopify.com'")

    assert schema.startswith("bench_") and inside != shared and said == []
    assert tables[0][0] > 0 and marked == [(True,)]
    assert os.environ["TEST_POSTGRES_URL"] == shared
    assert run(shared, "SELECT count(*) FROM information_schema.schemata WHERE schema_name = %s", (schema,)) == [(0,)]


def test_without_postgresql_a_bench_run_changes_nothing(monkeypatch):
    monkeypatch.delenv("TEST_POSTGRES_URL", raising=False)

    with process.postgres_of_its_own():
        inside = os.environ.get("TEST_POSTGRES_URL")

    assert inside is None and "TEST_POSTGRES_URL" not in os.environ
