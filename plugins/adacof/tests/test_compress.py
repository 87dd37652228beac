"""AdaCoF and CDFI through the core: channel groups (facts from the papers' networks), exact shrinking,
and widths planned from the densities published with CDFI."""

from __future__ import annotations

import math

import pytest
import torch
from compresskit_adacof.models import CDFI, AdaCoF, compressed_widths
from compresskit_adacof.models.adacof import HEADS, KERNEL_HEADS

import compresskit as ck

FRAMES = (torch.rand(1, 3, 20, 27), torch.rand(1, 3, 20, 27))  # reflect-padded to 32×32 inside


@pytest.fixture(scope="module")
def adacof_graph():
    model = AdaCoF(5, 1, compressed_widths())
    return model, ck.trace(model, FRAMES)


def _group_produced_by(graph, module):
    found = [g for g in graph.groups if module in g.producers]
    assert len(found) == 1, f"{module} produces {len(found)} groups"
    return found[0]


def test_residual_adds_couple_conv_k_with_upsample_k(adacof_graph):
    _, graph = adacof_graph
    for k in (2, 3, 4, 5):
        group = _group_produced_by(graph, f"get_kernel.moduleConv{k}.4")
        assert f"get_kernel.moduleUpsample{k}.1" in group.producers
        assert group.prunable
    decoder = {k: _group_produced_by(graph, f"get_kernel.moduleDeconv{k}.4").id for k in (2, 3, 4, 5)}
    assert len(set(decoder.values())) == 4  # the decoder's own outputs are not tied to each other


def test_the_seven_heads_share_one_input(adacof_graph):
    _, graph = adacof_graph
    shared = _group_produced_by(graph, "get_kernel.moduleUpsample2.1")
    assert {f"get_kernel.module{h}.0" for h in HEADS} <= set(shared.consumers)


def test_last_kernel_head_convs_keep_f2_channels(adacof_graph):
    _, graph = adacof_graph
    for head in KERNEL_HEADS:
        last = _group_produced_by(graph, f"get_kernel.module{head}.7")
        assert (last.size, last.prunable) == (25, False), graph.explain(last.id)
        assert _group_produced_by(graph, f"get_kernel.module{head}.4").prunable


def test_occlusion_conv_keeps_its_single_channel(adacof_graph):
    _, graph = adacof_graph
    occlusion = _group_produced_by(graph, "get_kernel.moduleOcclusion.7")
    assert (occlusion.size, occlusion.prunable) == (1, False), graph.explain(occlusion.id)


def test_shrinking_compressed_adacof_is_exact():
    ck.testing.assert_shrink_exact(AdaCoF(5, 1, compressed_widths()), FRAMES, keep_fraction=0.5, seed=0)


def test_shrinking_cdfi_is_exact_through_the_joint_warps():
    torch.manual_seed(0)
    ck.testing.assert_shrink_exact(CDFI(), FRAMES, keep_fraction=0.5, seed=0)


def _check_pyramid_groups(model):
    graph = ck.trace(model, FRAMES)
    for k in range(1, 6):
        pyramid = _group_produced_by(graph, f"get_kernel.module1by1_{k}")
        assert pyramid.prunable, graph.explain(pyramid.id)
        assert "context_synthesis.lateral_init.f.1" in pyramid.consumers
        encoder = _group_produced_by(graph, f"get_kernel.moduleConv{k}.4")
        assert f"get_kernel.module1by1_{k}" in encoder.consumers


def test_cdfi_pyramid_channels_are_prunable_and_feed_the_gridnet_published_warps():
    _check_pyramid_groups(CDFI(separate_warps=True))


def test_cdfi_pyramid_channels_are_prunable_and_feed_the_gridnet_joint_warps():
    _check_pyramid_groups(CDFI())


# output widths of the dense AdaCoF fixed by a published density (under the linear rule a group's width
# comes from the density of the layer that consumes it): Conv1..5 and the first two convs of each Deconv
DETERMINED = [(f"Conv{k}", i) for k in range(1, 6) for i in range(3)] + \
             [(f"Deconv{k}", i) for k in (5, 4, 3, 2) for i in range(2)]


@pytest.fixture(scope="module")
def planned_from_published():
    from compresskit_adacof.recipe import plan_published_widths

    return plan_published_widths(rule="linear")


def test_published_densities_plan_the_published_widths(planned_from_published):
    """ceil(d·C_in) back to front from the densities published with CDFI gives the published compressed
    AdaCoF's widths (±1: the densities are published to 3 digits) wherever a density determines them."""
    widths, _ = planned_from_published
    published = compressed_widths()
    for name, i in DETERMINED:
        assert abs(widths[name][i] - published[name][i]) <= 1, (name, i, widths[name], published[name])
    for k in (2, 3, 4, 5):  # the residual-coupled widths are equal
        assert widths[f"Conv{k}"][-1] == widths[f"Upsample{k}"][0]
        assert abs(widths[f"Upsample{k}"][0] - published[f"Upsample{k}"][0]) <= 1


def test_published_densities_plan_the_published_size_where_they_apply(planned_from_published):
    """Parameters of the 23 convs whose input and output widths both follow from published densities:
    within 2 % of the published compressed AdaCoF's (the rest: Deconv_k's last conv, Upsample_k and the
    heads, whose densities are not published, are checked exactly below)."""
    widths, total = planned_from_published
    published = compressed_widths()

    def conv_params(w, name, i):
        """3×3 conv with bias: out · (in · 9 + 1), the input being the previous conv of the stage or the
        tensor the stage reads (Conv k: Conv k−1's output; Deconv k: Conv min(k+1, 5)'s residual width)."""
        k = int(name[-1])
        if i > 0:
            cin = w[name][i - 1]
        elif name == "Conv1":
            cin = 6
        elif name.startswith("Conv"):
            cin = w[f"Conv{k - 1}"][-1]
        else:
            cin = w[f"Conv{min(k + 1, 5)}"][-1]
        return w[name][i] * (cin * 9 + 1)

    planned_part = sum(conv_params(widths, n, i) for n, i in DETERMINED)
    published_part = sum(conv_params(published, n, i) for n, i in DETERMINED)
    assert planned_part == pytest.approx(published_part, rel=0.02)


def _linear_plan_by_hand() -> dict[str, tuple[int, ...]]:
    """The linear rule worked out on the dense AdaCoF (F=5) from the published densities alone: a conv's
    output width is ceil(d·C) for the density d of the conv(s) that consume it (the largest, where a
    residual add ties Conv_k to Upsample_k and both Conv_{k+1} (or Deconv5) and Deconv_{k−1} read it);
    a width whose consumers have no published density (Deconv_k's last conv, read by Upsample_k; the
    heads) stays dense, and so do the F² / 1 output channels the op reads by meaning."""
    from compresskit_adacof.models import dense_widths
    from compresskit_adacof.recipe import published_densities

    dense, dens = dense_widths(5), published_densities()

    def d(name, i):
        return dens.get(f"get_kernel.module{name}.{2 * i}")

    widths = {k: list(v) for k, v in dense.items()}
    for name in ("Conv1", "Conv2", "Conv3", "Conv4", "Conv5", "Deconv5", "Deconv4", "Deconv3", "Deconv2"):
        for i in (0, 1):
            widths[name][i] = math.ceil(d(name, i + 1) * dense[name][i])
    for k in (1, 2, 3, 4, 5):
        readers = [(f"Conv{k + 1}" if k < 5 else "Deconv5", 0)] + ([(f"Deconv{k - 1}", 0)] if k > 2 else [])
        width = max(math.ceil(d(*r) * dense[f"Conv{k}"][2]) for r in readers)
        widths[f"Conv{k}"][2] = width
        if k > 1:
            widths[f"Upsample{k}"][0] = width
    return {k: tuple(v) for k, v in widths.items()}


def _adacof_params(w: dict[str, tuple[int, ...]], f2: int = 25) -> int:
    """Parameters of an AdaCoF with widths ``w``: every conv is 3×3 with bias, out·(9·in + 1)."""
    def stage(cin, outs):
        total = 0
        for c in outs:
            total, cin = total + c * (9 * cin + 1), c
        return total

    total, cin = 0, 6
    for k in (1, 2, 3, 4, 5):
        total, cin = total + stage(cin, w[f"Conv{k}"]), w[f"Conv{k}"][-1]
    for k in (5, 4, 3, 2):
        total += stage(cin, w[f"Deconv{k}"]) + stage(w[f"Deconv{k}"][-1], w[f"Upsample{k}"])
        cin = w[f"Upsample{k}"][0]
    for head in KERNEL_HEADS:
        total += stage(cin, (*w[head], f2))
    return total + stage(cin, (*w["Occlusion"], 1))


def test_published_densities_plan_exactly_the_hand_computed_widths_and_size(planned_from_published):
    """The plan equals the linear rule worked out by hand, width for width, and its parameter count is
    that of the hand-computed widths: 3,950,918 (docs/results.md)."""
    widths, total = planned_from_published
    by_hand = _linear_plan_by_hand()
    assert widths == by_hand
    assert _adacof_params(by_hand) == total == 3_950_918
    # the counting itself is checked on the published models: dense 21,843,427, compressed 2,452,094
    from compresskit_adacof.models import dense_widths

    assert _adacof_params(dense_widths(5)) == 21_843_427
    assert _adacof_params(compressed_widths()) == 2_452_094
