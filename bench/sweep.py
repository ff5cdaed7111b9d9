"""Hyperparameter sweeps on a real local cluster: TPE with median pruning against random search
without pruning, on the same budget, and the same sweep on 1 trainer against 2.

Each run is a REAL local cluster (``cnn-swarm up --trainers N``, as ``bench/trainer_scaling.py``
starts it: processes on ephemeral ports, SQLite and artefacts in a temp HOME_DIR) and one sweep
of ``--trials`` (default 16) ResNet8 trials on ``synthetic`` (3x32x32, 10 learnable classes),
``--parallel 2``, each trial at most ``--epochs`` (default 6) epochs, over::

    lr            log-uniform [0.003, 1.0]    (the top of the range diverges: work to prune)
    weight_decay  log-uniform [1e-5, 1e-2]
    batch_size    choice [64, 128]

Runs, one after the other:

1. 2 trainers, ``sampler=tpe``, ``pruner=median``;
2. 2 trainers, ``sampler=random``, ``pruner=none``;
3. 1 trainer, the same random sweep (same seed, so the same trials and the same work).

Reported per run: the best test accuracy, the epochs actually trained (the sum over trials of
the epochs each reported; pruning should save a large share of ``trials x epochs``), the trial
counts and the wall time from submission to the sweep's end. The last line is
``ratio=<wall time of run 3 / wall time of run 2>`` (the 2-trainer speed-up; the target is
1.8x or more where the host has a core per trainer). Every process started is stopped in
``finally``; on a shared machine the figures move with the other load.

Run: ``.venv/bin/python bench/sweep.py [--trials 16] [--epochs 6] [--rows 2000] [--seed 0]``
(long: about 16 x 6 ResNet8 epochs per run, three runs; tens of minutes on 2 shared cores).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer_scaling import MODEL_TYPE, Setup, local_cluster

SPACE: dict[str, Any] = {
    "lr": {"float": [0.003, 1.0], "log": True},
    "weight_decay": {"float": [1e-5, 1e-2], "log": True},
    "batch_size": {"choice": [64, 128]},
}
SWEEP_TIMEOUT_S = 6 * 3600.0


@dataclass(frozen=True)
class Run:
    label: str
    trainers: int
    sampler: str
    pruner: str


@dataclass(frozen=True)
class Outcome:
    best_accuracy: float | None
    epochs_trained: int
    counts: dict[str, int]
    wall_s: float


def run_sweep(root: Path, run: Run, args: argparse.Namespace) -> Outcome:
    """One sweep on a fresh cluster of ``run.trainers`` trainers; its figures."""
    with local_cluster(root, Setup(run.trainers, "")) as client:
        client.get_dataset("synthetic")  # built before the clock starts
        started = time.monotonic()
        sweep = client.submit_sweep(
            "synthetic",
            SPACE,
            model_type=MODEL_TYPE,
            train_opts={"num_epochs": args.epochs, "seed": 0},
            example_idxs=[0, args.rows],
            sampler=run.sampler,
            pruner=run.pruner,
            max_trials=args.trials,
            max_parallel=2,
            seed=args.seed,
        )
        done = client.wait_for_sweep(sweep["id"], timeout=SWEEP_TIMEOUT_S, poll_interval_s=2.0)
        wall_s = time.monotonic() - started
    best = done["best_trial"]
    return Outcome(
        best_accuracy=None if best is None else float(best["value"]),
        epochs_trained=sum(len(trial["curve"]) for trial in done["trials"]),
        counts={state: n for state, n in done["counts"].items() if n},
        wall_s=wall_s,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--rows", type=int, default=2000, help="training rows of synthetic")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    runs = [
        Run("TPE + median pruning, 2 trainers", 2, "tpe", "median"),
        Run("random, no pruning, 2 trainers", 2, "random", "none"),
        Run("random, no pruning, 1 trainer", 1, "random", "none"),
    ]
    budget = args.trials * args.epochs
    print(f"{args.trials} {MODEL_TYPE} trials x at most {args.epochs} epochs on synthetic "
          f"({args.rows} rows), 2 in parallel; budget {budget} epochs", flush=True)  # fmt: skip
    outcomes: dict[Run, Outcome] = {}
    with tempfile.TemporaryDirectory(prefix="cnnswarm-sweep-") as tmp:
        for number, run in enumerate(runs):
            root = Path(tmp) / f"run-{number}"
            root.mkdir()
            outcomes[run] = outcome = run_sweep(root, run, args)
            print(f"{run.label}: {outcome}", flush=True)
    print()
    print("| sweep | best test accuracy | epochs trained | trials | wall time |")
    print("|---|---|---|---|---|")
    for run, outcome in outcomes.items():
        best = "—" if outcome.best_accuracy is None else f"{outcome.best_accuracy:.3f}"
        share = f"{outcome.epochs_trained} ({100 * outcome.epochs_trained / budget:.0f} %)"
        counts = ", ".join(f"{n} {state}" for state, n in outcome.counts.items())
        print(f"| {run.label} | {best} | {share} | {counts} | {outcome.wall_s:.0f} s |")
    print(f"ratio={outcomes[runs[2]].wall_s / outcomes[runs[1]].wall_s:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
