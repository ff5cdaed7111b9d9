"""One rank of a data-parallel test run, as its own process (``tests/ml/test_distributed.py`` starts
them): ``python gang_rank.py RANK WORLD PORT OUT [DIE_AT_BATCH]``.

Trains the tiny run of ``tiny_run()`` as rank RANK of WORLD and saves ``{"state": ...,
"metrics": ...}`` to OUT, or ``{"error": "<ExcType>: message"}`` when it fails. With
DIE_AT_BATCH, the process kills itself (SIGKILL) before that batch (counted from 1). With
``GANG_KEEP_CHECKPOINT=N:PATH`` in its environment, rank 0 saves the N-th checkpoint it hands
out to PATH.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import torch

from cnnswarm.ml.datasets import make_synthetic
from cnnswarm.ml.distributed import GangBroken, GangMember, join_gang
from cnnswarm.ml.train import train

OPTIONS: dict[str, Any] = {
    "num_epochs": 3,
    "batch_size": 16,
    "seed": 7,
    "augment": True,
    "checkpoint_every_batches": 2,
}


def tiny_dataset() -> Any:
    """The run's data: 2 classes of 8x8 images, learnable."""
    return make_synthetic(96, 48, 3, 8, 8, 2, seed=3)


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    rank, world, port, out = int(argv[1]), int(argv[2]), int(argv[3]), argv[4]
    die_at = int(argv[5]) if len(argv) > 5 else None
    batches = 0

    def should_cancel() -> bool:
        nonlocal batches
        batches += 1
        if batches == die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return False

    checkpoints = 0
    keep_at, _, keep_path = os.environ.get("GANG_KEEP_CHECKPOINT", "").partition(":")

    def keep_checkpoint(checkpoint: dict[str, Any]) -> None:
        nonlocal checkpoints
        checkpoints += 1
        if keep_at and checkpoints == int(keep_at):
            torch.save(checkpoint, keep_path)

    member = GangMember(rank, world, "127.0.0.1", port, init_timeout_s=20, collective_timeout_s=20)
    try:
        with join_gang(member, force_cpu=True) as gang:
            result = train(
                "SmallConvNet",
                tiny_dataset(),
                OPTIONS,
                gang=gang,
                threads=1,
                should_cancel=should_cancel,
                on_checkpoint=keep_checkpoint,
            )
    except GangBroken as exc:
        torch.save({"error": f"GangBroken: {exc}"}, out)
        return
    torch.save({"state": result.artifact.state_dict, "metrics": result.metrics}, out)


if __name__ == "__main__":
    main(sys.argv)
