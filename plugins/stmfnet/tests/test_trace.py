"""ck.trace on ST-MFNet (each custom op one node, channels read by meaning frozen) and exact shrinking."""

from __future__ import annotations

from collections import Counter

import torch
from compresskit_stmfnet.models import STMFNET_MINI_WIDTHS, STMFNet

import compresskit as ck


def frames(size: int = 64, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(1, 3, size, size, generator=g) for _ in range(4))  # padded to 128 inside


def test_trace_full_stmfnet_one_node_per_custom_op():
    torch.manual_seed(0)
    model = STMFNet()
    graph = ck.trace(model, frames())
    assert graph.method == "fx"
    calls = Counter(str(n.target) if isinstance(n.target, torch._ops.OpOverload) else n.target.__name__
                    for n in graph.fx_graph.nodes if n.op == "call_function")
    # 5 pyramid levels × 2 flow directions; 2 softmax splats; 2 frames × 3 scales of AdaCoF warps
    assert calls["compresskit_stmfnet.correlation.default"] == 10
    assert calls["compresskit_stmfnet.sum_splat.default"] == 2
    assert calls["adacof"] == 6
    # the cost volume averages over channels: the pyramid features feeding it are frozen, with the reason
    fed = [g for g in graph.groups_of("flow_estimator.netExtractor.netSix.4") if not g.prunable]
    assert fed and "correlation averages" in graph.explain(fed[0].id)
    # the 81 displacement channels entering the level-6 decoder are frozen; its hidden convs are not
    first = graph.groups_of("flow_estimator.netSix.netOne.0")
    assert any(g.size == 81 and not g.prunable for g in first)
    assert any(g.size == 128 and g.prunable for g in first)
    # time folded into channels: the fusion conv reads the decoder's channels once per frame (5 segments)
    fused = [g for g in graph.groups_of("dyntex_generator.feature_fuse.0") if g.prunable]
    assert {g.size for g in fused} == {32}


def test_shrinking_stmfnet_with_flow_branch_is_exact():
    """Zero-invariance through every part: ResNeXt groups, SE, kernel heads, AdaCoF warps, PWC-Net,
    softmax splatting, GridNet and the 3-D U-Net (Mini widths keep it fast)."""
    torch.manual_seed(1)
    model = STMFNet(STMFNET_MINI_WIDTHS, flow=True)
    check = ck.testing.assert_shrink_exact(model, frames(seed=1), keep_fraction=0.5, seed=0)
    assert check.shrunk_groups == check.prunable > 100
    assert check.params_after < 0.5 * check.params_before


def test_feature_extractor_skips_couple_c4_d4_c3_d3_c2_d2_and_leave_c1_alone():
    """The published skips (d3 = deconv3(d4 + c4), d2 = deconv2(d3 + c3), d1 = deconv1(d2 + c2)) tie
    the output channels of conv4 to deconv4, conv3 to deconv3 and conv2 to deconv2; conv1's are read by
    conv2 only, and deconv1's (the features) by the kernel heads."""
    model = STMFNet(STMFNET_MINI_WIDTHS, flow=False)
    graph = ck.trace(model, frames())

    def produced_by(block: str) -> set[int]:
        name = f"feature_extractor.{block}.resnext_small.conv3"
        ids = {g.id for g in graph.groups if name in g.producers}
        assert ids, name
        return ids

    for k in (2, 3, 4):
        assert produced_by(f"conv{k}") == produced_by(f"deconv{k}"), k
    assert produced_by("conv1").isdisjoint(produced_by("deconv1"))
    for gid in produced_by("deconv1"):
        assert graph.group(gid).prunable
        assert "get_kernel.moduleWeight1.0" in graph.group(gid).consumers
    for gid in produced_by("conv1"):
        assert not any(c.startswith(("feature_extractor.deconv", "get_kernel"))
                       for c in graph.group(gid).consumers)
