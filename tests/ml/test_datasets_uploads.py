"""Uploads: image-folder zips and tars, and .npz arrays -- ordinary, malformed and malicious."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnswarm.errors import InvalidInput
from cnnswarm.ml.datasets import UploadLimits, import_upload

RNG = np.random.default_rng(0)


def encode_image(array: np.ndarray, fmt: str = "PNG") -> bytes:
    """An HxW or HxWxC uint8 array encoded by Pillow."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def rgb(h: int = 8, w: int = 8, value: int | None = None) -> np.ndarray:
    if value is not None:
        return np.full((h, w, 3), value, dtype=np.uint8)
    return RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def gray(h: int = 8, w: int = 8, value: int = 100) -> np.ndarray:
    return np.full((h, w), value, dtype=np.uint8)


def write_zip(path: Path, files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for d in dirs:
            zf.writestr(zipfile.ZipInfo(d.rstrip("/") + "/"), b"")
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def write_tar(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def class_files(
    n_per_class: int = 5, classes: tuple[str, ...] = ("cat", "dog"), prefix: str = ""
) -> dict[str, bytes]:
    files = {}
    for k, cls in enumerate(classes):
        for i in range(n_per_class):
            fmt, ext = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
            files[f"{prefix}{cls}/{i:03d}.{ext}"] = encode_image(rgb(value=40 + 100 * k), fmt)
    return files


def load(path: Path, tmp_path: Path, **kw: object) -> object:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return import_upload(path, work, name="up", **kw)  # type: ignore[arg-type]


# --- ordinary uploads -------------------------------------------------------------------


def test_zip_of_class_folders_png_and_jpeg(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "upload.bin", class_files(5))
    work = tmp_path / "work"
    work.mkdir()
    ds = import_upload(path, work, name="pets")
    assert ds.name == "pets" and ds.classes == ["cat", "dog"]
    assert ds.input_shape == (3, 8, 8)
    # 5 per class -> 1 test + 4 train each (20 %, stratified)
    assert len(ds.x_train) == 8 and len(ds.x_test) == 2
    assert sorted(ds.y_test.tolist()) == [0, 1]
    # the colour survives (JPEG is lossy: approximately)
    cat_pixels = ds.x_train[ds.y_train == 0]
    assert abs(float(cat_pixels.mean()) - 40) < 4
    assert list(work.iterdir()) == []  # nothing extracted or left behind
    assert len(ds.normalization.mean) == 3


def test_split_is_deterministic(tmp_path: Path) -> None:
    files = {f"c{k}/{i}.png": encode_image(rgb()) for k in range(3) for i in range(10)}
    a = load(write_zip(tmp_path / "a.zip", files), tmp_path)
    reordered = dict(reversed(list(files.items())))
    b = load(write_tar(tmp_path / "b.tar", reordered, mode="w"), tmp_path)
    np.testing.assert_array_equal(a.x_test, b.x_test)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(a.y_train, b.y_train)  # type: ignore[attr-defined]
    assert len(a.x_test) == 6  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_tar_variants_with_train_and_test(tmp_path: Path, mode: str) -> None:
    files = {**class_files(3, prefix="train/"), **class_files(2, prefix="test/")}
    # the file name lies on purpose: the format comes from the magic bytes
    ds = load(write_tar(tmp_path / "upload.zip", files, mode), tmp_path)
    assert len(ds.x_train) == 6 and len(ds.x_test) == 4  # type: ignore[attr-defined]


def test_wrapper_folder_junk_and_other_files_are_ignored(tmp_path: Path) -> None:
    files = {f"mydata/{k}": v for k, v in class_files(3).items()}
    files["mydata/README.txt"] = b"hello"
    files["__MACOSX/mydata/cat/._000.png"] = b"junk"
    files["mydata/cat/.DS_Store"] = b"junk"
    ds = load(write_zip(tmp_path / "u.zip", files), tmp_path)
    assert ds.classes == ["cat", "dog"]  # type: ignore[attr-defined]


def test_all_grayscale_gives_one_channel_mixed_gives_rgb(tmp_path: Path) -> None:
    files = {
        f"{c}/{i}.png": encode_image(gray(value=30 + 90 * k))
        for k, c in enumerate("ab")
        for i in range(3)
    }
    ds = load(write_zip(tmp_path / "g.zip", files), tmp_path)
    assert ds.input_shape == (1, 8, 8)  # type: ignore[attr-defined]
    assert ds.x_train[ds.y_train == 1].min() == 120  # type: ignore[attr-defined]
    rgba = np.dstack([rgb(value=200), np.full((8, 8), 10, np.uint8)])
    files["b/rgba.png"] = encode_image(rgba)
    palette = encode_image(gray(value=5), "GIF")
    files["a/pal.gif"] = palette
    ds = load(write_zip(tmp_path / "m.zip", files), tmp_path)
    assert ds.input_shape == (3, 8, 8)  # type: ignore[attr-defined]
    assert len(ds.normalization.mean) == 3  # type: ignore[attr-defined]


def test_mixed_sizes_resized_to_most_common(tmp_path: Path) -> None:
    files = {f"a/{i}.png": encode_image(rgb(8, 6)) for i in range(3)}
    files.update({f"b/{i}.png": encode_image(rgb(8, 6)) for i in range(2)})
    files["b/big.png"] = encode_image(rgb(20, 30))
    ds = load(write_zip(tmp_path / "s.zip", files), tmp_path)
    assert ds.input_shape == (3, 8, 6)  # type: ignore[attr-defined]
    assert len(ds.x_train) + len(ds.x_test) == 6  # type: ignore[attr-defined]


def test_example_idxs_subset_of_upload(tmp_path: Path) -> None:
    ds = load(write_zip(tmp_path / "u.zip", class_files(5)), tmp_path)
    sub = ds.subset([2, 5])  # type: ignore[attr-defined]
    np.testing.assert_array_equal(sub.x_train, ds.x_train[2:5])  # type: ignore[attr-defined]
    with pytest.raises(InvalidInput, match="example_idxs"):
        ds.subset([5, 2])  # type: ignore[attr-defined]


# --- malformed --------------------------------------------------------------------------


def test_unreadable_images_are_all_named(tmp_path: Path) -> None:
    files = class_files(3)
    good_png = files["cat/000.png"]
    files["cat/truncated.png"] = good_png[: len(good_png) // 2]
    files["dog/not_an_image.png"] = b"just some text, not a PNG"
    with pytest.raises(InvalidInput) as info:
        load(write_zip(tmp_path / "u.zip", files), tmp_path)
    assert "2 unreadable" in info.value.message
    assert "cat/truncated.png" in info.value.message
    assert "dog/not_an_image.png" in info.value.message
    assert set(info.value.details["bad_files"]) == {"cat/truncated.png", "dog/not_an_image.png"}


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [10_000, 20_000])  # Pillow warns at ~89 Mpx, errors at 2x
def test_decompression_bomb_png_refused(tmp_path: Path, side: int) -> None:
    files = class_files(2)
    files["cat/bomb.png"] = _png_header_only(side, side)
    with pytest.raises(InvalidInput, match=r"cat/bomb\.png.*decompression bomb"):
        load(
            write_zip(tmp_path / "u.zip", files),
            tmp_path,
            limits=UploadLimits(max_image_pixels=10**9),
        )


def test_structure_errors(tmp_path: Path) -> None:
    cases: list[tuple[dict[str, bytes], tuple[str, ...], str]] = [
        ({"a.png": encode_image(rgb())}, (), "class_name/image"),
        (
            {"a/x/1.png": encode_image(rgb()), "b/y/1.png": encode_image(rgb())},
            (),
            "class_name/image",
        ),
        (class_files(2, classes=("only",)), (), "at least 2 classes"),
        (class_files(2), ("empty/",), "no \\(training\\) images: empty"),
        (class_files(2, classes=("ok", "bad\x01name")), (), "invalid class names"),
        ({"readme.txt": b"x"}, (), "no images"),
        (
            {**class_files(2, prefix="train/"), **class_files(1, prefix="test/", classes=("cow",))},
            (),
            "train/ lacks: cow",
        ),
        ({**class_files(2, prefix="test/")}, (), "no train/"),
        (
            {**class_files(2, prefix="train/"), "extra/x.png": encode_image(rgb())},
            (),
            "mixes train/",
        ),
    ]
    for i, (files, dirs, message) in enumerate(cases):
        with pytest.raises(InvalidInput, match=message):
            load(write_zip(tmp_path / f"c{i}.zip", files, dirs), tmp_path)


def test_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "data.zip"
    path.write_bytes(b"hello world")
    with pytest.raises(InvalidInput, match="unrecognized upload"):
        load(path, tmp_path)
    path.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(InvalidInput):
        load(path, tmp_path)
    path.write_bytes(b"\x1f\x8b\x08 truncated gzip")
    with pytest.raises(InvalidInput):
        load(path, tmp_path)


# --- malicious --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("../evil.png", "escape"),
        ("cat/../../evil.png", "escape"),
        ("..\\..\\evil.png", "escape"),
        ("/etc/evil.png", "absolute"),
        ("C:/evil.png", "absolute"),
        ("C:\\evil.png", "absolute"),
    ],
)
def test_escaping_entries_refused_in_zip_and_tar(tmp_path: Path, entry: str, reason: str) -> None:
    files = {**class_files(2), entry: encode_image(rgb())}
    with pytest.raises(InvalidInput, match=reason):
        load(write_zip(tmp_path / "u.zip", files), tmp_path)
    with pytest.raises(InvalidInput, match=reason):
        load(write_tar(tmp_path / "u.tgz", files), tmp_path)
    assert not (tmp_path / "evil.png").exists() and not (tmp_path.parent / "evil.png").exists()


def test_zip_symlink_refused(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "u.zip", class_files(2))
    with zipfile.ZipFile(path, "a") as zf:
        info = zipfile.ZipInfo("cat/link.png")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(InvalidInput, match="symbolic link"):
        load(path, tmp_path)


@pytest.mark.parametrize(
    "kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE]
)
def test_tar_links_and_devices_refused(tmp_path: Path, kind: bytes) -> None:
    path = tmp_path / "u.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in class_files(2).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        special = tarfile.TarInfo("cat/special.png")
        special.type = kind
        special.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
        tar.addfile(special)
    with pytest.raises(InvalidInput, match=r"cat/special\.png.*(link|device)"):
        load(path, tmp_path)


def test_zip_bomb_ratio_refused(tmp_path: Path) -> None:
    files = {**class_files(2), "cat/bomb.png": b"\0" * (4 << 20)}
    with pytest.raises(InvalidInput, match="compression ratio"):
        load(write_zip(tmp_path / "u.zip", files), tmp_path)


def test_tar_bomb_refused(tmp_path: Path) -> None:
    files = {**class_files(2), "cat/bomb.png": b"\0" * (4 << 20)}
    with pytest.raises(InvalidInput, match="compression ratio"):
        load(write_tar(tmp_path / "u.tgz", files), tmp_path)


def test_size_and_count_limits(tmp_path: Path) -> None:
    files = class_files(5)
    path = write_zip(tmp_path / "u.zip", files)
    with pytest.raises(InvalidInput, match="more than 5 entries"):
        load(path, tmp_path, limits=UploadLimits(max_files=5))
    with pytest.raises(InvalidInput, match="per-file limit"):
        load(path, tmp_path, limits=UploadLimits(max_file_bytes=50))
    with pytest.raises(InvalidInput, match="uncompressed bytes"):
        load(path, tmp_path, limits=UploadLimits(max_total_bytes=500))
    tar = write_tar(tmp_path / "u.tar", files, mode="w")
    with pytest.raises(InvalidInput, match="more than 5 entries"):
        load(tar, tmp_path, limits=UploadLimits(max_files=5))
    with pytest.raises(InvalidInput, match="per-file limit"):
        load(tar, tmp_path, limits=UploadLimits(max_file_bytes=50))
    with pytest.raises(InvalidInput, match="decodes to more than"):
        load(tar, tmp_path, limits=UploadLimits(max_array_bytes=1000))
    with pytest.raises(InvalidInput, match="over the limit of 16 pixels"):
        load(tar, tmp_path, limits=UploadLimits(max_image_pixels=16))
