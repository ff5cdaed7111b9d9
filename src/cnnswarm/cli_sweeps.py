"""`cnn-swarm sweep` and `cnn-swarm sweeps`: start a hyperparameter sweep (and follow its
leaderboard live with ``--wait``), show one, cancel one, list them (HTTP only, through
``cnnswarm.client``).

``sweep`` with a sweep id shows (or, with ``--cancel``, cancels) that sweep; without one it
starts a sweep, which needs ``--space``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnswarm.cli_support import Handler, client_from_args, emit_json
from cnnswarm.progress import format_table

AddCommand = Callable[[str, Handler, str], argparse.ArgumentParser]


def add_sweep_commands(add: AddCommand) -> None:
    """Register ``sweep`` and ``sweeps`` through the CLI's ``add``."""
    sweep = add("sweep", cmd_sweep, "start a hyperparameter sweep, or show / cancel one")
    sweep.add_argument("sweep_id", nargs="?", help="show this sweep (omit to start one)")
    sweep.add_argument("--cancel", action="store_true", help="with SWEEP_ID: cancel it")
    sweep.add_argument("--dataset", default="cifar10", help="dataset id or built-in name")
    sweep.add_argument("--model-type", help="model architecture (default: chosen by shape)")
    sweep.add_argument(
        "--space", type=Path, help='JSON file: {"lr": {"float": [0.001, 0.3], "log": true}, ...}'
    )
    sweep.add_argument("--opts", type=Path, help="JSON file of the base job's train_opts")
    sweep.add_argument(
        "--example-idxs", type=int, nargs=2, metavar=("START", "END"), help="training rows"
    )
    sweep.add_argument("--trials", type=int, help="max_trials (default 20, or the grid's size)")
    sweep.add_argument("--parallel", type=int, help="max_parallel trials (default 2)")
    sweep.add_argument("--sampler", choices=["tpe", "random", "grid"], help="default tpe")
    sweep.add_argument("--pruner", choices=["median", "hyperband", "none"], help="default none")
    sweep.add_argument("--metric", help="default test_accuracy")
    sweep.add_argument("--direction", choices=["maximize", "minimize"])
    sweep.add_argument("--seed", type=int)
    sweep.add_argument("--idempotency-key", help="makes a retried submission safe")
    sweep.add_argument("--wait", action="store_true", help="show a live leaderboard to the end")
    sweep.add_argument("--timeout", type=float, help="with --wait: give up after seconds")
    add("sweeps", cmd_sweeps, "list sweeps")


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise OSError(f"{what} {path} is not JSON: {exc}") from None


def cmd_sweep(args: argparse.Namespace) -> int:
    client = client_from_args(args)
    if args.sweep_id is not None:
        if args.space is not None:
            print("cnn-swarm: give a sweep id or --space, not both", file=sys.stderr)
            return 2
        if args.cancel:
            sweep = client.cancel_sweep(args.sweep_id)
        elif args.wait:
            return _follow(client, args.sweep_id, args)
        else:
            sweep = client.get_sweep(args.sweep_id)
        _print_sweep(sweep, args.json)
        return 0
    if args.space is None:
        print("cnn-swarm: a new sweep needs --space (or give a sweep id)", file=sys.stderr)
        return 2
    sweep = client.submit_sweep(
        args.dataset,
        _read_json(args.space, "--space"),
        model_type=args.model_type,
        train_opts=None if args.opts is None else _read_json(args.opts, "--opts"),
        example_idxs=args.example_idxs,
        sampler=args.sampler,
        max_trials=args.trials,
        max_parallel=args.parallel,
        metric=args.metric,
        direction=args.direction,
        pruner=args.pruner,
        seed=args.seed,
        idempotency_key=args.idempotency_key,
    )
    if not args.wait:
        if args.json:
            emit_json(sweep)
        else:
            print(f"sweep {sweep['id']} {sweep['state']}: {sweep['max_trials']} trials")
        return 0
    print(f"sweep {sweep['id']}: best model alias {sweep['id']}-best", file=sys.stderr)
    return _follow(client, str(sweep["id"]), args)


def _follow(client: Any, sweep_id: str, args: argparse.Namespace) -> int:
    shown: list[str] = []

    def show(sweep: dict[str, Any]) -> None:
        board = leaderboard(sweep)
        if shown and shown[-1] == board:
            return
        shown.append(board)
        if sys.stdout.isatty():
            print("\x1b[H\x1b[2J", end="")  # redraw in place
        print(board, flush=True)

    try:
        sweep = client.wait_for_sweep(sweep_id, timeout=args.timeout, on_update=show)
    except KeyboardInterrupt:
        print(f"stopped waiting; sweep {sweep_id} carries on", file=sys.stderr)
        return 130
    except TimeoutError as exc:
        print(f"cnn-swarm: {exc}", file=sys.stderr)
        return 1
    if args.json:
        emit_json(sweep)
    return 0 if sweep["state"] == "succeeded" else 1


def leaderboard(sweep: dict[str, Any]) -> str:
    """The sweep's state and counts, then its trials, best first."""
    counts = ", ".join(f"{n} {state}" for state, n in sweep["counts"].items() if n)
    best = sweep.get("best_trial")
    head = f"sweep {sweep['id']} {sweep['state']} ({counts or 'no trials yet'})"
    if best is not None:
        head += f"; best: trial {best['number']} {sweep['metric']} {best['value']:.4f}"
    names = sorted(sweep["space"])
    maximize = sweep["direction"] == "maximize"

    def rank(trial: dict[str, Any]) -> tuple[int, float]:
        latest = trial["value"] if trial["value"] is not None else (trial["curve"] or [None])[-1]
        if latest is None:
            return (1, 0.0)
        return (0, -latest if maximize else latest)

    rows = [
        [
            trial["number"],
            trial["state"],
            trial["value"],
            len(trial["curve"]),
            *[trial["params"].get(name) for name in names],
            trial["job_id"],
        ]
        for trial in sorted(sweep.get("trials", []), key=rank)
    ]
    headers = ["TRIAL", "STATE", sweep["metric"].upper(), "EPOCHS", *map(str.upper, names), "JOB"]
    return head + "\n" + format_table(headers, rows)


def _print_sweep(sweep: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(sweep)
    else:
        print(leaderboard(sweep))


def cmd_sweeps(args: argparse.Namespace) -> int:
    sweeps = client_from_args(args).list_sweeps()
    if args.json:
        emit_json(sweeps)
        return 0
    rows = []
    for sweep in sweeps:
        best = sweep.get("best_trial") or {}
        counts = sweep["counts"]
        done = sum(counts[s] for s in ("succeeded", "pruned", "failed", "cancelled"))
        rows.append(
            [
                sweep["id"],
                sweep["state"],
                sweep["dataset"],
                sweep["sampler"],
                f"{done}/{sweep['max_trials']}",
                sweep["metric"],
                best.get("value"),
            ]
        )
    headers = ["ID", "STATE", "DATASET", "SAMPLER", "TRIALS", "METRIC", "BEST"]
    print(format_table(headers, rows))
    return 0
