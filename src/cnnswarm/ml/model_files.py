"""Model files on the way in (checked against their model type) and out (TorchScript).

``check_weights`` is what an imported file must pass before anything is written: its model type
is known, its class names match its classifier, every key the type needs is there, nothing
else is, every shape fits and every value is finite. The first problem found is an
``InvalidInput`` that names it. ``torchscript_bytes`` exports the eval-mode model, traced and
frozen, for serving outside cnn-swarm: it takes normalized ``(N, C, H, W)`` inputs and returns
logits whose softmax is what ``/predict`` answers.
"""

from __future__ import annotations

import io
import json

import torch
from torch import nn

from cnnswarm.errors import InvalidInput
from cnnswarm.ml.artifact import ModelArtifact
from cnnswarm.ml.inference import traced_and_frozen
from cnnswarm.ml.models import ModelConfig
from cnnswarm.ml.preprocess import Preprocessing

# Inside the TorchScript archive: the artefact's metadata (classes, preprocessing, ...).
TORCHSCRIPT_METADATA = "cnn-swarm.json"
_KEYS_SHOWN = 5


def _name(key: object) -> str:
    """A key as messages show it (quoted, and cut short: it comes from a user's file)."""
    return repr(str(key)[:120])


def _some(keys: list[str]) -> str:
    shown = ", ".join(_name(key) for key in keys[:_KEYS_SHOWN])
    return shown + (f" and {len(keys) - _KEYS_SHOWN} more" if len(keys) > _KEYS_SHOWN else "")


def check_weights(artifact: ModelArtifact) -> nn.Module:
    """The artefact's model with its weights loaded, in eval mode; ``InvalidInput`` naming the
    first thing that does not fit its model type (field ``file``, or ``classes``)."""
    config = ModelConfig.from_json(artifact.model_config)
    model = config.build()  # an unknown type or an input it cannot take is a 400 here
    name = config.model_type
    prep = Preprocessing.from_json(artifact.preprocessing)
    if (prep.channels, prep.height, prep.width) != (
        config.in_channels,
        config.height,
        config.width,
    ):
        raise InvalidInput(
            f"the file's preprocessing ({prep.channels}x{prep.height}x{prep.width}) does not "
            f"match its model's input ({config.in_channels}x{config.height}x{config.width})",
            field="file",
        )
    if len(artifact.classes) != config.num_classes:
        raise InvalidInput(
            f"wrong class count: the {name}'s classifier has {config.num_classes} outputs, "
            f"and {len(artifact.classes)} class names were given",
            field="classes",
        )
    expected = model.state_dict()
    for key, tensor in artifact.state_dict.items():
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            raise InvalidInput(
                f"state dict entry {_name(key)} is a {type(tensor).__name__}, not a tensor",
                field="file",
            )
        if key in expected and tuple(tensor.shape) != tuple(expected[key].shape):
            raise InvalidInput(
                f"shape mismatch at key {_name(key)}: the file has {list(tensor.shape)}, "
                f"{name} needs {list(expected[key].shape)}",
                field="file",
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InvalidInput(f"key {_name(key)} holds NaN or infinite values", field="file")
    missing, unexpected = model.load_state_dict(artifact.state_dict, strict=False)
    if missing:
        raise InvalidInput(
            f"not a complete {name} state dict: missing key(s) {_some(missing)}", field="file"
        )
    if unexpected:
        raise InvalidInput(
            f"not a {name} state dict: unexpected key(s) {_some(unexpected)}", field="file"
        )
    return artifact.build_model()  # strict, as predict loads it


def torchscript_bytes(artifact: ModelArtifact) -> bytes:
    """The eval-mode model traced, frozen and saved (``torch.jit.load`` reads it back), with the
    artefact's metadata as the extra file ``cnn-swarm.json``."""
    model = artifact.build_model()
    prep = Preprocessing.from_json(artifact.preprocessing)
    example = torch.zeros(2, prep.channels, prep.height, prep.width)
    frozen = traced_and_frozen(model, example)
    buffer = io.BytesIO()
    torch.jit.save(
        frozen, buffer, _extra_files={TORCHSCRIPT_METADATA: json.dumps(artifact.metadata())}
    )
    return buffer.getvalue()
