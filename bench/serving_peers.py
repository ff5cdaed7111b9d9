"""Predict under load, side by side: cnn-swarm against TorchServe and LitServe (issue 10).

One ResNet8 trained here (``digits_rgb32``, ``tests/real_images.py``: real digits over real
photographs, 3x32x32) is imported into a real cnn-swarm (``cnn-swarm up --trainers 0``, port 0,
its defaults) and exported by the controller's own route
(``GET /api/v1/models/<id>/torchscript``, frozen TorchScript) for the peers. TorchServe and
LitServe run from a separate venv (``--peers-venv``, made with pip on first use; Java 17 and wrk
come from Debian and are installed with apt-get when missing and root). Each peer runs 2 workers
with 1 torch thread; TorchServe batches up to 16 with a 5 ms delay (the issue's set-up).

Every server gets the same request: JSON ``{"instances": [one base64 32x32 PNG]}``, answered
with the top 3 classes (the peers decode, convert, scale and normalize as cnn-swarm does). wrk
drives each for ``--seconds`` per point at each concurrency, servers interleaved within each of
``--rounds`` rounds, and the median of the rounds is printed. The machine is shared (2 cores,
other work running), so absolute figures move from run to run; the interleaving keeps the
comparison fair, not the numbers steady. The column ``CPU ms/answer`` (user + system CPU time
of all the server's processes during the point, per 2xx answer) is the steadier figure there:
other work slows a server down but hardly changes what each answer costs it.

Also printed: the raw in-process forward limits of the exported model (1 thread batch 1, 1
thread batch 8, 2 threads batch 16; forward only), and the controller's memory with 10 cached
models (10 imports of the model, each predicted from 20 fresh connections so that every worker
loads it; RSS of the gunicorn master and each worker, summed, and PSS, which counts pages shared
after the fork once). Last line:

    ratio=<cnn-swarm req/s / best peer req/s at c=32>

where req/s counts 2xx answers only (wrk's own Requests/sec counts a quick 503 as throughput).

Run: ``.venv/bin/python bench/serving_peers.py`` (about 12 minutes: 3 servers x 4
concurrencies x 3 rounds x 6 s, plus set-up); quick: ``--rounds 1 --seconds 2``. Everything it
starts runs in its own process group and is killed in ``finally``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
CNN_SWARM = Path(sys.executable).parent / "cnn-swarm"
DEFAULT_PEERS_VENV = Path.home() / ".cache" / "cnnswarm-peers"
PEER_PACKAGES = ["torch==2.13.0", "torchserve==0.12.0", "torch-model-archiver==0.12.0"]
PEER_PACKAGES += ["litserve", "numpy", "pillow"]
MODEL_ID = "bench-m0"
CACHED_MODELS = 10
TOP_K = 3
PEERS = ("TorchServe", "LitServe")


# -- tools and the peers' venv --------------------------------------------------------------------


def ensure_debian_tools() -> None:
    """wrk and Java 17 (TorchServe's frontend), from Debian when missing and we are root."""
    missing = [pkg for tool, pkg in (("wrk", "wrk"), ("java", "openjdk-17-jre-headless"))
               if shutil.which(tool) is None]  # fmt: skip
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"install {' '.join(missing)} (apt-get) first, or run as root")
    subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, env=env)


def ensure_peers_venv(venv: Path) -> Path:
    """A venv with TorchServe, torch-model-archiver and LitServe (pip; made once); its python."""
    python = venv / "bin" / "python"
    if not (venv / "bin" / "torchserve").exists() or not (venv / "bin" / "litserve").exists():
        print(f"installing the peers into {venv} (pip) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        subprocess.run([sys.executable, "-m", "venv", "--upgrade-deps", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    return python


# -- the model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchModel:
    """A trained cnn-swarm model file, one test image as PNG, and its normalization."""

    model_file: bytes
    png: bytes
    mean: tuple[float, ...]
    std: tuple[float, ...]


def bench_model(epochs: int, model_file: Path | None) -> BenchModel:
    """ResNet8 trained in this process on digits_rgb32 (the tests' quick options), or the
    given cnn-swarm model file (a 3x32x32 model); the request image is a digits_rgb32 one."""
    sys.path.insert(0, str(TESTS))
    from PIL import Image

    from cnnswarm.ml.artifact import artifact_from_bytes, artifact_to_bytes
    from cnnswarm.ml.train import train
    from cnnswarm.ml.train_options import TrainOptions
    from real_images import QUICK_OPTS, digits_rgb32

    dataset = digits_rgb32(test=1)
    if model_file is None:
        opts = TrainOptions.from_dict({**QUICK_OPTS, "num_epochs": epochs}, model_type="ResNet8")
        result = train("ResNet8", digits_rgb32(), opts)
        accuracy = result.metrics[-1].get("test_accuracy") if result.metrics else None
        print(f"trained ResNet8 on digits_rgb32, {epochs} epoch(s): test_accuracy {accuracy}")
        data = artifact_to_bytes(result.artifact)
    else:
        data = model_file.read_bytes()
    prep = artifact_from_bytes(data).preprocessing
    png = io.BytesIO()
    Image.fromarray(dataset.x_test[0].transpose(1, 2, 0)).save(png, format="PNG")
    return BenchModel(data, png.getvalue(), tuple(prep["mean"]), tuple(prep["std"]))


# -- processes ------------------------------------------------------------------------------------


def free_port() -> int:
    """An ephemeral loopback port that was free a moment ago (for servers that cannot take 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Processes:
    """Servers started in their own process groups; ``kill_all`` ends every group."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, command: list[str], env: dict[str, str], cwd: Path) -> None:
        with open(self.logs / f"{name}.log", "wb") as log:  # the child keeps its descriptor
            process = subprocess.Popen(
                command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.started.append((name, process))

    def check_alive(self) -> None:
        for name, process in self.started:
            if process.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")

    def kill_all(self) -> None:
        for _, process in self.started:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, process in self.started:
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            with suppress(ProcessLookupError):  # the group may outlive its leader (java, workers)
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_for(check: Callable[[], bool], seconds: float, what: str, procs: Processes) -> None:
    """Poll ``check`` until it holds; RuntimeError after ``seconds`` or when a server died."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {seconds:.0f} s")


# -- the servers ----------------------------------------------------------------------------------


def start_cnn_swarm(procs: Processes, work: Path) -> str:
    """``cnn-swarm up --trainers 0`` on an ephemeral port; its URL."""
    home, url_file = work / "home", work / "controller.url"
    env = dict(os.environ, HOME_DIR=str(home), CNN_SWARM_API_TOKEN="")
    env["PREDICT_CACHE_MODELS"] = str(CACHED_MODELS)  # only so the RSS figure holds 10 models
    command = [str(CNN_SWARM), "up", "--trainers", "0", "--port", "0", "--home", str(home)]
    procs.start("cnn-swarm", [*command, "--url-file", str(url_file)], env, work)
    wait_for(url_file.exists, 90, "cnn-swarm up", procs)
    url = url_file.read_text().strip()
    wait_for(lambda: requests.get(f"{url}/readyz", timeout=2).ok, 60, "the controller", procs)
    return url


def import_models(url: str, model: BenchModel, count: int) -> None:
    """The model imported ``count`` times (ids bench-m0 ...), as a user would upload it; an
    earlier run's model of the same id is deleted first."""
    for index in range(count):
        requests.delete(f"{url}/api/v1/models/bench-m{index}", timeout=30)
        files = {"file": ("model.pth", model.model_file)}
        answer = requests.post(
            f"{url}/api/v1/models", files=files, data={"id": f"bench-m{index}"}, timeout=120
        )
        if answer.status_code != 201:
            raise RuntimeError(f"import answered {answer.status_code}: {answer.text[:300]}")


# The peers' code, written next to the exported model and run by the peers' python. Preprocessing
# is cnn-swarm's: decode, convert to RGB, resize (bilinear) to the model's size, /255, normalize.
PEER_COMMON = """
import base64, io, json
import numpy as np
import torch
from PIL import Image

MEAN = np.array({mean!r}, np.float32).reshape(-1, 1, 1)
STD = np.array({std!r}, np.float32).reshape(-1, 1, 1)


def image_tensor(b64):
    image = Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")
    if image.size != ({size}, {size}):
        image = image.resize(({size}, {size}), Image.Resampling.BILINEAR)
    array = np.asarray(image, np.float32).transpose(2, 0, 1) / 255.0
    return torch.from_numpy((array - MEAN) / STD)


def top_k(logits):
    probs = torch.softmax(logits.float(), dim=1)
    values, indices = probs.topk({top_k}, dim=1)
    out = []
    for row_values, row_indices in zip(values.tolist(), indices.tolist()):
        ranked = [dict(class_idx=i, probability=p) for p, i in zip(row_values, row_indices)]
        out.append(dict(ranked[0], top_k=ranked))
    return out
"""

TORCHSERVE_HANDLER = """
from ts.torch_handler.base_handler import BaseHandler


class Handler(BaseHandler):
    def initialize(self, context):
        torch.set_num_threads(1)
        super().initialize(context)

    def preprocess(self, data):
        tensors, self.counts = [], []
        for row in data:
            body = row.get("body") or row.get("data")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            images = [image_tensor(item) for item in body["instances"]]
            self.counts.append(len(images))
            tensors += images
        return torch.stack(tensors)

    def inference(self, inputs):
        with torch.inference_mode():
            return self.model(inputs)

    def postprocess(self, logits):
        predictions, answers = top_k(logits), []
        for count in self.counts:
            answers.append(dict(predictions=predictions[:count]))
            predictions = predictions[count:]
        return answers
"""

LITSERVE_APP = """
import sys
import litserve as ls


class PeerAPI(ls.LitAPI):
    def setup(self, device):
        torch.set_num_threads(1)
        self.model = torch.jit.load(sys.argv[1]).eval()

    def decode_request(self, request):
        return torch.stack([image_tensor(item) for item in request["instances"]])

    def predict(self, inputs):
        with torch.inference_mode():
            return self.model(inputs)

    def encode_response(self, logits):
        return dict(predictions=top_k(logits))


if __name__ == "__main__":
    server = ls.LitServer(PeerAPI(), accelerator="cpu", workers_per_device=2, timeout=30)
    server.run(host="127.0.0.1", port=int(sys.argv[2]), generate_client_file=False)
"""


# TorchServe works in (and removes) a folder named after the model in the system's temp folder:
# a name no one else uses there (named "m", it removed /tmp/m and whatever was in it).
TORCHSERVE_MODEL = "cnnswarm-bench-model"


def start_torchserve(procs: Processes, python: Path, work: Path, common: str) -> str:
    """TorchServe: 2 workers, 1 torch thread each, batches up to 16 with a 5 ms delay."""
    store = work / "torchserve"
    store.mkdir()
    (store / "handler.py").write_text(common + TORCHSERVE_HANDLER)
    bindir = python.parent
    subprocess.run(
        [str(bindir / "torch-model-archiver"), "--model-name", TORCHSERVE_MODEL, "--version", "1",
         "--serialized-file", str(work / "model.pt"), "--handler", str(store / "handler.py"),
         "--export-path", str(store), "-f"],
        check=True,
    )  # fmt: skip
    inference, management, metrics = free_port(), free_port(), free_port()
    model_config = {
        TORCHSERVE_MODEL: {
            "1": {"defaultVersion": True, "marName": f"{TORCHSERVE_MODEL}.mar",
                  "minWorkers": 2, "maxWorkers": 2, "batchSize": 16, "maxBatchDelay": 5},
        }
    }  # fmt: skip
    (store / "config.properties").write_text(
        f"inference_address=http://127.0.0.1:{inference}\n"
        f"management_address=http://127.0.0.1:{management}\n"
        f"metrics_address=http://127.0.0.1:{metrics}\n"
        f"disable_token_authorization=true\nmodel_store={store}\n"
        f"load_models={TORCHSERVE_MODEL}.mar\n"
        f"models={json.dumps(model_config)}\n"
    )
    command = [str(bindir / "torchserve"), "--start", "--foreground", "--ncs", "--ts-config",
               str(store / "config.properties"), "--model-store", str(store)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PATH=f"{bindir}:{os.environ['PATH']}")
    procs.start("torchserve", command, env, store)
    return f"http://127.0.0.1:{inference}/predictions/{TORCHSERVE_MODEL}"


def start_litserve(procs: Processes, python: Path, work: Path, common: str) -> str:
    """LitServe: 2 workers, 1 torch thread each (no batching, as in the issue)."""
    app = work / "lit_app.py"
    app.write_text(common + LITSERVE_APP)
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs.start("litserve", [str(python), str(app), str(work / "model.pt"), str(port)], env, work)
    return f"http://127.0.0.1:{port}/predict"


def top_class(url: str, body: bytes) -> int:
    """The top class a server answers for the bench's request (raises unless 200)."""
    answer = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=10)
    answer.raise_for_status()
    return int(answer.json()["predictions"][0]["class_idx"])


# -- load -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One wrk run: answers per second (2xx only: a fast 503 is no throughput), latency
    percentiles over all answers, and failures."""

    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    cpu_ms: float = float("nan")  # the server's CPU time (all its processes) per 2xx answer


def _ms(text: str, label: str) -> float:
    found = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", text)
    if found is None:
        return float("nan")
    return float(found.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[found.group(2)]


def run_wrk(url: str, concurrency: int, seconds: float, script: Path, roots: list[int]) -> Point:
    """wrk (1 thread, ``concurrency`` keep-alive connections) against ``url``; the CPU time that
    the processes under ``roots`` spent, per 2xx answer."""
    cpu_before = cpu_seconds(roots)
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s"]
    out = subprocess.run(
        [*command, "--latency", "-s", str(script), url], capture_output=True, text=True
    ).stdout
    cpu_spent = cpu_seconds(roots) - cpu_before
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = int(non_2xx.group(1)) if non_2xx else 0
    rps, answered = 0.0, 0
    if done:
        unit = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[done.group(3)]
        answered = int(done.group(1)) - failed
        rps = answered / (float(done.group(2)) * unit)
    return Point(
        rps=rps,
        p50_ms=_ms(out, "50%"),
        p99_ms=_ms(out, "99%"),
        non_2xx=failed,
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
        cpu_ms=1000 * cpu_spent / answered if answered else float("nan"),
    )


def median_point(points: list[Point]) -> Point:
    return Point(
        rps=statistics.median(p.rps for p in points),
        p50_ms=statistics.median(p.p50_ms for p in points),
        p99_ms=statistics.median(p.p99_ms for p in points),
        non_2xx=int(statistics.median(p.non_2xx for p in points)),
        socket_errors=int(statistics.median(p.socket_errors for p in points)),
        cpu_ms=statistics.median(p.cpu_ms for p in points),
    )


def raw_limits(model_path: Path, seconds: float) -> dict[str, float]:
    """Images/s of the exported model's forward pass alone, in this process."""
    import torch

    model = torch.jit.load(str(model_path)).eval()  # type: ignore[no-untyped-call]
    limits = {}
    for threads, batch in ((1, 1), (1, 8), (2, 16)):
        torch.set_num_threads(threads)
        inputs = torch.randn(batch, 3, 32, 32)
        with torch.inference_mode():
            for _ in range(20):
                model(inputs)
            images, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                model(inputs)
                images += batch
        limits[f"{threads} thread(s), batch {batch}"] = images / (time.perf_counter() - start)
    return limits


# -- controller memory ----------------------------------------------------------------------------


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process, from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        parents[int(stat.parent.name)] = int(text.rsplit(")", 1)[1].split()[1])
    return parents


def descendants(roots: list[int]) -> list[int]:
    """``roots`` and every process below them."""
    parents = _parents()
    found: list[int] = []
    todo = list(roots)
    while todo:
        parent = todo.pop()
        if parent in found:  # a root may also be another root's child (gunicorn's workers)
            continue
        found.append(parent)
        todo += [pid for pid, ppid in parents.items() if ppid == parent]
    return found


def cpu_seconds(roots: list[int]) -> float:
    """User + system CPU seconds of ``roots`` and their descendants (living ones)."""
    total = 0
    for pid in descendants(roots):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def listening_pids(url: str) -> list[int]:
    """The processes listening on ``url``'s port (``ss``), for servers this run did not start."""
    port = url.rsplit(":", 1)[1].split("/")[0]
    out = subprocess.run(
        ["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True
    ).stdout
    return sorted({int(pid) for pid in re.findall(r"pid=(\d+)", out)})


def _kib(path: Path, field: str) -> int:
    found = re.search(rf"^{field}:\s+(\d+) kB", path.read_text(), re.MULTILINE)
    return int(found.group(1)) if found else 0


def controller_memory(up_pid: int) -> str:
    """RSS and PSS summed over the controller's gunicorn master and workers (the children of
    ``cnn-swarm up`` and theirs; with no trainers, that is the controller), and RSS each."""
    pids = descendants([up_pid])[1:]
    rss = [_kib(Path(f"/proc/{pid}/status"), "VmRSS") / 1024 for pid in pids]
    pss = sum(_kib(Path(f"/proc/{pid}/smaps_rollup"), "Pss") for pid in pids) / 1024
    each = " + ".join(f"{mb:.0f}" for mb in rss)
    return f"RSS {sum(rss):.0f} MB ({each}, {len(pids)} processes), PSS {pss:.0f} MB"


# -- the run --------------------------------------------------------------------------------------


def print_table(results: dict[tuple[str, int], Point], servers: list[str], conc: list[int]) -> None:
    print(
        "\n| server | c | 2xx req/s | p50 ms | p99 ms | non-2xx | socket errors | CPU ms/answer |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in servers:
        for c in conc:
            r = results[(name, c)]
            print(f"| {name} | {c} | {r.rps:.0f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | "
                  f"{r.non_2xx} | {r.socket_errors} | {r.cpu_ms:.1f} |")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--seconds", type=int, default=6, help="wrk seconds per point (6)")
    parser.add_argument("--concurrency", default="1,8,32,64", help="wrk connections per point")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs (default 2)")
    parser.add_argument("--model-file", type=Path, help="serve this cnn-swarm model file")
    parser.add_argument("--peers-venv", type=Path, default=DEFAULT_PEERS_VENV)
    parser.add_argument("--raw-seconds", type=float, default=2.0, help="per raw-limit figure")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and logs")
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="another cnn-swarm controller already running (a candidate pipeline): the model is "
        "imported into it and it is loaded side by side with the others",
    )
    args = parser.parse_args()
    # SIGTERM ends the run through ``finally`` (which kills the servers), as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    concurrencies = [int(c) for c in args.concurrency.split(",")]

    ensure_debian_tools()
    peers_python = ensure_peers_venv(args.peers_venv)
    work = Path(tempfile.mkdtemp(prefix="serving-peers-"))
    procs = Processes(work)
    try:
        model = bench_model(args.epochs, args.model_file)
        url = start_cnn_swarm(procs, work)
        import_models(url, model, CACHED_MODELS)
        export = requests.get(f"{url}/api/v1/models/{MODEL_ID}/torchscript", timeout=120)
        export.raise_for_status()
        (work / "model.pt").write_bytes(export.content)
        common = PEER_COMMON.format(mean=tuple(model.mean), std=tuple(model.std), size=32,
                                    top_k=TOP_K)  # fmt: skip
        servers = {
            "cnn-swarm": f"{url}/api/v1/models/{MODEL_ID}/predict?top_k={TOP_K}",
            "TorchServe": start_torchserve(procs, peers_python, work, common),
            "LitServe": start_litserve(procs, peers_python, work, common),
        }
        roots = {
            name: [process.pid] for name, (_, process) in zip(servers, procs.started, strict=True)
        }
        for name, other_url in (item.split("=", 1) for item in args.also):
            import_models(other_url, model, 1)
            servers[name] = f"{other_url}/api/v1/models/{MODEL_ID}/predict?top_k={TOP_K}"
            roots[name] = listening_pids(other_url)
        body = json.dumps({"instances": [base64.b64encode(model.png).decode()]}).encode()
        (work / "body.json").write_bytes(body)
        script = work / "post.lua"
        script.write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f'local f = io.open("{work / "body.json"}", "rb")\nwrk.body = f:read("*a")\nf:close()\n'
        )
        answers = {}
        for name, server_url in servers.items():
            wait_for(lambda u=server_url: top_class(u, body) >= 0, 180, name, procs)  # type: ignore[misc]
            answers[name] = top_class(server_url, body)
        print(f"top class per server (must agree): {answers}", flush=True)
        if len(set(answers.values())) != 1:
            raise RuntimeError("the servers disagree on the top class: not the same model")

        runs: dict[tuple[str, int], list[Point]] = {}
        for c in concurrencies:
            for round_index in range(args.rounds):
                for name, server_url in servers.items():
                    procs.check_alive()
                    point = run_wrk(server_url, c, args.seconds, script, roots[name])
                    runs.setdefault((name, c), []).append(point)
                    print(f"round {round_index + 1} c={c} {name}: {point}", flush=True)
        results = {key: median_point(points) for key, points in runs.items()}

        # Each model from 20 fresh connections, so that every gunicorn worker caches all 10.
        for index in range(CACHED_MODELS):
            for _ in range(20):
                top_class(f"{url}/api/v1/models/bench-m{index}/predict?top_k={TOP_K}", body)
        memory = controller_memory(procs.started[0][1].pid)
        limits = raw_limits(work / "model.pt", args.raw_seconds)
    finally:
        procs.kill_all()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.rounds} interleaved round(s) of {args.seconds} s per point; medians.")
    print_table(results, list(servers), concurrencies)
    print("\nraw in-process forward of the exported model:")
    for label, rate in limits.items():
        print(f"  {label}: {rate:.0f} img/s")
    print(f"controller memory with {CACHED_MODELS} cached models: {memory}")
    c_ratio = 32 if 32 in concurrencies else concurrencies[-1]
    best_peer = max(results[(name, c_ratio)].rps for name in PEERS)
    for name in args.also:  # candidates first, so the last line stays cnn-swarm's
        name = name.split("=", 1)[0]
        print(f"{name}: ratio={results[(name, c_ratio)].rps / best_peer:.3f}")
    print(f"ratio={results[('cnn-swarm', c_ratio)].rps / best_peer:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
