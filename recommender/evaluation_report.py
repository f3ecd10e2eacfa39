"""Evaluation reports: the run as JSON, a readable markdown table, and a PNG chart comparing models.

A report is the dict `recommender.evaluation.run_evaluation` returns; an optional
`report["references"]` lists published numbers ({"label", "metrics", "source"}) shown beside ours.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Sequence

COLUMN_TITLES = {"precision": "Precision", "recall": "Recall", "ndcg": "NDCG", "map": "MAP",
                 "hit_rate": "HitRate", "coverage": "Coverage", "basket_recall": "Recall (whole basket)",
                 "new_recall": "Recall (new items)", "rebuy_recall": "Recall (re-buys)"}
SUBSETS = ("basket_recall", "new_recall", "rebuy_recall")


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _params(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items() if k != "seed") or "–"


def results_table(report: dict, k: int) -> str:
    """Markdown table of every model (and published reference) at cut-off k."""
    names = ["ndcg", "ndcg_se", "precision", "recall", "map", "hit_rate", "coverage"]
    names += [s for s in SUBSETS if any(f"{s}@{k}" in r["metrics"] for r in report["results"])]
    keys = [f"ndcg@{k}_se" if n == "ndcg_se" else f"{n}@{k}" for n in names]
    header = ["model", *("± s.e." if n == "ndcg_se" else f"{COLUMN_TITLES[n]}@{k}" for n in names), "fit s",
              "parameters"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in report["results"]:
        cells = [r["label"], *(_cell(r["metrics"].get(key)) for key in keys), f"{r['fit_seconds']:.2f}",
                 _params(r["params"])]
        lines.append("| " + " | ".join(cells) + " |")
    for ref in report.get("references", []):
        cells = [f"{ref['label']} (published)", *(_cell(ref["metrics"].get(key)) for key in keys), "–",
                 ref.get("source", "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_markdown(report: dict, level: int = 1) -> str:
    h = "#" * level
    split, signal = report["split"], report["signal"]
    weights = (", ".join(f"{kind}={w:g}" for kind, w in signal["event_weights"].items())
               if split.get("has_kinds", True) else "none (rows without kinds count their own weight)")
    lines = [
        f"{h} {report['title']}",
        "",
        f"Run {report['created_at']} on {report['machine']['platform']} ({report['machine']['cpus']} CPUs, "
        f"Python {report['machine']['python']}).",
        "",
        f"- data: {report['dataset'] or '–'}: {split['users']} users, {split['items']} items; "
        f"{split['train_rows']} training rows, {split['test_rows']} held-out rows",
        f"- split: {split['description']}; {split['evaluated_users']} test users scored",
        f"- signal: event weights {weights}; time decay "
        f"{'half-life ' + format(signal['half_life_days'], 'g') + ' days' if signal['half_life_days'] else 'off'}; "
        f"weighting {signal['weighting']}; "
        + ("buy-it-again mode (past items stay in rankings, re-buys count)" if signal["repeat_purchase"]
           else "past items dropped from rankings"),
    ]
    if report.get("target_kinds"):
        lines.append(f"- hits: held-out {', '.join(report['target_kinds'])} events only")
    for k in report["ks"]:
        lines += ["", f"{h}# Top {k}", "", results_table(report, k)]
    for family, t in report.get("tuning", {}).items():
        chosen = {**t["params"], "weighting": t["weighting"]}
        lines += [
            "", f"{h}# Tuning {family}", "",
            f"- chose {_params(chosen)} after {len(t['trials'])} trials (search seed {t['search_seed']})",
            f"- validation ({t['validation_split']['description']}, carved from the training rows): "
            f"{t['metric']} {t['validation_score']:.4f}, defaults {t['defaults_validation_score']:.4f}",
            f"- test: {t['metric']} {t['test_score']:.4f}",
        ]
        if t.get("saved_to"):
            lines.append(f"- saved to `{t['saved_to']}`")
        best = sorted(t["trials"], key=lambda trial: -trial["score"])[:5]
        lines += ["", f"| trial | validation {t['metric']} |", "|---|---|"]
        lines += [f"| {_params(trial['params'])} | {trial['score']:.4f} |" for trial in best]
    if report.get("notes"):
        lines += ["", *(f"- {note}" for note in report["notes"])]
    return "\n".join(lines) + "\n"


def write_chart(reports: Sequence[dict], path: str | Path, metrics: Sequence[str] = ("ndcg", "recall")) -> Path:
    """One row of horizontal bar panels per report (metrics at its first K); published numbers hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(reports)
    heights = [max(2.5, 0.35 * (len(r["results"]) + len(r.get("references", [])) + 2)) for r in reports]
    fig, axes = plt.subplots(rows, len(metrics), figsize=(5.5 * len(metrics), sum(heights)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for row, report in enumerate(reports):
        k = report["ks"][0]
        for col, metric in enumerate(metrics):
            ax = axes[row][col]
            key = f"{metric}@{k}"
            bars = [(r["label"], r["metrics"].get(key), False) for r in report["results"]]
            bars += [(f"{ref['label']} (published)", ref["metrics"].get(key), True)
                     for ref in report.get("references", [])]
            bars = [(label, value, published) for label, value, published in bars
                    if value is not None and not math.isnan(value)]
            labels = [b[0] for b in bars][::-1]
            values = [b[1] for b in bars][::-1]
            published = [b[2] for b in bars][::-1]
            colors = ["#bbbbbb" if p else ("#1f77b4" if "als" in label else "#7f9fbf")
                      for label, p in zip(labels, published)]
            drawn = ax.barh(labels, values, color=colors, hatch=None)
            for bar, p in zip(drawn, published):
                if p:
                    bar.set_hatch("//")
            for y, value in enumerate(values):
                ax.text(value, y, f" {value:.3f}", va="center", fontsize=8)
            ax.set_xlim(0, max(values + [1e-9]) * 1.2)
            ax.set_title(f"{report.get('chart_title', report['title'])}: {COLUMN_TITLES[metric]}@{k}"
                         if col == 0 else f"{COLUMN_TITLES[metric]}@{k}", fontsize=9, loc="left")
            ax.tick_params(labelsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: dict, out_dir: str | Path, stem: str = "evaluation") -> list[Path]:
    """<out>/<stem>.json, <stem>.md and <stem>.png (the chart only where matplotlib is installed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(_finite(report), indent=2, default=_jsonable, allow_nan=False) + "\n")
    md_path = out / f"{stem}.md"
    if importlib.util.find_spec("matplotlib") is None:  # a development dependency: requirements-dev.txt
        md_path.write_text(report_markdown(report) + "\n(No chart: matplotlib is not installed; "
                           "`pip install -r requirements-dev.txt` adds it.)\n")
        return [json_path, md_path]
    md_path.write_text(report_markdown(report) + f"\n![models compared]({stem}.png)\n")
    return [json_path, md_path, write_chart([report], out / f"{stem}.png")]


def _finite(value):
    """NaN (a metric nobody could be scored on) becomes null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _jsonable(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")

