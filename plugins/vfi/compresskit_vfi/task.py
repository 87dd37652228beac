"""The VFI task as compresskit sees it: which batch elements are the model's inputs, and the default loss.

Batches are ``(frame0, frame1, gt)`` triplets or ``(I0, I1, I2, I3, gt)`` quintuplets of float frames
(B, 3, H, W) in [0, 1]; the model is called as ``model(*batch[:-1])`` and its output compared to
``batch[-1]``. Model plugins pass these to ``ck.register_model(..., default_loss=default_loss,
inputs_from_batch=inputs_from_batch)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from compresskit.losses import CharbonnierLoss, LaplacianPyramidLoss

__all__ = ["inputs_from_batch", "target_from_batch", "output_frame", "default_loss", "laplacian_loss"]

_charbonnier = CharbonnierLoss(eps=1e-3)
_laplacian = LaplacianPyramidLoss(reduction="sum")


def _check_batch(batch: Any) -> Sequence[Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError("VFI batch: expected a tuple/list (input frames..., target frame) of at least 2 "
                        f"tensors, got {type(batch).__name__}"
                        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""))
    for i, t in enumerate(batch):
        if not isinstance(t, Tensor) or t.dim() != 4:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise TypeError(f"VFI batch[{i}]: expected frames (B, C, H, W), got {got}")
    return batch


def inputs_from_batch(batch: Any) -> tuple[Tensor, ...]:
    """The model's positional inputs: every frame of the batch but the last (the ground truth)."""
    return tuple(_check_batch(batch)[:-1])


def target_from_batch(batch: Any) -> Tensor:
    """The ground-truth middle frame: the last element of the batch."""
    return _check_batch(batch)[-1]


def output_frame(output: Any) -> Tensor:
    """The interpolated frame of a model's output (models with ``return_aux`` give ``(frame, aux)``)."""
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    if not isinstance(output, Tensor):
        raise TypeError(f"VFI output: expected a frame tensor or (frame, aux), got {type(output).__name__}")
    return output


def _frame_and_target(output: Any, batch: Any) -> tuple[Tensor, Tensor]:
    frame, target = output_frame(output), target_from_batch(batch)
    if frame.shape != target.shape:
        raise ValueError(f"VFI loss: output frame {tuple(frame.shape)} and target batch[-1] "
                         f"{tuple(target.shape)} differ in shape")
    return frame, target.to(frame.dtype)


def default_loss(output: Any, batch: Any) -> Tensor:
    """Charbonnier loss mean √((out − gt)² + ε²), ε = 1e-3, between the output frame and ``batch[-1]``
    (the reconstruction term of AdaCoF and CDFI; Lee et al. CVPR 2020, Ding et al. CVPR 2021)."""
    return _charbonnier(*_frame_and_target(output, batch))


def laplacian_loss(output: Any, batch: Any) -> Tensor:
    """The published ST-MFNet / ST-MFNet Mini training loss between the output frame and ``batch[-1]``: the
    5-level Laplacian pyramid loss ``Σ_i 2^i · ‖L_i(out) − L_i(gt)‖₁``, **summed** over pixels, channels
    and the batch as published (its scale grows with batch and crop size; Danier et al. CVPR 2022)."""
    return _laplacian(*_frame_and_target(output, batch))
