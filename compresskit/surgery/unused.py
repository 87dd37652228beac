"""Parameters the forward never reads: found on the example inputs, named, and removed on request.

A network may carry weights its inference forward never touches (a training-only teacher block, a
head kept for another task). No width can remove them, so they cap every parameter target; compress
names them in the report and in an unreachable-target error, and ``drop_unused=True`` removes them.

:func:`unused_parameters` runs the forward (no gradients) under a ``TorchFunctionMode`` that records
every parameter passed to any torch function (a layer's ``F.conv2d``, ``x * self.scale``, a custom op):
once in eval mode and once in train mode on a deep copy (so a block that runs only while training, which
fine-tuning needs, counts as read, and the model's BN statistics and RNG do not move); the parameters
neither pass reads are unused. :func:`drop_unused` replaces
each module none of whose parameters is read by a :class:`Dropped` placeholder (its index in a
``Sequential`` or ``ModuleList`` is kept) and unregisters the remaining unread parameters (set to None).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from compresskit._modes import eval_mode

__all__ = ["unused_parameters", "unused_summary", "drop_unused", "Dropped"]


class _ReadRecorder(TorchFunctionMode):
    """Records the ids of the parameters passed to any torch function."""

    def __init__(self, watched: set[int]):
        super().__init__()
        self.watched, self.read = watched, set()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        for x in tree_flatten((args, kwargs))[0]:
            if isinstance(x, torch.Tensor) and id(x) in self.watched:
                self.read.add(id(x))
        return func(*args, **kwargs)


def unused_parameters(model: nn.Module, example_inputs: Any) -> dict[str, int]:
    """``{parameter name: number of entries}`` of the parameters that neither an eval-mode nor a
    train-mode forward pass on ``example_inputs`` reads, in ``named_parameters()`` order (a parameter
    shared by two names once). The train-mode pass runs on a deep copy; where the model cannot be copied
    or that pass fails, the eval-mode reads alone decide."""
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    params = dict(model.named_parameters())
    read = _names_read(model, inputs, train=False)
    if len(read) < len(params):
        read |= _train_reads(model, inputs)
    return {name: p.numel() for name, p in params.items() if name not in read}


def _names_read(model: nn.Module, inputs: tuple, *, train: bool) -> set[str]:
    """Names of the parameters of ``model`` one no-grad forward in the given mode reads."""
    params = dict(model.named_parameters())
    rec = _ReadRecorder({id(p) for p in params.values()})
    if train:
        with torch.no_grad(), rec:
            model(*inputs)
    else:
        with eval_mode(model), torch.no_grad(), rec:
            model(*inputs)
    return {name for name, p in params.items() if id(p) in rec.read}


def _train_reads(model: nn.Module, inputs: tuple) -> set[str]:
    """Parameters a train-mode forward reads, found on a deep copy (BN statistics, buffers and the RNG
    of ``model`` stay as they are); empty when the copy or the pass fails."""
    try:
        twin = copy.deepcopy(model)
    except Exception:  # noqa: BLE001 - a model that cannot be copied: eval-mode reads decide
        return set()
    twin.train()
    devices = sorted({p.device.index or 0 for p in twin.parameters() if p.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices):
            return _names_read(twin, inputs, train=True)
    except Exception:  # noqa: BLE001 - e.g. a training forward that needs targets: eval-mode reads decide
        return set()
    finally:
        del twin


def unused_summary(model: nn.Module, unused: dict[str, int]) -> dict[str, int]:
    """The unused parameters by the outermost module all of whose parameters are unused
    (``{"ifnet.block_tea": 760415}``), and by their own name where the module also has used ones."""
    if not unused:
        return {}
    out: dict[str, int] = {}
    covered: set[str] = set()
    for name, module in model.named_modules():
        names = [f"{name}.{n}" if name else n for n, _ in module.named_parameters()]
        if not name or not names or any(n not in unused for n in names):
            continue
        if any(name.startswith(c + ".") for c in out):
            continue
        out[name] = sum(unused[n] for n in names)
        covered.update(names)
    for n, count in unused.items():
        if n not in covered:
            out[n] = count
    return out


class Dropped(nn.Module):
    """Stands where ``drop_unused`` removed a module forward never called; calling it is an error."""

    def __init__(self, name: str, kind: str):
        super().__init__()
        self.dropped_name, self.dropped_kind = name, kind

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{self.dropped_name} ({self.dropped_kind}) was removed by drop_unused=True "
                           "because forward() never used it on the example inputs; compress without "
                           "drop_unused to keep it")

    def extra_repr(self) -> str:
        return f"{self.dropped_name!r}, was {self.dropped_kind}"


def drop_unused(model: nn.Module, names: list[str] | dict[str, int]) -> dict[str, int]:
    """Remove the parameters ``names`` from ``model`` in place; returns what went, by
    :func:`unused_summary` (whole modules as :class:`Dropped`, single parameters unregistered)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"drop_unused: {missing[:5]} are not parameters of the model")
    unused = {n: params[n].numel() for n in names}
    summary = unused_summary(model, unused)
    for target in summary:
        parent_name, _, attr = target.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if attr in parent._modules:
            parent._modules[attr] = Dropped(target, type(parent._modules[attr]).__name__)
        else:
            parent.register_parameter(attr, None)
    return summary
