"""What do the Prometheus metrics cost predict? Throughput with ``METRICS_ENABLED=1`` against 0.

Default (in one process, the steadier figure on a loaded machine): two controller apps built by
``create_app``, one with metrics on (every predict records its request, latency, queue time and
batch size, every request its route, in multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` is set
before anything imports ``prometheus_client``, as gunicorn's controller does) and one with
metrics off (no ``/metrics`` route, no request hooks, every recording call returns at once).
Both serve the same ResNet8 (trained here one epoch on ``synthetic``, published through each
app's own routes as a trainer does); ``--requests`` one-image multipart PNG predicts go through
Flask's test client to each, in interleaved rounds (on first in even rounds, off first in odd
ones), and a round's ratio is on/off of images/s (wall time) and of CPU time per image. It also
prints the CPU time of one predict's metric calls alone (record and flush), the cost that a
loaded machine's round-to-round noise hides.

``--control``: both apps with metrics off (an A/A run: what the method reads when nothing
differs). ``--servers``: two REAL controllers instead (gunicorn, one worker each, ephemeral
ports), with ``--clients`` keep-alive client threads for ``--seconds`` per side per round, and
the servers' CPU time per image (user + system of their process trees).

The last line is

    ratio=<median over rounds of (images/s with metrics on / images/s with metrics off)>

(target >= 0.97: metrics cost at most 3 %). Run:
``.venv/bin/python bench/predict_metrics_overhead.py [--rounds 21] [--requests 300]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from predict_latency import (
    MODEL_ID,
    KeepAliveClient,
    Payload,
    payloads,
    publish,
    served_throughput,
    start_controller,
    train_model,
)
from serving_peers import cpu_seconds

PATH = f"/api/v1/models/{MODEL_ID}/predict"
SIDES = ("on", "off")


@contextmanager
def controller(home: Path, threads: int, *, metrics: bool) -> Iterator[tuple[str, int]]:
    """A controller with metrics on or off; yields its URL and pid; stopped when the block
    ends."""
    home.mkdir(parents=True)
    os.environ["METRICS_ENABLED"] = "1" if metrics else "0"  # start_controller passes os.environ
    process: subprocess.Popen[bytes]
    process, url = start_controller(home, threads)
    try:
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=60)


Measure = Callable[[str], tuple[float, float]]  # side -> (images/s, CPU ms per image)


def in_process(
    root: Path, artefact: bytes, payload: Payload, requests: int, *, control: bool = False
) -> Measure:
    """Two apps in this process, metrics on and off (both off with ``control``: the method's
    own bias); returns the measuring function."""
    from cnnswarm.config import Settings
    from cnnswarm.controller.app import create_app

    clients = {}
    for side in SIDES:
        enabled = side == "on" and not control
        app = create_app(Settings(home_dir=root / side, metrics_enabled=enabled))
        client = app.test_client()
        job_id = client.post("/api/v1/jobs", json={"dataset": "synthetic", "model_id": MODEL_ID})
        job_id = job_id.get_json()["id"]
        jobs = app.extensions["cnnswarm"].stores.jobs
        assert jobs.claim(jobs.get(job_id), "bench-trainer", lease_s=600) is not None
        answer = client.post(f"/internal/v1/jobs/{job_id}/result?attempt=1", data=artefact)
        assert answer.status_code == 200, answer.get_data(as_text=True)
        clients[side] = client

    def measure(side: str) -> tuple[float, float]:
        client = clients[side]
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(requests):
            answer = client.post(PATH, data=payload.body, content_type=payload.content_type)
            assert answer.status_code == 200, answer.get_data(as_text=True)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        client.get("/metrics")  # a scrape, as Prometheus's (404 with metrics off)
        return requests / wall, 1e3 * cpu / requests

    for side in SIDES:  # load the model, warm every path
        clients[side].post(PATH, data=payload.body, content_type=payload.content_type)
    assert control or any((root / "metrics").glob("counter_*.db")), "metrics on write files"
    return measure


def metric_calls_us(repeats: int = 20000) -> float:
    """CPU microseconds of what one predict records with metrics on (request, queue wait,
    batch, HTTP counter), its share of the flushes included: the cost in isolation, which a
    loaded machine's round-to-round noise hides."""
    from prometheus_client import Counter

    from cnnswarm.controller.metrics import ControllerMetrics
    from cnnswarm.exposition import AppMetrics

    app_metrics = AppMetrics(enabled=True)
    metrics = ControllerMetrics(app_metrics)
    http = app_metrics.buffered_counter(
        Counter("bench_http_total", "bench", ["route", "method", "status"], registry=None)
    )
    samples = []
    for _ in range(9):
        started = time.thread_time()
        for _ in range(repeats):
            with metrics.predict_request() as observed:
                observed.model = MODEL_ID
            metrics.observe_queue_wait(0.001)
            metrics.observe_batch(1)
            http.inc(PATH, "POST", "200")
        app_metrics.flush()
        samples.append(1e6 * (time.thread_time() - started) / repeats)
    return statistics.median(samples)


def interleaved(measure: Measure, rounds: int) -> None:
    """Run ``rounds`` rounds of both sides (alternating which goes first); print the figures."""
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    cpu_ms: dict[str, list[float]] = {side: [] for side in SIDES}
    ratios, cpu_ratios = [], []
    for round_index in range(rounds):
        for side in SIDES if round_index % 2 == 0 else SIDES[::-1]:
            rate, cpu = measure(side)
            rates[side].append(rate)
            cpu_ms[side].append(cpu)
        ratios.append(rates["on"][-1] / rates["off"][-1])
        cpu_ratios.append(cpu_ms["off"][-1] / cpu_ms["on"][-1])
        print(
            f"round {round_index}: on {rates['on'][-1]:.1f} img/s ({cpu_ms['on'][-1]:.3f} CPU "
            f"ms/img), off {rates['off'][-1]:.1f} img/s ({cpu_ms['off'][-1]:.3f} CPU ms/img), "
            f"ratio {ratios[-1]:.3f}",
            flush=True,
        )
    print(
        f"rounds={rounds}: median on {statistics.median(rates['on']):.1f} img/s, off "
        f"{statistics.median(rates['off']):.1f} img/s; CPU per image: on "
        f"{statistics.median(cpu_ms['on']):.3f} ms, off {statistics.median(cpu_ms['off']):.3f} "
        f"ms (cpu_ratio={statistics.median(cpu_ratios):.3f}, off/on)"
    )
    print(f"ratio={statistics.median(ratios):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", action="store_true", help="two gunicorn controllers")
    parser.add_argument("--control", action="store_true", help="in-process, both sides off")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--requests", type=int, default=300, help="per side per round")
    parser.add_argument("--seconds", type=float, default=3.0, help="--servers: per side")
    parser.add_argument("--clients", type=int, default=4, help="--servers: client threads")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--num-train", type=int, default=256)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cnnswarm-bench-") as tmp:
        root = Path(tmp)
        if not args.servers:  # as under gunicorn: before anything imports prometheus_client
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(root / "metrics")
            (root / "metrics").mkdir()
        started = time.perf_counter()
        artefact, uint8_image, image = train_model(root, args.num_train)
        torch.set_num_threads(args.threads)  # train() sets its own thread count
        print(f"trained in {time.perf_counter() - started:.1f}s", flush=True)
        payload = payloads(uint8_image, image)[0]  # multipart PNG, what curl and the CLI send
        if not args.servers:
            print(f"metric calls per predict, alone: {metric_calls_us():.1f} us of CPU")
            measure = in_process(root, artefact, payload, args.requests, control=args.control)
            interleaved(measure, args.rounds)
            return
        with (
            controller(root / "on", args.threads, metrics=True) as on,
            controller(root / "off", args.threads, metrics=False) as off,
        ):
            servers = {"on": on, "off": off}
            for side, (url, _) in servers.items():
                publish(url, root / side, artefact)
                warm_up = KeepAliveClient(url)
                warm_up.latencies("POST", PATH, payload, 50)
                warm_up.close()

            def measure(side: str) -> tuple[float, float]:
                url, pid = servers[side]
                cpu_before = cpu_seconds([pid])
                rate = served_throughput(url, PATH, payload, args.clients, args.seconds)
                cpu = cpu_seconds([pid]) - cpu_before
                return rate, 1e3 * cpu / (rate * args.seconds)

            interleaved(measure, args.rounds)


if __name__ == "__main__":
    main()
