"""How close is the training engine to a plain PyTorch loop?

Both sides train the same model (from the registry) on the same in-memory uint8 images with
the same batch size, optimizer and thread count, for one epoch, and both are timed from model
construction to the end of a small evaluation, so every cost the engine adds is counted.
Rounds alternate which side goes first; the warm-up round is discarded. Each side is timed by
the wall clock and by the process CPU clock (the latter is steadier on a machine shared with
other work, when ``--threads 1``). The last line is

    ratio=<median over rounds of engine images/s / plain images/s, wall clock>

(target >= 0.95). Single rounds vary by ±20 % on a small shared machine, hence 21 rounds by
default. Run: ``.venv/bin/python bench/train_efficiency.py [--rounds 21] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from cnnswarm.cpu import cpu_share
from cnnswarm.ml.datasets.base import ArrayDataset, Normalization
from cnnswarm.ml.models import build_model
from cnnswarm.ml.train import train

LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4


def make_dataset(num_train: int, num_test: int, size: int, classes: int) -> ArrayDataset:
    """Random RGB images whose class brightens one horizontal band: learnable, seeded."""
    rng = np.random.default_rng(0)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, classes, n)
        x = rng.integers(0, 128, (n, 3, size, size))
        band = size // classes or 1
        for i, label in enumerate(y):
            x[i, :, label * band : (label + 1) * band, :] += 120
        return x.astype(np.uint8), y.astype(np.int64)

    x_train, y_train = make(num_train)
    x_test, y_test = make(num_test)
    norm = Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    names = [f"c{i}" for i in range(classes)]
    return ArrayDataset("bench", names, x_train, y_train, x_test, y_test, norm)


Timing = tuple[float, float]  # (wall seconds, process CPU seconds)


def _since(wall: float, cpu: float) -> Timing:
    return time.perf_counter() - wall, time.process_time() - cpu


def plain_loop(model_type: str, ds: ArrayDataset, batch_size: int, seed: int) -> Timing:
    """A straightforward PyTorch epoch + evaluation; returns how long it took."""
    started = time.perf_counter(), time.process_time()
    torch.manual_seed(seed)
    c, h, w = ds.input_shape
    model = build_model(model_type, in_channels=c, height=h, width=w, num_classes=len(ds.classes))
    optimizer = torch.optim.SGD(
        model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
    )
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    mean = torch.tensor(ds.normalization.mean).view(1, c, 1, 1)
    std = torch.tensor(ds.normalization.std).view(1, c, 1, 1)
    model.train()
    perm = torch.randperm(len(x))
    for start in range(0, len(x), batch_size):
        idx = perm[start : start + batch_size]
        xb = (x[idx].float().div_(255) - mean) / std
        loss = F.cross_entropy(model(xb), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    model.eval()
    with torch.inference_mode():
        x_test = (torch.from_numpy(ds.x_test).float().div_(255) - mean) / std
        accuracy = (model(x_test).argmax(1) == torch.from_numpy(ds.y_test)).float().mean()
    float(accuracy)
    return _since(*started)


def engine(model_type: str, ds: ArrayDataset, batch_size: int, seed: int, threads: int) -> Timing:
    """The same work through ``cnnswarm.ml.train.train``; returns how long it took."""
    started = time.perf_counter(), time.process_time()
    opts = {
        "num_epochs": 1,
        "batch_size": batch_size,
        "optimizer": "sgd",
        "lr": LR,
        "momentum": MOMENTUM,
        "weight_decay": WEIGHT_DECAY,
        "augment": False,  # the plain loop does not augment either
        "seed": seed,
        "force_cpu": True,
    }
    train(model_type, ds, opts, threads=threads)
    return _since(*started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ResNet8")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--threads", type=int, default=cpu_share())
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    ds = make_dataset(args.images, 64, 32, 10)
    print(
        f"model={args.model} images={args.images} batch_size={args.batch_size} "
        f"threads={args.threads} rounds={args.rounds} (+1 warm-up)"
    )
    wall_ratios: list[float] = []
    cpu_ratios: list[float] = []
    plain_rates: list[float] = []
    engine_rates: list[float] = []
    for round_no in range(args.rounds + 1):
        if round_no % 2 == 0:  # alternate who goes first
            plain = plain_loop(args.model, ds, args.batch_size, round_no)
            eng = engine(args.model, ds, args.batch_size, round_no, args.threads)
        else:
            eng = engine(args.model, ds, args.batch_size, round_no, args.threads)
            plain = plain_loop(args.model, ds, args.batch_size, round_no)
        plain_rate, engine_rate = args.images / plain[0], args.images / eng[0]
        wall_ratio, cpu_ratio = plain[0] / eng[0], plain[1] / eng[1]
        label = "warm-up" if round_no == 0 else f"round {round_no}"
        print(
            f"{label}: plain {plain_rate:7.1f} img/s  engine {engine_rate:7.1f} img/s  "
            f"ratio {wall_ratio:.3f}  (cpu-time ratio {cpu_ratio:.3f})",
            flush=True,
        )
        if round_no > 0:
            wall_ratios.append(wall_ratio)
            cpu_ratios.append(cpu_ratio)
            plain_rates.append(plain_rate)
            engine_rates.append(engine_rate)
    print(
        f"median: plain {statistics.median(plain_rates):.1f} img/s  "
        f"engine {statistics.median(engine_rates):.1f} img/s"
    )
    print(f"cpu_ratio={statistics.median(cpu_ratios):.3f}")
    print(f"ratio={statistics.median(wall_ratios):.3f}")


if __name__ == "__main__":
    main()
