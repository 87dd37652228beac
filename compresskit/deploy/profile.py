"""Where a model's time goes, by op kind: conv, matmul, warp, resize, norm, element-wise.

:func:`time_by_op_kind` runs the model under ``torch.profiler`` (CPU activity; CUDA kernels too on a GPU)
and adds up the time of every *top-level* operator call (one the model's Python code made, its internal
calls included) by kind (:func:`op_kind`). :func:`kept_time_note` compares two such profiles (before and
after compression) and names the kinds, and within them the operators, whose time did not fall with the
MACs: what a latency that lags the MACs is made of, measured instead of guessed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compresskit._modes import eval_mode

__all__ = ["KINDS", "op_kind", "OpTimes", "time_by_op_kind", "kept_time_note"]

KINDS = ("conv", "matmul", "warp", "resize", "norm", "element-wise")

_PATTERNS = (  # first match wins: resize before matmul (upsample_bilinear2d is no linear layer)
    ("resize", ("upsample", "interpolate", "pixel_shuffle", "pixel_unshuffle", "pool")),
    ("conv", ("conv",)),
    ("matmul", ("::linear", "addmm", "::mm", "bmm", "matmul", "scaled_dot_product", "einsum")),
    ("warp", ("grid_sampler", "grid_sample", "gather", "scatter", "embedding_bag", "index_select",
              "::index", "adacof", "splat", "correlation", "roll")),
    ("norm", ("batch_norm", "layer_norm", "group_norm", "instance_norm", "native_norm")),
)


def op_kind(name: str) -> str:
    """The kind of an operator name (``aten::conv2d`` → conv, ``compresskit_vfi::adacof`` → warp, ...);
    everything else (activations, adds, concatenation, padding, copies) is element-wise."""
    low = name.lower()
    for kind, keys in _PATTERNS:
        if any(k in low for k in keys):
            return kind
    return "element-wise"


@dataclass
class OpTimes:
    """Milliseconds per forward by kind and by top-level operator, and the layout it was measured in."""

    kinds: dict[str, float] = field(default_factory=dict)
    ops: dict[str, float] = field(default_factory=dict)
    layout: str = "eager"

    def to_dict(self) -> dict[str, Any]:
        return {"kinds": self.kinds, "ops": self.ops, "layout": self.layout}


def time_by_op_kind(model: nn.Module, example_inputs: Any, layout: str = "eager", repeats: int = 3,
                    warmup: int = 1) -> OpTimes:
    """Time per forward of each op kind (ms), from ``torch.profiler`` over ``repeats`` forwards in eval
    and inference mode; ``layout``: ``"eager"`` (NCHW) or ``"channels_last"``."""
    from torch.profiler import ProfilerActivity, profile

    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if layout == "channels_last":
        from compresskit.deploy.runtime import _channels_last, to_channels_last

        model = to_channels_last(copy.deepcopy(model))
        inputs = tuple(_channels_last(t) for t in inputs)
    elif layout != "eager":
        raise ValueError(f"layout: expected 'eager' or 'channels_last', got {layout!r}")
    activities = [ProfilerActivity.CPU]
    cuda = any(isinstance(t, torch.Tensor) and t.is_cuda for t in inputs)
    if cuda:  # pragma: no cover - needs a GPU
        activities.append(ProfilerActivity.CUDA)
    with eval_mode(model), torch.inference_mode():
        for _ in range(warmup):
            model(*inputs)
        with profile(activities=activities) as prof:
            for _ in range(repeats):
                model(*inputs)
    ops: dict[str, float] = {}
    for ev in prof.events():
        if ev.cpu_parent is not None or "::" not in ev.name:
            continue
        us = ev.device_time_total if cuda and ev.device_time_total else ev.cpu_time_total
        ops[ev.name] = ops.get(ev.name, 0.0) + us / 1e3 / repeats
    kinds = dict.fromkeys(KINDS, 0.0)
    for name, ms in ops.items():
        kinds[op_kind(name)] += ms
    return OpTimes(kinds, dict(sorted(ops.items(), key=lambda kv: -kv[1])), layout)


def kept_time_note(before: OpTimes | Mapping[str, Any], after: OpTimes | Mapping[str, Any],
                   mac_gain: float, min_share: float = 0.05) -> str:
    """``time by op kind, before → after: conv 40.1 → 12.0 ms (3.3x), ...; kept their time: warp
    (compresskit_vfi::adacof 9.8 → 9.7 ms)``: the kinds holding at least ``min_share`` of the original's
    op time whose time fell by less than half the MACs' factor (``mac_gain``; at least 1.3x, which a
    kind whose work did not change can measure on a loaded machine), with their largest ops."""
    b = before if isinstance(before, OpTimes) else OpTimes(**before)
    a = after if isinstance(after, OpTimes) else OpTimes(**after)
    total = sum(b.kinds.values()) or 1e-300
    limit = max(1.3, 0.5 * mac_gain)  # 1.3: a kind whose work did not change still measures up to ~1.2x
    parts, kept = [], []
    for kind in KINDS:
        tb, ta = b.kinds.get(kind, 0.0), a.kinds.get(kind, 0.0)
        if tb <= 0 and ta <= 0:
            continue
        gain = tb / ta if ta > 0 else float("inf")
        parts.append(f"{kind} {tb:.3g} → {ta:.3g} ms ({gain:.2f}x)")
        if tb / total >= min_share and gain < limit:
            top = [n for n in b.ops if op_kind(n) == kind and a.ops.get(n, 0.0) > 0
                   and b.ops[n] / a.ops[n] < limit][:2]  # its ops that kept their time themselves
            which = ", ".join(f"{n} {b.ops[n]:.3g} → {a.ops.get(n, 0.0):.3g} ms" for n in top)
            kept.append(f"{kind} ({which})" if which else kind)
    text = f"time by op kind ({b.layout}), before → after: " + ", ".join(parts)
    if kept:
        text += f"; kept their time (fell less than {limit:.2g}x): " + "; ".join(kept)
    return text


def share_summary(times: OpTimes, top: int = 3) -> str:
    """``conv 71%, warp 18%, element-wise 9%``: the largest kinds' shares of the op time."""
    total = sum(times.kinds.values()) or 1e-300
    order: Sequence[tuple[str, float]] = sorted(times.kinds.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{k} {v / total:.0%}" for k, v in order if v > 0)
