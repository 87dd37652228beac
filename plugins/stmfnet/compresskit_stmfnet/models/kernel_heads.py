"""ST-MFNet's 18 AdaCoF kernel heads: W, α, β for each of the two frames at ½×, 1× and 2× resolution.

From the features at H/2: the ``_ds`` heads stay at H/2 (conv, relu, conv, relu, conv), the 1× heads
upsample ×2 and the ``_us`` heads ×4 before a last conv (Sequential indices 0, 2, 4, 7 as in AdaCoF);
weight heads end in a softmax over the F² taps.
"""

from __future__ import annotations

from torch import Tensor, nn

KINDS = ("Weight", "Alpha", "Beta")
SCALES = {"_ds": None, "": 2, "_us": 4}  # suffix -> upsampling factor from the H/2 features


def kernel_head(in_ch: int, hidden: tuple[int, int], taps: int, upsample: int | None, softmax: bool
                ) -> nn.Sequential:
    h1, h2 = hidden
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, h1, 3, padding=1), nn.ReLU(inplace=False),
        nn.Conv2d(h1, h2, 3, padding=1), nn.ReLU(inplace=False),
        nn.Conv2d(h2, taps, 3, padding=1),
    ]
    if upsample is not None:
        layers += [nn.ReLU(inplace=False), nn.Upsample(scale_factor=upsample, mode="bilinear",
                                                       align_corners=True),
                   nn.Conv2d(taps, taps, 3, padding=1)]
    if softmax:
        layers.append(nn.Softmax(dim=1))
    return nn.Sequential(*layers)


class KernelEstimation(nn.Module):
    """``forward(features) -> {"Weight1": W, "Alpha1": α, …, "Beta2_us": β}`` (18 maps of F² channels)."""

    def __init__(self, in_ch: int = 64, hidden: tuple[int, int] = (64, 64), kernel_size: int = 5):
        super().__init__()
        taps = kernel_size * kernel_size
        for suffix, up in SCALES.items():
            for frame in (1, 2):
                for kind in KINDS:
                    self.add_module(f"module{kind}{frame}{suffix}",
                                    kernel_head(in_ch, hidden, taps, up, softmax=kind == "Weight"))

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        return {name[len("module"):]: head(features) for name, head in self.named_children()}
