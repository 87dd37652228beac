"""Every zoo architecture shrinks exactly (zero-invariance check) and loses parameters."""

from __future__ import annotations

import pytest
import torch
from zoo import ZOO, build

import compresskit as ck


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_shrinks_exactly(name: str) -> None:
    model, inputs = build(name)
    graph = ck.trace(model, inputs)
    assert graph.method == "fx", f"{name} should trace with fx"
    for g in graph.groups:  # no rule crashed on a zoo model
        assert not any("rule failed" in r for r in g.reasons), graph.explain(g.id)
    for fraction, seed in ((0.5, 0), (0.25, 1)):
        report = ck.testing.assert_shrink_exact(model, inputs, keep_fraction=fraction, seed=seed, graph=graph)
        assert report.params_after < report.params_before
        assert report.dtype == "float64"
        assert report.max_rel_error <= 1e-5


def test_zoo_is_large_enough() -> None:
    assert len(ZOO) >= 12


def test_shrunk_zoo_model_trains_and_retraces() -> None:
    """A shrunk model is an ordinary module: gradients flow and it can be traced and shrunk again."""
    model, inputs = build("resnet_bottleneck")
    graph = ck.trace(model, inputs)
    keep = ck.testing.random_keep(graph, 0.5, seed=3)
    small = ck.shrink(model, graph, keep=keep).train()
    small(*inputs).sum().backward()
    assert all(p.grad is not None for p in small.parameters())
    ck.testing.assert_shrink_exact(small.eval(), inputs, keep_fraction=0.5, seed=4)


def test_export_fallback_is_exact_too() -> None:
    model, inputs = build("resnet_bottleneck")
    graph = ck.trace(model, inputs, method="export")
    assert graph.method == "export"
    assert len(graph.prunable_groups) >= 5
    ck.testing.assert_shrink_exact(model, inputs, graph=graph)
    torch.testing.assert_close(model(*inputs), build("resnet_bottleneck")[0](*inputs))
