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


def _block(i: int, *convs: str) -> list[frozenset[str]]:
    return [frozenset({f"layers.{i}.{c}.0"}) for c in convs]


# Prunable groups of each architecture, derived by hand from its block structure (each group: the layers
# producing its channels). A residual sum makes one group of every layer adding into it; a concat keeps
# its segments apart; graph outputs, flows, softmax taps and channels read by unknown code stay frozen.
EXPECTED_PRUNABLE: dict[str, list[frozenset[str]]] = {
    "flatten_classifier": [frozenset({"features.0"}), frozenset({"features.3"}), frozenset({"classifier.1"})],
    "resnet_bottleneck": [
        frozenset({"stem.0"}),
        *_block(0, "conv1", "conv2"), *_block(1, "conv1", "conv2"),
        frozenset({"layers.0.conv3.0", "layers.0.down.0", "layers.1.conv3.0"}),  # stage 1 residual stream
        *_block(2, "conv1", "conv2"), *_block(3, "conv1", "conv2"),
        frozenset({"layers.2.conv3.0", "layers.2.down.0", "layers.3.conv3.0"}),  # stage 2 residual stream
    ],
    "densenet": [frozenset({"stem"}), frozenset({"trans.2"})]
    + [frozenset({f"block.{i}.{c}"}) for i in range(3) for c in ("conv1", "conv2")],
    "unet2d": [frozenset({f"{b}.{k}"}) for b in ("enc1", "enc2", "mid", "dec2", "dec1") for k in (0, 3)]
    + [frozenset({"up2"}), frozenset({"up1"})],
    "two_frame_vfi": [frozenset({m}) for m in ("enc.0", "enc.2", "dec.0", "refine.0")],
    "custom_function": [frozenset({"conv2.0"}), frozenset({"conv3.0"})],
    "fft_global_filter": [frozenset({"mix.0"}), frozenset({"mlp.0"})],
    "numpy_forward": [frozenset({"conv2.0"}), frozenset({"conv3.0"})],
}

# Frozen groups a layer produces, with a word the reason must contain.
EXPECTED_FROZEN: dict[str, dict[str, str]] = {
    "two_frame_vfi": {"flow": "grid", "taps": "softmax", "refine.2": "graph output"},
    "custom_function": {"conv1.0": "RoundSTE", "head": "graph output"},
    "fft_global_filter": {"stem.0": "fft_rfft2"},
    "numpy_forward": {"conv1.0": ".numpy()"},
    "flatten_classifier": {"classifier.3": "graph output"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_PRUNABLE))
def test_zoo_groups_are_the_ones_the_architecture_implies(name: str) -> None:
    model, inputs = build(name)
    graph = ck.trace(model, inputs)
    got = sorted(sorted(g.producers) for g in graph.groups if g.prunable)
    assert got == sorted(sorted(s) for s in EXPECTED_PRUNABLE[name])
    for layer, word in EXPECTED_FROZEN.get(name, {}).items():
        (group,) = [g for g in graph.groups if layer in g.producers]
        assert not group.prunable and any(word in r for r in group.reasons), graph.explain(group.id)


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
