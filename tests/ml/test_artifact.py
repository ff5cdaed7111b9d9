"""Model artefacts: round trips, the seed's bare .pth, and refusal of hostile pickles."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from cnnswarm.errors import InvalidInput
from cnnswarm.ml.artifact import (
    CIFAR10_CLASSES,
    ModelArtifact,
    artifact_from_bytes,
    artifact_to_bytes,
    load_artifact,
    save_artifact,
)
from cnnswarm.ml.models import ModelConfig, NNConvResNetRGB
from support import MarkerPayload

torch.set_num_threads(1)


def small_artifact() -> tuple[ModelArtifact, torch.nn.Module]:
    config = ModelConfig("SmallConvNet", 1, 8, 8, 3)
    model = config.build()
    with torch.no_grad():  # non-default BatchNorm statistics, so eval mode is visible
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    artifact = ModelArtifact(
        model_type="SmallConvNet",
        model_config=config.to_json(),
        classes=["a", "b", "c"],
        preprocessing={"channels": 1, "height": 8, "width": 8, "mean": [0.3], "std": [0.2]},
        metrics=[{"epoch": 1, "test_accuracy": 0.9, "test_loss": None}],
        dataset={"name": "tiny", "num_train": 10},
        train_opts={"lr": 0.01, "seed": 4},
        state_dict={k: v.clone() for k, v in model.state_dict().items()},
    )
    return artifact, model.eval()


def test_bytes_and_file_round_trip_give_the_same_model(tmp_path: Path) -> None:
    artifact, original = small_artifact()
    x = torch.randn(4, 1, 8, 8)
    for again in (
        artifact_from_bytes(artifact_to_bytes(artifact)),
        _via_file(artifact, tmp_path / "m.model"),
    ):
        assert again.metadata() == artifact.metadata()
        model = again.build_model()
        assert not model.training
        with torch.inference_mode():
            assert torch.equal(model(x), original(x))


def _via_file(artifact: ModelArtifact, path: Path) -> ModelArtifact:
    save_artifact(artifact, path)
    return load_artifact(path)


def test_a_seed_pth_loads_with_cifar10_metadata(tmp_path: Path) -> None:
    seed_model = NNConvResNetRGB().eval()
    path = tmp_path / "seed_model.pth"
    torch.save(seed_model.state_dict(), path)  # what the seed's trainer wrote
    artifact = load_artifact(path)
    assert artifact.model_type == "NNConvResNetRGB"
    assert artifact.classes == CIFAR10_CLASSES
    assert artifact.classes[0] == "plane" and artifact.classes[-1] == "truck"
    assert artifact.preprocessing == {
        "channels": 3,
        "height": 32,
        "width": 32,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    }
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(artifact.build_model()(x), seed_model(x))


def test_weights_that_do_not_fit_are_invalid_input() -> None:
    artifact, _ = small_artifact()
    artifact.state_dict.pop("fc.weight")
    with pytest.raises(InvalidInput) as info:
        artifact_from_bytes(artifact_to_bytes(artifact)).build_model()
    assert info.value.field == "state_dict"


def test_a_dict_that_is_neither_format_is_refused() -> None:
    buffer = __import__("io").BytesIO()
    torch.save({"hello": "world"}, buffer)
    with pytest.raises(InvalidInput):
        artifact_from_bytes(buffer.getvalue())


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    # The payload is live: unpickling it the unsafe way does create its marker.
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(MarkerPayload(proof)))
    assert proof.exists()

    marker = tmp_path / "pwned"
    zip_format = tmp_path / "evil.model"
    torch.save({"state_dict": MarkerPayload(marker)}, zip_format)
    legacy_format = tmp_path / "evil.pth"
    legacy_format.write_bytes(pickle.dumps({"conv1a.weight": MarkerPayload(marker)}))
    for path in (zip_format, legacy_format):
        with pytest.raises(InvalidInput):
            load_artifact(path)
        with pytest.raises(InvalidInput):
            artifact_from_bytes(path.read_bytes())
    assert not marker.exists()
