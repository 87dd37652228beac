"""The learning rate of a training stage, calibrated on the model instead of a constant 1e-3.

The size of a step relative to the weights it moves, the update-to-weight ratio
``ρ = median over weight tensors of ‖Δw‖ / ‖w‖``, is what a learning rate really sets, and it does not
transfer between networks through a constant: the same lr moves a network whose weights are small much
further than one whose weights are large. :func:`calibrate_lr` measures ρ on a copy of the model over a
few steps at a trial learning rate on the first training batches and scales the learning rate so that
ρ meets the stage's target (``lr = trial · ρ_target / ρ_measured``; for Adamax and SGD the step is
proportional to the learning rate). The copy is thrown away; the model itself is not touched. The probe
also times the steps and one pass over the held-out batches (what a time budget needs).

The targets come from the hand-tuned runs of ``benchmarks/compress_targets.py`` (docs/results.md) on
pretrained networks, measured by ``benchmarks/lr_ratio.py``: see :data:`STAGE1_RATIO` and
:data:`RECOVER_RATIO`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["STAGE1_RATIO", "RECOVER_RATIO", "PROBE_STEPS", "Calibration", "calibrate_lr", "update_ratio"]

#: update-to-weight ratio of stage I: Adamax at lr 3e-4, the hand-tuned stage-I rate of the good runs,
#: gives 1.34e-3 on RIFE v3.8 and 2.13e-3 on FlowVFI (geometric mean 1.7e-3); 1e-4 on FlowVFI (7.6e-4)
#: did worse (docs/distillation.md, "Learning rates")
STAGE1_RATIO = 1.7e-3
#: update-to-weight ratio of recovery: Adamax at lr 5e-4 (the hand-tuned recovery rate) gives 2.20e-3 on
#: RIFE and 3.47e-3 on FlowVFI (geometric mean 2.8e-3); 1e-3 on FlowVFI (7.3e-3) did worse
RECOVER_RATIO = 2.8e-3
PROBE_STEPS = 6


@dataclass
class Calibration:
    lr: float
    target_ratio: float
    trial_lr: float
    measured_ratio: float  #: ρ measured at ``trial_lr``
    ratios: list[float] = field(default_factory=list)  #: ρ of each trial step
    step_seconds: float = math.nan  #: median seconds per training step
    eval_seconds: float = math.nan  #: seconds per pass over the held-out batches (nan: not measured)
    val_before: float | None = None  #: held-out loss of the unchanged model
    steps: int = 0

    @property
    def why(self) -> str:
        return (f"update-to-weight ratio {self.target_ratio:.3g}: {self.measured_ratio:.3g} measured at lr "
                f"{self.trial_lr:.3g} over {self.steps} steps")

    def to_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "target_ratio": self.target_ratio, "trial_lr": self.trial_lr,
                "measured_ratio": self.measured_ratio, "ratios": self.ratios,
                "step_seconds": self.step_seconds,
                "eval_seconds": self.eval_seconds, "val_before": self.val_before, "steps": self.steps,
                "why": self.why}


def update_ratio(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor]) -> float:
    """Median over tensors of ``‖after − before‖ / ‖before‖`` (tensors with ``‖before‖ = 0`` skipped)."""
    ratios = sorted(float((a - b).norm() / b.norm()) for b, a in zip(before, after) if float(b.norm()) > 0)
    return ratios[len(ratios) // 2] if ratios else 0.0


def calibrate_lr(model: nn.Module, batches: Sequence[Any], loss_fn: Callable[[nn.Module, Any], torch.Tensor],
                 *, target_ratio: float, trial_lr: float = 1e-3, steps: int = PROBE_STEPS, seed: int = 0,
                 val_fn: Callable[[nn.Module], float] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 optimizer: Callable[[list[nn.Parameter], float], torch.optim.Optimizer] | None = None,
                 limits: tuple[float, float] = (1e-6, 1e-1)) -> Calibration:
    """The learning rate at which ``steps`` steps of ``optimizer`` (default Adamax) on ``batches`` (cycled)
    move the weight tensors (the parameters of two or more dimensions) by ``target_ratio`` of their norm
    per step (median over tensors and steps), clamped to ``limits``. ``loss_fn(model, batch)`` is the
    training loss; ``val_fn(model)`` (timed) the held-out loss."""
    if not batches:
        raise ValueError("calibrate_lr: batches is empty")
    if steps < 1 or not target_ratio > 0 or not trial_lr > 0:
        raise ValueError("calibrate_lr: needs steps >= 1, target_ratio > 0 and trial_lr > 0")
    eval_s, before_val = math.nan, None
    if val_fn is not None:
        t = clock()
        before_val = float(val_fn(model))
        eval_s = clock() - t
    trial = copy.deepcopy(model).train()
    trained = [p for p in trial.parameters() if p.requires_grad]
    weights = [p for p in trained if p.dim() > 1] or trained
    opt = optimizer(trained, trial_lr) if optimizer is not None else torch.optim.Adamax(trained, lr=trial_lr)
    ratios: list[float] = []
    times: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(steps):
            t = clock()
            loss = loss_fn(trial, batches[i % len(batches)])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"calibrate_lr: the loss is {float(loss)} at trial step {i} (lr "
                                         f"{trial_lr:g}); check the data and the loss")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            old = [w.detach().clone() for w in weights]
            opt.step()
            if i > 0 or steps == 1:  # the first step pays one-off costs
                times.append(clock() - t)
            ratios.append(update_ratio(old, [w.detach() for w in weights]))
    del trial, opt
    measured = sorted(ratios)[len(ratios) // 2]
    lr = trial_lr * target_ratio / measured if measured > 0 else trial_lr
    lr = min(max(lr, limits[0]), limits[1])
    times.sort()
    return Calibration(lr=lr, target_ratio=target_ratio, trial_lr=trial_lr, measured_ratio=measured,
                       ratios=ratios, step_seconds=times[len(times) // 2] if times else math.nan,
                       eval_seconds=eval_s, val_before=before_val, steps=steps)
