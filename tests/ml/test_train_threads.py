"""train(threads=<a function>): the run asks its thread share before it starts, at each epoch
start and every THREAD_CHECK_BATCHES batches, and torch follows the answer (a trainer's job
passes its cnnswarm.cpu.JobShare, whose answer changes as other jobs on the host start and
end)."""

from __future__ import annotations

import itertools

import pytest
import torch

from cnnswarm.ml import train as train_module
from cnnswarm.ml.datasets import make_synthetic
from cnnswarm.ml.train import Progress, train

torch.set_num_threads(1)

BATCH = 32  # 32 images of 32x32: just large enough for more than one thread (threads_for)
# Asked every 4 batches here instead of the module's 20: the same asks on a quarter of the batches
# (5 batches per epoch, with 4 progress reports inside it).
CHECK_EVERY = 4


def test_torch_follows_the_share_asked_at_each_epoch_start_and_every_few_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(train_module, "THREAD_CHECK_BATCHES", CHECK_EVERY)
    num_batches = CHECK_EVERY + 1  # asked at batch 0 and CHECK_EVERY
    dataset = make_synthetic(num_batches * BATCH, 8, 3, 32, 32, 2, seed=0)
    answers = itertools.cycle([1, 2])
    asked: list[int] = []

    def share() -> int:
        asked.append(next(answers))
        return asked[-1]

    seen: list[tuple[int, int, int]] = []  # (epoch, batch, torch's threads) at each report

    def on_progress(progress: Progress) -> None:
        seen.append((progress.epoch, progress.batch, torch.get_num_threads()))

    opts = {"num_epochs": 2, "batch_size": BATCH, "seed": 0}
    train("SmallConvNet", dataset, opts, threads=share, on_progress=on_progress)
    # Once before the run, then twice per epoch: at its start and THREAD_CHECK_BATCHES later.
    assert asked == [1, 2, 1, 2, 1]
    # Reports inside an epoch come before its second ask: they run on the epoch-start answer.
    assert [threads for _, batch, threads in seen if 0 < batch < num_batches] == [2] * 8
    # The report after the first epoch and the final one come after a mid-epoch answer.
    assert [threads for _, batch, threads in seen if batch in (0, num_batches)] == [1, 1]
    torch.set_num_threads(1)


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
