"""Seeded generated images with learnable class structure, of any size, channels and classes.

Each class owns a smooth pattern: a sum of a few random low-frequency 2-D waves per channel
plus a class colour. An example is its class pattern with random contrast, a random shift of a
few pixels and Gaussian noise, so a small ConvNet separates the classes well above chance
within an epoch or two, while a single pixel does not give the label away.
"""

from __future__ import annotations

import numpy as np

from cnnswarm.errors import InvalidInput
from cnnswarm.ml.datasets.base import ArrayDataset
from cnnswarm.ml.datasets.stats import normalization_from

# The builtin "synthetic" dataset: small RGB 32x32, ten classes.
DEFAULT_SYNTHETIC: dict[str, int] = {
    "num_train": 2000,
    "num_test": 500,
    "channels": 3,
    "height": 32,
    "width": 32,
    "num_classes": 10,
    "seed": 0,
}

_WAVES_PER_CHANNEL = 3
_NOISE_STD = 0.12


def _class_patterns(
    rng: np.random.Generator, num_classes: int, channels: int, height: int, width: int
) -> np.ndarray:
    """``(num_classes, channels, height, width)`` float patterns in roughly [-1, 1]."""
    ys = np.linspace(0.0, 1.0, height)[:, None]
    xs = np.linspace(0.0, 1.0, width)[None, :]
    patterns = np.zeros((num_classes, channels, height, width))
    for k in range(num_classes):
        for c in range(channels):
            for _ in range(_WAVES_PER_CHANNEL):
                fy, fx = rng.uniform(0.5, 3.0, size=2) * rng.choice([-1.0, 1.0], size=2)
                phase = rng.uniform(0.0, 2.0 * np.pi)
                patterns[k, c] += np.sin(2.0 * np.pi * (fy * ys + fx * xs) + phase)
            patterns[k, c] /= _WAVES_PER_CHANNEL
            patterns[k, c] += rng.uniform(-0.4, 0.4)  # the class colour
    return patterns


def _render(rng: np.random.Generator, patterns: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Examples of ``labels``: pattern * contrast, shifted, plus noise -> uint8 (N, C, H, W)."""
    _, channels, height, width = patterns.shape
    max_shift = max(1, min(height, width) // 8)
    out = np.empty((len(labels), channels, height, width), dtype=np.uint8)
    for i, label in enumerate(labels):
        image = patterns[label] * rng.uniform(0.7, 1.3)
        dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
        image = np.roll(image, (int(dy), int(dx)), axis=(1, 2))
        image = image + rng.normal(0.0, _NOISE_STD, size=image.shape)
        out[i] = np.clip(np.rint((image + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return out


def make_synthetic(
    num_train: int,
    num_test: int,
    channels: int,
    height: int,
    width: int,
    num_classes: int,
    seed: int,
    *,
    name: str = "synthetic",
) -> ArrayDataset:
    """A generated dataset; the same arguments always give the same arrays.

    Labels are balanced (cycled, then shuffled); classes are named ``class_0 ..``; the
    normalization is computed from the training split.
    """
    sizes = {"num_train": num_train, "channels": channels, "height": height, "width": width}
    for field, value in sizes.items():
        if value < 1:
            raise InvalidInput(f"{field} must be at least 1, got {value}", field=field)
    if num_test < 0:
        raise InvalidInput(f"num_test must be >= 0, got {num_test}", field="num_test")
    if num_classes < 2:
        raise InvalidInput(
            f"num_classes must be at least 2, got {num_classes}", field="num_classes"
        )
    rng = np.random.default_rng(seed)
    patterns = _class_patterns(rng, num_classes, channels, height, width)
    y_train = rng.permutation(np.arange(num_train) % num_classes).astype(np.int64)
    y_test = rng.permutation(np.arange(num_test) % num_classes).astype(np.int64)
    x_train = _render(rng, patterns, y_train)
    x_test = _render(rng, patterns, y_test)
    return ArrayDataset(
        name=name,
        classes=[f"class_{k}" for k in range(num_classes)],
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        normalization=normalization_from(x_train),
    )


def load_synthetic() -> ArrayDataset:
    """The builtin ``synthetic`` dataset: ``DEFAULT_SYNTHETIC`` (3x32x32, 10 classes, 2000/500)."""
    config = DEFAULT_SYNTHETIC
    return make_synthetic(
        config["num_train"],
        config["num_test"],
        config["channels"],
        config["height"],
        config["width"],
        config["num_classes"],
        config["seed"],
    )
