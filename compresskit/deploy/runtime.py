"""Latency of one model in each way it can be deployed, and the fastest of them.

Runtimes (``RUNTIMES``):

- ``"eager"``: PyTorch eager, NCHW (contiguous) tensors;
- ``"channels_last"``: PyTorch eager, the model and its 4-D/5-D inputs in channels-last layout (oneDNN's
  convolutions on CPU run NHWC natively: no layout conversion per layer; cuDNN's tensor cores likewise),
  softmax modules over the channels computed on the NHWC view (:mod:`compresskit.deploy.softmax`);
- ``"onnxruntime"``: the model exported with :func:`compresskit.deploy.onnx.export_onnx` (checked against
  PyTorch, sizes fixed to the example's) and run by an ONNX Runtime CPU session with as many threads as
  torch uses. Needs the ``[onnx]`` extra.

:func:`measure_runtimes` times each on the one clock (:class:`compresskit.measure.clock.Clock`: the
median of ``repeats`` runs after ``warmup`` calls, under ``torch.inference_mode``, CUDA synchronised
around each run) and returns every time and the fastest. A runtime that cannot run the model (an export
that fails, a layout an op rejects) is left out, with the reason in ``errors``.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compresskit._modes import eval_mode
from compresskit.measure.clock import Clock, statistic

__all__ = ["RUNTIMES", "RuntimeTimes", "available_runtimes", "measure_runtimes", "prepare", "RUNTIME_LABELS",
           "to_channels_last"]

RUNTIMES = ("eager", "channels_last", "onnxruntime")
RUNTIME_LABELS = {"eager": "eager NCHW", "channels_last": "eager channels-last",
                  "onnxruntime": "ONNX Runtime"}


def available_runtimes(example_inputs: Sequence[Any] | None = None, onnx: bool = True) -> list[str]:
    """The runtimes this machine can measure: channels-last only for 4-D/5-D inputs, ONNX Runtime only
    with the ``[onnx]`` extra (and ``onnx=True``) and on CPU."""
    from compresskit.deploy.onnx import onnx_available

    out = ["eager"]
    tensors = [t for t in example_inputs or () if isinstance(t, torch.Tensor)]
    if not tensors or any(t.dim() in (4, 5) for t in tensors):
        out.append("channels_last")
    if onnx and onnx_available() is None and all(t.device.type == "cpu" for t in tensors):
        out.append("onnxruntime")
    return out


def _channels_last(t: Any) -> Any:
    if isinstance(t, torch.Tensor) and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if isinstance(t, torch.Tensor) and t.dim() == 5:
        return t.contiguous(memory_format=torch.channels_last_3d)
    return t


def to_channels_last(model: nn.Module) -> nn.Module:
    """``model`` (in place) with every 4-D parameter/buffer channels-last and every 5-D one
    channels-last-3d (``Module.to(memory_format=...)`` refuses a model that mixes 2-D and 3-D convs), and
    every softmax module over the channels a :class:`~compresskit.deploy.softmax.ChannelsLastSoftmax`
    (PyTorch's softmax over dim 1 of a channels-last tensor is 5× slower than over its last dim)."""
    from compresskit.deploy.softmax import replace_channel_softmax

    replace_channel_softmax(model)
    for m in model.modules():
        for table in (m._parameters, m._buffers):
            for t in table.values():
                if t is not None and t.dim() in (4, 5):
                    fmt = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
                    t.data = t.data.contiguous(memory_format=fmt)
    return model


def prepare(model: nn.Module, example_inputs: Sequence[Any], runtime: str,
            workdir: str | Path | None = None) -> Callable[[], Any]:
    """A no-argument callable running ``model`` on ``example_inputs`` in ``runtime`` (the model is copied
    for channels-last; ONNX Runtime gets a file exported into ``workdir``, default a temporary folder)."""
    inputs = tuple(example_inputs)
    if runtime == "eager":
        return lambda: model(*inputs)
    if runtime == "channels_last":
        twin = to_channels_last(copy.deepcopy(model)).eval()
        cl = tuple(_channels_last(t) for t in inputs)
        return lambda: twin(*cl)
    if runtime == "onnxruntime":
        import numpy as np

        from compresskit.deploy.onnx import export_onnx, session

        holder = None
        if workdir is None:
            holder = tempfile.TemporaryDirectory(prefix="compresskit_latency_")
            workdir = holder.name
        path = Path(workdir) / "model.onnx"
        export_onnx(model, inputs, path, dynamic=False, second_size=False)
        sess = session(path, threads=torch.get_num_threads())
        names = [i.name for i in sess.get_inputs()]
        feed = {n: np.ascontiguousarray(t.detach().cpu().numpy()) for n, t in zip(names, inputs)}

        def run() -> Any:
            _ = holder  # the temporary folder lives as long as the callable
            return sess.run(None, feed)

        return run
    raise ValueError(f"runtime: expected one of {RUNTIMES}, got {runtime!r}")


@dataclass
class RuntimeTimes:
    """Median milliseconds per runtime, the fastest runtime, and why any runtime was left out."""

    ms: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    min_ms: dict[str, float] = field(default_factory=dict)  #: fastest run (steadier on a shared machine)

    @property
    def best(self) -> str | None:
        return min(self.ms, key=self.ms.__getitem__) if self.ms else None

    @property
    def best_ms(self) -> float | None:
        return self.ms[self.best] if self.ms else None


def measure_runtimes(model: nn.Module, example_inputs: Any, runtimes: str | Sequence[str] = "auto",
                     repeats: int = 10, warmup: int = 2) -> RuntimeTimes:
    """Median latency (ms) of ``model(*example_inputs)`` in each runtime (``"auto"``:
    :func:`available_runtimes`), in eval mode, one runtime after the other, each with its own warm-up; a
    runtime that fails is recorded in ``errors``."""
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    names = available_runtimes(inputs) if runtimes == "auto" else list(runtimes)
    for name in names:
        if name not in RUNTIMES:
            raise ValueError(f"runtimes: unknown runtime {name!r}; expected 'auto' or some of {RUNTIMES}")
    device = next((t.device for t in inputs if isinstance(t, torch.Tensor)), torch.device("cpu"))
    clock = Clock(device, repeats, warmup)
    out = RuntimeTimes()
    with eval_mode(model):
        for name in names:
            try:
                fn = prepare(model, inputs, name)
                times = clock.runs(fn)
                out.ms[name], out.min_ms[name] = statistic(times), min(times)
            except Exception as e:  # a runtime that cannot run this model is left out, with why
                text = str(e).strip().splitlines()
                out.errors[name] = f"{type(e).__name__}: {text[0][:200] if text else ''}"
    return out
