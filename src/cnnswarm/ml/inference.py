"""Models made ready to serve: batch norms folded into the convolutions they follow, then
traced and frozen to TorchScript.

In eval mode a ``BatchNorm2d`` right after a ``Conv2d`` is an affine map per channel, so it can
be folded into that convolution's weights and bias once, at load time: the served model gives
the same outputs (up to float rounding) with one op and one module call fewer per pair. The
pass works on the model's ``torch.fx`` graph and leaves a convolution alone when its output has
other users or the module is called more than once. A model whose convs and norms are tied
folds itself through a ``folded()`` method (the seed's network: one conv per call site).

Every registered model type folds completely (``count_batch_norms`` of the result is 0, tested
for each); the unfolded fallback exists for models this pass cannot trace, and is logged.

The folded model is then served as frozen TorchScript (``compiled_for_serving``): the same ops,
the same outputs, but its whole forward pass runs in C++ without the GIL, where an eager or fx
module takes the GIL back between ops. That matters when the process is busy with Python (a
gevent worker's event loop parsing and decoding other requests while a forward pass runs in its
thread pool): measured with one torch thread and a pure-Python loop holding the GIL, a ResNet8
ran 78 against 6 images/s at batch 1 and 403 against 40 at batch 8 (idle: 873 against 707,
1,256 against 1,104). The same tracing makes the TorchScript export (``ml.model_files``).
"""

from __future__ import annotations

import copy
import logging
import warnings
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


def traced_and_frozen(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """``model`` (eval mode) traced on ``example`` and frozen: TorchScript with the weights as
    constants, which loads without Python (LibTorch) and runs without the GIL."""
    with torch.no_grad(), warnings.catch_warnings():
        # torch.jit.trace is deprecated upstream in favour of torch.export, but a TorchScript
        # module is what runs GIL-free here and loads with plain torch.jit.load.
        warnings.simplefilter("ignore", DeprecationWarning)
        # No check_trace: its comparison (torch.testing) imports torch.distributed.tensor and
        # sympy: 0.7 s of CPU per controller boot and ~45 MB per process. compiled_for_serving
        # checks the frozen module against the model itself, on two batch sizes.
        traced = torch.jit.trace(model, example, check_trace=False)  # type: ignore[no-untyped-call]
        frozen: torch.jit.ScriptModule = torch.jit.freeze(traced)
        return frozen


def warm_up_torchscript() -> None:
    """Trace and freeze a one-op model once, in a server's master before it forks its workers:
    what TorchScript allocates on first use is then shared by the workers instead of allocated
    in each (controller PSS with 10 cached models: 388 against 392 MB without this, measured;
    it saved 144 MB while tracing also ran check_trace, whose imports were most of it). One
    torch thread: a master computes nothing else, and a fork after a multi-threaded OpenMP
    region is not safe."""
    torch.set_num_threads(1)
    traced_and_frozen(nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU()).eval(), torch.zeros(1, 1, 2, 2))


def compiled_for_serving(model: nn.Module, sample: torch.Tensor) -> nn.Module:
    """``model`` (eval mode) as frozen TorchScript, checked against ``model`` on ``sample`` and on
    a batch of another size (a trace must not have fixed it); ``model`` itself, logged, when it
    does not trace cleanly (a ``TracerWarning``: control flow on values) or the two disagree by
    more than ``FOLD_TOLERANCE``."""
    other_size = torch.cat([sample, sample[:1]])
    try:
        with warnings.catch_warnings():
            # A trace that had to turn a tensor into a Python value (control flow on values)
            # froze one path: not the model.
            warnings.simplefilter("error", torch.jit.TracerWarning)  # type: ignore[attr-defined]
            frozen = traced_and_frozen(model, sample)
        with torch.inference_mode():
            agree = all(
                torch.allclose(frozen(x), model(x), rtol=FOLD_TOLERANCE, atol=FOLD_TOLERANCE)
                for x in (sample, other_size)
            )
    except Exception as exc:  # data-dependent control flow, untraceable ops, shape mismatch
        log.info("serving %s eagerly: it does not trace (%s)", type(model).__name__, exc)
        return model
    if not agree:
        log.warning("serving %s eagerly: its TorchScript disagrees", type(model).__name__)
        return model
    return frozen


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
