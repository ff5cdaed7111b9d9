"""Serving predictions: a bounded model cache and, per model, an inference queue that runs an
idle request inline and batches only under contention.

The pipeline, and why (issue 10, measured on 2 shared cores with a ResNet8 on 3x32x32 PNGs):

- **Processes.** The controller runs ``GUNICORN_WORKERS`` (2) gevent workers: each runs its
  requests as greenlets on one event loop, so parsing JSON, decoding PNGs and Flask never
  compete for the GIL with other request threads, and two processes use both cores. Forward
  passes, and every other CPU-heavy step of a request (a dataset upload's decoding, a model
  import's recalibration, a TorchScript export, loading a model), run in the loop's thread pool
  (``controller.event_loop``), so the worker's other requests go on meanwhile; the master
  patches the standard library before it imports the app (``serve._patch_for_gevent``). On a
  quiet machine gevent served 143/415/541/545 req/s at c=1/8/32/64 against 144/322/436/464
  for gthread workers of 16 threads (``GUNICORN_WORKER_CLASS=gthread``, the default until
  then). Background work is safe with several workers: the scheduler's leader lease lets one
  process schedule at a time, on SQLite as on PostgreSQL.
- **Torch threads.** ``PREDICT_TORCH_THREADS`` (1) per worker: under load, throughput comes
  from batching and from the second worker, not from splitting one small forward across cores
  (which costs a hand-off per operator and fights the other worker for the same cores).
- **Inline when idle.** A request for an idle model runs its forward pass at once: no wait
  for a batch to fill, and under gthread workers no hand-off at all (it runs in the request's
  own thread; a hand-off to an inference thread costs about 2 ms of a 4 ms answer). Under
  gevent it runs on the event loop too when it is the worker's only request and its model has
  had nothing queued lately (``event_loop.run_off_the_loop_unless_alone``: c=1 +15-30 %);
  otherwise its one hand-off is to the loop's thread pool, which lets the loop go on.
- **No oneDNN copy.** A oneDNN copy of the frozen graph for batches
  (``torch.jit.optimize_for_inference``) ran batches of 2-32 rows 1.2-1.4x as fast and served
  c=32/64 7-25 % more, but each worker kept 35-45 MB more (PSS with 10 cached models 583 MB
  against 465, past the 500 MB bound), also with batches cut into power-of-two shapes.
- **JSON predicts skip Flask.** A predict with a JSON body is answered by a WSGI layer in front
  of the Flask app (``controller.predict_path``) with the route's own functions and metrics;
  multipart uploads, other shapes and every error stay Flask's. Flask's request context,
  routing, hooks and response objects cost as much CPU as the rest of the request besides the
  forward pass: side by side, c=8 604 against 483 req/s, c=32 679 against 570.
- **Batches under contention.** Requests that arrive while the model is busy queue; when the
  forward pass ends, the oldest waiting request's thread takes everything queued (up to
  ``PREDICT_MAX_BATCH`` rows) as one batch, while the other request threads keep parsing and
  decoding (``InferenceQueue``). Rows are computed independently, so a request's answer does
  not depend on its batch beyond float rounding (batched and alone differ by about 3e-7).
- **Shed by queue time, not by count.** A request whose wait in its model's queue would pass
  ``PREDICT_MAX_QUEUE_S`` (2 s) gets 503 with ``Retry-After``; any number of requests that the
  model can answer in time are served (a count of 24 in flight refused 1,321 of c=32's
  requests).

Measured side by side with ``bench/serving_peers.py`` (README, Benchmarks; 2026-12-04 03:55, 3
rounds): 248/643/670/691 req/s at c=1/8/32/64 with 0 non-2xx, against TorchServe's
92/371/674/931 and LitServe's 180/338/340/324: c=1 1.38x (1.48-1.59x in other runs) and c=8 1.73x
the best peer, c=32 0.99x. At c=32 the forward passes alone (about 1.0 ms of CPU per image at
batch 8 on one thread) would take 1.3-1.4 of the 2 cores at 1.5x TorchServe's usual rate,
leaving under 0.5 ms per request for HTTP, JSON, base64, PNG decoding and the answer; this
pipeline spends 1.8 ms on those.

Each worker process holds its own cache: a model is loaded once per worker (``weights_only``),
put in eval mode, its batch norms folded into its convolutions and frozen to TorchScript
(``ml.inference``), run under ``torch.inference_mode()`` and kept in an LRU cache of
``PREDICT_CACHE_MODELS`` entries.

Freshness: a model's record is re-read at most ``ROW_TTL_S`` after it was last read, and a
loaded model is cached by its publication (id, file, job, creation time), so a model deleted
and published again, or an alias moved, by any controller is served fresh within that time.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnswarm.config import Settings
from cnnswarm.controller.event_loop import Forward, forward_runner, off_the_loop
from cnnswarm.controller.inference_queue import InferenceQueue
from cnnswarm.controller.metrics import ControllerMetrics
from cnnswarm.errors import Conflict, InvalidInput
from cnnswarm.exposition import AppMetrics
from cnnswarm.ml.artifact import ModelArtifact, load_artifact
from cnnswarm.ml.inference import compiled_for_serving, fold_batch_norms
from cnnswarm.ml.models import needs_calibration
from cnnswarm.ml.preprocess import Preprocessing

# How long a model's database record is reused before it is read again.
ROW_TTL_S = 1.0


@dataclass
class LoadedModel:
    """A model ready to serve."""

    model_id: str
    model: nn.Module  # eval mode, batch norms folded, frozen TorchScript (ml.inference)
    classes: list[str]
    preprocessing: Preprocessing
    queue: InferenceQueue


# A model's publication: its id, file, job and publication time. Filenames repeat
# (``<id>/attempt-1.pth`` again after a delete and a new job) and other controllers delete and
# publish without telling this one, so the file name alone would keep serving the old weights.
_CacheKey = tuple[str, str, str, float]


def _cache_key(model_row: Mapping[str, Any]) -> _CacheKey:
    return (
        str(model_row["id"]),
        str(model_row["filename"]),
        str(model_row["job_id"]),
        float(model_row["created_at"]),
    )


def _ready_to_serve(path: Path, model_id: str) -> tuple[ModelArtifact, nn.Module]:
    """The model file's artefact and its model in eval mode, batch norms folded, as frozen
    TorchScript (``ml.inference``: its forward pass runs without the GIL)."""
    artifact = load_artifact(path)
    prep = Preprocessing.from_json(artifact.preprocessing)
    sample = torch.randn(2, prep.channels, prep.height, prep.width, generator=torch.Generator())
    folded = fold_batch_norms(servable_model(artifact, model_id), sample)
    return artifact, compiled_for_serving(folded, sample)


class Predictor:
    """The model cache and inference queues of one controller process."""

    def __init__(self, settings: Settings, metrics: ControllerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or _metrics_off()
        self._lock = threading.Lock()
        self._models: OrderedDict[_CacheKey, LoadedModel] = OrderedDict()
        self._loading: dict[_CacheKey, threading.Lock] = {}
        self._rows: dict[str, tuple[float, Mapping[str, Any]]] = {}
        self._run_forward = forward_runner()  # inline, or off a gevent worker's event loop

    def model_row(
        self, id_or_alias: str, fetch: Callable[[str], Mapping[str, Any]]
    ) -> Mapping[str, Any]:
        """The model's record, from the database at most every ``ROW_TTL_S`` per name (an
        alias moved or a model deleted by another controller is seen within that time)."""
        now = time.monotonic()
        with self._lock:
            cached = self._rows.get(id_or_alias)
        if cached is not None and now - cached[0] < ROW_TTL_S:
            return cached[1]
        row = fetch(id_or_alias)
        with self._lock:
            self._rows[id_or_alias] = (now, row)
            if len(self._rows) > 4 * self.settings.predict_cache_models:
                self._rows.clear()
        return row

    def get(self, model_row: Mapping[str, Any], home_dir: Path) -> LoadedModel:
        """The loaded model for a ``models`` row (cached by its publication, so a re-published
        id never serves stale weights)."""
        key = _cache_key(model_row)
        with self._lock:
            loaded = self._models.get(key)
            if loaded is not None:
                self._models.move_to_end(key)
                return loaded
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:  # one load per model, however many requests ask at once
            with self._lock:
                loaded = self._models.get(key)
            if loaded is None:
                try:
                    loaded = self._load(model_row, home_dir)
                finally:
                    with self._lock:
                        self._loading.pop(key, None)
                with self._lock:
                    self._models[key] = loaded
                    while len(self._models) > self.settings.predict_cache_models:
                        self._models.popitem(last=False)
                    self.metrics.model_loaded(len(self._models))
        return loaded

    def _load(self, model_row: Mapping[str, Any], home_dir: Path) -> LoadedModel:
        model_id = str(model_row["id"])
        artifact, model = off_the_loop(_ready_to_serve, home_dir / model_row["filename"], model_id)
        prep = Preprocessing.from_json(artifact.preprocessing)
        return LoadedModel(
            model_id=model_id,
            model=model,
            classes=list(artifact.classes),
            preprocessing=prep,
            queue=InferenceQueue(
                _probabilities_of(model),
                max_batch=self.settings.predict_max_batch,
                max_queue_s=self.settings.predict_max_queue_s,
                observer=self.metrics,
                run_forward=self._run_forward,
            ),
        )

    def forget(self, model_id: str) -> None:
        """Drop a deleted model from the cache."""
        with self._lock:
            for key in [k for k in self._models if k[0] == model_id]:
                del self._models[key]
            self._rows.clear()
            self.metrics.cache_size(len(self._models))

    def predict(
        self, loaded: LoadedModel, inputs: torch.Tensor, top_k: int
    ) -> list[dict[str, Any]]:
        """Class, probability and the ``top_k`` best classes for each input row; ``Overloaded``
        (503 with ``Retry-After``) when the model's queue is past ``predict_max_queue_s``."""
        probs = loaded.queue.run(inputs)
        k = min(top_k, probs.shape[1])
        values, indices = torch.topk(probs, k, dim=1)
        predictions = []
        for row_values, row_indices in zip(values.tolist(), indices.tolist(), strict=True):
            ranked = [
                {"class_idx": idx, "class_tag": loaded.classes[idx], "probability": p}
                for p, idx in zip(row_values, row_indices, strict=True)
            ]
            predictions.append({**ranked[0], "top_k": ranked})
        return predictions


def _probabilities_of(model: nn.Module) -> Forward:
    """The forward pass a model's queue runs: softmax probabilities (float32) of a batch."""

    def probabilities(inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch.softmax(model(inputs).float(), dim=1)

    return probabilities


def _metrics_off() -> ControllerMetrics:
    """Metrics that record nothing (a predictor or batcher built without the app's)."""
    return ControllerMetrics(AppMetrics(enabled=False))


def servable_model(artifact: ModelArtifact, model_id: str) -> nn.Module:
    """The artefact's model in eval mode; ``Conflict`` when it cannot serve what it learned (the
    seed's network without statistics per call site would predict at chance level)."""
    model = artifact.build_model()
    if needs_calibration(model):
        raise Conflict(
            f"model {model_id!r} has no batch-norm statistics per call site (a seed .pth, or "
            "trained before cnn-swarm kept them), so it would predict at chance level: download "
            "its file, delete the model, and import the file again naming its training dataset "
            "(POST /api/v1/models, or cnn-swarm models import FILE --dataset D), which "
            "recalibrates it",
            field="model_id",
        )
    return model


def examples_to_tensor(examples: Any, prep: Preprocessing, max_items: int) -> torch.Tensor:
    """Already-normalized nested lists (the seed's ``examples``) -> ``(N, C, H, W)`` float32,
    checked against the model's input shape."""
    if not isinstance(examples, list) or not examples:
        raise InvalidInput("examples must be a non-empty nested list", field="examples")
    # numpy reads nested lists about twice as fast as torch.tensor; it would also read strings
    # and huge integers (as text or objects), so only numeric kinds are accepted.
    try:
        array = np.asarray(examples)
    except (TypeError, ValueError, OverflowError):
        array = None
    if array is None or array.dtype.kind not in "biuf":
        raise InvalidInput(
            "examples must be a rectangular nested list of numbers", field="examples"
        )
    with np.errstate(over="ignore"):  # out of float32 range -> inf, refused below
        tensor = torch.from_numpy(array.astype(np.float32))
    expected = (prep.channels, prep.height, prep.width)
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 4 or tuple(tensor.shape[1:]) != expected:
        raise InvalidInput(
            f"examples must have shape N x {expected[0]} x {expected[1]} x {expected[2]}, "
            f"got {list(tensor.shape)}",
            field="examples",
        )
    if len(tensor) > max_items:
        raise InvalidInput(f"at most {max_items} examples per request", field="examples")
    if not torch.isfinite(tensor).all():
        raise InvalidInput("examples must be finite numbers", field="examples")
    return tensor
