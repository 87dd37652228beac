"""ST-MFNet (Danier, Zhang & Bull, CVPR 2022) and, with other widths and no flow branch, ST-MFNet Mini
(Morris et al.).

Four frames I0..I3 in, the frame halfway between I1 and I2 out, any size (frames are reflect-padded
bottom/right to a multiple of 128 and the result cropped back):

1. features = MultiScaleResNeXtUNet(cat(I1 − mean, I2 − mean)) at H/2;
2. 18 kernel heads → AdaCoF warps (F=5, d=1) of I1 and I2 at 1×, at ½× (Gaussian 5×5, σ=0.5, then
   bilinear to half size) and at 2× (separable 8-tap half-pel filter [−1,4,−11,40,40,−11,4,−1]/64);
3. flow branch (``flow=True``): PWC-Net flows F₁₂, F₂₁ (frozen by default), softmax splatting of I1, I2 by
   half the flow with importance ``Z = paramScale · mean_c |I1 − backwarp(I2, F₁₂)|``;
4. GridNet(2×: warps, 1×: warps (+ splats), ½×: warps) → Ĩ;
5. output = Ĩ + UNet3D(I0, I1, Ĩ, I2, I3).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from compresskit_vfi.ops import adacof
from torch import Tensor, nn

from compresskit_stmfnet.models.feature_extractor import MultiScaleResNeXtUNet
from compresskit_stmfnet.models.gridnet import MultiInputGridNet
from compresskit_stmfnet.models.kernel_heads import KernelEstimation
from compresskit_stmfnet.models.pwcnet import PWCNet, backwarp
from compresskit_stmfnet.models.unet3d import UNet3D
from compresskit_stmfnet.ops import softmax_splat

MEAN_RGB = (0.4631, 0.4352, 0.3990)
KERNEL_SIZE = 5
DILATION = 1
PAD_MULTIPLE = 128
HALF_PEL_TAPS = (-1.0, 4.0, -11.0, 40.0, 40.0, -11.0, 4.0, -1.0)


@dataclass(frozen=True)
class STMFNetWidths:
    """Every width a plan can change: feature extractor stages, kernel-head hidden convs, GridNet rows,
    3-D U-Net layers, and the channels of the fusion conv after folding time."""

    features: tuple[int, int, int, int] = (64, 128, 256, 512)
    heads: tuple[int, int] = (64, 64)
    grid: tuple[int, int, int] = (32, 64, 96)
    unet: tuple[int, int, int, int] = (32, 64, 96, 128)
    fuse: int = 32

    def __post_init__(self) -> None:
        for name, n in (("features", 4), ("heads", 2), ("grid", 3), ("unet", 4)):
            v = getattr(self, name)
            if len(v) != n or not all(isinstance(c, int) and c > 0 for c in v):
                raise ValueError(f"STMFNetWidths.{name}: expected {n} positive ints, got {v!r}")
            object.__setattr__(self, name, tuple(v))
        if any(c % 32 for c in self.features):
            raise ValueError(f"STMFNetWidths.features: each must be a multiple of 32 (grouped convs with 32 "
                             f"groups), got {self.features}")
        if not isinstance(self.fuse, int) or self.fuse < 1:
            raise ValueError(f"STMFNetWidths.fuse: expected a positive int, got {self.fuse!r}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


STMFNET_WIDTHS = STMFNetWidths()
#: the published ST-MFNet Mini widths (Morris et al.)
STMFNET_MINI_WIDTHS = STMFNetWidths(features=(32, 64, 96, 128), heads=(30, 30), grid=(16, 32, 46),
                                    unet=(16, 24, 32, 40), fuse=8)


def gaussian_kernel(size: int = 5, sigma: float = 0.5) -> Tensor:
    """Normalised 2-D Gaussian ``outer(g, g)``, ``g_i ∝ exp(−i²/2σ²)``, as a depthwise [3,1,k,k] filter."""
    r = size // 2
    g = torch.tensor([math.exp(-(i * i) / (2 * sigma * sigma)) for i in range(-r, r + 1)])
    k = torch.outer(g, g)
    return (k / k.sum()).expand(3, 1, size, size).clone()


class HalfPelUpsampler(nn.Module):
    """×2 upsampling: even pixels copied, odd pixels the separable 8-tap half-pel filter, rows then columns.

    ``half[j] = Σ_k f_k · x[j − 3 + k]``, f = [−1,4,−11,40,40,−11,4,−1]/64, borders reflected (the
    published ``Upsampler_8tap``; the filter is separable, so rows then columns equals its columns then
    rows)."""

    def __init__(self):
        super().__init__()
        taps = torch.tensor(HALF_PEL_TAPS) / 64.0
        self.filter = nn.Parameter(taps.view(1, 1, 1, 8).repeat(3, 1, 1, 1), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        half = F.conv2d(F.pad(x, (3, 4, 0, 0), mode="reflect"), self.filter, groups=c)
        rows = torch.stack([x, half], 4).reshape(b, c, h, 2 * w)
        half = F.conv2d(F.pad(rows, (0, 0, 3, 4), mode="reflect"), self.filter.transpose(2, 3), groups=c)
        return torch.stack([rows, half], 3).reshape(b, c, 2 * h, 2 * w)


class ImportanceMetric(nn.Module):
    """Softmax-splatting importance ``Z = paramScale · mean_c |I1 − backwarp(I2, F₁₂)|``, paramScale₀ = −1."""

    def __init__(self):
        super().__init__()
        self.paramScale = nn.Parameter(-torch.ones(1, 1, 1, 1))

    def forward(self, img1: Tensor, img2: Tensor, flow: Tensor) -> Tensor:
        return self.paramScale * (img1 - backwarp(img2, flow)).abs().mean(1, keepdim=True)


def reflect_pad_to(x: Tensor, multiple: int) -> Tensor:
    """Reflect-pad bottom/right to a multiple of ``multiple``; pads wider than the image are done in steps."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    while ph or pw:
        sh, sw = min(ph, x.shape[-2] - 1), min(pw, x.shape[-1] - 1)
        if (ph and sh < 1) or (pw and sw < 1):
            raise ValueError(f"reflect_pad_to: cannot reflect-pad a frame of size {tuple(x.shape[-2:])}")
        x = F.pad(x, (0, sw, 0, sh), mode="reflect")
        ph, pw = ph - sh, pw - sw
    return x


class STMFNet(nn.Module):
    """ST-MFNet with configurable widths; ``flow=False`` drops the PWC-Net and softmax-splatting branch.

    ``forward(I0, I1, I2, I3) -> I_t`` with frames (B,3,H,W) in [0,1]; t is halfway between I1 and I2.
    ``freeze_flow``: the PWC-Net's parameters get ``requires_grad=False`` (the published default).
    ``self.widths`` records the widths it was built with; ``ck.shrink`` changes the layers, not this record
    (:func:`summarize_widths` reads a shrunk model's widths from its layers)."""

    def __init__(self, widths: STMFNetWidths | dict | None = None, flow: bool = True,
                 freeze_flow: bool = True):
        super().__init__()
        if widths is None:
            widths = STMFNET_WIDTHS
        elif isinstance(widths, dict):
            widths = STMFNetWidths(**{k: tuple(v) if isinstance(v, Sequence) else v
                                      for k, v in widths.items()})
        elif not isinstance(widths, STMFNetWidths):
            raise TypeError("STMFNet: widths must be STMFNetWidths, a dict or None, "
                            f"got {type(widths).__name__}")
        self.widths = widths
        self.flow = bool(flow)
        self.gauss_kernel = nn.Parameter(gaussian_kernel(KERNEL_SIZE, 0.5), requires_grad=False)
        self.feature_extractor = MultiScaleResNeXtUNet(6, widths.features)
        self.get_kernel = KernelEstimation(widths.features[0], widths.heads, KERNEL_SIZE)
        self.upsampler = HalfPelUpsampler()
        self.scale_synthesis = MultiInputGridNet((6, 12 if self.flow else 6, 6), widths.grid, 3)
        if self.flow:
            self.flow_estimator = PWCNet()
            self.metric = ImportanceMetric()
            if freeze_flow:
                self.flow_estimator.requires_grad_(False)
        self.dyntex_generator = UNet3D(widths.unet, widths.fuse, n_frames=5)
        self.register_buffer("mean_rgb", torch.tensor(MEAN_RGB).view(1, 3, 1, 1), persistent=False)

    # ------------------------------------------------------------------------------------------ pieces
    def downsample(self, x: Tensor) -> Tensor:
        """Gaussian 5×5 (σ=0.5, reflect borders) at full resolution, then bilinear (``align_corners=False``)
        to (H/2, W/2) as published: at this exact factor, the mean of each 2×2 block."""
        padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
        blurred = F.conv2d(padded, self.gauss_kernel, groups=x.shape[1])
        return F.interpolate(blurred, size=(x.shape[-2] // 2, x.shape[-1] // 2), mode="bilinear",
                             align_corners=False)

    def warp(self, x: Tensor, weight: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        """AdaCoF warp of ``x`` (replicate-padded by (F−1)·d/2) with one kernel set."""
        p = (KERNEL_SIZE - 1) * DILATION // 2
        return adacof(F.pad(x, (p, p, p, p), mode="replicate"), weight, alpha, beta, DILATION)

    def _check(self, frames: tuple[Tensor, ...]) -> None:
        if any(isinstance(f, torch.fx.Proxy) for f in frames):
            return  # symbolic tracing: the example inputs were checked by a plain forward
        if len(frames) != 4:
            raise ValueError(f"STMFNet: expected 4 frames (I0, I1, I2, I3), got {len(frames)}")
        ref = frames[0]
        for i, f in enumerate(frames):
            if not isinstance(f, Tensor) or f.dim() != 4 or f.shape[1] != 3:
                raise ValueError(f"STMFNet: frame I{i} must be a (B,3,H,W) tensor, "
                                 f"got {getattr(f, 'shape', type(f))}")
            if f.shape != ref.shape:
                raise ValueError(f"STMFNet: frame I{i} has shape {tuple(f.shape)}, "
                                 f"expected I0's {tuple(ref.shape)}")

    # ----------------------------------------------------------------------------------------- forward
    def forward(self, I0: Tensor, I1: Tensor, I2: Tensor, I3: Tensor) -> Tensor:  # noqa: N803
        self._check((I0, I1, I2, I3))
        h, w = I0.shape[-2:]
        I0, I1, I2, I3 = (reflect_pad_to(f, PAD_MULTIPLE) for f in (I0, I1, I2, I3))  # noqa: N806

        feats = self.feature_extractor(torch.cat([I1 - self.mean_rgb, I2 - self.mean_rgb], 1))
        k = self.get_kernel(feats)

        warp_1x = [self.warp(I1, k["Weight1"], k["Alpha1"], k["Beta1"]),
                   self.warp(I2, k["Weight2"], k["Alpha2"], k["Beta2"])]
        I1d, I2d = self.downsample(I1), self.downsample(I2)  # noqa: N806
        warp_half = [self.warp(I1d, k["Weight1_ds"], k["Alpha1_ds"], k["Beta1_ds"]),
                     self.warp(I2d, k["Weight2_ds"], k["Alpha2_ds"], k["Beta2_ds"])]
        I1u, I2u = self.upsampler(I1), self.upsampler(I2)  # noqa: N806
        warp_2x = [self.warp(I1u, k["Weight1_us"], k["Alpha1_us"], k["Beta1_us"]),
                   self.warp(I2u, k["Weight2_us"], k["Alpha2_us"], k["Beta2_us"])]

        if self.flow:
            f12 = self.flow_estimator.full_resolution_flow(I1, I2)
            f21 = self.flow_estimator.full_resolution_flow(I2, I1)
            splat1 = softmax_splat(I1, 0.5 * f12, self.metric(I1, I2, f12))
            splat2 = softmax_splat(I2, 0.5 * f21, self.metric(I2, I1, f21))
            warp_1x += [splat1, splat2]

        coarse = self.scale_synthesis(torch.cat(warp_2x, 1), torch.cat(warp_1x, 1), torch.cat(warp_half, 1))
        residual = self.dyntex_generator(torch.stack([I0, I1, coarse, I2, I3], 2))
        return (coarse + residual)[:, :, :h, :w]


# ------------------------------------------------------------------------------------- plans and branches
def flow_branch_density(model: STMFNet) -> float:
    """Fraction of nonzero GridNet weights that read the softmax-splatted frames (input channels 6–11 of
    ``scale_synthesis.lateral_1_0``): 0 means the flow branch no longer affects the output."""
    if not model.flow:
        return 0.0
    lateral = model.scale_synthesis.lateral_1_0
    convs = [lateral.f[1]] + ([lateral.conv] if lateral.conv is not None else [])
    reads = torch.cat([c.weight.detach()[:, 6:].flatten() for c in convs])
    return float((reads != 0).float().mean())


def drop_flow_branch(model: STMFNet) -> STMFNet:
    """A copy without the PWC-Net, the importance metric and the GridNet inputs of the splatted frames.

    Exact (same output) when :func:`flow_branch_density` is 0; otherwise the splats' contribution is lost."""
    small = copy.deepcopy(model)
    if not small.flow:
        return small
    del small.flow_estimator, small.metric
    lateral = small.scale_synthesis.lateral_1_0
    for holder, key in ((lateral.f, "1"), (lateral, "conv")):
        old = holder._modules[key]
        if old is None:
            continue
        new = nn.Conv2d(6, old.out_channels, old.kernel_size, old.stride, old.padding,
                        bias=old.bias is not None)
        with torch.no_grad():
            new.weight.copy_(old.weight[:, :6])
            if old.bias is not None:
                new.bias.copy_(old.bias)
        holder._modules[key] = new.to(old.weight.device, old.weight.dtype)
    small.flow = False
    return small


def init_published_(model: STMFNet) -> STMFNet:
    """The published initialisation of the parts a fresh ST-MFNet class sets itself, in place.

    The 3-D U-Net's encoder (an R3D-18 with SE gating, initialised like torchvision's video ResNets):
    every Conv3d ``kaiming_normal_(mode="fan_out", nonlinearity="relu")`` with bias 0 (the SE gates'
    1×1×1 convs included), every BatchNorm3d weight 1 / bias 0 — for a 3×3×3 conv about 2.4× PyTorch's
    default std. The splatting importance metric's ``paramScale`` back to −1 (it has no
    ``reset_parameters``, so a re-initialised shrunk model would keep its trained value).
    Everything else keeps PyTorch's default initialisation, as published."""
    for m in model.dyntex_generator.encoder.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if getattr(model, "flow", False):
        with torch.no_grad():
            model.metric.paramScale.fill_(-1.0)
    return model


def _round_up(c: int, multiple: int) -> int:
    return max(multiple, -(-c // multiple) * multiple)


def summarize_widths(model: STMFNet) -> STMFNetWidths:
    """One width per part of a (shrunk) ST-MFNet: the widest layer of each part, feature-extractor widths
    rounded up to a multiple of 32 (grouped convs). ``STMFNet(summarize_widths(m))`` is a uniform model at
    least as wide as ``m`` everywhere."""
    fe = model.feature_extractor

    def block_width(block: nn.Module) -> int:
        small, large = block.resnext_small, block.resnext_large
        return max(small.conv1.out_channels, large.conv1.out_channels,
                   small.conv3.out_channels + large.conv3.out_channels)

    stages = [(fe.conv1, fe.deconv1), (fe.conv2, fe.deconv2), (fe.conv3, fe.deconv3), (fe.conv4, fe.deconv4)]
    features = tuple(_round_up(max(block_width(a), block_width(b)), 32) for a, b in stages)
    heads = list(model.get_kernel.children())
    hidden = (max(h[0].out_channels for h in heads), max(h[2].out_channels for h in heads))
    grid = []
    gn = model.scale_synthesis
    for i in range(3):
        outs = [m.out_channels for name, blk in gn.named_children() if name.startswith(f"lateral_{i}_")
                for m in blk.modules() if isinstance(m, nn.Conv2d)]
        for name, blk in gn.named_children():
            if name.startswith(f"down_{i - 1}_"):
                outs.append(blk.f[3].out_channels)
            elif name.startswith(f"up_{i}_"):
                outs.append(blk.f[4].out_channels)
        grid.append(max(outs))
    enc = model.dyntex_generator.encoder
    unet = [max(m.out_channels for m in getattr(enc, f"layer{k}").modules() if isinstance(m, nn.Conv3d))
            for k in (1, 2, 3, 4)]
    unet[0] = max(unet[0], enc.stem[0].out_channels)
    dec = model.dyntex_generator.decoder
    dec_out = [dec[0].conv[0].out_channels, dec[1].upconv[0].out_channels, dec[2].upconv[0].out_channels,
               dec[3].conv[0].out_channels, dec[4].upconv[0].out_channels]
    for k, w in zip((2, 1, 0, 0, 0), dec_out):
        unet[k] = max(unet[k], w)
    fuse = model.dyntex_generator.feature_fuse[0].out_channels
    return STMFNetWidths(features=features, heads=hidden, grid=tuple(grid), unet=tuple(unet), fuse=fuse)


def to_channels_last(model: nn.Module) -> nn.Module:
    """The model (in place) in the channels-last runtime of ``compresskit.deploy.runtime``: every 2-D
    weight channels-last and every 3-D one channels-last-3d, softmax over the taps on the NHWC view; feed
    the model channels-last frames too. oneDNN runs NHWC convolutions of odd widths (25, 30,
    46: the Mini's) much faster on CPUs."""
    from compresskit.deploy.runtime import to_channels_last as core_to_channels_last

    return core_to_channels_last(model)
