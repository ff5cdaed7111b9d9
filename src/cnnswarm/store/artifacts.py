"""Files under ``HOME_DIR``: datasets, checkpoints and models.

Guarantees: every write goes to a temp file in the same folder, is fsynced and renamed into
place, so a crash leaves either the old file or the new one, never a torn one. No name from a
request reaches the filesystem unchecked: ids must match ``SAFE_ID`` and every resolved path
must stay inside the store's root.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from cnnswarm.errors import InvalidInput
from cnnswarm.protocol import SAFE_ID as SAFE_ID  # the one id rule, shared with the trainer
from cnnswarm.protocol import check_id as check_id


def copy_stream(stream: IO[bytes], chunk_size: int = 1 << 20) -> Iterable[bytes]:
    """Chunks of ``stream`` until EOF (so uploads never sit whole in memory)."""
    while chunk := stream.read(chunk_size):
        yield chunk


class ArtifactStore:
    """The layout of ``HOME_DIR`` (shared by every controller that shares the DB)."""

    def __init__(self, home_dir: Path) -> None:
        self.root = Path(home_dir).resolve()
        for sub in ("datasets", "checkpoints", "torch_models", "torch_data", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def sweep_temp_files(self, older_than_s: float = 3600.0) -> int:
        """Delete temp files that a killed writer left behind (they never replaced anything);
        returns how many. Recent ones may belong to a write in progress and stay."""
        cutoff = time.time() - older_than_s
        removed = 0
        for folder in ("datasets", "checkpoints", "torch_models"):
            for path in (self.root / folder).rglob(".*.tmp"):
                try:
                    if path.is_file() and path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def _inside(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts).resolve()
        if self.root not in path.parents:
            raise InvalidInput(f"path {'/'.join(parts)!r} escapes the artifact store")
        return path

    @property
    def torch_data(self) -> Path:
        """Where built-in datasets' files live (the seed's ``HOME_DIR/torch_data``)."""
        return self.root / "torch_data"

    @property
    def tmp(self) -> Path:
        """Scratch space on the same filesystem (for uploads in progress)."""
        return self.root / "tmp"

    def dataset_path(self, dataset_id: str) -> Path:
        """The cached arrays (``.npz``) of a dataset."""
        return self._inside("datasets", check_id(dataset_id, "dataset") + ".npz")

    def checkpoint_path(self, job_id: str, attempt: int) -> Path:
        """The latest checkpoint written by one attempt of a job. One file per attempt: an
        attempt that lost its lease can never overwrite the checkpoint of the one after it."""
        return self._inside("checkpoints", check_id(job_id, "job_id"), f"attempt-{attempt}.pt")

    def latest_checkpoint(self, job_id: str) -> Path | None:
        """The checkpoint of the highest attempt that wrote one (None if there is none)."""
        folder = self._inside("checkpoints", check_id(job_id, "job_id"))
        attempts = [
            int(path.stem.removeprefix("attempt-"))
            for path in folder.glob("attempt-*.pt")
            if path.stem.removeprefix("attempt-").isdigit()
        ]
        return self.checkpoint_path(job_id, max(attempts)) if attempts else None

    def remove_checkpoints(self, job_id: str) -> None:
        """Delete every checkpoint of a job (once its model is published)."""
        shutil.rmtree(self._inside("checkpoints", check_id(job_id, "job_id")), ignore_errors=True)

    def model_path(self, model_id: str, attempt: int) -> Path:
        """A model artefact; one file per attempt, so a fenced-off attempt never overwrites
        the published one."""
        return self._inside(
            "torch_models", check_id(model_id, "model_id"), f"attempt-{attempt}.pth"
        )

    def imported_model_path(self, model_id: str) -> Path:
        """A fresh, unique name for an imported model's file: an import that loses the race
        for its id never touches a file another model or job wrote."""
        return self._inside(
            "torch_models", check_id(model_id, "model_id"), f"imported-{uuid.uuid4().hex[:12]}.pth"
        )

    def model_file(self, filename: str) -> Path:
        """The file a ``models`` row names (``filename`` relative to ``HOME_DIR``)."""
        return self._inside(*Path(filename).parts)

    def remove_model_files(self, model_id: str) -> None:
        """Delete every file of a model."""
        shutil.rmtree(
            self._inside("torch_models", check_id(model_id, "model_id")), ignore_errors=True
        )

    def remove(self, path: Path) -> None:
        """Delete a file of the store if it exists."""
        if self.root in path.resolve().parents:
            path.unlink(missing_ok=True)
