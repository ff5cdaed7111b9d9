"""train(threads=<a function>): the run asks its thread share before it starts, at each epoch
start and every THREAD_CHECK_S seconds of its clock, and torch follows the answer (a trainer's
job passes its cnnswarm.cpu.JobShare, whose answer changes as other jobs on the host start and
end). Seconds, not batches: an epoch of the builtin `synthetic` set is 16 batches, and when the
share was asked every 20 batches a job that started alone kept both cores for its whole first
epoch beside a second job, 5x slower than it should have been."""

from __future__ import annotations

import itertools

import pytest
import torch

from cnnswarm.ml import train as train_module
from cnnswarm.ml.datasets import make_synthetic
from cnnswarm.ml.train import Progress, train

torch.set_num_threads(1)

BATCH = 32  # 32 images of 32x32: just large enough for more than one thread (threads_for)


class BatchClock:
    """The run's clock: it moves ``step`` seconds at each poll of ``should_cancel`` (once
    before every batch) and stands still otherwise."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        return self.now

    def should_cancel(self) -> bool:
        self.now += self.step
        return False


def test_torch_follows_the_share_asked_at_each_epoch_start_and_every_few_tenths_of_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    check_s = 0.25
    monkeypatch.setattr(train_module, "THREAD_CHECK_S", check_s)
    step = check_s / 2  # a batch takes half the interval: asked every 2
    clock = BatchClock(step)
    num_batches = 5
    dataset = make_synthetic(num_batches * BATCH, 8, 3, 32, 32, 2, seed=0)
    answers = itertools.cycle([1, 2])
    asked_at: list[float] = []
    answered: list[int] = []

    def share() -> int:
        asked_at.append(clock())
        answered.append(next(answers))
        return answered[-1]

    followed: list[bool] = []  # at each progress report: torch runs the latest answer

    def on_progress(progress: Progress) -> None:
        followed.append(torch.get_num_threads() == answered[-1])

    opts = {"num_epochs": 2, "batch_size": BATCH, "seed": 0}
    try:
        train(
            "SmallConvNet",
            dataset,
            opts,
            threads=share,
            on_progress=on_progress,
            should_cancel=clock.should_cancel,
            clock=clock,
        )
    finally:
        torch.set_num_threads(1)
    # Before the run (0 s); in each epoch at its first batch (asked at once) and then whenever
    # check_s has passed since the last ask: batches 0, 2 and 4 of both epochs (5 batches each).
    assert asked_at == [0.0] + [step * batch for batch in (1, 3, 5, 6, 8, 10)]
    assert len(followed) >= 2 * 4 and all(followed)


def test_a_fixed_count_or_tiny_batches_never_ask() -> None:
    asked: list[int] = []

    def share() -> int:
        asked.append(2)
        return 2

    dataset = make_synthetic(64, 8, 3, 32, 32, 2, seed=0)
    train("SmallConvNet", dataset, {"num_epochs": 1, "batch_size": BATCH}, threads=1)
    assert torch.get_num_threads() == 1
    tiny = make_synthetic(64, 8, 1, 8, 8, 2, seed=0)  # 8x8 digits-like: one thread is best
    train("SmallConvNet", tiny, {"num_epochs": 1, "batch_size": BATCH}, threads=share)
    assert asked == [] and torch.get_num_threads() == 1
