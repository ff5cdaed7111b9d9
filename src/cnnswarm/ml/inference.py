"""Models made ready to serve: batch norms folded into the convolutions they follow.

In eval mode a ``BatchNorm2d`` right after a ``Conv2d`` is an affine map per channel, so it can
be folded into that convolution's weights and bias once, at load time: the served model gives
the same outputs (up to float rounding) with one op and one module call fewer per pair. The
pass works on the model's ``torch.fx`` graph and leaves a convolution alone when its output has
other users or the module is called more than once. A model whose convs and norms are tied
folds itself through a ``folded()`` method (the seed's network: one conv per call site).

Every registered model type folds completely (``count_batch_norms`` of the result is 0, tested
for each); the unfolded fallback exists for models this pass cannot trace, and is logged.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

log = logging.getLogger(__name__)

# Folding changes the rounding of each output, never more than this (checked at load).
FOLD_TOLERANCE = 1e-4


def fold_batch_norms(model: nn.Module, sample: torch.Tensor) -> nn.Module:
    """An eval-mode copy of ``model`` with each ``BatchNorm2d`` that directly follows a
    ``Conv2d`` folded into it, checked against ``model`` on ``sample`` (a batch of valid
    inputs). ``model`` itself, in eval mode, when its forward cannot be traced symbolically,
    nothing folds, or the copy disagrees by more than ``FOLD_TOLERANCE``. ``model`` is never
    modified beyond ``eval()``."""
    model.eval()
    try:
        folds_itself = getattr(model, "folded", None)
        folded = folds_itself() if callable(folds_itself) else _fold(model)
    except Exception as exc:  # fx cannot trace data-dependent control flow; serve as is
        log.info("serving %s unfolded (%s)", type(model).__name__, exc)
        return model
    if folded is None:
        return model
    with torch.inference_mode():
        expected = model(sample)
        got = folded(sample)
    if got.shape != expected.shape or not torch.allclose(
        got, expected, rtol=FOLD_TOLERANCE, atol=FOLD_TOLERANCE
    ):
        log.warning("serving %s unfolded: the folded copy disagrees", type(model).__name__)
        return model
    return folded


def count_batch_norms(model: nn.Module) -> int:
    """How many batch-norm modules ``model`` still runs (0 once fully folded)."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _fold(model: nn.Module) -> fx.GraphModule | None:
    """The traced, folded copy of eval-mode ``model``; None when no pair can be folded."""
    traced = fx.symbolic_trace(copy.deepcopy(model))
    modules = dict(traced.named_modules())
    calls = Counter(n.target for n in traced.graph.nodes if n.op == "call_module")
    folded = 0
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        conv_node = node.args[0]
        if not (
            isinstance(conv_node, fx.Node)
            and conv_node.op == "call_module"
            and isinstance(modules[conv_node.target], nn.Conv2d)
            and len(conv_node.users) == 1
            and calls[conv_node.target] == 1
            and calls[node.target] == 1
        ):
            continue
        conv = modules[conv_node.target]
        assert isinstance(conv, nn.Conv2d) and isinstance(conv_node.target, str)
        batch_norm = modules[node.target]
        assert isinstance(batch_norm, nn.BatchNorm2d)
        parent, _, name = conv_node.target.rpartition(".")
        setattr(traced.get_submodule(parent), name, fuse_conv_bn_eval(conv, batch_norm))
        node.replace_all_uses_with(conv_node)
        traced.graph.erase_node(node)
        folded += 1
    if not folded:
        return None
    traced.delete_all_unused_submodules()
    traced.graph.lint()
    traced.recompile()
    return traced.eval()
