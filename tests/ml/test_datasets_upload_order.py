"""Uploads are stored in a fair order: a slice ``[0, k)`` samples every class, label k still
holds class k's images, and the order depends only on the images."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnswarm.ml.datasets import ArrayDataset, import_upload
from cnnswarm.ml.datasets.stats import fair_order

CLASSES = ["ant", "bee", "cow"]  # sorted: labels 0, 1, 2
COUNTS = {"ant": 15, "bee": 10, "cow": 5}  # unequal, as real uploads are


def pixels(label: int, number: int) -> np.ndarray:
    """A 5x7 RGB image whose red says its class and whose green says which one it is."""
    image = np.zeros((5, 7, 3), dtype=np.uint8)
    image[..., 0] = 80 * label
    image[..., 1] = 10 * number
    image[0, 0, 2] = 255  # asymmetric, so a flipped or transposed image would show
    return image


def identity(x: np.ndarray) -> list[tuple[int, int]]:
    """(class, number) of each (N, 3, 5, 7) row, read back from its pixels."""
    return [(int(row[0, 2, 3]) // 80, int(row[1, 2, 3]) // 10) for row in x]


def every_image() -> set[tuple[int, int]]:
    return {(k, i) for k, name in enumerate(CLASSES) for i in range(COUNTS[name])}


def folder_zip(path: Path, *, reverse: bool = False) -> Path:
    entries = [
        (f"{name}/{i:02d}.png", pixels(k, i))
        for k, name in enumerate(CLASSES)
        for i in range(COUNTS[name])
    ]
    with zipfile.ZipFile(path, "w") as archive:
        for entry_name, image in reversed(entries) if reverse else entries:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            archive.writestr(entry_name, buffer.getvalue())
    return path


def grouped_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Every image as (N, C, H, W) uint8 with its labels, grouped by class."""
    images = [pixels(k, i) for k, name in enumerate(CLASSES) for i in range(COUNTS[name])]
    labels = [k for k, name in enumerate(CLASSES) for _ in range(COUNTS[name])]
    return np.stack(images).transpose(0, 3, 1, 2).copy(), np.array(labels)


def npz_upload(path: Path, *, explicit_test: bool) -> Path:
    x, y = grouped_arrays()
    arrays = {"x": x, "y": y, "classes": np.array(CLASSES)}
    if explicit_test:
        test = np.arange(len(x)) % 5 == 0
        arrays = {**arrays, "x": x[~test], "y": y[~test], "x_test": x[test], "y_test": y[test]}
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
    return path


def load(path: Path, tmp_path: Path) -> ArrayDataset:
    return import_upload(path, tmp_path, name="animals")


def assert_fair(dataset: ArrayDataset) -> None:
    """Labels match their images, no image lost or doubled, and every prefix is fair."""
    assert dataset.classes == CLASSES
    seen: list[tuple[int, int]] = []
    for x, y in ((dataset.x_train, dataset.y_train), (dataset.x_test, dataset.y_test)):
        ids = identity(x)
        assert [k for k, _ in ids] == [int(v) for v in y]  # label k holds class k's images
        assert all(int(row[2, 0, 0]) == 255 for row in x)  # top-left stays top-left
        seen += ids
        shares = np.bincount(y, minlength=3) / len(y)
        for k in range(1, len(y) + 1):
            counts = np.bincount(y[:k], minlength=3)
            assert np.abs(counts - k * shares).max() <= 1.5, (k, counts, k * shares)
    assert sorted(seen) == sorted(every_image())
    assert set(dataset.subset([0, 5]).y_train.tolist()) == {0, 1, 2}
    assert set(dataset.y_test[:4].tolist()) == {0, 1, 2}


def test_folder_upload_is_stored_in_a_fair_order(tmp_path: Path) -> None:
    dataset = load(folder_zip(tmp_path / "animals.zip"), tmp_path)
    assert_fair(dataset)
    # The same images in another archive order give the same dataset.
    again = load(folder_zip(tmp_path / "reversed.zip", reverse=True), tmp_path)
    np.testing.assert_array_equal(again.x_train, dataset.x_train)
    np.testing.assert_array_equal(again.y_test, dataset.y_test)


@pytest.mark.parametrize("explicit_test", [False, True])
def test_npz_upload_is_stored_in_a_fair_order(tmp_path: Path, explicit_test: bool) -> None:
    dataset = load(npz_upload(tmp_path / "animals.npz", explicit_test=explicit_test), tmp_path)
    assert_fair(dataset)


@pytest.mark.parametrize("source", ["folders", "npz"])
def test_a_saved_dataset_uploaded_again_keeps_its_order(tmp_path: Path, source: str) -> None:
    if source == "folders":
        upload = folder_zip(tmp_path / "animals.zip")
    else:
        upload = npz_upload(tmp_path / "animals.npz", explicit_test=True)
    dataset = load(upload, tmp_path)
    dataset.save_npz(tmp_path / "saved.npz")
    again = load(tmp_path / "saved.npz", tmp_path)
    for split in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(again, split), getattr(dataset, split))


def test_fair_order_spreads_each_class_in_proportion() -> None:
    labels = np.repeat([0, 1, 2, 3], [40, 20, 10, 1])
    keys = np.random.default_rng(0).integers(0, 2**63, size=len(labels))
    order = fair_order(labels, keys)
    assert sorted(order.tolist()) == list(range(len(labels)))
    ordered = labels[order]
    shares = np.bincount(labels) / len(labels)
    for k in range(1, len(labels) + 1):
        assert np.abs(np.bincount(ordered[:k], minlength=4) - k * shares).max() <= 1.5
    # the same keys in another row order give the same rows in the same order
    shuffled = np.random.default_rng(1).permutation(len(labels))
    again = shuffled[fair_order(labels[shuffled], keys[shuffled])]
    assert again.tolist() == order.tolist()
