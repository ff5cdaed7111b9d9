"""Serving predictions: a bounded in-memory model cache and opportunistic batching.

A model is loaded once (``weights_only=True``), put in eval mode, its batch norms folded into
its convolutions (``ml.inference``) and kept in an LRU cache of ``predict_cache_models``
entries. Requests for one model are batched without waiting: the first request runs at once;
requests that arrive while a forward pass is running queue up and the next of them runs all
queued inputs as one batch. An idle model never waits, a busy one turns many small forwards
into few large ones. More than ``predict_max_inflight`` requests at once are refused with 503
and ``Retry-After`` instead of piling up.

Freshness: a model's record is re-read at most ``ROW_TTL_S`` after it was last read, and a
loaded model is cached by its publication (id, file, job, creation time), so a model deleted
and published again, or an alias moved, by any controller is served fresh within that time.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnswarm.config import Settings
from cnnswarm.controller.metrics import ControllerMetrics
from cnnswarm.errors import Conflict, InvalidInput, Overloaded
from cnnswarm.exposition import AppMetrics
from cnnswarm.ml.artifact import ModelArtifact, load_artifact
from cnnswarm.ml.inference import fold_batch_norms
from cnnswarm.ml.models import needs_calibration
from cnnswarm.ml.preprocess import Preprocessing

# How long a model's database record is reused before it is read again.
ROW_TTL_S = 1.0


@dataclass
class _Request:
    inputs: torch.Tensor
    queued_at: float = field(default_factory=time.perf_counter)
    done: threading.Event = field(default_factory=threading.Event)
    promoted: bool = False
    outputs: torch.Tensor | None = None
    error: BaseException | None = None

    def outcome(self) -> torch.Tensor:
        if self.error is not None:
            raise self.error
        assert self.outputs is not None
        return self.outputs


class Batcher:
    """Runs one model's forward passes, merging requests that arrive while it is busy."""

    def __init__(
        self, model: nn.Module, max_batch: int, metrics: ControllerMetrics | None = None
    ) -> None:
        self.model = model
        self.max_batch = max_batch
        self.metrics = metrics or _metrics_off()
        self._lock = threading.Lock()
        self._pending: list[_Request] = []
        self._busy = False
        self.forward_calls = 0  # how many forward passes ran (a measure of batching)

    def probabilities(self, inputs: torch.Tensor) -> torch.Tensor:
        """Softmax outputs for ``inputs`` (N, C, H, W), maybe computed in a shared batch."""
        request = _Request(inputs)
        with self._lock:
            self._pending.append(request)
            lead = not self._busy
            self._busy = True
        if not lead:
            request.done.wait()
            if not request.promoted:
                return request.outcome()
        # This thread leads: its request is first in line, run it with whatever queued behind.
        with self._lock:
            batch = self._take()
        self._run(batch)
        with self._lock:
            if self._pending:
                successor = self._pending[0]
                successor.promoted = True
                successor.done.set()
            else:
                self._busy = False
        return request.outcome()

    def _take(self) -> list[_Request]:
        batch = [self._pending.pop(0)]
        rows = len(batch[0].inputs)
        while self._pending and rows + len(self._pending[0].inputs) <= self.max_batch:
            rows += len(self._pending[0].inputs)
            batch.append(self._pending.pop(0))
        return batch

    def _run(self, batch: list[_Request]) -> None:
        try:
            inputs = batch[0].inputs if len(batch) == 1 else torch.cat([r.inputs for r in batch])
            started = time.perf_counter()
            for request in batch:
                self.metrics.observe_queue_wait(started - request.queued_at)
            self.metrics.observe_batch(len(inputs))
            with torch.inference_mode():
                probs = torch.softmax(self.model(inputs).float(), dim=1)
            self.forward_calls += 1
            start = 0
            for request in batch:
                request.outputs = probs[start : start + len(request.inputs)]
                start += len(request.inputs)
        except BaseException as exc:
            for request in batch:
                request.error = exc
        for request in batch:
            if not request.promoted:
                request.done.set()


@dataclass
class LoadedModel:
    """A model ready to serve."""

    model_id: str
    classes: list[str]
    preprocessing: Preprocessing
    batcher: Batcher


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


class Predictor:
    """The model cache and admission control of one controller process."""

    def __init__(self, settings: Settings, metrics: ControllerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or _metrics_off()
        self._lock = threading.Lock()
        self._models: OrderedDict[_CacheKey, LoadedModel] = OrderedDict()
        self._loading: dict[_CacheKey, threading.Lock] = {}
        self._rows: dict[str, tuple[float, Mapping[str, Any]]] = {}
        self._inflight = threading.BoundedSemaphore(settings.predict_max_inflight)

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
        artifact = load_artifact(home_dir / model_row["filename"])
        prep = Preprocessing.from_json(artifact.preprocessing)
        sample = torch.randn(2, prep.channels, prep.height, prep.width, generator=torch.Generator())
        model = fold_batch_norms(servable_model(artifact, str(model_row["id"])), sample)
        return LoadedModel(
            model_id=str(model_row["id"]),
            classes=list(artifact.classes),
            preprocessing=prep,
            batcher=Batcher(model, self.settings.predict_max_batch, self.metrics),
        )

    def forget(self, model_id: str) -> None:
        """Drop a deleted model from the cache."""
        with self._lock:
            for key in [k for k in self._models if k[0] == model_id]:
                del self._models[key]
            self._rows.clear()
            self.metrics.cache_size(len(self._models))

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """Run the block as one of at most ``predict_max_inflight`` inference requests;
        ``Overloaded`` (503 with ``Retry-After``) when that many are already running."""
        if not self._inflight.acquire(blocking=False):
            self.metrics.count_rejected()
            raise Overloaded(
                f"more than {self.settings.predict_max_inflight} predict requests in flight; "
                "retry shortly",
                retry_after=1,
            )
        try:
            yield
        finally:
            self._inflight.release()

    def predict(
        self, loaded: LoadedModel, inputs: torch.Tensor, top_k: int
    ) -> list[dict[str, Any]]:
        """Class, probability and the ``top_k`` best classes for each input row."""
        with self.admitted():
            probs = loaded.batcher.probabilities(inputs)
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
