"""The `cnn-swarm` client commands: output and exit codes against the fake controller."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from cnnswarm.cli import build_parser, main
from cnnswarm.progress import ProgressBar, describe, format_table


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_sends_options_and_prints_the_job(fake: Any, capsys: Any) -> None:
    code, out, _ = run(
        capsys, "--url", fake.url, "train", "--dataset", "digits", "--model-type",
        "SmallConvNet", "--model-id", "m-7", "--epochs", "3", "--opt", "lr=0.05",
        "--opt", "batch_size=16", "--example-idxs", "0", "500",
    )  # fmt: skip
    assert code == 0
    assert out.strip() == "job job-1 queued: model m-7"
    assert fake.last("/api/v1/jobs")["json"] == {
        "dataset": "digits",
        "model_type": "SmallConvNet",
        "model_id": "m-7",
        "example_idxs": [0, 500],
        "train_opts": {"lr": 0.05, "batch_size": 16, "num_epochs": 3},
    }


def test_train_wait_shows_progress_and_the_final_accuracy(fake: Any, capsys: Any) -> None:
    code, out, err = run(capsys, "--url", fake.url, "train", "--wait", "--timeout", "30")
    assert code == 0
    assert "job job-1 succeeded: model model-job-1, test accuracy 0.610" in out
    progress_lines = [line for line in err.splitlines() if line.startswith("[")]
    assert "epoch 1/2" in progress_lines[0] and " 25%" in progress_lines[0]
    assert "loss 1.2000" in progress_lines[-1] and "acc 0.610" in progress_lines[-1]
    assert progress_lines[-1].endswith("succeeded")


def test_server_error_prints_its_message_and_exits_1(fake: Any, capsys: Any) -> None:
    code, out, err = run(capsys, "--url", fake.url, "train", "--opt", "bogus=1")
    assert code == 1
    assert out == ""
    assert "cnn-swarm: 400 InvalidInputArg: unknown train option 'bogus'" in err
    assert "field: train_opts.bogus" in err
    code, _, err = run(capsys, "--url", fake.url, "job", "missing")
    assert code == 1 and "404 NotFound: no job 'missing'" in err


def test_token_flag_and_environment(fake_with_token: Any, capsys: Any, monkeypatch: Any) -> None:
    code, _, err = run(capsys, "--url", fake_with_token.url, "jobs")
    assert code == 1 and "401 Unauthorized" in err
    monkeypatch.setenv("CNN_SWARM_API_TOKEN", "s3cret")
    monkeypatch.setenv("CNN_SWARM_URL", fake_with_token.url)
    code, out, _ = run(capsys, "jobs")
    assert code == 0 and out.startswith("ID")


def test_jobs_job_and_cancel(fake: Any, capsys: Any) -> None:
    run(capsys, "--url", fake.url, "train", "--model-id", "m-1")
    code, out, _ = run(capsys, "--url", fake.url, "jobs", "--state", "queued")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["ID", "STATE", "MODEL", "DATASET", "TYPE", "PROGRESS", "EPOCH",
                              "ATTEMPT", "TRAINER"]  # fmt: skip
    assert row.split()[:5] == ["job-1", "queued", "m-1", "cifar10", "ResNet8"]
    code, out, _ = run(capsys, "--url", fake.url, "job", "job-1")  # the fake is now running
    assert code == 0 and "state: running" in out and "trainer: http://127.0.0.1:1" in out
    code, out, _ = run(capsys, "--url", fake.url, "cancel", "job-1")
    assert code == 0 and out.strip() == "job job-1: cancelled"


def test_job_shows_metrics_table(fake: Any, capsys: Any) -> None:
    run(capsys, "--url", fake.url, "train")
    for _ in range(2):
        run(capsys, "--url", fake.url, "job", "job-1")
    code, out, _ = run(capsys, "--url", fake.url, "job", "job-1")
    assert code == 0 and "state: succeeded" in out
    table = out.split("\n\n")[1].splitlines()
    assert table[0].split()[:3] == ["EPOCH", "TRAIN_LOSS", "TRAIN_ACCURACY"]
    assert table[2].split()[:3] == ["2", "1.2", "0.58"]


def test_predict_prints_top_k_per_file(fake: Any, capsys: Any, tmp_path: Path) -> None:
    images = []
    for name in ("a.png", "b.jpg"):
        (tmp_path / name).write_bytes(b"image " + name.encode())
        images.append(str(tmp_path / name))
    code, out, _ = run(capsys, "--url", fake.url, "predict", "prod", *images, "--top-k", "2")
    assert code == 0
    lines = [line.split() for line in out.splitlines()]
    assert lines[0] == ["FILE", "RANK", "CLASS", "INDEX", "PROBABILITY"]
    assert lines[1:] == [
        ["a.png", "1", "plane", "0", "0.7000"],
        ["2", "car", "1", "0.3500"],
        ["b.jpg", "1", "car", "1", "0.7000"],
        ["2", "bird", "2", "0.3500"],
    ]
    code, _, err = run(capsys, "--url", fake.url, "predict", "prod", str(tmp_path / "none.png"))
    assert code == 1 and "none.png" in err


def test_datasets_upload_and_list(fake: Any, capsys: Any, tmp_path: Path) -> None:
    archive = tmp_path / "pets.npz"
    archive.write_bytes(b"npz")
    code, out, _ = run(capsys, "--url", fake.url, "datasets", "upload", str(archive))
    assert code == 0
    assert out.splitlines()[1].split() == ["ds-pets", "pets", "2", "8", "2", "3x16x16", "-"]
    code, out, _ = run(capsys, "--url", fake.url, "datasets")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == ["ID", "cifar10", "digits"]
    code, out, _ = run(capsys, "--url", fake.url, "--json", "datasets")
    assert code == 0 and json.loads(out)[1]["num_train"] == 1437


def test_models_status_and_alias(fake: Any, capsys: Any) -> None:
    code, out, _ = run(capsys, "--url", fake.url, "models")
    created = datetime.fromtimestamp(1700000000.5).strftime("%Y-%m-%d %H:%M:%S")
    assert code == 0 and out.splitlines()[1].split() == [
        "m-1", "ResNet8", "cifar10", "0.61", "prod", *created.split(),
    ]  # fmt: skip
    code, out, _ = run(capsys, "--url", fake.url, "status")
    assert code == 0 and "queued: 2" in out and "job_counts: queued 2, running 1" in out
    assert out.splitlines()[-1].split() == ["http://10.0.0.2:48516/", "t-1", "0", "1", "j-1"]
    code, out, _ = run(capsys, "--url", fake.url, "alias", "prod", "m-1")
    assert code == 0 and out.strip() == "prod -> m-1"


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
