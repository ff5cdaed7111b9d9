"""Fixtures for the ml tests: the CIFAR archive writer and small image/archive builders."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)


def _load_fixture_module(name: str) -> ModuleType:
    path = Path(__file__).resolve().parents[1] / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"cnnswarm_tests_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def cifar_fixtures() -> ModuleType:
    """``tests/fixtures_cifar.py`` (``write_cifar10_archive``, ``py2_pickle``)."""
    return _load_fixture_module("fixtures_cifar")


def encode_image(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    """HxW or HxWxC uint8 array -> encoded image bytes, written by Pillow."""
    image = Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def png_bytes() -> bytes:
    """A 6x5 RGB PNG."""
    rng = np.random.default_rng(1)
    return encode_image(rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8))
