"""ST-MFNet / Mini against the published checkpoint layouts; their parts against independent references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from compresskit_stmfnet.models import STMFNET_MINI_WIDTHS, STMFNet, STMFNetWidths
from compresskit_stmfnet.models.pwcnet import backwarp
from compresskit_stmfnet.models.stmfnet import HalfPelUpsampler, reflect_pad_to

import compresskit as ck

DATA = Path(__file__).parent / "data"


def layout(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def full() -> STMFNet:
    torch.manual_seed(0)
    return STMFNet().eval()


@pytest.fixture(scope="module")
def mini() -> STMFNet:
    torch.manual_seed(0)
    return STMFNet(STMFNET_MINI_WIDTHS, flow=False).eval()


@pytest.mark.parametrize("name", ["stmfnet", "stmfnet_mini"])
def test_state_dict_matches_published_layout(name, full, mini):
    model = full if name == "stmfnet" else mini
    ref = layout(name)
    own = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(own) == list(ref["state_dict"])  # same keys, same order
    assert own == ref["state_dict"]
    assert len(own) == ref["n_state_dict_keys"]
    assert sum(p.numel() for p in model.parameters()) == ref["total_params"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == ref["trainable_params_upstream_default"]
    for top, count in ref["params_by_top_module"].items():
        own_count = sum(p.numel() for n, p in model.named_parameters() if n == top or n.startswith(top + "."))
        assert own_count == count
    # an official-layout checkpoint loads strictly
    official = {k: torch.zeros(s) if s else torch.tensor(0) for k, s in ref["state_dict"].items()}
    ck.load_state_dict_strict(model, {"state_dict": official})
    torch.manual_seed(0)  # restore random weights for the other tests
    model.load_state_dict(type(model)(model.widths, flow=model.flow).state_dict())


def test_pwcnet_is_frozen_by_default_and_trainable_on_request(full):
    assert not any(p.requires_grad for p in full.flow_estimator.parameters())
    assert full.metric.paramScale.requires_grad and float(full.metric.paramScale.detach()) == -1.0
    assert not full.gauss_kernel.requires_grad and not full.upsampler.filter.requires_grad
    free = STMFNet(STMFNET_MINI_WIDTHS, flow=True, freeze_flow=False)
    assert all(p.requires_grad for p in free.flow_estimator.parameters())


def test_flow_branch_gradients_reach_the_metric_but_not_the_frozen_pwcnet():
    torch.manual_seed(3)
    model = STMFNet(STMFNET_MINI_WIDTHS, flow=True)  # full-width parts are exercised by the trace test
    g = torch.Generator().manual_seed(1)
    frames = [torch.rand(1, 3, 64, 64, generator=g) for _ in range(4)]
    out = model(*frames)
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
    out.mean().backward()
    assert model.metric.paramScale.grad is not None and model.metric.paramScale.grad.abs() > 0
    assert model.get_kernel.moduleWeight1_us[7].weight.grad.abs().sum() > 0
    assert model.scale_synthesis.lateral_1_0.f[1].weight.grad[:, 6:].abs().sum() > 0  # splat inputs used
    assert all(p.grad is None for p in model.flow_estimator.parameters())
    assert model.gauss_kernel.grad is None and model.upsampler.filter.grad is None


def test_mini_forward_crops_back_any_size(mini):
    g = torch.Generator().manual_seed(2)
    frames = [torch.rand(1, 3, 40, 72, generator=g) for _ in range(4)]
    with torch.no_grad():
        out = mini(*frames)
    assert out.shape == (1, 3, 40, 72) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="I2"):
        mini(frames[0], frames[1], frames[2][:, :2], frames[3])


def test_reflect_pad_to_matches_numpy_for_pads_wider_than_the_frame():
    x = torch.arange(2 * 3 * 5 * 9, dtype=torch.float64).view(2, 3, 5, 9)
    out = reflect_pad_to(x, 16)
    ref = np.pad(x.numpy(), ((0, 0), (0, 0), (0, 11), (0, 7)), mode="reflect")
    np.testing.assert_array_equal(out.numpy(), ref)


def test_half_pel_upsampler_interpolates_linear_ramps_exactly():
    up = HalfPelUpsampler().double()
    y, x = torch.meshgrid(torch.arange(12.0), torch.arange(16.0), indexing="ij")
    img = (0.3 * x + 0.7 * y + 1).double().expand(1, 3, 12, 16)
    out = up(img)
    assert out.shape == (1, 3, 24, 32)
    torch.testing.assert_close(out[..., ::2, ::2], img)  # even samples copied
    yy, xx = torch.meshgrid(torch.arange(24.0) / 2, torch.arange(32.0) / 2, indexing="ij")
    expected = (0.3 * xx + 0.7 * yy + 1).double()
    # the 8 taps reach 4 pixels: exact away from the reflected border
    torch.testing.assert_close(out[0, :, 6:-8, 6:-8], expected[6:-8, 6:-8].expand(3, -1, -1))


def test_backwarp_normalises_by_w_minus_1_and_masks_samples_outside_as_published():
    """Published PWC-Net backwarp: pixel-centre grid, flow / ((W−1)/2), bilinear with zeros outside, times
    a validity mask (a warped ones channel > 0.999). A flow of f pixels reads at x + f·W/(W−1)."""
    x = torch.arange(5, dtype=torch.float64).view(1, 1, 1, 5).expand(1, 2, 4, 5).clone()
    flow = torch.zeros(1, 2, 4, 5, dtype=torch.float64)
    flow[:, 0] = 1.0  # W = 5: reads at x + 1.25; x = 3 reads at 4.25, partly outside → masked
    out = backwarp(x, flow)
    expected = torch.tensor([1.25, 2.25, 3.25, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(out, expected.expand(1, 2, 4, 5))
    y = torch.arange(4, dtype=torch.float64).view(1, 1, 4, 1).expand(1, 1, 4, 3).clone()
    flow = torch.zeros(1, 2, 4, 3, dtype=torch.float64)
    flow[:, 1] = -1.5  # H = 4: reads at y − 2; y = 0, 1 fall outside → 0
    torch.testing.assert_close(backwarp(y, flow)[0, 0, :, 0],
                               torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64))


def test_half_resolution_input_is_blurred_then_bilinear_as_published():
    """Published: Gaussian 5×5 (σ=0.5, reflect) at full resolution, then bilinear (align_corners=False)
    to (H/2, W/2), i.e. the mean of each 2×2 block, not every second pixel."""
    model = STMFNet(STMFNetWidths(features=(32, 32, 32, 32), heads=(8, 8), grid=(8, 8, 8), unet=(8, 8, 8, 8),
                                  fuse=4), flow=False)
    x = torch.arange(16.0).view(1, 1, 4, 4).expand(1, 3, 4, 4).clone()
    delta = torch.zeros(3, 1, 5, 5)
    delta[:, :, 2, 2] = 1
    with torch.no_grad():
        saved = model.gauss_kernel.clone()
        model.gauss_kernel.copy_(delta)  # identity blur: the 2×2 block means remain
        out = model.downsample(x)
        model.gauss_kernel.copy_(saved)
    torch.testing.assert_close(out, torch.tensor([[2.5, 4.5], [10.5, 12.5]]).expand(1, 3, 2, 2))
    # with the real (symmetric, normalised) Gaussian a ramp stays a ramp, sampled at 2j + 0.5
    ramp = torch.arange(32.0).view(1, 1, 1, 32).expand(1, 3, 8, 32).clone()
    out = model.downsample(ramp)
    assert out.shape == (1, 3, 4, 16)
    torch.testing.assert_close(out[..., 1:-1], (2 * torch.arange(1.0, 15.0) + 0.5).expand(1, 3, 4, 14))


def _reflect(i: int, n: int) -> int:
    return -i if i < 0 else 2 * (n - 1) - i if i > n - 1 else i


def test_half_pel_upsampler_pads_by_reflection_as_published():
    """Naive loop of the published Upsampler_8tap: out[2i,2j] = x[i,j]; a half-pel sample is
    Σ_k f_k · x[j − 3 + k] (k = 0..7) with reflected indices, along columns, rows, then both."""
    taps = [t / 64 for t in (-1.0, 4.0, -11.0, 40.0, 40.0, -11.0, 4.0, -1.0)]
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 3, 6, 7, generator=g, dtype=torch.float64)
    h, w = 6, 7

    def half(seq: list[float], j: int) -> float:  # the half-pel sample between seq[j] and seq[j + 1]
        return sum(f * seq[_reflect(j - 3 + k, len(seq))] for k, f in enumerate(taps))

    ref = torch.zeros(1, 3, 2 * h, 2 * w, dtype=torch.float64)
    for c in range(3):
        im = x[0, c].tolist()
        cols = [[half(im[i], j) for j in range(w)] for i in range(h)]                     # between columns
        rows = [[half([im[t][j] for t in range(h)], i) for j in range(w)] for i in range(h)]  # between rows
        for i in range(h):
            for j in range(w):
                ref[0, c, 2 * i, 2 * j] = im[i][j]
                ref[0, c, 2 * i, 2 * j + 1] = cols[i][j]
                ref[0, c, 2 * i + 1, 2 * j] = rows[i][j]
                ref[0, c, 2 * i + 1, 2 * j + 1] = half(rows[i], j)  # published: columns of the row samples
    torch.testing.assert_close(HalfPelUpsampler().double()(x), ref)


def test_widths_validation():
    with pytest.raises(ValueError, match="features"):
        STMFNetWidths(features=(30, 64, 96, 128))
    with pytest.raises(ValueError, match="heads"):
        STMFNetWidths(heads=(30,))
    with pytest.raises(TypeError, match="widths"):
        STMFNet(widths=[1, 2, 3])


def test_onednn_conv3d_matches_reference_conv3d_with_gradients():
    from compresskit_stmfnet.models.unet3d import Conv3d

    torch.manual_seed(4)
    fast = Conv3d(4, 6, 3, padding=1, stride=(1, 2, 2))
    ref = torch.nn.Conv3d(4, 6, 3, padding=1, stride=(1, 2, 2))
    ref.load_state_dict(fast.state_dict())
    x = torch.rand(1, 4, 5, 16, 16, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    out, out_ref = fast(x), ref(x_ref)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    g = torch.rand_like(out)
    out.backward(g)
    out_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-5)


def test_channels_last_layout_gives_the_same_frames():
    from compresskit_stmfnet.models.stmfnet import to_channels_last

    torch.manual_seed(8)
    small = STMFNetWidths(features=(32, 32, 64, 64), heads=(8, 8), grid=(8, 8, 8), unet=(8, 8, 8, 8), fuse=4)
    model = STMFNet(small, flow=False).eval()
    g = torch.Generator().manual_seed(9)
    frames = [torch.rand(1, 3, 64, 64, generator=g) for _ in range(4)]
    with torch.no_grad():
        ref = model(*frames)
        fast = to_channels_last(model)(*[f.contiguous(memory_format=torch.channels_last) for f in frames])
    assert model.get_kernel.moduleWeight1[0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)


class _Stub(torch.nn.Module):
    """A block replaced by a known map: records its input, returns ``value`` at ``scale`` × the input size."""

    def __init__(self, channels: int, scale: float, value: float):
        super().__init__()
        self.channels, self.scale, self.value, self.seen = channels, scale, value, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x.detach().clone()
        h, w = int(x.shape[-2] * self.scale), int(x.shape[-1] * self.scale)
        return torch.full((x.shape[0], self.channels, h, w), self.value, dtype=x.dtype)


def test_feature_extractor_adds_the_skips_to_the_deconv_inputs_as_published():
    """Published UMultiScaleResNext: d4 = deconv4(c4), d3 = deconv3(d4 + c4), d2 = deconv2(d3 + c3),
    d1 = deconv1(d2 + c2); the output is d1 (c1 is never added)."""
    from compresskit_stmfnet.models.feature_extractor import MultiScaleResNeXtUNet

    widths = (32, 32, 64, 64)
    fe = MultiScaleResNeXtUNet(6, widths)
    # encoder stubs output 1, 2, 3, 4; decoder stubs 40, 30, 20, 10 (deconv4 keeps the size, others ×2)
    for k, w in enumerate(widths, start=1):
        setattr(fe, f"conv{k}", _Stub(w, 0.5, float(k)))
    fe.deconv4 = _Stub(widths[3], 1, 40.0)
    fe.deconv3 = _Stub(widths[2], 2, 30.0)
    fe.deconv2 = _Stub(widths[1], 2, 20.0)
    fe.deconv1 = _Stub(widths[0], 2, 10.0)
    out = fe(torch.zeros(1, 6, 64, 64))
    assert torch.all(fe.deconv4.seen == 4)          # c4
    assert torch.all(fe.deconv3.seen == 40 + 4)     # d4 + c4
    assert torch.all(fe.deconv2.seen == 30 + 3)     # d3 + c3
    assert torch.all(fe.deconv1.seen == 20 + 2)     # d2 + c2
    assert out.shape == (1, 32, 32, 32) and torch.all(out == 10)  # d1, no c1

    # the real blocks called in the published order give the module's output
    torch.manual_seed(12)
    fe = MultiScaleResNeXtUNet(6, widths).eval()
    x = torch.rand(1, 6, 64, 64)
    with torch.no_grad():
        c1 = fe.conv1(x)
        c2 = fe.conv2(c1)
        c3 = fe.conv3(c2)
        c4 = fe.conv4(c3)
        d4 = fe.deconv4(c4)
        d1 = fe.deconv1(fe.deconv2(fe.deconv3(d4 + c4) + c3) + c2)
        torch.testing.assert_close(fe(x), d1)
