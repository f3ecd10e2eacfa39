"""bench.start_timeline: a real functions-framework start, each step timed from inside its processes, in order."""

from __future__ import annotations

import pytest

from bench import process, synthetic
from bench.start_timeline import events, medians, table


def test_events_keeps_each_events_first_line_and_ignores_the_rest():
    log = "\n".join([
        "[INFO] Starting gunicorn 23.0.0",
        "start-timeline 12.50 100 up",
        "start-timeline 140.25 100 bound",
        "start-timeline 141.00 100 forking",
        "start-timeline 150.75 101 forked",
        "start-timeline 151.00 101 request",
        "start-timeline 999.00 101 request",  # a second occurrence is not the first request's
        "start-timeline 152.5 101 answered",
        "start-timeline 153.0 101 unknown-step",
        "prefix start-timeline 1.0 101 load",  # not at the start of its line
    ])

    assert events(log) == {"up": 12.5, "bound": 140.25, "forking": 141.0, "forked": 150.75, "request": 151.0,
                           "answered": 152.5}


def test_medians_and_table_give_each_steps_median_and_its_gap_after_the_step_before():
    starts = [{"up": 10.0, "bound": 100.0, "listening": 101.0, "first 200": 120.0},
              {"up": 12.0, "bound": 110.0, "listening": 111.0, "first 200": 130.0},
              {"up": 14.0, "bound": 120.0, "listening": 121.0}]  # a start without one step: the others' median

    at = {"floor": medians(starts)}

    assert at["floor"] == {"up": 12.0, "bound": 110.0, "listening": 111.0, "first 200": 125.0}
    assert "| floor | 12.0 | 110.0 | 111.0 |  |  |  |  |  |  |  | 125.0 |" in table(at)
    assert "| floor | +12.0 | +98.0 | +1.0 |  |  |  |  |  |  |  | +14.0 |" in table(at, gaps=True)


def _timed_start(tmp_path, target: str, source, env: dict[str, str], path: str) -> tuple[dict[str, float], object]:
    server = process.spawn(target, source, env, tmp_path / "logs", timeline=True)
    try:
        startup = process.wait_until_serving(server, path, timeout=60)
    finally:
        server.stop()
    steps = process.start_steps(server, startup)
    assert steps.pop("listening") == startup.listen_s * 1000 and steps.pop("first 200") == startup.first_ok_s * 1000
    return steps, startup


@pytest.mark.timeout(90)
def test_a_bare_function_start_is_timed_step_by_step_in_order(tmp_path):
    source = synthetic.write_floor_source(tmp_path / "floor")

    steps, startup = _timed_start(tmp_path, "floor", source, {}, "/")

    order = ["up", "bound", "forking", "forked", "accepting", "request", "answered"]
    assert list(steps) == order, steps  # no model to load
    assert all(steps[a] <= steps[b] for a, b in zip(order, order[1:])), steps
    # bound before the client could connect; a step is written to 0.01 ms, so it may read up to 0.005 ms late (a CI
    # run saw "bound" at 459.18 against the client's 459.1786)
    assert 0 < steps["up"] < steps["bound"] <= startup.listen_s * 1000 + 0.005
    assert steps["answered"] <= startup.first_ok_s * 1000  # answered before the client had the answer


@pytest.mark.timeout(120)
def test_an_instance_start_times_the_workers_first_model_load_inside_its_first_request(tmp_path):
    artifact = synthetic.build_artifact(2_000)
    synthetic.publish_artifact(tmp_path / "models", artifact)
    shop = synthetic.prepare_shop(tmp_path / "shop", artifact, tmp_path / "models", n_customers=3)

    steps, startup = _timed_start(tmp_path, "recommend", process.ROOT / "main.py", shop.env(),
                                  "/?" + shop.storefront_query("personalized", 0))

    order = ["up", "bound", "forking", "forked", "accepting", "request", "load", "loaded", "answered"]
    assert list(steps) == order, steps
    assert all(steps[a] <= steps[b] for a, b in zip(order, order[1:])), steps
    assert steps["answered"] <= startup.first_ok_s * 1000
