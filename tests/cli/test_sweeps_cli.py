"""`cnn-swarm sweep` / `sweeps` and the client's sweep calls against the real controller app
(``LiveController``); a driver thread plays the scheduler's leader round and the trainers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cnnswarm.cli import main
from cnnswarm.client import Client
from sweep_support import succeed


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(autouse=True)
def no_client_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CNN_SWARM_URL", "CNN_SWARM_API_TOKEN", "CNN_SWARM_API_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def space_file(tmp_path: Path) -> Path:
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"lr": {"float": [0.001, 0.3], "log": True}}))
    return path


@pytest.fixture
def driven(controller: Any) -> Iterator[Any]:
    """The controller with a thread that ticks its scheduler and finishes every live trial
    (test accuracy: the trial's lr, so the largest lr wins)."""
    stop = threading.Event()
    context = controller.context

    def drive() -> None:
        while not stop.wait(0.05):
            context.scheduler.tick()
            for sweep in context.stores.sweeps.open_sweeps():
                for trial in context.stores.sweeps.trials([sweep.id])[sweep.id]:
                    if not trial.job.state.is_final:
                        succeed(context, trial.job.id, [trial.params["lr"]])

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    try:
        yield controller
    finally:
        stop.set()
        thread.join(timeout=10)


def test_sweep_wait_shows_the_leaderboard_to_the_end(
    driven: Any, space_file: Path, capsys: Any
) -> None:
    code, out, err = run(
        capsys, "--url", driven.url, "sweep", "--dataset", "digits", "--space", str(space_file),
        "--trials", "3", "--parallel", "1", "--sampler", "random", "--seed", "1", "--wait",
    )  # fmt: skip
    assert code == 0, (out, err)
    final = out.split("sweep ")[-1]
    assert " succeeded (3 succeeded)" in final
    header, *rows = final.splitlines()[1:]
    assert header.split() == ["TRIAL", "STATE", "TEST_ACCURACY", "EPOCHS", "LR", "JOB"]
    values = [float(row.split()[2]) for row in rows]
    assert len(values) == 3 and values == sorted(values, reverse=True)  # best first
    (sweep,) = Client(driven.url).list_sweeps()
    assert f"best: trial {sweep['best_trial']['number']}" in final
    assert f"{sweep['id']}-best" in err


def test_sweeps_sweep_show_and_cancel(controller: Any, space_file: Path, capsys: Any) -> None:
    url = controller.url
    code, out, _ = run(capsys, "--url", url, "sweep", "--dataset", "digits", "--space",
                       str(space_file), "--trials", "4")  # fmt: skip
    assert code == 0
    sweep_id = out.split()[1]
    assert out.strip() == f"sweep {sweep_id} running: 4 trials"
    controller.context.scheduler.tick()
    code, out, _ = run(capsys, "--url", url, "sweeps")
    assert code == 0
    assert out.splitlines()[1].split() == [sweep_id, "running", "digits", "tpe", "0/4",
                                           "test_accuracy", "-"]  # fmt: skip
    code, out, _ = run(capsys, "--url", url, "sweep", sweep_id)
    assert code == 0 and out.startswith(f"sweep {sweep_id} running (2 queued)")
    code, out, _ = run(capsys, "--url", url, "sweep", sweep_id, "--cancel")
    assert code == 0 and out.startswith(f"sweep {sweep_id} cancelled")
    assert run(capsys, "--url", url, "sweep")[0] == 2  # neither an id nor --space
    code, _, err = run(capsys, "--url", url, "sweep", "--dataset", "digits", "--space",
                       str(space_file), "--trials", "0")  # fmt: skip
    assert code == 1 and "max_trials" in err


def test_client_sweep_calls(controller: Any) -> None:
    client = Client(controller.url)
    space = {"batch_size": {"choice": [16, 32]}}
    first = client.submit_sweep("digits", space, sampler="grid", idempotency_key="k-1")
    again = client.submit_sweep("digits", space, sampler="grid", idempotency_key="k-1")
    assert first["id"] == again["id"] and first["max_trials"] == 2
    controller.context.scheduler.tick()
    assert len(client.get_sweep(first["id"])["trials"]) == 2
    assert client.cancel_sweep(first["id"])["state"] == "cancelled"
    assert client.wait_for_sweep(first["id"], timeout=5)["state"] == "cancelled"
    assert [s["id"] for s in client.list_sweeps()] == [first["id"]]
