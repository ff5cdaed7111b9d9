"""The one dataset interface: uint8 image arrays with a train/test split, class names and a
normalization.

Images are kept as uint8 ``(N, C, H, W)`` arrays (decoded once, cached as ``.npz``) and turned
into normalized float tensors batch by batch with ``normalize``; training and predict both go
through that one function, so a model always sees what it was trained on.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnswarm.atomic import write_atomically
from cnnswarm.errors import InvalidInput
from cnnswarm.protocol import check_example_idxs as check_example_idxs  # the one rule


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``(x / 255 - mean) / std``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_json(self) -> dict[str, list[float]]:
        """A JSON-ready dict."""
        return {"mean": list(self.mean), "std": list(self.std)}


def normalize(x: torch.Tensor, normalization: Normalization) -> torch.Tensor:
    """uint8 (or 0-255 float) images ``(N, C, H, W)`` -> normalized float32 tensor."""
    mean, std = _mean_and_std(normalization, x.shape[1], x.device)
    return (x.to(torch.float32).div_(255.0) - mean) / std


@functools.lru_cache(maxsize=64)
def _mean_and_std(
    normalization: Normalization, channels: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``normalization``'s mean and std as ``(1, C, 1, 1)`` tensors, made once (a predict
    request normalizes one image: building them was half of its 50 us); never modified."""
    mean = torch.tensor(normalization.mean, dtype=torch.float32, device=device)
    std = torch.tensor(normalization.std, dtype=torch.float32, device=device)
    return mean.view(1, channels, 1, 1), std.view(1, channels, 1, 1)


@dataclass
class ArrayDataset:
    """A whole dataset in memory; arrays are validated on construction."""

    name: str
    classes: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    normalization: Normalization

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x = getattr(self, f"x_{split}")
            y = getattr(self, f"y_{split}")
            if x.dtype != np.uint8 or x.ndim != 4:
                raise InvalidInput(f"x_{split} must be uint8 (N, C, H, W), got {x.dtype} {x.shape}")
            if y.ndim != 1 or len(y) != len(x):
                raise InvalidInput(f"y_{split} must have one label per image in x_{split}")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
                raise InvalidInput(f"y_{split} has labels outside 0..{len(self.classes) - 1}")
        if self.x_train.shape[1:] != self.x_test.shape[1:] and len(self.x_test):
            raise InvalidInput("train and test images must have the same shape")
        channels = self.x_train.shape[1]
        if len(self.normalization.mean) != channels or len(self.normalization.std) != channels:
            raise InvalidInput(f"normalization must have {channels} values per statistic")
        self.y_train = self.y_train.astype(np.int64, copy=False)
        self.y_test = self.y_test.astype(np.int64, copy=False)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        _, c, h, w = self.x_train.shape
        return int(c), int(h), int(w)

    def subset(self, example_idxs: Sequence[int] | None) -> ArrayDataset:
        """The training rows ``[start, end)`` (the seed's ``example_idxs``); test is kept."""
        if example_idxs is None:
            return self
        start, end = check_example_idxs(example_idxs, len(self.x_train))
        return replace(self, x_train=self.x_train[start:end], y_train=self.y_train[start:end])

    def info(self) -> dict[str, Any]:
        """Summary for the API: name, classes, sizes, shape."""
        return {
            "name": self.name,
            "classes": list(self.classes),
            "num_classes": len(self.classes),
            "num_train": len(self.x_train),
            "num_test": len(self.x_test),
            "shape": list(self.input_shape),
        }

    def save_npz(self, path: Path) -> None:
        """Write the cache/wire format (plain arrays, no pickle) atomically."""
        write_atomically(
            Path(path),
            lambda fh: np.savez(
                fh,
                x_train=self.x_train,
                y_train=self.y_train,
                x_test=self.x_test,
                y_test=self.y_test,
                classes=np.array(self.classes, dtype=np.str_),
                mean=np.array(self.normalization.mean, dtype=np.float64),
                std=np.array(self.normalization.std, dtype=np.float64),
                name=np.array(self.name, dtype=np.str_),
            ),
        )

    @classmethod
    def load_npz(cls, path: Path) -> ArrayDataset:
        """Read what ``save_npz`` wrote; never unpickles."""
        with np.load(path, allow_pickle=False) as data:
            return cls(
                name=str(data["name"]),
                classes=[str(c) for c in data["classes"]],
                x_train=data["x_train"],
                y_train=data["y_train"],
                x_test=data["x_test"],
                y_test=data["y_test"],
                normalization=Normalization(
                    mean=tuple(float(v) for v in data["mean"]),
                    std=tuple(float(v) for v in data["std"]),
                ),
            )
