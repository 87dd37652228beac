"""Stage I of ``compress``: the :class:`Sparsifier` protocol and its default, OBProx-SG with automatic λ.

OBProx-SG (Chen et al. 2020) moves every weight towards zero by ``lr·λ`` per step, so a hand-picked λ
either does nothing within the step budget or wipes the model out. :class:`AutoLambda` replaces the
hand tuning:

1. **Scale** – ``λ0 = q_f(|w|) / (lr · steps)``: the ``f``-quantile of the weight magnitudes, ``f`` the
   fraction of units the target plan removes, reaches zero in exactly the step budget.
2. **Schedule** – every ``calibrate_every`` steps it measures ``z``, the fraction of prunable units
   heading to zero (l1 mass at most ``zero_tol`` times their group's initial mean unit mass), against
   the schedule ``f · min(1, step / (ramp · steps))`` and multiplies λ by ``growth`` when behind, divides
   it when ahead (dual ascent on the sparsity gap, the way CoFi drives its cost to the
   target; HESSO reaches its target sparsity by construction).

The calibration is recorded (``history``) and lands in the report; ``SparsifyConfig(lambda_=1e-4)``
fixes λ instead (the papers' expert knob).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

from compresskit.shrink.select import unit_l1_mass
from compresskit.train.loop import Callback

if TYPE_CHECKING:  # pragma: no cover
    from compresskit.config import SparsifyConfig
    from compresskit.graph.channels import ChannelGraph
    from compresskit.train.loop import Trainer

__all__ = ["Sparsifier", "SparsifyContext", "OBProxSGSparsifier", "AutoLambda", "initial_lambda"]


@dataclass
class SparsifyContext:
    """What a sparsifier may use: the data, the loss, the graph and how much the target removes."""

    train_loader: Iterable
    loss_fn: Callable[[Any, Any], torch.Tensor]
    inputs_fn: Callable[[Any], tuple]
    graph: ChannelGraph
    #: fraction of the prunable units the target plan removes, for the model's current weights
    removal_fraction: Callable[[nn.Module], float]
    device: str = "cpu"
    seed: int = 0
    checkpoint_every: int = 50
    progress: bool = True
    out_dir: Path | None = None
    resume: bool = True


@runtime_checkable
class Sparsifier(Protocol):
    """Trains ``model`` in place so that the units the plan will remove carry (almost) no weight.

    ``fingerprint()`` is everything the result depends on (a stage is redone when it changes);
    ``run(model, ctx)`` returns a JSON-friendly record of what it did (for the report).
    """

    def fingerprint(self) -> dict[str, Any]: ...

    def run(self, model: nn.Module, ctx: SparsifyContext) -> dict[str, Any]: ...


def _magnitudes(params: list[torch.Tensor], limit: int = 1_000_000, seed: int = 0) -> torch.Tensor:
    flat = torch.cat([p.detach().abs().flatten().float().cpu() for p in params]) if params else torch.zeros(1)
    if flat.numel() > limit:  # torch.quantile has a size limit; a uniform sample is as good
        g = torch.Generator().manual_seed(seed)
        flat = flat[torch.randint(0, flat.numel(), (limit,), generator=g)]
    return flat


def initial_lambda(params: list[torch.Tensor], fraction: float, lr: float, steps: int) -> float:
    """``q_f(|w|) / (lr · steps)``: the λ at which OBProx-SG brings the smallest ``f`` of the weights to
    zero within ``steps`` steps of size ``lr`` (each prox step shrinks ``|w|`` by ``lr·λ``)."""
    q = float(torch.quantile(_magnitudes(params), min(max(fraction, 0.01), 0.99)))
    return max(q, 1e-12) / (lr * max(steps, 1))


class AutoLambda(Callback):
    """Raises (or lowers) OBProx-SG's λ on a schedule until the target fraction of units heads to zero."""

    def __init__(self, model: nn.Module, graph: ChannelGraph, groups: list[int], *, lambda0: float,
                 target_fraction: Callable[[nn.Module], float], steps: int, every: int, growth: float,
                 ramp: float, zero_tol: float):
        self.model, self.graph, self.groups = model, graph, groups  # optimizer param groups under l1
        self.lam, self.target_fraction = float(lambda0), target_fraction
        self.steps, self.every, self.growth, self.ramp, self.zero_tol = steps, every, growth, ramp, zero_tol
        self.initial: dict[int, float] | None = None
        self.history: list[dict[str, float]] = []

    def _masses(self) -> dict[int, torch.Tensor]:
        return {g.id: unit_l1_mass(self.model, g) for g in self.graph.prunable_groups}

    def heading_to_zero(self) -> float:
        """Fraction of prunable units whose l1 mass is at most ``zero_tol`` × their group's initial mean."""
        masses = self._masses()
        total = sum(m.numel() for m in masses.values())
        if not total or self.initial is None:
            return 0.0
        low = sum(int((m <= self.zero_tol * self.initial.get(gid, 0.0)).sum()) for gid, m in masses.items())
        return low / total

    def _apply(self, trainer: Trainer) -> None:
        for i in self.groups:
            trainer.optimizer.param_groups[i]["lambda_"] = self.lam

    def on_train_start(self, trainer: Trainer) -> None:
        if self.initial is None:
            self.initial = {gid: float(m.mean()) if m.numel() else 0.0 for gid, m in self._masses().items()}
            self.history.append({"step": 0, "lambda": self.lam, "heading_to_zero": self.heading_to_zero(),
                                 "schedule": 0.0, "target_fraction": float(self.target_fraction(self.model))})
        self._apply(trainer)

    def on_step_end(self, trainer: Trainer) -> None:
        step = trainer.step
        if step % self.every and step != self.steps:
            return
        z = self.heading_to_zero()
        f = float(self.target_fraction(self.model))
        want = f * min(1.0, step / max(1.0, self.ramp * self.steps))
        record = {"step": step, "lambda": self.lam, "heading_to_zero": z, "schedule": want,
                  "target_fraction": f}
        if step < self.steps:
            if z < want:
                self.lam *= self.growth
            elif z > want + 0.02 * max(f, 1e-9) + 1e-9:  # ahead of the schedule: ease off
                self.lam /= self.growth
            self._apply(trainer)
        record["next_lambda"] = self.lam
        self.history.append(record)

    def state_dict(self) -> dict[str, Any]:
        return {"lambda": self.lam, "initial": None if self.initial is None else
                {str(k): v for k, v in self.initial.items()}, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lam = float(state["lambda"])
        self.initial = None if state["initial"] is None else {int(k): v for k, v in state["initial"].items()}
        self.history = list(state["history"])


class OBProxSGSparsifier:
    """The default sparsifier: ``ck.train`` with ``ck.OBProxSG`` (+ :class:`AutoLambda` for "auto")."""

    def __init__(self, config: SparsifyConfig):
        self.config = config

    def fingerprint(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")

    def run(self, model: nn.Module, ctx: SparsifyContext) -> dict[str, Any]:
        from compresskit.config import TrainConfig
        from compresskit.sparsify.obproxsg import OBProxSG, l1_param_groups
        from compresskit.train.loop import train

        cfg = self.config
        if cfg.steps == 0:
            return {"steps": 0}
        every = cfg.l1_on == "all"
        auto = cfg.lambda_ == "auto"
        groups = l1_param_groups(model, 0.0 if auto else float(cfg.lambda_), include_biases=every,
                                 include_norms=every)
        decayed = [i for i, g in enumerate(groups) if g["lambda_"] > 0 or (auto and i == 0)]
        callbacks: list[Callback] = []
        record: dict[str, Any] = {"steps": cfg.steps, "lr": cfg.lr}
        if auto:
            fraction = float(ctx.removal_fraction(model))
            lam0 = initial_lambda(groups[0]["params"], fraction, cfg.lr, cfg.steps)
            for i in decayed:
                groups[i]["lambda_"] = lam0
            calib = AutoLambda(model, ctx.graph, decayed, lambda0=lam0, target_fraction=ctx.removal_fraction,
                               steps=cfg.steps, every=cfg.calibrate_every or max(1, cfg.steps // 10),
                               growth=cfg.growth, ramp=cfg.ramp, zero_tol=cfg.zero_tol)
            callbacks.append(calib)
            record.update(lambda0=lam0, target_fraction=fraction)
        opt = OBProxSG(groups, lr=cfg.lr, lambda_=0.0 if auto else float(cfg.lambda_), eps=cfg.eps,
                       n_prox_steps=cfg.n_prox_steps, n_orthant_steps=cfg.n_orthant_steps)
        tcfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, seed=ctx.seed, device=ctx.device,
                           checkpoint_every=ctx.checkpoint_every, progress=ctx.progress)
        torch.manual_seed(ctx.seed)
        train(model, ctx.train_loader, ctx.loss_fn, optimizer=opt, config=tcfg, inputs_fn=ctx.inputs_fn,
              out_dir=ctx.out_dir, resume=ctx.resume, callbacks=callbacks)
        if auto:
            record.update(final_lambda=calib.lam, heading_to_zero=calib.heading_to_zero(),
                          history=calib.history)
        else:
            record["lambda"] = float(cfg.lambda_)
        return record


def get_sparsifier(config: SparsifyConfig) -> Sparsifier:
    """The sparsifier ``config.method`` names (``"obproxsg"``)."""
    if config.method == "obproxsg":
        return OBProxSGSparsifier(config)
    raise ValueError(f"sparsify.method: unknown sparsifier {config.method!r}")  # pragma: no cover
