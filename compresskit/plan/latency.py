"""Latency measured on the device the model runs on: a small per-layer table, built once and cached.

Measuring every candidate width assignment is too slow for a planner, and MACs do not predict time (a
layer with half the channels is rarely twice as fast on a CPU or GPU). As in NetAdapt (Yang et al., ECCV
2018) and HALP (Shen et al., NeurIPS 2022), each weighted layer is timed *alone* on a small grid of kept
input/output channel counts, and a width assignment is priced by interpolating the tables::

    T(w) = a + b · V(w) + Σ_layers  s_l · interp_l(c_in(w), c_out(w))

- ``interp_l``: bilinear between grid points, linear beyond the smallest one (floored at 0). Each layer
  is one nn.Conv1d/2d/3d, ConvTranspose1d/2d/3d or nn.Linear, called on the input shape it received in
  the traced forward (a layer called several times counts once per call). Grouped convolutions keep their
  group count, depthwise ones shrink their groups with their channels (in = out: one axis).
- ``s_l``: the layer's time measured *inside* the model's forward (timer read in hooks around it) over its
  time alone at full width. Alone, a layer runs with warm caches and reused memory; inside the model it
  does not (on a 2-core CPU the in-model times were 2-10x the isolated ones).
- ``a + b · V(w)``: the time outside these layers (norms, activations, adds, resampling, Python), with
  ``V(w)`` the number of elements the layers output that the widths can change, since the ops after a
  layer touch its output. ``a, b >= 0`` are fitted from the whole model measured at full width and shrunk
  to each ``calibrate`` fraction (default: half of every group); ``calibrate=()`` keeps it a constant.

Times are milliseconds read by the one clock, :class:`compresskit.measure.clock.Clock` (the median of
``repeats`` runs after a warm-up, a run being as many calls as fill about ``min_run_s``, CUDA
synchronised around each run), the clock the verification and the report read too. The tables are
cached in ``cache_dir/latency_table.json`` under a key of device name, torch version, thread count and the
layer's signature (type, channels, kernel, stride, padding, dilation, groups, bias, input shape, dtype),
and the whole-model measurements under a hash of the model's graph, parameter shapes and input shapes, so
a second build on the same machine reads them instead of timing. ``timer`` is injectable: a fake clock
makes the table deterministic, and ``time.thread_time`` with ``torch.set_num_threads(1)`` measures CPU
time that other work on a shared machine does not inflate. See docs/latency.md.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import platform
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from compresskit._modes import eval_mode
from compresskit.io import atomic_write_json
from compresskit.measure.clock import Clock, statistic

if TYPE_CHECKING:  # pragma: no cover
    from compresskit.graph.channels import ChannelGraph

__all__ = ["LatencyTable", "LayerTable", "latency_cost", "device_name", "CACHE_FILE"]

CACHE_FILE = "latency_table.json"
_FORMAT = 1
_TIMED = (nn.modules.conv._ConvNd, nn.Linear)


def device_name(device: torch.device) -> str:
    """A readable name of the device: the GPU's name, or the CPU model (``/proc/cpuinfo``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu {name or platform.processor() or platform.machine()}"


@dataclass
class _Share:
    """A group's share of one weight dimension: ``positions / length`` of it, out of ``size`` units."""

    group: int
    share: float
    size: int


@dataclass
class LayerTable:
    """One weighted layer's measured time (ms) on a grid of kept channel counts.

    ``ms[i][j]`` is the time with ``in_counts[i]`` input and ``out_counts[j]`` output channels (for a
    depthwise conv ``out_counts`` is ``[-1]``: the output follows the input). ``calls``: times the layer
    runs per forward. ``in_shares``/``out_shares``: which groups index its input/output channels.
    """

    name: str
    signature: str
    in_channels: int
    out_channels: int
    in_counts: list[int]
    out_counts: list[int]
    ms: list[list[float]]
    calls: int = 1
    depthwise: bool = False
    in_shares: list[_Share] = field(default_factory=list)
    out_shares: list[_Share] = field(default_factory=list)
    out_numel: int = 0  # elements of one call's output (what the norms and activations after it touch)
    out_prunable: bool = False
    scale: float = 1.0  # the layer's time inside the model's forward / alone, at full width

    def full(self) -> float:
        return self.calls * self.scale * self.ms[-1][-1]

    def kept_out(self, widths: Mapping[int, int]) -> float:
        if self.depthwise:  # the output follows the input, times the channel multiplier
            return _kept(self.in_channels, self.in_shares, widths) * self.out_channels / self.in_channels
        return _kept(self.out_channels, self.out_shares, widths)

    def volume(self, widths: Mapping[int, int]) -> float:
        """Output elements of all calls that the widths can change (0 when its output is frozen)."""
        if not self.out_prunable:
            return 0.0
        return self.calls * self.out_numel * self.kept_out(widths) / self.out_channels

    def at(self, c_in: float, c_out: float) -> float:
        """Interpolated time (ms, all calls) at ``c_in`` input and ``c_out`` output channels."""
        if self.depthwise:
            return self.calls * self.scale * max(0.0, _interp1(self.in_counts, [r[0] for r in self.ms], c_in))
        rows = [_interp1(self.out_counts, row, c_out) for row in self.ms]
        return self.calls * self.scale * max(0.0, _interp1(self.in_counts, rows, c_in))


def _interp1(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear through ``(xs, ys)`` (``xs`` increasing), extended linearly past both ends."""
    if len(xs) == 1:
        return float(ys[0])
    i = min(max(bisect.bisect_right(xs, x) - 1, 0), len(xs) - 2)
    x0, x1 = xs[i], xs[i + 1]
    t = (x - x0) / (x1 - x0)
    return float(ys[i] + t * (ys[i + 1] - ys[i]))


class LatencyTable:
    """Predicted latency (ms) of a width assignment on one device; a :class:`CostModel` (``"latency"``).

    Build with :meth:`build` (or :func:`latency_cost`). ``table(widths)`` prices ``{group id: kept
    units}`` (absent groups at full size); ``full()`` is the full model's predicted time (= the measured
    whole-model time unless the layer times alone add up to more). ``measured_ms`` is that measurement,
    ``fixed_ms`` the part no table covers, ``layers`` the per-layer tables.
    """

    metric = "latency"

    def __init__(self, layers: list[LayerTable], measured_ms: float, sizes: Mapping[int, int],
                 prunable: set[int], *, device: str, key: dict[str, Any], from_cache: int = 0,
                 calibration: Sequence[tuple[Mapping[int, int], float]] = ()) -> None:
        self.layers = layers
        self.measured_ms = float(measured_ms)
        self.sizes = dict(sizes)
        self.prunable = set(prunable)
        self.fixed_ms, self.ms_per_element = self._fit_rest(calibration)
        self._by_group: dict[int, list[int]] = {}
        for i, t in enumerate(layers):
            for g in dict.fromkeys(s.group for s in (*t.in_shares, *t.out_shares)):
                self._by_group.setdefault(g, []).append(i)
        self.device = device
        self.key = key
        self.from_cache = from_cache  # how many tables (layers + whole model) were read, not timed

    def _rest(self, widths: Mapping[int, int]) -> float:
        return self.fixed_ms + self.ms_per_element * sum(t.volume(widths) for t in self.layers)

    def _fit_rest(self, calibration: Sequence[tuple[Mapping[int, int], float]]) -> tuple[float, float]:
        """``rest = a + b · V`` through (V, measured − Σ layer tables) at full width and each calibration
        point (least squares; ``a, b >= 0``); without calibration ``b = 0`` (the rest is a constant)."""
        pts = [({}, self.measured_ms), *calibration]
        xs = [sum(t.volume(w) for t in self.layers) for w, _ in pts]
        ys = [ms - sum(self._layer(t, w) for t in self.layers) for w, ms in pts]
        n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if n > 1 and sxx > 0 else 0.0
        if b <= 0:
            return max(0.0, ys[0] if n == 1 else my), 0.0
        a = my - b * mx
        if a < 0:  # through the origin instead
            a, b = 0.0, max(0.0, sum(x * y for x, y in zip(xs, ys)) / sum(x * x for x in xs))
        return a, b

    # -- CostModel -----------------------------------------------------------------------------------
    def __call__(self, widths: Mapping[int, int]) -> float:
        widths = self._check(widths)
        return self._rest(widths) + sum(self._layer(t, widths) for t in self.layers)

    def full(self) -> float:
        return self._rest({}) + sum(t.full() for t in self.layers)

    def fixed(self) -> float:
        """The predicted time with every prunable group at width 0: what no plan can remove."""
        return self(dict.fromkeys(self.prunable, 0))

    def _layer(self, t: LayerTable, widths: Mapping[int, int]) -> float:
        return t.at(_kept(t.in_channels, t.in_shares, widths), _kept(t.out_channels, t.out_shares, widths))

    def delta(self, widths: Mapping[int, int], gid: int, new_width: int) -> float:
        """``cost(widths) − cost(widths with group gid at new_width)``, re-pricing only its layers."""
        other = {**widths, gid: new_width}
        b = self.ms_per_element
        return sum(self._layer(t, widths) - self._layer(t, other) + b * (t.volume(widths) - t.volume(other))
                   for t in (self.layers[i] for i in self._by_group.get(gid, ())))

    def neighbours(self, gid: int) -> set[int]:
        """Groups sharing a layer with ``gid`` (their marginal time moves when ``gid``'s width does)."""
        out: set[int] = set()
        for i in self._by_group.get(gid, ()):
            t = self.layers[i]
            out.update(s.group for s in (*t.in_shares, *t.out_shares) if s.group in self.prunable)
        return out

    def share_of(self, gid: int) -> float:
        """Fraction of the full time spent in layers that group ``gid`` indexes."""
        b = self.ms_per_element
        return sum(self.layers[i].full() + b * self.layers[i].volume({})
                   for i in self._by_group.get(gid, ())) / (self.full() or 1.0)

    def _check(self, widths: Mapping[int, int]) -> Mapping[int, int]:
        if not isinstance(widths, Mapping):
            raise TypeError("widths: expected a mapping {group id: kept units}, "
                            f"got {type(widths).__name__}")
        for gid, w in widths.items():
            if gid not in self.sizes:
                raise KeyError(f"widths: unknown group id {gid!r} "
                               f"(the graph has groups 0..{len(self.sizes) - 1})")
            if not 0 <= w <= self.sizes[gid]:
                raise ValueError(f"widths: group {gid} must keep 0..{self.sizes[gid]} units, got {w}")
        return widths

    # -- reporting -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device, "key": self.key, "measured_ms": self.measured_ms,
            "fixed_ms": self.fixed_ms, "ms_per_element": self.ms_per_element,
            "layers": [{"name": t.name, "signature": t.signature, "calls": t.calls, "in_counts": t.in_counts,
                        "out_counts": t.out_counts, "ms": t.ms, "scale": t.scale} for t in self.layers],
        }

    def __repr__(self) -> str:
        return (f"LatencyTable({len(self.layers)} layers, full {self.full():.3f} ms, "
                f"fixed {self.fixed_ms:.3f} ms, {self.device})")

    # -- building ------------------------------------------------------------------------------------
    @classmethod
    def build(cls, model: nn.Module, graph: ChannelGraph, example_inputs: Any, *,
              device: str | torch.device | None = None, cache_dir: str | Path | None = None, repeats: int = 5,
              grid: Sequence[float] = (0.25, 0.5, 0.75, 1.0), timer: Callable[[], float] | None = None,
              warmup: int = 2, min_run_s: float = 2e-3, calibrate: Sequence[float] = (0.5,),
              layout: str = "eager") -> LatencyTable:
        """Measure ``model`` (and each of its weighted layers alone) on ``device`` (default: where its
        parameters are). ``grid``: kept fractions of each prunable channel dimension (1.0 is always
        added); ``timer``: a clock in seconds (``time.perf_counter``; inject a fake one in tests);
        ``calibrate``: kept fractions at which the whole model is shrunk and measured to fit the rest
        (``()``: the rest is a constant); ``layout``: ``"eager"`` (NCHW) or ``"channels_last"``: the
        model, its inputs and every layer timed alone in that memory layout (``compresskit.deploy.runtime``),
        so the table prices the runtime the result will be measured in."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats: expected an int >= 1, got {repeats!r}")
        fracs = sorted({float(f) for f in grid} | {1.0})
        if not fracs or fracs[0] <= 0 or fracs[-1] > 1:
            raise ValueError(f"grid: expected kept fractions in (0, 1], got {tuple(grid)!r}")
        inputs = example_inputs if isinstance(example_inputs, tuple | list) else (example_inputs,)
        if device is None:
            p = next(iter(model.parameters()), None)
            device = p.device if p is not None else torch.device("cpu")
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        key = {"device": device_name(device), "torch": torch.__version__, "threads": torch.get_num_threads()}
        if layout not in ("eager", "channels_last"):
            raise ValueError(f"layout: expected 'eager' or 'channels_last', got {layout!r}")
        inputs = tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in inputs)
        if layout == "channels_last":
            import copy

            from compresskit.deploy.runtime import _channels_last, to_channels_last

            key["layout"] = layout
            model = to_channels_last(copy.deepcopy(model))
            inputs = tuple(_channels_last(x) for x in inputs)
        clock = Clock(device, repeats, warmup, min_run_s, timer)
        cache = _Cache(Path(cache_dir) if cache_dir is not None else None, key)

        modules = dict(model.named_modules())
        weighted = [layer.name for layer in graph.layers if isinstance(modules.get(layer.name), _TIMED)]
        moved = {p.device for p in model.parameters()} - {device}
        if moved:
            raise ValueError(f"device: the model's parameters are on {sorted(map(str, moved))}, "
                             f"not {device}; move the model first (the table times it where it runs)")
        with eval_mode(model):
            shapes, out_numel = _record_inputs(model, inputs, {n: modules[n] for n in weighted})
            model_sig = _model_signature(model, graph, inputs)
            measured = cache.get("model:" + model_sig)
            if measured is None:
                measured = clock.ms(lambda: model(*inputs))
                cache.put("model:" + model_sig, measured)
            in_model = cache.get(f"model:{model_sig}|layers")
            if in_model is None:
                in_model = _time_in_model(model, inputs, {n: modules[n] for n in weighted}, clock)
                cache.put(f"model:{model_sig}|layers", in_model)
        sizes = {g.id: g.size for g in graph.groups}
        prunable = {g.id for g in graph.groups if g.prunable}
        layers = []
        for name in weighted:
            mod = modules[name]
            for shape, dtype, calls in _distinct(shapes.get(name, [])):
                in_shares, out_shares = _shares(graph, name, mod)
                t = _time_layer(name, mod, shape, dtype, calls, in_shares, out_shares, prunable, fracs, clock,
                                cache, device, layout)
                t.out_numel = out_numel[(name, shape, dtype)]
                inside = in_model.get(_call_key(name, shape, dtype))
                if inside is not None and t.ms[-1][-1] > 0:
                    t.scale = inside / t.ms[-1][-1]
                t.out_prunable = any(s.group in prunable for s in (in_shares if t.depthwise else out_shares))
                layers.append(t)
        points = []
        for f in calibrate:
            if not 0 < f < 1:
                raise ValueError(f"calibrate: expected kept fractions in (0, 1), got {tuple(calibrate)!r}")
            widths = {g.id: max(1, round(f * g.size)) for g in graph.groups if g.prunable}
            ms = cache.get(f"model:{model_sig}|kept={f}")
            if ms is None:
                ms = _measure_shrunk(model, graph, inputs, widths, clock, layout)
                if ms is None:
                    continue
                cache.put(f"model:{model_sig}|kept={f}", ms)
            points.append((widths, ms))
        cache.flush()
        return cls(layers, measured, sizes, prunable, device=key["device"], key=key, from_cache=cache.hits,
                   calibration=points)


def latency_cost(model: nn.Module, graph: ChannelGraph, example_inputs: Any, **kw: Any) -> LatencyTable:
    """:meth:`LatencyTable.build`, named like the other cost models (``params_cost``, ``macs_cost``)."""
    return LatencyTable.build(model, graph, example_inputs, **kw)


# ---------------------------------------------------------------------- measuring
def _record_inputs(model: nn.Module, inputs: tuple, modules: dict[str, nn.Module]
                   ) -> tuple[dict[str, list[tuple[tuple[int, ...], torch.dtype]]], dict[tuple, int]]:
    """Input shape and dtype of every call of each module in one forward, and the number of elements its
    output has for each (hooks, removed after)."""
    seen: dict[str, list[tuple[tuple[int, ...], torch.dtype]]] = {n: [] for n in modules}
    numel: dict[tuple, int] = {}
    handles = []
    for name, mod in modules.items():
        def hook(m: nn.Module, args: tuple, out: Any, name: str = name) -> None:
            if args and isinstance(args[0], torch.Tensor):
                key = (tuple(args[0].shape), args[0].dtype)
                seen[name].append(key)
                numel[(name, *key)] = out.numel() if isinstance(out, torch.Tensor) else 0
        handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return seen, numel


def _measure_shrunk(model: nn.Module, graph: ChannelGraph, inputs: tuple, widths: Mapping[int, int],
                    clock: Clock, layout: str = "eager") -> float | None:
    """The whole model shrunk to ``widths`` (first units of each group) and measured; None if it fails."""
    from compresskit.surgery.surgery import shrink

    keep = {gid: torch.arange(w) for gid, w in widths.items() if w < graph.groups[gid].size}
    try:
        small = shrink(model, graph, keep=keep).eval()
        if layout == "channels_last":
            from compresskit.deploy.runtime import to_channels_last

            small = to_channels_last(small)
        return clock.ms(lambda: small(*inputs))
    except Exception as e:  # a model the surgery cannot run: the rest stays a constant
        warnings.warn(f"latency table: the model shrunk to calibrate the rest could not run ({e}); the time "
                      "outside conv/linear layers is taken as a constant", stacklevel=3)
        return None


def _call_key(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> str:
    return f"{name}|{tuple(shape)}|{dtype}".replace(" ", "")


def _time_in_model(model: nn.Module, inputs: tuple, modules: dict[str, nn.Module], clock: Clock
                   ) -> dict[str, float]:
    """Milliseconds per call of each layer inside the model's forward (timer read in hooks around it),
    by :func:`_call_key`; the clock's statistic over ``repeats`` forwards after the warm-up."""
    runs: dict[str, list[float]] = {}
    current: dict[str, list[float]] = {}
    started: dict[str, float] = {}

    def pre(name: str) -> Callable:
        def hook(m: nn.Module, args: tuple) -> None:
            clock.sync()
            started[name] = clock.timer()
        return hook

    def post(name: str) -> Callable:
        def hook(m: nn.Module, args: tuple, out: Any) -> None:
            clock.sync()
            if args and isinstance(args[0], torch.Tensor) and name in started:
                key = _call_key(name, tuple(args[0].shape), args[0].dtype)
                current.setdefault(key, []).append(clock.timer() - started.pop(name))
        return hook

    handles = []
    for name, mod in modules.items():
        handles.append(mod.register_forward_pre_hook(pre(name)))
        handles.append(mod.register_forward_hook(post(name)))
    try:
        with torch.inference_mode():
            for i in range(clock.warmup + clock.repeats):
                current.clear()
                model(*inputs)
                if i >= clock.warmup:
                    for key, times in current.items():
                        runs.setdefault(key, []).append(sum(times) / len(times))
    finally:
        for h in handles:
            h.remove()
    return {key: 1000.0 * statistic(v) for key, v in runs.items()}


def _distinct(calls: list[tuple[tuple[int, ...], torch.dtype]]
              ) -> list[tuple[tuple[int, ...], torch.dtype, int]]:
    counts: dict[tuple, int] = {}
    for c in calls:
        counts[c] = counts.get(c, 0) + 1
    return [(s, d, n) for (s, d), n in counts.items()]


def _dims(mod: nn.Module) -> tuple[int, int, int]:
    """(channel dim of the input, weight dim of input channels, weight dim of output channels)."""
    if isinstance(mod, nn.Linear):
        return -1, 1, 0
    nd = len(mod.kernel_size)
    return -nd - 1, (0 if mod.transposed else 1), (1 if mod.transposed else 0)


def _is_depthwise(mod: nn.Module) -> bool:
    return isinstance(mod, nn.modules.conv._ConvNd) and mod.groups > 1 and mod.groups == mod.in_channels


def _shares(graph: ChannelGraph, name: str, mod: nn.Module) -> tuple[list[_Share], list[_Share]]:
    _, w_in, w_out = _dims(mod)
    if _is_depthwise(mod):  # one axis: the channels the weight's first dim is indexed by
        w_in = w_out = 0
    ins: list[_Share] = []
    outs: list[_Share] = []
    for g in graph.groups_of(name):
        for m in g.members:
            if m.module != name or m.tensor != "weight":
                continue
            share = _Share(g.id, len(m.positions) / max(1, m.length), g.size)
            if m.dim == w_in:
                ins.append(share)
            if m.dim == w_out and not _is_depthwise(mod):
                outs.append(share)
    return ins, outs


def _kept(channels: int, shares: list[_Share], widths: Mapping[int, int]) -> float:
    frac = 1.0
    for s in shares:
        w = widths.get(s.group, s.size)
        frac -= s.share * (1.0 - w / s.size)
    return channels * frac


def _counts(channels: int, shares: list[_Share], prunable: set[int], fracs: list[float],
            multiple: int) -> list[int]:
    if not any(s.group in prunable for s in shares):
        return [channels]
    out = {channels}
    for f in fracs:
        c = max(multiple, int(round(f * channels / multiple)) * multiple)
        out.add(min(c, channels))
    return sorted(out)


def _time_layer(name: str, mod: nn.Module, shape: tuple[int, ...], dtype: torch.dtype, calls: int,
                in_shares: list[_Share], out_shares: list[_Share], prunable: set[int], fracs: list[float],
                clock: Clock, cache: _Cache, device: torch.device, layout: str = "eager") -> LayerTable:
    c_in, c_out = _channels(mod)
    depthwise = _is_depthwise(mod)
    groups = getattr(mod, "groups", 1)
    in_counts = _counts(c_in, in_shares, prunable, fracs, 1 if depthwise else groups)
    out_counts = [-1] if depthwise else _counts(c_out, out_shares, prunable, fracs, groups)
    sig = _layer_signature(mod, shape, dtype) + ("|channels_last" if layout == "channels_last" else "")
    grid_key = f"{sig}|in={in_counts}|out={out_counts}"
    ms = cache.get(grid_key)
    if ms is None:
        ch_dim = _dims(mod)[0]
        ms = []
        for ci in in_counts:
            row = []
            for co in out_counts:
                layer = _resized(mod, ci, co).to(device=device, dtype=dtype).eval()
                x_shape = list(shape)
                x_shape[ch_dim] = ci
                x = torch.randn(x_shape, device=device, dtype=dtype)
                if layout == "channels_last" and x.dim() in (4, 5):
                    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
                    layer, x = layer.to(memory_format=fmt), x.contiguous(memory_format=fmt)
                row.append(clock.ms(lambda layer=layer, x=x: layer(x)))
            ms.append(row)
        cache.put(grid_key, ms)
    return LayerTable(name, sig, c_in, c_out, in_counts, out_counts, ms, calls, depthwise, in_shares,
                      out_shares)


def _channels(mod: nn.Module) -> tuple[int, int]:
    if isinstance(mod, nn.Linear):
        return mod.in_features, mod.out_features
    return mod.in_channels, mod.out_channels


def _resized(mod: nn.Module, c_in: int, c_out: int) -> nn.Module:
    """A fresh layer like ``mod`` with ``c_in`` input and ``c_out`` output channels (random weights)."""
    bias = mod.bias is not None
    if isinstance(mod, nn.Linear):
        return nn.Linear(c_in, c_out, bias=bias)
    groups = mod.groups
    if _is_depthwise(mod):
        mult = mod.out_channels // mod.in_channels
        groups, c_out = c_in, c_in * mult
    kw = dict(kernel_size=mod.kernel_size, stride=mod.stride, padding=mod.padding, dilation=mod.dilation,
              groups=groups, bias=bias, padding_mode=mod.padding_mode)
    if mod.transposed:
        kw["output_padding"] = mod.output_padding
    return _plain(mod)(c_in, c_out, **kw)


def _plain(mod: nn.Module) -> type:
    """The torch.nn class ``mod`` is or derives from (a subclass's __init__ may take other arguments)."""
    for t in type(mod).__mro__:
        if t.__module__.startswith("torch.nn") and not t.__name__.startswith("_"):
            return t
    raise TypeError(f"cannot time a resized copy of {type(mod).__name__}")


def _layer_signature(mod: nn.Module, shape: tuple[int, ...], dtype: torch.dtype) -> str:
    if isinstance(mod, nn.Linear):
        parts = [_plain(mod).__name__, mod.in_features, mod.out_features, mod.bias is not None]
    else:
        parts = [_plain(mod).__name__, mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride,
                 mod.padding, mod.dilation, mod.groups, mod.bias is not None, mod.padding_mode,
                 mod.output_padding if mod.transposed else ()]
    parts += [shape, str(dtype).replace("torch.", "")]
    return "/".join(str(p).replace(" ", "") for p in parts)


def _model_signature(model: nn.Module, graph: ChannelGraph, inputs: tuple) -> str:
    """Type, fx code and parameter shapes of the model, with the input shapes (a hash: models are large)."""
    h = hashlib.sha1()
    h.update(type(model).__qualname__.encode())
    if graph.fx_graph is not None:
        h.update(str(graph.fx_graph).encode())
    for n, p in model.named_parameters():
        h.update(f"{n}:{tuple(p.shape)}:{p.dtype}".encode())
    shapes = [(tuple(x.shape), str(x.dtype)) if isinstance(x, torch.Tensor) else repr(x) for x in inputs]
    return f"{type(model).__name__}/{h.hexdigest()[:16]}/{shapes}".replace(" ", "")


# ---------------------------------------------------------------------- cache
class _Cache:
    """``cache_dir/latency_table.json``: ``{"format", "entries": {key: value}}``; keys carry the machine."""

    def __init__(self, cache_dir: Path | None, key: dict[str, Any]) -> None:
        self.path = cache_dir / CACHE_FILE if cache_dir is not None else None
        self.prefix = f"{key['device']}|torch={key['torch']}|threads={key['threads']}|"
        self.entries: dict[str, Any] = {}
        self.hits = 0
        self.dirty = False
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError):
                data = {}
            if isinstance(data, dict) and data.get("format") == _FORMAT:
                self.entries = dict(data.get("entries", {}))

    def get(self, key: str) -> Any:
        v = self.entries.get(self.prefix + key)
        if v is not None:
            self.hits += 1
        return v

    def put(self, key: str, value: Any) -> None:
        self.entries[self.prefix + key] = value
        self.dirty = True

    def flush(self) -> None:
        if self.path is None or not self.dirty:
            return
        if self.path.is_file():  # another build may have written since: keep its entries too
            try:
                data = json.loads(self.path.read_text())
                if isinstance(data, dict) and data.get("format") == _FORMAT:
                    self.entries = {**data.get("entries", {}), **self.entries}
            except (OSError, json.JSONDecodeError):
                pass
        atomic_write_json({"format": _FORMAT, "entries": self.entries}, self.path, indent=1)
        self.dirty = False
