"""Per-layer weight density after sparsification: the number that decides each layer's new width.

``density = nonzeros / size`` of a module's ``weight`` (an entry counts as nonzero when ``|w| > threshold``).
After OBProx-SG a layer with density ``d`` is planned to keep about ``d`` of its input channels (ST-MFNet
Mini) or ``√d`` of both sides (CDFI code); see :func:`compresskit.plan_widths`.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import torch
from torch import nn

from compresskit.io import atomic_write_bytes

__all__ = ["layer_densities", "LayerDensities", "density_table", "plot_densities"]

# modules whose weight is one scale or slope per channel, not a layer of connections
_PER_CHANNEL = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, nn.PReLU)


class LayerDensities(dict):
    """``{module name: density}`` measured on a model by :func:`layer_densities` (a plain ``dict``
    otherwise). The type tells :func:`compresskit.plan_widths` that a name its graph does not know is a
    module the traced forward never reached (ignored), not a typo (an error for hand-written dicts)."""


def layer_densities(
    model: nn.Module, threshold: float = 0.0, *, include_per_channel: bool = False
) -> LayerDensities:
    """``{module name: nonzeros / size of its weight}`` for every module with a ``weight`` tensor.

    Convolutions, linear layers, embeddings and any custom module with a ``weight`` parameter count;
    normalisation layers and PReLU (whose weight is a per-channel scale or slope, not a layer of
    connections) are left out unless ``include_per_channel``. ``threshold``: entries with
    ``|w| <= threshold`` count as zero (0 = exact). Names are ``model.named_modules()`` names, in module
    order; a weight shared by several modules is counted once. Returns a :class:`LayerDensities` (a dict).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a number >= 0, got {threshold!r}")
    if not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold}")
    out = LayerDensities()
    seen: set[int] = set()
    for name, module in model.named_modules():
        weight = module._parameters.get("weight")
        if weight is None:
            weight = module._buffers.get("weight")
        if not isinstance(weight, torch.Tensor) or weight.numel() == 0 or id(weight) in seen:
            continue
        if isinstance(module, _PER_CHANNEL) and not include_per_channel:
            continue
        seen.add(id(weight))
        with torch.no_grad():
            nonzero = int((weight.detach().abs() > threshold).sum())
        out[name] = nonzero / weight.numel()
    return out


def density_table(densities: dict[str, float], title: str = "layer densities"):  # -> rich.table.Table
    """A rich table: one row per layer with its density, the fraction removed and a bar."""
    from rich.table import Table

    _check_densities(densities)
    table = Table(title=title)
    table.add_column("layer", overflow="fold")
    table.add_column("density", justify="right")
    table.add_column("zeroed", justify="right")
    table.add_column("", no_wrap=True)
    for name, d in densities.items():
        bar = "█" * round(20 * d) + "·" * (20 - round(20 * d))
        table.add_row(name or "(root)", f"{d:.3f}", f"{1 - d:.1%}", bar)
    if densities:
        mean = sum(densities.values()) / len(densities)
        table.add_section()
        table.add_row(f"mean of {len(densities)} layers", f"{mean:.3f}", f"{1 - mean:.1%}", "")
    return table


def plot_densities(
    densities: dict[str, float], path: str | os.PathLike, title: str = "density per layer"
) -> Path:
    """Save a bar chart (PNG) of the density of each layer, in the given order; written atomically."""
    _check_densities(densities)
    if not densities:
        raise ValueError("densities is empty: nothing to plot")
    try:
        from matplotlib.figure import Figure  # no pyplot: the user's backend is left alone
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "plot_densities needs matplotlib: pip install 'compresskit[plot]' (or matplotlib)"
        ) from err
    names = [n or "(root)" for n in densities]
    values = list(densities.values())
    fig = Figure(figsize=(max(6.0, 0.28 * len(names) + 2), 4.5), dpi=120)
    ax = fig.add_subplot()
    ax.bar(range(len(values)), values, color="tab:blue")
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("density (nonzeros / size)")
    ax.axhline(sum(values) / len(values), color="tab:red", linestyle="--", linewidth=1, label="mean")
    ax.legend(loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(buf.getvalue(), path)


def _check_densities(densities: dict[str, float]) -> None:
    if not isinstance(densities, dict):
        raise TypeError(f"densities must be a dict {{module name: density}}, got {type(densities).__name__}")
    for name, d in densities.items():
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d <= 1.0:
            raise ValueError(f"densities[{name!r}] must be a number in [0, 1], got {d!r}")
