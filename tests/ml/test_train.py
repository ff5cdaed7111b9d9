"""The training loop: options, tiny runs, exact resume, cancel, progress, digits accuracy."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch

from cnnswarm.cpu import cpu_share
from cnnswarm.errors import InvalidInput, TrainingCancelled
from cnnswarm.ml.checkpoint import checkpoint_from_bytes, checkpoint_to_bytes
from cnnswarm.ml.datasets.base import ArrayDataset, Normalization
from cnnswarm.ml.datasets.digits import load_digits
from cnnswarm.ml.train import Progress, TrainOptions, threads_for, train

torch.set_num_threads(1)


def structured_dataset(
    n_train: int, n_test: int = 20, *, shape: tuple[int, int, int] = (1, 8, 8), classes: int = 3
) -> ArrayDataset:
    """Random images whose class sets the brightness of one quadrant: learnable, seeded."""
    rng = np.random.default_rng(1)
    c, h, w = shape

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, classes, n)
        x = rng.integers(0, 100, (n, c, h, w))
        for i, label in enumerate(y):
            x[i, :, : h // 2, label * w // classes : (label + 1) * w // classes] += 150
        return x.astype(np.uint8), y.astype(np.int64)

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    return ArrayDataset(
        "structured",
        [f"c{i}" for i in range(classes)],
        x_train,
        y_train,
        x_test,
        y_test,
        Normalization((0.3,) * c, (0.25,) * c),
    )


# ---- options ------------------------------------------------------------------------------------


def test_seed_defaults_for_the_seed_model() -> None:
    opts = TrainOptions.from_dict(None, model_type="NNConvResNetRGB")
    assert (opts.num_epochs, opts.lr, opts.momentum, opts.scheduler_mode) == (
        80,
        0.01,
        0.5,
        "multistep",
    )
    assert (opts.batch_size, opts.weight_decay, opts.optimizer, opts.augment) == (
        64,
        1e-4,
        "sgd",
        True,
    )


def test_augment_defaults_off_for_the_digits_model_and_options_round_trip() -> None:
    opts = TrainOptions.from_dict({"lr": 0.5, "seed": 3}, model_type="SmallConvNet")
    assert opts.augment is False
    assert TrainOptions.from_dict(opts.to_dict(), model_type="SmallConvNet") == opts


@pytest.mark.parametrize(
    ("opts", "field"),
    [
        ({"num_epoch": 3}, "num_epoch"),
        ({"lr": "fast"}, "lr"),
        ({"lr": 0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"num_epochs": 0}, "num_epochs"),
        ({"num_epochs": 2.5}, "num_epochs"),
        ({"num_epochs": True}, "num_epochs"),
        ({"momentum": 1.0}, "momentum"),
        ({"batch_size": 0}, "batch_size"),
        ({"weight_decay": -1e-3}, "weight_decay"),
        ({"scheduler_mode": "cyclic"}, "scheduler_mode"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"augment": "yes"}, "augment"),
        ({"seed": -1}, "seed"),
        ({"checkpoint_every_batches": -2}, "checkpoint_every_batches"),
        ({"device": "tpu"}, "device"),
        ({"bf16": 1}, "bf16"),
    ],
)
def test_bad_options_are_rejected_by_name(opts: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        TrainOptions.from_dict(opts, model_type="NNConvResNetRGB")
    assert info.value.field == field
    assert field in info.value.message


def test_options_must_be_a_mapping_and_model_known() -> None:
    with pytest.raises(InvalidInput) as info:
        TrainOptions.from_dict([1, 2], model_type="ResNet8")  # type: ignore[arg-type]
    assert info.value.field == "train_opts"
    with pytest.raises(InvalidInput) as info:
        TrainOptions.from_dict({}, model_type="VGG")
    assert info.value.field == "model_type"


# ---- small runs ---------------------------------------------------------------------------------


def test_one_epoch_on_five_images_with_a_batch_bigger_than_the_data() -> None:
    ds = structured_dataset(200, shape=(3, 32, 32), classes=10).subset([0, 5])
    result = train("NNConvResNetRGB", ds, {"num_epochs": 1, "seed": 0}, threads=1)
    assert [m["epoch"] for m in result.metrics] == [1]
    metric = result.metrics[0]
    assert set(metric) == {
        "epoch",
        "train_loss",
        "train_accuracy",
        "test_loss",
        "test_accuracy",
        "lr",
        "images_per_s",
        "duration_s",
    }
    assert 0.0 <= metric["test_accuracy"] <= 1.0 and metric["train_loss"] > 0
    model = result.artifact.build_model()
    assert not model.training
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert result.artifact.train_opts["seed"] == 0
    assert result.artifact.dataset["num_train"] == 5


def test_multistep_schedule_drops_lr_at_a_third_and_two_thirds() -> None:
    ds = structured_dataset(16)
    opts = {"num_epochs": 3, "lr": 0.1, "scheduler_mode": "multistep", "optimizer": "sgd"}
    result = train("SmallConvNet", ds, {**opts, "seed": 1}, threads=1)
    assert [m["lr"] for m in result.metrics] == pytest.approx([0.1, 0.01, 0.001])


def test_bf16_autocast_and_plateau_run() -> None:
    ds = structured_dataset(24)
    opts = {"num_epochs": 2, "bf16": True, "scheduler_mode": "plateau", "seed": 2}
    result = train("ResNet8", ds, opts, threads=1)
    assert len(result.metrics) == 2


def test_cuda_requested_without_cuda_is_invalid_input() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InvalidInput) as info:
        train("SmallConvNet", structured_dataset(8), {"device": "cuda", "num_epochs": 1})
    assert info.value.field == "device"
    result = train(
        "SmallConvNet",
        structured_dataset(8),
        {"device": "cuda", "force_cpu": True, "num_epochs": 1},
        threads=1,
    )
    assert len(result.metrics) == 1


# ---- exact resume -------------------------------------------------------------------------------

RESUME_CASES = {
    # SGD momentum + multistep, flips (data RNG), dropout (torch RNG), batch checkpoints.
    "sgd-multistep": {"optimizer": "sgd", "momentum": 0.9, "lr": 0.05, "augment": True},
    # AdamW (step counters) + cosine.
    "adamw-cosine": {"optimizer": "adamw", "scheduler_mode": "cosine", "augment": True},
    "sgd-exponential": {"optimizer": "sgd", "scheduler_mode": "exponential"},
    "sgd-plateau": {"optimizer": "sgd", "scheduler_mode": "plateau"},
    "sgd-constant": {"optimizer": "sgd", "scheduler_mode": "none"},
}


def _run_until(ds: ArrayDataset, opts: dict[str, Any], stop_when: Any) -> dict[str, Any]:
    """Train until ``stop_when(checkpoint)`` holds, cancel, and return that checkpoint."""
    seen: list[dict[str, Any]] = []

    def keep(ckpt: dict[str, Any]) -> None:
        seen.append(ckpt)

    with pytest.raises(TrainingCancelled):
        train(
            "SmallConvNet",
            ds,
            opts,
            on_checkpoint=keep,
            should_cancel=lambda: bool(seen) and stop_when(seen[-1]),
            threads=1,
        )
    return seen[-1]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert different == []


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
@pytest.mark.parametrize("where", ["epoch-boundary", "mid-epoch"])
def test_stopped_and_resumed_run_ends_bit_identical(case: str, where: str) -> None:
    ds = structured_dataset(70)  # batch 16: 5 batches per epoch, the last one short
    opts = {
        **RESUME_CASES[case],
        "num_epochs": 3,
        "batch_size": 16,
        "seed": 123,
        "checkpoint_every_batches": 3,
    }
    uninterrupted = train("SmallConvNet", ds, opts, threads=1)

    if where == "epoch-boundary":
        ckpt = _run_until(ds, opts, lambda c: c["epoch"] == 1 and c["batch"] == 0)
    else:
        ckpt = _run_until(ds, opts, lambda c: c["epoch"] == 1 and c["batch"] > 0)
        assert ckpt["perm"] is not None and len(ckpt["perm"]) == 70
    ckpt = checkpoint_from_bytes(checkpoint_to_bytes(ckpt))  # as it travels, weights_only
    resumed = train("SmallConvNet", ds, None, resume_from=ckpt, threads=1)

    _assert_same_weights(uninterrupted.artifact.state_dict, resumed.artifact.state_dict)
    keys = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr")
    assert [[m[k] for k in keys] for m in resumed.metrics] == [
        [m[k] for k in keys] for m in uninterrupted.metrics
    ]


def test_a_differently_seeded_run_differs() -> None:
    """Guards the resume test: equality must not come from training doing nothing."""
    ds = structured_dataset(40)
    a = train("SmallConvNet", ds, {"num_epochs": 1, "seed": 1}, threads=1)
    b = train("SmallConvNet", ds, {"num_epochs": 1, "seed": 2}, threads=1)
    assert not torch.equal(a.artifact.state_dict["fc.weight"], b.artifact.state_dict["fc.weight"])


def test_resume_checks_model_type_and_dataset_size() -> None:
    ds = structured_dataset(40)
    ckpts: list[dict[str, Any]] = []
    train("SmallConvNet", ds, {"num_epochs": 1, "seed": 0}, on_checkpoint=ckpts.append, threads=1)
    with pytest.raises(InvalidInput) as info:
        train("ResNet8", ds, None, resume_from=ckpts[-1], threads=1)
    assert info.value.field == "model_type"
    with pytest.raises(InvalidInput) as info:
        train("SmallConvNet", ds.subset([0, 30]), None, resume_from=ckpts[-1], threads=1)
    assert info.value.field == "resume_from"


def test_checkpoint_holds_the_whole_run_state() -> None:
    ds = structured_dataset(40)
    ckpts: list[dict[str, Any]] = []
    train("SmallConvNet", ds, {"num_epochs": 2, "seed": 0}, on_checkpoint=ckpts.append, threads=1)
    assert [(c["epoch"], c["batch"]) for c in ckpts] == [(1, 0), (2, 0)]
    ckpt = checkpoint_from_bytes(checkpoint_to_bytes(ckpts[0]))
    assert {"model", "optimizer", "scheduler", "rng", "perm", "metrics", "train_opts"} <= set(ckpt)
    assert set(ckpt["rng"]) == {"torch", "cuda", "data", "numpy", "python"}
    assert len(ckpt["metrics"]) == 1 and ckpt["model_config"]["model_type"] == "SmallConvNet"
    # Kept checkpoints are snapshots: later training did not change the first one.
    assert not torch.equal(ckpts[0]["model"]["fc.weight"], ckpts[1]["model"]["fc.weight"])


# ---- cancel and progress ------------------------------------------------------------------------


def test_cancel_between_batches_raises_training_cancelled() -> None:
    ds = structured_dataset(64)
    polls = 0

    def cancel_on_third_poll() -> bool:
        nonlocal polls
        polls += 1
        return polls >= 3

    epochs_done: list[dict[str, Any]] = []
    with pytest.raises(TrainingCancelled):
        train(
            "SmallConvNet",
            ds,
            {"num_epochs": 5, "batch_size": 8, "seed": 0},
            should_cancel=cancel_on_third_poll,
            on_checkpoint=epochs_done.append,
            threads=1,
        )
    assert polls == 3 and epochs_done == []


def test_progress_comes_a_few_times_per_epoch_and_reaches_one() -> None:
    ds = structured_dataset(320)
    updates: list[Progress] = []
    train(
        "SmallConvNet",
        ds,
        {"num_epochs": 2, "batch_size": 8, "seed": 0},
        on_progress=updates.append,
        threads=1,
    )  # 40 batches per epoch
    assert 4 <= len(updates) <= 2 * 6
    fractions = [u.progress for u in updates]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert len(updates[-1].metrics) == 2


# ---- what it must show --------------------------------------------------------------------------


def test_default_small_model_reaches_97_percent_on_digits_within_a_minute() -> None:
    started = time.perf_counter()
    result = train("SmallConvNet", load_digits(), {"seed": 0}, threads=1)
    elapsed = time.perf_counter() - started
    assert result.metrics[-1]["test_accuracy"] >= 0.97
    assert elapsed < 60


def test_tiny_batches_get_one_thread_and_large_ones_the_whole_cpu_share() -> None:
    assert threads_for(32 * 8 * 8) == 1
    assert threads_for(64 * 32 * 32) == cpu_share() >= 1
