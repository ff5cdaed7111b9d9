"""Datasets as the controller serves them: built-ins and uploads behind one lookup.

Every dataset a job can name resolves here to an ``ArrayDataset`` cached as ``.npz`` under
``HOME_DIR/datasets/`` (built-ins are materialised on first use), which is also what trainers
download. Uploads are decoded once, at upload time; a failed upload leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

from cnnswarm.config import Settings
from cnnswarm.controller.event_loop import off_the_loop
from cnnswarm.errors import InvalidInput, NotFound
from cnnswarm.ml.datasets import ArrayDataset
from cnnswarm.ml.datasets.registry import BUILTIN_DATASETS, load_builtin
from cnnswarm.ml.datasets.uploads import UploadLimits, import_upload
from cnnswarm.store import Stores
from cnnswarm.store.artifacts import check_id
from cnnswarm.store.catalog import dataset_to_json

LOADED_DATASETS_KEPT = 2

BUILTIN_DESCRIPTIONS = {
    "cifar10": "CIFAR-10, the official python archive under HOME_DIR/torch_data/",
    "digits": "scikit-learn's bundled 8x8 handwritten digits",
    "synthetic": "seeded generated images with learnable class structure (3x32x32, 10 classes)",
}


def canonical_builtin(name: str) -> str | None:
    """The built-in dataset's canonical name for ``name`` (case-insensitive), or None."""
    key = name.strip().lower()
    return key if key in BUILTIN_DATASETS else None


class DatasetService:
    """Looks datasets up, materialises their arrays and takes uploads."""

    def __init__(self, settings: Settings, stores: Stores) -> None:
        self.settings = settings
        self.stores = stores
        self._lock = threading.Lock()
        self._info: dict[str, dict[str, Any]] = {}
        self._loaded: OrderedDict[str, tuple[str, ArrayDataset]] = OrderedDict()

    def resolve_id(self, name: str) -> str:
        """The dataset id a request's ``dataset`` names (built-in name or upload id)."""
        if not isinstance(name, str) or not name:
            raise InvalidInput("dataset must be a non-empty string", field="dataset")
        builtin = canonical_builtin(name)
        if builtin is not None:
            return builtin
        check_id(name, "dataset")
        self.stores.catalog.get_dataset(name)  # NotFound when absent
        return name

    def arrays_path(self, dataset_id: str) -> Path:
        """The ``.npz`` of the dataset's arrays, materialising a built-in on first use."""
        dataset_id = self.resolve_id(dataset_id)
        path = self.stores.artifacts.dataset_path(dataset_id)
        if path.exists():
            return path
        if canonical_builtin(dataset_id) is None:
            raise NotFound(f"the files of dataset {dataset_id!r} are missing", field="dataset")
        with self._lock:
            if not path.exists():
                off_the_loop(self._materialise_builtin, dataset_id, path)
        return path

    def _materialise_builtin(self, dataset_id: str, path: Path) -> None:
        dataset = load_builtin(
            dataset_id, self.stores.artifacts.root, allow_downloads=self.settings.allow_downloads
        )
        dataset.save_npz(path)

    def etag(self, dataset_id: str) -> str:
        """A validator for the cached arrays (changes when the file is rewritten)."""
        stat = self.arrays_path(dataset_id).stat()
        return hashlib.sha1(f"{dataset_id}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()

    def load(self, dataset_id: str) -> ArrayDataset:
        """The dataset's arrays (the last few are kept in memory while their file is
        unchanged)."""
        dataset_id = self.resolve_id(dataset_id)
        etag = self.etag(dataset_id)
        with self._lock:
            cached = self._loaded.get(dataset_id)
            if cached is not None and cached[0] == etag:
                self._loaded.move_to_end(dataset_id)
                return cached[1]
        dataset = off_the_loop(ArrayDataset.load_npz, self.arrays_path(dataset_id))
        with self._lock:
            self._loaded[dataset_id] = (etag, dataset)
            while len(self._loaded) > LOADED_DATASETS_KEPT:
                self._loaded.popitem(last=False)
        return dataset

    def info(self, dataset_id: str) -> dict[str, Any]:
        """The API's view of a dataset (built-in or upload); built-ins are described after
        their first load."""
        dataset_id = self.resolve_id(dataset_id)
        if canonical_builtin(dataset_id) is None:
            return dataset_to_json(self.stores.catalog.get_dataset(dataset_id))
        with self._lock:
            cached = self._info.get(dataset_id)
        if cached is None:
            cached = {
                **self.load(dataset_id).info(),
                "id": dataset_id,
                "name": dataset_id,
                "builtin": True,
                "description": BUILTIN_DESCRIPTIONS[dataset_id],
            }
            with self._lock:
                self._info[dataset_id] = cached
        return cached

    def list(self) -> list[dict[str, Any]]:
        """Built-ins first (described without loading them), then uploads."""
        builtins: list[dict[str, Any]] = []
        for name in BUILTIN_DATASETS:
            with self._lock:
                known = self._info.get(name)
            builtins.append(
                known
                or {
                    "id": name,
                    "name": name,
                    "builtin": True,
                    "description": BUILTIN_DESCRIPTIONS[name],
                }
            )
        return builtins + [dataset_to_json(r) for r in self.stores.catalog.list_datasets()]

    def add_upload(self, upload: Path, name: str | None) -> dict[str, Any]:
        """Decode an uploaded archive into arrays and register it under ``name`` (checked by
        ``api_schemas.DatasetUploadForm``; None: its id); returns its record."""
        dataset_id = "ds-" + uuid.uuid4().hex[:12]
        display = name or dataset_id
        path = self.stores.artifacts.dataset_path(dataset_id)
        info = off_the_loop(self._decode_upload, upload, display, path)
        try:
            row = self.stores.catalog.add_dataset(
                {
                    "id": dataset_id,
                    "name": display,
                    "classes": info["classes"],
                    "num_train": info["num_train"],
                    "num_test": info["num_test"],
                    "shape": info["shape"],
                    "filename": path.name,
                }
            )
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return dataset_to_json(row)

    def _decode_upload(self, upload: Path, name: str, path: Path) -> dict[str, Any]:
        """Decode the archive into arrays saved at ``path``; their ``info()``. Entries are
        streamed and decoded in memory: nothing of the archive lands on disk."""
        dataset = import_upload(upload, self.stores.artifacts.tmp, name=name, limits=UploadLimits())
        dataset.save_npz(path)
        return dataset.info()

    def delete(self, dataset_id: str) -> dict[str, Any]:
        """Delete an uploaded dataset (built-ins cannot be deleted)."""
        if canonical_builtin(dataset_id) is not None:
            raise InvalidInput(f"{dataset_id!r} is built in and cannot be deleted", field="dataset")
        check_id(dataset_id, "dataset")
        row = self.stores.catalog.delete_dataset(dataset_id)
        self.stores.artifacts.remove(self.stores.artifacts.dataset_path(dataset_id))
        return dataset_to_json(row)
