"""Preprocessing: the JSON record, safe decoding, and predict agreeing with the upload path."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnswarm.errors import InvalidInput
from cnnswarm.ml.datasets import import_upload, make_synthetic, normalize
from cnnswarm.ml.preprocess import Preprocessing, decode_image, images_to_tensor


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_json_round_trip_and_from_dataset() -> None:
    ds = make_synthetic(10, 2, 3, 6, 5, 2, seed=0)
    prep = Preprocessing.from_dataset(ds)
    assert (prep.channels, prep.height, prep.width) == (3, 6, 5)
    assert prep.mean == ds.normalization.mean
    assert Preprocessing.from_json(prep.to_json()) == prep
    with pytest.raises(InvalidInput, match="malformed"):
        Preprocessing.from_json({"channels": 3})
    with pytest.raises(InvalidInput, match="channels"):
        Preprocessing(channels=2, height=4, width=4, mean=(0.5, 0.5), std=(0.5, 0.5))


def test_decode_image_refuses_bad_input() -> None:
    good = encode(Image.new("RGB", (4, 4), (1, 2, 3)))
    assert decode_image(good).size == (4, 4)
    with pytest.raises(InvalidInput, match=r"photo\.png: not a readable image"):
        decode_image(b"not an image", name="photo.png")
    noise = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    full = encode(Image.fromarray(noise))
    with pytest.raises(InvalidInput, match=r"cut\.png"):
        decode_image(full[: len(full) // 2], name="cut.png")
    with pytest.raises(InvalidInput, match="decompression bomb"):
        decode_image(encode(Image.new("L", (100, 100))), name="big.png", max_pixels=50)


def test_images_to_tensor_converts_resizes_and_normalizes() -> None:
    prep = Preprocessing(channels=1, height=4, width=4, mean=(0.5,), std=(0.25,))
    rgb = encode(Image.new("RGB", (8, 8), (255, 255, 255)))
    gray16 = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    jpeg = encode(Image.new("RGB", (2, 2), (0, 0, 0)), "JPEG")
    out = images_to_tensor([rgb, encode(gray16), jpeg], prep)
    assert out.shape == (3, 1, 4, 4) and out.dtype == torch.float32
    assert torch.allclose(out[0], torch.full((1, 4, 4), 2.0))  # (1 - 0.5) / 0.25
    assert torch.allclose(out[1], torch.full((1, 4, 4), 2.0))  # 16-bit white stays white
    assert torch.allclose(out[2], torch.full((1, 4, 4), -2.0), atol=0.1)
    with pytest.raises(InvalidInput, match="second"):
        images_to_tensor([rgb, b"junk"], prep, names=["first", "second"])


def test_predict_path_matches_upload_path(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    files: dict[str, bytes] = {}
    for cls in ("a", "b"):
        for i in range(5):
            size = (10, 12) if i else (7, 5)  # one odd size per class gets resized
            mode = "RGBA" if i == 1 else "RGB"
            pixels = rng.integers(0, 256, size=(*size, len(mode)), dtype=np.uint8)
            files[f"{cls}/{i}.png"] = encode(Image.fromarray(pixels, mode))
    path = tmp_path / "u.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    ds = import_upload(path, tmp_path, name="u")
    prep = Preprocessing.from_dataset(ds)
    everything = np.concatenate([ds.x_train, ds.x_test])
    expected = normalize(torch.from_numpy(everything), ds.normalization)
    predicted = images_to_tensor(list(files.values()), prep)
    # the same images through predict's path give exactly the dataset's tensors (any order)
    flat_expected = {tuple(t.flatten().tolist()) for t in expected}
    flat_predicted = {tuple(t.flatten().tolist()) for t in predicted}
    assert flat_predicted == flat_expected


def test_cmyk_palette_and_alpha_become_rgb() -> None:
    prep = Preprocessing(channels=3, height=2, width=2, mean=(0, 0, 0), std=(1, 1, 1))
    cmyk = encode(Image.new("CMYK", (2, 2), (0, 255, 255, 0)), "JPEG")  # red
    palette = Image.new("P", (2, 2))
    palette.putpalette([0, 0, 255] * 256)
    rgba = encode(Image.new("RGBA", (2, 2), (0, 255, 0, 0)))  # alpha dropped, colour kept
    out = images_to_tensor([cmyk, encode(palette), rgba], prep)
    assert out.shape == (3, 3, 2, 2)
    red, blue, green = (out[i, :, 0, 0].tolist() for i in range(3))
    assert red[0] > 0.9 and red[1] < 0.1 and red[2] < 0.1
    assert blue == [0.0, 0.0, 1.0]
    assert green == [0.0, 1.0, 0.0]


def asymmetric_rgb(height: int, width: int) -> np.ndarray:
    """Red only in a bright top-left corner, green rising left to right, blue top to bottom:
    any flip, transpose or channel swap shows."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[: height // 3, : width // 3, 0] = 255
    image[..., 1] = np.linspace(0, 255, width).round().astype(np.uint8)[np.newaxis, :]
    image[..., 2] = np.linspace(0, 255, height).round().astype(np.uint8)[:, np.newaxis]
    return image


def unit(prep_channels: int, height: int, width: int) -> Preprocessing:
    """A preprocessing that maps 0..255 to 0..1, so outputs read as pixel values / 255."""
    zeros, ones = (0.0,) * prep_channels, (1.0,) * prep_channels
    return Preprocessing(channels=prep_channels, height=height, width=width, mean=zeros, std=ones)


@pytest.mark.parametrize(("height", "width"), [(24, 40), (10, 6), (16, 16)])
def test_orientation_and_channel_order_survive_conversion(height: int, width: int) -> None:
    """A non-square image resized to a non-square size keeps its top-left corner and its RGB
    order, and matches Pillow's bilinear resize of the same image."""
    source = asymmetric_rgb(30, 48)  # 48 wide, 30 high
    out = images_to_tensor([encode(Image.fromarray(source))], unit(3, height, width))[0]
    assert out.shape == (3, height, width)
    red, green, blue = out
    assert red[0, 0] > 0.9 and red[-1, -1] < 0.1 and red[0, -1] < 0.1 and red[-1, 0] < 0.1
    assert (green[:, -1] > green[:, 0]).all() and (green[-1] - green[0]).abs().max() < 0.02
    assert (blue[-1] > blue[0]).all() and (blue[:, -1] - blue[:, 0]).abs().max() < 0.02
    reference = Image.fromarray(source).resize((width, height), Image.Resampling.BILINEAR)
    expected = torch.from_numpy(np.asarray(reference).transpose(2, 0, 1).astype(np.float32))
    torch.testing.assert_close(out, expected / 255.0, rtol=0, atol=1e-6)


def test_grayscale_conversion_keeps_orientation_and_matches_pillow() -> None:
    source = asymmetric_rgb(30, 48)
    out = images_to_tensor([encode(Image.fromarray(source))], unit(1, 12, 20))[0, 0]
    reference = Image.fromarray(source).convert("L").resize((20, 12), Image.Resampling.BILINEAR)
    expected = torch.from_numpy(np.asarray(reference).astype(np.float32)) / 255.0
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # in luma, the red top-left corner is brighter than the blue bottom-left one
    assert out[0, 0] > out[-1, 0] + 0.1


def test_uploads_keep_orientation_and_resize_as_predict_does(tmp_path: Path) -> None:
    """In an upload, the common size wins and an odd-sized image is resized like Pillow does;
    each image keeps its corner and channel order."""
    files = {
        "a/0.png": encode(Image.fromarray(asymmetric_rgb(12, 20))),
        "a/1.png": encode(Image.fromarray(asymmetric_rgb(12, 20)[:, ::-1].copy())),
        "b/0.png": encode(Image.fromarray(asymmetric_rgb(30, 48))),  # resized to 12 x 20
        "b/1.png": encode(Image.fromarray(asymmetric_rgb(12, 20)[::-1].copy())),
    }
    path = tmp_path / "u.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    ds = import_upload(path, tmp_path, name="u")
    assert ds.input_shape == (3, 12, 20)
    rows = np.concatenate([ds.x_train, ds.x_test])
    resized = np.asarray(
        Image.fromarray(asymmetric_rgb(30, 48)).resize((20, 12), Image.Resampling.BILINEAR)
    ).transpose(2, 0, 1)
    expected = [
        asymmetric_rgb(12, 20).transpose(2, 0, 1),
        asymmetric_rgb(12, 20)[:, ::-1].transpose(2, 0, 1),
        resized,
        asymmetric_rgb(12, 20)[::-1].transpose(2, 0, 1),
    ]
    assert sorted(r.tobytes() for r in rows) == sorted(e.tobytes() for e in expected)
