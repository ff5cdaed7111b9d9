"""The 8x8 handwritten digits that scikit-learn ships (1,797 images, 10 classes), offline.

The images and the split are vendored in ``data/digits.npz`` (47 KB; see ``data/VENDORED.md``),
so serving and training need neither scikit-learn nor SciPy (about 150 MB of an image):
- ``x``: uint8 ``(1797, 1, 8, 8)``, scikit-learn's pixels (0..16) scaled as ``round(v * 255 / 16)``;
- ``y``: the labels 0..9;
- ``test_idx``: the 360 test rows (sorted) of ``sklearn.model_selection.train_test_split(
  test_size=360, stratify=labels, random_state=0)``, the rest (1,437) being the training split.
``tests/ml/test_datasets.py`` checks the file against scikit-learn (a test dependency). The
normalization is computed from the training split.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from cnnswarm.ml.datasets.base import ArrayDataset
from cnnswarm.ml.datasets.stats import normalization_from

DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0
DIGITS_FILE = "digits.npz"


def load_digits() -> ArrayDataset:
    """The ``digits`` dataset: uint8 ``(N, 1, 8, 8)``, classes ``"0" .. "9"``, 1437/360 split."""
    with (
        resources.files(__package__).joinpath("data", DIGITS_FILE).open("rb") as file,
        np.load(file, allow_pickle=False) as arrays,
    ):
        x = np.ascontiguousarray(arrays["x"], dtype=np.uint8)
        y = arrays["y"].astype(np.int64)
        is_test = np.zeros(len(y), dtype=bool)
        is_test[arrays["test_idx"].astype(np.int64)] = True
    return ArrayDataset(
        name="digits",
        classes=[str(n) for n in range(10)],
        x_train=np.ascontiguousarray(x[~is_test]),
        y_train=y[~is_test],
        x_test=np.ascontiguousarray(x[is_test]),
        y_test=y[is_test],
        normalization=normalization_from(x[~is_test]),
    )
