"""Chaos against a real cluster, with figures: trainer kills and controller outages.

(1) ``--kills`` (default 50) random ``kill -9``s of trainers that are training, against a
    stream of small digits jobs (``--epochs`` epochs of ``--examples`` images, a checkpoint per
    epoch) on ``--trainers`` trainers (each victim is replaced by a fresh trainer), lease
    ``LEASE_TIMEOUT_S=3``, heartbeat 0.5 s, ``MAX_ATTEMPTS=10``. Checked as in the CI test
    (``tests/chaos/test_trainer_kills.py``): 0 jobs lost, 0 jobs with two models (models list and
    ``HOME_DIR/torch_models/<id>/``), every epoch exactly once, <= 1 epoch redone per kill, every
    job within its retry budget. Reported: kill -> job dispatched again elsewhere and kill -> job
    training again past its checkpoint (median, max; goal <= lease + 5 s for the former), work
    redone per kill, requeues not caused by a kill.
(2) ``kill -9`` of the controller with each downtime of ``--downtimes`` (default 0,10,60 s)
    while three jobs run on two trainers: the same job list and attempt counts after the
    restart, the trainers re-attach, every job ends on its first attempt.

It starts real processes (``tests/cluster.py``) under a temp dir and kills them all at the end.
The default run takes about 10 minutes on 2 shared cores. Output: progress lines, then one JSON
object with every figure; exit status 1 if a guarantee failed.

Run: ``.venv/bin/python bench/chaos.py [--kills 50] [--downtimes 0,10,60] [--skip-controller]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent / "tests"


def _trainer_kills(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    from chaos_support import CHAOS_TIMINGS, check_outcome, run_trainer_chaos
    from cluster import Cluster

    job = {
        "dataset": "digits",
        "model_type": "SmallConvNet",
        "example_idxs": [0, args.examples],
        "train_opts": {"num_epochs": args.epochs, "seed": 0},
    }
    with Cluster(root, timings=CHAOS_TIMINGS, env={"MAX_ATTEMPTS": "10"}) as cluster:
        cluster.start_controller()
        report = run_trainer_chaos(
            cluster,
            kills=args.kills,
            job=job,
            trainers=args.trainers,
            backlog=args.trainers - 2,
            max_attempts=10,
            seed=args.seed,
            deadline_s=args.deadline,
            say=lambda line: print(line, flush=True),
        )
        figures = report.figures()
        try:
            check_outcome(report)
            figures["guarantees"] = "held"
        except AssertionError as exc:
            figures["guarantees"] = f"VIOLATED: {exc}"
        lease = float(CHAOS_TIMINGS["LEASE_TIMEOUT_S"])
        figures["redispatch_goal_s"] = lease + 5
        return figures


def _controller_outages(root: Path, downtimes: list[float]) -> list[dict[str, Any]]:
    from chaos_support import CHAOS_TIMINGS, controller_outage
    from cluster import Cluster
    from support import wait_until

    epochs = 60
    job = {
        "dataset": "digits",
        "model_type": "SmallConvNet",
        "example_idxs": [0, 300],
        "train_opts": {"num_epochs": epochs, "seed": 0},
    }
    results: list[dict[str, Any]] = []
    for downtime in downtimes:
        with Cluster(root / f"outage-{downtime:g}", timings=CHAOS_TIMINGS) as cluster:
            cluster.start_controller()
            cluster.start_trainers(2)
            client = cluster.client()
            wait_until(lambda c=client: len(c.list_trainers()) == 2, 60, what="two trainers")
            job_ids = [client.submit_job(**job)["id"] for _ in range(3)]
            figures: dict[str, Any] = controller_outage(cluster, client, downtime)
            finals = [client.wait_for_job(job_id, timeout=900) for job_id in job_ids]
            figures["jobs_succeeded"] = sum(1 for f in finals if f["state"] == "succeeded")
            figures["attempts"] = [f["attempt"] for f in finals]
            figures["models"] = len([m for m in client.list_models() if m["job_id"] in job_ids])
            ok = figures["jobs_succeeded"] == 3 and figures["attempts"] == [1, 1, 1]
            figures["guarantees"] = "held" if ok and figures["models"] == 3 else "VIOLATED"
            print(f"controller outage: {figures}", flush=True)
            results.append(figures)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--trainers", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds for the kills")
    parser.add_argument("--downtimes", default="0,10,60", help="controller downtimes, seconds")
    parser.add_argument("--skip-trainers", action="store_true")
    parser.add_argument("--skip-controller", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(TESTS))
    import torch

    torch.set_num_threads(1)
    started = time.monotonic()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cnnswarm-chaos-") as tmp:
        root = Path(tmp)
        if not args.skip_trainers and args.kills > 0:
            results["trainer_kills"] = _trainer_kills(root / "kills", args)
        if not args.skip_controller and args.downtimes:
            downtimes = [float(d) for d in args.downtimes.split(",")]
            results["controller_outages"] = _controller_outages(root, downtimes)
    results["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(results, indent=1))
    text = json.dumps(results)
    return 1 if "VIOLATED" in text else 0


if __name__ == "__main__":
    sys.exit(main())
