"""Batch-norm recalibration: exact population statistics, deterministic, any batch size."""

from __future__ import annotations

import torch

from cnnswarm.ml.calibrate import recalibrate_on_images
from cnnswarm.ml.datasets.base import Normalization, normalize
from cnnswarm.ml.models import build_model

torch.set_num_threads(1)
NORMALIZATION = Normalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _images(count: int) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, 16, 16), generator=torch.Generator().manual_seed(0)).to(
        torch.uint8
    )


def test_the_first_norm_gets_the_mean_of_its_input_over_every_image() -> None:
    model = build_model("ResNet8", in_channels=3, height=16, width=16, num_classes=4)
    images = _images(96)
    used = recalibrate_on_images(model, images, NORMALIZATION, batch_size=16)
    assert used == 96 and not model.training
    stem_conv, stem_norm = model.stem[0], model.stem[1]
    with torch.no_grad():
        expected = stem_conv(normalize(images, NORMALIZATION)).mean(dim=(0, 2, 3))
    torch.testing.assert_close(stem_norm.running_mean, expected, rtol=1e-4, atol=1e-5)


def test_a_training_batch_of_one_still_calibrates_on_every_image() -> None:
    model = build_model("ResNet8", in_channels=3, height=16, width=16, num_classes=4)
    images = _images(50)
    assert recalibrate_on_images(model, images, NORMALIZATION, batch_size=1) == 50
    single = {k: v.clone() for k, v in model.state_dict().items()}
    recalibrate_on_images(model, images, NORMALIZATION, batch_size=1)
    for key, value in model.state_dict().items():  # the same images in the same order
        assert torch.equal(value, single[key]), key
