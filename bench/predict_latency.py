"""How much does serving add to a model's forward pass?

A REAL controller (``python -m cnnswarm.cli controller`` under gunicorn, ephemeral port, temp
HOME_DIR, one worker) serves a small model trained in-process (ResNet8 on a subset of the
``synthetic`` 3x32x32 set, one epoch) and published through the controller's own routes: the
job is submitted with ``POST /api/v1/jobs``, claimed in the shared SQLite job store as a
trainer would be, and its artefact posted to ``/internal/v1/jobs/<id>/result?attempt=1``.

Measured, in interleaved rounds (medians reported), with the same torch thread count on both
sides (``--threads``, default 1: ``TORCH_THREADS`` for the server, ``torch.set_num_threads``
here), over keep-alive ``http.client`` connections:

(a) latency at 1 client: p50/p95 of ``POST /api/v1/models/<id>/predict`` with one test image in
    each input format -- multipart PNG ``files`` (what curl and ``cnn-swarm predict`` send),
    base64 PNG ``instances`` and the seed's normalized ``examples`` -- against the raw
    in-process forward (+softmax) of the same model on that image -> added p50 (target
    <= 1 ms). For scale, the HTTP floor: ``GET /healthz`` through the same server and client;
(b) throughput with ``--clients`` (default 8) concurrent clients (threads, each with its own
    connection) sending multipart PNGs, against raw in-process single-image forwards (and, for
    context, raw forwards of batches of ``--clients`` images) -> ratio served/raw (target
    >= 0.5).

The client threads run in this process and share the machine with the server, so on a small
machine the figures include the client's own cost. The last line is

    ratio=<median served images/s / median raw single-image images/s>

Run: ``.venv/bin/python bench/predict_latency.py [--rounds 5] [--seconds 2] [--threads 1]``
(the default run takes about two minutes).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
import torch
from PIL import Image

from cnnswarm.ml.artifact import artifact_from_bytes, artifact_to_bytes
from cnnswarm.ml.datasets.registry import load_builtin
from cnnswarm.ml.train import train
from cnnswarm.ml.train_options import TrainOptions
from cnnswarm.store import open_stores

MODEL_ID = "bench-resnet8"
MODEL_TYPE = "ResNet8"


def train_model(home: Path, num_train: int) -> tuple[bytes, np.ndarray, torch.Tensor]:
    """A ResNet8 trained one epoch on ``num_train`` synthetic images: its artefact bytes and
    one test image, as stored (uint8 C, H, W) and normalized (1, 3, 32, 32)."""
    dataset = load_builtin("synthetic", home).subset([0, num_train])
    opts = TrainOptions.from_dict({"num_epochs": 1, "seed": 0}, model_type=MODEL_TYPE)
    result = train(MODEL_TYPE, dataset, opts)
    from cnnswarm.ml.datasets import normalize

    image = normalize(torch.from_numpy(dataset.x_test[:1].copy()), dataset.normalization)
    return artifact_to_bytes(result.artifact), dataset.x_test[0], image


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


@dataclass(frozen=True)
class Payload:
    """One predict request body, built once and sent many times."""

    name: str
    body: bytes
    content_type: str


def payloads(dataset_image: np.ndarray, normalized: torch.Tensor) -> list[Payload]:
    """The same test image in each of predict's three input formats."""
    png = io.BytesIO()
    Image.fromarray(dataset_image.transpose(1, 2, 0)).save(png, format="PNG")
    boundary = "cnnswarm-bench-boundary"
    multipart = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
        'filename="image.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
        + png.getvalue()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return [
        Payload("files", multipart, f"multipart/form-data; boundary={boundary}"),
        Payload(
            "instances",
            json.dumps({"instances": [base64.b64encode(png.getvalue()).decode()]}).encode(),
            "application/json",
        ),
        Payload(
            "examples", json.dumps({"examples": normalized.tolist()}).encode(), "application/json"
        ),
    ]


class KeepAliveClient:
    """One keep-alive HTTP/1.1 connection. ``http.client`` is the lightest client in the
    standard library (``requests`` costs about 1.5 ms more per call on this machine), so the
    figures are the server's rather than a client library's."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=60)

    def call(self, method: str, path: str, payload: Payload | None = None) -> bytes:
        """Send one request and read the whole answer; raises unless it is 200."""
        if payload is None:
            self.connection.request(method, path)
        else:
            headers = {"Content-Type": payload.content_type}
            self.connection.request(method, path, body=payload.body, headers=headers)
        response = self.connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{method} {path} answered {response.status}: {data[:200]!r}")
        return data

    def latencies(self, method: str, path: str, payload: Payload | None, n: int) -> list[float]:
        """Seconds per call, ``n`` calls back to back."""
        out = []
        for _ in range(n):
            start = time.perf_counter()
            self.call(method, path, payload)
            out.append(time.perf_counter() - start)
        return out

    def close(self) -> None:
        self.connection.close()


def raw_latencies(model: torch.nn.Module, image: torch.Tensor, n: int) -> list[float]:
    """Seconds per in-process forward (+softmax, as served) of one image."""
    out = []
    with torch.inference_mode():
        for _ in range(n):
            start = time.perf_counter()
            torch.softmax(model(image), dim=1)
            out.append(time.perf_counter() - start)
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


def served_throughput(url: str, path: str, payload: Payload, clients: int, seconds: float) -> float:
    """Images/s served to ``clients`` threads sending one-image requests back to back."""
    counts = [0] * clients
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)
    stop = threading.Event()

    def client(index: int) -> None:
        connection = KeepAliveClient(url)
        try:
            connection.call("POST", path, payload)
            barrier.wait()
            while not stop.is_set():
                connection.call("POST", path, payload)
                counts[index] += 1
        except Exception as exc:  # reported below; the other clients carry on
            errors.append(str(exc))
        finally:
            connection.close()

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
        artefact, uint8_image, image = train_model(home, args.num_train)
        print(f"trained {MODEL_TYPE} in {time.perf_counter() - started:.1f}s", flush=True)
        torch.set_num_threads(args.threads)  # train() sets its own thread count
        model = artifact_from_bytes(artefact).build_model()
        process, url = start_controller(home, args.threads)
        try:
            publish(url, home, artefact)
            path = f"/api/v1/models/{MODEL_ID}/predict"
            bodies = payloads(uint8_image, image)
            headline = bodies[0]
            batch = image.repeat(args.clients, 1, 1, 1)
            warm_up = KeepAliveClient(url)
            for payload in bodies:  # load the model, warm up every path
                warm_up.latencies("POST", path, payload, 20)
            warm_up.close()
            raw_latencies(model, image, 20)
            rows: dict[str, list[float]] = defaultdict(list)
            for round_index in range(args.rounds):
                served_first = round_index % 2 == 0
                for side in ("served", "raw") if served_first else ("raw", "served"):
                    if side == "raw":
                        lat = raw_latencies(model, image, args.requests)
                        rows["raw p50"].append(percentile(lat, 0.5))
                        rows["raw p95"].append(percentile(lat, 0.95))
                        rows["raw img/s"].append(raw_throughput(model, image, args.seconds))
                        rows["batched img/s"].append(raw_throughput(model, batch, args.seconds))
                        continue
                    # A fresh connection per round: the server closes idle ones after 5 s.
                    session = KeepAliveClient(url)
                    lat = session.latencies("GET", "/healthz", None, args.requests)
                    rows["healthz p50"].append(percentile(lat, 0.5))
                    for payload in bodies:
                        lat = session.latencies("POST", path, payload, args.requests)
                        rows[f"{payload.name} p50"].append(percentile(lat, 0.5))
                        rows[f"{payload.name} p95"].append(percentile(lat, 0.95))
                    session.close()
                    rows["served img/s"].append(
                        served_throughput(url, path, headline, args.clients, args.seconds)
                    )
                print(
                    f"round {round_index}: "
                    + ", ".join(
                        f"{k} {v[-1] * 1e3:.2f} ms"
                        if k.endswith(("p50", "p95"))
                        else f"{k} {v[-1]:.0f}"
                        for k, v in rows.items()
                    ),
                    flush=True,
                )
        finally:
            process.terminate()
            process.wait(timeout=60)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"threads={args.threads} clients={args.clients} rounds={args.rounds}")
    print(
        f"raw forward p50 {med['raw p50'] * 1e3:.2f} ms p95 {med['raw p95'] * 1e3:.2f} ms | "
        f"HTTP floor (GET /healthz, same server and client) p50 {med['healthz p50'] * 1e3:.2f} ms"
    )
    for payload in bodies:
        p50, p95 = med[f"{payload.name} p50"], med[f"{payload.name} p95"]
        print(
            f"latency 1 client, {payload.name}: served p50 {p50 * 1e3:.2f} ms p95 "
            f"{p95 * 1e3:.2f} ms | added p50 {(p50 - med['raw p50']) * 1e3:.2f} ms (target <= 1 ms)"
        )
    print(
        f"throughput, {headline.name}: served {med['served img/s']:.0f} img/s with {args.clients} "
        f"clients | raw single {med['raw img/s']:.0f} img/s | raw batched x{args.clients} "
        f"{med['batched img/s']:.0f} img/s"
    )
    print(f"ratio={med['served img/s'] / med['raw img/s']:.3f}")


if __name__ == "__main__":
    main()
