"""The controller API's wire format, declared once: request bodies, query strings, headers,
answers and the seed routes' bodies.

A request model is what its route validates with: strict types (``"3"`` is not 3, ``1`` is not
``true``), bounds, ``extra="forbid"`` (a misspelt key is refused by name, never ignored).
Query strings and headers are text, so their models parse ``"5"`` as 5 and ignore other keys.
Every model here is also its OpenAPI schema: ``controller.openapi`` documents
``model_json_schema()``, nothing is written twice. Answers are built by ``store``
(``job_to_json`` and friends) and documented here, field for field (``extra="forbid"``), so
the fuzz tier's check of every answer against the document also checks that nothing an
answer carries is left undocumented. The job request (``job_requests.JobRequest``) and the
model import form (``model_import.ImportRequest``) live next to the code that takes them; ids
and ``example_idxs`` follow the one rule each in ``cnnswarm.protocol``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic_core import PydanticCustomError

from cnnswarm.errors import InvalidInput
from cnnswarm.ml.train_options import TrainOptions
from cnnswarm.protocol import ExampleIdxs, SafeId
from cnnswarm.store.attempts import AttemptEnd
from cnnswarm.store.job_records import JobState

MAX_ITEMS_PER_REQUEST = 256  # images or examples in one v1 predict request
MAX_TOP_K = 10_000
MAX_SEED_EXAMPLES = 1000  # examples in one seed /predict or /get_examples request

# protected_namespaces=(): model_id and model_type are ours, not pydantic's "model_".
# allow_inf_nan=False: NaN and Infinity are refused by name.
STRICT = ConfigDict(
    strict=True, extra="forbid", allow_inf_nan=False, frozen=True, protected_namespaces=()
)
TEXT = ConfigDict(extra="ignore", frozen=True, protected_namespaces=())
ANSWER = ConfigDict(extra="forbid", protected_namespaces=())


M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], data: Mapping[str, Any], *, what: str = "field") -> M:
    """``data`` checked by ``model``; ``InvalidInput`` naming the first bad or unknown
    ``what`` (field, query parameter, header)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        known = [info.alias or name for name, info in model.model_fields.items()]
        raise InvalidInput.from_validation_error(exc, known=known, what=what) from None


TopK = Annotated[
    int, Field(ge=1, le=MAX_TOP_K, description="how many best classes to rank for each input")
]


# -- requests ---------------------------------------------------------------------------------


class Base64Image(BaseModel):
    """An instance in TensorFlow Serving's form."""

    model_config = STRICT

    b64: Annotated[str, Field(description="a PNG or JPEG, base64")]


def _instance_form(value: Any) -> str:
    return "object" if isinstance(value, dict) else "string"


# The form is told by the JSON type, so an error speaks of that form only.
Instance = Annotated[
    Annotated[str, Tag("string"), Field(description="a PNG or JPEG, base64")]
    | Annotated[Base64Image, Tag("object")],
    Discriminator(_instance_form),
]


class PredictRequest(BaseModel):
    """Images as base64 (instances) or already-normalized arrays (examples); images sent as
    multipart files need no JSON body."""

    model_config = STRICT

    instances: Annotated[
        Annotated[
            list[Instance],
            Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST),
        ]
        | None,
        Field(description="images to classify (used when both forms are sent)"),
    ] = None
    examples: Annotated[
        Annotated[list[Any], Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST)] | None,
        Field(description="N x C x H x W nested lists of normalized numbers, as the seed's"),
    ] = None
    top_k: Annotated[TopK | None, Field(description="null: the query's top_k, else 1")] = None

    def images(self) -> list[bytes]:
        """The decoded ``instances``; ``InvalidInput`` naming the first that is not base64."""
        images = []
        for i, item in enumerate(self.instances or ()):
            text = item.b64 if isinstance(item, Base64Image) else item
            try:
                images.append(base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError):
                raise InvalidInput(
                    f"instances[{i}] is not valid base64", field="instances"
                ) from None
        return images


class PredictUpload(BaseModel):
    """Images as multipart files (the field may also be named file, images or image)."""

    # Documents the multipart form; models_api.request_inputs reads the files and checks top_k
    # by PredictQuery.
    model_config = STRICT

    files: Annotated[
        list[Annotated[bytes, Field(description="a PNG or JPEG")]],
        Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST),
    ]
    top_k: TopK | None = None


class PredictQuery(BaseModel):
    """Predict's query string (for multipart images, top_k may also be a form field)."""

    model_config = TEXT

    top_k: TopK | None = None


class AliasRequest(BaseModel):
    """Where an alias points."""

    model_config = STRICT

    model_id: Annotated[SafeId, Field(description="the model the alias names from now on")]


class JobListQuery(BaseModel):
    """Which jobs to list."""

    model_config = TEXT

    state: Annotated[JobState | None, Field(description="only jobs in this state")] = None
    limit: Annotated[int, Field(ge=1, le=10_000, description="the most recent this many")] = 1000


class JobSubmitHeaders(BaseModel):
    """The headers a job submission reads."""

    model_config = TEXT

    idempotency_key: Annotated[
        str | None,
        Field(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            description="a retry with the same key and body answers the same job",
        ),
    ] = None


class DatasetUploadForm(BaseModel):
    """A dataset upload's form fields besides the file."""

    model_config = STRICT

    name: Annotated[
        str | None, Field(min_length=1, max_length=200, description="null: the dataset's id")
    ] = None


class DatasetUpload(DatasetUploadForm):
    """A dataset upload: the archive and its name."""

    file: Annotated[
        bytes,
        Field(description="a zip or tar of class folders of images, or an .npz of x, y, classes"),
    ]


# -- the seed's routes (kept as the seed's clients send them) ----------------------------------


class SeedPredictRequest(BaseModel):
    """The body of the seed's ``POST /predict``."""

    model_config = STRICT

    model_id: str
    examples: Annotated[
        list[Any],
        Field(min_length=1, description="N x C x H x W nested lists of normalized numbers"),
    ]


class SeedExamplesRequest(BaseModel):
    """The body of the seed's ``POST /get_examples``."""

    model_config = STRICT

    example_idxs: Annotated[
        Annotated[int, Field(ge=0)] | ExampleIdxs,
        Field(description="one row, or the rows [start, end)"),
    ]
    dataset_type: Literal["train", "test"] = "train"
    dataset: str = "cifar10"

    @field_validator("example_idxs", mode="wrap")
    @classmethod
    def _one_message_for_example_idxs(
        cls, value: Any, handler: ValidatorFunctionWrapHandler
    ) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError(
                "example_idxs", "Input must be an integer or [start, end]"
            ) from None

    def rows(self, size: int) -> tuple[int, int]:
        """``[start, end)`` within a split of ``size`` rows, at most ``MAX_SEED_EXAMPLES``."""
        if isinstance(self.example_idxs, int):
            start, end = self.example_idxs, self.example_idxs + 1
        else:
            start, end = self.example_idxs
        if end > size:
            raise InvalidInput(
                f"example_idxs must satisfy 0 <= start < end <= {size}, got [{start}, {end}]",
                field="example_idxs",
            )
        if end - start > MAX_SEED_EXAMPLES:
            raise InvalidInput(
                f"at most {MAX_SEED_EXAMPLES} examples per request", field="example_idxs"
            )
        return start, end


class SeedDatasetInfoRequest(BaseModel):
    """The body of the seed's ``POST /get_dataset_info`` (``dataset`` is ours)."""

    model_config = STRICT

    dataset_name: str | None = None
    dataset: str | None = None


# -- answers ----------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    """Every error answer; some add details (request_id on a 500)."""

    model_config = ConfigDict(extra="allow")

    exception: Annotated[str, Field(description="the error's stable name, e.g. InvalidInputArg")]
    error: Annotated[str, Field(description="what is wrong and what to do about it")]
    field: Annotated[str | None, Field(description="the request field at fault")] = None


EpochMetrics = Annotated[
    list[dict[str, Any]],
    Field(
        description="per epoch: epoch, train_loss, train_accuracy, test_loss, test_accuracy, "
        "lr, images_per_s, duration_s"
    ),
]


class JobAttempt(BaseModel):
    """One attempt of a job: a dispatch to a trainer, from its claim to its end."""

    model_config = ANSWER

    attempt: int
    trainer: str | None
    started_at: float
    ended_at: Annotated[float | None, Field(description="null while it runs")]
    outcome: Annotated[
        AttemptEnd | None,
        Field(
            description="how it ended: succeeded, failed (the job failed), trainer_failure (its "
            "process died; requeued), lease_lost (its trainer stopped renewing the lease), "
            "cancelled; null while it runs"
        ),
    ]
    reason: Annotated[str | None, Field(description="the error or why the lease was lost")]
    resumed_from_attempt: Annotated[
        int | None, Field(description="the attempt whose checkpoint it resumed from")
    ]
    checkpointed: Annotated[bool, Field(description="it stored a checkpoint")]


class Job(BaseModel):
    """A training job."""

    # Built by store.job_records.job_to_json (and queue details by jobs_api.describe_jobs).

    model_config = ANSWER

    id: str
    model_id: str
    dataset: str
    model_type: str
    example_idxs: list[int] | None
    train_opts: TrainOptions
    state: JobState
    progress: Annotated[float, Field(ge=0, le=1)]
    epoch: int
    metrics: EpochMetrics
    trainer: Annotated[str | None, Field(description="the trainer running it, or that ran it")]
    attempt: int
    error: Annotated[str | None, Field(description="why it failed; a pruned trial: pruned")]
    sweep: Annotated[str | None, Field(description="the sweep whose trial it is")] = None
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    queue_position: Annotated[int | None, Field(description="while queued: jobs ahead")] = None
    waiting_reason: Annotated[str | None, Field(description="while queued: why")] = None
    workers: Annotated[int, Field(description="trainers it trains on at once")] = 1
    min_workers: Annotated[
        int | None, Field(description="the smallest gang a resumed attempt takes")
    ] = None
    gang: Annotated[
        list[str] | None, Field(description="while running on several: trainer ids by rank")
    ] = None
    attempts: Annotated[
        list[JobAttempt] | None,
        Field(description="one job's answer only (not listings): every attempt, oldest first"),
    ] = None


class JobList(BaseModel):
    model_config = ANSWER

    jobs: list[Job]


class InputPreprocessing(BaseModel):
    """What a model's inputs are: size, channels and the normalization applied to pixel/255."""

    model_config = ANSWER

    channels: int
    height: int
    width: int
    mean: list[float]
    std: list[float]


class Model(BaseModel):
    """A published model."""

    # Built by store.catalog.model_to_json.

    model_config = ANSWER

    id: str
    model_id: str
    job_id: Annotated[str | None, Field(description="null: imported")]
    model_type: str
    dataset: str
    classes: list[str]
    metrics: EpochMetrics
    train_opts: dict[str, Any]
    example_idxs: list[int] | None
    preprocessing: InputPreprocessing
    created: float
    aliases: list[str]


class Recalibration(BaseModel):
    """The images an import re-estimated the batch-norm statistics on."""

    model_config = ANSWER

    dataset: str
    example_idxs: list[int] | None
    images: int


class ImportedModel(Model):
    """An imported model, and how it was recalibrated (null: its file needed no recalibration)."""

    recalibration: Recalibration | None


class ModelList(BaseModel):
    model_config = ANSWER

    models: list[Model]


class Alias(BaseModel):
    model_config = ANSWER

    alias: str
    model_id: str


class Dataset(BaseModel):
    """A dataset; a built-in one is described in full once it was first loaded."""

    model_config = ANSWER

    id: str
    name: str
    builtin: bool
    description: str | None = None
    classes: list[str] | None = None
    num_classes: int | None = None
    num_train: int | None = None
    num_test: int | None = None
    shape: Annotated[list[int] | None, Field(description="[channels, height, width]")] = None
    created: Annotated[float | None, Field(description="uploads: when")] = None


class DatasetList(BaseModel):
    model_config = ANSWER

    datasets: list[Dataset]


class Trainer(BaseModel):
    """A trainer, as its heartbeats describe it."""

    # Built by store.trainers.Trainer.to_json.

    model_config = ANSWER

    id: str
    url: str
    state: Literal["idle", "busy", "lost"]
    slots: int
    running_jobs: list[str]
    free_slots: int
    last_heartbeat: float
    seconds_since_heartbeat: float


class TrainerList(BaseModel):
    model_config = ANSWER

    trainers: list[Trainer]


class ClassScore(BaseModel):
    model_config = ANSWER

    class_idx: int
    class_tag: str
    probability: Annotated[float, Field(ge=0, le=1)]


class Prediction(ClassScore):
    """The best class of one input, and the ``top_k`` best, best first."""

    top_k: list[ClassScore]


class PredictAnswer(BaseModel):
    model_config = ANSWER

    model_id: Annotated[str, Field(description="the model that answered (an alias resolved)")]
    predictions: Annotated[list[Prediction], Field(description="one per input, in order")]


# -- dataset samples (for dataset_samples_api) -----------------------------------------------

MAX_SAMPLES_PER_CLASS = 64


class DatasetSamplesQuery(BaseModel):
    """How many samples of each class to list."""

    model_config = TEXT

    per_class: Annotated[
        int,
        Field(ge=0, le=MAX_SAMPLES_PER_CLASS, description="how many training rows per class"),
    ] = 8


class ClassSamples(BaseModel):
    """One class of a dataset: its image counts and its first training rows."""

    model_config = ANSWER

    index: int
    name: str
    num_train: int
    num_test: int
    samples: Annotated[list[int], Field(description="training rows, for images/{row}.png")]


class DatasetSamples(BaseModel):
    model_config = ANSWER

    dataset: str
    shape: Annotated[list[int], Field(description="[channels, height, width]")]
    classes: list[ClassSamples]
