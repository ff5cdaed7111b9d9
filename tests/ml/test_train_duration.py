"""Each epoch's ``duration_s`` is held to the wall clock, on a fresh and on a resumed epoch.

The clock marks come from the loop's own callbacks: ``should_cancel`` is polled before every
batch (its first call in an epoch marks the epoch's start in this process) and the epoch-end
checkpoint is handed out right after the epoch's metrics are recorded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import torch

from cnnswarm.errors import TrainingCancelled
from cnnswarm.ml.checkpoint import checkpoint_from_bytes, checkpoint_to_bytes
from cnnswarm.ml.datasets.base import ArrayDataset
from cnnswarm.ml.datasets.digits import load_digits
from cnnswarm.ml.train import train

torch.set_num_threads(1)

# Batches of 32 over 1,437 digits: 45 batches, a few tenths of a second an epoch, so the
# epoch's time dwarfs the few milliseconds between the loop's clock and the callbacks'.
OPTS: dict[str, Any] = {"num_epochs": 2, "batch_size": 32, "seed": 7}
# The callbacks sit just outside the span the loop measures (the epoch's data order before the
# first poll, the checkpoint copy before it is handed out): allow for that and for scheduling.
TOLERANCE_S = 0.05
TOLERANCE_FRACTION = 0.1


@dataclass
class EpochClock:
    """Wall-clock marks of each epoch, taken from the training loop's callbacks."""

    stop_after: tuple[int, int] | None = None  # (epoch, batch) of the checkpoint to stop at
    started: dict[int, float] = field(default_factory=dict)  # epoch index -> first batch
    ended: dict[int, float] = field(default_factory=dict)  # epoch index -> metrics recorded
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    handed_out: list[float] = field(default_factory=list)  # when each checkpoint arrived
    current_epoch: int = 0

    def should_cancel(self) -> bool:
        if self.checkpoints and self.stop_after is not None:
            last = self.checkpoints[-1]
            if (last["epoch"], last["batch"]) == self.stop_after:
                return True
        self.started.setdefault(self.current_epoch, time.perf_counter())
        return False

    def on_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        now = time.perf_counter()
        self.checkpoints.append(checkpoint)
        self.handed_out.append(now)
        if checkpoint["batch"] == 0:  # an epoch boundary: epoch index ``epoch - 1`` ended
            self.ended[checkpoint["epoch"] - 1] = now
            self.current_epoch = checkpoint["epoch"]


def _digits() -> ArrayDataset:
    dataset = load_digits()
    # A small test split: evaluation stays a sliver of the epoch.
    return replace(dataset, x_test=dataset.x_test[:64], y_test=dataset.y_test[:64])


def _assert_close(duration_s: float, expected_s: float) -> None:
    slack = TOLERANCE_S + TOLERANCE_FRACTION * expected_s
    assert abs(duration_s - expected_s) <= slack, (
        f"duration_s {duration_s:.3f}s, wall clock {expected_s:.3f}s"
    )


def test_duration_of_a_fresh_epoch_is_its_wall_time() -> None:
    clock = EpochClock()
    result = train(
        "SmallConvNet",
        _digits(),
        OPTS,
        should_cancel=clock.should_cancel,
        on_checkpoint=clock.on_checkpoint,
        threads=1,
    )
    assert [m["epoch"] for m in result.metrics] == [1, 2]
    for index, metrics in enumerate(result.metrics):
        _assert_close(metrics["duration_s"], clock.ended[index] - clock.started[index])


def test_duration_of_a_resumed_epoch_adds_this_process_to_the_time_carried_over() -> None:
    """Stopped 5 batches into epoch 2 and resumed in a new run: the epoch counts the training
    time carried in the checkpoint plus this run's time on it (see ``ml/train.py``)."""
    dataset = _digits()
    first = EpochClock(stop_after=(1, 5))
    with pytest.raises(TrainingCancelled):
        train(
            "SmallConvNet",
            dataset,
            {**OPTS, "checkpoint_every_batches": 5},
            should_cancel=first.should_cancel,
            on_checkpoint=first.on_checkpoint,
            threads=1,
        )
    checkpoint = checkpoint_from_bytes(checkpoint_to_bytes(first.checkpoints[-1]))
    assert (checkpoint["epoch"], checkpoint["batch"]) == (1, 5)
    carried_s = float(checkpoint["epoch_state"]["train_time_s"])
    # The carried time is the first run's time on the 5 batches before the stop.
    _assert_close(carried_s, first.handed_out[-1] - first.started[1])

    resumed = EpochClock(current_epoch=1)
    result = train(
        "SmallConvNet",
        dataset,
        None,
        resume_from=checkpoint,
        should_cancel=resumed.should_cancel,
        on_checkpoint=resumed.on_checkpoint,
        threads=1,
    )
    assert [m["epoch"] for m in result.metrics] == [1, 2]
    this_run_s = resumed.ended[1] - resumed.started[1]
    assert this_run_s > 4 * carried_s  # 40 of the epoch's 45 batches ran in this run
    _assert_close(result.metrics[1]["duration_s"], carried_s + this_run_s)
