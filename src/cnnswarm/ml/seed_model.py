"""The seed's network, ``NNConvResNetRGB``, made to compute in eval mode what it learned.

The seed's network ties weights: in each stage one ``BatchNorm2d`` (``batch_norm{i}``) is called
at 7 places, after the opening conv and twice in each of the 3 residual blocks that share one
conv. In train mode every call normalizes with its own batch's statistics, and that is what the
weights learn to expect. A plain ``BatchNorm2d`` keeps one running mean and variance, the average
of the 7 call sites' very different distributions, so in eval mode no call site is normalized as
it was in training and the model predicts at chance level. The seed itself never called
``eval()`` and predicted with batch statistics, which makes an image's class depend on the other
images in its request.

The fix chosen here: ``TiedBatchNorm2d`` keeps the tied affine parameters (the seed's learned
``weight`` and ``bias``, one pair per stage) but running statistics *per call site*
(``site_running_mean``, ``site_running_var``: ``(7, C)``). Training is unchanged (each call
still normalizes with its batch statistics, so a run computes exactly what the seed computed);
each call site's statistics describe its own distribution, so eval mode normalizes every site
as training did, and an image's output never depends on the rest of its batch. The statistics
are structure, so checkpoints and model files carry them like any buffer. A recalibration pass
alone could not fix the shared module: with one set of statistics there is nowhere to put 7.
On top of this, the training loop re-estimates all running statistics at the end of each epoch
(``cnnswarm.ml.calibrate``), for every model type, so they match the epoch's final weights
instead of lagging them; the recorded ``test_accuracy`` and the served model use that one path.

A ``.pth`` the seed wrote still loads with ``strict=True``: it has no per-site statistics, so
they are reset and the model reports ``needs_calibration``; ``cnnswarm.ml.calibrate`` estimates
them from training data (the import route does this). The seed's own ``running_mean`` and
``running_var`` stay in the state dict so its key layout is kept; nothing reads them.

``folded()`` gives the serving form: each of the 21 (conv, call site) pairs folded into its own
convolution, exact up to float rounding.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

RESIDUAL_BLOCKS = 3
# Call sites of each stage's batch norm: the opening conv, then two in each residual block.
SITES_PER_STAGE = 1 + 2 * RESIDUAL_BLOCKS
SITE_KEYS = ("site_running_mean", "site_running_var", "site_batches_tracked")


def _seed_uniform_init(module: nn.Module) -> None:
    """The seed's init: weights and biases uniform in +-1/sqrt(fan_in)."""
    if isinstance(module, nn.Linear | nn.Conv2d):
        bound = 1.0 / math.sqrt(module.weight[0].numel())
        nn.init.uniform_(module.weight, -bound, bound)
        if module.bias is not None:
            nn.init.uniform_(module.bias, -bound, bound)


class TiedBatchNorm2d(nn.BatchNorm2d):
    """A ``BatchNorm2d`` whose affine parameters are shared by ``sites`` call sites, each with
    running statistics of its own. Call ``normalize(x, site)``, not the module itself."""

    site_running_mean: torch.Tensor
    site_running_var: torch.Tensor
    site_batches_tracked: torch.Tensor

    def __init__(self, num_features: int, sites: int) -> None:
        super().__init__(num_features)
        self.sites = sites
        self.register_buffer("site_running_mean", torch.zeros(sites, num_features))
        self.register_buffer("site_running_var", torch.ones(sites, num_features))
        self.register_buffer("site_batches_tracked", torch.zeros(sites, dtype=torch.long))

    def normalize(self, x: torch.Tensor, site: int) -> torch.Tensor:
        """Batch statistics in train mode (updating ``site``'s running ones), ``site``'s
        running statistics in eval mode."""
        factor = 0.0  # eval mode reads the running statistics and never updates them
        if self.training:
            self.site_batches_tracked[site] += 1
            # momentum None: a cumulative average, as BatchNorm2d does (used by recalibration).
            factor = (
                self.momentum
                if self.momentum is not None
                else 1.0 / float(self.site_batches_tracked[site])
            )
        return F.batch_norm(
            x,
            self.site_running_mean[site],
            self.site_running_var[site],
            self.weight,
            self.bias,
            training=self.training,
            momentum=factor,
            eps=self.eps,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise TypeError("a TiedBatchNorm2d is called through normalize(x, site)")

    def reset_running_stats(self) -> None:
        super().reset_running_stats()
        if hasattr(self, "site_running_mean"):  # BatchNorm2d.__init__ calls this first
            self.site_running_mean.zero_()
            self.site_running_var.fill_(1.0)
            self.site_batches_tracked.zero_()

    @property
    def calibrated(self) -> bool:
        """Whether every call site has running statistics (False for a seed file's weights)."""
        return bool((self.site_batches_tracked > 0).all())

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        site_keys = [prefix + key for key in SITE_KEYS]
        if not any(key in state_dict for key in site_keys):
            # The seed's layout: no per-site statistics were ever recorded. Start them afresh
            # and leave ``calibrated`` False, so nothing serves them before calibration.
            for key in site_keys:
                if key in missing_keys:
                    missing_keys.remove(key)
            self.site_running_mean.zero_()
            self.site_running_var.fill_(1.0)
            self.site_batches_tracked.zero_()

    def folded_conv(self, conv: nn.Conv2d, site: int) -> nn.Conv2d:
        """``conv`` followed by this norm at ``site`` (eval mode), as one convolution."""
        weight, bias = fuse_conv_bn_weights(
            conv.weight,
            conv.bias,
            self.site_running_mean[site],
            self.site_running_var[site],
            self.eps,
            self.weight,
            self.bias,
        )
        folded = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            stride=conv.stride,  # type: ignore[arg-type]
            padding=conv.padding,  # type: ignore[arg-type]
        )
        folded.weight = weight
        folded.bias = bias
        return folded


class NNConvResNetRGB(nn.Module):
    """The seed's CIFAR-10 ResNet with tied residual weights (input 3x32x32).

    Three stages of 16/32/64 channels at 32/16/8 px. Stage ``i`` opens with ``conv{i}a``
    (stride 2 in stages 2 and 3) + ``batch_norm{i}`` + ReLU, then runs 3 residual blocks that
    all reuse the one conv ``conv{i}b`` and the same ``batch_norm{i}`` (its statistics kept per
    call site, see the module docstring). Global max-pool 8x8, then ``fc_gap``. ``fc1..fc3``
    are never used but are in the seed's state dict, so they stay.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        ch = (16, 32, 64)
        self.conv1a = nn.Conv2d(3, ch[0], 3, padding=1)
        self.conv1b = nn.Conv2d(ch[0], ch[0], 3, padding=1)
        self.conv2a = nn.Conv2d(ch[0], ch[1], 3, padding=1, stride=2)
        self.conv2b = nn.Conv2d(ch[1], ch[1], 3, padding=1)
        self.conv3a = nn.Conv2d(ch[1], ch[2], 3, padding=1, stride=2)
        self.conv3b = nn.Conv2d(ch[2], ch[2], 3, padding=1)
        self.batch_norm1 = TiedBatchNorm2d(ch[0], SITES_PER_STAGE)
        self.batch_norm2 = TiedBatchNorm2d(ch[1], SITES_PER_STAGE)
        self.batch_norm3 = TiedBatchNorm2d(ch[2], SITES_PER_STAGE)
        self.pool = nn.MaxPool2d(8)
        self.fc_gap = nn.Linear(ch[2], num_classes)
        # Unused by forward(); kept so the seed's .pth files load with strict=True.
        self.fc1 = nn.Linear(ch[2] * 8 * 8, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, num_classes)
        self.apply(_seed_uniform_init)

    def stages(self) -> list[tuple[nn.Conv2d, nn.Conv2d, TiedBatchNorm2d]]:
        """(opening conv, shared residual conv, tied norm) of each stage."""
        return [
            (self.conv1a, self.conv1b, self.batch_norm1),
            (self.conv2a, self.conv2b, self.batch_norm2),
            (self.conv3a, self.conv3b, self.batch_norm3),
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for opening_conv, shared_conv, norm in self.stages():
            x = F.relu(norm.normalize(opening_conv(x), 0))
            for block in range(RESIDUAL_BLOCKS):
                y = F.relu(norm.normalize(shared_conv(x), 1 + 2 * block))
                x = F.relu(norm.normalize(shared_conv(y), 2 + 2 * block) + x)
        x = self.pool(x).flatten(1)
        out: torch.Tensor = self.fc_gap(x)
        return out

    def folded(self) -> FoldedNNConvResNetRGB:
        """The eval-mode network with every (conv, call site) pair folded into one conv."""
        return FoldedNNConvResNetRGB(self)


class FoldedNNConvResNetRGB(nn.Module):
    """``NNConvResNetRGB`` in eval mode as 21 plain convolutions (7 per stage), for serving."""

    def __init__(self, model: NNConvResNetRGB) -> None:
        super().__init__()
        self.stage_convs = nn.ModuleList()
        with torch.no_grad():
            for opening_conv, shared_conv, norm in model.stages():
                convs = [norm.folded_conv(opening_conv, 0)]
                convs += [norm.folded_conv(shared_conv, site) for site in range(1, SITES_PER_STAGE)]
                self.stage_convs.append(nn.ModuleList(convs))
        self.pool = nn.MaxPool2d(8)
        self.fc_gap = nn.Linear(model.fc_gap.in_features, model.fc_gap.out_features)
        self.fc_gap.load_state_dict(model.fc_gap.state_dict())
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for convs in self.stage_convs:
            assert isinstance(convs, nn.ModuleList)
            x = F.relu(convs[0](x))
            for block in range(RESIDUAL_BLOCKS):
                y = F.relu(convs[1 + 2 * block](x))
                x = F.relu(convs[2 + 2 * block](y) + x)
        x = self.pool(x).flatten(1)
        out: torch.Tensor = self.fc_gap(x)
        return out
