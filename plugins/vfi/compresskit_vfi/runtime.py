"""How ``interpolate`` runs a model: eager PyTorch in its fastest memory layout, or ONNX Runtime.

A :class:`Runner` is a callable ``runner(*frames) -> frame`` with ``n_inputs`` and a ``name``.

- :func:`eager_runner`: the model under ``torch.inference_mode`` in NCHW or channels-last layout
  (``model.to(memory_format=torch.channels_last)`` and the frames made channels-last contiguous). On CPU
  the convolutions of a channels-last model skip the layout conversions oneDNN otherwise does per layer.
- :func:`adaptive_eager` (what ``interpolate`` uses): the first four predictions alternate NCHW and
  channels-last (the first of each warms up, the second is timed), then the faster layout predicts the
  rest. No call is spent on timing alone; ``info["ms"]`` holds the two timed calls.
- :func:`fastest_eager`: both layouts timed on given frames (one warm-up and ``repeats`` timed calls
  each) before any prediction; the faster one is returned.
- :func:`onnx_runner`: the model exported with :func:`compresskit.deploy.export_onnx` (checked against
  PyTorch; dynamic spatial sizes where the model allows, else exported at the frame size) and run by an
  ONNX Runtime CPU session. Needs ``pip install 'compresskit[onnx]'``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["Runner", "eager_runner", "fastest_eager", "adaptive_eager", "onnx_runner", "LAYOUTS"]

LAYOUTS = ("nchw", "channels_last")


class Runner:
    """``runner(*frames)``: one prediction; ``n_inputs`` frames in, ``name`` says how it runs."""

    def __init__(self, fn: Callable[..., torch.Tensor], n_inputs: int, name: str,
                 info: dict[str, Any] | None = None) -> None:
        self.fn, self.n_inputs, self.name, self.info = fn, n_inputs, name, info or {}

    def __call__(self, *frames: torch.Tensor) -> torch.Tensor:
        return self.fn(*frames)


def eager_runner(model: nn.Module, layout: str = "nchw", n_inputs: int | None = None) -> Runner:
    """``model`` in eval mode under inference mode, in ``layout`` (``"nchw"`` or ``"channels_last"``)."""
    from compresskit_vfi.interpolate import model_num_inputs

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    n = n_inputs or model_num_inputs(model)
    model = model.eval()
    if layout == "channels_last":
        from compresskit.deploy.runtime import to_channels_last

        model = to_channels_last(model)

        def run(*frames: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                out = model(*(f.contiguous(memory_format=torch.channels_last) for f in frames))
            return out.contiguous()
    else:
        def run(*frames: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model(*(f.contiguous() for f in frames))

    return Runner(run, n, f"eager {'channels-last' if layout == 'channels_last' else 'NCHW'}",
                  {"layout": layout})


def _time(run: Callable[..., Any], frames: Sequence[torch.Tensor], repeats: int) -> float:
    run(*frames)  # warm-up: first-call allocations, oneDNN kernel selection
    times = []
    for _ in range(repeats):
        if frames[0].is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        run(*frames)
        if frames[0].is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def fastest_eager(model: nn.Module, frames: Sequence[torch.Tensor], repeats: int = 1,
                  n_inputs: int | None = None) -> Runner:
    """The faster of NCHW and channels-last on ``frames`` (min of ``repeats`` calls after a warm-up each);
    ``runner.info["ms"]`` holds both times."""
    import copy

    times, runners = {}, {}
    for layout in LAYOUTS:
        m = copy.deepcopy(model) if layout == "channels_last" else model
        runners[layout] = eager_runner(m, layout, n_inputs)
        times[layout] = _time(runners[layout], frames, repeats)
    best = min(times, key=times.__getitem__)
    runner = runners[best]
    runner.info["ms"] = times
    return runner


def adaptive_eager(model: nn.Module, n_inputs: int | None = None) -> Runner:
    """A runner that predicts with both layouts in turn for its first four calls (warm-up NCHW, warm-up
    channels-last, timed NCHW, timed channels-last), then keeps the faster: the choice costs no extra
    model call. ``runner.name`` and ``runner.info["ms"]`` say what was chosen once it is."""
    import copy

    from compresskit_vfi.interpolate import model_num_inputs

    n = n_inputs or model_num_inputs(model)
    runners = {"nchw": eager_runner(model, "nchw", n),
               "channels_last": eager_runner(copy.deepcopy(model), "channels_last", n)}
    order = ["nchw", "channels_last", "nchw", "channels_last"]
    state: dict[str, Any] = {"calls": 0, "ms": {}, "chosen": None}

    def run(*frames: torch.Tensor) -> torch.Tensor:
        chosen = state["chosen"]
        if chosen is not None:
            return runners[chosen](*frames)
        i = state["calls"]
        layout = order[i]
        cuda = frames[0].is_cuda
        if cuda:  # pragma: no cover - needs a GPU
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = runners[layout](*frames)
        if cuda:  # pragma: no cover
            torch.cuda.synchronize()
        if i >= 2:
            state["ms"][layout] = (time.perf_counter() - start) * 1e3
        state["calls"] = i + 1
        if state["calls"] == len(order):
            state["chosen"] = min(state["ms"], key=state["ms"].__getitem__)
            runner.name = runners[state["chosen"]].name
            runner.info["ms"] = dict(state["ms"])
        return out

    runner = Runner(run, n, "eager (layout chosen on the first predictions)", {})
    return runner


def onnx_runner(model: nn.Module, frame_shape: Sequence[int], n_inputs: int | None = None,
                path: str | Path | None = None, threads: int | None = None) -> Runner:
    """``model`` exported to ONNX (checked) and run in ONNX Runtime on CPU; the frames' device is kept.

    Exported on 64×64 frames with dynamic sizes; a model whose file keeps fixed spatial sizes is exported
    again at ``frame_shape`` (B, 3, H, W). ``path``: where to keep the file (default: a temporary one)."""
    from compresskit.deploy.onnx import export_onnx, run_session, session
    from compresskit_vfi.interpolate import model_num_inputs

    n = n_inputs or model_num_inputs(model)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model = model.eval()
    tmp = None
    if path is None:
        tmp = tempfile.TemporaryDirectory(prefix="compresskit_onnx_")
        path = Path(tmp.name) / "model.onnx"
    gen = torch.Generator().manual_seed(0)
    small = tuple(torch.rand(1, 3, 64, 64, generator=gen).to(device) for _ in range(n))
    result = export_onnx(model, small, path)
    if any(isinstance(d, int) for d in result.input_shapes[0][2:]):
        full = tuple(torch.rand(*frame_shape, generator=gen).to(device) for _ in range(n))
        result = export_onnx(model, full, path, second_size=False)
    sess = session(path, threads=threads)

    def run(*frames: torch.Tensor) -> torch.Tensor:
        return run_session(sess, frames)[0].to(frames[0].device)

    runner = Runner(run, n, "onnxruntime", {"export": result.summary(), "notes": result.notes})
    runner.info["_tmp"] = tmp  # keeps the temporary folder alive as long as the runner
    return runner
