"""Fixtures for the ml tests: one torch thread, and the CIFAR archive writer."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

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
