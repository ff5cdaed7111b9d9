"""The training loop: one function, read top to bottom.

``train`` takes a model name, an in-memory ``ArrayDataset`` and ``TrainOptions`` and returns a
``TrainResult`` (the model artefact and per-epoch metrics). Along the way it hands out:

- ``on_progress(Progress)`` a few times per epoch and after each epoch;
- ``on_checkpoint(dict)`` after each epoch and, with ``checkpoint_every_batches=N``, after
  every N-th batch. The dict holds model, optimizer and scheduler state, every RNG state, the
  current epoch's data order and the position in it, and the metrics so far; it contains only
  tensors and plain containers, so ``torch.load(weights_only=True)`` reads it back.

Guarantee: ``train(..., resume_from=<such a dict>)`` continues the same run. On the CPU with
the same thread count, a run stopped at a checkpoint (epoch boundary or mid-epoch) and resumed
ends with bit-identical weights to a run that was never stopped.

``should_cancel()`` is polled between batches; when it returns true ``TrainingCancelled`` is
raised (the last checkpoint handed out is the place to resume from).

At the end of each epoch the batch norms' running statistics are re-estimated for the epoch's
final weights (``cnnswarm.ml.calibrate``) before the test split is evaluated in eval mode; the
recorded ``test_accuracy`` is therefore exactly what the published model serves.

Each epoch's ``duration_s`` is the wall time spent on that epoch's work that survives: from its
first batch to the end of its evaluation. An epoch resumed from a mid-epoch checkpoint counts
the training time the checkpoint carries (its batches before the stop, in an earlier process)
plus this process's time on it; work lost after that checkpoint and the downtime before the
resume are not counted. So the durations never sum to more than the wall time the run took,
and a resumed epoch's duration stays comparable with its neighbours'. ``images_per_s`` divides
the training images by the batch time alone (evaluation excluded).
"""

from __future__ import annotations

import contextlib
import random
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnswarm.cpu import cpu_share
from cnnswarm.errors import InvalidInput, TrainingCancelled
from cnnswarm.ml.artifact import ModelArtifact, preprocessing_of
from cnnswarm.ml.calibrate import recalibrate_on_images
from cnnswarm.ml.checkpoint import capture_rng_states, detached_copy, restore_rng_states
from cnnswarm.ml.datasets.base import ArrayDataset, Normalization, normalize
from cnnswarm.ml.distributed import Gang, shard_bounds
from cnnswarm.ml.models import ModelConfig
from cnnswarm.ml.train_options import TrainOptions

__all__ = ["CHECKPOINT_FORMAT", "Progress", "TrainOptions", "TrainResult", "train"]

CHECKPOINT_FORMAT = "cnn-swarm-checkpoint"
PROGRESS_CALLS_PER_EPOCH = 4
EVAL_BATCH_SIZE = 512
SMALL_BATCH_PIXELS = 32 * 32 * 32  # below this, one intra-op thread is as fast and far steadier
# How often (in seconds of the run's clock, and at each epoch start) a run asks its thread share
# again: other jobs on the host start and end while it trains, and a run that keeps an old count
# oversubscribes the cores. Seconds, not batches: asked every 20 batches, a job that started alone
# kept both cores for its whole first epoch (16 batches of `synthetic`) beside a second job, and
# ran that epoch 5x slower. An ask costs a directory listing.
THREAD_CHECK_S = 0.25


@dataclass(frozen=True)
class Progress:
    """Where a run is: ``epoch`` is 1-based, ``batch`` counts batches done in that epoch."""

    epoch: int
    num_epochs: int
    batch: int
    num_batches: int
    progress: float  # 0..1 over the whole run
    metrics: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TrainResult:
    """What a finished run produced."""

    artifact: ModelArtifact
    metrics: list[dict[str, Any]]


def threads_for(batch_pixels: int, share: Callable[[], int] = cpu_share) -> int:
    """Intra-op threads for batches of ``batch_pixels`` pixels (batch x height x width).

    Tiny batches (8x8 digits) gain nothing from more threads and slow down ~10x when another
    process shares the cores (threads wait on each other at every op), so they get one; larger
    ones get ``share()``: by default this process's whole CPU share (``cnnswarm.cpu``: cgroup
    quota, affinity mask); in a trainer's job, its part of the host (``cnnswarm.cpu.JobShare``).
    """
    return 1 if batch_pixels < SMALL_BATCH_PIXELS else share()


def resolve_device(requested: str | torch.device | None, opts: TrainOptions) -> torch.device:
    """``force_cpu`` wins; then the explicit device; then CUDA when present; else the CPU."""
    if opts.force_cpu:
        return torch.device("cpu")
    name = requested if requested is not None else opts.device
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput(f"device {name!r} requested but CUDA is not available", field="device")
    return device


def make_optimizer(model: nn.Module, opts: TrainOptions) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or AdamW (``momentum`` is beta1)."""
    if opts.optimizer == "adamw":
        return torch.optim.AdamW(
            model.parameters(),
            lr=opts.lr,
            betas=(opts.momentum, 0.999),
            weight_decay=opts.weight_decay,
        )
    return torch.optim.SGD(
        model.parameters(), lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay
    )


def make_scheduler(optimizer: torch.optim.Optimizer, opts: TrainOptions) -> Any:
    """The per-epoch LR schedule; the seed's three modes keep the seed's parameters."""
    sched = torch.optim.lr_scheduler
    if opts.scheduler_mode == "multistep":
        third = opts.num_epochs // 3
        milestones = sorted({m for m in (third, 2 * third) if m >= 1})
        return sched.MultiStepLR(optimizer, milestones, gamma=0.1)
    if opts.scheduler_mode == "exponential":
        return sched.ExponentialLR(optimizer, gamma=0.8)
    if opts.scheduler_mode == "plateau":
        return sched.ReduceLROnPlateau(
            optimizer, factor=0.1, patience=2, threshold=0.2, min_lr=opts.lr * 0.01
        )
    if opts.scheduler_mode == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=opts.num_epochs)
    return sched.LambdaLR(optimizer, lambda epoch: 1.0)


def _scheduler_state(scheduler: Any) -> dict[str, Any]:
    # Milestones are a Counter (not weights_only-loadable) and are rebuilt from the options.
    return {k: v for k, v in scheduler.state_dict().items() if k != "milestones"}


def _draw_flips(rows: int, generator: torch.Generator) -> torch.Tensor:
    """Which of a global batch's ``rows`` images to mirror left-right (each with probability
    1/2); drawn for the whole batch by every rank, so the generator stays in step."""
    return torch.rand(rows, generator=generator) < 0.5


def _flip(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Mirror the images of ``x`` (a uint8 batch: cheap) where ``flips`` is true."""
    x[flips] = x[flips].flip(3)
    return x


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    normalization: Normalization,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
) -> tuple[float | None, float | None]:
    """Mean cross-entropy and accuracy on ``(x, y)`` in eval mode; ``(None, None)`` if empty."""
    if len(x) == 0:
        return None, None
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, len(x), EVAL_BATCH_SIZE):
        xb = normalize(x[start : start + EVAL_BATCH_SIZE], normalization).to(device)
        yb = y[start : start + EVAL_BATCH_SIZE].to(device)
        with autocast():
            logits = model(xb)
        loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    model.train()
    return float(loss_sum) / len(x), int(correct) / len(x)


def train(
    model_type: str,
    dataset: ArrayDataset,
    opts: TrainOptions | Mapping[str, Any] | None,
    *,
    resume_from: Mapping[str, Any] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    device: str | torch.device | None = None,
    threads: int | Callable[[], int] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    gang: Gang | None = None,
) -> TrainResult:
    """Train ``model_type`` on ``dataset``; resume a checkpointed run when given its checkpoint.

    When resuming, the options stored in the checkpoint are used (it is the same run).
    ``threads`` sets torch's intra-op thread count: a number, or a function answering this run's
    CPU share, asked first, then at each epoch start and every ``THREAD_CHECK_S`` seconds
    (default: this process's CPU share; either way 1 for tiny batches, see ``threads_for``).
    ``clock`` is read, in seconds, for ``duration_s``, ``images_per_s``, the training time a
    checkpoint carries and when to ask the thread share again (tests pass one that advances as
    they choose).

    With a ``gang`` (``cnnswarm.ml.distributed``) this process is one rank of a data-parallel
    run that equals the one-process run: the same seeded data order and flips on every rank,
    each rank training on its shard of every global batch (``batch_size`` is the global batch;
    the loss is scaled so DDP's gradient average is the global batch's mean gradient), the
    epoch figures summed over the ranks. Only rank 0 evaluates, reports progress and hands out
    checkpoints; every rank returns the same weights. Batch norms normalize over each rank's
    shard (DDP's default; SyncBatchNorm needs CUDA), the one way the run differs from one
    process's, besides the order of floating-point sums.
    """
    # ---- options, device, threads -----------------------------------------------------------
    if resume_from is not None:
        if resume_from.get("format") != CHECKPOINT_FORMAT:
            raise InvalidInput("resume_from is not a cnn-swarm checkpoint", field="resume_from")
        if resume_from.get("model_type") != model_type:
            raise InvalidInput(
                f"checkpoint is for {resume_from.get('model_type')}, not {model_type}",
                field="model_type",
            )
        opts = resume_from["train_opts"]
    if not isinstance(opts, TrainOptions):
        opts = TrainOptions.from_dict(opts, model_type=model_type)
    if opts.seed is None:  # record the drawn seed so a resume (and the artefact) can repeat it
        opts = replace(opts, seed=secrets.randbelow(2**31))
    seed = int(opts.seed)  # type: ignore[arg-type]
    run_device = gang.device if gang is not None else resolve_device(device, opts)
    rank, world_size = (gang.rank, gang.world_size) if gang is not None else (0, 1)
    wants_checkpoints = on_checkpoint is not None  # every rank takes part in making one
    if rank != 0:  # rank 0 alone reports and checkpoints
        on_progress, on_checkpoint = None, None
    channels, height, width = dataset.input_shape
    batch_pixels = opts.batch_size * height * width
    share = threads if callable(threads) else cpu_share
    current_threads, next_thread_check = 0, 0.0

    def retune_threads(*, now: bool) -> None:
        """Follow the thread count asked for, asked again when ``now`` or ``THREAD_CHECK_S``
        after the last time; torch is told only when it changes."""
        nonlocal current_threads, next_thread_check
        time_s = clock()
        if not now and time_s < next_thread_check:
            return
        next_thread_check = time_s + THREAD_CHECK_S
        wanted = threads if isinstance(threads, int) else threads_for(batch_pixels, share)
        if wanted != current_threads:
            torch.set_num_threads(wanted)
            current_threads = wanted

    retune_threads(now=True)
    use_bf16 = opts.bf16

    def autocast() -> contextlib.AbstractContextManager[Any]:
        if not use_bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=run_device.type, dtype=torch.bfloat16)

    # ---- data: uint8 tensors built once; batches are gathered, flipped, then normalized -----
    num_train = len(dataset.x_train)
    if num_train == 0:
        raise InvalidInput("the training set is empty", field="example_idxs")
    x_train = torch.from_numpy(np.ascontiguousarray(dataset.x_train))
    y_train = torch.from_numpy(np.ascontiguousarray(dataset.y_train))
    x_test = torch.from_numpy(np.ascontiguousarray(dataset.x_test))
    y_test = torch.from_numpy(np.ascontiguousarray(dataset.y_test))
    batch_size = opts.batch_size
    num_batches = -(-num_train // batch_size)
    last_batch = num_train - (num_batches - 1) * batch_size
    if last_batch < world_size:
        raise InvalidInput(
            f"the last batch has {last_batch} image(s), fewer than the {world_size} workers: "
            "choose another batch_size or fewer workers",
            field="batch_size",
        )

    # ---- model, optimizer, schedule (seeded, so a fresh run is reproducible) -----------------
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    data_generator = torch.Generator().manual_seed(seed)  # data order and flips
    config = ModelConfig(model_type, channels, height, width, len(dataset.classes))
    model = config.build().to(run_device)  # the module itself: checkpoints, calibration, eval
    optimizer = make_optimizer(model, opts)
    scheduler = make_scheduler(optimizer, opts)

    # ---- where to start: the beginning, or exactly where the checkpoint left off -------------
    start_epoch, start_batch = 0, 0
    resumed_perm: torch.Tensor | None = None
    resumed_epoch_state: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = []
    if resume_from is not None:
        if resume_from["num_train"] != num_train:
            raise InvalidInput(
                f"checkpoint was taken on {resume_from['num_train']} training images, "
                f"this dataset has {num_train}",
                field="resume_from",
            )
        model.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        scheduler.load_state_dict(resume_from["scheduler"])
        restore_rng_states(resume_from["rng"], data_generator)
        start_epoch, start_batch = int(resume_from["epoch"]), int(resume_from["batch"])
        resumed_perm = resume_from["perm"]
        resumed_epoch_state = resume_from["epoch_state"]
        metrics = [dict(m) for m in resume_from["metrics"]]
    # Under a gang, DDP averages the gradients (and starts every rank from rank 0's weights).
    trained = gang.wrap(model) if gang is not None else model

    def global_sum(value: torch.Tensor) -> torch.Tensor:
        return gang.sum(value) if gang is not None else value

    def checkpoint(epoch: int, batch: int, perm: Any, epoch_state: Any) -> dict[str, Any]:
        """All that continuing from (epoch, batch) needs; safe to keep while training goes on."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "model_type": model_type,
            "model_config": config.to_json(),
            "train_opts": opts.to_dict(),
            "num_train": num_train,
            "model": detached_copy(model.state_dict()),
            "optimizer": detached_copy(optimizer.state_dict()),
            "scheduler": _scheduler_state(scheduler),
            "rng": capture_rng_states(data_generator),
            "epoch": epoch,
            "batch": batch,
            "perm": None if perm is None else perm.clone(),
            "epoch_state": detached_copy(epoch_state),
            "metrics": [dict(m) for m in metrics],
        }

    def report(epoch: int, batch: int) -> None:
        if on_progress is not None:
            done = (epoch * num_batches + batch) / (opts.num_epochs * num_batches)
            on_progress(
                Progress(epoch + 1, opts.num_epochs, batch, num_batches, done, list(metrics))
            )

    progress_every = max(1, num_batches // PROGRESS_CALLS_PER_EPOCH)
    checkpoint_every = opts.checkpoint_every_batches
    wants_batch_checkpoints = wants_checkpoints and checkpoint_every > 0
    model.train()

    # ---- the loop ----------------------------------------------------------------------------
    for epoch in range(start_epoch, opts.num_epochs):
        epoch_started = clock()
        if resumed_perm is not None and epoch == start_epoch:
            perm, first_batch = resumed_perm, start_batch
            state = resumed_epoch_state or {}
            # The checkpoint's sums are the gang's; rank 0 carries them, the others add to 0.
            carried = 1 if rank == 0 else 0
            loss_sum = state["loss_sum"].to(run_device) * carried
            correct = state["correct"].to(run_device) * carried
            # This epoch's batches before the checkpoint ran in an earlier process.
            time_before_resume_s = float(state["train_time_s"])
        else:
            perm, first_batch = torch.randperm(num_train, generator=data_generator), 0
            # Running sums stay on the device: no per-batch .item() sync.
            loss_sum = torch.zeros((), dtype=torch.float64, device=run_device)
            correct = torch.zeros((), dtype=torch.int64, device=run_device)
            time_before_resume_s = 0.0
        train_time_s = time_before_resume_s
        lr = optimizer.param_groups[0]["lr"]

        batch_started = clock()
        for batch in range(first_batch, num_batches):
            cancel = should_cancel is not None and should_cancel()
            if gang is not None:
                cancel = gang.any(cancel)  # every rank stops at the same batch
            if cancel:
                raise TrainingCancelled(f"cancelled at epoch {epoch + 1}, batch {batch}")
            retune_threads(now=batch == first_batch)  # the epoch's start, then every THREAD_CHECK_S
            idx = perm[batch * batch_size : (batch + 1) * batch_size]
            flips = _draw_flips(len(idx), data_generator) if opts.augment else None
            start, end = shard_bounds(len(idx), rank, world_size)
            mine = idx[start:end]
            xb = x_train[mine]  # a gathered copy, safe to flip in place
            if flips is not None:
                xb = _flip(xb, flips[start:end])
            xb = normalize(xb, dataset.normalization).to(run_device, non_blocking=True)
            yb = y_train[mine].to(run_device, non_blocking=True)

            # DDP's collectives run in forward and backward: a lost peer shows up there.
            with gang.collectives("training a batch") if gang else contextlib.nullcontext():
                with autocast():
                    logits = trained(xb)
                    if gang is None:
                        loss = F.cross_entropy(logits, yb)
                        shard_loss_sum = loss.detach() * len(idx)
                    else:
                        # DDP averages over ranks: world_size / len(idx) x this shard's sum
                        # makes the average the whole global batch's mean, however it is split.
                        shard_loss = F.cross_entropy(logits, yb, reduction="sum")
                        loss = shard_loss * (world_size / len(idx))
                        shard_loss_sum = shard_loss.detach()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()

            loss_sum += shard_loss_sum
            correct += (logits.detach().argmax(1) == yb).sum()

            done_in_epoch = batch + 1
            if done_in_epoch == num_batches:
                break  # the end-of-epoch checkpoint and report follow
            global_batch = epoch * num_batches + done_in_epoch
            if wants_batch_checkpoints and global_batch % checkpoint_every == 0:
                elapsed = train_time_s + clock() - batch_started
                epoch_state = {
                    "loss_sum": global_sum(loss_sum),
                    "correct": global_sum(correct),
                    "train_time_s": elapsed,
                }
                if on_checkpoint is not None:
                    on_checkpoint(checkpoint(epoch, done_in_epoch, perm, epoch_state))
            if done_in_epoch % progress_every == 0:
                report(epoch, done_in_epoch)
        train_time_s += clock() - batch_started

        # ---- end of epoch: calibrate, evaluate, record, step the schedule, checkpoint ---------
        loss_sum, correct = global_sum(loss_sum), global_sum(correct)
        train_loss = float(loss_sum) / num_train
        test_loss: float | None = None
        test_accuracy: float | None = None
        if rank == 0:  # the others go on to the next epoch's first batch and wait there
            # Running statistics lag the moving weights; re-estimate them for these weights, so
            # the test split (and, after the last epoch, every prediction) sees what training
            # saw.
            recalibrate_on_images(
                model, x_train, dataset.normalization, batch_size=batch_size, device=run_device
            )
            test_loss, test_accuracy = evaluate(
                model, x_test, y_test, dataset.normalization, run_device, autocast
            )
        metrics.append(
            {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "train_accuracy": int(correct) / num_train,
                "test_loss": test_loss,
                "test_accuracy": test_accuracy,
                "lr": lr,
                "images_per_s": num_train / train_time_s if train_time_s > 0 else None,
                # epoch_started is this process's start of the epoch: see the module docstring.
                "duration_s": time_before_resume_s + clock() - epoch_started,
            }
        )
        if opts.scheduler_mode == "plateau":
            scheduler.step(train_loss)  # the seed steps on the training loss
        else:
            scheduler.step()
        if on_checkpoint is not None:
            on_checkpoint(checkpoint(epoch + 1, 0, None, None))
        if epoch + 1 < opts.num_epochs:
            report(epoch + 1, 0)
        else:
            report(epoch, num_batches)

    # ---- result ------------------------------------------------------------------------------
    model.eval()
    artifact = ModelArtifact(
        model_type=model_type,
        model_config=config.to_json(),
        classes=list(dataset.classes),
        preprocessing=preprocessing_of(dataset),
        metrics=[dict(m) for m in metrics],
        dataset=dataset.info(),
        train_opts=opts.to_dict(),
        state_dict=detached_copy(model.state_dict()),
    )
    return TrainResult(artifact=artifact, metrics=metrics)
