"""Builtin datasets: digits, synthetic, and the registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cnnswarm.errors import InvalidInput, NotFound
from cnnswarm.ml.datasets import (
    BUILTIN_DATASETS,
    ArrayDataset,
    load_builtin,
    make_synthetic,
    normalize,
)
from cnnswarm.ml.datasets.stats import stratified_split


def test_vendored_digits_are_scikit_learns(tmp_path: Path) -> None:
    """``ml/datasets/data/digits.npz`` holds scikit-learn's digits and its stratified split
    exactly (``data/VENDORED.md`` says how it was made); scikit-learn is a test dependency."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    ds = load_builtin("digits", tmp_path)
    bunch = load_digits()
    x = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[:, None]
    train_idx, test_idx = train_test_split(
        np.arange(len(bunch.target)), test_size=360, stratify=bunch.target, random_state=0
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    assert ds.classes == [str(int(n)) for n in bunch.target_names]
    np.testing.assert_array_equal(ds.x_train, x[train_idx])
    np.testing.assert_array_equal(ds.y_train, bunch.target[train_idx])
    np.testing.assert_array_equal(ds.x_test, x[test_idx])
    np.testing.assert_array_equal(ds.y_test, bunch.target[test_idx])


def test_digits_fixed_split(tmp_path: Path) -> None:
    ds = load_builtin("digits", tmp_path)
    assert ds.input_shape == (1, 8, 8) and ds.classes == [str(i) for i in range(10)]
    assert (len(ds.x_train), len(ds.x_test)) == (1437, 360)
    assert ds.x_train.dtype == np.uint8 and ds.x_train.max() == 255 and ds.x_train.min() == 0
    # stratified: every class in test, 35-37 each
    counts = np.bincount(ds.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    again = load_builtin("digits", tmp_path)
    np.testing.assert_array_equal(again.x_test, ds.x_test)
    # normalization is the training split's
    x = ds.x_train.astype(np.float64) / 255
    assert ds.normalization.mean[0] == pytest.approx(x.mean())
    assert ds.normalization.std[0] == pytest.approx(x.std())
    sub = ds.subset([0, 100])
    assert len(sub.x_train) == 100 and len(sub.x_test) == 360


def test_synthetic_deterministic_any_shape() -> None:
    a = make_synthetic(20, 10, 1, 12, 9, 3, seed=5)
    b = make_synthetic(20, 10, 1, 12, 9, 3, seed=5)
    c = make_synthetic(20, 10, 1, 12, 9, 3, seed=6)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)
    assert a.input_shape == (1, 12, 9) and a.classes == ["class_0", "class_1", "class_2"]
    assert np.bincount(a.y_train).tolist() == [7, 7, 6]
    with pytest.raises(InvalidInput, match="num_classes"):
        make_synthetic(20, 10, 1, 12, 9, 1, seed=5)


def test_builtin_synthetic_config(tmp_path: Path) -> None:
    ds = load_builtin("synthetic", tmp_path)
    assert ds.input_shape == (3, 32, 32) and len(ds.classes) == 10
    assert (len(ds.x_train), len(ds.x_test)) == (2000, 500)


def _fit_tiny_convnet(ds: ArrayDataset, epochs: int) -> float:
    torch.manual_seed(0)
    channels = ds.input_shape[0]
    model = nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(32, len(ds.classes)),
    )  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = normalize(torch.from_numpy(ds.x_train), ds.normalization)
    y = torch.from_numpy(ds.y_train)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(32):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    with torch.no_grad():
        logits = model(normalize(torch.from_numpy(ds.x_test), ds.normalization))
    return float((logits.argmax(1).numpy() == ds.y_test).mean())


def test_synthetic_is_learnable_far_above_chance() -> None:
    ds = make_synthetic(800, 200, 3, 16, 16, 5, seed=0)
    accuracy = _fit_tiny_convnet(ds, epochs=3)
    assert accuracy > 0.8, accuracy  # chance is 0.2


def test_registry(tmp_path: Path) -> None:
    assert BUILTIN_DATASETS == ("cifar10", "digits", "synthetic")
    assert load_builtin("DIGITS", tmp_path).name == "digits"
    with pytest.raises(NotFound, match="builtin datasets are cifar10, digits, synthetic"):
        load_builtin("mnist", tmp_path)


def test_stratified_split_rules() -> None:
    labels = np.array([0] * 10 + [1] * 2 + [2])
    train, test = stratified_split(labels)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(13))
    assert np.bincount(labels[test], minlength=3).tolist() == [2, 1, 0]
    again = stratified_split(labels)
    np.testing.assert_array_equal(again[1], test)
