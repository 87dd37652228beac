"""Measure and show what compression did: parameters, MACs, CPU latency, metrics, per-layer widths.

``CompressReport`` is the record :func:`compresskit.compress` returns; it round-trips through JSON, prints
as rich tables and draws PNG charts (density per layer, metric against parameters). The measurement
helpers work on any ``nn.Module``: :func:`evaluate` lives here; :func:`count_params`, :func:`count_macs`
and :func:`measure_latency` are the ground floor's (:mod:`compresskit.measure`), named here too because
``ck.report`` is public.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compresskit._modes import eval_mode
from compresskit.io import atomic_write_bytes, atomic_write_json
from compresskit.measure.clock import measure_latency
from compresskit.measure.counts import count_params
from compresskit.measure.macs import count_macs
from compresskit.training.batch import to_device

__all__ = [
    "CompressReport",
    "LayerRecord",
    "ModelStats",
    "count_params",
    "count_macs",
    "measure_latency",
    "evaluate",
    "model_stats",
    "normalize_metrics",
    "plot_metric_vs_params",
    "print_report",
]

Metric = Callable[[Any, Any], Any]

REPORT_FORMAT = "compresskit.report/1"


def normalize_metrics(metrics: Mapping[str, Metric] | Sequence[Metric] | Metric | None) -> dict[str, Metric]:
    """``{name: metric(output, batch)}`` from a mapping, a list of callables (by ``__name__``) or one."""
    if metrics is None:
        return {}
    if callable(metrics) and not isinstance(metrics, Mapping):
        metrics = [metrics]
    if isinstance(metrics, Mapping):
        out = dict(metrics)
    elif isinstance(metrics, (list, tuple)):
        out = {}
        for m in metrics:
            name = getattr(m, "__name__", None) or type(m).__name__
            out[name] = m
    else:
        raise TypeError("metrics: expected a mapping {name: fn(output, batch)}, a list of such functions or "
                        f"one function, got {type(metrics).__name__}")
    for name, fn in out.items():
        if not isinstance(name, str) or not callable(fn):
            raise TypeError(f"metrics: entry {name!r} must map a string to a callable fn(output, batch)")
    return out


def _batch_size(batch: Any) -> int:
    for item in batch if isinstance(batch, (tuple, list)) else (batch,):
        if isinstance(item, torch.Tensor) and item.dim() > 0:
            return int(item.shape[0])
    return 1


def evaluate(
    model: nn.Module,
    loader: Iterable,
    metrics: Mapping[str, Metric],
    inputs_fn: Callable[[Any], tuple],
    max_batches: int | None = None,
) -> dict[str, float]:
    """Mean of each ``metric(output, batch)`` over the loader, weighted by batch size, in eval mode."""
    metrics = normalize_metrics(metrics)
    if not metrics:
        return {}
    sums = dict.fromkeys(metrics, 0.0)
    count = 0
    device = next(model.parameters(), torch.zeros(())).device
    with eval_mode(model), torch.no_grad():
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            batch = to_device(batch, device)
            output = model(*inputs_fn(batch))
            n = _batch_size(batch)
            for name, fn in metrics.items():
                value = fn(output, batch)
                sums[name] += float(value.item() if isinstance(value, torch.Tensor) else value) * n
            count += n
    if count == 0:
        raise ValueError("evaluate: the validation loader yielded no batches")
    return {name: s / count for name, s in sums.items()}


@dataclass
class ModelStats:
    """Size and speed of one model: parameters, MACs of one forward pass, median CPU latency (ms)."""

    params: int
    macs: int
    latency_ms: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    #: the runtime ``latency_ms`` was measured in (``compresskit.deploy.runtime``: the fastest, or the
    #: one a latency target planned on) and the median ms in every runtime measured
    latency_runtime: str | None = None
    latency_by_runtime: dict[str, float] = field(default_factory=dict)


def model_stats(model: nn.Module, example_inputs: Any, latency: bool = True, repeats: int = 10) -> ModelStats:
    """Parameters, MACs and (optionally) measured latency of ``model`` on ``example_inputs``."""
    lat = measure_latency(model, example_inputs, repeats=repeats)["median_ms"] if latency else None
    return ModelStats(count_params(model), count_macs(model, example_inputs), lat)


# ----------------------------------------------------------------------------------------------- records
@dataclass
class LayerRecord:
    """One conv/linear layer: its density after sparsification and its weight shape before and after."""

    name: str
    type: str
    density: float | None
    shape_before: list[int]
    shape_after: list[int] | None = None
    params_before: int = 0
    params_after: int | None = None


@dataclass
class CompressReport:
    """What :func:`compresskit.compress` did, JSON-serialisable (``to_dict``/``from_dict``)."""

    model: str
    loss: str
    inputs: str
    before: ModelStats
    after: ModelStats | None = None
    layers: list[LayerRecord] = field(default_factory=list)
    #: ``{group id: [width before, width after]}`` for every group the plan touched
    widths: dict[str, list[int]] = field(default_factory=dict)
    plan: str = ""
    stages: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    config: dict[str, Any] = field(default_factory=dict)
    example_input_shapes: list[list[int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # warnings about the run (e.g. nothing became sparse)
    #: ``{"target", "metric", "ratio", "achieved", "predicted"}``: what was asked and what was reached (the
    #: first measure); ``"terms"``: one such dict (and ``"met"``) per measure of a several-measure target
    target: dict[str, Any] | None = None
    #: stage I's record: λ0, the calibration history (λ, fraction heading to zero, schedule) per check
    calibration: dict[str, Any] = field(default_factory=dict)
    #: stage II's record: the plan's budget, prediction and each verification (measured cost)
    planning: dict[str, Any] = field(default_factory=dict)
    #: the budget and how it was spent: seconds per stage, steps and learning rate each stage got (and
    #: why), the held-out split and which weights were returned (compresskit.budget, compresskit.autorecipe)
    budget: dict[str, Any] = field(default_factory=dict)
    #: when latency lagged the MACs: ms per op kind and per top-level op, before and after
    #: (``compresskit.deploy.profile``)
    op_times: dict[str, Any] = field(default_factory=dict)

    # ---- derived numbers
    @property
    def param_ratio(self) -> float | None:
        """Parameters after / before."""
        return None if self.after is None else self.after.params / max(self.before.params, 1)

    @property
    def mac_ratio(self) -> float | None:
        return None if self.after is None else self.after.macs / max(self.before.macs, 1)

    # ---- JSON
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["format"] = REPORT_FORMAT
        data["param_ratio"] = self.param_ratio
        data["mac_ratio"] = self.mac_ratio
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompressReport:
        if not isinstance(data, Mapping) or data.get("format") != REPORT_FORMAT:
            raise ValueError(f"not a compresskit report: expected a mapping with format {REPORT_FORMAT!r}")
        kw = {k: v for k, v in data.items() if k not in ("format", "param_ratio", "mac_ratio")}
        kw["before"] = ModelStats(**kw["before"])
        kw["after"] = None if kw.get("after") is None else ModelStats(**kw["after"])
        kw["layers"] = [LayerRecord(**r) for r in kw.get("layers", [])]
        return cls(**kw)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the report as JSON (atomically)."""
        return atomic_write_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CompressReport:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"report {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"report {str(path)!r} is not valid JSON: {e}") from e
        return cls.from_dict(data)

    # ---- display
    def print(self, console: Any = None) -> None:
        """Rich tables: summary (before/after/ratio), then per-layer density and widths."""
        print_report(self, console)

    def plot(self, out_dir: str | os.PathLike, metric: str | None = None) -> list[Path]:
        """Write ``densities.png`` and, when a metric was measured, ``<metric>_vs_params.png``."""
        out_dir = Path(out_dir)
        written = []
        dens = {r.name: r.density for r in self.layers if r.density is not None}
        if dens:
            from compresskit.measure.density import plot_densities

            written.append(plot_densities(dens, out_dir / "densities.png"))
        names = [m for m in self.before.metrics if self.after is not None and m in self.after.metrics]
        if metric is None and names:
            metric = names[0]
        if metric is not None and self.after is not None:
            points = [("original", self.before.params, self.before.metrics[metric]),
                      ("compressed", self.after.params, self.after.metrics[metric])]
            written.append(plot_metric_vs_params(points, out_dir / f"{metric}_vs_params.png", metric))
        return written


_EXPECTED_FROZEN = ("graph input", "graph output")
_MAX_FROZEN_NOTES = 12


def frozen_group_notes(graph: Any) -> list[str]:
    """One note per channel group a layer produces that tracing froze for a reason other than being a
    graph input or output (an op without a channel rule, a custom Function, data read into numpy, ...):
    the channels compression could not touch, and why."""
    notes = []
    for g in graph.groups:
        if g.prunable or not g.producers:
            continue
        reasons = list(dict.fromkeys(r for r in g.reasons if not any(e in r for e in _EXPECTED_FROZEN)))
        if not reasons:
            continue
        more = f" (+{len(reasons) - 2} more)" if len(reasons) > 2 else ""
        notes.append(f"frozen channel group {g.id} ({g.size} channels of {', '.join(g.producers)}): "
                     + "; ".join(reasons[:2]) + more)
    if len(notes) > _MAX_FROZEN_NOTES:
        extra = len(notes) - _MAX_FROZEN_NOTES
        notes = notes[:_MAX_FROZEN_NOTES] + [f"... and {extra} more frozen channel groups "
                                             "(ck.trace(model, inputs).explain(group_id) tells why)"]
    return notes


def _fmt_int(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or a == 0:
        return "-"
    return f"{b / a:.3f}×"


def _runtime_label(before: ModelStats, after: ModelStats | None) -> str:
    """``, channels_last`` or ``, eager → channels_last``: the runtime(s) the latency row used."""
    b = before.latency_runtime
    a = after.latency_runtime if after is not None else None
    if b is None and a is None:
        return ""
    return f", {b}" if a in (None, b) else f", {b} → {a}"


def print_report(report: CompressReport | Mapping[str, Any], console: Any = None) -> None:
    """Pretty-print a report (object or its JSON dict) as rich tables."""
    from rich.console import Console
    from rich.table import Table

    if isinstance(report, Mapping):
        report = CompressReport.from_dict(report)
    console = console or Console()
    after = report.after
    summary = Table(title=f"compress: {report.model}", title_justify="left")
    summary.add_column("")
    summary.add_column("before", justify="right")
    summary.add_column("after", justify="right")
    summary.add_column("after/before", justify="right")
    b = report.before
    summary.add_row("parameters", f"{b.params:,}", "-" if after is None else f"{after.params:,}",
                    _ratio(b.params, after and after.params))
    summary.add_row("MACs", _fmt_int(b.macs), _fmt_int(after and after.macs),
                    _ratio(b.macs, after and after.macs))
    if b.latency_ms is not None:
        a_lat = after.latency_ms if after else None
        summary.add_row(f"latency (ms{_runtime_label(b, after)})", f"{b.latency_ms:.2f}",
                        "-" if a_lat is None else f"{a_lat:.2f}", _ratio(b.latency_ms, a_lat))
        for name, ms in b.latency_by_runtime.items():  # the other runtimes, one row each
            a_ms = after.latency_by_runtime.get(name) if after else None
            summary.add_row(f"  {name} (ms)", f"{ms:.2f}", "-" if a_ms is None else f"{a_ms:.2f}",
                            _ratio(ms, a_ms))
    for name, value in b.metrics.items():
        a_val = after.metrics.get(name) if after else None
        delta = "-" if a_val is None else f"{a_val - value:+.4g}"
        summary.add_row(name, f"{value:.4g}", "-" if a_val is None else f"{a_val:.4g}", delta)
    console.print(summary)
    if report.target:
        for t in report.target.get("terms") or [report.target]:  # every measure of the target
            got = "-" if t.get("achieved") is None else f"{t['achieved']:.3g}x"
            console.print(f"target [bold]{t['target']}[/]: achieved {got} {t['metric']}"
                          + ("" if t.get("predicted") is None else f" (planned {t['predicted']:.3g}x)"))
    cal = report.calibration
    if cal.get("method") == "progressive":
        console.print(f"sparsify: the units the plan removes ({cal.get('removed_fraction', 0):.0%}) were "
                      f"driven to zero ({cal.get('gone', 0):.0%} of their l1 mass gone) while the others "
                      f"trained (kept {cal.get('kept', 1):.0%} of theirs)")
    elif cal.get("lambda0") is not None:
        final = cal.get("final_lambda", cal["lambda0"])
        console.print(f"λ calibrated: λ0 {cal['lambda0']:.3g} → {final:.3g}; the units the plan removes "
                      f"({cal.get('removed_fraction', 0):.0%}) lost {cal.get('gone', 0):.0%} of their l1 "
                      f"mass, the others kept {cal.get('kept', 1):.0%}")
    if report.budget:
        from compresskit.budget import budget_lines

        for line in budget_lines(report.budget):
            console.print(line)
    console.print(f"loss: {report.loss}\ninputs: {report.inputs}")
    if report.layers:
        names = [r.name for r in report.layers]
        prefix = os.path.commonprefix(names) if len(names) > 1 else ""
        prefix = prefix[: prefix.rfind(".") + 1]  # only whole module-path components
        title = "layers" + (f" (under {prefix[:-1]})" if prefix else "")
        layers = Table(title=title, title_justify="left")
        for col, just in (("layer", "left"), ("density", "right"), ("out×in before → after", "right"),
                          ("params", "right")):
            layers.add_column(col, justify=just, no_wrap=True)
        for r in report.layers:
            io_before = "×".join(map(str, r.shape_before[:2]))
            io_after = "-" if r.shape_after is None else "×".join(map(str, r.shape_after[:2]))
            layers.add_row(r.name[len(prefix):], "-" if r.density is None else f"{r.density:.3f}",
                           f"{io_before} → {io_after}", _ratio(r.params_before, r.params_after))
        console.print(layers)
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}")
    if report.stages:
        console.print("stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in report.stages.items()))


# ------------------------------------------------------------------------------------------------- plots
def plot_metric_vs_params(points: Sequence[tuple[str, int, float]], path: str | os.PathLike,
                          metric: str = "metric") -> Path:
    """Scatter of ``(label, parameters, metric value)`` points, parameters on a log axis; PNG, atomic."""
    if not points:
        raise ValueError("plot_metric_vs_params: points is empty")
    try:
        from matplotlib.figure import Figure  # no pyplot: the user's backend is left alone
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'compresskit[plot]'") from e
    fig = Figure(figsize=(5, 3.5), dpi=120)
    ax = fig.add_subplot()
    for label, params, value in points:
        if not (isinstance(value, (int, float)) and math.isfinite(value)):
            continue
        ax.scatter([params], [value], s=40)
        ax.annotate(label, (params, value), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs parameters")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(buf.getvalue(), path)
