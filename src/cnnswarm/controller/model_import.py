"""Importing a model file: a seed ``.pth`` (bare state dict) or a cnn-swarm model file.

Order of work, so that a bad upload costs nothing and leaves nothing: the id is checked free
(409), the file read with ``weights_only=True`` and checked against its model type (400 naming
the problem; so is a file whose metadata names another type, or a dataset label that is no
dataset id: both go into the ``models`` row), batch norms recalibrated when the weights need it
(the seed's network: its file has no per-call-site statistics, see ``cnnswarm.ml.seed_model``),
then the model is written as a cnn-swarm model file under a fresh name and its row inserted in
one transaction that also reserves the id (``model_publish``). If that transaction fails (the
id was taken meanwhile) the file is removed; nothing that existed before is touched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
)
from torch import nn

from cnnswarm.controller.context import ControllerContext
from cnnswarm.controller.event_loop import off_the_loop
from cnnswarm.controller.model_publish import publish_model
from cnnswarm.errors import DatasetUnavailable, InvalidInput, NotFound
from cnnswarm.ml.artifact import (
    CIFAR10_CLASSES,
    ModelArtifact,
    artifact_from_bytes,
    artifact_to_bytes,
)
from cnnswarm.ml.calibrate import recalibrate_batch_norms
from cnnswarm.ml.datasets import ArrayDataset
from cnnswarm.ml.datasets.base import check_example_idxs
from cnnswarm.ml.datasets.uploads import validate_class_names
from cnnswarm.ml.model_files import check_weights
from cnnswarm.ml.models import ModelConfig, needs_calibration
from cnnswarm.ml.preprocess import Preprocessing
from cnnswarm.store.artifacts import SAFE_ID, check_id

# The dataset a seed file is recalibrated on when the request names none: the seed's own.
SEED_DATASET = "cifar10"


def _blank_is_none(raw: object) -> object:
    """An empty form field is an absent one."""
    return None if isinstance(raw, str) and not raw.strip() else raw


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


# The validators below raise InvalidInput, which pydantic lets through as it is (it wraps only
# ValueError and AssertionError): the rules they call say what is wrong, naming the field.


def _check_model_id(value: str) -> str:
    return check_id(value, "id")


def _parse_classes(raw: object) -> object:
    """The form's class names as a list, checked by the dataset uploads' rule."""
    raw = _blank_is_none(raw)
    if raw is None:
        return None
    try:
        classes = _parse_list(raw) if isinstance(raw, str) else raw
    except ValueError:
        classes = None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise InvalidInput(
            "classes must be class names, comma-separated (a,b,c) or a JSON array of strings",
            field="classes",
        )
    try:
        return validate_class_names(classes)
    except InvalidInput as exc:
        raise InvalidInput(exc.message, field="classes") from None


def _parse_example_idxs(raw: object) -> object:
    """The form's ``start,end`` (or JSON ``[start, end]``) as a list, checked by the one
    ``example_idxs`` rule (the training set's size is checked when the rows are taken)."""
    raw = _blank_is_none(raw)
    if raw is None:
        return None
    if isinstance(raw, str):
        try:
            raw = [int(v) if isinstance(v, str) else v for v in _parse_list(raw)]
        except ValueError:
            raw = None
    return check_example_idxs(raw)


_FORM_STRING = {"type": "string"}


class ImportRequest(BaseModel):
    """The form fields of ``POST /api/v1/models`` besides the file. The declaration is both the
    check (``from_form``) and the OpenAPI schema of the form (``model_json_schema``)."""

    # strict: nothing is coerced; extra="forbid": a misspelt field is refused, not ignored;
    # protected_namespaces=(): the field ``model_id`` is ours, not pydantic's.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, protected_namespaces=())

    model_id: Annotated[
        str,
        Field(
            alias="id",
            description="the new model's id",
            json_schema_extra={"pattern": SAFE_ID.pattern},
        ),
        AfterValidator(_check_model_id),
    ]
    classes: Annotated[
        list[str] | None,
        BeforeValidator(_parse_classes),
        WithJsonSchema(
            {
                **_FORM_STRING,
                "description": "seed files: class names, comma-separated or a JSON array "
                "(default for 10 outputs: CIFAR-10's)",
            }
        ),
    ] = None
    dataset: Annotated[
        str | None,
        BeforeValidator(_blank_is_none),
        WithJsonSchema(
            {
                **_FORM_STRING,
                "description": "the dataset the model was trained on, for batch-norm "
                "recalibration (default for seed files: cifar10)",
            }
        ),
    ] = None
    example_idxs: Annotated[
        list[int] | None,
        BeforeValidator(_parse_example_idxs),
        WithJsonSchema(
            {
                **_FORM_STRING,
                "description": "start,end: the training rows [start, end) it was trained on",
            }
        ),
    ] = None

    @classmethod
    def from_form(cls, form: Mapping[str, str]) -> ImportRequest:
        """Parse and check the multipart form fields ``id``, ``classes``, ``dataset`` and
        ``example_idxs``; ``InvalidInput`` naming the first bad or unknown one."""
        try:
            return cls.model_validate(dict(form))
        except ValidationError as exc:
            known = [info.alias or name for name, info in cls.model_fields.items()]
            raise InvalidInput.from_validation_error(exc, known=known, what="form field") from None


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
    used = off_the_loop(recalibrate_batch_norms, model, dataset, normalization=normalization)
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


def _shown(value: str, limit: int = 80) -> str:
    """``value`` quoted for an error message, cut short (a hostile file's field can be huge)."""
    return repr(value) if len(value) <= limit else repr(value[: limit - 3] + "...")


def _model_type(artifact: ModelArtifact) -> str:
    """The model type the file's weights are checked against (its ``model_config``'s);
    ``InvalidInput`` when the file's metadata names another type."""
    model_type = ModelConfig.from_json(artifact.model_config).model_type
    if artifact.model_type != model_type:
        raise InvalidInput(
            f"the file says it holds a {_shown(artifact.model_type)} but its model_config is a "
            f"{model_type}",
            field="file",
        )
    return model_type


def _dataset_label(context: ControllerContext, artifact: ModelArtifact, name: str | None) -> str:
    """What the model row records as its dataset when no recalibration named one: the
    request's dataset, else the id the file names (none: ``""``)."""
    if name is not None:
        try:
            return context.datasets.resolve_id(name)
        except NotFound as exc:
            raise InvalidInput(f"{exc.message}", field="dataset") from exc
    label = str(artifact.dataset.get("id") or artifact.dataset.get("name") or "")
    if label:
        try:
            check_id(label, "dataset")
        except InvalidInput:
            raise InvalidInput(
                f"this file names its dataset {_shown(label)}, which is not a dataset id "
                "(1-128 letters, digits, '_', '.', '-'); name the dataset it was trained on "
                "in 'dataset'",
                field="dataset",
            ) from None
    return label


def import_model(
    context: ControllerContext, data: bytes, request: ImportRequest
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Check, recalibrate if needed, store and register an uploaded model file; returns its
    ``models`` row and the recalibration summary (None when none was needed)."""
    catalog = context.stores.catalog
    catalog.check_model_id_free(request.model_id)  # before any costly work
    artifact = _with_classes(off_the_loop(artifact_from_bytes, data), request.classes)
    model = off_the_loop(check_weights, artifact)
    model_type = _model_type(artifact)
    recalibration = None
    if needs_calibration(model):
        artifact, recalibration = _recalibrated(context, artifact, model, request)
        dataset_id = str(recalibration["dataset"])
    else:
        dataset_id = _dataset_label(context, artifact, request.dataset)
    stored = publish_model(
        context.stores.artifacts,
        context.stores.artifacts.imported_model_path(request.model_id),
        off_the_loop(artifact_to_bytes, artifact),
        artifact,
        model_id=request.model_id,
        job_id=None,
        model_type=model_type,
        dataset=dataset_id,
        train_opts=artifact.train_opts,
        example_idxs=request.example_idxs,
        insert=catalog.add_model,
    )
    return dict(stored), recalibration
