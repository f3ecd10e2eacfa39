"""bench.nightly_probe, small: the real `python -m recommender train` over a few shops in one night, with the models in
gcp-storage-emulator, and the requests the model store answered counted in its own log."""

from __future__ import annotations

import pytest

from bench import nightly_probe
from tests.conftest import ROOT


def test_a_later_night_costs_each_shop_its_publish_and_one_run_log_whatever_its_history(tmp_path):
    pytest.importorskip("gcp_storage_emulator", reason="the probe needs gcp-storage-emulator (requirements-dev.txt)")

    # 300 shoppers: 24-28 a shop in its last week with a product new to them, the customers the gate ranks (20 needed)
    result = nightly_probe.measure(shops=3, events=3_000, users=300, items=200, nights=1, history=5, rtt_ms=0,
                                   postgres_url=None, code=ROOT, work=tmp_path)

    first, second = result["nights"]
    assert first["trained"] == second["trained"] == 3 and second["failed"] == 0  # the planted tastes pass the gate
    # Each shop, the second night, with six run logs: the logs listed, the newest read (it was published), the
    # pointer's generation; the artifact and its manifest written and read back; the pointer moved; the night's log.
    assert second["downloads"] == 3 * 3
    assert second["uploads"] == 3 * 4
    assert second["requests"] == 3 * 9 + 1  # and once a night, the bucket's own record (google-cloud-storage's first)
    assert first["requests"] == 3 * 8 + 1  # no log to read on the first night


def test_the_nights_each_shop_has_waited_count_from_the_last_night_that_trained_it():
    shops = ["a", "b", "c", "d"]
    nights = [shops, ["a", "b"], ["c"], ["a"]]  # d: only the first night; b: night 1; c: night 2

    assert nightly_probe.waiting_nights(nights, shops) == {"a": 0, "b": 2, "c": 1, "d": 3}


def test_a_night_past_its_timeout_is_killed_and_says_so():
    import sys

    from bench.train_job_probe import measured

    run = measured([sys.executable, "-c", "import time; time.sleep(60)"], {}, ROOT, timeout=0.5)

    assert run["killed"] and run["stdout"] == "" and run["peak_mib"] is None
    assert nightly_probe.night_outcome(run["stdout"]) == {}


def test_two_jobs_at_once_count_each_run_log_they_wrote(tmp_path):
    pytest.importorskip("gcp_storage_emulator", reason="the probe needs gcp-storage-emulator (requirements-dev.txt)")

    result = nightly_probe.measure(shops=3, events=2_000, users=200, items=200, nights=1, history=0, rtt_ms=0,
                                   postgres_url=None, code=ROOT, work=tmp_path, runs=2)

    second = result["nights"][1]
    assert result["runs_at_once"] == 2 and second["shops_trained"] == 3 and second["failed"] == 0
    # each training leaves one run log, published or kept, whichever of the two jobs did it
    assert second["trainings"] == second["trained"] + second["kept"] >= 3
    assert second["shops_trained_twice"] == second["trainings"] - 3


def test_the_outcomes_of_a_nights_jobs_add_up():
    printed = ['{"trained": [1, 2], "other_runs": [3], "deferred": []}', '{"trained": [3], "other_runs": [1, 2]}', ""]

    assert nightly_probe.nights_outcome(printed) == {"trained": 3, "kept": 0, "skipped": 0, "failed": 0,
                                                     "deferred": 0, "other_runs": 3}
