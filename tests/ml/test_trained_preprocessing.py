"""The preprocessing stored with a trained model is its dataset's: shape and normalization, for
every dataset source and for an ``example_idxs`` slice (which the seed's ``/get_examples``
normalizes with the whole dataset's statistics), and the model's files give the trained rows."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnswarm.ml.datasets import ArrayDataset, import_upload, normalize
from cnnswarm.ml.datasets.digits import load_digits
from cnnswarm.ml.preprocess import Preprocessing, images_to_tensor
from cnnswarm.ml.train import TrainOptions, train

torch.set_num_threads(1)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def image_files() -> dict[str, bytes]:
    """Three classes of 10x12 RGB images (one of each class 7x9, to be resized), each different."""
    rng = np.random.default_rng(0)
    files = {}
    for k, name in enumerate(("red", "green", "blue")):
        for i in range(6):
            size = (7, 9) if i == 0 else (10, 12)
            pixels = rng.integers(0, 120, size=(*size, 3), dtype=np.uint8)
            pixels[..., k] += 120
            files[f"{name}/{i}.png"] = png(pixels)
    return files


def image_upload(tmp_path: Path) -> ArrayDataset:
    path = tmp_path / "colours.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in image_files().items():
            archive.writestr(name, data)
    return import_upload(path, tmp_path, name="colours")


def npz_upload(tmp_path: Path) -> ArrayDataset:
    rng = np.random.default_rng(1)
    y = np.arange(30) % 3
    x = rng.integers(0, 200, size=(30, 9, 11), dtype=np.uint8)  # (N, H, W) grayscale
    x[np.arange(30), :, y] += 50
    path = tmp_path / "arrays.npz"
    with open(path, "wb") as fh:
        np.savez(fh, x=x, y=y, classes=np.array(["a", "b", "c"]))
    return import_upload(path, tmp_path, name="arrays")


SOURCES: dict[str, Callable[[Path], ArrayDataset]] = {
    "digits": lambda _: load_digits(),
    "image upload": image_upload,
    "npz upload": npz_upload,
}


def trained_preprocessing(
    dataset: ArrayDataset, tmp_path: Path, example_idxs: list[int] | None
) -> Preprocessing:
    """Train one tiny epoch as a trainer does: the dataset through its wire file, then sliced."""
    dataset.save_npz(tmp_path / "wire.npz")
    on_trainer = ArrayDataset.load_npz(tmp_path / "wire.npz").subset(example_idxs)
    opts = TrainOptions.from_dict(
        {"num_epochs": 1, "seed": 0, "batch_size": 32}, model_type="SmallConvNet"
    )
    result = train("SmallConvNet", on_trainer, opts)
    return Preprocessing.from_json(result.artifact.preprocessing)


@pytest.mark.parametrize("example_idxs", [None, [0, 12]], ids=["whole", "slice"])
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_the_model_stores_its_datasets_preprocessing(
    tmp_path: Path, source: str, example_idxs: list[int] | None
) -> None:
    dataset = SOURCES[source](tmp_path)
    prep = trained_preprocessing(dataset, tmp_path, example_idxs)

    assert (prep.channels, prep.height, prep.width) == dataset.x_train.shape[1:]
    # The whole dataset's statistics (what /get_examples normalizes with), even for a slice.
    assert prep.mean == dataset.normalization.mean
    assert prep.std == dataset.normalization.std


def test_the_models_files_give_the_trained_rows(tmp_path: Path) -> None:
    """The upload's own files, through predict's conversion with the stored preprocessing, are
    exactly the rows the model was trained and tested on."""
    dataset = image_upload(tmp_path)
    prep = trained_preprocessing(dataset, tmp_path, None)
    files = image_files()
    served = images_to_tensor(list(files.values()), prep)
    rows = normalize(
        torch.from_numpy(np.concatenate([dataset.x_train, dataset.x_test])), dataset.normalization
    )
    assert sorted(map(tuple, served.flatten(1).tolist())) == sorted(
        map(tuple, rows.flatten(1).tolist())
    )
