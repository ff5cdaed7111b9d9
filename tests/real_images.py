"""A learnable 10-class, 3x32x32 RGB dataset built from real images, offline, for any tier.

Each image is one of scikit-learn's 1,797 handwritten digits (real scans, 8x8, 17 grey
levels), enlarged to 32x32 with bicubic resampling, drawn in a random bright colour over a
random 32x32 crop of one of the two real photographs scikit-learn ships (``china.jpg``,
``flower.jpg``), darkened so the digit stays readable, at a random offset of up to 2 px. The
classes are the digits. The test split is the digits' own fixed stratified split (the same
images as the ``digits`` dataset's test split). Everything is drawn from one seeded generator,
so every call returns the same arrays.

Writers put it in the forms users bring: the official CIFAR-10 python archive
(``fixtures_cifar.write_cifar10_arrays``), a zip of ``class/image.png`` folders, and PNG bytes
for the predict routes. Bench scripts import this module by path (``tests/`` on ``sys.path``).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

import fixtures_cifar
import support
from cnnswarm.ml.datasets.base import ArrayDataset, Normalization
from cnnswarm.ml.datasets.digits import load_digits

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SIZE = 32
SEED_NORMALIZATION = Normalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
# train_opts that learn this dataset in a few epochs (all but the seed's network, which keeps
# the seed's own options); add num_epochs.
QUICK_OPTS = {"optimizer": "adamw", "lr": 0.003, "momentum": 0.9, "batch_size": 32, "seed": 0}


def _photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [np.asarray(img, dtype=np.float32) for img in load_sample_images().images]


def _render(digits: np.ndarray, rng: np.random.Generator, photos: list[np.ndarray]) -> np.ndarray:
    """uint8 (N, 1, 8, 8) digits -> uint8 (N, 3, 32, 32) coloured digits over photo crops."""
    out = np.empty((len(digits), 3, SIZE, SIZE), dtype=np.uint8)
    for i, digit in enumerate(digits):
        glyph = Image.fromarray(digit[0]).resize((SIZE - 4, SIZE - 4), Image.Resampling.BICUBIC)
        alpha = np.zeros((SIZE, SIZE), dtype=np.float32)
        dy, dx = rng.integers(0, 5, size=2)
        alpha[dy : dy + SIZE - 4, dx : dx + SIZE - 4] = np.asarray(glyph, np.float32) / 255.0
        photo = photos[int(rng.integers(len(photos)))]
        top = int(rng.integers(photo.shape[0] - SIZE))
        left = int(rng.integers(photo.shape[1] - SIZE))
        background = photo[top : top + SIZE, left : left + SIZE] * 0.45
        colour = rng.uniform(150, 255, size=3).astype(np.float32)
        rgb = background * (1 - alpha[..., None]) + colour * alpha[..., None]
        out[i] = np.clip(np.rint(rgb), 0, 255).astype(np.uint8).transpose(2, 0, 1)
    return out


@cache
def _arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    rng = np.random.default_rng(20261202)
    photos = _photos()
    x_train = _render(digits.x_train, rng, photos)
    x_test = _render(digits.x_test, rng, photos)
    return x_train, digits.y_train.copy(), x_test, digits.y_test.copy()


def digits_rgb32(*, train: int | None = None, test: int | None = None) -> ArrayDataset:
    """The dataset (all 1,437 train / 360 test images, or the first ``train`` / ``test``),
    normalized as the seed normalizes: (x - 0.5) / 0.5."""
    x_train, y_train, x_test, y_test = _arrays()
    return ArrayDataset(
        name="digits-rgb32",
        classes=list(CLASSES),
        x_train=x_train[:train].copy(),
        y_train=y_train[:train].copy(),
        x_test=x_test[:test].copy(),
        y_test=y_test[:test].copy(),
        normalization=SEED_NORMALIZATION,
    )


def write_cifar10_archive(dataset: ArrayDataset, path: Path) -> Path:
    """``dataset`` as the official ``cifar-10-python.tar.gz`` at ``path``."""
    fixtures_cifar.write_cifar10_arrays(
        path,
        dataset.x_train,
        dataset.y_train,
        dataset.x_test,
        dataset.y_test,
        list(dataset.classes),
    )
    return path


def png_bytes(image: np.ndarray) -> bytes:
    """One uint8 (3, H, W) image as PNG bytes (lossless: decodes to the same pixels)."""
    return support.png_bytes(np.ascontiguousarray(image.transpose(1, 2, 0)))


def image_folder_zip(dataset: ArrayDataset) -> bytes:
    """``dataset`` as a zip of ``train/<class>/<n>.png`` and ``test/<class>/<n>.png``."""
    folders: dict[str, list[bytes]] = {}
    for split in ("train", "test"):
        x = getattr(dataset, f"x_{split}")
        y = getattr(dataset, f"y_{split}")
        for image, label in zip(x, y, strict=True):
            folders.setdefault(f"{split}/{dataset.classes[label]}", []).append(png_bytes(image))
    return support.image_folder_zip(folders)
