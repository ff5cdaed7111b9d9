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
