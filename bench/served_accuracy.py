"""Recorded against served accuracy, per model type, on real images (the README's table).

A real cluster (one controller, one trainer: ``tests/cluster.py``) gets ``digits_rgb32`` (real
scanned digits drawn over real photographs, 3x32x32, 10 classes, 1,437 train / 360 test;
``tests/real_images.py``) as its CIFAR-10 python archive. Each model type trains as a job, one
at a time; then its whole test split is predicted through the HTTP routes in every input form
(``tests/served.py``: multipart PNG, base64 ``instances``, the seed's ``/get_examples`` +
``/predict``). The seed's network is trained through the seed's ``/train`` with the options of
issue 8's report (``num_epochs 10, scheduler_mode plateau``; the seed's lr and momentum).

Printed: one Markdown row per model type (epochs, wall time of the job, recorded final
``test_accuracy``, served accuracy per form), then ``ratio=`` the lowest served accuracy over
its recorded one (1.0 when what is served is what was measured). Exit status 1 if any served
accuracy differs from the recorded one by more than 0.01. About 11 minutes on 2 shared cores.

Run: ``.venv/bin/python bench/served_accuracy.py [--models ResNet8,SmallConvNet]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent / "tests"
MODEL_TYPES = ("NNConvResNetRGB", "ResNet8", "ResNet20", "SmallConvNet")


def _opts(model_type: str, quick_opts: dict[str, Any]) -> dict[str, Any]:
    """The seed's network keeps the seed's options (issue 8's report); the others learn fast."""
    if model_type == "NNConvResNetRGB":
        return {"num_epochs": 10, "scheduler_mode": "plateau", "seed": 0}
    return {**quick_opts, "num_epochs": 10}


def _seconds(job: dict[str, Any]) -> float:
    return float(job["finished_at"]) - float(job["started_at"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODEL_TYPES), help="comma-separated types")
    args = parser.parse_args()
    sys.path.insert(0, str(TESTS))
    import requests

    from cluster import Cluster
    from real_images import QUICK_OPTS, digits_rgb32, write_cifar10_archive
    from served import FORMS, served_accuracy
    from support import wait_until

    dataset = digits_rgb32()
    rows, ratios, ok = [], [], True
    with tempfile.TemporaryDirectory() as root, Cluster(Path(root)) as cluster:
        controller = cluster.start_controller()
        write_cifar10_archive(dataset, controller.home / "torch_data" / "cifar-10-python.tar.gz")
        cluster.start_trainers(1)
        client = cluster.client()
        wait_until(lambda: client.list_trainers(), 30, what="a trainer")
        for model_type in args.models.split(","):
            opts = _opts(model_type, QUICK_OPTS)
            if model_type == "NNConvResNetRGB":  # through the seed's own route
                body = {"model_type": model_type, "model_id": "seed-net", "train_opts": opts}
                answer = requests.post(f"{controller.url}/train", json=body, timeout=10)
                job_id = answer.json()["job_id"]
            else:
                job_id = client.submit_job("cifar10", model_type=model_type, train_opts=opts)["id"]
            job = client.wait_for_job(job_id, timeout=1800)
            if job["state"] != "succeeded":
                print(f"{model_type}: {job['state']}: {job['error']}", flush=True)
                return 1
            recorded = float(job["metrics"][-1]["test_accuracy"])
            served = {
                f: served_accuracy(controller.url, job["model_id"], dataset, f) for f in FORMS
            }
            ok = ok and all(abs(v - recorded) <= 0.01 for v in served.values())
            ratios.append(min(served.values()) / recorded)
            rows.append(
                f"| {model_type} | {opts['num_epochs']} | {_seconds(job):.0f} s | {recorded:.3f} | "
                + " | ".join(f"{served[f]:.3f}" for f in FORMS)
                + " |"
            )
            print(rows[-1], flush=True)
    print(
        "\n| model | epochs | wall time | recorded test_accuracy | "
        + " | ".join(f"served ({f})" for f in FORMS)
        + " |"
    )
    print("|---|---|---|---|" + "---|" * len(FORMS))
    print("\n".join(rows))
    print(f"ratio={min(ratios):.4f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
