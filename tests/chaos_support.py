"""Helpers of the chaos tier (``tests/chaos``) and ``bench/chaos.py``.

- ``run_trainer_chaos``: a stream of small training jobs on a real cluster while a killer
  ``kill -9``s a random trainer that is training, and starts a fresh trainer in its place; it
  returns every figure (detection-to-resume, redone work, attempts) and ``check_outcome``
  asserts the guarantees (no job lost, one model per job, contiguous epochs, retry budget).
- ``FakeTrainer``: a stand-in trainer (a tiny HTTP server that accepts ``POST /train`` and
  registers itself by heartbeat) for tests that need a job owned by a known attempt without
  training anything, e.g. to write checkpoints or publish a model by hand.
- ``controller_outage``: ``kill -9`` of the controller, a downtime, a restart, and the checks
  that nothing changed (job list, attempts) and that the trainers re-attached.
- ``publish_model_by_hand``: a tiny model trained in the test process and published through the
  internal routes as a ``FakeTrainer`` (a servable model in seconds, no trainer process).
- ``rss_kib``: a process's resident memory from ``/proc/<pid>/status``.
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from cluster import Cluster, ServerProcess
from cnnswarm.client import Client
from cnnswarm.ml.checkpoint import checkpoint_from_bytes
from support import wait_until

# Timings of the chaos tier: a dead trainer loses its job 3 s after its last heartbeat.
CHAOS_TIMINGS: dict[str, str] = {
    "HEARTBEAT_INTERVAL_S": "0.5",
    "LEASE_TIMEOUT_S": "3",
    "SCHEDULER_INTERVAL_S": "0.25",
}


def rss_kib(pid: int) -> int:
    """``VmRSS`` of process ``pid`` in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def stored_checkpoint_epochs(controller_url: str, job_id: str) -> int:
    """How many finished epochs the job's stored checkpoint holds (0 when it has none)."""
    answer = requests.get(f"{controller_url}/internal/v1/jobs/{job_id}/checkpoint", timeout=30)
    if answer.status_code == 404:
        return 0
    answer.raise_for_status()
    return len(checkpoint_from_bytes(answer.content)["metrics"])


# -- trainer kills ---------------------------------------------------------------------------


@dataclass
class Kill:
    """One ``kill -9`` of a trainer that was training ``job_id``."""

    job_id: str
    attempt: int
    trainer: str
    killed_at: float
    progress_at_kill: float  # the victim's own last progress (0-1), read just before the kill
    checkpoint_epochs: int = -1  # finished epochs in the stored checkpoint after the kill
    redispatched_s: float | None = None  # kill -> running again (attempt + 1) elsewhere
    training_s: float | None = None  # kill -> the new attempt trains past the checkpoint
    new_trainer: str = ""

    def redone_epochs(self, num_epochs: int) -> float:
        """Work lost to this kill, in epochs: reached (at least) minus checkpointed."""
        return max(0.0, self.progress_at_kill * num_epochs - self.checkpoint_epochs)


@dataclass
class ChaosReport:
    """What ``run_trainer_chaos`` did and saw."""

    num_epochs: int
    max_attempts: int
    kills: list[Kill] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # final job JSON by id
    models: list[dict[str, Any]] = field(default_factory=list)
    model_files: dict[str, list[str]] = field(default_factory=dict)  # model id -> file names
    wall_s: float = 0.0

    def figures(self) -> dict[str, Any]:
        """Every figure, as one JSON-able dict."""
        resume = [k.redispatched_s for k in self.kills if k.redispatched_s is not None]
        training = [k.training_s for k in self.kills if k.training_s is not None]
        redone = [k.redone_epochs(self.num_epochs) for k in self.kills]
        states = [job["state"] for job in self.jobs.values()]
        per_job_models: dict[str, int] = {}
        for model in self.models:
            per_job_models[model["job_id"]] = per_job_models.get(model["job_id"], 0) + 1
        kills_per_job: dict[str, int] = {}
        for kill in self.kills:
            kills_per_job[kill.job_id] = kills_per_job.get(kill.job_id, 0) + 1
        extra_requeues = sum(
            max(0, job["attempt"] - 1 - kills_per_job.get(job_id, 0))
            for job_id, job in self.jobs.items()
        )

        def stats(values: list[float]) -> dict[str, float | None]:
            if not values:
                return {"median": None, "max": None}
            return {"median": round(statistics.median(values), 2), "max": round(max(values), 2)}

        return {
            "kills": len(self.kills),
            "jobs": len(self.jobs),
            "succeeded": states.count("succeeded"),
            "lost": sum(1 for s in states if s != "succeeded"),
            "jobs_with_two_models": sum(1 for n in per_job_models.values() if n > 1),
            "model_dirs_with_extra_files": sum(1 for f in self.model_files.values() if len(f) != 1),
            "max_attempt": max((job["attempt"] for job in self.jobs.values()), default=0),
            "requeues_without_a_kill": extra_requeues,
            "kill_to_redispatch_s": stats(resume),
            "kill_to_training_again_s": stats(training),
            "redone_epochs_per_kill": stats(redone),
            "redone_epochs_total": round(sum(redone), 2),
            "wall_s": round(self.wall_s, 1),
        }


def _trainer_status_entry(url: str, job_id: str) -> dict[str, Any] | None:
    try:
        answer = requests.get(f"{url}/status", timeout=2)
        answer.raise_for_status()
    except requests.RequestException:
        return None
    entry = answer.json()["jobs"].get(job_id)
    return entry if isinstance(entry, dict) else None


def run_trainer_chaos(
    cluster: Cluster,
    *,
    kills: int,
    job: dict[str, Any],
    trainers: int = 5,
    max_attempts: int = 10,
    backlog: int = 3,
    kill_every_s: float = 1.5,
    kill_window: tuple[float, float] = (0.05, 0.5),
    seed: int = 0,
    deadline_s: float = 600.0,
    say: Callable[[str], None] = lambda _: None,
) -> ChaosReport:
    """Run ``kills`` trainer kills against a stream of copies of ``job`` (a job request body).

    The cluster must have a live controller started with ``MAX_ATTEMPTS=max_attempts``. Keeps
    ``backlog`` unfinished jobs submitted until the kills are done, then lets every job end.
    A victim is a trainer whose own ``/status`` shows it training a job's current attempt
    past a random point (the attempt's resume point plus a fraction of the whole job drawn from
    ``kill_window``), whose attempt is below ``max_attempts - 1`` (so a kill never spends a
    job's last attempt); at most one kill every ``kill_every_s``. Each victim is replaced by a fresh
    trainer at once (capacity stays). Returns the report; raises AssertionError past
    ``deadline_s``.
    """
    rng = random.Random(seed)
    controller = cluster.controller
    client = controller.client()
    num_epochs = int(job["train_opts"]["num_epochs"])
    report = ChaosReport(num_epochs=num_epochs, max_attempts=max_attempts)
    by_name: dict[str, ServerProcess] = {}
    for server in cluster.start_trainers(trainers):
        by_name[server.name] = server
    started = time.monotonic()
    last_kill = 0.0
    pending: list[Kill] = []  # kills whose job has not trained again yet
    submitted: list[str] = []
    kill_points: dict[tuple[str, int], float] = {}  # (job, attempt) -> progress to kill at

    while True:
        now = time.monotonic()
        if now - started > deadline_s:
            raise AssertionError(f"chaos run past {deadline_s}s: {report.figures()}")
        jobs = {j["id"]: j for j in client.list_jobs() if j["id"] in set(submitted)}
        unfinished = [j for j in jobs.values() if j["state"] in ("queued", "running")]
        if len(report.kills) < kills and len(unfinished) < backlog:
            submitted.append(client.submit_job(**job)["id"])
            continue
        if len(report.kills) >= kills and not unfinished and not pending:
            break
        registered = {t["id"]: t for t in client.list_trainers()}
        # Follow the kills whose job has not resumed yet.
        for kill in list(pending):
            current = jobs[kill.job_id]
            if current["attempt"] > kill.attempt + 1 or current["state"] not in (
                "running",
                "queued",
            ):
                pending.remove(kill)  # killed again or ended before we saw it train
                continue
            if current["state"] == "running" and current["attempt"] == kill.attempt + 1:
                if kill.redispatched_s is None:
                    kill.redispatched_s = time.monotonic() - kill.killed_at
                    kill.new_trainer = current["trainer"]
                trainer = registered.get(current["trainer"])
                entry = trainer and _trainer_status_entry(trainer["url"], kill.job_id)
                resumed_percent = 100 * kill.checkpoint_epochs / num_epochs
                if (
                    entry
                    and entry["attempt"] == current["attempt"]
                    and entry["progress"] > resumed_percent
                ):
                    kill.training_s = time.monotonic() - kill.killed_at
                    pending.remove(kill)
        # Kill a trainer that is training.
        if len(report.kills) < kills and now - last_kill >= kill_every_s:
            candidates = [
                j
                for j in unfinished
                if j["state"] == "running"
                and j["attempt"] < max_attempts - 1
                and j["trainer"] in by_name
                and by_name[j["trainer"]].alive()
                and j["trainer"] in registered
            ]
            rng.shuffle(candidates)
            for candidate in candidates:
                key = (candidate["id"], candidate["attempt"])
                if key not in kill_points:
                    resume = stored_checkpoint_epochs(controller.url, candidate["id"]) / num_epochs
                    kill_points[key] = min(0.95, resume + rng.uniform(*kill_window))
                victim = by_name[candidate["trainer"]]
                entry = _trainer_status_entry(registered[victim.name]["url"], candidate["id"])
                if not entry or entry["attempt"] != candidate["attempt"]:
                    continue
                if not 100 * kill_points[key] <= entry["progress"] < 100:
                    continue  # not far enough yet, or done training (uploading its model)
                if entry["state"] != "running":
                    continue
                victim.kill()
                kill = Kill(
                    job_id=candidate["id"],
                    attempt=candidate["attempt"],
                    trainer=victim.name,
                    killed_at=time.monotonic(),
                    progress_at_kill=entry["progress"] / 100,
                )
                # Nothing can write this job's checkpoint until it is dispatched again.
                kill.checkpoint_epochs = stored_checkpoint_epochs(controller.url, kill.job_id)
                replacement = cluster.start_trainer(wait=False)
                by_name[replacement.name] = replacement
                last_kill = time.monotonic()
                if client.get_job(kill.job_id)["state"] != "running":
                    # Its model was published just before the kill: not a kill during training.
                    say(f"{victim.name} killed just after {kill.job_id} ended; not counted")
                    break
                report.kills.append(kill)
                pending.append(kill)
                say(
                    f"kill {len(report.kills)}/{kills}: {victim.name} running {kill.job_id} "
                    f"attempt {kill.attempt} at {entry['progress']:.0f}% "
                    f"(checkpoint: {kill.checkpoint_epochs} epochs) -> {replacement.name}"
                )
                break
        time.sleep(0.1)

    report.wall_s = time.monotonic() - started
    report.jobs = {job_id: client.get_job(job_id) for job_id in submitted}
    report.models = [m for m in client.list_models() if m.get("job_id") in report.jobs]
    models_root = controller.home / "torch_models"
    for job_json in report.jobs.values():
        folder = models_root / job_json["model_id"]
        report.model_files[job_json["model_id"]] = (
            sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        )
    return report


def check_outcome(report: ChaosReport) -> None:
    """Assert the guarantees of a trainer-kill run (see ``run_trainer_chaos``)."""
    epochs = list(range(1, report.num_epochs + 1))
    assert report.jobs, "no job ran"
    for job_id, job in report.jobs.items():
        # 0 jobs lost: every accepted job succeeded, within its retry budget.
        assert job["state"] == "succeeded", (job_id, job["state"], job["error"])
        assert 1 <= job["attempt"] <= report.max_attempts, job
        kills = sum(1 for k in report.kills if k.job_id == job_id)
        assert job["attempt"] >= 1 + kills, (job_id, job["attempt"], kills)
        # No epoch twice, none missing.
        assert [m["epoch"] for m in job["metrics"]] == epochs, (job_id, job["metrics"])
        # Exactly one published model, from the attempt that won, and one file of it.
        models = [m for m in report.models if m["job_id"] == job_id]
        assert len(models) == 1, (job_id, models)
        assert models[0]["id"] == job["model_id"]
        assert report.model_files[job["model_id"]] == [f"attempt-{job['attempt']}.pth"], (
            job_id,
            report.model_files[job["model_id"]],
        )
    for kill in report.kills:
        # At most one checkpoint interval (an epoch) redone per kill.
        assert kill.checkpoint_epochs >= 0
        assert kill.redone_epochs(report.num_epochs) <= 1.0 + 1e-6, kill
        assert kill.redispatched_s is not None, f"{kill} was never dispatched again"


# -- controller outages ----------------------------------------------------------------------


def _snapshot(client: Client) -> dict[str, dict[str, Any]]:
    return {job["id"]: job for job in client.list_jobs()}


def controller_outage(
    cluster: Cluster,
    client: Client,
    downtime_s: float,
    *,
    until: Callable[[], bool] | None = None,
    until_timeout_s: float = 180.0,
) -> dict[str, float]:
    """Once every running job is training, kill -9 the controller, keep it down ``downtime_s``
    and then, when ``until`` is given, until ``until()`` holds (an outage that lasts until the
    trainers have gone through what a long one puts them through, however long that takes);
    restart it (same port, HOME_DIR and SQLite file); check the job list and attempts, wait for
    the trainers to re-attach.
    Returns the figures (``downtime_s``: how long it was down)."""
    controller = cluster.controller

    def every_running_job_training() -> bool:
        running = [j for j in client.list_jobs() if j["state"] == "running"]
        return bool(running) and all(j["progress"] > 0 for j in running)

    # Not a job still starting (fetching its dataset): the outage is meant to hit training.
    wait_until(every_running_job_training, 60, what="every running job training")
    before = _snapshot(client)
    trainer_names = {t.name for t in cluster.live_trainers()}
    controller.kill()
    killed_at = time.monotonic()
    time.sleep(downtime_s)  # the outage itself, not a wait for a condition
    if until is not None:
        wait_until(until, until_timeout_s, interval=0.2, what="the outage's condition")
    down_s = time.monotonic() - killed_at
    cluster.restart(controller)
    ready_s = time.monotonic() - killed_at
    after = _snapshot(client)
    assert sorted(after) == sorted(before), "the job list changed across the restart"
    for job_id, job in after.items():
        assert job["attempt"] == before[job_id]["attempt"], (job_id, before[job_id], job)
        if before[job_id]["state"] in ("succeeded", "failed", "cancelled"):
            assert job["state"] == before[job_id]["state"]

    def reattached() -> bool:
        trainers = {t["id"]: t for t in client.list_trainers()}
        if not all(
            trainers.get(name, {}).get("state") in ("busy", "idle") for name in trainer_names
        ):
            return False
        for job_id, job in _snapshot(client).items():
            assert job["attempt"] == before[job_id]["attempt"], job  # never requeued
            old = before[job_id]
            # A heartbeat of the same trainer and attempt renewed it with fresh progress.
            if (
                old["state"] == "running"
                and job["state"] == "running"
                and (job["trainer"] != old["trainer"] or job["progress"] <= old["progress"])
            ):
                return False
        return True

    wait_until(reattached, 30, interval=0.1, what="the trainers to re-attach their jobs")
    figures = {
        "downtime_s": round(down_s, 2),
        "kill_to_ready_s": round(ready_s, 2),
        "kill_to_reattached_s": round(time.monotonic() - killed_at, 2),
        "jobs": len(before),
        "running": sum(1 for j in before.values() if j["state"] == "running"),
    }
    return figures


# -- a stand-in trainer ------------------------------------------------------------------------


class FakeTrainer:
    """A trainer that trains nothing: it answers ``POST /train`` with 202 and records the
    dispatch, so the test owns the job's attempt. ``beat()`` registers it (and renews the
    leases of the jobs it was given) through the real heartbeat route."""

    def __init__(self, controller_url: str, trainer_id: str = "fake-trainer") -> None:
        self.controller_url = controller_url.rstrip("/")
        self.trainer_id = trainer_id
        self.dispatches: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path == "/train":
                    owner.dispatches.append(body)
                self.send_response(202)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeTrainer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def beat(self, jobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """One heartbeat (``jobs``: what it claims to run); the controller's answer."""
        body = {"trainer_id": self.trainer_id, "url": self.url, "slots": 1, "jobs": jobs or []}
        answer = requests.post(
            f"{self.controller_url}/internal/v1/heartbeat", json=body, timeout=10
        )
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result

    def wait_dispatch(self, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """The dispatch body of ``job_id`` (heartbeating meanwhile so the scheduler sees it)."""

        def dispatched() -> dict[str, Any] | None:
            body = next((b for b in self.dispatches if b.get("job_id") == job_id), None)
            if body is None:
                self.beat()
            return body

        return wait_until(
            dispatched, timeout, interval=0.1, what=f"job {job_id} dispatched to {self.trainer_id}"
        )


def publish_model_by_hand(tmp_path: Path, controller_url: str, client: Client) -> str:
    """Train a tiny SmallConvNet on ``digits`` here and publish it through the internal routes
    as its (fake) trainer; return its model id (inputs: 1x8x8 examples)."""
    from cnnswarm.ml.artifact import artifact_to_bytes
    from cnnswarm.ml.datasets import load_builtin
    from cnnswarm.ml.train import train

    job = client.submit_job(
        dataset="digits",
        model_type="SmallConvNet",
        example_idxs=[0, 200],
        train_opts={"num_epochs": 1},
    )
    with FakeTrainer(controller_url) as fake:
        attempt = fake.wait_dispatch(job["id"])["attempt"]
    dataset = load_builtin("digits", tmp_path / "data").subset([0, 200])
    result = train("SmallConvNet", dataset, {"num_epochs": 1})
    answer = requests.post(
        f"{controller_url}/internal/v1/jobs/{job['id']}/result",
        params={"attempt": attempt},
        data=artifact_to_bytes(result.artifact),
        timeout=30,
    )
    answer.raise_for_status()
    return str(job["model_id"])
