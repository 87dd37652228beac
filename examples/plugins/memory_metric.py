"""A cost measure in one file: "memory", the bytes of the weights plus the bytes of the outputs of every
layer that holds weights, for one forward pass on the example input.

``memory = element size × (Σ parameters + Σ_layers output elements)``; a layer's output elements are
``(elements per channel) × (its output channels)``, and both counts are polynomials of the kept widths,
so the cost model predicts any widths exactly, before the surgery.
"""

from __future__ import annotations

import torch
from torch import nn

import compresskit as ck
from compresskit.plan.cost import params_cost


def _inputs(example_inputs):
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def _weighted_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The modules holding parameters of their own (conv, linear, norms)."""
    return {name: m for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}


def layer_outputs(model: nn.Module, example_inputs) -> dict[str, torch.Tensor]:
    """The output tensor of every layer that holds weights, for one forward pass on ``example_inputs``."""
    outputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: outputs.setdefault(name, out))
             for name, m in _weighted_layers(model).items()]
    try:
        with torch.no_grad():
            model(*_inputs(example_inputs))
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


def memory_bytes(model: nn.Module, example_inputs, **options) -> float:
    """The measurement: bytes of every parameter plus bytes of every weighted layer's output."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    outputs = layer_outputs(model, example_inputs).values()
    return float(weights + sum(t.numel() * t.element_size() for t in outputs))


class MemoryCost:
    """The cost model: the same bytes for any ``{group id: kept units}`` (absent groups at full size)."""

    metric = "memory"

    def __init__(self, model: nn.Module, graph, example_inputs, **options):
        self.weights = params_cost(model, graph)  # exact parameter count of ck.shrink for any widths
        self.element = next(model.parameters()).element_size()
        # a layer's output channels are the positions of its weight's output dimension: some held by
        # prunable groups (each unit of group g holds `per_unit` of them), the rest fixed
        self.layers = []  # (elements per channel, fixed channels, [(group id, channels per unit)])
        for name, out in layer_outputs(model, example_inputs).items():
            ties = [(g.id, len(m.positions) / g.size, m.length) for g in graph.prunable_groups
                    for m in g.members if m.module == name and m.tensor == "weight" and m.role != "in"]
            channels = ties[0][2] if ties else out.shape[1]
            fixed = channels - sum(per_unit * graph.groups[gid].size for gid, per_unit, _ in ties)
            per_channel = out.numel() / channels
            self.layers.append((per_channel, fixed, [(gid, per_unit) for gid, per_unit, _ in ties]))

    def __call__(self, widths) -> float:
        outputs = sum(per_channel * (fixed + sum(per_unit * widths.get(gid, self.weights.sizes[gid])
                                                 for gid, per_unit in ties))
                      for per_channel, fixed, ties in self.layers)
        return self.element * (self.weights(widths) + outputs)

    def full(self) -> float:
        return self(self.weights.sizes)


ck.register_metric("memory", cost=MemoryCost, measure=memory_bytes, unit="bytes")
