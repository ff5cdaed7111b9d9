"""Data-parallel training (``cnnswarm.ml.distributed``) on real processes over loopback gloo:
a 2-rank run is the 1-process run (same data order, same weights within float and
per-shard batch-norm noise), a gang that cannot meet fails within its bound, and a survivor
whose peer is killed mid-epoch fails with ``GangBroken`` instead of hanging."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import gang_rank
from cnnswarm.errors import InvalidInput
from cnnswarm.ml.distributed import GangBroken, GangMember, join_gang, shard_bounds
from cnnswarm.ml.train import train
from support import free_port

RANK_SCRIPT = Path(gang_rank.__file__)


def run_gang(
    world: int,
    tmp_path: Path,
    die: dict[int, int] | None = None,
    env: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Run ``gang_rank.py`` as ``world`` processes (``env`` added to their environment);
    each one's saved result, by rank."""
    port = free_port()
    outs = [tmp_path / f"rank{rank}.pt" for rank in range(world)]
    procs = []
    try:
        for rank in range(world):
            args = [sys.executable, str(RANK_SCRIPT), str(rank), str(world), str(port)]
            args.append(str(outs[rank]))
            if die and rank in die:
                args.append(str(die[rank]))
            procs.append(subprocess.Popen(args, env={**os.environ, **(env or {})}))
        for proc in procs:
            proc.wait(timeout=120)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [torch.load(out, weights_only=True) if out.exists() else {} for out in outs]


def _is_batch_norm_statistic(name: str) -> bool:
    return name.endswith(("running_mean", "running_var", "num_batches_tracked"))


def test_shards_are_contiguous_balanced_and_cover_the_batch() -> None:
    for rows in (2, 5, 16, 17):
        for world in (1, 2, 3):
            if rows < world:
                continue
            bounds = [shard_bounds(rows, rank, world) for rank in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == rows
            assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
            sizes = [end - start for start, end in bounds]
            assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_two_ranks_train_the_one_process_run(tmp_path: Path) -> None:
    alone = train("SmallConvNet", gang_rank.tiny_dataset(), gang_rank.OPTIONS, threads=1)
    rank0, rank1 = run_gang(2, tmp_path)
    assert "error" not in rank0 and "error" not in rank1, (rank0, rank1)
    # Every rank ends with the same weights (DDP), and they are the one-process run's, up to
    # batch norms normalizing over each rank's half of the batch.
    # (Batch-norm statistics are buffers: rank 0 alone re-estimates them to evaluate.)
    weights = [name for name in rank0["state"] if not _is_batch_norm_statistic(name)]
    for name in weights:
        assert torch.equal(rank0["state"][name], rank1["state"][name]), name
    for name in weights:
        one, two = alone.artifact.state_dict[name], rank0["state"][name]
        assert torch.allclose(one, two, atol=0.05, rtol=0.05), name
    two = rank0["metrics"][-1]
    one = alone.metrics[-1]
    assert abs(two["test_accuracy"] - one["test_accuracy"]) <= 0.05
    assert abs(two["train_loss"] - one["train_loss"]) <= 0.05
    # Only rank 0 evaluates.
    assert rank1["metrics"][-1]["test_accuracy"] is None


def test_a_gang_of_one_is_the_one_process_run(tmp_path: Path) -> None:
    """The gang path (DDP, shards, loss scaling, flips drawn per global batch) adds nothing of
    its own: with one rank it gives the plain run's weights up to float rounding."""
    alone = train("SmallConvNet", gang_rank.tiny_dataset(), gang_rank.OPTIONS, threads=1)
    (rank0,) = run_gang(1, tmp_path)
    for name, value in alone.artifact.state_dict.items():
        assert torch.allclose(value.double(), rank0["state"][name].double(), atol=1e-5), name
    assert rank0["metrics"][-1]["test_accuracy"] == alone.metrics[-1]["test_accuracy"]


def test_a_two_rank_checkpoint_resumes_on_one_process(tmp_path: Path) -> None:
    """min_workers: a gang's mid-epoch checkpoint resumes at another world size as the same run
    (global position, data order, flips, schedule and the epoch's running sums carry over)."""
    kept = tmp_path / "checkpoint.pt"
    # Checkpoints every 2 of the 6 batches per epoch: the 4th is epoch 2, batch 2.
    rank0, _ = run_gang(2, tmp_path, env={"GANG_KEEP_CHECKPOINT": f"4:{kept}"})
    checkpoint = torch.load(kept, weights_only=True)
    assert (checkpoint["epoch"], checkpoint["batch"]) == (1, 2)

    resumed = train("SmallConvNet", gang_rank.tiny_dataset(), None, resume_from=checkpoint)

    assert [m["epoch"] for m in resumed.metrics] == [1, 2, 3]
    assert resumed.metrics[0] == rank0["metrics"][0]  # the epoch before the checkpoint, kept
    for name, value in rank0["state"].items():
        if not _is_batch_norm_statistic(name):
            assert torch.allclose(value, resumed.artifact.state_dict[name], atol=0.05), name
    assert abs(resumed.metrics[-1]["train_loss"] - rank0["metrics"][-1]["train_loss"]) <= 0.05


def test_a_gang_that_cannot_meet_fails_within_its_bound() -> None:
    member = GangMember(0, 2, "127.0.0.1", free_port(), init_timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(GangBroken, match="did not meet"), join_gang(member, force_cpu=True):
        pass
    assert time.monotonic() - started < 30  # bounded: not the default minutes


def test_a_killed_rank_breaks_the_gang_instead_of_hanging_the_survivor(tmp_path: Path) -> None:
    rank0, rank1 = run_gang(2, tmp_path, die={1: 4})
    assert rank1 == {}  # killed: it saved nothing
    assert rank0["error"].startswith("GangBroken"), rank0


def test_a_world_larger_than_the_last_batch_is_refused() -> None:
    dataset = gang_rank.tiny_dataset()
    member = GangMember(0, 1, "127.0.0.1", free_port())
    opts = {**gang_rank.OPTIONS, "batch_size": 95}  # the last batch has 1 image
    with join_gang(member, force_cpu=True) as gang:
        object.__setattr__(gang, "world_size", 2)  # as if a second rank had joined
        with pytest.raises(InvalidInput, match="fewer than the 2 workers"):
            train("SmallConvNet", dataset, opts, gang=gang, threads=1)
