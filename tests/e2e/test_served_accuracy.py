"""What is served is what was measured, on a real cluster and real images; and eval mode
computes what training measured.

For every model type, a job trains on ``digits_rgb32`` (real scanned digits drawn over real
photographs, 3x32x32, 10 classes; in ``HOME_DIR/torch_data`` as the official CIFAR-10 python
archive) and succeeds. The module trains each type once and checks the results three ways:

- served: the whole test split, predicted through the real HTTP routes in every input form
  (multipart PNG, base64 ``instances``, the seed's ``/get_examples`` + ``/predict``), scores the
  job's final recorded ``test_accuracy`` within 0.01, far above chance. The seed's network goes
  through the seed's own flow (``/train`` with ``example_idxs``, poll ``/status``) and must reach
  0.75 held-out accuracy within 3 epochs (``LEARNS``, ``SEED_TRAIN_OPTS``).
- eval mode: the downloaded model file, in eval mode in this process (running statistics, what
  is served), scores exactly its recorded ``test_accuracy``, which is a real accuracy; and what
  the same weights score with batch statistics (the only mode the seed ever used), within 3
  points.
- a seed file: the seed network's weights without the per-call-site statistics (what a seed
  ``.pth`` holds) predict poorly until recalibrated on the training images, then serve what
  they learned, deterministically.

This is the check that catches a model served differently from how it was evaluated (the
seed's shared batch norm averaged 7 call sites' statistics, and eval mode served at chance
level while it trained to 93 %). The trainings happen once, in the cluster, for all three.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch
from torch import nn

from cluster import Cluster
from cnnswarm.ml.artifact import ModelArtifact, load_artifact
from cnnswarm.ml.calibrate import recalibrate_batch_norms
from cnnswarm.ml.datasets.base import ArrayDataset, normalize
from cnnswarm.ml.models import needs_calibration
from cnnswarm.ml.seed_model import SITE_KEYS
from real_images import QUICK_OPTS, digits_rgb32, write_cifar10_archive
from served import FORMS, served_accuracy
from support import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.xdist_group("served-accuracy"),  # one worker builds the module's cluster
]

CHANCE = 0.1
TOLERANCE = 0.01
SEED_MODEL = "NNConvResNetRGB"
SEED_EPOCHS = 3
# The seed's network with AdamW on batches of 32: 0.83 at epoch 2 and 0.88 at epoch 3 (in-process,
# seed 0), where the seed's SGD needs 8 epochs for 0.93 (0.56 at epoch 6).
# bench/served_accuracy.py keeps the seed's own options.
SEED_TRAIN_OPTS = {
    "num_epochs": SEED_EPOCHS,
    "optimizer": "adamw",
    "lr": 0.001,
    "batch_size": 32,
    "scheduler_mode": "plateau",
    "seed": 0,
}
# Short runs that learn this dataset well (the seed's network: SEED_TRAIN_OPTS). In-process, seed 0:
# ResNet20 records 0.69 after one epoch; ResNet8 0.53 after two, 0.67 after three.
V1_JOBS = {
    "ResNet8": {**QUICK_OPTS, "num_epochs": 3},
    "ResNet20": {**QUICK_OPTS, "num_epochs": 1},
    "SmallConvNet": {**QUICK_OPTS, "num_epochs": 2},
}
# The least test accuracy each type's short run must record.
LEARNS = {SEED_MODEL: 0.75, "ResNet8": 0.6, "ResNet20": 0.6, "SmallConvNet": 0.8}


@dataclass(frozen=True)
class Trained:
    """One model type's finished job and its model file, as the controller serves them."""

    job: dict[str, Any]
    artifact: ModelArtifact

    @property
    def recorded(self) -> float:
        """The final epoch's ``test_accuracy``, as the trainer measured it."""
        return float(self.job["metrics"][-1]["test_accuracy"])


@pytest.fixture(scope="module")
def dataset() -> ArrayDataset:
    return digits_rgb32()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A controller with ``digits_rgb32`` as its CIFAR-10 archive, and two trainers."""
    with Cluster(tmp_path_factory.mktemp("served")) as started:
        controller = started.start_controller()
        write_cifar10_archive(
            digits_rgb32(), controller.home / "torch_data" / "cifar-10-python.tar.gz"
        )
        started.start_trainers(2)
        client = started.client()
        wait_until(lambda: len(client.list_trainers()) == 2, 20, what="two trainers registered")
        yield started


@pytest.fixture(scope="module")
def trained(
    cluster: Cluster, dataset: ArrayDataset, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Trained]:
    """Every model type trained once in the cluster: the seed's network through the seed's
    flow, the others as v1 jobs queued behind it on the second trainer."""
    client = cluster.client()
    url = cluster.controller.url
    seed_body = {
        "model_type": SEED_MODEL,
        "model_id": "seed-net",
        "example_idxs": [0, len(dataset.x_train)],
        "train_opts": SEED_TRAIN_OPTS,
    }
    answer = requests.post(f"{url}/train", json=seed_body, timeout=10)
    assert answer.status_code == 200, answer.text
    seed_job = answer.json()["job_id"]
    v1_jobs = {
        model_type: client.submit_job(
            "cifar10", model_type=model_type, model_id=f"m-{model_type.lower()}", train_opts=opts
        )
        for model_type, opts in V1_JOBS.items()
    }

    def seed_job_complete() -> bool:
        status = requests.get(f"{url}/status", timeout=10).json()
        return any(
            trainer["jobs"].get(seed_job, {}).get("complete") for trainer in status["train_jobs"]
        )

    wait_until(seed_job_complete, 500, interval=0.5, what="the seed job to complete in /status")
    finals = {SEED_MODEL: client.wait_for_job(seed_job, timeout=30)}
    for model_type, job in v1_jobs.items():
        finals[model_type] = client.wait_for_job(job["id"], timeout=300)

    downloads = tmp_path_factory.mktemp("model-files")
    results = {}
    for model_type, final in finals.items():
        assert final["state"] == "succeeded", (model_type, final["error"])
        path = client.download_model(final["model_id"], downloads / f"{model_type}.pth")
        artifact = load_artifact(Path(path))
        assert artifact.model_type == model_type
        assert artifact.metrics == final["metrics"]
        results[model_type] = Trained(final, artifact)
    return results


def _check_served(cluster: Cluster, trained: Trained, dataset: ArrayDataset) -> dict[str, float]:
    model_id = trained.job["model_id"]
    served = {
        form: served_accuracy(cluster.controller.url, model_id, dataset, form) for form in FORMS
    }
    print(f"\n{model_id}: recorded test_accuracy {trained.recorded:.4f}, served {served}")
    for form, accuracy in served.items():
        assert abs(accuracy - trained.recorded) <= TOLERANCE, (form, accuracy, trained.recorded)
        assert accuracy >= 5 * CHANCE, (form, accuracy)
    return served


def test_every_model_type_serves_its_recorded_test_accuracy(
    cluster: Cluster, trained: dict[str, Trained], dataset: ArrayDataset
) -> None:
    assert sorted(trained) == sorted(LEARNS)
    for model_type, result in trained.items():
        served = _check_served(cluster, result, dataset)
        if model_type == SEED_MODEL:
            assert served["seed"] >= 0.8, served  # the seed flow, within SEED_EPOCHS


def _accuracy(model: nn.Module, dataset: ArrayDataset, batch_statistics: bool) -> float:
    """Test-split accuracy in batches of 64, with running or with batch statistics."""
    model = copy.deepcopy(model).eval()
    if batch_statistics:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(dataset.x_test), 64):
            x = normalize(
                torch.from_numpy(dataset.x_test[start : start + 64]), dataset.normalization
            )
            predicted = model(x).argmax(1).numpy()
            correct += int((predicted == dataset.y_test[start : start + 64]).sum())
    return correct / len(dataset.x_test)


@pytest.mark.parametrize("model_type", list(LEARNS))
def test_eval_mode_scores_what_training_measured(
    model_type: str, trained: dict[str, Trained], dataset: ArrayDataset
) -> None:
    result = trained[model_type]
    model = result.artifact.build_model()
    evaluated = _accuracy(model, dataset, batch_statistics=False)
    with_batch_statistics = _accuracy(model, dataset, batch_statistics=True)
    print(
        f"\n{model_type}: recorded {result.recorded:.3f}, eval {evaluated:.3f}, "
        f"batch stats {with_batch_statistics:.3f}"
    )
    assert result.recorded >= LEARNS[model_type]
    assert evaluated == pytest.approx(result.recorded, abs=1e-9)
    assert abs(evaluated - with_batch_statistics) <= 0.03


def test_a_seed_file_recalibrated_on_its_training_data_serves_what_it_learned(
    trained: dict[str, Trained], dataset: ArrayDataset
) -> None:
    result = trained[SEED_MODEL]
    # What a seed .pth holds: the weights without the per-call-site statistics.
    seed_state = {
        k: v for k, v in result.artifact.state_dict.items() if k.rsplit(".", 1)[1] not in SITE_KEYS
    }
    model = copy.deepcopy(result.artifact.build_model())
    model.load_state_dict(seed_state, strict=True)
    assert needs_calibration(model)
    uncalibrated = _accuracy(model, dataset, batch_statistics=False)

    used = recalibrate_batch_norms(model, dataset)
    assert used == len(dataset.x_train)  # fewer than CALIBRATION_IMAGES: every one
    assert not needs_calibration(model) and not model.training
    recalibrated = _accuracy(model, dataset, batch_statistics=False)
    print(
        f"\nuncalibrated {uncalibrated:.3f}, recalibrated {recalibrated:.3f}, "
        f"trained {result.recorded:.3f}"
    )
    assert uncalibrated < 0.5
    assert abs(recalibrated - result.recorded) <= 0.03
    # Deterministic: the same images in the same order give the same statistics.
    again = copy.deepcopy(model)
    recalibrate_batch_norms(again, dataset)
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    assert np.isfinite(recalibrated)
