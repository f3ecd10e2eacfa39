"""Scheduled retraining: prune old events, then for each installed shop train, gate, publish, log.

The quality gate holds out the last `holdout_days` of events: a candidate trained on what came
before must beat best sellers and trending on that window, and must not fall more than
`tolerance` below the metric the current model scored when it was published (no bar when that
model was published without one). A shop whose window is too small to judge (fewer than
`min_users` customers ranked: those with older history and a product new to them), or on which
every model scores 0 (its products all launched in it, say), is trained and published with the
gate marked skipped; so is a shop with no model yet whose candidate only ties the baselines (the
same rankings). A shop with no model, or whose current model was itself published below a baseline,
gets its candidate even when a baseline beats it: published with the gate's verdict `below_baseline`
and the baseline that won (`best_sellers` or `trending`), which personalized answers serve in the
model's place (recommender/intents.py) while related and complementary answers use the model; the
gate judged next purchases, not those. A shop with any other model keeps it over a losing candidate.
Every run leaves a log beside the shop's models.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from recommender.event_columns import EVENT_KINDS, InteractionColumns, epoch_us, first_seen_codes
from recommender.model_store import ModelStore, PublishConflict, check_shop_domain
from recommender.serving import release_freed_memory
from recommender.settings import TrainingConfig
from recommender.store import EventStore
from recommender.training import NotEnoughData, shop_matrix, train_shop_matrix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateConfig:
    enabled: bool = True
    holdout_days: float = 7.0  # the window the candidate is judged on
    tolerance: float = 0.1  # relative drop from the current model's metric that is still accepted
    min_users: int = 20  # holdout customers ranked (older history, a product new to them) before the gate judges
    # holdout customers ranked at most, a seeded sample beyond that: at 5M events the gate's ALS ranked 105.5k in 30 s,
    # 20k in 5.6 (NDCG@10 0.1006-0.1032 over three samples, 0.1032 over all; bench/PERFORMANCE.md, round 33)
    max_users: int | None = 20_000
    k: int = 10
    trending_half_life_days: float = 7.0

    def __post_init__(self) -> None:
        if self.max_users is not None and self.max_users < max(1, self.min_users):
            raise ValueError(f"the gate's max_users ({self.max_users}) must be at least its min_users "
                             f"({self.min_users}): fewer customers than that cannot be judged")


BELOW_BASELINE = "below_baseline"  # the gate's verdict on a model published though a baseline beat it


def _current_gate(model_store: ModelStore, shop: str) -> dict | None:
    """What the gate saw when the current model was published: its run's, the newest published one ({} when that run
    has none: published with the gate off). None when none of the newest 50 runs published: no model, or one whose
    run is not at hand."""
    for run in itertools.islice(model_store.newest_runs(shop), 50):  # each log read when reached: mostly the newest
        if run.get("published"):
            return run.get("gate") or {}
    return None


def _previous_metric(gate: dict, metric: str) -> float | None:
    """The metric the current model scored when it was published (`gate`: `_current_gate`'s). None when its run has
    none (published with the gate off, skipped or undecided): no bar then, rather than an older model's, one no
    longer served."""
    candidate = gate.get("candidate") or {}
    return float(candidate[metric]) if metric in candidate and "skipped" not in gate else None


def split_for_gate(columns: InteractionColumns, cutoff: datetime):
    """(train, holdout) `offline_data.Interactions` of the events before and from `cutoff`: exactly what
    `compare_to_baseline` builds from the two lists of store rows (train rows first, ids in first-seen
    order over train then holdout), made from the columns without one object per event."""
    from recommender.offline_data import Interactions

    is_train = columns.occurred_at_us < epoch_us(cutoff)
    rows = np.concatenate([np.flatnonzero(is_train), np.flatnonzero(~is_train)])
    users, first_user = first_seen_codes(columns.users[rows])
    items, first_item = first_seen_codes(columns.items[rows])
    kind_names = np.array([kind.value for kind in EVENT_KINDS], dtype=object)
    data = Interactions(
        users=users.astype(np.int64), items=items.astype(np.int64),
        weights=columns.weight_factors[rows].astype(np.float32),
        timestamps=columns.occurred_at_us[rows] / 1e6,  # = datetime.timestamp(): both round µs / 10^6 once
        kinds=kind_names[columns.kinds[rows]],
        user_ids=tuple(columns.user_keys[u] for u in columns.users[rows][first_user].tolist()),
        item_ids=tuple(columns.product_ids[i] for i in columns.items[rows][first_item].tolist()),
    )
    n_train = int(is_train.sum())
    # views of the one set of rows (a copy of each half held the events twice at once: the 5M-event job's peak)
    return data.select(slice(0, n_train)), data.select(slice(n_train, len(rows)))


def _gate_split(gate: GateConfig, now: datetime, columns: InteractionColumns) -> tuple | dict:
    """What the gate judges on, `split_for_gate`'s (train, holdout); or, when there are too few customers to judge,
    what the gate saw. The customers counted here are at most those the gate ranks (`compare_to_baseline` asks
    for `min_users` of them again: those with a product new to them), so few of them spare the split."""
    cutoff = now - timedelta(days=gate.holdout_days)
    is_train = columns.occurred_at_us < epoch_us(cutoff)
    judged = np.intersect1d(columns.users[is_train], columns.users[~is_train])
    if len(judged) < gate.min_users:
        return {"skipped": f"{len(judged)} customers active in the last {gate.holdout_days:g} days have older "
                           f"history; the gate needs {gate.min_users}"}
    return split_for_gate(columns, cutoff)


def _judge(model_store: ModelStore, shop: str, config: TrainingConfig, gate: GateConfig,
           split: tuple | dict) -> tuple[dict, str | None]:
    """(what the gate saw, the reason to keep the current model or None to publish)."""
    from recommender.evaluation import compare_to_baseline
    from recommender.offline_data import EvaluationError

    if isinstance(split, dict):
        return split, None
    train, holdout = split
    try:
        result = compare_to_baseline(train, holdout, config, k=gate.k, max_users=gate.max_users,
                                     min_users=gate.min_users, trending_half_life_days=gate.trending_half_life_days)
    except EvaluationError as exc:
        return {"skipped": str(exc)}, None
    seen = result.to_dict()
    metric = result.metric
    score = result.candidate[metric]
    baselines = {"best_sellers": result.popularity[metric]}
    if result.trending is not None:
        baselines["trending"] = result.trending[metric]
    if score == 0 and not any(baselines.values()):
        # nothing in the window could be found (its products launched in it, say): no verdict, as an empty window
        seen["skipped"] = (f"every model scored {metric} 0 on the {result.users} customers ranked: the gate cannot "
                           f"tell them apart")
        return seen, None
    # The current model's gate, as its run logged it; None: the shop has no model (the model store's pointer is read
    # only for a candidate that does not beat the baselines and no published run at hand). A candidate that loses is
    # kept from publishing only by a model that did not lose itself: with none, or one published below a baseline, it
    # is published (on fresher events) whatever it scores.
    current = _current_gate(model_store, shop)
    if current is None and not result.passed and model_store.latest(shop) is not None:
        current = {}  # a model whose run is not at hand: taken for one that passed
    replaceable = current is None or current.get("verdict") == BELOW_BASELINE
    tied = [name for name, value in baselines.items() if score == value]
    if tied and all(score >= value for value in baselines.values()) and replaceable:
        # identical rankings (two products, say): as good as the baselines, and no better model to keep
        ties = " and ".join(f"{name.replace('_', ' ')} ({baselines[name]:.4f})" for name in tied)
        seen["skipped"] = (f"{metric} {score:.4f} ties {ties}: the gate cannot tell the models apart, and "
                           + ("the shop has no model to keep" if current is None else
                              "the shop's model was published below a baseline"))
        return seen, None
    reasons = []
    if not result.beats_popularity:
        reasons.append(f"{metric} {score:.4f} does not beat best sellers ({result.popularity[metric]:.4f})")
    if result.beats_trending is False:
        reasons.append(f"{metric} {score:.4f} does not beat trending ({result.trending[metric]:.4f})")
    previous = _previous_metric(current, metric) if current is not None else None
    seen["previous"] = previous
    if replaceable:  # nothing to keep in its place: published, marked below the baseline that won if one did
        if reasons:
            seen["verdict"] = BELOW_BASELINE
            seen["baseline"] = max(baselines, key=baselines.__getitem__)  # the best one; on a tie, best sellers
            log.warning("%s: %s; published all the same (%s): its personalized answers serve %s", shop,
                        "; ".join(reasons), "no model yet" if current is None else "its model was below a baseline too",
                        seen["baseline"].replace("_", " "))
        return seen, None
    if previous is not None and score < previous * (1.0 - gate.tolerance):
        reasons.append(f"{metric} {score:.4f} is more than {gate.tolerance:.0%} below the current model's "
                       f"{previous:.4f}")
    return seen, "; ".join(reasons) or None


def shop_training_config(model_store: ModelStore, shop: str, base: TrainingConfig) -> tuple[TrainingConfig, str]:
    """The shop's tuned configuration (`python -m recommender evaluate --tune` writes
    `<model store>/<shop>/tuned.json`) applied over `base`, or `base` itself."""
    root = getattr(model_store, "root", None)  # file stores; a gs:// store trains with the environment's settings
    path = Path(root) / shop / "tuned.json" if root is not None else None
    if path is None or not path.exists():
        return base, "environment"
    from recommender.evaluation import load_tuned_config, tuned_training_config

    if load_tuned_config(path)["weighting"] != "none":
        log.warning("%s: tuned weighting is evaluated offline only; training applies its hyperparameters", path)
    return tuned_training_config(path, base), str(path)


def retrain_shop(store: EventStore, model_store: ModelStore, shop: str, config: TrainingConfig, gate: GateConfig,
                 now: datetime | None = None) -> dict:
    """Train one shop through the gate; returns the run log that was recorded."""
    now = now or datetime.now(timezone.utc)
    started = time.perf_counter()
    config, config_source = shop_training_config(model_store, shop, config)
    columns = store.interaction_columns(shop, times=gate.enabled)  # read once for the gate and the model
    record: dict = {"shop": shop, "started_at": now.isoformat(), "events": len(columns), "published": False,
                    "config": config_source}
    # What the gate and the model take of the events, then the events let go: the gate's fit held them beside its
    # split of them, the 5M-event job's peak (bench/PERFORMANCE.md, round 33).
    split = _gate_split(gate, now, columns) if gate.enabled else None
    data = shop_matrix(columns, config, shop)
    del columns
    release_freed_memory()  # what the read and the columns leave: what the gate and the fits allocate next is the peak
    if gate.enabled:
        record["gate"], reason = _judge(model_store, shop, config, gate, split)
        del split
        if reason is not None:
            record.update(reason=reason, seconds=round(time.perf_counter() - started, 3))
            model_store.record_run(shop, record)
            log.warning("kept the current model of %s: %s", shop, reason)
            return record
    artifact = train_shop_matrix(shop, data, config, now, extra_metadata={"quality": record.get("gate")})
    manifest = model_store.publish(shop, artifact)
    counts = artifact.metadata["counts"]
    record.update(published=True, version=manifest.version, users=counts["users"], items=counts["items"],
                  seconds=round(time.perf_counter() - started, 3))
    model_store.record_run(shop, record)
    log.info("published %s for %s: %d users, %d items, %d events in %.2fs", manifest.version, shop,
             record["users"], record["items"], record["events"], record["seconds"])
    return record


FAILURES_IN_A_ROW = 3  # the scheduled run stops at this many shops failing one after another
# A run writes that it is going on this often (`training_run_alive`); a run silent for ALIVE_WITHIN_SECONDS has
# ended without saying so (killed: the function's timeout or memory), and the shops it left unfinished were cut off.
ALIVE_EVERY_SECONDS = 30.0
ALIVE_WITHIN_SECONDS = 180.0


def run_scheduled_training(store: EventStore, model_store: ModelStore, config: TrainingConfig, gate: GateConfig,
                           retention_days: float = 0, shops: list[str] | None = None,
                           now: datetime | None = None, budget_seconds: float = 0,
                           alive_every_seconds: float = ALIVE_EVERY_SECONDS) -> dict:
    """Prune events past retention, then retrain each installed shop (or the given ones, in that order).

    The installed shops come in the event store's queue (`training_queue`, its order in recommender/store.py): each
    goes to its back when it is started, so a run takes the shops started longest ago (or never) first. A shop whose
    last training never finished goes first if that happened once (it was started late and the function's timeout
    came first), and last once it has happened twice in a row (it dies whenever it runs: more memory or time than
    the function has); such shops are listed under `interrupted`. A run in a fixed order used to leave the same
    shops, those past where the function's timeout cut it, untrained every night.

    Runs at the same time share the queue (a scheduled run and one started by hand, the next scheduled run while a
    504'd one goes on). Each run has a row in the event store (`training_run_began`), says it is alive every
    `alive_every_seconds` and deletes its row when it ends. The shops started by another run that is alive (it
    said so within ALIVE_WITHIN_SECONDS) are left to it, whether it is still training them or has trained them
    (a named shop only while it is being trained); and a shop is started only if no other run started it since
    this run read the queue. Such shops are listed under `other_runs`, each with its `state`: `training`, `done`,
    or `taken` (started since the queue was read). Two runs used to train the same shops one after the other, each
    taking the other's shop for one cut off.

    With `budget_seconds` (> 0) a shop is started only if the run's time so far plus what the shop's last training
    took fits in it; the others are listed under `deferred` and keep their place, and the first of them leads the
    next run's normal order. The first shop a run starts is started whatever its time, so a shop that needs the
    whole budget gets it.

    One shop's failure (the model store out of reach for its publish, an error in its data) is logged with its
    traceback and listed under `failed`, and the next shops are trained all the same: an app installed in many
    shops trains them one after another in one run, and a failure part-way used to leave every shop after it
    untrained, night after night if the failure stayed. FAILURES_IN_A_ROW shops failing one after another say the
    event store or the model store is out of reach: the last failure is raised then, rather than every later shop
    waiting for its own connection timeout and logging the same traceback. A shop's place in the queue that could
    not be written after its training, or the run's end, is listed under `queue_errors` (the event store refused
    the write)."""
    if not 0 < alive_every_seconds * 3 <= ALIVE_WITHIN_SECONDS:  # a few signs of life missed before it counts
        raise ValueError(f"alive_every_seconds must be in (0, {ALIVE_WITHIN_SECONDS / 3:g}], got {alive_every_seconds}")
    started = time.perf_counter()
    now = now or datetime.now(timezone.utc)
    # a bad name: refused first; a name given twice: trained once
    named = list(dict.fromkeys(check_shop_domain(shop) for shop in shops)) if shops is not None else None
    pruned = store.prune_events(now - timedelta(days=retention_days)) if retention_days > 0 else 0
    run = uuid.uuid4().hex
    store.training_run_began(run)
    alive = _SignsOfLife(store, run, alive_every_seconds)
    queue_errors: list[dict] = []
    try:
        report = _train_in_turn(store, model_store, config, gate, named, now, budget_seconds, started, run,
                                queue_errors)
    finally:
        alive.close()
        try:
            store.training_run_ended(run)
        except Exception as exc:  # noqa: BLE001 - its row is taken for a run going on until it falls silent
            log.exception("could not write that training run %s has ended", run)
            queue_errors.append({"shop": None, "error": f"{type(exc).__name__}: {exc}"})
    return {**report, "queue_errors": queue_errors, "pruned_events": pruned,
            "seconds": round(time.perf_counter() - started, 3)}


def _train_in_turn(store: EventStore, model_store: ModelStore, config: TrainingConfig, gate: GateConfig,
                   named: list[str] | None, now: datetime, budget_seconds: float, started: float, run: str,
                   queue_errors: list[dict]) -> dict:
    """The queue read and its shops trained in turn, as `run_scheduled_training` says (`started`: when the run
    began, by time.perf_counter, its budget's start)."""
    waiting = store.training_queue()
    queued = {entry.shop: entry for entry in waiting}
    queue = named if named is not None else [entry.shop for entry in waiting]
    taken = set(queue)
    others = {entry.shop: "training" if entry.unfinished else "done" for entry in waiting
              if entry.run_silent_seconds is not None and entry.run_silent_seconds < ALIVE_WITHIN_SECONDS
              and (named is None or entry.unfinished)}
    interrupted = [{"shop": entry.shop, "unfinished": entry.unfinished} for entry in waiting
                   if entry.unfinished and entry.shop in taken and entry.shop not in others]
    if interrupted:
        log.warning("%d shops' last training never finished (cut off: the function's timeout or memory), e.g. %s "
                    "(%d in a row)", len(interrupted), interrupted[0]["shop"], interrupted[0]["unfinished"])
    trained, kept, skipped, failed, deferred, other_runs = [], [], [], [], [], []
    in_a_row = starts = 0
    for position, shop in enumerate(queue):
        entry = queued.get(shop)
        if shop in others:
            other_runs.append({"shop": shop, "state": others[shop]})
            continue
        elapsed = time.perf_counter() - started
        expected = entry.expected_seconds if entry is not None else None
        if budget_seconds > 0 and starts > 0 and elapsed + (expected or 0) > budget_seconds:
            deferred.append({"shop": shop, "expected_seconds": expected})
            continue
        shop_started = time.perf_counter()
        in_queue = False  # whether its start was written: a store that refuses it is the shop's failure
        try:
            if entry is None:  # a named shop not installed: no place in the queue to claim
                in_queue = store.training_started(shop, datetime.now(timezone.utc), run)
            elif store.training_started(shop, datetime.now(timezone.utc), run, expect_started_at=entry.started_at):
                in_queue = True
            elif store.is_shop_installed(shop):  # another run started it after this one read the queue
                other_runs.append({"shop": shop, "state": "taken"})
                continue
            else:
                skipped.append({"shop": shop, "reason": "uninstalled since the run read the queue"})
                continue
            starts += 1
            record = retrain_shop(store, model_store, check_shop_domain(shop), config, gate, now)
        except (NotEnoughData, PublishConflict) as exc:  # a lost publish race: the other trainer's model stands
            skipped.append({"shop": shop, "reason": str(exc)})
            in_a_row = 0
        except Exception as exc:  # noqa: BLE001 - reported below and in the run's answer; the other shops go on
            in_a_row += 1
            if in_queue:  # a failure's time says nothing of the shop's next training: its last figure stays
                _finish(store, shop, None, run, queue_errors)
            if in_a_row >= FAILURES_IN_A_ROW:
                log.error("%d shops failed in a row, the last %s; stopping with %d shops not tried (trained %d)",
                          in_a_row, shop, len(queue) - position - 1, len(trained))
                raise
            log.exception("training %s failed; going on with the other shops", shop)
            failed.append({"shop": shop, "error": f"{type(exc).__name__}: {exc}"})
            continue
        else:
            in_a_row = 0
            (trained if record["published"] else kept).append(record)
        if in_queue:
            _finish(store, shop, round(time.perf_counter() - shop_started, 3), run, queue_errors)
    if other_runs:
        log.info("%d shops are another run's (being trained or trained by a run going on), e.g. %s; left to it",
                 len(other_runs), other_runs[0]["shop"])
    if deferred:
        log.warning("time budget of %gs spent: %d shops deferred to the next run (the first %s)", budget_seconds,
                    len(deferred), deferred[0]["shop"])
        first = queued.get(deferred[0]["shop"])
        try:
            if first is not None:  # unless a run has started it since this one read the queue
                store.training_deferred(first.shop, expect_started_at=first.started_at)
        except Exception as exc:  # noqa: BLE001 - reported in the answer; the shop keeps its place all the same
            log.exception("could not mark %s as deferred", deferred[0]["shop"])
            queue_errors.append({"shop": deferred[0]["shop"], "error": f"{type(exc).__name__}: {exc}"})
    return {"trained": trained, "kept": kept, "skipped": skipped, "failed": failed, "deferred": deferred,
            "other_runs": other_runs, "interrupted": interrupted}


class _SignsOfLife:
    """A thread writing, every `every` seconds, that the training run `run` is going on (`training_run_alive`), so
    that other runs leave its shops to it. Its connection to the store is closed when it stops."""

    def __init__(self, store: EventStore, run: str, every: float):
        self._store, self._run, self._every = store, run, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="training-run-alive", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)  # a write hung on a dead connection: the thread is left to the process's end
        if self._thread.is_alive():
            log.warning("training run %s: its signs of life did not stop within 30 s (a write hung)", self._run)

    def _beat(self) -> None:
        try:
            while not self._stop.wait(self._every):
                try:
                    self._store.training_run_alive(self._run)  # by the event store's clock
                except Exception:  # noqa: BLE001 - the run goes on; other runs may take its shops for cut off
                    log.warning("could not write that training run %s is going on", self._run, exc_info=True)
        finally:
            self._store.close_thread_connection()


def _finish(store: EventStore, shop: str, seconds: float | None, run: str, errors: list[dict]) -> None:
    """`training_finished`, or the error that refused it listed in `errors`: the shop's training is over either way
    (published, kept or failed), but until the write succeeds the queue takes it for one that was cut off. A shop
    another run has started since (this run was silent too long, and taken for killed) is that run's to finish."""
    try:
        if not store.training_finished(shop, seconds, run):
            log.warning("%s was started again by another run while this one trained it (that run finishes it), or its "
                        "row is gone (uninstalled and redacted)", shop)
    except Exception as exc:  # noqa: BLE001 - reported in the run's answer, which is then a 500
        log.exception("could not write that the training of %s is over; the next run takes it for cut off", shop)
        errors.append({"shop": shop, "error": f"{type(exc).__name__}: {exc}"})
