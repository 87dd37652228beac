"""The papers' evaluation table: PSNR/SSIM (LPIPS) per test set, runtime per 480p frame, parameters, MACs.

Two conventions (``VFI_MODELS.md``, "Evaluation conventions"); both score outputs quantised to 8 bits,
round(clamp(x, 0, 1)·255), with ST-MFNet's PSNR = −10·log10(MSE + 1e-8) on [0, 1] (80 dB for identical
images, never inf):

- ``"stmfnet"`` (ST-MFNet, ST-MFNet Mini): SSIM with the 3-D 11×11×11 Gaussian window ("matlab" SSIM);
- ``"cdfi"`` (AdaCoF, CDFI): skimage's SSIM (7×7 uniform window), plus LPIPS when asked for.

A set's score is the mean over its samples, or, for a set whose samples carry ``groups`` (DAVIS-90: the
sequence of each), the mean over groups of each group's mean, as ST-MFNet's DAVIS script reports it.
Several models are scored side by side on the same samples. A two-input model given a quintuplet
``(I0, I1, I2, I3, gt)`` sees its middle pair ``(I1, I2)``, which has the same target. Runtime is the
median wall-clock time of one forward pass on a 480×854 frame (DAVIS 480p) on the chosen device; MACs
count convolutions and matrix products at 256×256 (``compresskit.measure.count_macs``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compresskit_vfi.interpolate import make_predictor, model_num_inputs, progress_bar

__all__ = ["CONVENTIONS", "ModelSummary", "EvaluationResult", "evaluate", "quantize", "average"]

CONVENTIONS = ("stmfnet", "cdfi")
RUNTIME_SIZE = (480, 854)
MACS_SIZE = (256, 256)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """round(clamp(x, 0, 1)·255) / 255: the 8-bit output the papers score."""
    return x.clamp(0, 1).mul(255).round().div(255)


def average(values: list[float], groups: list[str] | None = None) -> float:
    """Mean of per-sample scores; with ``groups`` (one name per sample) the mean of the groups' means.

    ST-MFNet scores DAVIS per sequence and reports the mean of the sequence means, so a long sequence
    counts as much as a short one; the other sets are a plain mean over samples.
    """
    if not values:
        raise ValueError("average: no values")
    if groups is None:
        return sum(values) / len(values)
    if len(groups) < len(values):
        raise ValueError(f"average: {len(values)} values but only {len(groups)} group names")
    by_group: dict[str, list[float]] = {}
    for v, g in zip(values, groups):
        by_group.setdefault(g, []).append(v)
    means = [sum(v) / len(v) for v in by_group.values()]
    return sum(means) / len(means)


def _metric_fns(convention: str, lpips: bool) -> dict[str, Callable[[torch.Tensor, torch.Tensor], Any]]:
    from compresskit_vfi import metrics

    fns: dict[str, Callable[[torch.Tensor, torch.Tensor], Any]] = {"psnr": metrics.psnr}
    fns["ssim"] = metrics.ssim_matlab if convention == "stmfnet" else metrics.ssim_skimage
    if lpips:
        fns["lpips"] = metrics.lpips
    return fns


def _as_float(value: Any) -> float:
    return float(torch.as_tensor(value, dtype=torch.float64).mean())


@dataclass
class ModelSummary:
    """Size and speed of one model."""

    params: int
    macs: int | None = None  # at macs_size
    macs_size: tuple[int, int] | None = None
    runtime_s: float | None = None  # median seconds per frame at runtime_size
    runtime_size: tuple[int, int] | None = None
    device: str = "cpu"
    n_inputs: int = 2


@dataclass
class EvaluationResult:
    """``scores[model][dataset] = {"psnr": .., "ssim": .., ["lpips": ..,] "n": samples}``."""

    convention: str
    models: dict[str, ModelSummary] = field(default_factory=dict)
    scores: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    @property
    def datasets(self) -> list[str]:
        names: list[str] = []
        for per_set in self.scores.values():
            names += [d for d in per_set if d not in names]
        return names

    def to_dict(self) -> dict[str, Any]:
        return {"format": "compresskit_vfi.evaluation/1", "convention": self.convention,
                "models": {k: asdict(v) for k, v in self.models.items()}, "scores": self.scores}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationResult:
        models = {}
        for k, v in data["models"].items():
            v = dict(v)
            for key in ("macs_size", "runtime_size"):
                v[key] = tuple(v[key]) if v.get(key) is not None else None
            models[k] = ModelSummary(**v)
        return cls(data["convention"], models, {m: dict(s) for m, s in data["scores"].items()})

    def save_json(self, path: str | os.PathLike) -> Path:
        from compresskit.io import atomic_write_json

        return atomic_write_json(self.to_dict(), path)

    def table(self) -> Any:
        """The papers' table as a rich Table: one row per model."""
        from rich.table import Table

        table = Table(title=f"VFI evaluation ({self.convention} convention)")
        table.add_column("model", style="bold", overflow="fold")
        for d in self.datasets:
            table.add_column(f"{d}\nPSNR / SSIM", justify="right", overflow="fold")
        table.add_column("params (M)", justify="right")
        table.add_column("MACs (G)", justify="right")
        table.add_column("s / 480p frame", justify="right")
        for name, summary in self.models.items():
            cells = []
            for d in self.datasets:
                s = self.scores.get(name, {}).get(d)
                if s is None:
                    cells.append("-")
                    continue
                cell = f"{s['psnr']:.3f} / {s['ssim']:.4f}"
                if "lpips" in s:
                    cell += f" / {s['lpips']:.4f}"
                cells.append(cell)
            macs = f"{summary.macs / 1e9:.2f}" if summary.macs is not None else "-"
            rt = f"{summary.runtime_s:.3f}" if summary.runtime_s is not None else "-"
            table.add_row(name, *cells, f"{summary.params / 1e6:.3f}", macs, rt)
        return table

    def print(self, console: Any = None) -> None:
        from rich.console import Console

        (console or Console()).print(self.table())

    def plot(self, out_dir: str | os.PathLike) -> list[Path]:
        """One PNG per test set: PSNR against parameters, one point per model (Mini paper, Fig. 4)."""
        from compresskit.report import plot_metric_vs_params

        paths = []
        for d in self.datasets:
            points = [(m, self.models[m].params, self.scores[m][d]["psnr"])
                      for m in self.models if d in self.scores.get(m, {})]
            if points:
                paths.append(plot_metric_vs_params(points, Path(out_dir) / f"psnr_vs_params_{d}.png",
                                                   metric=f"PSNR (dB), {d}"))
        return paths

    def save(self, out_dir: str | os.PathLike) -> dict[str, Path | list[Path]]:
        """``results.json`` and the PSNR-vs-parameters PNGs in ``out_dir``."""
        out = Path(out_dir)
        return {"json": self.save_json(out / "results.json"), "plots": self.plot(out)}


def _dataset_name(ds: Any, index: int) -> str:
    return str(getattr(ds, "name", None) or f"{type(ds).__name__}_{index}")


def _model_inputs(frames: list[torch.Tensor], n_model: int, model_name: str,
                  ds_name: str) -> list[torch.Tensor]:
    n_data = len(frames) - 1
    if n_model == n_data:
        return frames[:-1]
    if n_model == 2 and n_data == 4:
        return frames[1:3]
    raise ValueError(f"model {model_name!r} takes {n_model} frames but dataset {ds_name!r} gives "
                     f"{n_data} inputs per sample; use a quintuplet dataset for a 4-frame model")


def _summary(model: nn.Module, n_inputs: int, device: torch.device, runtime: bool, macs: bool,
             runtime_repeats: int) -> ModelSummary:
    from compresskit.measure import count_macs, count_params, measure_latency

    summary = ModelSummary(params=count_params(model), device=str(device), n_inputs=n_inputs)
    gen = torch.Generator().manual_seed(0)
    if macs:
        x = [torch.rand(1, 3, *MACS_SIZE, generator=gen).to(device) for _ in range(n_inputs)]
        summary.macs, summary.macs_size = count_macs(model, x), MACS_SIZE
    if runtime:
        x = [torch.rand(1, 3, *RUNTIME_SIZE, generator=gen).to(device) for _ in range(n_inputs)]
        lat = measure_latency(model, x, repeats=runtime_repeats, warmup=1)
        summary.runtime_s, summary.runtime_size = lat["median_ms"] / 1e3, RUNTIME_SIZE
    return summary


def evaluate(models: Mapping[str, nn.Module], datasets: Any, convention: str = "stmfnet", *,
             device: str | torch.device = "cpu", lpips: bool = False, runtime: bool = True,
             runtime_repeats: int = 3, macs: bool = True, limit: int | None = None,
             tile: int | str | None = None, overlap: int = 32, out_dir: str | os.PathLike | None = None,
             progress: bool = True, console: Any = None) -> EvaluationResult:
    """Score every model on every test set; print the table; save JSON and PNGs to ``out_dir`` if given.

    Args:
        models: ``{label: model}``; each model takes 2 frames (AdaCoF-style) or 4 (ST-MFNet-style).
        datasets: one dataset or ``{name: dataset}`` of samples ``(inputs..., target)``.
        convention: "stmfnet" (3-D Gaussian SSIM) or "cdfi" (skimage SSIM).
        lpips: also score LPIPS (needs the ``lpips`` package and its weights locally).
        runtime, macs: measure seconds per 480p frame and MACs at 256×256.
        limit: score only the first ``limit`` samples of each set (quick looks).
        tile, overlap: tiled inference, or tile="auto"
            (see :func:`compresskit_vfi.interpolate.make_predictor`).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty mapping {label: nn.Module}")
    for label, m in models.items():
        if not isinstance(m, nn.Module):
            raise TypeError(f"models[{label!r}] must be an nn.Module, got {type(m).__name__}")
    if not isinstance(datasets, Mapping):
        datasets = {_dataset_name(datasets, 0): datasets}
    if not datasets:
        raise ValueError("datasets must not be empty")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    fns = _metric_fns(convention, lpips)
    device = torch.device(device)
    arity = {label: model_num_inputs(m) for label, m in models.items()}
    predictors = {label: make_predictor(m, tile, overlap) for label, m in models.items()}
    for m in models.values():
        m.to(device).eval()
    result = EvaluationResult(convention)
    for ds_name, ds in datasets.items():  # check every pairing before the long work starts
        if len(ds) == 0:
            raise ValueError(f"dataset {ds_name!r} is empty")
        n = len(ds[0]) - 1
        for label in models:
            _model_inputs([torch.empty(0)] * (n + 1), arity[label], label, ds_name)

    for ds_name, ds in datasets.items():
        n = len(ds) if limit is None else min(limit, len(ds))
        per_sample: dict[str, dict[str, list[float]]] = {label: {k: [] for k in fns} for label in models}
        bar = progress_bar(f"evaluate {ds_name}") if progress else None
        task = bar.add_task(ds_name, total=n) if bar else None
        if bar:
            bar.start()
        try:
            for i in range(n):
                frames = [f.unsqueeze(0).to(device) for f in ds[i]]
                gt = frames[-1]
                for label in models:
                    inputs = _model_inputs(frames, arity[label], label, ds_name)
                    with torch.inference_mode():
                        pred = quantize(predictors[label](inputs))
                    for metric, fn in fns.items():
                        per_sample[label][metric].append(_as_float(fn(pred, gt)))
                if bar:
                    bar.advance(task)
        finally:
            if bar:
                bar.stop()
        groups = getattr(ds, "groups", None)
        for label in models:
            scores: dict[str, float] = {k: average(v, groups) for k, v in per_sample[label].items()}
            scores["n"] = n
            if groups is not None:
                scores["n_groups"] = len(set(groups[:n]))
            result.scores.setdefault(label, {})[ds_name] = scores

    for label, model in models.items():
        result.models[label] = _summary(model, arity[label], device, runtime, macs, runtime_repeats)
    result.print(console)
    if out_dir is not None:
        result.save(out_dir)
    return result
