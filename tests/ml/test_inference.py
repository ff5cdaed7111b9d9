"""Serving copies of models: batch norms folded, outputs unchanged, the original untouched."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from cnnswarm.ml.inference import compiled_for_serving, count_batch_norms, fold_batch_norms
from cnnswarm.ml.models import build_model
from cnnswarm.ml.seed_model import FoldedNNConvResNetRGB, TiedBatchNorm2d

torch.set_num_threads(1)


def _trained_looking(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with batch-norm statistics (per call site too) far from their
    initial values, so a wrong fold shows in the outputs."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 2 - 1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) - 0.5)
        if isinstance(module, TiedBatchNorm2d):
            shape = module.site_running_mean.shape
            module.site_running_mean.copy_(torch.rand(shape, generator=generator) * 2 - 1)
            module.site_running_var.copy_(torch.rand(shape, generator=generator) + 0.5)
            module.site_batches_tracked.fill_(1)
    return model.eval()


EVERY_MODEL = [
    ("NNConvResNetRGB", 3, 32, FoldedNNConvResNetRGB),
    ("ResNet8", 3, 32, fx.GraphModule),
    ("ResNet20", 3, 32, fx.GraphModule),
    ("SmallConvNet", 1, 8, fx.GraphModule),
    ("SmallConvNet", 3, 32, fx.GraphModule),
]


@pytest.mark.parametrize(("model_type", "channels", "size", "served_type"), EVERY_MODEL)
def test_every_model_type_folds_completely_and_serves_as_torchscript_with_the_same_outputs(
    model_type: str, channels: int, size: int, served_type: type[nn.Module]
) -> None:
    model = _trained_looking(
        build_model(model_type, in_channels=channels, height=size, width=size, num_classes=10)
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sample = torch.randn(2, channels, size, size)
    folded = fold_batch_norms(model, sample)
    compiled = compiled_for_serving(folded, sample)

    # The folded copy is served, not the fallback: no batch norm is left to run.
    assert isinstance(folded, served_type) and folded is not model
    assert count_batch_norms(folded) == 0
    assert count_batch_norms(model) > 0
    assert isinstance(compiled, torch.jit.ScriptModule)  # not the eager fallback
    for batch in (1, 5, 17):  # batch sizes other than the sample's (the trace's)
        x = torch.randn(batch, channels, size, size)
        with torch.inference_mode():
            torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)
    for key, value in model.state_dict().items():  # the original is not modified
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize(("model_type", "channels", "size", "served_type"), EVERY_MODEL)
def test_a_prediction_does_not_depend_on_the_rest_of_its_batch(
    model_type: str, channels: int, size: int, served_type: type[nn.Module]
) -> None:
    model = _trained_looking(
        build_model(model_type, in_channels=channels, height=size, width=size, num_classes=10)
    )
    sample = torch.randn(2, channels, size, size)
    served = fold_batch_norms(model, sample)
    compiled = compiled_for_serving(served, sample)
    batch = torch.randn(64, channels, size, size)
    others = torch.randn(64, channels, size, size) * 3 + 1  # a very different crowd
    for net in (model, served, compiled):
        with torch.inference_mode():
            alone = torch.softmax(net(batch[:1]), 1)
            in_its_batch = torch.softmax(net(batch), 1)[:1]
            among_others = torch.softmax(net(torch.cat([others[:20], batch[:1]])), 1)[-1:]
        torch.testing.assert_close(in_its_batch, alone, rtol=0, atol=1e-5)
        torch.testing.assert_close(among_others, alone, rtol=0, atol=1e-5)


def test_untraceable_model_is_served_as_is() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.bn = nn.BatchNorm2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # control flow on values: torch.fx cannot trace it
                x = -x
            return self.bn(self.conv(x))

    model = DataDependent()
    assert fold_batch_norms(model, torch.randn(2, 1, 8, 8)) is model
    assert not model.training


def test_a_model_with_control_flow_on_values_is_served_eagerly() -> None:
    class SignDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # a trace would freeze whichever branch its sample took
                x = -x
            return self.conv(x)

    model = SignDependent().eval()
    positive = torch.rand(2, 1, 8, 8) + 0.1
    assert compiled_for_serving(model, positive) is model
