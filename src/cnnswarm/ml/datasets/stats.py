"""Dataset statistics, the one deterministic split every dataset source uses, and the one
deterministic row order of uploads."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from cnnswarm.ml.datasets.base import Normalization

# A channel that is constant (all-black images) would divide by zero; clamp its std.
MIN_STD = 1e-3


def normalization_from(x: np.ndarray, *, chunk: int = 4096) -> Normalization:
    """Per-channel mean and (population) std of ``x / 255`` for uint8 ``(N, C, H, W)`` images."""
    if x.ndim != 4 or len(x) == 0:
        raise ValueError("normalization needs a non-empty (N, C, H, W) array")
    channels = x.shape[1]
    total = np.zeros(channels, dtype=np.float64)
    total_sq = np.zeros(channels, dtype=np.float64)
    # Chunked so a large dataset is never copied to float64 as a whole.
    for start in range(0, len(x), chunk):
        block = x[start : start + chunk].astype(np.float64) / 255.0
        total += block.sum(axis=(0, 2, 3))
        total_sq += np.square(block).sum(axis=(0, 2, 3))
    count = float(len(x) * x.shape[2] * x.shape[3])
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    return Normalization(
        mean=tuple(float(m) for m in mean),
        std=tuple(float(max(s, MIN_STD)) for s in std),
    )


def stratified_split(
    labels: np.ndarray, *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-class split -> ``(train_idx, test_idx)``, each sorted ascending.

    For each class, its indices are shuffled with ``numpy.random.default_rng(seed)`` and the first
    ``round(n * test_fraction)`` go to test (at least one when the class has two or more
    examples, none when it has one). The same labels always give the same split.
    """
    rng = np.random.default_rng(seed)
    train_parts: list[np.ndarray] = []
    test_parts: list[np.ndarray] = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        n_test = round(len(idx) * test_fraction)
        n_test = min(max(n_test, 1), len(idx) - 1) if len(idx) >= 2 else 0
        test_parts.append(idx[:n_test])
        train_parts.append(idx[n_test:])
    empty = np.zeros(0, dtype=np.int64)
    train = np.sort(np.concatenate(train_parts)) if train_parts else empty
    test = np.sort(np.concatenate(test_parts)) if test_parts else empty
    return train.astype(np.int64), test.astype(np.int64)


def content_key(pixels: bytes) -> int:
    """A 64-bit digest of an image's pixels (the key ``fair_order`` sorts a class's rows by)."""
    return int.from_bytes(hashlib.blake2b(pixels, digest_size=8).digest(), "little")


def fair_order(labels: np.ndarray, keys: Sequence[int] | np.ndarray) -> np.ndarray:
    """A permutation of the rows in which every prefix is a fair sample: each class's share of
    rows ``[0, k)`` is its share of the whole, within about one row.

    Within a class, rows are ordered by ``keys`` (``content_key`` of each image: a shuffle that
    depends on the images only, not on the order they came in, so the same images always give
    the same order and rows already in this order keep it). The i-th of a class's n rows is
    placed at ``(i + 0.5) / n`` of the way through, interleaving the classes (ties in class
    order).
    """
    key_array = np.asarray(keys, dtype=np.uint64)
    position = np.zeros(len(labels), dtype=np.float64)
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[np.argsort(key_array[idx], kind="stable")]
        position[idx] = (np.arange(len(idx)) + 0.5) / len(idx)
    return np.argsort(position, kind="stable").astype(np.int64)
