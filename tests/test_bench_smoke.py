"""The performance benchmark's quick mode runs end to end and reports every section (no timing is asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from bench.perf import SECTIONS, headline_figures
from tests.conftest import ROOT


@pytest.mark.timeout(280)
def test_quick_benchmark_reports_every_section_with_positive_numbers(tmp_path):
    run = subprocess.run([sys.executable, "-m", "bench.perf", "--quick", "--out", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=270)

    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads((tmp_path / "perf.json").read_text())
    assert set(SECTIONS) <= set(results)
    figures = headline_figures(results)
    assert set(figures) == set(SECTIONS)
    for section, numbers in figures.items():
        assert numbers, f"{section} reported nothing"
        for name, value in numbers.items():
            assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (section, name, value)
    assert results["goals"] and all(isinstance(goal["met"], bool) for goal in results["goals"])
    assert "## Cold start" in (tmp_path / "perf.md").read_text()


@pytest.mark.timeout(120)
def test_refresh_probe_sees_each_published_model_served_through_the_latency_relay():
    # Act: two rounds on a small model in a real gcp-storage-emulator, behind the relay that adds distance
    run = subprocess.run([sys.executable, "-m", "bench.refresh_probe", "--items", "2000", "--rounds", "2",
                          "--rtt-ms", "2"], cwd=ROOT, capture_output=True, text=True, timeout=110)

    # Assert: the last model published was the one answering, and every row has a positive median
    assert run.returncode == 0, run.stderr[-4000:]
    lines = run.stdout.splitlines()
    assert lines[0].endswith("2 ms added to each round trip), last refresh-probe-1"), lines[0]
    medians = {line[:28].strip(): float(line.split("median")[1].split("ms")[0]) for line in lines[1:]}
    assert set(medians) == {"ordinary", "after a pause, no check due", "check, nothing moved", "check, new model",
                            "new model served after", "slowest until then"}
    assert all(value > 0 for value in medians.values()), medians
