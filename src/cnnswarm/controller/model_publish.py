"""Publishing a model: its file written, then its ``models`` row inserted.

Used by a job's publish (``internal.post_result``) and by an import (``model_import``).
Guarantees: the file is written atomically before any row names it, so a row never names a torn
or missing file; every publish writes a name of its own (an attempt's, or a fresh import name),
so nothing that existed before is touched; if the insert fails (a fenced-off attempt, an id
taken meanwhile) the new file is removed again.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

from cnnswarm.atomic import write_atomic
from cnnswarm.ml.artifact import ModelArtifact
from cnnswarm.store.artifacts import ArtifactStore
from cnnswarm.store.catalog import model_row

T = TypeVar("T")


def publish_model(
    artifacts: ArtifactStore,
    path: Path,
    data: bytes,
    artifact: ModelArtifact,
    *,
    model_id: str,
    job_id: str | None,
    model_type: str,
    dataset: str,
    train_opts: dict[str, Any],
    example_idxs: list[int] | None,
    insert: Callable[[dict[str, Any]], T],
) -> T:
    """Write ``data`` (the bytes of ``artifact``) at ``path``, then ``insert`` the model's row
    (classes, metrics and preprocessing from ``artifact``) and return what ``insert`` returns;
    when ``insert`` raises, the file is removed and the exception propagates."""
    write_atomic(path, data)
    row = model_row(
        model_id,
        job_id=job_id,
        model_type=model_type,
        dataset=dataset,
        classes=artifact.classes,
        metrics=artifact.metrics,
        train_opts=train_opts,
        example_idxs=example_idxs,
        preprocessing=artifact.preprocessing,
        filename=str(path.relative_to(artifacts.root)),
    )
    try:
        return insert(row)
    except BaseException:
        path.unlink(missing_ok=True)
        with suppress(OSError):
            path.parent.rmdir()  # only if empty: a folder with another file keeps it
        raise
