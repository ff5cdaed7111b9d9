"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), offline.

Pixels (0..16) are scaled to uint8 0..255 as ``round(v * 255 / 16)``; one channel. The split is
fixed: ``sklearn.model_selection.train_test_split(test_size=360, stratify=labels,
random_state=0)`` -> 1,437 train / 360 test, the same on every machine. The normalization is
computed from the training split.
"""

from __future__ import annotations

import numpy as np

from cnnswarm.ml.datasets.base import ArrayDataset
from cnnswarm.ml.datasets.stats import normalization_from

DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0


def load_digits() -> ArrayDataset:
    """The ``digits`` dataset: uint8 ``(N, 1, 8, 8)``, classes ``"0" .. "9"``, 1437/360 split."""
    # Imported here: scikit-learn is slow to import and only this loader needs it.
    from sklearn.datasets import load_digits as sklearn_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_load_digits()
    images = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0))
    x = np.clip(images, 0, 255).astype(np.uint8)[:, np.newaxis, :, :]
    y = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=DIGITS_TEST_SIZE, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    train_idx = np.sort(train_idx)
    test_idx = np.sort(test_idx)
    return ArrayDataset(
        name="digits",
        classes=[str(int(n)) for n in bunch.target_names],
        x_train=np.ascontiguousarray(x[train_idx]),
        y_train=y[train_idx],
        x_test=np.ascontiguousarray(x[test_idx]),
        y_test=y[test_idx],
        normalization=normalization_from(x[train_idx]),
    )
