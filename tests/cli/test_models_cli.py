"""`cnn-swarm models import | import-seed | download` against the real controller app.

The app is ``conftest.LiveController`` with a token (the ``guarded_controller`` fixture): the
real ``create_app`` served over HTTP; the CLI runs in-process through ``main``.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from cnnswarm.cli import main
from cnnswarm.ml.artifact import artifact_from_bytes
from cnnswarm.ml.models import needs_calibration
from seed_network import SeedNNConvResNetRGB

TOKEN = "s3cret"  # what guarded_controller demands


@pytest.fixture(autouse=True)
def no_client_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests say where the CLI goes and with what token; the caller's shell does not."""
    for name in ("CNN_SWARM_URL", "CNN_SWARM_API_TOKEN", "CNN_SWARM_API_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def controller(guarded_controller: Any) -> Any:
    return guarded_controller


def run(capsys: pytest.CaptureFixture[str], controller: Any, *argv: str) -> tuple[int, str, str]:
    code = main(["--url", controller.url, "--token", TOKEN, *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_seed_file(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(SeedNNConvResNetRGB().state_dict(), path)
    return path


def test_import_a_seed_file_with_its_dataset_and_rows(
    controller: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write_seed_file(tmp_path / "seed.pth")
    classes = ",".join(f"c{i}" for i in range(10))
    code, out, err = run(
        capsys, controller, "models", "import", str(path), "--id", "s1", "--classes", classes,
        "--dataset", "synthetic", "--example-idxs", "0", "200",
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == (
        "imported s1: NNConvResNetRGB, 10 classes; batch norms recalibrated on 200 training "
        "images of synthetic (rows 0..200)"
    )
    row = controller.context.stores.catalog.get_model("s1")
    assert row["classes"] == classes.split(",") and row["example_idxs"] == [0, 200]

    code, out, err = run(capsys, controller, "models", "import", str(path), "--id", "s1")
    assert code == 1 and "409 Conflict" in err and "already used" in err


def test_import_seed_imports_each_listed_model_and_skips_existing_ids(
    controller: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    home = tmp_path / "seed-home"
    write_seed_file(home / "torch_models" / "m1.pth", seed=1)
    write_seed_file(home / "torch_models" / "m2.pth", seed=2)
    info = {
        "m1": {"model_type": "NNConvResNetRGB", "example_idxs": [0, 100], "train_opts": None,
               "filename": "m1.pth"},
        "m2": {"model_type": "NNConvResNetRGB", "example_idxs": [100, 300], "train_opts": {},
               "filename": "m2.pth"},
        "gone": {"model_type": "NNConvResNetRGB", "example_idxs": None, "filename": "gone.pth"},
    }  # fmt: skip
    (home / "torch_models" / "model_info.json").write_text(json.dumps(info))
    code, _, err = run(
        capsys, controller, "models", "import", str(home / "torch_models" / "m1.pth"),
        "--id", "m1", "--dataset", "synthetic",
    )  # fmt: skip
    assert code == 0, err

    code, out, err = run(
        capsys, controller, "models", "import-seed", str(home), "--dataset", "synthetic"
    )
    assert code == 1  # one entry's file is missing
    assert out.splitlines() == [
        "skipped m1: a model with this id already exists",
        "imported m2: NNConvResNetRGB, 10 classes; batch norms recalibrated on 200 training "
        "images of synthetic (rows 100..300)",
    ]
    assert err.startswith("failed gone: ") and "gone.pth" in err
    assert controller.context.stores.catalog.get_model("m2")["example_idxs"] == [100, 300]

    code, out, _ = run(
        capsys, controller, "models", "import-seed", str(home), "--dataset", "synthetic"
    )
    assert "skipped m2: a model with this id already exists" in out.splitlines()


def test_import_seed_needs_a_model_info_json(
    controller: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, controller, "models", "import-seed", str(tmp_path))
    assert code == 1 and "model_info.json" in err


def test_download_the_file_and_the_torchscript_export(
    controller: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write_seed_file(tmp_path / "seed.pth")
    code, _, err = run(
        capsys, controller, "models", "import", str(path), "--id", "dl",
        "--dataset", "synthetic", "--example-idxs", "0", "200",
    )  # fmt: skip
    assert code == 0, err

    target = tmp_path / "out" / "dl.pth"
    target.parent.mkdir()
    code, out, err = run(capsys, controller, "models", "download", "dl", "-o", str(target))
    assert code == 0, err
    assert out.strip() == f"saved {target} ({target.stat().st_size} bytes)"
    artifact = artifact_from_bytes(target.read_bytes())
    model = artifact.build_model()
    assert not needs_calibration(model)

    exported_path = tmp_path / "out" / "dl.pt"
    code, _, err = run(
        capsys, controller, "models", "download", "dl", "--torchscript", "-o", str(exported_path)
    )
    assert code == 0, err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        exported = torch.jit.load(io.BytesIO(exported_path.read_bytes()))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(exported(x).softmax(1), model(x).softmax(1), atol=1e-5, rtol=0)
    assert sorted(p.name for p in target.parent.iterdir()) == ["dl.pt", "dl.pth"]  # no leftovers

    code, _, err = run(capsys, controller, "models", "download", "nope", "-o", str(target))
    assert code == 1 and "404 NotFound" in err
    assert artifact_from_bytes(target.read_bytes()).classes == artifact.classes  # kept whole
