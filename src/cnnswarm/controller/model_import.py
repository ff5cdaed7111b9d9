"""Importing a model file: a seed ``.pth`` (bare state dict) or a cnn-swarm model file.

Order of work, so that a bad upload costs nothing and leaves nothing: the id is checked free
(409), the file read with ``weights_only=True`` and checked against its model type (400 naming
the problem), batch norms recalibrated when the weights need it (the seed's network: its file
has no per-call-site statistics, see ``cnnswarm.ml.seed_model``), then the model is written as
a cnn-swarm model file under a fresh name and its row inserted in one transaction that also
reserves the id. If that transaction fails (the id was taken meanwhile) the file is removed;
nothing that existed before is touched.
"""

from __future__ import annotations

import json
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from cnnswarm.atomic import write_atomic
from cnnswarm.controller.context import ControllerContext
from cnnswarm.errors import DatasetUnavailable, InvalidInput, NotFound
from cnnswarm.ml.artifact import (
    CIFAR10_CLASSES,
    ModelArtifact,
    artifact_from_bytes,
    artifact_to_bytes,
)
from cnnswarm.ml.calibrate import recalibrate_batch_norms
from cnnswarm.ml.datasets import ArrayDataset
from cnnswarm.ml.model_files import check_weights
from cnnswarm.ml.models import needs_calibration
from cnnswarm.ml.preprocess import Preprocessing
from cnnswarm.store.artifacts import check_id
from cnnswarm.store.catalog import model_row

# The dataset a seed file is recalibrated on when the request names none: the seed's own.
SEED_DATASET = "cifar10"


@dataclass(frozen=True)
class ImportRequest:
    """What ``POST /api/v1/models`` carries besides the file."""

    model_id: str
    classes: list[str] | None = None
    dataset: str | None = None
    example_idxs: list[int] | None = None

    @classmethod
    def from_form(cls, form: dict[str, str]) -> ImportRequest:
        """Parse and check the multipart form fields ``id``, ``classes``, ``dataset`` and
        ``example_idxs``."""
        if "id" not in form:
            raise InvalidInput("send the new model's id as form field 'id'", field="id")
        return cls(
            model_id=check_id(form["id"], "id"),
            classes=_parse_classes(form.get("classes")),
            dataset=form.get("dataset") or None,
            example_idxs=_parse_example_idxs(form.get("example_idxs")),
        )


def _parse_list(raw: str) -> list[Any]:
    """``a,b,c`` or a JSON array."""
    text = raw.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, list):
            raise ValueError("not a JSON array")
        return value
    return [part.strip() for part in text.split(",")]


def _parse_classes(raw: str | None) -> list[str] | None:
    if raw is None or not raw.strip():
        return None
    try:
        classes = _parse_list(raw)
    except ValueError:
        classes = []
    if (
        not classes
        or not all(isinstance(c, str) and 0 < len(c) <= 200 for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise InvalidInput(
            "classes must be distinct class names, comma-separated (a,b,c) or a JSON array",
            field="classes",
        )
    return [str(c) for c in classes]


def _parse_example_idxs(raw: str | None) -> list[int] | None:
    if raw is None or not raw.strip():
        return None
    try:
        values = [int(v) if isinstance(v, str) else v for v in _parse_list(raw)]
    except ValueError:
        values = []
    if (
        len(values) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        or not 0 <= values[0] < values[1]
    ):
        raise InvalidInput(
            "example_idxs must be start,end with 0 <= start < end (training rows [start, end))",
            field="example_idxs",
        )
    return [int(values[0]), int(values[1])]


def _with_classes(artifact: ModelArtifact, classes: list[str] | None) -> ModelArtifact:
    """The artefact with the request's class names: a seed file takes them (10 outputs
    default to CIFAR-10's names); a cnn-swarm file carries its own, which must agree."""
    if artifact.from_seed:
        if classes is not None:
            return replace(artifact, classes=list(classes))
        if len(artifact.classes) != len(CIFAR10_CLASSES):
            raise InvalidInput(
                f"this seed file classifies {len(artifact.classes)} classes; name them in "
                "'classes' (comma-separated, in the order of the model's outputs)",
                field="classes",
            )
        return artifact
    if classes is not None and classes != artifact.classes:
        raise InvalidInput(
            f"this cnn-swarm model file names its classes ({', '.join(artifact.classes[:10])}"
            f"{', ...' if len(artifact.classes) > 10 else ''}); leave 'classes' out or send "
            "the same names",
            field="classes",
        )
    return artifact


def _calibration_data(
    context: ControllerContext, artifact: ModelArtifact, request: ImportRequest
) -> tuple[str, ArrayDataset]:
    """The dataset to recalibrate on (its id and the requested training slice), checked to fit
    the model; ``InvalidInput`` saying what to do when it is not available."""
    name = request.dataset or (SEED_DATASET if artifact.from_seed else None)
    if name is None:
        raise InvalidInput(
            f"this {artifact.model_type} file has no batch-norm statistics per call site and "
            "needs them recalibrated on the images it was trained on: name that dataset in "
            "'dataset' (and the rows it trained on in 'example_idxs')",
            field="dataset",
        )
    try:
        dataset_id = context.datasets.resolve_id(name)
        dataset = context.datasets.load(dataset_id)
    except (NotFound, DatasetUnavailable) as exc:
        raise InvalidInput(
            f"this {artifact.model_type} file needs its batch-norm statistics recalibrated on "
            f"the images it was trained on, and dataset {name!r} is not available: "
            f"{exc.message}. Make it available, or upload the training images "
            "(POST /api/v1/datasets, `cnn-swarm datasets upload`) and name that dataset in "
            "'dataset'; then import again",
            field="dataset",
        ) from exc
    if list(dataset.input_shape) != [
        artifact.preprocessing["channels"],
        artifact.preprocessing["height"],
        artifact.preprocessing["width"],
    ]:
        raise InvalidInput(
            f"dataset {name!r} has {'x'.join(map(str, dataset.input_shape))} images; the model "
            f"takes {artifact.preprocessing['channels']}x{artifact.preprocessing['height']}x"
            f"{artifact.preprocessing['width']}",
            field="dataset",
        )
    if len(dataset.classes) != len(artifact.classes):
        raise InvalidInput(
            f"dataset {name!r} has {len(dataset.classes)} classes, the model "
            f"{len(artifact.classes)}; name the dataset it was trained on",
            field="dataset",
        )
    return dataset_id, dataset.subset(request.example_idxs)


def _recalibrated(
    context: ControllerContext, artifact: ModelArtifact, model: nn.Module, request: ImportRequest
) -> tuple[ModelArtifact, dict[str, Any]]:
    """The artefact with running statistics estimated on its training data, and a summary."""
    dataset_id, dataset = _calibration_data(context, artifact, request)
    # Normalized as the model will be served, whatever the dataset's own normalization.
    normalization = Preprocessing.from_json(artifact.preprocessing).normalization
    used = recalibrate_batch_norms(model, dataset, normalization=normalization)
    recalibration = {
        "dataset": dataset_id,
        "example_idxs": request.example_idxs,
        "images": used,
    }
    calibrated = replace(
        artifact,
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        dataset={**dataset.info(), "id": dataset_id, "recalibration": recalibration},
        from_seed=False,
    )
    return calibrated, recalibration


def _dataset_label(context: ControllerContext, artifact: ModelArtifact, name: str | None) -> str:
    """What the model row records as its dataset when no recalibration named one."""
    if name is None:
        return str(artifact.dataset.get("id") or artifact.dataset.get("name") or "")
    try:
        return context.datasets.resolve_id(name)
    except NotFound as exc:
        raise InvalidInput(f"{exc.message}", field="dataset") from exc


def import_model(
    context: ControllerContext, data: bytes, request: ImportRequest
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Check, recalibrate if needed, store and register an uploaded model file; returns its
    ``models`` row and the recalibration summary (None when none was needed)."""
    catalog = context.stores.catalog
    catalog.check_model_id_free(request.model_id)  # before any costly work
    artifact = _with_classes(artifact_from_bytes(data), request.classes)
    model = check_weights(artifact)
    recalibration = None
    if needs_calibration(model):
        artifact, recalibration = _recalibrated(context, artifact, model, request)
        dataset_id = str(recalibration["dataset"])
    else:
        dataset_id = _dataset_label(context, artifact, request.dataset)
    path = context.stores.artifacts.imported_model_path(request.model_id)
    write_atomic(path, artifact_to_bytes(artifact))
    row = model_row(
        request.model_id,
        job_id=None,
        model_type=artifact.model_type,
        dataset=dataset_id,
        classes=artifact.classes,
        metrics=artifact.metrics,
        train_opts=artifact.train_opts,
        example_idxs=request.example_idxs,
        preprocessing=artifact.preprocessing,
        filename=str(path.relative_to(context.stores.artifacts.root)),
    )
    try:
        stored = catalog.add_model(row)
    except BaseException:
        path.unlink(missing_ok=True)
        with suppress(OSError):
            path.parent.rmdir()  # only if empty: a folder another model owns keeps its files
        raise
    return dict(stored), recalibration
