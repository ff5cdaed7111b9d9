"""Write a small CIFAR-10 archive in exactly the official python format, for tests of any tier.

The official batches were written by Python 2's cPickle (protocol 2): dicts whose keys and
strings are Python 2 ``str`` (``SHORT_BINSTRING``/``BINSTRING`` opcodes, read back as bytes with
``encoding="bytes"``), ``b'data'`` a uint8 ``(N, 3072)`` numpy array rebuilt through
``numpy.core.multiarray._reconstruct``, ``b'labels'`` a list of ints. ``write_cifar10_archive``
reproduces that byte for byte in kind, inside ``cifar-10-batches-py/`` of a ``.tar.gz``.

Import it by path (tests have no packages): ``load_fixture_module()`` in a conftest, or
``importlib.util.spec_from_file_location``.
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

LABEL_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined,misc]
    """Protocol-2 pickler that writes bytes and str as Python 2 ``str`` and numpy's modules
    under their Python 2 names, as cPickle did for the official archive."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes | str) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = getattr(obj, "__module__", None)
        qualname = name or obj.__name__
        if module in ("numpy._core.multiarray", "numpy.core.multiarray"):
            module = "numpy.core.multiarray"
        if module is None:
            module = pickle.whichmodule(obj, qualname)
        self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())
        self.memoize(obj)

    dispatch[type] = save_global


def py2_pickle(obj: Any) -> bytes:
    """``obj`` pickled as Python 2's cPickle protocol 2 would have written it."""
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def make_batch(
    n: int, rng: np.random.Generator, batch_label: str
) -> tuple[dict[bytes, Any], np.ndarray]:
    """A batch dict with bytes keys and its images as (n, 3, 32, 32) for checking."""
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = np.arange(n) % 10
    return batch_of(data.reshape(n, 3, 32, 32), labels, batch_label), data.reshape(n, 3, 32, 32)


def batch_of(x: np.ndarray, labels: np.ndarray, batch_label: str) -> dict[bytes, Any]:
    """The official batch dict for uint8 images ``(n, 3, 32, 32)`` and their labels."""
    n = len(x)
    return {
        b"batch_label": batch_label.encode(),
        b"labels": [int(v) for v in labels],
        b"data": np.ascontiguousarray(x.reshape(n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(n)],
    }


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(payload))


def write_cifar10_archive(
    path: Path,
    *,
    n_per_batch: int = 20,
    n_test: int = 20,
    seed: int = 0,
    replace: dict[str, bytes] | None = None,
) -> dict[str, Any]:
    """Write ``cifar-10-python.tar.gz`` at ``path``; returns the arrays it holds.

    ``replace`` maps a member file name (e.g. ``"data_batch_3"``) to raw bytes written instead
    (for malformed or malicious archives). Returns ``x_train``, ``y_train``, ``x_test``,
    ``y_test`` (uint8 (N, 3, 32, 32) / int64) and ``classes``.
    """
    rng = np.random.default_rng(seed)
    replace = replace or {}
    xs, ys = [], []
    members: dict[str, bytes] = {}
    for i, name in enumerate(TRAIN_BATCHES, start=1):
        batch, x = make_batch(n_per_batch, rng, f"training batch {i} of 5")
        members[name] = py2_pickle(batch)
        xs.append(x)
        ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
    test, x_test = make_batch(n_test, rng, "testing batch 1 of 1")
    members["test_batch"] = py2_pickle(test)
    members["batches.meta"] = py2_pickle(
        {
            b"num_cases_per_batch": n_per_batch,
            b"label_names": [n.encode() for n in LABEL_NAMES],
            b"num_vis": 3072,
        }
    )
    members.update(replace)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name in ["batches.meta", *TRAIN_BATCHES, "test_batch", "readme.html"]:
            payload = members.get(name, b"<html></html>" if name == "readme.html" else None)
            if payload is not None:
                _add(tar, f"cifar-10-batches-py/{name}", payload)
    return {
        "x_train": np.concatenate(xs),
        "y_train": np.concatenate(ys),
        "x_test": x_test,
        "y_test": np.asarray(test[b"labels"], dtype=np.int64),
        "classes": LABEL_NAMES,
    }


def write_cifar10_arrays(
    path: Path,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    label_names: list[str],
) -> None:
    """Write the given images (uint8 ``(N, 3, 32, 32)``) as an official-format archive at
    ``path``: the training images split over the five batches in order, then the test batch."""
    members: dict[str, bytes] = {}
    for i, rows in enumerate(np.array_split(np.arange(len(x_train)), 5), start=1):
        batch = batch_of(x_train[rows], y_train[rows], f"training batch {i} of 5")
        members[f"data_batch_{i}"] = py2_pickle(batch)
    members["test_batch"] = py2_pickle(batch_of(x_test, y_test, "testing batch 1 of 1"))
    members["batches.meta"] = py2_pickle(
        {
            b"num_cases_per_batch": int(np.ceil(len(x_train) / 5)),
            b"label_names": [n.encode() for n in label_names],
            b"num_vis": 3072,
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name in ["batches.meta", *TRAIN_BATCHES, "test_batch"]:
            _add(tar, f"cifar-10-batches-py/{name}", members[name])
