"""Knowledge distillation on the training loop: ``L = α·L_student(S, GT) + L_distill(S, T)`` (+ terms).

ST-MFNet Mini's objective is the default: α = 0.1 and the Laplacian pyramid loss for both terms. The
objective is a list of terms: :class:`OutputLoss` (the student's output against the teacher's output or
the ground truth, any registered loss or callable, adversarial ones included) and :class:`FeatureLoss`
(an intermediate student feature, through a learned 1×1 adapter, against a teacher feature).

The teacher is frozen for the whole run: eval mode (its BatchNorm statistics never move), every
parameter ``requires_grad=False``, forwards under ``torch.no_grad``, and none of its parameters is in the
optimizer. Its mode and flags are restored afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader

from compresskit._modes import eval_mode
from compresskit.adversarial import AdversarialLoss
from compresskit.config import DistillConfig, FeaturePair
from compresskit.distillation.cache import build_cache, cached_loader, split_cached
from compresskit.distillation.features import (
    FeatureHooks,
    StudentWithAdapters,
    auto_feature_pairs,
    fit_adapter_,
    get_submodule,
    make_adapter,
)
from compresskit.distillation.leaves import leafwise
from compresskit.losses import get_loss
from compresskit.training.batch import to_device
from compresskit.training.distributed import barrier, broadcast_module, setup
from compresskit.training.loop import Callback, Trainer, TrainResult, default_inputs


@dataclass
class OutputLoss:
    """``weight · loss(student output, reference)``; reference is the teacher's output (``"teacher"``),
    the target ``batch[-1]`` (``"target"``), or the whole batch (``"batch"``: a ``loss_fn(output, batch)``
    of the training loop used as the ground-truth term)."""

    loss: str | Callable[[Any, Any], torch.Tensor]
    weight: float = 1.0
    against: Literal["teacher", "target", "batch"] = "teacher"
    kwargs: dict[str, Any] = field(default_factory=dict)
    name: str | None = None


@dataclass
class FeatureLoss:
    """``weight · loss(adapter(student feature at path), teacher feature at path)``."""

    student: str
    teacher: str
    loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "mse"
    weight: float = 1.0
    name: str | None = None
    #: divide ``weight`` by the teacher feature's mean square on the first batch (``features="auto"``),
    #: so pairs of different magnitudes weigh alike
    normalize: bool = False


Term = OutputLoss | FeatureLoss


def default_terms(config: DistillConfig) -> list[Term]:
    """The config's objective: α·student_loss(S, GT) + distill_loss(S, T) + Σ feature pairs."""
    terms: list[Term] = [
        OutputLoss(config.student_loss, config.alpha, "target", dict(config.loss_kwargs), "student"),
        OutputLoss(config.distill_loss, 1.0, "teacher", dict(config.loss_kwargs), "distill"),
    ]
    if config.features == "auto":
        return terms  # the pairs need both models: see Distiller / auto_terms
    pairs = [f if isinstance(f, FeaturePair) else FeaturePair.model_validate(f) for f in config.features]
    terms += [FeatureLoss(f.student, f.teacher, f.loss, f.weight) for f in pairs]
    return terms


def auto_terms(student: nn.Module, teacher: nn.Module, weight: float = 1.0) -> list[FeatureLoss]:
    """``features="auto"``: one MSE term per path of :func:`auto_feature_pairs`, each normalised by its
    teacher feature's mean square, sharing ``weight`` equally:
    ``weight/n · Σ_l ‖A_l(S_l) − T_l‖² / mean(T_l²)``."""
    paths = auto_feature_pairs(student, teacher)
    if not paths:
        warnings.warn("features='auto': student and teacher share no conv/linear module names, so no "
                      "feature pairs were found; distilling the outputs only", stacklevel=3)
        return []
    return [FeatureLoss(p, p, "mse", weight / len(paths), normalize=True) for p in paths]


@contextlib.contextmanager
def frozen(teacher: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` inside; the teacher's own mode and flags restored after."""
    flags = {p: p.requires_grad for p in teacher.parameters()}
    teacher.requires_grad_(False)
    try:
        with eval_mode(teacher):
            yield teacher
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)


class _AdversarialSteps(Callback):
    """Runs each adversarial loss's discriminator step after the student's step; checkpoints them."""

    def __init__(self, losses: list[AdversarialLoss]):
        self.losses = losses

    def on_train_start(self, trainer: Trainer) -> None:
        for loss in self.losses:
            loss.to(trainer.device)
            broadcast_module(loss.discriminator, trainer.ctx)  # every rank starts from rank 0's

    def on_step_end(self, trainer: Trainer) -> None:
        for i, loss in enumerate(self.losses):
            trainer.log(f"discriminator{i}", loss.discriminator_step(trainer.ctx))

    def state_dict(self) -> dict[str, Any]:
        return {"losses": [loss.train_state() for loss in self.losses]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for loss, s in zip(self.losses, state["losses"]):
            loss.load_train_state(s)


class EarlyStopping(Callback):
    """Stop after ``patience`` validations in a row without improving ``config.monitor`` (in
    ``config.mode``), then restore the weights of the best validation (kept in memory, so it works
    without an out_dir). Its state (count, best weights, whether it stopped) is in the checkpoints, so a
    resumed run stops where the original did."""

    def __init__(self, patience: int):
        if patience < 1:
            raise ValueError(f"patience: expected an int >= 1, got {patience}")
        self.patience = patience
        self.bad = 0
        self.stopped_at: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_step: int | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        if self.stopped_at is not None:
            trainer.should_stop = True

    def on_validation_end(self, trainer: Trainer, values: dict[str, float]) -> None:
        if trainer.best_step == trainer.step and self.best_step != trainer.step:
            self.bad, self.best_step = 0, trainer.step
            state = trainer.model.state_dict()
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
        else:
            self.bad += 1
            if self.bad >= self.patience:
                self.stopped_at = trainer.step
                trainer.should_stop = True
                trainer.log("early_stop", float(trainer.step))

    def on_train_end(self, trainer: Trainer) -> None:
        if self.best_state is not None:
            trainer.model.load_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        return {"bad": self.bad, "stopped_at": self.stopped_at, "best_state": self.best_state,
                "best_step": self.best_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bad, self.stopped_at = state["bad"], state["stopped_at"]
        self.best_state, self.best_step = state["best_state"], state["best_step"]


class _TeacherToDevice(Callback):
    def __init__(self, distiller: Distiller):
        self.distiller = distiller

    def on_train_start(self, trainer: Trainer) -> None:
        self.distiller.teacher.to(trainer.device)
        for fn in self.distiller._fns:
            if isinstance(fn, nn.Module):
                fn.to(trainer.device)


class Distiller:
    """Distil ``teacher`` into ``student``; ``Distiller(...).fit() -> TrainResult`` (``result.model`` is the
    student, ``result.extras["adapters"]`` the feature adapters)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, train_loader: Iterable[Any], *,
                 config: DistillConfig | None = None, losses: Sequence[Term | str] | None = None,
                 optimizer: Any = None, scheduler: Any = None, val_loader: Iterable[Any] | None = None,
                 metrics: Mapping[str, Callable[[Any, Any], Any]] | None = None,
                 inputs_fn: Callable[[Any], Sequence[Any]] | None = None,
                 out_dir: str | os.PathLike | None = None, resume: bool = True,
                 callbacks: Sequence[Callback] = ()):
        if not isinstance(student, nn.Module) or not isinstance(teacher, nn.Module):
            raise TypeError(f"student and teacher must be nn.Modules, got {type(student).__name__} and "
                            f"{type(teacher).__name__}")
        if student is teacher:
            raise ValueError("student and teacher are the same module; distil into a separate (smaller) copy")
        shared = {id(p) for p in student.parameters()} & {id(p) for p in teacher.parameters()}
        if shared:
            raise ValueError(f"student and teacher share {len(shared)} parameter tensors; the teacher must "
                             "stay fixed, so give the student its own copy (copy.deepcopy)")
        config = config if config is not None else DistillConfig()
        if not isinstance(config, DistillConfig):
            raise TypeError(f"config must be a compresskit DistillConfig, got {type(config).__name__}")
        self.student, self.teacher, self.config = student, teacher, config
        self.train_loader, self.val_loader = train_loader, val_loader
        self.optimizer, self.scheduler, self.metrics = optimizer, scheduler, metrics
        self.inputs_fn = inputs_fn or default_inputs
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.resume, self.callbacks = resume, list(callbacks)
        self.terms = _normalise_terms(losses, config)
        if config.features == "auto":  # extra terms, also next to explicit losses=
            self.terms += auto_terms(student, teacher, config.feature_weight)
        if config.early_stop_patience is not None and val_loader is None:
            raise ValueError(f"config.early_stop_patience={config.early_stop_patience} needs a val_loader "
                             "(a held-out split to watch); pass val_loader= or leave it None")
        self._fns = [get_loss(t.loss, **getattr(t, "kwargs", {})) for t in self.terms]

    # -------------------------------------------------------------- set-up
    def _probe(self, feature_terms: list[FeatureLoss], student_hooks: FeatureHooks,
               teacher_hooks: FeatureHooks) -> dict[str, nn.Module]:
        """One forward of both models on the first batch to read feature widths; builds the adapters.

        The batch is drawn under the config's seed (a forked RNG): a shuffled loader gives the same probe
        batch, hence the same adapters and term weights, in a resumed run as in the uninterrupted one, and
        the global RNG is left as it was."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            batch, _ = split_cached(next(iter(self.train_loader)))
        device = next(self.student.parameters()).device
        batch = to_device(batch, device)
        was = self.student.training
        self.student.eval()  # no BatchNorm statistics move during the probe
        try:
            with torch.no_grad():
                self.student(*self.inputs_fn(batch))
                self.teacher.to(device)(*self.inputs_fn(batch))
        finally:
            self.student.train(was)
        s_feats, t_feats = student_hooks.pop(), teacher_hooks.pop()
        self._drop_unrun(feature_terms, s_feats, t_feats)
        adapters: dict[str, nn.Module] = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)  # the same adapters in every run of this config
            for term in feature_terms:
                s, t = s_feats[term.student], t_feats[term.teacher]
                if term.student not in adapters:
                    adapters[term.student] = fit_adapter_(
                        make_adapter(s, t, f"{term.student!r} -> {term.teacher!r}").to(s.device), s, t)
                if term.normalize:
                    term.weight /= max(float(t.double().pow(2).mean()), 1e-12)
                    term.normalize = False  # once, even if fit() runs again
        return adapters

    def _drop_unrun(self, feature_terms: list[FeatureLoss], s_feats: dict[str, Any],
                    t_feats: dict[str, Any]) -> None:
        """Feature terms at modules ``forward`` never runs (a training-only branch) have nothing to compare:
        ``features="auto"`` pairs by name, so it drops them with a warning; an explicit pair is an error."""
        unrun = [t for t in feature_terms if t.student not in s_feats or t.teacher not in t_feats]
        if not unrun:
            return
        explicit = [t for t in unrun if not t.normalize]  # auto terms are normalised on this probe
        if explicit:
            t = explicit[0]
            where = t.student if t.student not in s_feats else t.teacher
            raise ValueError(f"feature pair {t.student!r} -> {t.teacher!r}: forward() never runs {where!r} "
                             "on the first batch, so there is no feature to distil; pair modules that "
                             "forward() uses")
        warnings.warn("features='auto': " + ", ".join(repr(t.student) for t in unrun) + " never run in "
                      "forward(); their feature terms are dropped", stacklevel=4)
        keep = [i for i, t in enumerate(self.terms) if not any(t is u for u in unrun)]
        self.terms = [self.terms[i] for i in keep]
        self._fns = [self._fns[i] for i in keep]
        for t in unrun:
            feature_terms.remove(t)

    def fit(self) -> TrainResult:
        cfg = self.config
        feature_terms = [t for t in self.terms if isinstance(t, FeatureLoss)]
        for t in feature_terms:
            get_submodule(self.student, t.student, "student")
        with frozen(self.teacher):
            teacher_hooks = FeatureHooks(self.teacher, [t.teacher for t in feature_terms], "teacher")
            adapters: dict[str, nn.Module] = {}
            if feature_terms:
                probe_hooks = FeatureHooks(self.student, [t.student for t in feature_terms], "student")
                try:
                    adapters = self._probe(feature_terms, probe_hooks, teacher_hooks)
                finally:
                    probe_hooks.remove()
            model = StudentWithAdapters(self.student, adapters)
            train_loader = self.train_loader
            if cfg.cache_teacher:
                train_loader = self._cached_loader(teacher_hooks, [t.teacher for t in feature_terms])
            optimizer = self.optimizer
            if isinstance(optimizer, torch.optim.Optimizer):
                mine = {id(p) for g in optimizer.param_groups for p in g["params"]}
                extra = [p for p in model.adapters.parameters() if id(p) not in mine]
                if extra:
                    optimizer.add_param_group({"params": extra})
            adversarial = [fn for fn in self._fns if isinstance(fn, AdversarialLoss)]
            callbacks = [_TeacherToDevice(self), *self.callbacks]
            if cfg.early_stop_patience is not None:
                callbacks.append(EarlyStopping(cfg.early_stop_patience))
            if adversarial:
                callbacks.append(_AdversarialSteps(adversarial))
            trainer = Trainer(model, train_loader, self._loss_fn(model, teacher_hooks), optimizer=optimizer,
                              scheduler=self.scheduler, config=cfg, val_loader=self.val_loader,
                              metrics=self.metrics, inputs_fn=lambda b: self.inputs_fn(split_cached(b)[0]),
                              out_dir=self.out_dir, resume=self.resume, callbacks=callbacks, stage="distill")
            try:
                result = trainer.fit()
            finally:
                teacher_hooks.remove()
                if model._hooks is not None:
                    model._hooks.remove()
        return dataclasses.replace(result, model=self.student,
                                   extras={"adapters": dict(zip(model.paths, model.adapters))})

    def _cached_loader(self, teacher_hooks: FeatureHooks, paths: list[str]) -> DataLoader:
        if not isinstance(self.train_loader, DataLoader):
            raise TypeError("cache_teacher=True needs train_loader to be a torch DataLoader")
        cache_dir = self.config.cache_dir or (self.out_dir / "cache" if self.out_dir is not None else None)
        if cache_dir is None:
            raise ValueError("cache_teacher=True needs config.cache_dir or out_dir to store teacher outputs")
        ctx = setup(self.config.backend)
        device = next(self.teacher.parameters(), torch.zeros(())).device
        if ctx.is_main:
            cache = build_cache(self.teacher, self.train_loader, inputs_fn=self.inputs_fn,
                                feature_hooks=teacher_hooks, cache_dir=cache_dir, device=device,
                                feature_paths=paths)
        barrier(ctx)
        if not ctx.is_main:
            cache = build_cache(self.teacher, self.train_loader, inputs_fn=self.inputs_fn,
                                feature_hooks=teacher_hooks, cache_dir=cache_dir, device=device,
                                feature_paths=paths)
        return cached_loader(self.train_loader, cache)

    # -------------------------------------------------------------- the objective
    def _loss_fn(self, model: StudentWithAdapters, teacher_hooks: FeatureHooks):
        names = _term_names(self.terms)

        def loss_fn(output: Any, batch: Any) -> dict[str, torch.Tensor]:
            batch, cached = split_cached(batch)
            if cached is not None:
                t_out, t_feats = cached["output"], cached["features"]
            else:
                with torch.no_grad():
                    t_out = self.teacher(*self.inputs_fn(batch))
                t_feats = teacher_hooks.pop()
            target = batch[-1] if isinstance(batch, (tuple, list)) else None  # dict batches: no "target"
            parts: dict[str, torch.Tensor] = {}
            total: torch.Tensor | None = None
            for name, term, fn in zip(names, self.terms, self._fns):
                if isinstance(term, OutputLoss):
                    reference = {"teacher": t_out, "target": target, "batch": batch}[term.against]
                    nested = term.against != "batch"  # a dict / tuple output: leaf by leaf
                    value = leafwise(fn, output, reference) if nested else fn(output, reference)
                else:
                    value = fn(model.adapted[term.student], t_feats[term.teacher])
                value = term.weight * value
                parts[name] = value.detach()
                total = value if total is None else total + value
            return {"loss": total, **parts}

        return loss_fn


def distill(student: nn.Module, teacher: nn.Module, train_loader: Iterable[Any], *,
            config: DistillConfig | None = None, losses: Sequence[Term | str] | None = None,
            optimizer: Any = None, scheduler: Any = None, val_loader: Iterable[Any] | None = None,
            metrics: Mapping[str, Callable[[Any, Any], Any]] | None = None,
            inputs_fn: Callable[[Any], Sequence[Any]] | None = None, out_dir: str | os.PathLike | None = None,
            resume: bool = True, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Train ``student`` to match ``teacher`` (and the ground truth); see :class:`Distiller`.

    ``losses=None`` takes the objective from ``config`` (α·L_student(S, GT) + L_distill(S, T) + feature
    pairs); otherwise a list of :class:`OutputLoss` / :class:`FeatureLoss` terms, where a bare name or
    callable means ``OutputLoss(it, against="teacher")``.
    """
    return Distiller(student, teacher, train_loader, config=config, losses=losses, optimizer=optimizer,
                     scheduler=scheduler, val_loader=val_loader, metrics=metrics, inputs_fn=inputs_fn,
                     out_dir=out_dir, resume=resume, callbacks=callbacks).fit()


def _normalise_terms(losses: Sequence[Term | str] | None, config: DistillConfig) -> list[Term]:
    if losses is None:
        return default_terms(config)
    if isinstance(losses, (str, OutputLoss, FeatureLoss)) or callable(losses):
        losses = [losses]
    terms: list[Term] = []
    for item in losses:
        if isinstance(item, (OutputLoss, FeatureLoss)):
            terms.append(item)
        elif isinstance(item, str) or callable(item):
            terms.append(OutputLoss(item))
        else:
            raise TypeError("losses must be a list of OutputLoss / FeatureLoss terms, loss names or "
                            "callables, "
                            f"got {type(item).__name__}")
    if not terms:
        raise ValueError("losses is empty: give at least one term")
    for t in terms:
        if isinstance(t, OutputLoss) and t.against not in ("teacher", "target", "batch"):
            raise ValueError(f"OutputLoss.against must be 'teacher', 'target' or 'batch', got {t.against!r}")
    return terms


def _term_names(terms: list[Term]) -> list[str]:
    names = []
    for i, t in enumerate(terms):
        if t.name:
            name = t.name
        elif isinstance(t, FeatureLoss):
            name = f"feature:{t.student}"
        else:
            label = t.loss if isinstance(t.loss, str) else getattr(t.loss, "__name__", type(t.loss).__name__)
            name = f"{label}:{t.against}"
        names.append(name if name not in names else f"{name}#{i}")
    return names
