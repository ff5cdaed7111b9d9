"""Checkpoint dicts to and from bytes and files.

Guarantees: a checkpoint is only ever read with ``torch.load(weights_only=True)`` (nothing is
unpickled beyond tensors and plain containers), and ``save_checkpoint`` replaces the file
atomically: after a crash or a failed write the path holds either the previous checkpoint or
the new one, never a torn file.

It also holds the RNG capture/restore that makes a resumed run draw the same numbers.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from cnnswarm.atomic import write_atomically
from cnnswarm.errors import InvalidInput


def load_weights_only(source: BinaryIO | Path, what: str) -> Any:
    """``torch.load(weights_only=True)`` to the CPU; InvalidInput naming ``what`` if unreadable."""
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises many kinds for a bad or hostile file
        raise InvalidInput(
            f"{what} is not a readable weights-only torch file ({_refusal_reason(exc)})"
        ) from exc


def _refusal_reason(exc: Exception) -> str:
    """The gist of torch's refusal: its unpickler's one-line reason, without the advice to
    load with ``weights_only=False`` (never an option for a file from a user)."""
    text = str(exc)
    _, marker, detail = text.partition("WeightsUnpickler error:")
    if marker:
        text = detail.split("Check the documentation")[0]
    first_sentence = " ".join(text.split()).split(". ")[0]
    return first_sentence[:300] or type(exc).__name__


def checkpoint_to_bytes(ckpt: dict[str, Any]) -> bytes:
    """Serialise a checkpoint dict (tensors and plain containers only)."""
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    return buffer.getvalue()


def checkpoint_from_bytes(data: bytes) -> dict[str, Any]:
    """Read what ``checkpoint_to_bytes`` wrote; InvalidInput for anything else."""
    ckpt = load_weights_only(io.BytesIO(data), "checkpoint")
    if not isinstance(ckpt, dict):
        raise InvalidInput("checkpoint must hold a dict")
    return ckpt


def save_checkpoint(ckpt: dict[str, Any], path: Path) -> None:
    """Write ``ckpt`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    write_atomically(path, lambda fh: torch.save(ckpt, fh))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint file (weights_only=True); InvalidInput if it is not one."""
    ckpt = load_weights_only(Path(path), f"checkpoint {Path(path).name}")
    if not isinstance(ckpt, dict):
        raise InvalidInput("checkpoint must hold a dict")
    return ckpt


def capture_rng_states(data_generator: torch.Generator) -> dict[str, Any]:
    """Every RNG a run draws from, as tensors and plain containers (weights_only-safe).

    torch's global CPU (and CUDA) generators, ``data_generator`` (data order and flips),
    numpy's global generator and Python's ``random``.
    """
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    version, mt_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "data": data_generator.get_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": int(version), "state": list(mt_state), "gauss_next": gauss_next},
    }


def restore_rng_states(states: dict[str, Any], data_generator: torch.Generator) -> None:
    """Put back what ``capture_rng_states`` took, so the run draws the same numbers again."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    data_generator.set_state(states["data"])
    numpy_state = states["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = states["python"]
    random.setstate(
        (python_state["version"], tuple(python_state["state"]), python_state["gauss_next"])
    )


def detached_copy(obj: Any) -> Any:
    """A deep copy of nested dicts/lists/tuples in which every tensor is cloned to the CPU.

    Checkpoints are handed to callbacks that may keep them while training goes on; live
    parameter and optimizer tensors would otherwise change under them.
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: detached_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(detached_copy(v) for v in obj)
    return obj
