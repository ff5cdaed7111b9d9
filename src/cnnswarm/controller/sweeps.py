"""The sweep engine: the scheduling leader asks Optuna for trials and tells it their results.

Where the study lives. The study is rebuilt from cnn-swarm's own tables on every leader round
(``study.add_trial`` of one ``FrozenTrial`` per ``sweep_trials`` row, its intermediate values
read from the trial job's per-epoch metrics) in an in-memory Optuna storage that is dropped
at the end of the round. We chose this over Optuna's RDB storage on the same database URL
because:

- the database stays the only shared state, with one writer discipline: Optuna's RDB storage
  would open its own engine (and alembic migrations) on our SQLite file, whose write lock our
  ``BEGIN IMMEDIATE`` transactions already contend for, and would keep a second copy of every
  trial's state that could disagree with the job's;
- a leader change needs nothing: the next leader's first round rebuilds the same study;
- "told" is a column of our trial row, changed by compare-and-set (``SweepStore.tell``), so
  a result can be told once only; "asked" is the row itself, inserted with its job in one
  transaction under the primary key ``(sweep_id, number)`` (``SweepStore.add_trial``), so a
  slot can be asked for once only. A study that never outlives a round cannot hold a tell or
  an ask the tables do not.

Samplers are seeded per trial (``seed`` of the sweep and the trial's number), so what a
rebuilt study suggests for trial ``n`` depends only on the sweep's history, not on which
controller leads. Pruners' own records (Hyperband's rung results) are written back to the
trial row.

A round, for each sweep with work left: tell the trials whose job ended; cancel the live
trial jobs of a cancelled sweep; ask the pruner about each running trial that reported an
epoch (a prune cancels the job with reason ``pruned``); ask for new trials while fewer than
``max_parallel`` are live and fewer than ``max_trials`` were asked; finish the sweep when
every trial is told. Fairness: a sweep has at most ``max_parallel`` trial jobs queued or
running, and each new trial joins the back of the one FIFO job queue, so a job submitted
after the sweep waits behind at most ``max_parallel`` of its trials.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial
from optuna.trial import TrialState as OptunaState

from cnnswarm.errors import Conflict, NotFound
from cnnswarm.store import Stores
from cnnswarm.store.job_records import JobSpec, JobState
from cnnswarm.store.sweeps import (
    PRUNED_REASON,
    Sweep,
    SweepState,
    Trial,
    TrialState,
    best_model_alias,
    best_trial,
    trial_model_id,
)

log = logging.getLogger(__name__)

# Median pruning judges a trial only once this many trials have finished.
MEDIAN_STARTUP_TRIALS = 3
HYPERBAND_REDUCTION_FACTOR = 3
SWEEP_CANCELLED_REASON = "sweep cancelled"

CancelOnTrainer = Callable[[str, str], None]  # (trainer id, job id)

_OPTUNA_STATE = {
    TrialState.RUNNING: OptunaState.RUNNING,
    TrialState.SUCCEEDED: OptunaState.COMPLETE,
    TrialState.PRUNED: OptunaState.PRUNED,
    TrialState.FAILED: OptunaState.FAIL,
    TrialState.CANCELLED: OptunaState.FAIL,
}


# -- the study, from the request and the trial rows ----------------------------------------


def distributions(space: dict[str, dict[str, Any]]) -> dict[str, BaseDistribution]:
    """Optuna's distribution for each dimension of a validated search space."""
    result: dict[str, BaseDistribution] = {}
    for name, dim in space.items():
        if "float" in dim:
            low, high = dim["float"]
            result[name] = FloatDistribution(
                low, high, log=dim.get("log", False), step=dim.get("step")
            )
        elif "int" in dim:
            low, high = dim["int"]
            result[name] = IntDistribution(
                low, high, log=dim.get("log", False), step=dim.get("step") or 1
            )
        else:
            result[name] = CategoricalDistribution(dim["choice"])
    return result


def _trial_seed(seed: int, number: int) -> int:
    return (seed * 1_000_003 + number) % 2**32


def make_sampler(request: dict[str, Any], number: int) -> optuna.samplers.BaseSampler:
    """The sampler that suggests trial ``number`` of a sweep."""
    seed = int(request["seed"])
    if request["sampler"] == "grid":
        grid = {name: dim["choice"] for name, dim in request["space"].items()}
        return optuna.samplers.GridSampler(grid, seed=seed)  # the grid's order: the same seed
    if request["sampler"] == "random":
        return optuna.samplers.RandomSampler(seed=_trial_seed(seed, number))
    startup = max(2, min(10, int(request["max_trials"]) // 4))
    return optuna.samplers.TPESampler(
        seed=_trial_seed(seed, number), n_startup_trials=startup, constant_liar=True
    )


def make_pruner(request: dict[str, Any]) -> optuna.pruners.BasePruner:
    """The sweep's pruner; steps are epochs (1, 2, ...)."""
    if request["pruner"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS)
    if request["pruner"] == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1,
            max_resource=max_epochs(request),
            reduction_factor=HYPERBAND_REDUCTION_FACTOR,
        )
    return optuna.pruners.NopPruner()


def max_epochs(request: dict[str, Any]) -> int:
    """The most epochs a trial of the sweep can train."""
    dim = request["space"].get("num_epochs")
    if dim is None:
        return int(request["train_opts"]["num_epochs"])
    return int(max(dim["int"]) if "int" in dim else max(dim["choice"]))


def frozen_trial(sweep: Sweep, trial: Trial, dists: dict[str, BaseDistribution]) -> FrozenTrial:
    """A trial row as Optuna's ``FrozenTrial``: params, state, value, metric per epoch."""
    state = _OPTUNA_STATE[trial.state]
    intermediate = {
        int(m["epoch"]): float(m[sweep.metric])
        for m in trial.job.metrics
        if m.get(sweep.metric) is not None and "epoch" in m
    }
    return optuna.trial.create_trial(
        state=state,
        value=trial.value if state == OptunaState.COMPLETE else None,
        params=trial.params,
        distributions=dists,
        system_attrs=trial.system_attrs,
        intermediate_values=intermediate,
    )


def build_study(sweep: Sweep, trials: Sequence[Trial]) -> optuna.Study:
    """The sweep's study as its rows describe it, in memory, ready to ask trial
    ``len(trials)``."""
    study = optuna.create_study(
        study_name=sweep.id,  # Hyperband assigns trials to brackets by study name and number
        sampler=make_sampler(sweep.request, len(trials)),
        pruner=make_pruner(sweep.request),
        direction=sweep.request["direction"],
    )
    dists = distributions(sweep.request["space"])
    study.add_trials([frozen_trial(sweep, trial, dists) for trial in trials])
    return study


def outcome_of(sweep: Sweep, trial: Trial) -> tuple[TrialState, float | None] | None:
    """What a trial's ended job means for the study, or None while the job is live."""
    job = trial.job
    if not job.state.is_final:
        return None
    if job.state == JobState.CANCELLED:
        return (TrialState.PRUNED if job.error == PRUNED_REASON else TrialState.CANCELLED), None
    if job.state == JobState.FAILED:
        return TrialState.FAILED, None
    curve = trial.curve(sweep.metric)
    if not curve or not math.isfinite(curve[-1]):
        return TrialState.FAILED, None  # succeeded without a usable metric: no value to tell
    return TrialState.SUCCEEDED, curve[-1]


# -- the leader's round ----------------------------------------------------------------------


class SweepEngine:
    """Advances every open sweep by one round (called from the scheduler leader's tick)."""

    def __init__(self, stores: Stores, cancel_on_trainer: CancelOnTrainer) -> None:
        self.stores = stores
        self.cancel_on_trainer = cancel_on_trainer
        self._alias_checked: set[str] = set()
        # (sweep, trial number) -> the epoch the pruner last judged, so a trial is judged once
        # per reported epoch (a new leader judges the latest epoch once more: harmless).
        self._judged_epoch: dict[tuple[str, int], int] = {}
        optuna.logging.set_verbosity(optuna.logging.WARNING)

    def advance(self) -> None:
        """One round over every sweep with work left; a failing sweep does not stop others."""
        sweeps = self.stores.sweeps.open_sweeps()
        if not sweeps:
            return
        trials = self.stores.sweeps.trials([sweep.id for sweep in sweeps])
        for sweep in sweeps:
            try:
                self._advance(sweep, trials[sweep.id])
            except Exception:
                log.exception("sweep %s: round failed; retrying next round", sweep.id)

    def _advance(self, sweep: Sweep, trials: list[Trial]) -> None:
        trials = self._tell_ended(sweep, trials)
        if sweep.state != SweepState.RUNNING:
            cancel_live_trials(self.stores, trials, SWEEP_CANCELLED_REASON, self.cancel_on_trainer)
            return
        trials = self._prune(sweep, trials)
        trials = self._ask(sweep, trials)
        if len(trials) >= sweep.request["max_trials"] and all(
            trial.state != TrialState.RUNNING for trial in trials
        ):
            succeeded = any(trial.state == TrialState.SUCCEEDED for trial in trials)
            state = SweepState.SUCCEEDED if succeeded else SweepState.FAILED
            if self.stores.sweeps.finish(sweep.id, state):
                log.info("sweep %s %s after %d trials", sweep.id, state.value, len(trials))

    def _tell_ended(self, sweep: Sweep, trials: list[Trial]) -> list[Trial]:
        """Tell every trial whose job ended; move the best-model alias if one succeeded (and
        once per sweep after this controller became leader)."""
        updated = [self._tell(sweep, trial) for trial in trials]
        succeeded_now = any(
            before.state == TrialState.RUNNING and after.state == TrialState.SUCCEEDED
            for before, after in zip(trials, updated, strict=True)
        )
        if succeeded_now or sweep.id not in self._alias_checked:
            self._move_best_alias(sweep, updated)
        return updated

    def _tell(self, sweep: Sweep, trial: Trial) -> Trial:
        """The trial with its outcome once its job ended; the store's compare-and-set makes
        the tell happen once, whoever else tries."""
        outcome = outcome_of(sweep, trial) if trial.state == TrialState.RUNNING else None
        if outcome is None:
            return trial
        state, value = outcome
        self._judged_epoch.pop((sweep.id, trial.number), None)
        if self.stores.sweeps.tell(sweep.id, trial.number, state, value):
            log.info("sweep %s trial %d: %s %s", sweep.id, trial.number, state, value)
        return replace(trial, state=state, value=value)

    def _move_best_alias(self, sweep: Sweep, trials: Sequence[Trial]) -> None:
        best = best_trial(sweep, trials)
        self._alias_checked.add(sweep.id)
        if best is None:
            return
        alias = best_model_alias(sweep.id)
        try:
            if self.stores.catalog.resolve(alias) == best.job.model_id:
                return
        except NotFound:
            pass
        self.stores.catalog.set_alias(alias, best.job.model_id)
        log.info("sweep %s: %s -> trial %d (%s)", sweep.id, alias, best.number, best.value)

    def _prune(self, sweep: Sweep, trials: list[Trial]) -> list[Trial]:
        if sweep.request["pruner"] == "none":
            return trials
        judged = [
            t
            for t in trials
            if t.state == TrialState.RUNNING
            and t.job.state == JobState.RUNNING
            and t.job.metrics
            and self._judged_epoch.get((sweep.id, t.number)) != len(t.job.metrics)
        ]
        if not judged:
            return trials
        study = build_study(sweep, trials)
        pruner = make_pruner(sweep.request)
        pruned: dict[int, Trial] = {}
        for trial in judged:
            self._judged_epoch[(sweep.id, trial.number)] = len(trial.job.metrics)
            frozen = study._storage.get_trial(study.trials[trial.number]._trial_id)
            if pruner.prune(study, frozen):
                pruned[trial.number] = self._prune_one(sweep, trial)
            attrs = study._storage.get_trial(frozen._trial_id).system_attrs
            if attrs != trial.system_attrs:
                self.stores.sweeps.save_system_attrs(sweep.id, trial.number, attrs)
        return [pruned.get(trial.number, trial) for trial in trials]

    def _prune_one(self, sweep: Sweep, trial: Trial) -> Trial:
        try:
            job, trainer_id = self.stores.jobs.cancel(trial.job.id, PRUNED_REASON)
        except Conflict:
            return trial  # it ended meanwhile: the next round tells how
        if trainer_id is not None:
            self.cancel_on_trainer(trainer_id, job.id)
        log.info("sweep %s trial %d pruned at epoch %d", sweep.id, trial.number, job.epoch)
        return self._tell(sweep, replace(trial, job=job))

    def _ask(self, sweep: Sweep, trials: list[Trial]) -> list[Trial]:
        request = sweep.request
        dists = distributions(request["space"])
        while len(trials) < request["max_trials"] and (
            sum(trial.state == TrialState.RUNNING for trial in trials) < request["max_parallel"]
        ):
            study = build_study(sweep, trials)
            asked = study.ask(dists)
            number = len(trials)
            attrs = study._storage.get_trial(asked._trial_id).system_attrs
            spec = JobSpec(
                model_id=trial_model_id(sweep.id, number),
                dataset=request["dataset"],
                model_type=request["model_type"],
                example_idxs=request["example_idxs"],
                train_opts={**request["train_opts"], **asked.params},
            )
            job_id = self.stores.sweeps.add_trial(sweep.id, number, asked.params, attrs, spec)
            if job_id is None:
                log.warning("sweep %s: trial %d was asked already; stopping", sweep.id, number)
                break
            log.info("sweep %s trial %d -> job %s %s", sweep.id, number, job_id, asked.params)
            trials = self.stores.sweeps.trials([sweep.id])[sweep.id]
        return trials


def cancel_live_trials(
    stores: Stores, trials: Sequence[Trial], reason: str, cancel_on_trainer: CancelOnTrainer
) -> None:
    """Cancel the jobs of ``trials`` that are still queued or running, with ``reason``."""
    for trial in trials:
        if trial.job.state.is_final:
            continue
        try:
            job, trainer_id = stores.jobs.cancel(trial.job.id, reason)
        except Conflict:
            continue  # it ended meanwhile
        if trainer_id is not None:
            cancel_on_trainer(trainer_id, job.id)
