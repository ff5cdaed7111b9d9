"""Training options: the seed's ``train_opts`` plus cnn-swarm's own, validated in one place.

Defaults depend on the model. ``NNConvResNetRGB`` keeps the seed's (80 epochs, SGD lr 0.01
momentum 0.5, weight decay 1e-4, multistep LR x0.1 at 1/3 and 2/3, batch 64, random flips);
the newer models get defaults that train well in little time.

``augment`` is a per-sample random left-right flip. It defaults to on for the RGB models
(natural photos such as CIFAR-10 are left-right symmetric) and off for ``SmallConvNet``, which
is meant for digits and characters, where a mirrored "2" or "7" is not a "2" or "7".
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from cnnswarm.errors import InvalidInput
from cnnswarm.ml.models import model_spec

SCHEDULER_MODES = ("multistep", "exponential", "plateau", "cosine", "none")
OPTIMIZERS = ("sgd", "adamw")
_DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")

_COMMON_DEFAULTS: dict[str, Any] = {
    "seed": None,
    "checkpoint_every_batches": 0,
    "device": None,
    "force_cpu": False,
    "bf16": False,
}
_SEED_DEFAULTS: dict[str, Any] = {
    "num_epochs": 80,
    "lr": 0.01,
    "momentum": 0.5,
    "scheduler_mode": "multistep",
    "batch_size": 64,
    "weight_decay": 1e-4,
    "optimizer": "sgd",
    "augment": True,
}
_RESNET_DEFAULTS: dict[str, Any] = {
    "num_epochs": 30,
    "lr": 0.1,
    "momentum": 0.9,
    "scheduler_mode": "cosine",
    "batch_size": 128,
    "weight_decay": 5e-4,
    "optimizer": "sgd",
    "augment": True,
}
_SMALL_DEFAULTS: dict[str, Any] = {
    "num_epochs": 15,
    "lr": 0.003,
    "momentum": 0.9,  # AdamW's beta1
    "scheduler_mode": "cosine",
    "batch_size": 32,
    "weight_decay": 1e-4,
    "optimizer": "adamw",
    "augment": False,
}
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "NNConvResNetRGB": _SEED_DEFAULTS,
    "ResNet8": _RESNET_DEFAULTS,
    "ResNet20": _RESNET_DEFAULTS,
    "SmallConvNet": _SMALL_DEFAULTS,
}


@dataclass(frozen=True)
class TrainOptions:
    """Validated options for one training run (build with ``from_dict``)."""

    num_epochs: int
    lr: float
    momentum: float  # SGD momentum; AdamW's beta1
    scheduler_mode: str  # multistep | exponential | plateau | cosine | none
    batch_size: int = 64
    weight_decay: float = 1e-4
    optimizer: str = "sgd"  # sgd | adamw
    seed: int | None = None  # None: drawn at start and recorded, so a resume repeats it
    augment: bool = True  # per-sample random left-right flip
    checkpoint_every_batches: int = 0  # 0: a checkpoint after each epoch only
    device: str | None = None  # "cpu", "cuda", "cuda:N"; None: CUDA when present
    force_cpu: bool = False
    bf16: bool = False  # bfloat16 autocast for forward and loss

    @classmethod
    def from_dict(cls, opts: Mapping[str, Any] | None, *, model_type: str) -> TrainOptions:
        """Model defaults overlaid with ``opts``; InvalidInput naming any bad or unknown key."""
        model_spec(model_type)  # InvalidInput(field="model_type") if unknown
        if opts is None:
            opts = {}
        if not isinstance(opts, Mapping):
            raise InvalidInput("train_opts must be an object or null", field="train_opts")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in opts if k not in known)
        if unknown:
            raise InvalidInput(
                f"unknown train_opts key(s): {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}",
                field=unknown[0],
            )
        values = {**_COMMON_DEFAULTS, **MODEL_DEFAULTS[model_type], **opts}
        return cls(
            num_epochs=_int(values, "num_epochs", 1, 10_000),
            lr=_float(values, "lr", 0.0, 10.0, low_open=True),
            momentum=_float(values, "momentum", 0.0, 1.0, high_open=True),
            scheduler_mode=_choice(values, "scheduler_mode", SCHEDULER_MODES),
            batch_size=_int(values, "batch_size", 1, 65_536),
            weight_decay=_float(values, "weight_decay", 0.0, 1.0),
            optimizer=_choice(values, "optimizer", OPTIMIZERS),
            seed=None if values.get("seed") is None else _int(values, "seed", 0, 2**63 - 1),
            augment=_bool(values, "augment"),
            checkpoint_every_batches=_int(values, "checkpoint_every_batches", 0, 10**9),
            device=_device(values.get("device")),
            force_cpu=_bool(values, "force_cpu"),
            bf16=_bool(values, "bf16"),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``from_dict(to_dict())`` gives the same options back."""
        return asdict(self)


def _int(values: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = values.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"{key} must be an integer, got {value!r}", field=key)
    if not low <= value <= high:
        raise InvalidInput(f"{key} must be in {low}..{high}, got {value}", field=key)
    return value


def _float(
    values: Mapping[str, Any],
    key: str,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    value = values.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidInput(f"{key} must be a number, got {value!r}", field=key)
    number = float(value)
    too_low = number <= low if low_open else number < low
    too_high = number >= high if high_open else number > high
    if not math.isfinite(number) or too_low or too_high:
        bounds = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise InvalidInput(f"{key} must be in {bounds}, got {value!r}", field=key)
    return number


def _choice(values: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = values.get(key)
    if value not in choices:
        raise InvalidInput(f"{key} must be one of {', '.join(choices)}, got {value!r}", field=key)
    return str(value)


def _bool(values: Mapping[str, Any], key: str) -> bool:
    value = values.get(key)
    if not isinstance(value, bool):
        raise InvalidInput(f"{key} must be true or false, got {value!r}", field=key)
    return value


def _device(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _DEVICE_PATTERN.match(value):
        raise InvalidInput(f"device must be cpu, cuda or cuda:N, got {value!r}", field="device")
    return value
