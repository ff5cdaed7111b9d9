"""Uploads as .npz arrays: layouts, value ranges, splits, and refusal of pickled arrays."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cnnswarm.errors import InvalidInput
from cnnswarm.ml.datasets import ArrayDataset, import_upload


def write_npz(path: Path, **arrays: object) -> Path:
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
    return path


def load(path: Path, tmp_path: Path) -> ArrayDataset:
    return import_upload(path, tmp_path, name="arrays")


def images(n: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, *shape), dtype=np.uint8)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((6, 5), (1, 6, 5)), ((6, 5, 3), (3, 6, 5)), ((3, 6, 5), (3, 6, 5)), ((1, 7, 7), (1, 7, 7))],
)
def test_layouts(tmp_path: Path, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    x = images(10, shape)
    y = np.arange(10) % 2
    ds = load(write_npz(tmp_path / "d.npz", x=x, y=y, classes=np.array(["a", "b"])), tmp_path)
    assert ds.input_shape == expected
    assert len(ds.x_train) == 8 and len(ds.x_test) == 2  # stratified 20 %


def test_channels_last_pixels_are_moved_not_reinterpreted(tmp_path: Path) -> None:
    x = np.zeros((4, 6, 5, 3), dtype=np.uint8)
    for channel in range(3):
        x[..., channel] = 50 * (channel + 1)
    arrays = {"x": x, "y": np.array([0, 1, 0, 1]), "classes": np.array(["a", "b"])}
    ds = load(write_npz(tmp_path / "d.npz", **arrays), tmp_path)
    assert [int(v) for v in ds.x_train[0, :, 0, 0]] == [50, 100, 150]
    assert (ds.x_train[:, 2] == 150).all()


def test_explicit_test_split_and_float_scaling(tmp_path: Path) -> None:
    x = np.linspace(0, 1, 4 * 16).reshape(4, 4, 4).astype(np.float32)
    ds = load(
        write_npz(
            tmp_path / "d.npz",
            x=x,
            y=np.array([0, 1, 0, 1]),
            classes=np.array(["zero", "one"]),
            x_test=x[:2],
            y_test=np.array([1, 0]),
        ),
        tmp_path,
    )
    assert len(ds.x_train) == 4 and ds.y_test.tolist() == [1, 0]
    assert ds.x_train.max() == 255 and ds.x_train.min() == 0
    x255 = x * 255.0
    ds255 = load(
        write_npz(
            tmp_path / "e.npz", x=x255, y=np.array([0, 1, 0, 1]), classes=np.array(["a", "b"])
        ),
        tmp_path,
    )
    assert ds255.x_train.max() == 255


def test_saved_dataset_wire_format_is_accepted(tmp_path: Path) -> None:
    ds = load(
        write_npz(
            tmp_path / "d.npz",
            x=images(10, (4, 4)),
            y=np.arange(10) % 2,
            classes=np.array(["a", "b"]),
        ),
        tmp_path,
    )
    ds.save_npz(tmp_path / "wire.npz")
    again = load(tmp_path / "wire.npz", tmp_path)
    np.testing.assert_array_equal(again.x_train, ds.x_train)
    np.testing.assert_array_equal(again.x_test, ds.x_test)


def test_pickled_object_array_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    classes = np.array(["a", "b", {"x": 1}], dtype=object)
    path = tmp_path / "evil.npz"
    np.savez(path, x=images(4, (4, 4)), y=np.array([0, 1, 0, 1]), classes=classes)
    with pytest.raises(InvalidInput, match="object array"):
        load(path, tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": images(4, (4, 4)), "y": np.array([0, 1, 0, 1])}, "classes"),
        (
            {"x": images(4, (4, 4)), "y": np.array([0, 1, 0]), "classes": np.array(["a", "b"])},
            "integer labels",
        ),
        (
            {"x": images(4, (4, 4)), "y": np.array([0, 1, 0, 2]), "classes": np.array(["a", "b"])},
            "outside",
        ),
        (
            {
                "x": images(4, (4, 4, 4)),
                "y": np.array([0, 1, 0, 1]),
                "classes": np.array(["a", "b"]),
            },
            "1 or 3 channels",
        ),
        (
            {
                "x": np.full((4, 4, 4), 300.0),
                "y": np.array([0, 1, 0, 1]),
                "classes": np.array(["a", "b"]),
            },
            "values",
        ),
        (
            {"x": images(4, (4, 4)), "y": np.array([0, 0, 0, 0]), "classes": np.array(["a", "b"])},
            "no training images: b",
        ),
        (
            {
                "x": images(4, (4, 4)),
                "y": np.array([0, 1, 0, 1]),
                "classes": np.array(["a", "../b"]),
            },
            "invalid class names",
        ),
        (
            {
                "x": images(4, (4, 4)),
                "y": np.array([0, 1, 0, 1]),
                "classes": np.array(["a", "b"]),
                "x_test": images(1, (4, 4)),
            },
            "both x_test",
        ),
    ],
)
def test_malformed_npz(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        load(write_npz(tmp_path / "d.npz", **arrays), tmp_path)


def test_lying_npy_header_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "|u1", "fortran_order": False, "shape": (100000, 64, 64)}
    )
    path = tmp_path / "lie.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", buffer.getvalue() + b"\0" * 100)
        for key, value in {"y": np.array([0, 1]), "classes": np.array(["a", "b"])}.items():
            member = io.BytesIO()
            np.save(member, value)
            zf.writestr(f"{key}.npy", member.getvalue())
    with pytest.raises(InvalidInput, match="truncated"):
        load(path, tmp_path)
