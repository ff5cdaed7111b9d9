"""User uploads -> ``ArrayDataset``: image-folder archives (zip, tar) and ``.npz`` arrays.

Accepted (the format is found from magic bytes, never the file name):

* a zip or tar (plain, .gz, .bz2, .xz) of ``class_name/<image>`` folders, optionally under
  ``train/`` and ``test/``. A single folder wrapping everything (``mydata/cat/1.png``) is looked
  through. Images are .png .jpg .jpeg .bmp .gif .webp; other files, hidden files and
  ``__MACOSX/`` are ignored. Without ``train/``/``test/`` (or with ``train/`` alone), each class
  is split deterministically: 20 % to test (``stats.stratified_split``, seed 0).
* an ``.npz`` with ``x``, ``y``, ``classes`` (see ``upload_npz``).

Images are decoded once with the safe decoder: all grayscale -> 1 channel, otherwise RGB (alpha
dropped, palette and CMYK converted); sizes that differ are resized (bilinear) to the most common
size (ties: the larger area, then the larger height). Every unreadable image is collected and
reported by name in one ``InvalidInput``. The normalization comes from the training split.
Nothing is extracted to disk: entries are streamed from the archive (see ``archives``).

Row order: the classes are the sorted folder names (an npz keeps its ``classes``), numbered in
that order. The rows of each split are then put in ``stats.fair_order``: shuffled within each
class by a digest of each image's pixels and the classes interleaved, so the seed's
``example_idxs: [0, k)`` is a fair sample of every class, not the first classes only. The order
depends on the images alone: every import of the same images gives it, whatever their order in
the archive, and a dataset saved and uploaded again keeps it.
"""

from __future__ import annotations

import re
import zipfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from cnnswarm.errors import InvalidInput
from cnnswarm.ml.datasets.archives import Entry, UploadLimits, iter_tar, iter_zip, sniff_format
from cnnswarm.ml.datasets.base import ArrayDataset
from cnnswarm.ml.datasets.images import decode_image, image_to_array, is_grayscale
from cnnswarm.ml.datasets.stats import (
    content_key,
    fair_order,
    normalization_from,
    stratified_split,
)
from cnnswarm.ml.datasets.upload_npz import import_npz, is_npz

__all__ = ["IMAGE_EXTENSIONS", "UploadLimits", "import_upload", "validate_class_names"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_SPLITS = ("train", "test")
_JUNK_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})
_CLASS_NAME = re.compile(r"^\w[\w .,+()&'-]{0,99}$")
_MAX_LISTED = 20
DEFAULT_LIMITS = UploadLimits()


def validate_class_names(names: list[str]) -> list[str]:
    """``names`` if each is a safe, non-empty class name and none repeats; else ``InvalidInput``."""
    bad = [n for n in names if not _CLASS_NAME.match(n) or n != n.strip()]
    if bad:
        raise InvalidInput(
            f"invalid class names {bad[:_MAX_LISTED]!r}: a class name is 1-100 letters, digits, "
            "spaces or _ - . , + ( ) & ', starting with a letter, digit or _"
        )
    if len(set(names)) != len(names):
        raise InvalidInput("class names must be unique")
    if len(names) < 2:
        raise InvalidInput(f"a dataset needs at least 2 classes, got {len(names)}")
    return names


def _is_junk(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") or p in _JUNK_NAMES for p in parts)


def _is_image_file(parts: tuple[str, ...]) -> bool:
    """The archive readers' filter: only image files (not junk) are read at all."""
    return not _is_junk(parts) and parts[-1].lower().endswith(IMAGE_EXTENSIONS)


def import_upload(
    path: Path, work_dir: Path, *, name: str, limits: UploadLimits = DEFAULT_LIMITS
) -> ArrayDataset:
    """The dataset in the uploaded file ``path``; ``InvalidInput`` naming what is wrong.

    ``work_dir`` is the caller's scratch folder; entries are streamed from the archive, so the
    import writes nothing there (nor anywhere) and leaves nothing behind.
    """
    del work_dir  # kept in the signature for callers; streaming needs no scratch space
    kind = sniff_format(Path(path))
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as zf:
                if is_npz(zf):
                    return import_npz(
                        zf, name=name, limits=limits, check_classes=validate_class_names
                    )
                return _import_folders(iter_zip(zf, limits, _is_image_file), name, limits)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as exc:
            raise InvalidInput(f"not a readable zip file ({exc})") from exc
    return _import_folders(iter_tar(Path(path), kind, limits, _is_image_file), name, limits)


def _decode_all(
    entries: Iterable[Entry], limits: UploadLimits
) -> tuple[dict[tuple[str, ...], Image.Image], set[tuple[str, ...]]]:
    """Decode every image entry once -> (images by path, folder paths); bad ones all named."""
    images: dict[tuple[str, ...], Image.Image] = {}
    folders: set[tuple[str, ...]] = set()
    bad: list[str] = []
    decoded_bytes = 0
    for entry in entries:
        if _is_junk(entry.parts):
            continue
        if entry.data is None:
            folders.add(entry.parts)
            continue
        folders.update(entry.parts[:i] for i in range(1, len(entry.parts)))
        try:
            image = decode_image(entry.data, name=entry.path, max_pixels=limits.max_image_pixels)
        except InvalidInput as exc:
            bad.append(exc.message)
            continue
        decoded_bytes += image.width * image.height * (1 if is_grayscale(image) else 3)
        if decoded_bytes > limits.max_array_bytes:
            raise InvalidInput(
                f"upload decodes to more than {limits.max_array_bytes} bytes of pixels; "
                "send smaller images"
            )
        images[entry.parts] = image
    if bad:
        listed = "; ".join(bad[:_MAX_LISTED])
        more = f" (and {len(bad) - _MAX_LISTED} more)" if len(bad) > _MAX_LISTED else ""
        raise InvalidInput(
            f"{len(bad)} unreadable image(s): {listed}{more}",
            bad_files=[m.split(":", 1)[0] for m in bad[:100]],
        )
    return images, folders


def _strip_wrapper(
    images: dict[tuple[str, ...], Image.Image], folders: set[tuple[str, ...]]
) -> tuple[dict[tuple[str, ...], Image.Image], set[tuple[str, ...]]]:
    """Look through single folders that wrap the whole dataset (``mydata/cat/1.png``)."""
    while images:
        tops = {parts[0] for parts in images}
        if len(tops) != 1 or min(len(p) for p in images) < 3:
            break
        top = tops.pop()
        if top.lower() in _SPLITS:
            break
        images = {parts[1:]: image for parts, image in images.items()}
        folders = {f[1:] for f in folders if len(f) > 1 and f[0] == top}
    return images, folders


def _layout(
    images: dict[tuple[str, ...], Image.Image], folders: set[tuple[str, ...]]
) -> tuple[dict[str, dict[str, list[tuple[str, ...]]]], set[str]]:
    """Images as ``{split: {class: [paths]}}`` (split "" when undivided), and the training class
    folders (an empty one is an error later, not silently dropped)."""
    if not images:
        raise InvalidInput(
            f"upload holds no images ({', '.join(IMAGE_EXTENSIONS)}) in class_name/ folders"
        )
    tops = {parts[0].lower() for parts in images}
    divided = bool(tops & set(_SPLITS))
    if divided and not tops <= set(_SPLITS):
        raise InvalidInput(
            "upload mixes train/ or test/ with other top-level folders: "
            f"{sorted(tops - set(_SPLITS))[:_MAX_LISTED]}"
        )
    depth = 3 if divided else 2
    groups: dict[str, dict[str, list[tuple[str, ...]]]] = {}
    for parts in sorted(images):
        if len(parts) != depth:
            expected = "train|test/class_name/image" if divided else "class_name/image"
            raise InvalidInput(f"{'/'.join(parts)}: images must be at {expected}")
        split = parts[0].lower() if divided else ""
        groups.setdefault(split, {}).setdefault(parts[depth - 2], []).append(parts)
    class_folders = {
        f[depth - 2]
        for f in folders
        if len(f) == depth - 1 and (not divided or f[0].lower() == "train")
    }
    return groups, class_folders


def _import_folders(entries: Iterable[Entry], name: str, limits: UploadLimits) -> ArrayDataset:
    """Decode (as entries stream in), lay out, split and convert the images into a dataset."""
    images, folders = _strip_wrapper(*_decode_all(entries, limits))
    groups, class_folders = _layout(images, folders)
    if "test" in groups and "train" not in groups:
        raise InvalidInput("upload has test/ but no train/ folder")
    train_groups = groups.get("train", groups.get("", {}))
    classes = sorted(set(train_groups) | class_folders)
    if len(classes) > limits.max_classes:
        raise InvalidInput(
            f"upload has {len(classes)} classes, over the limit {limits.max_classes}"
        )
    validate_class_names(classes)
    empty = [c for c in classes if c not in train_groups]
    if empty:
        raise InvalidInput(f"class folders with no (training) images: {', '.join(empty)}")
    unknown = sorted(set(groups.get("test", {})) - set(classes))
    if unknown:
        raise InvalidInput(f"test/ has classes that train/ lacks: {', '.join(unknown)}")
    label_of = {c: i for i, c in enumerate(classes)}

    def flatten(
        group: dict[str, list[tuple[str, ...]]],
    ) -> tuple[list[tuple[str, ...]], np.ndarray]:
        paths = [p for c in classes for p in group.get(c, [])]
        return paths, np.array([label_of[p[-2]] for p in paths], dtype=np.int64)

    train_paths, y_train = flatten(train_groups)
    if "test" in groups:
        test_paths, y_test = flatten(groups["test"])
    else:
        train_idx, test_idx = stratified_split(y_train)
        test_paths = [train_paths[i] for i in test_idx]
        train_paths = [train_paths[i] for i in train_idx]
        y_train, y_test = y_train[train_idx], y_train[test_idx]

    used = [images[p] for p in (*train_paths, *test_paths)]
    channels = 1 if all(is_grayscale(im) for im in used) else 3
    sizes = Counter(im.size for im in used)
    width, height = max(sizes, key=lambda s: (sizes[s], s[0] * s[1], s[1], s[0]))
    if (len(used) * channels * height * width) > limits.max_array_bytes:
        raise InvalidInput(f"the dataset would take more than {limits.max_array_bytes} bytes")
    del used
    rows = {  # each image converted once, its decoded form dropped as it goes
        p: image_to_array(images.pop(p), channels=channels, height=height, width=width)
        for p in (*train_paths, *test_paths)
    }

    def to_array(paths: list[tuple[str, ...]], labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Rows are grouped by class so far; a slice [0, k) must sample every class.
        order = fair_order(labels, [content_key(rows[p].tobytes()) for p in paths])
        out = np.empty((len(paths), channels, height, width), dtype=np.uint8)
        for i, j in enumerate(order):
            out[i] = rows.pop(paths[j])
        return out, labels[order]

    x_train, y_train = to_array(train_paths, y_train)
    x_test, y_test = to_array(test_paths, y_test)
    return ArrayDataset(
        name=name,
        classes=classes,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        normalization=normalization_from(x_train),
    )
