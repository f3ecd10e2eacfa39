"""bench.first_load_probe and bench.many_shops_probe on small shops (what they count; no timing asserted)."""

from __future__ import annotations

from bench import first_load_probe, many_shops_probe


def test_the_first_load_probe_times_every_case_of_a_round():
    rounds = first_load_probe.measure(1, big_items=20_000, small_items=2_000, like_shops=2, like_items=5_000)

    assert len(rounds) == 1
    assert set(rounds[0]) == {"small alone", "big alone", "one like shop alone", "small behind big",
                              "big with small beside it", "like shops at once, mean", "like shops at once, slowest"}
    assert all(took > 0 for took in rounds[0].values())
    assert rounds[0]["like shops at once, slowest"] >= rounds[0]["like shops at once, mean"]


def test_the_many_shops_probe_lets_models_go_only_under_a_budget_and_never_for_a_shop_kept():
    # Three shops, a budget too small for two models: each first load after the first lets the last one go, and so
    # does each load of the second pass; the hot phase asks the one shop in memory over and over.
    runs = many_shops_probe.measure(shops=3, items=5_000, budget_mib=1, hot=1)

    plain, budgeted = runs["no budget"], runs["MODEL_MEMORY_MIB=1"]
    assert [plain[phase]["times_let_go"] for phase in ("pass 1", "pass 2", "hot")] == [0, 0, 0]
    assert budgeted["pass 1"]["times_let_go"] >= 2
    assert budgeted["pass 2"]["times_let_go"] >= 3
    assert budgeted["hot"]["times_let_go"] == 0
    assert all(run[phase]["pss_mib"] > 0 for run in runs.values() for phase in ("pass 1", "pass 2", "hot"))


def test_the_many_shops_probe_asks_personalized_answers_for_a_shopper_with_history():
    runs = many_shops_probe.measure(shops=2, items=5_000, budget_mib=1, hot=1, intent="personalized")

    # each answer was checked to be personalized (the probe raises otherwise); the budget let go as with related.
    # (5,000 items: below HEAD_MIN_ITEMS, no NormHead is timed; tests/test_model_memory.py covers that.)
    assert runs["MODEL_MEMORY_MIB=1"]["pass 2"]["times_let_go"] >= 2
    assert runs["no budget"]["pass 2"]["times_let_go"] == 0
