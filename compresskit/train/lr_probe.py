"""The learning rate of a training stage, chosen by a short probe instead of a constant.

For each candidate ``lr`` in :data:`CANDIDATES` a copy of the model takes ``steps`` Adamax steps on the
first training batches, then the held-out loss is measured; the candidate with the lowest held-out loss
wins. When no candidate improves on the starting loss (a pretrained network that any step disturbs),
the smallest one is taken. The copies are thrown away; the model itself is not touched. The probe also
times the steps and one pass over the held-out batches (what the budget needs to turn seconds into
steps).

The candidates span the range the benchmark's hand-tuned runs used on pretrained networks (stage I
3e-4, recovery 5e-4; lr 1e-3 in recovery and 1e-4 in stage I each did worse on FlowVFI at 5×, see
docs/results.md) and a decade around it.
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

__all__ = ["CANDIDATES", "SGD_CANDIDATES", "PROBE_STEPS", "ProbeResult", "probe_lr"]

CANDIDATES: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3)
#: OBProx-SG's step size is an SGD step size (no per-weight normalisation): a grid two decades higher
SGD_CANDIDATES: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2)
PROBE_STEPS = 10


@dataclass
class ProbeResult:
    lr: float
    before: float  #: held-out loss of the unchanged model
    losses: dict[float, float] = field(default_factory=dict)  #: held-out loss after the probe, per lr
    step_seconds: float = math.nan  #: median seconds per training step
    eval_seconds: float = math.nan  #: seconds per pass over the held-out batches
    steps: int = 0
    why: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "before": self.before, "losses": {f"{k:g}": v for k, v in self.losses.items()},
                "step_seconds": self.step_seconds, "eval_seconds": self.eval_seconds, "steps": self.steps,
                "why": self.why}


def probe_lr(model: nn.Module, batches: Sequence[Any], loss_fn: Callable[[nn.Module, Any], torch.Tensor],
             val_fn: Callable[[nn.Module], float], *, candidates: Sequence[float] = CANDIDATES,
             steps: int = PROBE_STEPS, seed: int = 0, clock: Callable[[], float] = time.monotonic,
             params: Callable[[nn.Module], list[nn.Parameter]] | None = None,
             optimizer: Callable[[list[nn.Parameter], float], torch.optim.Optimizer] | None = None
             ) -> ProbeResult:
    """Try each of ``candidates`` for ``steps`` Adamax steps on ``batches`` (cycled) from ``model``'s
    weights; ``loss_fn(model, batch)`` is the training loss, ``val_fn(model)`` the held-out loss.
    ``params(model)`` picks the trained parameters (default: those with ``requires_grad``);
    ``optimizer(params, lr)`` builds the optimizer (default: Adamax, the stages' own)."""
    if not batches:
        raise ValueError("probe_lr: batches is empty")
    if steps < 1 or not candidates:
        raise ValueError("probe_lr: needs steps >= 1 and at least one candidate")
    t0 = clock()
    before = float(val_fn(model))
    eval_s = clock() - t0
    times: list[float] = []
    losses: dict[float, float] = {}
    for lr in candidates:
        trial = copy.deepcopy(model).train()
        trained = params(trial) if params is not None else [p for p in trial.parameters() if p.requires_grad]
        opt = optimizer(trained, lr) if optimizer is not None else torch.optim.Adamax(trained, lr=lr)
        ok = True
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for i in range(steps):
                t = clock()
                loss = loss_fn(trial, batches[i % len(batches)])
                if not torch.isfinite(loss):
                    ok = False
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if i > 0 or steps == 1:  # the first step pays one-off costs
                    times.append(clock() - t)
        t = clock()
        value = float(val_fn(trial)) if ok else math.inf
        eval_s = min(eval_s, clock() - t) if eval_s > 0 else clock() - t
        losses[lr] = value if math.isfinite(value) else math.inf
        del trial, opt
    best = min(losses, key=lambda k: (losses[k], k))
    if not losses[best] < before:
        lr, why = min(candidates), (f"no candidate improved the held-out loss {before:.4g} within {steps} "
                                    "steps: the smallest is taken")
    else:
        lr, why = best, f"lowest held-out loss after {steps} steps ({losses[best]:.4g}, from {before:.4g})"
    times.sort()
    return ProbeResult(lr=lr, before=before, losses=losses,
                       step_seconds=times[len(times) // 2] if times else math.nan, eval_seconds=eval_s,
                       steps=steps * len(candidates), why=why)
