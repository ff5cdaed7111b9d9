"""The `cnn-swarm` client commands: output and exit codes against the real controller app
(``LiveController`` in conftest.py), with the trainer's side played through its internal routes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from cnnswarm.cli import build_parser, main
from cnnswarm.client import Client
from cnnswarm.progress import ProgressBar, describe, format_table
from support import wait_until


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(autouse=True)
def no_client_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests say where the CLI goes and with what token; the caller's shell does not."""
    for name in ("CNN_SWARM_URL", "CNN_SWARM_API_TOKEN", "CNN_SWARM_API_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)


def test_train_sends_options_and_prints_the_job(controller: Any, capsys: Any) -> None:
    code, out, _ = run(
        capsys, "--url", controller.url, "train", "--dataset", "digits", "--model-type",
        "SmallConvNet", "--model-id", "m-7", "--epochs", "3", "--opt", "lr=0.05",
        "--opt", "batch_size=16", "--opt", "optimizer=sgd", "--example-idxs", "0", "500",
    )  # fmt: skip
    assert code == 0
    (job,) = Client(controller.url).list_jobs()
    assert out.strip() == f"job {job['id']} queued: model m-7"
    assert (job["dataset"], job["model_type"], job["example_idxs"]) == (
        "digits", "SmallConvNet", [0, 500],
    )  # fmt: skip
    opts = job["train_opts"]
    assert (opts["num_epochs"], opts["lr"], opts["batch_size"], opts["optimizer"]) == (
        3, 0.05, 16, "sgd",
    )  # fmt: skip


def test_train_workers_asks_for_a_data_parallel_job(controller: Any, capsys: Any) -> None:
    code, _, _ = run(
        capsys, "--url", controller.url, "train", "--dataset", "digits", "--workers", "3",
        "--min-workers", "2",
    )  # fmt: skip
    assert code == 0
    (job,) = Client(controller.url).list_jobs()
    assert (job["workers"], job["min_workers"]) == (3, 2)


@pytest.fixture
def trainer_thread(controller: Any, trainer: Any, digits_model: Any) -> Iterator[None]:
    """Runs the first job that gets queued, as a trainer would, while the test waits on it."""
    failures: list[BaseException] = []

    def play() -> None:
        try:
            client = Client(controller.url)
            queued = wait_until(lambda: client.list_jobs(state="queued"), 30, what="a job")
            trainer.run(queued[0]["id"], digits_model.file, digits_model.metrics)
        except BaseException as exc:  # reported by the fixture, not lost in the thread
            failures.append(exc)

    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join(timeout=40)
    assert not thread.is_alive() and failures == []


def test_train_wait_shows_progress_and_the_final_accuracy(
    controller: Any, trainer_thread: None, digits_model: Any, capsys: Any
) -> None:
    code, out, err = run(
        capsys, "--url", controller.url, "train", "--dataset", "digits", "--model-id", "m-w",
        "--epochs", "2", "--wait", "--timeout", "30",
    )  # fmt: skip
    assert code == 0
    (job,) = Client(controller.url).list_jobs()
    last = digits_model.metrics[-1]
    accuracy = f"{last['test_accuracy']:.3f}"
    assert out.strip() == f"job {job['id']} succeeded: model m-w, test accuracy {accuracy}"
    assert err.splitlines()[0] == f"job {job['id']}: training model m-w"
    progress_lines = [line for line in err.splitlines() if line.startswith("[")]
    final = progress_lines[-1]
    assert final.startswith("[" + "#" * 24 + "] 100%") and final.endswith("succeeded")
    assert f"loss {last['train_loss']:.4f}" in final and f"acc {accuracy}" in final


def test_server_error_prints_its_message_and_exits_1(controller: Any, capsys: Any) -> None:
    code, out, err = run(
        capsys, "--url", controller.url, "train", "--dataset", "digits", "--opt", "bogus=1"
    )
    assert code == 1
    assert out == ""
    assert err.startswith("cnn-swarm: 400 InvalidInputArg: unknown train_opts key(s): bogus")
    assert "  field: bogus" in err.splitlines()
    code, _, err = run(capsys, "--url", controller.url, "job", "job-missing")
    assert code == 1 and err.startswith("cnn-swarm: 404 NotFound: ")
    assert "job-missing" in err


def test_token_flag_and_environment(
    guarded_controller: Any, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = guarded_controller.url
    code, _, err = run(capsys, "--url", url, "train", "--dataset", "digits")
    assert code == 1 and "401 Unauthorized" in err
    code, out, _ = run(capsys, "--url", url, "--token", "s3cret", "train", "--dataset", "digits")
    assert code == 0 and " queued: model " in out
    monkeypatch.setenv("CNN_SWARM_URL", url)
    monkeypatch.setenv("CNN_SWARM_API_TOKEN", "s3cret")
    code, out, _ = run(capsys, "train", "--dataset", "digits")
    assert code == 0 and " queued: model " in out
    code, _, err = run(capsys, "--token", "wrong", "train", "--dataset", "digits")
    assert code == 1 and "401 Unauthorized" in err  # the flag wins over the environment


def test_a_token_file_works_as_it_does_for_the_servers(
    guarded_controller: Any, capsys: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    token_file = tmp_path / "api_token"
    token_file.write_text("s3cret\n")  # as secrets are usually written: with a newline
    monkeypatch.setenv("CNN_SWARM_URL", guarded_controller.url)
    monkeypatch.setenv("CNN_SWARM_API_TOKEN_FILE", str(token_file))
    code, out, err = run(capsys, "train", "--dataset", "digits", "--model-id", "from-file")
    assert (code, err) == (0, "")
    assert out.strip().endswith("queued: model from-file")
    code, _, err = run(capsys, "alias", "prod", "from-file")
    # Past the token check; refused because the model does not exist yet.
    assert code == 1 and "401" not in err and "field: model_id" in err
    monkeypatch.setenv("CNN_SWARM_API_TOKEN_FILE", str(tmp_path / "missing"))
    code, _, err = run(capsys, "train", "--dataset", "digits")
    assert code == 2 and "CNN_SWARM_API_TOKEN_FILE" in err and "missing" in err


def test_jobs_job_and_cancel(controller: Any, trainer: Any, capsys: Any) -> None:
    run(capsys, "--url", controller.url, "train", "--dataset", "digits", "--model-id", "m-1")
    (job,) = Client(controller.url).list_jobs()
    code, out, _ = run(capsys, "--url", controller.url, "jobs", "--state", "queued")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["ID", "STATE", "MODEL", "DATASET", "TYPE", "PROGRESS", "EPOCH",
                              "ATTEMPT", "TRAINER"]  # fmt: skip
    assert row.split() == [job["id"], "queued", "m-1", "digits", "SmallConvNet", "0%", "0", "0",
                           "-"]  # fmt: skip
    trainer.take(job["id"])
    code, out, _ = run(capsys, "--url", controller.url, "job", job["id"])
    assert code == 0 and "state: running" in out.splitlines() and "trainer: t-1" in out
    code, out, _ = run(capsys, "--url", controller.url, "cancel", job["id"])
    assert code == 0 and out.strip() == f"job {job['id']}: cancelled"
    code, out, _ = run(capsys, "--url", controller.url, "jobs", "--state", "running")
    assert out.splitlines()[1:] == []


def test_job_shows_metrics_table(
    controller: Any, trainer: Any, digits_model: Any, capsys: Any
) -> None:
    run(capsys, "--url", controller.url, "train", "--dataset", "digits", "--model-id", "m-1")
    (job,) = Client(controller.url).list_jobs()
    trainer.run(job["id"], digits_model.file, digits_model.metrics)
    code, out, _ = run(capsys, "--url", controller.url, "job", job["id"])
    assert code == 0 and "state: succeeded" in out.splitlines()
    table = out.split("\n\n")[1].splitlines()
    assert table[0].split() == ["EPOCH", "TRAIN_LOSS", "TRAIN_ACCURACY", "TEST_LOSS",
                                "TEST_ACCURACY", "LR"]  # fmt: skip
    second = digits_model.metrics[1]
    assert table[2].split()[:3] == ["2", f"{second['train_loss']:.4g}",
                                    f"{second['train_accuracy']:.4g}"]  # fmt: skip


def test_predict_prints_top_k_per_file(
    controller: Any, published: str, digit_files: list[tuple[Path, int]], capsys: Any
) -> None:
    paths = [str(path) for path, _ in digit_files[:2]]
    code, out, _ = run(capsys, "--url", controller.url, "predict", "prod", *paths, "--top-k", "2")
    assert code == 0
    lines = [line.split() for line in out.splitlines()]
    assert lines[0] == ["FILE", "RANK", "CLASS", "INDEX", "PROBABILITY"]
    # The table is what the server answered, one row per rank.
    expected = []
    answered = Client(controller.url).predict_images("prod", paths, top_k=2)
    for path, prediction in zip(paths, answered, strict=True):
        for rank, entry in enumerate(prediction["top_k"], start=1):
            name = [Path(path).name] if rank == 1 else []
            cells = [str(rank), entry["class_tag"], str(entry["class_idx"])]
            expected.append([*name, *cells, f"{entry['probability']:.4f}"])
    assert lines[1:] == expected
    assert [row[2] for row in lines[1::2]] == [str(label) for _, label in digit_files[:2]]
    missing = str(Path(paths[0]).with_name("none.png"))
    code, _, err = run(capsys, "--url", controller.url, "predict", "prod", missing)
    assert code == 1 and "none.png" in err


def test_datasets_upload_and_list(controller: Any, pets_zip: Path, capsys: Any) -> None:
    code, out, _ = run(capsys, "--url", controller.url, "datasets", "upload", str(pets_zip))
    assert code == 0
    (record,) = [d for d in Client(controller.url).list_datasets() if not d["builtin"]]
    row = out.splitlines()[1].split()
    assert row == [record["id"], "pets", "2", str(record["num_train"]),
                   str(record["num_test"]), "1x8x8", "-"]  # fmt: skip
    code, out, _ = run(capsys, "--url", controller.url, "datasets")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == [
        "ID", "cifar10", "digits", "synthetic", record["id"],
    ]  # fmt: skip
    code, out, _ = run(capsys, "--url", controller.url, "--json", "datasets")
    assert code == 0 and json.loads(out)[3]["num_train"] == record["num_train"]
    code, out, _ = run(capsys, "--url", controller.url, "datasets", "delete", record["id"])
    assert code == 0 and out.strip() == f"deleted dataset {record['id']}"


def test_models_and_alias(controller: Any, published: str, digits_model: Any, capsys: Any) -> None:
    code, out, _ = run(capsys, "--url", controller.url, "models")
    created = Client(controller.url).get_model("m-1")["created"]
    shown = datetime.fromtimestamp(created).strftime("%Y-%m-%d %H:%M:%S")
    accuracy = f"{digits_model.metrics[-1]['test_accuracy']:.4g}"
    assert code == 0 and out.splitlines()[1].split() == [
        "m-1", "SmallConvNet", "digits", accuracy, "prod", *shown.split(),
    ]  # fmt: skip
    code, out, _ = run(capsys, "--url", controller.url, "alias", "latest", "m-1")
    assert code == 0 and out.strip() == "latest -> m-1"


def test_status_shows_free_slots_of_idle_and_busy_trainers(
    controller: Any, trainer: Any, capsys: Any
) -> None:
    code, out, _ = run(capsys, "--url", controller.url, "status")
    assert code == 0
    assert "job_counts: cancelled 0, failed 0, queued 0, running 0, succeeded 0" in out
    header, row = out.splitlines()[-2:]
    assert header.split() == ["TRAINER", "ID", "FREE", "SLOTS", "RUNNING"]
    assert row.split() == ["http://127.0.0.1:9/", "t-1", "1", "1", "-"]  # idle: one free slot
    job_id = Client(controller.url).submit_job("digits")["id"]
    trainer.take(job_id)
    code, out, _ = run(capsys, "--url", controller.url, "status")
    assert out.splitlines()[-1].split() == ["http://127.0.0.1:9/", "t-1", "0", "1", job_id]


def test_unreachable_server_exits_1_without_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cnnswarm.cli", "--url", "http://127.0.0.1:9", "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("cnn-swarm: cannot reach http://127.0.0.1:9")
    assert "Traceback" not in result.stderr


def test_bad_option_syntax_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["train", "--opt", "no-equals-sign"])
    assert caught.value.code == 2


def test_progress_bar_redraws_in_place_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    bar = ProgressBar(screen, total_epochs=4)
    bar.update({"state": "running", "progress": 0.5, "epoch": 2})
    bar.update({"state": "running", "progress": 0.6, "epoch": 2})
    bar.finish()
    text = screen.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    assert "epoch 2/4" in text and " 60%" in text


def test_describe_and_table_formatting() -> None:
    line = describe({"state": "queued", "progress": 0, "waiting_reason": "no trainer"})
    assert line == "[........................]   0%  queued (no trainer)"
    assert format_table(["A", "LONGER"], [[None, 1.23456], ["xyz", 2]]) == (
        "A    LONGER\n-    1.235\nxyz  2"
    )
