"""Stage I of ``compress``: the :class:`Sparsifier` protocol and its default, OBProx-SG with automatic λ.

OBProx-SG (Chen et al. 2020) moves every weight towards zero by ``lr·λ`` per step, so a hand-picked λ
either does nothing within the step budget or wipes the model out. :class:`AutoLambda` replaces the
hand tuning:

1. **Scale** – ``λ0 = q_f(|w|) / (lr · steps)``: the ``f``-quantile of the weight magnitudes, ``f`` the
   fraction of units the target plan removes, reaches zero in exactly the step budget.
2. **Schedule** – every ``calibrate_every`` steps the plan for the current weights names the units to
   remove; λ grows by ``growth`` while the fraction of their l1 mass that has gone lags the schedule
   ``(1 − zero_tol) · min(1, step / (ramp · steps))``, and shrinks when it runs ahead or when the units
   the plan keeps have lost more than ``1 − kept_floor`` of theirs (dual ascent on the sparsity gap, the
   way CoFi drives its cost to the target; HESSO reaches its target sparsity by construction).

The calibration is recorded (``history``) and lands in the report; ``SparsifyConfig(lambda_=1e-4)``
fixes λ instead (the papers' expert knob).

Sparsifiers are looked up by name in :data:`SPARSIFIERS` (``SparsifyConfig(method="progressive")``); a
new one is a factory ``(config: SparsifyConfig) -> Sparsifier`` registered with
``@ck.register_sparsifier("name")``, or an object passed as ``SparsifyConfig(method=obj)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

from compresskit._registry import Registry
from compresskit.measure.mass import unit_l1_mass
from compresskit.training.loop import Callback

if TYPE_CHECKING:  # pragma: no cover
    from compresskit.config import SparsifyConfig, TrainConfig
    from compresskit.graph.channels import ChannelGraph
    from compresskit.training.loop import Trainer

__all__ = ["Sparsifier", "SparsifyContext", "OBProxSGSparsifier", "ProgressiveSparsifier", "AutoLambda",
           "initial_lambda", "SPARSIFIERS", "register_sparsifier", "get_sparsifier", "uses_plan"]


@dataclass
class SparsifyContext:
    """What a sparsifier may use: the data, the loss, the graph and how much the target removes."""

    train_loader: Iterable
    loss_fn: Callable[[Any, Any], torch.Tensor]
    inputs_fn: Callable[[Any], tuple]
    graph: ChannelGraph
    #: the target plan's widths ``{group id: units}`` for the model's current weights
    widths_fn: Callable[[nn.Module], dict[int, int]]
    #: the run-wide training settings (seed, device, checkpoint cadence, progress, batch checks) and the
    #: validation cadence; :meth:`SparsifyConfig.train_config` puts the stage's own over them
    train: TrainConfig
    out_dir: Path | None = None
    resume: bool = True
    #: extra callbacks of the training run (the budget's deadline, best-weight keeping)
    callbacks: list[Callback] = field(default_factory=list)
    #: batches validated every ``train.val_every`` steps (None: no validation)
    val_loader: Iterable | None = None
    #: ``{group id: per-unit importance}`` for the current weights: which units the plan removes first
    #: (None: the least l1 mass)
    scores_fn: Callable[[nn.Module], dict[int, torch.Tensor]] | None = None


@runtime_checkable
class Sparsifier(Protocol):
    """Trains ``model`` in place so that the units the plan will remove carry (almost) no weight.

    ``fingerprint()`` is everything the result depends on (a stage is redone when it changes);
    ``run(model, ctx)`` returns a JSON-friendly record of what it did (for the report). It passes
    ``ctx.callbacks`` on to its training. An optional ``uses_plan`` attribute (default True) says whether
    it steers by ``ctx.widths_fn`` (the target's plan), which then joins its stage's fingerprint.
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
    """Raises (or lowers) OBProx-SG's λ on a schedule until the units the plan removes carry no weight.

    At every calibration the plan for the current weights (``widths_fn``) names the units to remove:
    in each group the ones with the least l1 mass. ``gone`` is the fraction of their initial l1 mass
    that has gone, ``kept`` the fraction of the other units' mass that is left. λ is multiplied by
    ``growth`` while ``gone`` lags ``(1 − zero_tol) · min(1, step / (ramp · steps))`` and ``kept`` is at
    least ``kept_floor``; divided when ``gone`` runs ahead of the schedule or ``kept`` falls below the
    floor (a global l1 strong enough to eat the units the plan keeps is too strong).
    """

    def __init__(self, model: nn.Module, graph: ChannelGraph, groups: list[int], *, lambda0: float,
                 widths_fn: Callable[[nn.Module], dict[int, int]], steps: int, every: int, growth: float,
                 ramp: float, zero_tol: float, kept_floor: float = 0.7):
        self.model, self.graph, self.groups = model, graph, groups  # optimizer param groups under l1
        self.lam, self.widths_fn = float(lambda0), widths_fn
        self.steps, self.every, self.growth, self.ramp, self.zero_tol = steps, every, growth, ramp, zero_tol
        self.kept_floor = kept_floor
        self.initial: dict[int, list[float]] | None = None  # per group: each unit's initial l1 mass
        self.history: list[dict[str, float]] = []

    def _masses(self) -> dict[int, torch.Tensor]:
        return {g.id: unit_l1_mass(self.model, g) for g in self.graph.prunable_groups}

    def measure(self) -> dict[str, float]:
        """``gone``, ``kept`` (see the class docstring), ``removed_fraction`` (units the plan removes) and
        ``heading_to_zero`` (of those, the fraction at most ``zero_tol`` × their group's initial mean)."""
        from compresskit.plan.importance import removal_order

        masses, widths = self._masses(), self.widths_fn(self.model)
        init = {gid: torch.tensor(v, dtype=torch.float64) for gid, v in (self.initial or {}).items()}
        rem_now = rem_init = kept_now = kept_init = 0.0
        n_units = n_removed = n_low = 0
        for gid, mass in masses.items():
            m0 = init.get(gid, mass)
            drop = mass.numel() - widths.get(gid, mass.numel())
            order = removal_order(mass)
            out, keep = order[:drop], order[drop:]
            rem_now, rem_init = rem_now + float(mass[out].sum()), rem_init + float(m0[out].sum())
            kept_now, kept_init = kept_now + float(mass[keep].sum()), kept_init + float(m0[keep].sum())
            n_units, n_removed = n_units + mass.numel(), n_removed + drop
            mean0 = float(m0.mean()) if m0.numel() else 0.0
            n_low += int((mass[out] <= self.zero_tol * mean0).sum())
        return {"gone": 1.0 - rem_now / rem_init if rem_init > 0 else 1.0,
                "kept": kept_now / kept_init if kept_init > 0 else 1.0,
                "removed_fraction": n_removed / n_units if n_units else 0.0,
                "heading_to_zero": n_low / n_removed if n_removed else 1.0}

    def _apply(self, trainer: Trainer) -> None:
        for i in self.groups:
            trainer.optimizer.param_groups[i]["lambda_"] = self.lam

    def on_train_start(self, trainer: Trainer) -> None:
        if self.initial is None:
            self.initial = {gid: m.tolist() for gid, m in self._masses().items()}
            self.history.append({"step": 0, "lambda": self.lam, "schedule": 0.0, **self.measure()})
        self._apply(trainer)

    def on_step_end(self, trainer: Trainer) -> None:
        step = trainer.step
        if step % self.every and step != self.steps:
            return
        m = self.measure()
        want = (1.0 - self.zero_tol) * min(1.0, step / max(1.0, self.ramp * self.steps))
        record = {"step": step, "lambda": self.lam, "schedule": want, **m}
        if step < self.steps:
            if m["kept"] < self.kept_floor or m["gone"] > want + 0.05:
                self.lam /= self.growth
            elif m["gone"] < want:
                self.lam *= self.growth
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


class _ConfigSparsifier:
    """A :class:`Sparsifier` driven by its :class:`SparsifyConfig`: the config is the fingerprint, and
    ``steps == 0`` trains nothing; subclasses implement :meth:`_run` (``steps > 0``)."""

    def __init__(self, config: SparsifyConfig):
        self.config = config

    def fingerprint(self) -> dict[str, Any]:
        return self.config.fingerprint()

    def run(self, model: nn.Module, ctx: SparsifyContext) -> dict[str, Any]:
        if self.config.steps == 0:
            return {"steps": 0}
        if self.config.lr == "auto":
            raise ValueError("sparsify.lr='auto' is chosen by compress() (compresskit.autorecipe); a "
                             "sparsifier run on its own needs a number, e.g. SparsifyConfig(lr=3e-4)")
        return self._run(model, ctx)

    def _train(self, model: nn.Module, ctx: SparsifyContext, callbacks: list[Callback], scheduler: str,
               optimizer: Any = None) -> None:
        """``ck.train`` with the stage's settings over the run's (``scheduler``: the method's own, unless
        the config names one), the sparsifier's ``callbacks`` (the density among them) and ``optimizer``."""
        from compresskit.sparsify.progress import DensityProgress
        from compresskit.training.loop import train

        tcfg = self.config.train_config(ctx.train, scheduler=self.config.scheduler or scheduler)
        torch.manual_seed(tcfg.seed)
        train(model, ctx.train_loader, ctx.loss_fn, optimizer=optimizer, config=tcfg, inputs_fn=ctx.inputs_fn,
              out_dir=ctx.out_dir, resume=ctx.resume, stage="sparsify",
              callbacks=[DensityProgress(), *callbacks, *ctx.callbacks],
              val_loader=ctx.val_loader if tcfg.val_every is not None else None)

    def _run(self, model: nn.Module, ctx: SparsifyContext) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError


class OBProxSGSparsifier(_ConfigSparsifier):
    """The papers' sparsifier: ``ck.train`` with ``ck.OBProxSG`` (+ :class:`AutoLambda` for "auto")."""

    @property
    def uses_plan(self) -> bool:
        return self.config.lambda_ == "auto"

    def _run(self, model: nn.Module, ctx: SparsifyContext) -> dict[str, Any]:
        from compresskit.sparsify.obproxsg import OBProxSG, l1_param_groups

        cfg = self.config
        every = cfg.l1_on == "all"
        auto = cfg.lambda_ == "auto"
        groups = l1_param_groups(model, 0.0 if auto else float(cfg.lambda_), include_biases=every,
                                 include_norms=every)
        decayed = [i for i, g in enumerate(groups) if g["lambda_"] > 0 or (auto and i == 0)]
        callbacks: list[Callback] = []
        record: dict[str, Any] = {"steps": cfg.steps, "lr": cfg.lr}
        if auto:
            widths = ctx.widths_fn(model)
            sizes = {g.id: g.size for g in ctx.graph.prunable_groups}
            fraction = 1 - sum(widths.get(g, n) for g, n in sizes.items()) / max(1, sum(sizes.values()))
            lam0 = initial_lambda(groups[0]["params"], fraction, cfg.lr, cfg.steps)
            for i in decayed:
                groups[i]["lambda_"] = lam0
            calib = AutoLambda(model, ctx.graph, decayed, lambda0=lam0, widths_fn=ctx.widths_fn,
                               steps=cfg.steps, every=cfg.calibrate_every or max(1, cfg.steps // 10),
                               growth=cfg.growth, ramp=cfg.ramp, zero_tol=cfg.zero_tol,
                               kept_floor=cfg.kept_floor)
            callbacks.append(calib)
            record.update(lambda0=lam0, target_fraction=fraction)
        opt = OBProxSG(groups, lr=cfg.lr, lambda_=0.0 if auto else float(cfg.lambda_), eps=cfg.eps,
                       n_prox_steps=cfg.n_prox_steps, n_orthant_steps=cfg.n_orthant_steps)
        self._train(model, ctx, callbacks, scheduler="step", optimizer=opt)  # the papers' StepLR
        if auto:
            record.update(final_lambda=calib.lam, **calib.measure(), history=calib.history)
        else:
            record["lambda"] = float(cfg.lambda_)
        return record


class ProgressiveZeroing(Callback):
    """Drives the units the plan removes to exactly zero on a schedule while training goes on.

    In the spirit of HESSO (Chen et al. 2023): the target decides *how much* goes (by construction), the
    plan for the current weights decides *which* units (recomputed every ``every`` steps until the
    ramp ends), and their slices (producing rows, consuming columns, biases, norm parameters) are scaled
    so their size follows ``max(0, 1 − step / (ramp · steps))``; from then on they stay zero, and the
    other units, trained on the loss throughout, take over their work.
    """

    def __init__(self, model: nn.Module, graph: ChannelGraph, *,
                 widths_fn: Callable[[nn.Module], dict[int, int]], steps: int, every: int, ramp: float,
                 scores_fn: Callable[[nn.Module], dict[int, torch.Tensor]] | None = None):
        self.model, self.graph, self.widths_fn, self.scores_fn = model, graph, widths_fn, scores_fn
        self.steps, self.every, self.end = steps, every, max(1, round(ramp * steps))
        self.removed: dict[int, list[int]] = {}
        self.initial: dict[int, list[float]] | None = None
        self.history: list[dict[str, float]] = []

    def _choose(self) -> None:
        from compresskit.plan.importance import removal_order

        widths = self.widths_fn(self.model)
        scores = self.scores_fn(self.model) if self.scores_fn is not None else {}
        self.removed = {}
        for g in self.graph.prunable_groups:
            drop = g.size - widths.get(g.id, g.size)
            if drop > 0:
                rank = scores[g.id] if g.id in scores else unit_l1_mass(self.model, g)
                self.removed[g.id] = removal_order(rank)[:drop].tolist()

    def _scale(self, factor: float) -> None:
        with torch.no_grad():
            for gid, units in self.removed.items():
                group = self.graph.group(gid)
                chosen = torch.zeros(group.size, dtype=torch.bool)
                chosen[units] = True
                for m in group.members:
                    mod = self.model.get_submodule(m.module) if m.module else self.model
                    t = getattr(mod, m.tensor, None)
                    if not isinstance(t, nn.Parameter):
                        continue
                    idx = m.positions[chosen[m.units]].to(t.device)
                    if idx.numel():
                        t.index_copy_(m.dim, idx, t.index_select(m.dim, idx) * factor)

    def measure(self) -> dict[str, float]:
        """``gone``: fraction of the removed units' initial l1 mass that has gone; ``kept``: the other
        units' mass relative to their start; ``removed_fraction``: share of the prunable units removed."""
        rem_now = rem_init = kept_now = kept_init = 0.0
        n = n_removed = 0
        for g in self.graph.prunable_groups:
            mass = unit_l1_mass(self.model, g)
            m0 = torch.tensor(self.initial[g.id], dtype=torch.float64) if self.initial else mass
            out = torch.zeros(g.size, dtype=torch.bool)
            out[self.removed.get(g.id, [])] = True
            rem_now, rem_init = rem_now + float(mass[out].sum()), rem_init + float(m0[out].sum())
            kept_now, kept_init = kept_now + float(mass[~out].sum()), kept_init + float(m0[~out].sum())
            n, n_removed = n + g.size, n_removed + int(out.sum())
        return {"gone": 1.0 - rem_now / rem_init if rem_init > 0 else 1.0,
                "kept": kept_now / kept_init if kept_init > 0 else 1.0,
                "removed_fraction": n_removed / n if n else 0.0}

    def on_train_start(self, trainer: Trainer) -> None:
        if self.initial is None:
            self.initial = {g.id: unit_l1_mass(self.model, g).tolist() for g in self.graph.prunable_groups}
            self._choose()
            self.history.append({"step": 0, **self.measure()})

    def on_step_end(self, trainer: Trainer) -> None:
        step = trainer.step
        if step < self.end and step % self.every == 0:
            self._choose()  # the units least worth keeping now (the schedule below scales whatever is chosen)
        before, now = (max(0.0, 1.0 - (k / self.end)) for k in (step - 1, step))
        self._scale(now / before if before > 0 else 0.0)
        if step % self.every == 0 or step == self.steps:
            self.history.append({"step": step, "schedule": 1.0 - now, **self.measure()})

    def rescale_steps(self, new: int, old: int) -> None:
        """The stage was shortened to ``new`` steps (``training.pacing.Pace``): the ramp ends as much
        earlier; the units go on shrinking from where they are, at the new pace."""
        self.end = max(1, round(self.end * new / old))
        self.steps = new

    def state_dict(self) -> dict[str, Any]:
        return {"removed": {str(k): v for k, v in self.removed.items()}, "history": list(self.history),
                "initial": None if self.initial is None else {str(k): v for k, v in self.initial.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.removed = {int(k): list(v) for k, v in state["removed"].items()}
        self.history = list(state["history"])
        self.initial = None if state["initial"] is None else {int(k): v for k, v in state["initial"].items()}


class ProgressiveSparsifier(_ConfigSparsifier):
    """Target-sparsity training (HESSO-like): ``ck.train`` with the default optimizer (Adamax) and
    :class:`ProgressiveZeroing`; no λ at all."""

    def _run(self, model: nn.Module, ctx: SparsifyContext) -> dict[str, Any]:
        cfg = self.config
        zeroing = ProgressiveZeroing(model, ctx.graph, widths_fn=ctx.widths_fn, steps=cfg.steps,
                                     every=cfg.calibrate_every or max(1, cfg.steps // 10), ramp=cfg.ramp,
                                     scores_fn=ctx.scores_fn)
        self._train(model, ctx, [zeroing], scheduler="none")
        return {"method": "progressive", "steps": cfg.steps, "lr": cfg.lr, **zeroing.measure(),
                "history": zeroing.history}


#: name -> factory ``(config: SparsifyConfig) -> Sparsifier``
SPARSIFIERS: Registry[Callable[..., Any]] = Registry("sparsifier")


def register_sparsifier(name: str, factory: Callable[..., Any] | None = None, *,
                        replace: bool = False) -> Any:
    """Register a sparsifier under ``name``: ``@register_sparsifier("name")`` on a class or function
    ``(config: SparsifyConfig) -> Sparsifier``; ``SparsifyConfig(method="name")`` then selects it."""
    decorator = SPARSIFIERS.decorator("register_sparsifier", name, "a factory (config) -> Sparsifier",
                                      replace=replace)
    return decorator if factory is None else decorator(factory)


register_sparsifier("obproxsg", OBProxSGSparsifier)
register_sparsifier("progressive", ProgressiveSparsifier)


def get_sparsifier(config: SparsifyConfig) -> Sparsifier:
    """The sparsifier ``config.method`` names (``"progressive"``, ``"obproxsg"`` or a registered name),
    built from ``config``; a Sparsifier object given as ``method`` is returned as is."""
    method = config.method
    if not isinstance(method, str):
        return method  # an object (checked by SparsifyConfig)
    factory = SPARSIFIERS.find(method)
    if factory is None:
        raise ValueError(f"sparsify.method: unknown sparsifier {method!r}; registered: "
                         f"{', '.join(map(repr, SPARSIFIERS.names()))} (ck.register_sparsifier adds one)")
    return factory(config)


def uses_plan(sparsifier: Any) -> bool:
    """Whether a sparsifier steers by the target's plan (its ``uses_plan``, default True)."""
    return bool(getattr(sparsifier, "uses_plan", True))
