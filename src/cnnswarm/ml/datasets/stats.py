"""Dataset statistics and the one deterministic split every dataset source uses."""

from __future__ import annotations

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
