"""Conversions between uint8 images and float tensors, and the training augmentations of the papers.

Every transform takes and returns one sample: a tuple of frames (3, H, W), inputs first, target last.
Spatial transforms treat all frames of a sample alike; temporal reversal reverses the order of the
inputs, which for a triplet ``(frame0, frame1, gt)`` is the temporal swap of CDFI and for a quintuplet
``(I0, I1, I2, I3, gt)`` the time reversal of ST-MFNet (the target, the middle, stays the middle).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np
import torch

__all__ = [
    "to_tensor",
    "to_uint8",
    "Compose",
    "RandomCrop",
    "CenterCrop",
    "RandomFlip",
    "RandomTemporalReverse",
    "train_transform",
]

Sample = tuple[torch.Tensor, ...]


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) → float32 (3, H, W) in [0, 1]."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"to_tensor: expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)).div_(255.0)


def to_uint8(frame: torch.Tensor) -> np.ndarray:
    """float (3, H, W) in [0, 1] → uint8 (H, W, 3), rounding as the papers quantise: round(clamp(x)·255)."""
    if frame.dim() != 3 or frame.shape[0] != 3:
        raise ValueError(f"to_uint8: expected a (3, H, W) tensor, got {tuple(frame.shape)}")
    q = frame.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return q.permute(1, 2, 0).cpu().numpy()


def _size2(size: int | Sequence[int], name: str) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h <= 0 or w <= 0:
        raise ValueError(f"{name}: size must be positive, got {size!r}")
    return int(h), int(w)


class Compose:
    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]):
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


class RandomCrop:
    """The same random (h, w) window from every frame of a sample."""

    def __init__(self, size: int | Sequence[int], generator: random.Random | None = None):
        self.size = _size2(size, "RandomCrop")
        self.rng = generator or random

    def __call__(self, sample: Sample) -> Sample:
        h, w = self.size
        H, W = sample[0].shape[-2:]
        if h > H or w > W:
            raise ValueError(f"RandomCrop: frames of {H}x{W} are smaller than the crop {h}x{w}")
        y, x = self.rng.randint(0, H - h), self.rng.randint(0, W - w)
        return tuple(f[..., y:y + h, x:x + w] for f in sample)

    def __repr__(self) -> str:
        return f"RandomCrop({self.size})"


class CenterCrop:
    """The central (h, w) window of every frame (frames smaller than the crop are an error)."""

    def __init__(self, size: int | Sequence[int]):
        self.size = _size2(size, "CenterCrop")

    def __call__(self, sample: Sample) -> Sample:
        h, w = self.size
        H, W = sample[0].shape[-2:]
        if h > H or w > W:
            raise ValueError(f"CenterCrop: frames of {H}x{W} are smaller than the crop {h}x{w}")
        y, x = (H - h) // 2, (W - w) // 2
        return tuple(f[..., y:y + h, x:x + w] for f in sample)

    def __repr__(self) -> str:
        return f"CenterCrop({self.size})"


class RandomFlip:
    """Horizontal and/or vertical flip of all frames, each with probability ``p``."""

    def __init__(self, horizontal: bool = True, vertical: bool = True, p: float = 0.5,
                 generator: random.Random | None = None):
        self.horizontal, self.vertical, self.p = horizontal, vertical, p
        self.rng = generator or random

    def __call__(self, sample: Sample) -> Sample:
        dims = []
        if self.horizontal and self.rng.random() < self.p:
            dims.append(-1)
        if self.vertical and self.rng.random() < self.p:
            dims.append(-2)
        return tuple(f.flip(dims) for f in sample) if dims else sample

    def __repr__(self) -> str:
        return f"RandomFlip(h={self.horizontal}, v={self.vertical}, p={self.p})"


class RandomTemporalReverse:
    """Reverse the order of the input frames with probability ``p``; the target stays last."""

    def __init__(self, p: float = 0.5, generator: random.Random | None = None):
        self.p = p
        self.rng = generator or random

    def __call__(self, sample: Sample) -> Sample:
        if self.rng.random() < self.p:
            return (*sample[-2::-1], sample[-1])
        return sample

    def __repr__(self) -> str:
        return f"RandomTemporalReverse(p={self.p})"


def train_transform(crop: int | Sequence[int] | None = 256, flips: bool = True, reverse: bool = True,
                    seed: int | None = None) -> Compose:
    """The papers' augmentation: random crop, horizontal and vertical flips, temporal reversal."""
    rng = random.Random(seed) if seed is not None else None
    ts: list[Callable[[Sample], Sample]] = []
    if crop is not None:
        ts.append(RandomCrop(crop, rng))
    if flips:
        ts.append(RandomFlip(True, True, 0.5, rng))
    if reverse:
        ts.append(RandomTemporalReverse(0.5, rng))
    return Compose(ts)
