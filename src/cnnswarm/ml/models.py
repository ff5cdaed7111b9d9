"""The model registry: every trainable ConvNet, looked up by name.

Each entry documents its input (channels, image size, classes) and ``build_model`` checks a
dataset's shape against it before anything is allocated, so a mismatch is a 400 naming the
field, not a shape error deep inside ``forward``.

- ``NNConvResNetRGB``: the seed's network, attribute for attribute, so a ``.pth`` the seed
  trained loads with ``load_state_dict(strict=True)``. 3x32x32 input only. Its tied batch
  norm keeps statistics per call site (``cnnswarm.ml.seed_model`` says why).
- ``ResNet8`` / ``ResNet20``: CIFAR-style ResNets (He et al. 2016, 6n+2 layers, BatchNorm,
  projection shortcuts), designed for 32x32 RGB; channels, size (8..256 px) and classes follow
  the dataset.
- ``SmallConvNet``: a compact BatchNorm ConvNet for small images (8..32 px, e.g. 8x8 digits,
  28x28 MNIST, 32x32 CIFAR); channels and classes follow the dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnswarm.errors import InvalidInput
from cnnswarm.ml.seed_model import NNConvResNetRGB, TiedBatchNorm2d

MAX_CHANNELS = 16
MAX_CLASSES = 10_000


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model's architecture (weights aside)."""

    model_type: str
    in_channels: int
    height: int
    width: int
    num_classes: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of ``to_json``; InvalidInput when a key is missing."""
        try:
            return cls(
                model_type=str(data["model_type"]),
                in_channels=int(data["in_channels"]),
                height=int(data["height"]),
                width=int(data["width"]),
                num_classes=int(data["num_classes"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"model config is incomplete: {exc}", field="model_config") from exc

    def build(self) -> nn.Module:
        """The model this config describes (fresh weights, train mode)."""
        return build_model(
            self.model_type,
            in_channels=self.in_channels,
            height=self.height,
            width=self.width,
            num_classes=self.num_classes,
        )


# --------------------------------------------------------------------------------------------
# CIFAR-style ResNets


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2): stem, three stages of ``n`` blocks (16/32/64 ch), global average pool."""

    def __init__(self, blocks_per_stage: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        layers: list[nn.Module] = []
        in_ch = 16
        for stage, out_ch in enumerate((16, 32, 64)):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(in_ch, out_ch, stride))
                in_ch = out_ch
        self.stages = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        out: torch.Tensor = self.fc(x)
        return out


# --------------------------------------------------------------------------------------------
# Small grayscale images


def _conv_bn_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU()]


class SmallConvNet(nn.Module):
    """Two conv-conv stages (32, 64 ch) with 2x2 max-pools, a third (128 ch) from 16 px up.

    8x8 input: 32 ch at 8 px -> pool -> 64 ch at 4 px; 28x28: ... -> 128 ch at 7 px; then
    global average pool, dropout and a linear classifier.
    """

    def __init__(self, in_channels: int, height: int, width: int, num_classes: int) -> None:
        super().__init__()
        widths = [32, 64] if min(height, width) < 16 else [32, 64, 128]
        layers: list[nn.Module] = []
        in_ch = in_channels
        for i, out_ch in enumerate(widths):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            layers += _conv_bn_relu(in_ch, out_ch) + _conv_bn_relu(out_ch, out_ch)
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        out: torch.Tensor = self.fc(self.dropout(x))
        return out


# --------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: what input the model takes and how to build it."""

    name: str
    description: str
    channels: tuple[int, int]  # inclusive range
    size: tuple[int, int]  # inclusive range of height and width, pixels
    classes: tuple[int, int]  # inclusive range
    factory: Callable[[int, int, int, int], nn.Module]  # (channels, height, width, classes)


_REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "NNConvResNetRGB",
            "The seed's tied-weight ResNet; input exactly 3x32x32.",
            channels=(3, 3),
            size=(32, 32),
            classes=(2, MAX_CLASSES),
            factory=lambda c, h, w, k: NNConvResNetRGB(num_classes=k),
        ),
        ModelSpec(
            "ResNet8",
            "CIFAR-style ResNet-8 (1 block per stage); made for 32x32 RGB.",
            channels=(1, MAX_CHANNELS),
            size=(8, 256),
            classes=(2, MAX_CLASSES),
            factory=lambda c, h, w, k: CifarResNet(1, c, k),
        ),
        ModelSpec(
            "ResNet20",
            "CIFAR-style ResNet-20 (3 blocks per stage); made for 32x32 RGB.",
            channels=(1, MAX_CHANNELS),
            size=(8, 256),
            classes=(2, MAX_CLASSES),
            factory=lambda c, h, w, k: CifarResNet(3, c, k),
        ),
        ModelSpec(
            "SmallConvNet",
            "Compact BatchNorm ConvNet for small images (8..32 px, e.g. digits, MNIST).",
            channels=(1, MAX_CHANNELS),
            size=(8, 32),
            classes=(2, MAX_CLASSES),
            factory=lambda c, h, w, k: SmallConvNet(c, h, w, k),
        ),
    )
}


def model_names() -> list[str]:
    """Names ``build_model`` accepts, in registry order."""
    return list(_REGISTRY)


def model_spec(model_type: str) -> ModelSpec:
    """The registry entry for ``model_type``; InvalidInput (field ``model_type``) if unknown."""
    spec = _REGISTRY.get(model_type) if isinstance(model_type, str) else None
    if spec is None:
        raise InvalidInput(
            f"unknown model_type {model_type!r}; known: {', '.join(_REGISTRY)}",
            field="model_type",
        )
    return spec


def default_model_type(input_shape: tuple[int, int, int]) -> str:
    """The model to use when none is named: small images -> SmallConvNet, else ResNet8."""
    channels, height, width = input_shape
    if max(height, width) <= 28 and min(height, width) >= 8 and channels <= MAX_CHANNELS:
        return "SmallConvNet"
    return "ResNet8"


def _check_range(field: str, value: object, bounds: tuple[int, int], model_type: str) -> int:
    low, high = bounds
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"{field} must be an integer, got {value!r}", field=field)
    if not low <= value <= high:
        allowed = str(low) if low == high else f"{low}..{high}"
        raise InvalidInput(
            f"{model_type} needs {field} {allowed}, got {value}", field=field, model_type=model_type
        )
    return value


def build_model(
    model_type: str, *, in_channels: int, height: int, width: int, num_classes: int
) -> nn.Module:
    """A freshly initialised model (train mode); InvalidInput naming the field that does not fit."""
    spec = model_spec(model_type)
    c = _check_range("in_channels", in_channels, spec.channels, model_type)
    h = _check_range("height", height, spec.size, model_type)
    w = _check_range("width", width, spec.size, model_type)
    k = _check_range("num_classes", num_classes, spec.classes, model_type)
    return spec.factory(c, h, w, k)


def needs_calibration(model: nn.Module) -> bool:
    """Whether ``model`` has batch-norm call sites without running statistics (the seed's
    network loaded from a seed ``.pth``); ``cnnswarm.ml.calibrate`` estimates them."""
    return any(
        isinstance(module, TiedBatchNorm2d) and not module.calibrated for module in model.modules()
    )
