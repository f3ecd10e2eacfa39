"""Offline evaluation: models ranked on held-out interactions, hyperparameters tuned, a quality gate.

    split  = temporal_split(Interactions.from_store(store.interactions(shop)), holdout_days=14)
    report = run_evaluation(split, ["pop", "trending", "als", "bpr"], SignalConfig(), TrainingConfig(), ks=(10, 20))

Protocol: each model is fitted on the training rows (engineered by `SignalConfig`), then ranks
every item for each test user; the user's training items are dropped from their ranking (kept
in "buy it again" mode, where re-buys count as hits); items never seen in training cannot be
shown. Metrics are those of `recommender.metrics`, averaged over test users with a relevant item.

Tuning chooses on a validation split carved from the training rows only (`tune` is never given
the test rows); the choice is saved as JSON and read back with `load_tuned_config`.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from recommender.events import EventKind
from recommender.metrics import hit_matrix, ranking_metrics, recall_at_k
from recommender.offline_data import (
    WEIGHTINGS, EvaluationError, Interactions, SignalConfig, Split, SplitProtocol, build_signal_matrix,
    files_split, read_interaction_files,
)
from recommender.offline_models import ALS_PARAMS, MODEL_NAMES, BPRConfig, FitContext, RankingModel, build_model
from recommender.settings import TrainingConfig
from recommender.store import Interaction


DEFAULT_MODELS = ("pop", "trending", "cosine", "bm25", "als", "bpr")
TUNED_CONFIG_FORMAT = 1


# --- one model on one split ------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Targets:
    """What a split asks of every model: which users, which items count, which items are dropped.

    users:    int[n] test users with at least one relevant item
    relevant: per user, the held-out items that count as hits
    exclude:  users × items to drop from rankings (the training rows), or None in "buy it again" mode
    subsets:  when held-out items include re-buys: per user, "basket" (all), "new" and "rebuy" items
    """

    users: np.ndarray
    relevant: list[np.ndarray]
    exclude: sp.csr_matrix | None
    subsets: dict[str, list[np.ndarray]]


def _rows(matrix: sp.csr_matrix, users: np.ndarray) -> list[np.ndarray]:
    return [matrix.indices[matrix.indptr[u]:matrix.indptr[u + 1]].copy() for u in users]


def build_targets(split: Split, signal: SignalConfig, target_kinds: Sequence[str] | None = None) -> Targets:
    test = split.test
    if target_kinds is not None and test.kinds is not None:
        test = test.select(np.isin(test.kinds, list(target_kinds)))
    held_out = test.binary_matrix()
    seen = split.train.binary_matrix()
    rebuys = held_out.multiply(seen).tocsr()
    new = (held_out - rebuys).tocsr()
    new.eliminate_zeros()
    relevant_matrix = held_out if signal.repeat_purchase else new
    users = np.flatnonzero(np.diff(relevant_matrix.indptr) > 0)
    subsets = {}
    if rebuys.nnz:
        subsets = {"basket": _rows(held_out, users), "new": _rows(new, users), "rebuy": _rows(rebuys, users)}
    return Targets(users, _rows(relevant_matrix, users), None if signal.repeat_purchase else seen, subsets)


@dataclass(frozen=True)
class ModelResult:
    label: str  # as shown in the table, e.g. "als" or "als (tuned)"
    model: str
    params: dict
    metrics: dict[str, float]
    fit_seconds: float
    recommend_seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def subset_recalls(recommended: np.ndarray, subsets: Mapping[str, list[np.ndarray]], ks: Sequence[int]) -> dict:
    """Recall@K over each subset of the held-out items, each over the users who have any of it."""
    result = {}
    for name, relevant in subsets.items():
        counts = np.fromiter((len(r) for r in relevant), dtype=np.int64, count=len(relevant))
        keep = counts > 0
        if not keep.any():
            continue
        hits = hit_matrix(recommended[keep], [r for r, k in zip(relevant, keep) if k])
        for k in ks:
            result[f"{name}_recall@{k}"] = float(recall_at_k(hits, counts[keep], k).mean())
    return result


def evaluate_model(model: RankingModel, split: Split, signal: SignalConfig, ks: Sequence[int],
                   targets: Targets | None = None, label: str | None = None,
                   user_items: sp.csr_matrix | None = None) -> ModelResult:
    """Fit on the split's training rows, rank for its test users, score the top max(ks)."""
    ks = sorted(set(ks))
    targets = targets or build_targets(split, signal)
    if not len(targets.users):
        raise EvaluationError("no test user has a held-out item to find: the test split is empty for this protocol")
    if user_items is None:
        user_items = build_signal_matrix(split.train, signal, split.reference_time)
    started = time.perf_counter()
    model.fit(user_items, FitContext(split.train, signal, split.reference_time))
    fitted = time.perf_counter()
    recommended = model.recommend(targets.users, user_items, max(ks), exclude=targets.exclude)
    done = time.perf_counter()
    metrics = ranking_metrics(recommended, targets.relevant, ks, split.train.n_items)
    metrics.update(subset_recalls(recommended, targets.subsets, ks))
    return ModelResult(label or model.name, model.name, model.params(), metrics,
                       round(fitted - started, 3), round(done - fitted, 3))


# --- tuning ----------------------------------------------------------------------------------------

SEARCH_SPACES: dict[str, dict[str, tuple]] = {
    "als": {
        "factors": (8, 16, 32, 64, 128),
        "regularization": (0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
        "alpha": (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0),
        "iterations": (10, 15, 25),
        "weighting": WEIGHTINGS,
    },
    "bpr": {
        "factors": (32, 64, 128),
        "learning_rate": (0.005, 0.01, 0.05),
        "regularization": (0.0001, 0.001, 0.01),
        "iterations": (50, 100, 200),
    },
}


@dataclass(frozen=True)
class TuningResult:
    family: str
    params: dict  # the model's hyperparameters (seed included)
    weighting: str  # the signal weighting chosen with them
    metric: str  # e.g. "ndcg@10", measured on the validation split
    validation_score: float
    defaults_validation_score: float  # the first trial is always the current defaults
    trials: list[dict]
    validation_split: dict
    search_seed: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _defaults(family: str, training: TrainingConfig, signal: SignalConfig) -> dict:
    if family == "als":
        return {"factors": training.factors, "regularization": training.regularization, "alpha": training.alpha,
                "iterations": training.iterations, "weighting": signal.weighting}
    defaults = BPRConfig()
    return {"factors": defaults.factors, "learning_rate": defaults.learning_rate,
            "regularization": defaults.regularization, "iterations": defaults.iterations}


def _candidates(space: Mapping[str, tuple], defaults: dict, rng: np.random.Generator, random_trials: int):
    """Defaults first, then `random_trials` distinct grid points in a seeded random order."""
    yield defaults
    grid = list(itertools.product(*space.values()))
    for index in rng.permutation(len(grid))[:random_trials]:
        yield dict(zip(space, grid[index]))


def _neighbours(space: Mapping[str, tuple], best: dict):
    """Grid points one step away from `best` along one parameter, in a fixed order."""
    for name, values in space.items():
        if best[name] not in values:
            continue
        at = values.index(best[name])
        for step in (-1, 1):
            if 0 <= at + step < len(values):
                yield {**best, name: values[at + step]}


def tune(train: Interactions, protocol: SplitProtocol, signal: SignalConfig, family: str = "als",
         training: TrainingConfig = TrainingConfig(), trials: int = 24, seed: int = 42, k: int = 10,
         metric: str = "ndcg", weightings: Sequence[str] = WEIGHTINGS, target_kinds: Sequence[str] | None = None,
         progress: bool = False) -> TuningResult:
    """Seeded search over SEARCH_SPACES[family], scored on a validation split carved from `train` alone.

    Half the budget samples the grid at random, the rest walks one step at a time from the best
    so far; the first trial is the current defaults, so the choice is never worse than them on
    validation. The same data, protocol and seed always give the same choice.
    """
    if family not in SEARCH_SPACES:
        raise EvaluationError(f"tuning supports {', '.join(SEARCH_SPACES)}, got {family!r}")
    if trials < 1:
        raise EvaluationError(f"trials must be >= 1, got {trials}")
    space = dict(SEARCH_SPACES[family])
    if "weighting" in space:
        unknown = set(weightings) - set(WEIGHTINGS)
        if unknown or not weightings:
            raise EvaluationError(f"weightings must be among {', '.join(WEIGHTINGS)}, got {list(weightings)}")
        space["weighting"] = tuple(w for w in WEIGHTINGS if w in weightings)
    validation = protocol.validation().split(train)
    targets = build_targets(validation, signal, target_kinds)
    if not len(targets.users):
        raise EvaluationError("the validation split carved from the training rows has no user to score; "
                              "more data or a longer holdout is needed to tune")
    key = f"{metric}@{k}"
    defaults = _defaults(family, training, signal)
    if "weighting" in space and defaults["weighting"] not in space["weighting"]:
        defaults["weighting"] = space["weighting"][0]
    matrices: dict[str, sp.csr_matrix] = {}
    tried: dict[tuple, float] = {}
    history: list[dict] = []

    def score(candidate: dict) -> float:
        weighting = candidate.get("weighting", "none")
        if weighting not in matrices:
            weighted = dataclasses.replace(signal, weighting=weighting)
            matrices[weighting] = build_signal_matrix(validation.train, weighted, validation.reference_time)
        params = {name: value for name, value in candidate.items() if name != "weighting"}
        model = build_model(family, {**params, "seed": training.seed if family == "als" else seed}, training)
        trial_signal = dataclasses.replace(signal, weighting=weighting)
        result = evaluate_model(model, validation, trial_signal, [k], targets, user_items=matrices[weighting])
        return result.metrics[key]

    rng = np.random.default_rng(seed)
    random_budget = trials // 2
    bar = _progress(total=trials, desc=f"tuning {family}", enabled=progress)
    try:
        queue = iter(_candidates(space, defaults, rng, random_budget))
        while len(history) < trials:
            candidate = next(queue, None)
            if candidate is None:  # random phase done: step from the best so far
                best = max(history, key=lambda t: t["score"])["params"]
                fresh = [c for c in _neighbours(space, best) if tuple(sorted(c.items())) not in tried]
                if not fresh:
                    break
                queue = iter(fresh)
                continue
            signature = tuple(sorted(candidate.items()))
            if signature in tried:
                continue
            tried[signature] = value = score(candidate)
            history.append({"params": dict(candidate), "score": value})
            bar.set_postfix({key: f"{max(t['score'] for t in history):.4f}"}, refresh=False)
            bar.update(1)
    finally:
        bar.close()
    best_trial = max(history, key=lambda t: t["score"])  # first best wins ties: earlier trials are simpler defaults
    chosen = dict(best_trial["params"])
    weighting = chosen.pop("weighting", "none")
    chosen["seed"] = training.seed if family == "als" else seed
    return TuningResult(family, chosen, weighting, key, best_trial["score"], history[0]["score"], history,
                        validation.summary(), seed)


# --- tuned configuration file ----------------------------------------------------------------------


def save_tuned_config(path: str | Path, result: TuningResult, signal: SignalConfig, test_score: float | None,
                      split: dict | None = None) -> Path:
    """Write the chosen ALS configuration as JSON (written to a temporary name, then renamed)."""
    if result.family != "als":
        raise EvaluationError("only an ALS tuning result is a training configuration")
    path = Path(path)
    document = {
        "format": TUNED_CONFIG_FORMAT,
        "algorithm": "als",
        "hyperparameters": {name: result.params[name] for name in ALS_PARAMS},
        "signal": {"weighting": result.weighting, "bm25_k1": signal.bm25_k1, "bm25_b": signal.bm25_b,
                   "half_life_days": signal.half_life_days, "event_weights": dict(signal.event_weights)},
        "selection": {"metric": result.metric, "validation": result.validation_score,
                      "defaults_validation": result.defaults_validation_score, "test": test_score,
                      "trials": len(result.trials), "search_seed": result.search_seed,
                      "validation_split": result.validation_split, "split": split},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)
    return path


def load_tuned_config(path: str | Path) -> dict:
    """Read a tuned configuration, validated as the environment's ALS_* settings are.

    Returns {"factors", "regularization", "alpha", "iterations", "seed", "event_weights" ({kind: weight}),
    "weighting" ("none" | "bm25" | "tfidf"), "bm25_k1", "bm25_b", "half_life_days" (None or days)}.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"{path}: cannot read the tuned configuration: {exc}") from None
    if (not isinstance(document, dict) or document.get("format") != TUNED_CONFIG_FORMAT
            or document.get("algorithm") != "als"):
        raise EvaluationError(f"{path}: not a tuned ALS configuration of format {TUNED_CONFIG_FORMAT}")
    hyper, signal = document.get("hyperparameters"), document.get("signal")
    if not isinstance(hyper, dict) or not isinstance(signal, dict):
        raise EvaluationError(f"{path}: hyperparameters and signal must be objects")

    def number(section: dict, name: str, kind: type, valid, expected: str):
        value = section.get(name)
        wrong_type = isinstance(value, bool) or not isinstance(value, int if kind is int else (int, float))
        if wrong_type or not valid(value):
            raise EvaluationError(f"{path}: {name} must be {expected}, got {value!r}")
        return kind(value)

    config = {
        "factors": number(hyper, "factors", int, lambda v: 1 <= v <= 1024, "an integer from 1 to 1024"),
        "regularization": number(hyper, "regularization", float, lambda v: v >= 0, "a number >= 0"),
        "alpha": number(hyper, "alpha", float, lambda v: v > 0, "a number > 0"),
        "iterations": number(hyper, "iterations", int, lambda v: 1 <= v <= 500, "an integer from 1 to 500"),
        "seed": number(hyper, "seed", int, lambda v: v >= 0, "an integer >= 0"),
        "bm25_k1": number(signal, "bm25_k1", float, lambda v: v >= 0, "a number >= 0"),
        "bm25_b": number(signal, "bm25_b", float, lambda v: 0 <= v <= 1, "a number from 0 to 1"),
    }
    if signal.get("weighting") not in WEIGHTINGS:
        raise EvaluationError(
            f"{path}: weighting must be one of {', '.join(WEIGHTINGS)}, got {signal.get('weighting')!r}")
    config["weighting"] = signal["weighting"]
    half_life = signal.get("half_life_days")
    config["half_life_days"] = None if half_life is None else number(signal, "half_life_days", float,
                                                                     lambda v: v > 0, "null or a number > 0")
    weights = signal.get("event_weights")
    if not isinstance(weights, dict) or not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights.values()):
        raise EvaluationError(f"{path}: event_weights must map kinds to numbers >= 0, got {weights!r}")
    config["event_weights"] = {str(kind): float(w) for kind, w in weights.items()}
    return config


def tuned_training_config(path: str | Path, base: TrainingConfig) -> TrainingConfig:
    """`base` with the tuned hyperparameters and the event weights of known kinds applied."""
    tuned = load_tuned_config(path)
    weights = dict(base.event_weights)
    for kind in EventKind:
        if kind.value in tuned["event_weights"]:
            weights[kind] = tuned["event_weights"][kind.value]
    return base._replace(event_weights=weights, **{name: tuned[name] for name in ALS_PARAMS})


# --- a whole run -----------------------------------------------------------------------------------


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def machine_summary() -> dict:
    return {"python": platform.python_version(), "platform": platform.platform(), "processor": platform.machine(),
            "cpus": os.cpu_count()}


def run_evaluation(split: Split, models: Sequence[str], signal: SignalConfig, training: TrainingConfig,
                   ks: Sequence[int] = (10,), model_params: Mapping[str, Mapping] | None = None,
                   tune_families: Sequence[str] = (), trials: int = 24, seed: int = 42,
                   weightings: Sequence[str] = WEIGHTINGS, target_kinds: Sequence[str] | None = None,
                   title: str = "Offline evaluation", dataset: str = "", progress: bool = False,
                   save_config: str | Path | None = None) -> dict:
    """Every model on the same split and signal, plus each tuned family; returns the report as a dict.

    The tuned models are chosen by `tune` on the training rows, then refitted on all of them and
    scored once on the test rows. `report["tuning"][family]` holds the choice, its validation score
    and that test score; a tuned ALS configuration is written to `save_config` when given.
    """
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise EvaluationError(f"K must be a list of integers >= 1, got {ks}")
    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown:
        raise EvaluationError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODEL_NAMES)}")
    model_params = model_params or {}
    notes = []
    if "trending" in models and split.train.timestamps is None:
        models = [m for m in models if m != "trending"]
        notes.append("trending skipped: the data has no timestamps")
    targets = build_targets(split, signal, target_kinds)
    if not len(targets.users):
        raise EvaluationError("no test user has a held-out item to find (after dropping users without "
                              "training rows" + ("" if signal.repeat_purchase else " and items they already had") + ")")
    user_items = build_signal_matrix(split.train, signal, split.reference_time)
    results: list[ModelResult] = []
    tuning: dict[str, dict] = {}
    steps = len(models) + len(tune_families)
    bar = _progress(total=steps, desc="evaluating", enabled=progress)
    try:
        for name in models:
            bar.set_description(f"evaluating {name}")
            model = build_model(name, model_params.get(name), training)
            results.append(evaluate_model(model, split, signal, ks, targets, user_items=user_items))
            bar.update(1)
        for family in tune_families:
            bar.set_description(f"tuning {family}")
            result = tune(split.train, split.protocol, signal, family, training, trials, seed, ks[0],
                          weightings=weightings, target_kinds=target_kinds, progress=progress)
            tuned_signal = dataclasses.replace(signal, weighting=result.weighting)
            model = build_model(family, result.params, training)
            tuned = evaluate_model(model, split, tuned_signal, ks, targets, label=f"{family} (tuned)")
            results.append(dataclasses.replace(tuned, params={**tuned.params, "weighting": result.weighting}))
            tuning[family] = {**result.to_dict(), "test_score": tuned.metrics[result.metric]}
            if family == "als" and save_config is not None:
                saved = save_tuned_config(save_config, result, signal, tuned.metrics[result.metric], split.summary())
                tuning[family]["saved_to"] = str(saved)
            bar.update(1)
    finally:
        bar.close()
    return {
        "title": title,
        "dataset": dataset,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_summary(),
        "split": {**split.summary(), "evaluated_users": int(len(targets.users))},
        "signal": signal.to_dict(),
        "target_kinds": None if target_kinds is None else list(target_kinds),
        "ks": ks,
        "results": [r.to_dict() for r in results],
        "tuning": tuning,
        "notes": notes,
    }


# --- the quality gate ------------------------------------------------------------------------------


@dataclass(frozen=True)
class QualityGate:
    """The candidate ALS against best sellers and trending items on a holdout."""

    metric: str  # e.g. "ndcg@10"
    candidate: dict[str, float]
    popularity: dict[str, float]
    trending: dict[str, float] | None  # None when the interactions carry no time
    beats_popularity: bool
    beats_trending: bool | None
    passed: bool  # beats every baseline that could run
    users: int  # holdout users scored
    holdout_users: int | None = None  # holdout users there were to score, when `users` is a sample of them

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def compare_to_baseline(train: Sequence[Interaction] | Interactions, holdout: Sequence[Interaction] | Interactions,
                        config: TrainingConfig, k: int = 10, metric: str = "ndcg", min_lift: float = 0.0,
                        trending_half_life_days: float = 7.0, max_users: int | None = None,
                        min_users: int = 1) -> QualityGate:
    """Would a model trained with `config` beat the baselines on `holdout`?

    `train` and `holdout` are the event store's rows (or two `Interactions` over one index space).
    The candidate beats a baseline when its metric@k exceeds the baseline's by more than `min_lift`
    (relative: 0.05 asks for 5 % more). Raises EvaluationError when fewer than `min_users` holdout users (at
    least one) have training rows and an item new to them: those are the users ranked.
    With more than `max_users` holdout users, every model is scored on the same sample of that many, drawn with
    `config.seed`: ranking is the gate's cost that grows with the shop (users × items).
    """
    if isinstance(train, Interactions) != isinstance(holdout, Interactions):
        raise EvaluationError("train and holdout must both be store interactions or both Interactions")
    if not isinstance(train, Interactions):
        rows = list(train) + list(holdout)
        data = Interactions.from_store(rows)
        is_train = np.arange(len(rows)) < len(train)
        train, holdout = data.select(is_train), data.select(~is_train)
    split = files_split(train, holdout, seed=config.seed)
    signal = SignalConfig(event_weights={kind.value: w for kind, w in config.event_weights.items()})
    key = f"{metric}@{k}"
    targets = build_targets(split, signal)
    if not len(targets.users):
        raise EvaluationError("no holdout customer has training history and a new item: nothing to compare on")
    holdout_users = len(targets.users)
    if holdout_users < min_users:
        raise EvaluationError(f"{holdout_users} holdout customers have training history and a product new to them; "
                              f"the gate needs {min_users}")
    if max_users is not None and max_users < 1:
        raise ValueError(f"max_users must be None or at least 1, got {max_users}")
    if max_users is not None and holdout_users > max_users:
        targets = sample_targets(targets, max_users, config.seed)
    user_items = build_signal_matrix(split.train, signal, split.reference_time)

    def run(model: RankingModel) -> dict[str, float]:
        return evaluate_model(model, split, signal, [k], targets, user_items=user_items).metrics

    candidate = run(build_model("als", {}, config))
    popularity = run(build_model("pop"))
    trending = (run(build_model("trending", {"half_life_days": trending_half_life_days}))
                if split.train.timestamps is not None else None)
    beats_popularity = candidate[key] > popularity[key] * (1.0 + min_lift)
    beats_trending = None if trending is None else candidate[key] > trending[key] * (1.0 + min_lift)
    return QualityGate(key, candidate, popularity, trending, beats_popularity, beats_trending,
                       beats_popularity and beats_trending is not False, int(len(targets.users)),
                       holdout_users if len(targets.users) < holdout_users else None)


def sample_targets(targets: Targets, size: int, seed: int) -> Targets:
    """`size` of the targets' users, drawn with `seed` and kept in their order, with their relevant items."""
    size = min(size, len(targets.users))
    picked = np.sort(np.random.default_rng(seed).choice(len(targets.users), size, replace=False))
    return dataclasses.replace(
        targets, users=targets.users[picked], relevant=[targets.relevant[i] for i in picked.tolist()],
        subsets={name: [rows[i] for i in picked.tolist()] for name, rows in targets.subsets.items()})


# --- command line ----------------------------------------------------------------------------------


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _ks(text: str) -> list[int]:
    try:
        ks = [int(part) for part in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--k must be integers separated by commas, e.g. 10,20; got {text!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"--k values must be >= 1, got {text!r}")
    return ks


EVALUATE_EPILOG = """\
files (--train/--test): a header row, delimiter sniffed (comma, tab, semicolon or pipe); columns
  user, item          required (aliases user_id/customer_id, item_id/product_id)
  weight              optional number >= 0, default 1 (aliases rating, quantity)
  timestamp           optional: seconds since the epoch or ISO 8601, UTC without an offset
                      (aliases occurred_at, time); needed by trending and time decay
  kind                optional: view, add_to_cart, purchase, weighted by EVENT_WEIGHTS (x weight)
  Test rows of users absent from the training file are left out; items a user has in the
  training file are dropped from their ranking (kept with --repeat-purchase).

writes <out>/evaluation.json, evaluation.md, evaluation.png; with --tune also the tuned ALS
configuration (--save-config) that recommender.evaluation.load_tuned_config reads.
"""


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Rank held-out interactions with several models and compare standard metrics."
    parser.epilog = EVALUATE_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    source = parser.add_argument_group("data (one of)")
    source.add_argument("--shop", help="evaluate on this shop's stored events (EVENT_STORE_URL)")
    source.add_argument("--train", metavar="FILE",
                        help="training interactions: CSV/TSV with user,item[,weight,timestamp,kind]")
    source.add_argument("--test", metavar="FILE", help="held-out interactions, same columns as --train")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--holdout-days", type=float, help="with --shop: hold out the last N days (default 14)")
    split.add_argument("--last-order", action="store_true", help="with --shop: hold out each customer's last order")
    parser.add_argument("--k", type=_ks, default=[10, 20], help="cut-offs, e.g. 10,20 (default)")
    parser.add_argument("--models", type=_csv, default=list(DEFAULT_MODELS),
                        help=f"comma-separated, from {','.join(MODEL_NAMES)} (default {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--tune", action="store_true", help="tune ALS on a validation split of the training data")
    parser.add_argument("--tune-bpr", action="store_true", help="also tune BPR")
    parser.add_argument("--trials", type=int, default=24, help="tuning budget per family (default 24)")
    parser.add_argument("--tune-weightings", type=_csv,
                        help="weightings the tuner may choose (default none,bm25,tfidf; none alone when the choice "
                             "is saved where `train` reads it, which applies no weighting)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the search (default 42)")
    parser.add_argument("--save-config", metavar="PATH",
                        help="where the tuned configuration goes "
                             "(default <model store>/<shop>/tuned.json, or <out>/tuned.json)")
    parser.add_argument("--weighting", choices=WEIGHTINGS, default="none", help="reweight the matrix (default none)")
    parser.add_argument("--half-life-days", type=float, help="decay events by age (default: no decay)")
    parser.add_argument("--trending-half-life-days", type=float, default=7.0, help="trending's half-life (default 7)")
    parser.add_argument("--repeat-purchase", action="store_true",
                        help="'buy it again': keep past items in rankings and count re-buys as hits")
    parser.add_argument("--target-kinds", type=_csv,
                        help="held-out kinds that count as hits, e.g. purchase (default all)")
    parser.add_argument("--out", default="./data/evaluation", help="report folder (default ./data/evaluation)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_evaluate_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """`python -m recommender evaluate`: split, evaluate, optionally tune, write the reports."""
    from recommender.evaluation_report import write_report
    from recommender.settings import Settings

    settings = Settings.from_mapping(env)
    training = settings.training
    if bool(args.shop) == bool(args.train or args.test):
        raise EvaluationError("give either --shop or both --train and --test")
    if args.train and not args.test or args.test and not args.train:
        raise EvaluationError("--train and --test go together")
    if not args.shop and (args.holdout_days is not None or args.last_order):
        raise EvaluationError("--holdout-days and --last-order split a shop's events; with files the split is given")
    signal = SignalConfig(event_weights={kind.value: w for kind, w in training.event_weights.items()},
                          half_life_days=args.half_life_days, weighting=args.weighting,
                          repeat_purchase=args.repeat_purchase)
    models = list(args.models)
    if args.shop:
        from recommender.model_store import check_shop_domain
        from recommender.offline_data import last_order_split, temporal_split
        from recommender.store import open_event_store

        shop = check_shop_domain(args.shop)
        store = open_event_store(settings.event_store_url)
        try:
            data = Interactions.from_store(store.interactions(shop))
        finally:
            store.close()
        if not len(data):
            raise EvaluationError(f"shop {shop} has no stored events")
        holdout_days = 14.0 if args.holdout_days is None else args.holdout_days  # 0 is refused, not the default
        split = last_order_split(data) if args.last_order else temporal_split(data, holdout_days)
        dataset = shop
    else:
        train, test = read_interaction_files(args.train, args.test)
        if train.kinds is not None:  # a kind EVENT_WEIGHTS does not weigh counts 0: its rows would train nothing
            unknown = sorted((set(train.kinds.tolist()) | set(test.kinds.tolist())) - set(signal.event_weights))
            if unknown:
                raise EvaluationError(f"kind(s) {', '.join(unknown)} in the files are not weighed by EVENT_WEIGHTS "
                                      f"({', '.join(signal.event_weights)}): write one of those, "
                                      "or leave the kind column out")
        split = files_split(train, test, seed=args.seed)
        dataset = f"{args.train} / {args.test}"
    families = (["als"] if args.tune else []) + (["bpr"] if args.tune_bpr else [])
    out = Path(args.out)
    if args.save_config:
        config_path = Path(args.save_config)
    elif args.shop and settings.model_store_url.startswith("file://"):
        config_path = Path(settings.model_store_url[len("file://"):]) / args.shop / "tuned.json"
    else:
        config_path = out / "tuned.json"
    weightings = args.tune_weightings
    if weightings is None:  # hyperparameters tuned under bm25 are not the best ones for train's unweighted matrix
        weightings = ["none"] if args.tune and _read_by_train(config_path, settings.model_store_url) else list(WEIGHTINGS)
    report = run_evaluation(split, models, signal, training, args.k,
                            model_params={"trending": {"half_life_days": args.trending_half_life_days}},
                            tune_families=families, trials=args.trials, seed=args.seed,
                            weightings=weightings, target_kinds=args.target_kinds,
                            title=f"Offline evaluation: {dataset}", dataset=dataset,
                            progress=not args.no_progress, save_config=config_path if args.tune else None)
    paths = write_report(report, out, stem="evaluation")
    saved = report["tuning"].get("als", {}).get("saved_to")
    print(json.dumps({"reports": [str(p) for p in paths], "tuned_config": saved, "table": _headline(report)}, indent=2))
    return 0


def _read_by_train(path: Path, model_store_url: str) -> bool:
    """`path` is a shop's tuned.json in the `file://` model store, which `python -m recommender train` reads."""
    if not model_store_url.startswith("file://"):
        return False
    root = Path(model_store_url[len("file://"):]).resolve()
    return path.name == "tuned.json" and path.resolve().parent.parent == root


def _headline(report: dict) -> list[dict]:
    k = report["ks"][0]
    return [{"model": r["label"], f"ndcg@{k}": round(r["metrics"][f"ndcg@{k}"], 4),
             f"recall@{k}": round(r["metrics"][f"recall@{k}"], 4)} for r in report["results"]]
