"""g_Spatial against a per-pixel loop, the VGG16 conv4_3 loader, the CDFI total loss."""

from __future__ import annotations

import math

import pytest
import torch
from compresskit_adacof.losses import CDFILoss, GSpatialLoss, PerceptualLoss, VGG16Conv43, g_spatial

import compresskit as ck

EPS = 1e-3


def _aux(f2=4, h=3, w=5, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    aux = {}
    for k in ("1", "2"):
        aux["weight" + k] = torch.softmax(torch.randn(1, f2, h, w, generator=gen, dtype=dtype), 1)
        aux["alpha" + k] = torch.randn(1, f2, h, w, generator=gen, dtype=dtype) * 3
        aux["beta" + k] = torch.randn(1, f2, h, w, generator=gen, dtype=dtype) * 3
    return aux


def _g_spatial_loop(aux):
    """Per-pixel reference: for each offset map, Ō = (1/F²)·Σ_t W_t·O_t (published: torch.mean over the
    taps of W·O); mean √(Δ² + ε²) along x, plus along y."""
    total = 0.0
    for k in ("1", "2"):
        weight = aux["weight" + k][0]
        for name in ("alpha", "beta"):
            offsets = aux[name + k][0]
            f2, h, w = offsets.shape
            mean = [[sum(float(weight[t, i, j] * offsets[t, i, j]) for t in range(f2)) / f2 for j in range(w)]
                    for i in range(h)]
            dx = [math.sqrt((mean[i][j + 1] - mean[i][j]) ** 2 + EPS**2)
                  for i in range(h) for j in range(w - 1)]
            dy = [math.sqrt((mean[i + 1][j] - mean[i][j]) ** 2 + EPS**2)
                  for i in range(h - 1) for j in range(w)]
            total += sum(dx) / len(dx) + sum(dy) / len(dy)
    return total


def test_g_spatial_matches_a_per_pixel_loop():
    aux = _aux()
    assert float(g_spatial(aux, EPS)) == pytest.approx(_g_spatial_loop(aux), rel=1e-10)
    assert float(GSpatialLoss(EPS)((torch.zeros(1), aux))) == pytest.approx(_g_spatial_loop(aux), rel=1e-10)


def test_g_spatial_averages_w_times_o_over_the_taps_by_hand():
    """F² = 4 taps, uniform W = ¼, 2×2 pixels; α1 = 4 on every tap of the right column, 0 on the left; all
    other offsets 0. Published: m = mean_t(W·α) = (1/4)·(4·¼·4) = 1 on the right, 0 on the left, so
    α1 gives √(1 + ε²) along x and ε along y; the three zero maps give 2ε each."""
    aux = {k: torch.zeros(1, 4, 2, 2, dtype=torch.float64) for k in ("alpha1", "beta1", "alpha2", "beta2")}
    aux["weight1"] = aux["weight2"] = torch.full((1, 4, 2, 2), 0.25, dtype=torch.float64)
    aux["alpha1"][..., 1] = 4.0
    expected = math.sqrt(1 + EPS**2) + EPS + 3 * 2 * EPS
    assert float(g_spatial(aux, EPS)) == pytest.approx(expected, rel=1e-12)


def test_g_spatial_of_constant_offsets_is_eight_epsilons():
    aux = _aux()
    for key in ("alpha1", "beta1", "alpha2", "beta2"):
        aux[key] = torch.full_like(aux[key], 1.7)  # weights sum to 1, so the mean offset is constant
    assert float(g_spatial(aux, EPS)) == pytest.approx(8 * EPS, rel=1e-9)


def test_g_spatial_needs_the_kernels():
    with pytest.raises(KeyError, match="return_aux"):
        g_spatial({"weight1": torch.zeros(1)})
    with pytest.raises(TypeError, match="return_aux=True"):
        GSpatialLoss()(torch.zeros(1, 3, 4, 4))


def _fake_vgg16_file(path, with_classifier=True):
    """A state_dict in the common VGG16 layout (features.N.*, classifier.*) with random values."""
    gen = torch.Generator().manual_seed(1)
    cfg = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
    state, cin, index = {}, 3, 0
    for v in cfg:
        if v == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(v, cin, 3, 3, generator=gen) * 0.01
        state[f"features.{index}.bias"] = torch.randn(v, generator=gen) * 0.01
        cin, index = v, index + 2
    if with_classifier:
        state["classifier.0.weight"] = torch.zeros(4, 7)
    torch.save(state, path)
    return state


def test_vgg16_conv4_3_loads_a_standard_state_dict(tmp_path):
    state = _fake_vgg16_file(tmp_path / "vgg16.pth")
    vgg = VGG16Conv43.from_file(tmp_path / "vgg16.pth")
    # conv1_1 .. conv4_3 of VGG16: 7,635,264 parameters; conv4_3 has 512 channels at 1/8 resolution
    assert sum(p.numel() for p in vgg.parameters()) == 7_635_264
    assert torch.equal(vgg.features[21].weight, state["features.21.weight"])
    assert vgg(torch.rand(1, 3, 32, 40)).shape == (1, 512, 4, 5)
    # published (CDFI loss.py): vgg16.features[:22], ending with conv4_3 itself, before its ReLU
    assert isinstance(vgg.features[21], torch.nn.Conv2d) and len(vgg.features) == 22
    assert not any(p.requires_grad for p in vgg.parameters())


def _vgg16_conv4_3_reference(state, x):
    """torchvision's VGG16 ``features[:22]`` spelled out with F.conv2d: conv+ReLU pairs, 2×2 max pools at
    indices 4, 9, 16, and conv4_3 (index 21) without its ReLU; ``x`` enters as it is (no normalisation)."""
    fn = torch.nn.functional
    for index in (0, 2, 4, 5, 7, 9, 10, 12, 14, 16, 17, 19, 21):
        if index in (4, 9, 16):
            x = fn.max_pool2d(x, 2, 2)
            continue
        x = fn.conv2d(x, state[f"features.{index}.weight"], state[f"features.{index}.bias"], padding=1)
        if index != 21:
            x = fn.relu(x)
    return x


def test_vgg16_features_are_conv4_3_before_relu_on_raw_input(tmp_path):
    """The published perceptual term feeds [0, 1] frames to VGG16 unnormalised and reads conv4_3 before
    its ReLU: negative pre-activations count, and no ImageNet mean/std shift is applied."""
    state = _fake_vgg16_file(tmp_path / "vgg16.pth")
    vgg = VGG16Conv43.from_file(tmp_path / "vgg16.pth")
    x = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(3))
    expected = _vgg16_conv4_3_reference(state, x)
    assert (expected < 0).any()  # the case tells a ReLU apart
    torch.testing.assert_close(vgg(x), expected, rtol=1e-5, atol=1e-8)
    # the loss is the MSE of those features (the target's under no_grad, as published)
    out = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(4))
    loss = PerceptualLoss(vgg=vgg)
    mse = float(((_vgg16_conv4_3_reference(state, out) - expected) ** 2).mean())
    assert float(loss(out, x)) == pytest.approx(mse, rel=1e-4)


def test_vgg16_weights_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="vgg_weights"):
        VGG16Conv43.from_file(tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="vgg_weights"):
        PerceptualLoss(None)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="features.0.weight"):
        VGG16Conv43.from_file(tmp_path / "other.pth")
    with pytest.raises(ValueError, match="vgg_weights"):
        CDFILoss(perceptual=0.005)


def test_perceptual_loss_is_zero_for_equal_frames_and_trains_the_output(tmp_path):
    _fake_vgg16_file(tmp_path / "vgg16.pth", with_classifier=False)
    loss = PerceptualLoss(tmp_path / "vgg16.pth")
    gt = torch.rand(1, 3, 16, 16)
    assert float(loss(gt.clone(), gt)) == 0.0
    out = torch.rand(1, 3, 16, 16, requires_grad=True)
    value = loss(out, (gt, gt, gt))
    value.backward()
    assert value > 0 and out.grad.abs().sum() > 0


def test_cdfi_loss_is_charbonnier_plus_weighted_g_spatial():
    aux = _aux(dtype=torch.float32)
    out, gt = torch.rand(1, 3, 3, 5), torch.rand(1, 3, 3, 5)
    charbonnier = float(torch.sqrt((out.double() - gt.double()) ** 2 + EPS**2).mean())
    expected = charbonnier + 0.01 * _g_spatial_loop({k: v.double() for k, v in aux.items()})
    loss = CDFILoss(spatial=0.01, perceptual=0.0)
    assert float(loss((out, aux), (out, out, gt))) == pytest.approx(expected, rel=1e-5)
    terms = loss.terms((out, aux), gt)
    assert set(terms) == {"loss", "charbonnier", "g_spatial"}
    assert float(CDFILoss(spatial=0, perceptual=0)(out, gt)) == pytest.approx(charbonnier, rel=1e-5)


def test_losses_are_registered_by_name():
    ck.load_plugins()
    assert {"g_spatial", "vgg16_conv4_3", "cdfi"} <= set(ck.list_losses())
    assert isinstance(ck.get_loss("cdfi", perceptual=0.0), CDFILoss)


def test_g_occlusion_is_the_charbonnier_total_variation_of_the_occlusion_map():
    """AdaCoF's g_Occlusion by hand: V = a ramp rising by s per column, constant down the rows. Every
    horizontal difference is s, every vertical one 0: mean √(s² + ε²) + mean √(0 + ε²) = √(s² + ε²) + ε."""
    from compresskit_adacof.losses import g_occlusion

    s, h, w = 0.05, 4, 6
    occ = (torch.arange(w, dtype=torch.float64) * s).expand(1, 1, h, w)
    assert float(g_occlusion({"occlusion": occ})) == pytest.approx(math.sqrt(s**2 + EPS**2) + EPS, rel=1e-12)
    gen = torch.Generator().manual_seed(3)
    occ = torch.rand(2, 1, h, w, generator=gen, dtype=torch.float64)
    dx = [math.sqrt((occ[b, 0, i, j + 1] - occ[b, 0, i, j]) ** 2 + EPS**2)
          for b in range(2) for i in range(h) for j in range(w - 1)]
    dy = [math.sqrt((occ[b, 0, i + 1, j] - occ[b, 0, i, j]) ** 2 + EPS**2)
          for b in range(2) for i in range(h - 1) for j in range(w)]
    assert float(g_occlusion({"occlusion": occ})) == pytest.approx(sum(dx) / len(dx) + sum(dy) / len(dy))
    with pytest.raises(KeyError, match="occlusion"):
        g_occlusion({})


def test_adacof_loss_is_charbonnier_plus_g_spatial_plus_g_occlusion():
    """AdaCoF's published loss: Charbonnier + 0.01·g_Spatial + 0.005·g_Occlusion (registered "adacof")."""
    from compresskit_adacof.losses import AdaCoFLoss, g_occlusion

    aux = _aux()
    aux["occlusion"] = torch.rand(1, 1, 3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    frame = torch.rand(1, 3, 3, 5, dtype=torch.float64)
    gt = torch.rand(1, 3, 3, 5, dtype=torch.float64)
    charbonnier = float(torch.sqrt((frame - gt) ** 2 + EPS**2).mean())
    expected = charbonnier + 0.01 * float(g_spatial(aux)) + 0.005 * float(g_occlusion(aux))
    loss = ck.get_loss("adacof")
    assert isinstance(loss, AdaCoFLoss) and loss.perceptual is None
    terms = loss.terms((frame, aux), gt)
    assert float(terms["loss"]) == pytest.approx(expected, rel=1e-12)
    assert set(terms) == {"loss", "charbonnier", "g_spatial", "g_occlusion"}
