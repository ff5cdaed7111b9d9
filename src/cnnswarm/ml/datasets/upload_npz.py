"""An uploaded ``.npz`` of arrays -> ``ArrayDataset``, read without ever unpickling.

Keys: ``x`` (or ``x_train``) images, ``y`` (or ``y_train``) integer labels, ``classes`` strings,
and optionally ``x_test`` / ``y_test``; without a test split, the stratified 20 % split of
``stats.stratified_split`` is used. Images may be ``(N, H, W)``, ``(N, H, W, C)`` or
``(N, C, H, W)`` with C = 1 or 3: channels-last when the last axis is 1 or 3, else
channels-first when the second is. Values: uint8, integers in 0..255, or floats -- floats whose
values all lie in [0, 1] are scaled by 255, others must lie in [0, 255].

The rows of each split are reordered as ``uploads`` says (``stats.fair_order``), so a prefix of
either split samples every class; ``classes`` and the label numbers are kept.

Each member's ``.npy`` header is read first: object (pickled) arrays and other dtypes are refused,
and the declared size must fit both the member and the limits before any data is read.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Callable

import numpy as np

from cnnswarm.errors import InvalidInput
from cnnswarm.ml.datasets.archives import RATIO_FLOOR_BYTES, UploadLimits
from cnnswarm.ml.datasets.base import ArrayDataset
from cnnswarm.ml.datasets.stats import (
    content_key,
    fair_order,
    normalization_from,
    stratified_split,
)

_ALLOWED_KINDS = "biufUS"
_ALIASES = {"x": ("x", "x_train"), "y": ("y", "y_train")}


def is_npz(zf: zipfile.ZipFile) -> bool:
    """True when the zip is an array archive (has ``x.npy`` / ``x_train.npy`` at its root)."""
    names = set(zf.namelist())
    return bool({"x.npy", "x_train.npy"} & names)


def _read_npy(zf: zipfile.ZipFile, key: str, limits: UploadLimits) -> np.ndarray:
    """The array stored as ``<key>.npy``, header checked before the data is read."""
    info = zf.getinfo(f"{key}.npy")
    if info.file_size > limits.max_total_bytes:
        raise InvalidInput(f"npz array {key!r} is over the limit of {limits.max_total_bytes} bytes")
    if info.file_size > RATIO_FLOOR_BYTES and info.file_size > limits.max_ratio * max(
        info.compress_size, 1
    ):
        raise InvalidInput(f"npz array {key!r} is compressed beyond the allowed ratio (zip bomb?)")
    try:
        with zf.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            read_header: Callable[..., tuple[tuple[int, ...], bool, np.dtype]] = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran_order, dtype = read_header(fh, max_header_size=10_000)
            if dtype.hasobject:
                raise InvalidInput(
                    f"npz array {key!r} is an object array (pickled data); only plain numeric "
                    "or string arrays are accepted"
                )
            if dtype.kind not in _ALLOWED_KINDS or dtype.fields is not None:
                raise InvalidInput(f"npz array {key!r} has unsupported dtype {dtype}")
            count = int(np.prod(shape, dtype=np.int64))
            nbytes = count * dtype.itemsize
            if nbytes > info.file_size:
                raise InvalidInput(f"npz array {key!r} is truncated: header declares {shape}")
            data = fh.read(nbytes)
    except InvalidInput:
        raise
    except (ValueError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise InvalidInput(f"npz array {key!r} is not a readable .npy ({exc})") from exc
    if len(data) != nbytes:
        raise InvalidInput(f"npz array {key!r} is truncated")
    array = np.frombuffer(data, dtype=dtype, count=count)
    return array.reshape(shape, order="F" if fortran_order else "C")


def _find(zf: zipfile.ZipFile, key: str) -> str | None:
    """The stored name for ``key`` (or one of its aliases), or None."""
    names = set(zf.namelist())
    for candidate in _ALIASES.get(key, (key,)):
        if f"{candidate}.npy" in names:
            return candidate
    return None


def _to_nchw(x: np.ndarray, key: str) -> np.ndarray:
    """Images in any accepted layout -> ``(N, C, H, W)`` (values not yet converted)."""
    if x.ndim == 3:
        return x[:, np.newaxis, :, :]
    if x.ndim != 4:
        raise InvalidInput(f"{key} must be (N, H, W), (N, H, W, C) or (N, C, H, W), got {x.shape}")
    if x.shape[3] in (1, 3):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if x.shape[1] in (1, 3):
        return x
    raise InvalidInput(f"{key} must have 1 or 3 channels (first or last axis), got {x.shape}")


def _to_uint8(x: np.ndarray, key: str, *, unit_scale: bool) -> np.ndarray:
    """Pixel values -> uint8 0..255 (``unit_scale``: floats in [0, 1] are multiplied by 255)."""
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind not in "iuf":
        raise InvalidInput(f"{key} must hold numbers, got dtype {x.dtype}")
    values = x.astype(np.float64)
    if x.dtype.kind == "f" and unit_scale:
        values = values * 255.0
    if len(values) and (not np.isfinite(values).all() or values.min() < 0 or values.max() > 255):
        raise InvalidInput(f"{key} values must lie in [0, 1] (floats) or [0, 255]")
    return np.rint(values).astype(np.uint8)


def _labels(y: np.ndarray, key: str, n: int, num_classes: int) -> np.ndarray:
    if y.ndim != 1 or len(y) != n or y.dtype.kind not in "iu":
        raise InvalidInput(f"{key} must be {n} integer labels, got {y.dtype} {y.shape}")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise InvalidInput(f"{key} has labels outside 0..{num_classes - 1}")
    return y.astype(np.int64)


def _row_keys(x: np.ndarray) -> np.ndarray:
    """``content_key`` of each image of ``x`` (uint8 ``(N, C, H, W)``)."""
    return np.array([content_key(row.tobytes()) for row in x], dtype=np.uint64)


def import_npz(
    zf: zipfile.ZipFile,
    *,
    name: str,
    limits: UploadLimits,
    check_classes: Callable[[list[str]], list[str]],
) -> ArrayDataset:
    """The dataset in an open ``.npz``; ``check_classes`` validates the class names."""
    keys = {k: _find(zf, k) for k in ("x", "y", "classes", "x_test", "y_test")}
    for required in ("x", "y", "classes"):
        if keys[required] is None:
            raise InvalidInput(f"npz upload must contain {required!r} (x, y and classes)")
    if (keys["x_test"] is None) != (keys["y_test"] is None):
        raise InvalidInput("npz upload must contain both x_test and y_test, or neither")
    raw_classes = _read_npy(zf, str(keys["classes"]), limits)
    if raw_classes.ndim != 1 or raw_classes.dtype.kind not in "US":
        raise InvalidInput("classes must be a 1-D array of strings")
    classes = check_classes(
        [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in raw_classes]
    )
    x = _to_nchw(_read_npy(zf, str(keys["x"]), limits), "x")
    y = _labels(_read_npy(zf, str(keys["y"]), limits), "y", len(x), len(classes))
    x_test, y_test = x[:0], y[:0]
    if keys["x_test"] is not None:
        x_test = _to_nchw(_read_npy(zf, str(keys["x_test"]), limits), "x_test")
        y_test = _labels(
            _read_npy(zf, str(keys["y_test"]), limits), "y_test", len(x_test), len(classes)
        )
        if x_test.shape[1:] != x.shape[1:]:
            raise InvalidInput(f"x_test images {x_test.shape[1:]} differ from x {x.shape[1:]}")
    floats = [a for a in (x, x_test) if a.dtype.kind == "f" and len(a)]
    unit_scale = bool(floats) and all(float(a.max()) <= 1.0 for a in floats)
    x = _to_uint8(x, "x", unit_scale=unit_scale)
    x_test = _to_uint8(x_test, "x_test", unit_scale=unit_scale)
    # Rows ordered by their uint8 pixels, so a dataset saved and uploaded again keeps its order.
    keys_x = _row_keys(x)
    if keys["x_test"] is not None:
        train_idx = fair_order(y, keys_x)
        test_idx = fair_order(y_test, _row_keys(x_test))
    else:
        train_idx, test_idx = stratified_split(y)
        train_idx = train_idx[fair_order(y[train_idx], keys_x[train_idx])]
        test_idx = test_idx[fair_order(y[test_idx], keys_x[test_idx])]
        x_test, y_test = x, y
    x, x_test, y, y_test = x[train_idx], x_test[test_idx], y[train_idx], y_test[test_idx]
    if len(x) == 0:
        raise InvalidInput("npz upload has no training images")
    missing = [classes[k] for k in range(len(classes)) if not (y == k).any()]
    if missing:
        raise InvalidInput(f"classes with no training images: {', '.join(missing)}")
    return ArrayDataset(
        name=name,
        classes=classes,
        x_train=np.ascontiguousarray(x),
        y_train=y,
        x_test=np.ascontiguousarray(x_test),
        y_test=y_test,
        normalization=normalization_from(x),
    )
