"""Each epoch's ``duration_s`` (and ``images_per_s``) on a fresh and on a resumed epoch, held to
a clock the test drives, so the sums are exact however loaded the machine is.

``train(clock=...)`` reads a ``FakeClock``: each poll of ``should_cancel`` (once before every
batch) is one batch's work and advances it ``BATCH_S``; each evaluation of the test split
advances it ``EVAL_S``. Nothing else moves it, so an epoch of ``n`` batches takes exactly
``n * BATCH_S + EVAL_S`` and its batches ``n * BATCH_S``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import torch

import cnnswarm.ml.train as train_module
from cnnswarm.errors import TrainingCancelled
from cnnswarm.ml.checkpoint import checkpoint_from_bytes, checkpoint_to_bytes
from cnnswarm.ml.datasets.base import ArrayDataset
from cnnswarm.ml.datasets.digits import load_digits
from cnnswarm.ml.train import train

torch.set_num_threads(1)

# 640 digits in batches of 32: 20 batches an epoch; a checkpoint every 5 batches.
NUM_TRAIN = 640
BATCHES = 20
OPTS: dict[str, Any] = {"num_epochs": 2, "batch_size": 32, "seed": 7}
BATCH_S = 1.0
EVAL_S = 0.5
# Powers of two and small integers: every sum below is exact in floating point.
EPOCH_S = BATCHES * BATCH_S + EVAL_S


@dataclass
class FakeClock:
    """Seconds that pass only when the training loop's callbacks say work was done."""

    now: float
    stop_after: tuple[int, int] | None = None  # (epoch, batch) of the checkpoint to stop at
    checkpoints: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def should_cancel(self) -> bool:
        if self.checkpoints and self.stop_after is not None:
            last = self.checkpoints[-1]
            if (last["epoch"], last["batch"]) == self.stop_after:
                return True
        self.now += BATCH_S  # the batch about to run
        return False

    def on_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.checkpoints.append(checkpoint)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The clock of this process's run; evaluating the test split takes it ``EVAL_S``."""
    fake = FakeClock(now=1000.0)
    real_evaluate = train_module.evaluate

    def timed_evaluate(*args: Any, **kwargs: Any) -> tuple[float | None, float | None]:
        fake.now += EVAL_S
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", timed_evaluate)
    return fake


def _digits() -> ArrayDataset:
    dataset = load_digits()
    return replace(
        dataset,
        x_train=dataset.x_train[:NUM_TRAIN],
        y_train=dataset.y_train[:NUM_TRAIN],
        x_test=dataset.x_test[:64],
        y_test=dataset.y_test[:64],
    )


def test_duration_of_a_fresh_epoch_is_its_batches_and_its_evaluation(clock: FakeClock) -> None:
    result = train(
        "SmallConvNet",
        _digits(),
        OPTS,
        should_cancel=clock.should_cancel,
        on_checkpoint=clock.on_checkpoint,
        threads=1,
        clock=clock,
    )
    assert [m["epoch"] for m in result.metrics] == [1, 2]
    assert [m["duration_s"] for m in result.metrics] == [EPOCH_S, EPOCH_S]
    assert [m["images_per_s"] for m in result.metrics] == [NUM_TRAIN / (BATCHES * BATCH_S)] * 2


def test_duration_of_a_resumed_epoch_adds_this_process_to_the_time_carried_over(
    clock: FakeClock,
) -> None:
    """Stopped 5 batches into epoch 2 and resumed in a new process (a clock that reads
    differently, the downtime between not counted): the epoch counts the 5 batches' time
    carried in the checkpoint plus this run's 15, once each (see ``ml/train.py``), so it
    takes as long as the same epoch never stopped."""
    dataset = _digits()
    clock.stop_after = (1, 5)
    with pytest.raises(TrainingCancelled):
        train(
            "SmallConvNet",
            dataset,
            {**OPTS, "checkpoint_every_batches": 5},
            should_cancel=clock.should_cancel,
            on_checkpoint=clock.on_checkpoint,
            threads=1,
            clock=clock,
        )
    checkpoint = checkpoint_from_bytes(checkpoint_to_bytes(clock.checkpoints[-1]))
    assert (checkpoint["epoch"], checkpoint["batch"]) == (1, 5)
    assert checkpoint["epoch_state"]["train_time_s"] == 5 * BATCH_S
    assert [m["duration_s"] for m in checkpoint["metrics"]] == [EPOCH_S]

    # The new process: its clock reads far later, and nothing stops it.
    clock.now, clock.stop_after, clock.checkpoints = 50_000.0, None, []
    result = train(
        "SmallConvNet",
        dataset,
        None,
        resume_from=checkpoint,
        should_cancel=clock.should_cancel,
        on_checkpoint=clock.on_checkpoint,
        threads=1,
        clock=clock,
    )
    assert clock.now == 50_000.0 + 15 * BATCH_S + EVAL_S  # only the rest of epoch 2 ran
    assert [m["epoch"] for m in result.metrics] == [1, 2]
    assert [m["duration_s"] for m in result.metrics] == [EPOCH_S, EPOCH_S]
    assert result.metrics[1]["images_per_s"] == NUM_TRAIN / (BATCHES * BATCH_S)
