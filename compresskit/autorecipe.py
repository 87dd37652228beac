"""What each training stage of :func:`compresskit.compress` gets: steps, learning rate and validation.

With a budget (``budget=`` or the default, :data:`compresskit.budget.DEFAULT_BUDGET`):

* **steps** – a step or epoch budget is split ``STAGE1_SHARE : 1 − STAGE1_SHARE`` between stage I and
  recovery (steps stage I leaves unused, when it stops early, go to recovery). A time budget: stage I
  gets ``STAGE1_SHARE`` of the steps that fit in the time left (less what the final report, the
  recovery probe and the validations need), from its measured step time and an estimate of a recovery
  step (the teacher's forward plus the full step divided by the target ratio); recovery then gets every
  second left when it starts, divided by its own measured step time. Each stage also ends at its
  deadline (:class:`~compresskit.training.pacing.Deadline`).
* **learning rate** – ``lr="auto"`` (the default) runs :func:`~compresskit.training.lr_probe.calibrate_lr`
  on the stage's own objective: the rate at which the first steps move the weights by the stage's
  update-to-weight ratio (:data:`~compresskit.training.lr_probe.STAGE1_RATIO`, ``RECOVER_RATIO``).
* **validation** – on the held-out batches (:func:`~compresskit.training.validation.hold_out`) or the
  user's ``val_loader``, ``VALIDATIONS`` times per stage (fewer when that would take more than
  ``VALIDATION_SHARE`` of a time budget's stage); :class:`~compresskit.training.validation.BestWeights`
  returns the best weights (stage I: the best after its zeroing ramp, when the removed units are zero)
  and stops a stage after ``PATIENCE`` validations without improvement (recovery: not in its first half,
  and only on validations ``RECOVER_STOP_MARGIN`` worse than its best).

Without a budget (steps given in the config) only ``lr="auto"`` is resolved; the rest is as configured.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compresskit._modes import eval_mode
from compresskit.budget import STAGE1_SHARE, VALIDATION_SHARE, VALIDATIONS, split_steps
from compresskit.training.batch import to_device
from compresskit.training.loop import build_optimizer
from compresskit.training.lr_probe import PROBE_STEPS, RECOVER_RATIO, STAGE1_RATIO, calibrate_lr
from compresskit.training.pacing import Deadline, Pace
from compresskit.training.validation import BestWeights

__all__ = ["StagePlan", "plan_sparsify", "plan_recover", "PATIENCE"]

#: validations without improvement before a stage stops early
PATIENCE = 5
#: recovery stops early only on validations this much (relative) worse than its best: with the plain
#: "not better" rule it stopped at the first moment allowed (half-way) in every budget run measured, the
#: demo's at step 580 of 1,175 while its held-out loss still fell (0.3 % above the best at the stop, the
#: validations scattering by ±1 %), so half the budget went unused
RECOVER_STOP_MARGIN = 0.01
#: batches the learning-rate probe trains on
PROBE_BATCHES = 4


@dataclass
class StagePlan:
    """Resolved settings of one training stage."""

    steps: int
    lr: float
    callbacks: list[Any] = field(default_factory=list)
    val_loader: Any = None
    val_every: int | None = None
    best: BestWeights | None = None
    deadline: Deadline | None = None
    pace: Pace | None = None
    record: dict[str, Any] = field(default_factory=dict)

    def steps_done(self) -> int:
        stops = [c.stopped_at for c in (self.best, self.deadline, self.pace)
                 if c is not None and c.stopped_at is not None]
        return min(stops) if stops else self.steps


def _first(loader: Any, n: int) -> list[Any]:
    return list(itertools.islice(iter(loader), n))


def val_batches(state: Any) -> tuple[list[Any], str]:
    """The batches validation and the probes score on, and what they are."""
    if state.inputs.holdout is not None:
        return state.inputs.holdout.val_batches, "held-out"
    if state.inputs.val_loader is not None:
        return _first(state.inputs.val_loader, 8), "val_loader"
    return _first(state.inputs.train_loader, 2), "training"  # no held-out data: the probe scores training


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters(), torch.zeros(())).device


def _mean(model: nn.Module, batches: list[Any], fn: Callable[[nn.Module, Any], torch.Tensor]) -> float:
    with eval_mode(model), torch.no_grad():
        values = [float(fn(model, b)) for b in batches]
    return sum(values) / len(values)


def _task(state: Any) -> Callable[[nn.Module, Any], torch.Tensor]:
    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        batch = to_device(batch, _device(model))
        return state.inputs.loss_fn(model(*state.inputs.inputs_fn(batch)), batch)

    return loss


def _ratio(state: Any) -> float:
    ratio = getattr(state.inputs.target, "ratio", None)
    return float(ratio) if isinstance(ratio, (int, float)) and ratio > 1 else 2.0


def _teacher(state: Any) -> nn.Module | None:
    if state.inputs.teacher is not None:
        return state.inputs.teacher
    return state.inputs.model if state.inputs.config.recover.teacher == "original" else None


def _teacher_seconds(state: Any, teacher: nn.Module | None, batch: Any) -> float:
    """Seconds of one teacher forward on ``batch`` (0 without a teacher)."""
    if teacher is None:
        return 0.0
    clock = state.inputs.budget.clock
    batch = to_device(batch, _device(teacher))
    with eval_mode(teacher), torch.no_grad():
        t = clock()
        teacher(*state.inputs.inputs_fn(batch))
        return clock() - t


def _total_steps(inputs: Any) -> int:
    """The steps of a step or epoch budget (``inputs``: the run's inputs: ``budget``, ``train_loader``)."""
    b = inputs.budget.budget
    if b.unit == "steps":
        return int(b.amount)
    try:
        per_epoch = len(inputs.train_loader)
    except TypeError:
        raise ValueError(f"budget: {b} needs a train_loader with len(); give a number of steps or a "
                         "time instead") from None
    return int(b.amount) * per_epoch


def validations(seconds: float, each: float) -> int:
    """How many validations of ``each`` seconds fit in ``seconds`` (1 to ``VALIDATIONS``)."""
    if not each > 0:
        return VALIDATIONS
    return int(min(VALIDATIONS, max(1, seconds // each)))


def plan_sparsify(state: Any) -> StagePlan | None:
    """Stage I's steps, learning rate and validation (None: nothing to resolve, run the config as is)."""
    cfg, tracker = state.inputs.config.sparsify, state.inputs.budget
    if tracker is None and (cfg.steps == 0 or cfg.lr != "auto"):
        return None
    probe_batches = _first(state.inputs.train_loader, PROBE_BATCHES)
    val, val_what = val_batches(state)
    task = _task(state)
    record: dict[str, Any] = {}
    clock = tracker.clock if tracker is not None else None
    kw = {"clock": clock} if clock is not None else {}
    lr = cfg.lr
    sgd = cfg.method == "obproxsg"  # an SGD-type step (no per-weight normalisation): probed with SGD
    # probed with the optimizer the stage trains with
    kw["optimizer"] = ((lambda ps, lr: torch.optim.SGD(ps, lr=lr)) if sgd
                       else (lambda ps, lr: build_optimizer(ps, cfg, lr)))
    probe = calibrate_lr(state.art.work, probe_batches, task, target_ratio=STAGE1_RATIO,
                         trial_lr=1e-2 if sgd else 1e-3, val_fn=lambda m: _mean(m, val, task),
                         seed=state.inputs.config.seed, **kw)
    if lr == "auto":
        lr = probe.lr
        record["lr_probe"] = {**probe.to_dict(), "scored_on": val_what}
    record["lr"] = lr
    if tracker is None:
        return StagePlan(steps=cfg.steps, lr=lr, record=record)
    teacher = _teacher(state)
    deadline = pace = None
    if tracker.budget.is_time:
        t1, t_val1 = probe.step_seconds, probe.eval_seconds
        ratio = _ratio(state)
        t_teach = _teacher_seconds(state, teacher, probe_batches[0])
        t2 = t_teach + t1 / ratio
        reserve = tracker.stage_seconds().get("trace", 0.0)  # plan, shrink and the final report
        probe2 = PROBE_STEPS * (t1 / ratio) + t_val1 / ratio + PROBE_BATCHES * t_teach
        avail = tracker.left() - reserve - probe2
        per = STAGE1_SHARE * t1 + (1 - STAGE1_SHARE) * t2
        total = (1 - VALIDATION_SHARE) * avail / per
        steps = max(1, int(STAGE1_SHARE * total))
        share1 = STAGE1_SHARE * t1 / per  # stage I's part of the training time
        n_val = validations(VALIDATION_SHARE * avail * share1, t_val1)
        if total < 2:
            state.art.notes.append(f"budget {tracker.budget} is too small: measured {t1:.3g} s per stage-I "
                               f"step and {t2:.3g} s per recovery step (estimated) leave "
                               f"{max(avail, 0):.0f} s for training; running one step per stage (give a "
                               "larger budget)")
        planned = steps * t1 + (n_val + 1) * t_val1
        # the real loop's pace shortens the stage if it is slower than the probe's
        pace = Pace(tracker, tracker.now() + planned, steps,
                    extra_per_step=t_val1 * (n_val + 1) / max(steps, 1))
        deadline = Deadline(tracker, tracker.now() + 1.15 * planned)  # recovery absorbs the rest
        record.update(step_seconds=t1, recover_step_seconds_estimate=t2, teacher_forward_seconds=t_teach,
                      validation_seconds=t_val1, reserved_for_report_s=reserve, planned_seconds=planned)
    else:
        steps, planned2 = split_steps(_total_steps(state.inputs))
        tracker.record["planned_steps"] = [steps, planned2]
        n_val = VALIDATIONS
    plan = _stage_plan(steps, lr, record, deadline, pace, val, val_what, n_val)
    if val_what != "training" and cfg.method == "progressive":
        # its weights are worth keeping once the removed units are zero
        ramp_end = max(1, round(cfg.ramp * steps))
        plan.best = BestWeights("val_loss", patience=PATIENCE, after_step=ramp_end)
        plan.callbacks.append(plan.best)
    return plan


def _stage_plan(steps: int, lr: float, record: dict[str, Any], deadline: Any, pace: Any, val: Any,
                val_what: str, n_val: int) -> StagePlan:
    """What both stages' plans share: the steps, the time keepers (pace, deadline) as callbacks, and
    validation every ``steps // n_val`` steps on ``val`` unless it is the training data itself."""
    plan = StagePlan(steps=steps, lr=lr, record=record, deadline=deadline)
    if deadline is not None:
        plan.pace = pace
        plan.callbacks += [pace, deadline]
    if val_what != "training":
        plan.val_loader, plan.val_every = val, max(1, steps // n_val)
        record["validation"] = f"{len(val)} {val_what} batches every {plan.val_every} steps"
    record["steps"] = steps
    return plan


def keep_record(state: Any, stage: str, record: dict[str, Any]) -> None:
    """Where the report finds a stage's record: the budget's, or (no budget, only the learning rate
    resolved) ``state.art.records["learning_rates"]``."""
    if state.inputs.budget is not None:
        state.inputs.budget.record[stage] = record
    else:
        state.art.records.setdefault("learning_rates", {})[stage] = record


def _finish(state: Any, plan: StagePlan, stage: str) -> dict[str, Any]:
    rec = dict(plan.record)
    rec["steps_done"] = plan.steps_done()
    if plan.pace is not None and plan.pace.record:
        rec["pace"] = plan.pace.record
    if plan.best is not None:
        rec["best"] = plan.best.summary(rec["steps_done"])
    keep_record(state, stage, rec)
    return rec


def finish_sparsify(state: Any, plan: StagePlan) -> dict[str, Any]:
    """Stage I's record (steps done, learning rate and why, validations, which weights were returned)."""
    return _finish(state, plan, "sparsify")


def plan_recover(state: Any, teacher: nn.Module | None) -> StagePlan | None:
    """Recovery's steps, learning rate and validation (None: run the config as is)."""
    rc, tracker = state.inputs.config.recover, state.inputs.budget
    if tracker is None and (rc.steps == 0 or rc.lr != "auto"):
        return None
    small = state.art.small
    probe_batches = _first(state.inputs.train_loader, PROBE_BATCHES)
    val, val_what = val_batches(state)
    task = _task(state)
    record: dict[str, Any] = {}
    kw = {"clock": tracker.clock} if tracker is not None else {}
    t_teach = 0.0
    pairs: list[tuple[Any, Any]] = []
    dev = _device(small)
    clock = tracker.clock if tracker is not None else None
    for b in probe_batches:
        b = to_device(b, dev)
        if teacher is None:
            pairs.append((b, None))
            continue
        with eval_mode(teacher), torch.no_grad():
            t = clock() if clock else 0.0
            out = teacher(*state.inputs.inputs_fn(b))
            t_teach = max(t_teach, clock() - t) if clock else 0.0
        pairs.append((b, out))
    from compresskit.distillation.leaves import leafwise
    from compresskit.losses import get_loss

    distill_fn = get_loss(rc.distill_loss)

    def objective(model: nn.Module, pair: tuple[Any, Any]) -> torch.Tensor:
        batch, t_out = pair
        out = model(*state.inputs.inputs_fn(batch))
        if t_out is None:
            return state.inputs.loss_fn(out, batch)
        return rc.alpha * state.inputs.loss_fn(out, batch) + leafwise(distill_fn, out, t_out)  # nested too

    lr = rc.lr
    probe = calibrate_lr(small, pairs, objective, target_ratio=RECOVER_RATIO, trial_lr=1e-3,
                         val_fn=lambda m: _mean(m, val, task), seed=state.inputs.config.seed,
                         optimizer=lambda ps, lr: build_optimizer(ps, rc, lr), **kw)
    if lr == "auto":
        lr = probe.lr
        record["lr_probe"] = {**probe.to_dict(), "scored_on": val_what,
                              "objective": f"{rc.alpha}·loss(S, batch) + {rc.distill_loss}(S, T)"
                              if teacher is not None else "loss(S, batch)"}
    record["lr"] = lr
    if tracker is None:
        return StagePlan(steps=rc.steps, lr=lr, record=record)
    deadline = pace = None
    if tracker.budget.is_time:
        # the probe's step with the teacher's forward added; a real step also runs the feature terms:
        # when that makes it slower, the deadline ends the run in the cosine's tail (lr near 0), harmlessly
        t2 = probe.step_seconds + t_teach
        t_val2 = probe.eval_seconds + t_teach * len(val)
        reserve = tracker.stage_seconds().get("trace", 0.0)
        end = tracker.deadline - reserve
        left = end - tracker.now()
        n_val = validations(VALIDATION_SHARE * left, t_val2)
        steps = max(1, int((left - (n_val + 1) * t_val2) / t2))
        deadline = Deadline(tracker, end)
        pace = Pace(tracker, end, steps, extra_per_step=t_val2 * (n_val + 1) / max(steps, 1))
        record.update(step_seconds=t2, teacher_forward_seconds=t_teach, validation_seconds=t_val2,
                      reserved_for_report_s=reserve)
    else:
        planned = tracker.record.get("planned_steps") or list(split_steps(_total_steps(state.inputs)))
        first = tracker.record.get("sparsify", {})
        unused = max(0, planned[0] - first.get("steps_done", planned[0]))
        steps = planned[1] + unused
        n_val = VALIDATIONS
        if unused:
            record["from_stage_I"] = unused  # stage I stopped early: its steps go to recovery
    plan = _stage_plan(steps, lr, record, deadline, pace, val, val_what, n_val)
    if val_what != "training":
        # a cosine's low-lr end often gains most: no early stop in the first half
        plan.best = BestWeights("task_loss", patience=PATIENCE, stop_from=steps // 2,
                                stop_margin=RECOVER_STOP_MARGIN)
        plan.callbacks.append(plan.best)
    return plan


def finish_recover(state: Any, plan: StagePlan) -> dict[str, Any]:
    """Recovery's record, as :func:`finish_sparsify`."""
    return _finish(state, plan, "recover")
