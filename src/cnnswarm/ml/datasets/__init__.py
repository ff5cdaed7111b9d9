"""Datasets: one interface (``ArrayDataset``) over built-ins and user uploads."""

from cnnswarm.ml.datasets.base import ArrayDataset, Normalization, normalize
from cnnswarm.ml.datasets.cifar10 import SEED_CIFAR10_TAGS, load_cifar10
from cnnswarm.ml.datasets.digits import load_digits
from cnnswarm.ml.datasets.registry import BUILTIN_DATASETS, load_builtin
from cnnswarm.ml.datasets.stats import normalization_from, stratified_split
from cnnswarm.ml.datasets.synthetic import make_synthetic
from cnnswarm.ml.datasets.uploads import UploadLimits, import_upload

__all__ = [
    "BUILTIN_DATASETS",
    "SEED_CIFAR10_TAGS",
    "ArrayDataset",
    "Normalization",
    "UploadLimits",
    "import_upload",
    "load_builtin",
    "load_cifar10",
    "load_digits",
    "make_synthetic",
    "normalization_from",
    "normalize",
    "stratified_split",
]
