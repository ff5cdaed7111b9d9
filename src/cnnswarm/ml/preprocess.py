"""What a model expects of its input, and the one path from encoded images to its tensor.

``Preprocessing`` travels with every model artefact; ``images_to_tensor`` decodes with the same
safe decoder and converts with the same ``image_to_array`` that built the upload datasets, then
normalizes with ``datasets.normalize`` -- so predict sees images exactly as training did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cnnswarm.errors import InvalidInput
from cnnswarm.ml.datasets.base import ArrayDataset, Normalization, normalize
from cnnswarm.ml.datasets.images import decode_image, image_to_array

__all__ = ["Preprocessing", "decode_image", "image_to_array", "images_to_tensor"]


@dataclass(frozen=True)
class Preprocessing:
    """Input channels and size a model takes, and the normalization it was trained with."""

    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise InvalidInput(f"channels must be 1 or 3, got {self.channels}", field="channels")
        if self.height < 1 or self.width < 1:
            raise InvalidInput(f"image size must be positive, got {self.height}x{self.width}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise InvalidInput(f"mean and std must have {self.channels} values each")
        if any(s <= 0 for s in self.std):
            raise InvalidInput("std values must be positive")

    @property
    def normalization(self) -> Normalization:
        """The ``Normalization`` to hand to ``normalize``."""
        return Normalization(mean=self.mean, std=self.std)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (read back by ``from_json``)."""
        return {
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Preprocessing:
        """Read what ``to_json`` wrote; ``InvalidInput`` when a key is missing or malformed."""
        try:
            return cls(
                channels=int(data["channels"]),
                height=int(data["height"]),
                width=int(data["width"]),
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"malformed preprocessing record: {exc!r}") from exc

    @classmethod
    def from_dataset(cls, dataset: ArrayDataset) -> Preprocessing:
        """The preprocessing that reproduces ``dataset``'s input shape and normalization."""
        channels, height, width = dataset.input_shape
        return cls(
            channels=channels,
            height=height,
            width=width,
            mean=tuple(dataset.normalization.mean),
            std=tuple(dataset.normalization.std),
        )


def images_to_tensor(
    images: Sequence[bytes], prep: Preprocessing, *, names: Sequence[str] | None = None
) -> torch.Tensor:
    """Encoded images -> normalized float32 ``(N, C, H, W)`` for a model with ``prep``.

    Each image is decoded safely, converted to ``L`` or ``RGB`` as ``prep.channels`` says and
    resized (bilinear) to ``prep``'s size. ``InvalidInput`` names the first bad image (by
    ``names[i]``, or ``image <i>``).
    """
    if names is not None and len(names) != len(images):
        raise ValueError("names must have one entry per image")
    arrays = np.empty((len(images), prep.channels, prep.height, prep.width), dtype=np.uint8)
    for i, data in enumerate(images):
        name = names[i] if names is not None else f"image {i}"
        image = decode_image(data, name=name)
        arrays[i] = image_to_array(
            image, channels=prep.channels, height=prep.height, width=prep.width
        )
    return normalize(torch.from_numpy(arrays), prep.normalization)
