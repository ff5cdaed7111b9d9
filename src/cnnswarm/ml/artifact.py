"""The model artefact: trained weights plus everything predict needs to use them.

File format: ``torch.save`` of ``{"format": "cnn-swarm-model", "version": 1, "metadata":
<JSON string>, "state_dict": {name: tensor}}``. It is read with ``torch.load(weights_only=True)``
only, so a hostile file cannot run code. ``load_artifact`` also takes a bare state dict of the
seed's ``NNConvResNetRGB`` (a ``.pth`` the seed wrote) and fills in the seed's CIFAR-10
metadata. ``save_artifact`` replaces the file atomically.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnswarm.atomic import write_atomically
from cnnswarm.errors import InvalidInput
from cnnswarm.ml.checkpoint import load_weights_only
from cnnswarm.ml.datasets.base import ArrayDataset
from cnnswarm.ml.models import ModelConfig

ARTIFACT_FORMAT = "cnn-swarm-model"
ARTIFACT_VERSION = 1

CIFAR10_CLASSES = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SEED_PREPROCESSING: dict[str, Any] = {
    "channels": 3,
    "height": 32,
    "width": 32,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
}


def preprocessing_of(dataset: ArrayDataset) -> dict[str, Any]:
    """The preprocessing a model trained on ``dataset`` expects, as a plain JSON dict.

    Same keys as ``cnnswarm.ml.preprocess.Preprocessing.to_json()``:
    ``channels, height, width, mean, std``.
    """
    channels, height, width = dataset.input_shape
    return {
        "channels": channels,
        "height": height,
        "width": width,
        "mean": [float(v) for v in dataset.normalization.mean],
        "std": [float(v) for v in dataset.normalization.std],
    }


@dataclass
class ModelArtifact:
    """A trained model: architecture, weights and the metadata to use and describe it."""

    model_type: str
    model_config: dict[str, Any]  # ModelConfig.to_json()
    classes: list[str]
    preprocessing: dict[str, Any]  # {"channels","height","width","mean","std"}
    metrics: list[dict[str, Any]] = field(default_factory=list)
    dataset: dict[str, Any] = field(default_factory=dict)  # ArrayDataset.info()
    train_opts: dict[str, Any] = field(default_factory=dict)
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    # True when read from a bare seed state dict (its metadata above is the seed's defaults).
    from_seed: bool = field(default=False, compare=False)

    def metadata(self) -> dict[str, Any]:
        """Everything except the weights, JSON-ready."""
        return {
            "model_type": self.model_type,
            "model_config": self.model_config,
            "classes": self.classes,
            "preprocessing": self.preprocessing,
            "metrics": self.metrics,
            "dataset": self.dataset,
            "train_opts": self.train_opts,
        }

    def build_model(self) -> nn.Module:
        """The model with these weights loaded (strict), in eval mode, on the CPU."""
        model = ModelConfig.from_json(self.model_config).build()
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:
            raise InvalidInput(
                f"weights do not fit {self.model_type}: {exc}", field="state_dict"
            ) from exc
        return model.eval()


def _to_file_dict(artifact: ModelArtifact) -> dict[str, Any]:
    return {
        "format": ARTIFACT_FORMAT,
        "version": ARTIFACT_VERSION,
        "metadata": json.dumps(artifact.metadata()),
        "state_dict": {k: v.detach().cpu() for k, v in artifact.state_dict.items()},
    }


def _seed_artifact(state_dict: dict[str, torch.Tensor]) -> ModelArtifact:
    num_classes = int(state_dict["fc_gap.weight"].shape[0]) if "fc_gap.weight" in state_dict else 10
    config = ModelConfig("NNConvResNetRGB", 3, 32, 32, num_classes)
    classes = CIFAR10_CLASSES if num_classes == 10 else [str(i) for i in range(num_classes)]
    return ModelArtifact(
        model_type="NNConvResNetRGB",
        model_config=config.to_json(),
        classes=list(classes),
        preprocessing=dict(SEED_PREPROCESSING),
        dataset={"name": "cifar10"},
        state_dict=state_dict,
        from_seed=True,
    )


def _from_file_dict(obj: Any) -> ModelArtifact:
    if not isinstance(obj, dict):
        raise InvalidInput("model file must hold a dict")
    if obj.get("format") != ARTIFACT_FORMAT:
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return _seed_artifact(obj)  # a bare state dict: the seed's .pth
        raise InvalidInput("not a cnn-swarm model file nor a seed state dict")
    if obj.get("version") != ARTIFACT_VERSION:
        raise InvalidInput(f"unsupported model file version {obj.get('version')!r}")
    try:
        meta = json.loads(obj["metadata"])
        return ModelArtifact(
            model_type=str(meta["model_type"]),
            model_config=dict(meta["model_config"]),
            classes=[str(c) for c in meta["classes"]],
            preprocessing=dict(meta["preprocessing"]),
            metrics=list(meta.get("metrics", [])),
            dataset=dict(meta.get("dataset", {})),
            train_opts=dict(meta.get("train_opts", {})),
            state_dict=dict(obj["state_dict"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"model file metadata is malformed: {exc}") from exc


def artifact_to_bytes(artifact: ModelArtifact) -> bytes:
    """Serialise an artefact (the file format above)."""
    buffer = io.BytesIO()
    torch.save(_to_file_dict(artifact), buffer)
    return buffer.getvalue()


def artifact_from_bytes(data: bytes) -> ModelArtifact:
    """Read an artefact or a seed state dict from bytes (weights_only=True)."""
    return _from_file_dict(load_weights_only(io.BytesIO(data), "model file"))


def save_artifact(artifact: ModelArtifact, path: Path) -> None:
    """Write the artefact to ``path`` atomically."""
    file_dict = _to_file_dict(artifact)
    write_atomically(Path(path), lambda fh: torch.save(file_dict, fh))


def load_artifact(path: Path) -> ModelArtifact:
    """Read an artefact or a seed ``.pth`` (weights_only=True); InvalidInput if neither."""
    return _from_file_dict(load_weights_only(Path(path), f"model file {Path(path).name}"))
