"""Model registry: shapes, input validation, and the seed's state-dict layout."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from cnnswarm.errors import InvalidInput
from cnnswarm.ml.models import (
    ModelConfig,
    NNConvResNetRGB,
    build_model,
    default_model_type,
    model_names,
    needs_calibration,
)

torch.set_num_threads(1)

# The seed's NNConvResNetRGB state dict (peacfuljoh/cnn-swarm, src/docker_exps/ml/nn_models.py):
# name -> shape. A .pth the seed wrote has exactly these entries.
SEED_STATE_DICT_SHAPES: dict[str, tuple[int, ...]] = {
    "conv1a.weight": (16, 3, 3, 3),
    "conv1a.bias": (16,),
    "conv1b.weight": (16, 16, 3, 3),
    "conv1b.bias": (16,),
    "conv2a.weight": (32, 16, 3, 3),
    "conv2a.bias": (32,),
    "conv2b.weight": (32, 32, 3, 3),
    "conv2b.bias": (32,),
    "conv3a.weight": (64, 32, 3, 3),
    "conv3a.bias": (64,),
    "conv3b.weight": (64, 64, 3, 3),
    "conv3b.bias": (64,),
    **{
        f"batch_norm{i}.{part}": (ch,)
        for i, ch in ((1, 16), (2, 32), (3, 64))
        for part in ("weight", "bias", "running_mean", "running_var")
    },
    **{f"batch_norm{i}.num_batches_tracked": () for i in (1, 2, 3)},
    "fc_gap.weight": (10, 64),
    "fc_gap.bias": (10,),
    "fc1.weight": (128, 4096),
    "fc1.bias": (128,),
    "fc2.weight": (64, 128),
    "fc2.bias": (64,),
    "fc3.weight": (10, 64),
    "fc3.bias": (10,),
}


SUPPORTED_SHAPES = [
    ("NNConvResNetRGB", 3, 32, 32, 10),
    ("NNConvResNetRGB", 3, 32, 32, 4),
    ("ResNet8", 3, 32, 32, 10),
    ("ResNet8", 1, 28, 28, 5),
    ("ResNet8", 3, 8, 8, 3),
    ("ResNet8", 3, 64, 48, 7),
    ("ResNet20", 3, 32, 32, 10),
    ("ResNet20", 1, 16, 16, 4),
    ("SmallConvNet", 1, 8, 8, 10),
    ("SmallConvNet", 1, 28, 28, 10),
    ("SmallConvNet", 3, 16, 16, 4),
    ("SmallConvNet", 1, 13, 17, 2),
    ("SmallConvNet", 3, 32, 32, 10),
]


@pytest.mark.parametrize(("model_type", "c", "h", "w", "k"), SUPPORTED_SHAPES)
def test_output_shape_for_each_supported_input(
    model_type: str, c: int, h: int, w: int, k: int
) -> None:
    model = build_model(model_type, in_channels=c, height=h, width=w, num_classes=k)
    assert model(torch.randn(2, c, h, w)).shape == (2, k)
    model.eval()
    with torch.inference_mode():
        assert model(torch.randn(1, c, h, w)).shape == (1, k)


def test_registry_lists_every_model() -> None:
    assert model_names() == ["NNConvResNetRGB", "ResNet8", "ResNet20", "SmallConvNet"]


@pytest.mark.parametrize(
    ("model_type", "kwargs", "field"),
    [
        ("NNConvResNetRGB", {"in_channels": 1}, "in_channels"),
        ("NNConvResNetRGB", {"height": 28}, "height"),
        ("NNConvResNetRGB", {"width": 64}, "width"),
        ("SmallConvNet", {"height": 33}, "height"),
        ("SmallConvNet", {"height": 16, "width": 7}, "width"),
        ("ResNet8", {"num_classes": 1}, "num_classes"),
        ("ResNet8", {"in_channels": True}, "in_channels"),
        ("ResNet20", {"height": 4.0}, "height"),
        ("NoSuchNet", {}, "model_type"),
    ],
)
def test_build_model_names_the_field_that_does_not_fit(
    model_type: str, kwargs: dict[str, object], field: str
) -> None:
    args: dict[str, object] = {"in_channels": 3, "height": 32, "width": 32, "num_classes": 10}
    args.update(kwargs)
    with pytest.raises(InvalidInput) as info:
        build_model(model_type, **args)  # type: ignore[arg-type]
    assert info.value.field == field
    assert info.value.status == 400


def test_default_model_type() -> None:
    assert default_model_type((3, 32, 32)) == "ResNet8"
    assert default_model_type((1, 8, 8)) == "SmallConvNet"
    assert default_model_type((1, 28, 28)) == "SmallConvNet"
    assert default_model_type((3, 64, 64)) == "ResNet8"


SITE_STATISTICS_SHAPES: dict[str, tuple[int, ...]] = {
    f"batch_norm{i}.{part}": shape
    for i, ch in ((1, 16), (2, 32), (3, 64))
    for part, shape in (
        ("site_running_mean", (7, ch)),
        ("site_running_var", (7, ch)),
        ("site_batches_tracked", (7,)),
    )
}


def test_seed_model_state_dict_is_the_seeds_plus_per_site_statistics() -> None:
    state = NNConvResNetRGB().state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        **SEED_STATE_DICT_SHAPES,
        **SITE_STATISTICS_SHAPES,
    }


def test_a_seed_shaped_state_dict_loads_strictly() -> None:
    seed_state = {name: torch.randn(shape) for name, shape in SEED_STATE_DICT_SHAPES.items()}
    for i in (1, 2, 3):
        seed_state[f"batch_norm{i}.running_var"] = seed_state[f"batch_norm{i}.running_var"].abs()
        seed_state[f"batch_norm{i}.num_batches_tracked"] = torch.tensor(7)
    model = build_model("NNConvResNetRGB", in_channels=3, height=32, width=32, num_classes=10)
    model.load_state_dict(seed_state, strict=True)
    assert torch.equal(model.state_dict()["conv2b.weight"], seed_state["conv2b.weight"])
    # The seed recorded no statistics per call site: nothing may serve them before calibration.
    assert needs_calibration(model)
    with pytest.raises(RuntimeError, match="site_running_var"):
        partial = {
            k: v for k, v in model.state_dict().items() if k != "batch_norm2.site_running_var"
        }
        NNConvResNetRGB().load_state_dict(partial, strict=True)


def _seed_forward_by_the_description(
    model: NNConvResNetRGB, x: torch.Tensor, norm: Callable[[int, int, torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """API.md's description, written out: opening conv+BN+ReLU, 3 tied residual blocks, ...;
    ``norm(stage, call, x)`` is the batch norm at that call (0: after the opening conv)."""
    for i in (1, 2, 3):
        x = F.relu(norm(i, 0, getattr(model, f"conv{i}a")(x)))
        tied = getattr(model, f"conv{i}b")
        for block in range(3):
            y = F.relu(norm(i, 1 + 2 * block, tied(x)))
            x = F.relu(norm(i, 2 + 2 * block, tied(y)) + x)
    return model.fc_gap(F.max_pool2d(x, 8).flatten(1))


def test_seed_model_trains_as_the_seed_does_with_batch_statistics() -> None:
    model = NNConvResNetRGB().train()
    x = torch.randn(8, 3, 32, 32)

    def batch_stats(stage: int, call: int, h: torch.Tensor) -> torch.Tensor:
        bn = getattr(model, f"batch_norm{stage}")
        return F.batch_norm(h, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)

    with torch.no_grad():
        assert torch.allclose(
            model(x), _seed_forward_by_the_description(model, x, batch_stats), atol=1e-5
        )
    # One conv per stage serves all three blocks: six convs in total.
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 6


def test_seed_model_keeps_running_statistics_per_call_site() -> None:
    torch.manual_seed(0)
    model = NNConvResNetRGB().train()
    with torch.no_grad():
        for _ in range(30):
            model(torch.randn(16, 3, 32, 32) * 2 + 1)
    model.eval()
    # Each call site saw a distribution of its own, so its statistics differ from the others'.
    assert not needs_calibration(model)
    means = model.batch_norm1.site_running_mean
    assert int(model.batch_norm1.site_batches_tracked.min()) == 30
    assert (means[0] - means[1]).abs().max() > 0.05 and (means[0] - means[2]).abs().max() > 0.05

    def site_stats(stage: int, call: int, h: torch.Tensor) -> torch.Tensor:
        bn = getattr(model, f"batch_norm{stage}")
        return F.batch_norm(
            h,
            bn.site_running_mean[call],
            bn.site_running_var[call],
            bn.weight,
            bn.bias,
            training=False,
            eps=bn.eps,
        )

    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(
            model(x), _seed_forward_by_the_description(model, x, site_stats), atol=1e-5
        )


def test_model_config_round_trip_builds_the_same_architecture() -> None:
    config = ModelConfig("SmallConvNet", 1, 8, 8, 10)
    again = ModelConfig.from_json(config.to_json())
    assert again == config
    assert again.build().state_dict().keys() == config.build().state_dict().keys()
    with pytest.raises(InvalidInput):
        ModelConfig.from_json({"model_type": "ResNet8"})
