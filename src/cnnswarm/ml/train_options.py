"""Training options: the seed's ``train_opts`` plus cnn-swarm's own, validated in one place.

Defaults depend on the model. ``NNConvResNetRGB`` keeps the seed's (80 epochs, SGD lr 0.01
momentum 0.5, weight decay 1e-4, multistep LR x0.1 at 1/3 and 2/3, batch 64, random flips);
the newer models get defaults that train well in little time.

``augment`` is a per-sample random left-right flip. It defaults to on for the RGB models
(natural photos such as CIFAR-10 are left-right symmetric) and off for ``SmallConvNet``, which
is meant for digits and characters, where a mirrored "2" or "7" is not a "2" or "7".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from cnnswarm.errors import InvalidInput
from cnnswarm.ml.models import model_spec

SchedulerMode = Literal["multistep", "exponential", "plateau", "cosine", "none"]
Optimizer = Literal["sgd", "adamw"]

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


def _wire_schema(schema: dict[str, Any]) -> None:
    # On the wire every key is optional: a missing one takes the model's default.
    schema.pop("required", None)
    schema["description"] = (
        "Training options; every key is optional and defaults depend on model_type."
    )


# strict: 1 is not true and "3" is not 3; extra="forbid": a misspelt option is refused, not
# silently ignored; allow_inf_nan=False: NaN and Infinity are refused by name.
_STRICT = ConfigDict(
    strict=True, extra="forbid", allow_inf_nan=False, json_schema_extra=_wire_schema
)


@dataclass(frozen=True, config=_STRICT)
class TrainOptions:
    """Validated options for one training run (build with ``from_dict``).

    The declaration is the validation and the ``train_opts`` JSON schema (``json_schema()``).
    """

    num_epochs: Annotated[int, Field(ge=1, le=10_000)]
    lr: Annotated[float, Field(gt=0.0, le=10.0)]
    momentum: Annotated[float, Field(ge=0.0, lt=1.0, description="SGD momentum; AdamW's beta1")]
    scheduler_mode: SchedulerMode
    batch_size: Annotated[int, Field(ge=1, le=65_536)]
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)]
    optimizer: Optimizer
    seed: Annotated[
        int | None,
        Field(ge=0, le=2**63 - 1, description="null: drawn at start and recorded"),
    ]
    augment: Annotated[bool, Field(description="per-sample random left-right flip")]
    checkpoint_every_batches: Annotated[
        int, Field(ge=0, le=10**9, description="0: a checkpoint after each epoch only")
    ]
    device: Annotated[
        str | None,
        Field(pattern=r"^(cpu|cuda(:\d+)?)$", description="null: CUDA when present"),
    ]
    force_cpu: bool
    bf16: Annotated[bool, Field(description="bfloat16 autocast for forward and loss")]

    @classmethod
    def from_dict(cls, opts: Mapping[str, Any] | None, *, model_type: str) -> TrainOptions:
        """Model defaults overlaid with ``opts``; InvalidInput naming any bad or unknown key."""
        model_spec(model_type)  # InvalidInput(field="model_type") if unknown
        if opts is None:
            opts = {}
        if not isinstance(opts, Mapping):
            raise InvalidInput("train_opts must be an object or null", field="train_opts")
        values = {**_COMMON_DEFAULTS, **MODEL_DEFAULTS[model_type], **opts}
        try:
            # The constructor validates (so does dataclasses.replace); dict input would need
            # lax mode, which turns 1 into true.
            return cls(**{str(key): value for key, value in values.items()})
        except ValidationError as exc:
            known = [f.name for f in fields(cls)]
            raise InvalidInput.from_validation_error(
                exc, known=known, what="train_opts key"
            ) from None

    @staticmethod
    def json_schema() -> dict[str, Any]:
        """The JSON schema of ``train_opts`` as a client sends it."""
        return TypeAdapter(TrainOptions).json_schema()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``from_dict(to_dict())`` gives the same options back."""
        return asdict(self)
