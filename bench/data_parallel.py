"""Does a data-parallel job on two trainers train faster than on one, and reach the same model?

Two setups, each a REAL local cluster (``cnn-swarm up``, as in ``bench/trainer_scaling.py``)
with ``TORCH_THREADS=1`` (one thread per job process):

- 1 trainer, one ``ResNet8`` job on ``synthetic`` (learnable 32x32 RGB images);
- 2 trainers, the same job with ``"workers": 2`` (gloo over loopback; the same global batch
  size, learning rate, data order and seed).

Reported per setup: training images/s (the median epoch's ``images_per_s``: the whole global
batch's images over rank 0's batch time), the wall time from submission to success (same
number of epochs), and the final test accuracy. The last line is
``ratio=<2-worker img/s / 1-worker img/s>`` (target >= 1.7 on 2 free cores). On a shared
machine the figures move with the other load.

Run: ``.venv/bin/python bench/data_parallel.py [--epochs 3] [--batch-size 128]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainer_scaling import MODEL_TYPE, Setup, local_cluster

JOB_TIMEOUT_S = 3600.0


def run(root: Path, workers: int, epochs: int, batch_size: int) -> dict[str, Any]:
    """One job on a fresh cluster of ``workers`` trainers; its figures."""
    with local_cluster(root, Setup(workers, "1")) as client:
        client.get_dataset("synthetic")  # built before the clock starts
        started = time.monotonic()
        job = client.submit_job(
            "synthetic",
            model_type=MODEL_TYPE,
            train_opts={"num_epochs": epochs, "seed": 0, "batch_size": batch_size},
            workers=workers,
        )
        final = client.wait_for_job(job["id"], timeout=JOB_TIMEOUT_S)
        wall_s = time.monotonic() - started
    if final["state"] != "succeeded":
        raise RuntimeError(f"the {workers}-worker job did not succeed: {final['error']}")
    metrics = final["metrics"]
    return {
        "images_per_s": statistics.median(m["images_per_s"] for m in metrics),
        "wall_s": wall_s,
        "test_accuracy": metrics[-1]["test_accuracy"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    print(f"{MODEL_TYPE} on synthetic, {args.epochs} epochs, global batch {args.batch_size}, "
          "TORCH_THREADS=1", flush=True)  # fmt: skip
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="cnnswarm-dp-") as tmp:
        for workers in (1, 2):
            root = Path(tmp) / f"workers-{workers}"
            root.mkdir()
            results[workers] = run(root, workers, args.epochs, args.batch_size)
            print(f"workers={workers}: {results[workers]}", flush=True)
    print()
    print("| setup | images/s | wall time | final test accuracy |")
    print("|---|---|---|---|")
    for workers, result in results.items():
        print(f"| {workers} trainer(s) x 1 thread | {result['images_per_s']:.0f} | "
              f"{result['wall_s']:.1f} s | {result['test_accuracy']:.4f} |")  # fmt: skip
    print(f"ratio={results[2]['images_per_s'] / results[1]['images_per_s']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
