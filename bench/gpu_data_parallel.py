"""The GPU path of data-parallel training, for a machine with CUDA (the test suite needs none).

Starts ``--ranks`` processes on this machine (default: one per visible GPU, at least 2 when
there is one GPU: they share it), each pinned to a GPU with ``CUDA_VISIBLE_DEVICES``, joined
with ``cnnswarm.ml.distributed.join_gang`` as trainers' job processes are. Checks that the
members chose NCCL and a CUDA device on their own, trains ResNet8 on ``synthetic`` for
``--epochs``, and compares the result with one process on one GPU: the final test accuracy of
both and images/s. Prints ``backend=nccl device=cuda:0`` (or what was chosen), then
``accuracy_1=... accuracy_N=... ratio=<N-rank img/s / 1-rank img/s>``; exits 1 when the
backend is not NCCL or a rank failed.

Run: ``.venv/bin/python bench/gpu_data_parallel.py [--ranks 2] [--epochs 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rank_main(rank: int, world: int, port: int, epochs: int, out: str) -> None:
    """One rank: join, train, write ``{"backend", "device", "metrics"}`` to ``out``."""
    from cnnswarm.ml.datasets.registry import load_builtin
    from cnnswarm.ml.distributed import GangMember, join_gang
    from cnnswarm.ml.train import train

    dataset = load_builtin("synthetic", Path(out).parent / f"home-{rank}")
    opts = {"num_epochs": epochs, "seed": 0}
    with join_gang(GangMember(rank, world, "127.0.0.1", port)) as gang:
        result = train("ResNet8", dataset, opts, gang=gang)
        summary = {"backend": gang.backend, "device": str(gang.device), "metrics": result.metrics}
    Path(out).write_text(json.dumps(summary))


def run_gang(world: int, epochs: int, gpus: int, tmp: Path) -> list[dict[str, Any]]:
    port = _free_port()
    procs, outs = [], []
    for rank in range(world):
        out = tmp / f"w{world}-r{rank}.json"
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(rank % max(gpus, 1))}
        args = [sys.executable, __file__, "--rank", str(rank), "--world", str(world)]
        args += ["--port", str(port), "--epochs", str(epochs), "--out", str(out)]
        procs.append(subprocess.Popen(args, env=env))
        outs.append(out)
    try:
        codes = [proc.wait(timeout=3600) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    if any(codes):
        raise SystemExit(f"a rank failed: exit codes {codes}")
    return [json.loads(out.read_text()) for out in outs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank is not None:
        rank_main(args.rank, args.world, args.port, args.epochs, args.out)
        return 0

    import torch

    gpus = torch.cuda.device_count()
    if not gpus:
        print("no CUDA device here: this check needs a machine with GPUs")
        return 1
    world = args.ranks or max(gpus, 2)
    with tempfile.TemporaryDirectory(prefix="cnnswarm-gpu-dp-") as tmp:
        alone = run_gang(1, args.epochs, gpus, Path(tmp))[0]
        ranks = run_gang(world, args.epochs, gpus, Path(tmp))
    leader = ranks[0]
    print(f"backend={leader['backend']} device={leader['device']}")

    def speed(run: dict[str, Any]) -> float:
        return float(sorted(m["images_per_s"] for m in run["metrics"])[len(run["metrics"]) // 2])

    print(
        f"accuracy_1={alone['metrics'][-1]['test_accuracy']:.4f} "
        f"accuracy_{world}={leader['metrics'][-1]['test_accuracy']:.4f} "
        f"ratio={speed(leader) / speed(alone):.3f}"
    )
    return 0 if leader["backend"] == "nccl" and leader["device"].startswith("cuda") else 1


if __name__ == "__main__":
    raise SystemExit(main())
