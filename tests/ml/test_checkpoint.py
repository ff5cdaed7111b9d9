"""Checkpoint files: weights_only round trips, RNG capture, atomic replacement."""

from __future__ import annotations

import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnswarm.errors import InvalidInput
from cnnswarm.ml.checkpoint import (
    capture_rng_states,
    checkpoint_from_bytes,
    checkpoint_to_bytes,
    load_checkpoint,
    restore_rng_states,
    save_checkpoint,
)
from support import MarkerPayload, wait_until

torch.set_num_threads(1)


def sample_checkpoint(value: float) -> dict[str, object]:
    return {
        "model": {"w": torch.full((64, 64), value)},
        "epoch": 3,
        "batch": 0,
        "perm": torch.randperm(10),
        "metrics": [{"epoch": 1, "train_loss": 0.5, "test_accuracy": None}],
        "train_opts": {"lr": 0.01, "seed": None},
    }


def test_bytes_round_trip() -> None:
    ckpt = sample_checkpoint(1.5)
    again = checkpoint_from_bytes(checkpoint_to_bytes(ckpt))
    assert torch.equal(again["model"]["w"], ckpt["model"]["w"])  # type: ignore[index]
    assert again["metrics"] == ckpt["metrics"] and again["train_opts"] == ckpt["train_opts"]


def test_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "job.ckpt"
    save_checkpoint(sample_checkpoint(2.0), path)
    assert load_checkpoint(path)["model"]["w"][0, 0].item() == 2.0


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path: Path) -> None:
    path = tmp_path / "job.ckpt"
    save_checkpoint(sample_checkpoint(1.0), path)
    before = path.read_bytes()
    # Serialisation fails while the temp file is open: a lambda cannot be pickled.
    broken = {**sample_checkpoint(9.0), "zz_unpicklable": lambda: None}
    with pytest.raises(Exception, match=r"lambda|pickle|attribute"):
        save_checkpoint(broken, path)
    assert path.read_bytes() == before
    assert load_checkpoint(path)["model"]["w"][0, 0].item() == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.ckpt"]  # no temp file left


_WRITER = """
import sys, torch
from cnnswarm.ml.checkpoint import save_checkpoint
torch.set_num_threads(1)
i = 0
while True:
    i += 1
    save_checkpoint({"step": i, "w": torch.full((1_000_000,), float(i))}, sys.argv[1])
"""


def test_a_writer_killed_mid_write_leaves_a_whole_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "job.ckpt"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)])
    try:
        wait_until(  # until it has replaced the file a few times
            lambda: path.exists() and load_checkpoint(path)["step"] >= 3,
            30,
            interval=0.01,
            what="the writer to write three checkpoints",
        )
    finally:
        writer.kill()  # SIGKILL, most likely in the middle of a write
        writer.wait()
    ckpt = load_checkpoint(path)
    assert ckpt["step"] >= 3
    assert torch.equal(ckpt["w"], torch.full((1_000_000,), float(ckpt["step"])))


def test_rng_states_survive_a_weights_only_round_trip() -> None:
    generator = torch.Generator().manual_seed(5)
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    states = checkpoint_from_bytes(checkpoint_to_bytes({"rng": capture_rng_states(generator)}))
    first = (torch.rand(3), torch.rand(3, generator=generator), np.random.rand(3), random.random())

    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    generator.manual_seed(99)
    restore_rng_states(states["rng"], generator)
    again = (torch.rand(3), torch.rand(3, generator=generator), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert np.array_equal(first[2], again[2]) and first[3] == again[3]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_malicious_checkpoint_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"model": MarkerPayload(marker)}, path)
    with pytest.raises(InvalidInput):
        load_checkpoint(path)
    with pytest.raises(InvalidInput):
        checkpoint_from_bytes(pickle.dumps(MarkerPayload(marker)))
    assert not marker.exists()


def test_garbage_is_invalid_input_and_a_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        checkpoint_from_bytes(b"not a checkpoint")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.ckpt")
