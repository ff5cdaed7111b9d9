"""What the dashboard tests run against: the cluster they look at, and tiny real datasets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cluster import Cluster
from cnnswarm.client import Client
from support import image_folder_zip, png_bytes

# Three digit classes of scikit-learn's real 8x8 scans: small enough to train in seconds.
TINY_CLASSES = {"zero": 0, "one": 1, "two": 2}
TINY_PER_CLASS = 40
QUICK_OPTS = {"batch_size": 16, "seed": 0}


@dataclass
class Dashboard:
    """The running cluster the browser tests look at."""

    cluster: Cluster
    url: str
    client: Client
    dataset_id: str  # the tiny digits upload
    model_id: str  # a model trained on it


def digit_pngs(label: int, count: int) -> list[bytes]:
    """The first ``count`` scans of digit ``label`` as 8-bit grey PNGs."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = np.flatnonzero(digits.target == label)[:count]
    return [png_bytes(np.clip(digits.images[i] * 16, 0, 255).astype(np.uint8)) for i in rows]


def tiny_digits_zip(
    classes: dict[str, int] = TINY_CLASSES, per_class: int = TINY_PER_CLASS
) -> bytes:
    """A zip of ``<class name>/<n>.png`` folders of digit scans."""
    return image_folder_zip({name: digit_pngs(label, per_class) for name, label in classes.items()})
