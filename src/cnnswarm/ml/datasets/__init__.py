"""Datasets: one interface (``ArrayDataset``) over built-ins and user uploads."""

from cnnswarm.ml.datasets.base import ArrayDataset, Normalization, normalize

__all__ = ["ArrayDataset", "Normalization", "normalize"]
