"""How much does serving add to a model's forward pass?

A REAL controller (``python -m cnnswarm.cli controller`` under gunicorn, ephemeral port, temp
HOME_DIR, one worker) serves a small model trained in-process (ResNet8 on a subset of the
``synthetic`` 3x32x32 set, one epoch) and published through the controller's own routes: the
job is submitted with ``POST /api/v1/jobs``, claimed in the shared SQLite job store as a
trainer would be, and its artefact posted to ``/internal/v1/jobs/<id>/result?attempt=1``.

Measured, in interleaved rounds (medians reported), with the same torch thread count on both
sides (``--threads``, default 1: ``TORCH_THREADS`` for the server, ``torch.set_num_threads``
here):

(a) latency at 1 client: p50/p95 of ``POST /api/v1/models/<id>/predict`` with JSON
    ``{"examples": [one normalized image]}`` over a keep-alive ``requests.Session``, against
    the raw in-process forward of the same model on one image -> added p50 (target <= 1 ms);
(b) throughput with ``--clients`` (default 8) concurrent clients (threads, each with its own
    keep-alive session) against raw in-process single-image forwards (and, for context, raw
    forwards of batches of ``--clients`` images) -> ratio served/raw (target >= 0.5).

The client threads run in this process and share the machine with the server, so on a small
machine the figures include the client's own cost. The last line is

    ratio=<median served images/s / median raw single-image images/s>

Run: ``.venv/bin/python bench/predict_latency.py [--rounds 5] [--seconds 2] [--threads 1]``
(the default run takes about a minute).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
import torch

from cnnswarm.ml.artifact import artifact_from_bytes, artifact_to_bytes
from cnnswarm.ml.datasets.registry import load_builtin
from cnnswarm.ml.train import train
from cnnswarm.ml.train_options import TrainOptions
from cnnswarm.store import open_stores

MODEL_ID = "bench-resnet8"
MODEL_TYPE = "ResNet8"


def train_model(home: Path, num_train: int) -> tuple[bytes, torch.Tensor]:
    """A ResNet8 trained one epoch on ``num_train`` synthetic images: its artefact bytes and
    one normalized test image (1, 3, 32, 32)."""
    dataset = load_builtin("synthetic", home).subset([0, num_train])
    opts = TrainOptions.from_dict({"num_epochs": 1, "seed": 0}, model_type=MODEL_TYPE)
    result = train(MODEL_TYPE, dataset, opts)
    from cnnswarm.ml.datasets import normalize

    image = normalize(torch.from_numpy(dataset.x_test[:1].copy()), dataset.normalization)
    return artifact_to_bytes(result.artifact), image


def start_controller(home: Path, threads: int) -> tuple[subprocess.Popen[bytes], str]:
    """A gunicorn controller on an ephemeral port; returns the process and its URL."""
    url_file = home / "controller.url"
    env = {
        **os.environ,
        "HOME_DIR": str(home),
        "TORCH_THREADS": str(threads),
        "GUNICORN_WORKERS": "1",
        "CNN_SWARM_API_TOKEN": "",
        "CNN_SWARM_API_TOKEN_FILE": "",
    }
    command = [sys.executable, "-m", "cnnswarm.cli", "controller", "--port", "0"]
    command += ["--host", "127.0.0.1", "--home", str(home), "--url-file", str(url_file)]
    with open(home / "controller.log", "wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"controller exited: {(home / 'controller.log').read_text()}")
        if url_file.exists():
            url = url_file.read_text().strip()
            try:
                if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                    return process, url
            except requests.ConnectionError:
                pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("controller did not become ready within 60 s")


def publish(url: str, home: Path, artefact: bytes) -> None:
    """Publish ``artefact`` as MODEL_ID the way a trainer does (claim + POST result)."""
    response = requests.post(
        f"{url}/api/v1/jobs", json={"dataset": "synthetic", "model_id": MODEL_ID}, timeout=30
    )
    response.raise_for_status()
    job_id = response.json()["id"]
    stores = open_stores(f"sqlite:///{home / 'cnn-swarm.sqlite3'}", home)
    try:
        claimed = stores.jobs.claim(stores.jobs.get(job_id), "bench-trainer", lease_s=600)
        assert claimed is not None, "the job was claimed by someone else"
    finally:
        stores.close()
    published = requests.post(
        f"{url}/internal/v1/jobs/{job_id}/result?attempt=1", data=artefact, timeout=60
    )
    published.raise_for_status()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def raw_latencies(model: torch.nn.Module, image: torch.Tensor, n: int) -> list[float]:
    """Seconds per in-process forward (+softmax, as served) of one image."""
    out = []
    with torch.inference_mode():
        for _ in range(n):
            start = time.perf_counter()
            torch.softmax(model(image), dim=1)
            out.append(time.perf_counter() - start)
    return out


def served_latencies(session: requests.Session, endpoint: str, body: bytes, n: int) -> list[float]:
    """Seconds per served predict of one image (request built once, sent ``n`` times)."""
    headers = {"Content-Type": "application/json"}
    out = []
    for _ in range(n):
        start = time.perf_counter()
        response = session.post(endpoint, data=body, headers=headers, timeout=30)
        out.append(time.perf_counter() - start)
        if response.status_code != 200:
            raise RuntimeError(f"predict answered {response.status_code}: {response.text}")
    return out


def raw_throughput(model: torch.nn.Module, image: torch.Tensor, seconds: float) -> float:
    """Images/s of back-to-back in-process forwards of ``image`` (any batch size)."""
    count = 0
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() < deadline:
            torch.softmax(model(image), dim=1)
            count += len(image)
    return count / (time.perf_counter() - start)


def served_throughput(endpoint: str, body: bytes, clients: int, seconds: float) -> float:
    """Images/s served to ``clients`` threads sending one-image requests back to back."""
    counts = [0] * clients
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)
    stop = threading.Event()

    def client(index: int) -> None:
        with requests.Session() as session:
            session.post(endpoint, data=body, headers={"Content-Type": "application/json"})
            barrier.wait()
            while not stop.is_set():
                response = session.post(
                    endpoint, data=body, headers={"Content-Type": "application/json"}, timeout=30
                )
                if response.status_code != 200:
                    errors.append(f"{response.status_code}: {response.text[:200]}")
                    return
                counts[index] += 1

    workers = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    done = sum(counts)
    elapsed = time.perf_counter() - start
    for worker in workers:
        worker.join()
    if errors:
        raise RuntimeError(f"served predict failed: {errors[0]}")
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200, help="latency samples per round")
    parser.add_argument("--seconds", type=float, default=2.0, help="per throughput sample")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    parser.add_argument("--num-train", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="cnnswarm-bench-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        started = time.perf_counter()
        artefact, image = train_model(home, args.num_train)
        print(f"trained {MODEL_TYPE} in {time.perf_counter() - started:.1f}s", flush=True)
        torch.set_num_threads(args.threads)  # train() sets its own thread count
        model = artifact_from_bytes(artefact).build_model()
        process, url = start_controller(home, args.threads)
        try:
            publish(url, home, artefact)
            endpoint = f"{url}/api/v1/models/{MODEL_ID}/predict"
            body = json.dumps({"examples": image.tolist()}).encode()
            batch = image.repeat(args.clients, 1, 1, 1)
            session = requests.Session()
            served_latencies(session, endpoint, body, 20)  # load the model, warm up
            raw_latencies(model, image, 20)
            rows: dict[str, list[float]] = {
                k: [] for k in ("raw_p50", "raw_p95", "srv_p50", "srv_p95", "raw", "batched", "srv")
            }
            for round_index in range(args.rounds):
                served_first = round_index % 2 == 0
                for side in ("served", "raw") if served_first else ("raw", "served"):
                    if side == "raw":
                        lat = raw_latencies(model, image, args.requests)
                        rows["raw_p50"].append(percentile(lat, 0.5))
                        rows["raw_p95"].append(percentile(lat, 0.95))
                        rows["raw"].append(raw_throughput(model, image, args.seconds))
                        rows["batched"].append(raw_throughput(model, batch, args.seconds))
                    else:
                        lat = served_latencies(session, endpoint, body, args.requests)
                        rows["srv_p50"].append(percentile(lat, 0.5))
                        rows["srv_p95"].append(percentile(lat, 0.95))
                        rows["srv"].append(
                            served_throughput(endpoint, body, args.clients, args.seconds)
                        )
                print(
                    f"round {round_index}: served p50 {rows['srv_p50'][-1] * 1e3:.2f} ms, "
                    f"raw p50 {rows['raw_p50'][-1] * 1e3:.2f} ms, "
                    f"served {rows['srv'][-1]:.0f} img/s, raw {rows['raw'][-1]:.0f} img/s",
                    flush=True,
                )
        finally:
            process.terminate()
            process.wait(timeout=60)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"threads={args.threads} clients={args.clients} rounds={args.rounds}")
    print(
        f"latency 1 client: served p50 {med['srv_p50'] * 1e3:.2f} ms p95 "
        f"{med['srv_p95'] * 1e3:.2f} ms | raw p50 {med['raw_p50'] * 1e3:.2f} ms p95 "
        f"{med['raw_p95'] * 1e3:.2f} ms | added p50 {(med['srv_p50'] - med['raw_p50']) * 1e3:.2f}"
        " ms (target <= 1 ms)"
    )
    print(
        f"throughput: served {med['srv']:.0f} img/s with {args.clients} clients | raw single "
        f"{med['raw']:.0f} img/s | raw batched x{args.clients} {med['batched']:.0f} img/s"
    )
    print(f"ratio={med['srv'] / med['raw']:.3f}")


if __name__ == "__main__":
    main()
