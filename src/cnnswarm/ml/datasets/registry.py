"""The builtin datasets, looked up by name."""

from __future__ import annotations

from pathlib import Path

from cnnswarm.errors import NotFound
from cnnswarm.ml.datasets.base import ArrayDataset
from cnnswarm.ml.datasets.cifar10 import load_cifar10
from cnnswarm.ml.datasets.digits import load_digits
from cnnswarm.ml.datasets.synthetic import load_synthetic

BUILTIN_DATASETS = ("cifar10", "digits", "synthetic")


def load_builtin(name: str, home_dir: Path, *, allow_downloads: bool = False) -> ArrayDataset:
    """The builtin dataset ``name`` (case-insensitive, so the seed's ``"CIFAR10"`` works).

    ``NotFound`` for any other name; ``DatasetUnavailable`` when cifar10's archive is absent
    and cannot be downloaded.
    """
    key = name.strip().lower() if isinstance(name, str) else ""
    if key == "cifar10":
        return load_cifar10(Path(home_dir), allow_downloads=allow_downloads)
    if key == "digits":
        return load_digits()
    if key == "synthetic":
        return load_synthetic()
    raise NotFound(
        f"no builtin dataset {name!r}; builtin datasets are {', '.join(BUILTIN_DATASETS)}",
        field="dataset",
    )
