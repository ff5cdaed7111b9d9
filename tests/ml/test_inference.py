"""Serving copies of models: batch norms folded, outputs unchanged, the original untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnswarm.ml.inference import fold_batch_norms
from cnnswarm.ml.models import build_model

torch.set_num_threads(1)


def _trained_looking(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with batch-norm statistics far from their initial values, so a
    wrong fold shows in the outputs."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 2 - 1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) - 0.5)
    return model.eval()


@pytest.mark.parametrize(
    ("model_type", "channels", "size"), [("ResNet8", 3, 32), ("SmallConvNet", 1, 8)]
)
def test_folded_model_has_no_batch_norms_and_the_same_outputs(
    model_type: str, channels: int, size: int
) -> None:
    model = _trained_looking(
        build_model(model_type, in_channels=channels, height=size, width=size, num_classes=10)
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batch_norms(model, torch.randn(2, channels, size, size))

    assert folded is not model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    for batch in (1, 5, 17):  # batch sizes other than the sample's
        x = torch.randn(batch, channels, size, size)
        with torch.inference_mode():
            torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
    for key, value in model.state_dict().items():  # the original is not modified
        assert torch.equal(value, before[key]), key


def test_tied_convolutions_are_left_alone() -> None:
    """The seed's network calls one convolution several times, before different batch norms;
    folding a norm into it would break the other calls, so those stay as they are."""
    model = _trained_looking(
        build_model("NNConvResNetRGB", in_channels=3, height=32, width=32, num_classes=10)
    )
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        expected = model(x)
        served = fold_batch_norms(model, torch.randn(2, 3, 32, 32))
        torch.testing.assert_close(served(x), expected, rtol=1e-4, atol=1e-5)


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
