"""The user's budget for :func:`compresskit.compress`: ``"30min"``, ``"2h"``, ``"2000 steps"``, ``"3 epochs"``
(seconds of the run's clock, optimizer steps, or passes over the training data).

A budget is split between stage I (sparsify) and recovery (distillation) in optimizer steps,
``STAGE1_SHARE : 1 − STAGE1_SHARE``. The share rests on the hand-tuned runs of
``benchmarks/compress_targets.py`` recorded in docs/results.md: RIFE v3.8 at 5× used 2,500 + 4,000 steps
(38 % in stage I, −0.16 dB), RIFE 2×/10× 1,000 + 1,500 (40 %), FlowVFI 2×/10× 1,500 + 3,500 (30 %), and
FlowVFI at 5× 2,500 + 7,500 (25 %) ended where 1,500 + 2,500 (38 %) had: three times the recovery steps
bought nothing there, so the larger stage-I share of the good runs is kept.

A time budget becomes steps from measured step times: stage I's own (timed during its learning-rate
probe) and an estimate of a recovery step (the teacher's forward plus the full step scaled down by the
target ratio); stage I gets ``STAGE1_SHARE`` of the steps that fit, recovery then gets whatever time is
left when it starts (its own step time measured), less what validation and the final report need. A
:class:`Deadline` callback ends a stage at its deadline in any case, so the run finishes on time even
when the step time changes. ``Budget.clock`` is injectable (a fake clock in the tests).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from compresskit.train.loop import Callback

__all__ = ["Budget", "parse_budget", "BudgetTracker", "Deadline", "Pace", "STAGE1_SHARE", "DEFAULT_BUDGET",
           "VALIDATIONS", "VALIDATION_SHARE"]

#: share of the training steps spent in stage I (see the module docstring for the evidence)
STAGE1_SHARE = 0.4
#: without ``budget=`` and without steps in the config: about the 2,500 + 4,000 steps that brought RIFE v3.8
#: (2.3M parameters) to 5× within 0.16 dB, rounded down; early stopping gives back what recovery does not use
DEFAULT_BUDGET = "6000 steps"
#: validations per training stage (each stage validates every ``steps // VALIDATIONS`` steps)
VALIDATIONS = 20
#: a time budget's validations take at most this share of a stage's time (fewer validations then)
VALIDATION_SHARE = 0.1

_UNITS = {
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0,
}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]+)\s*$")


@dataclass(frozen=True)
class Budget:
    """``amount`` of ``unit`` (``"seconds"``, ``"steps"`` or ``"epochs"``); ``clock()`` reads seconds."""

    amount: float
    unit: Literal["seconds", "steps", "epochs"]
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)

    def __str__(self) -> str:
        if self.unit == "seconds":
            s = self.amount
            return f"{s / 3600:g}h" if s >= 3600 and s % 360 == 0 else (
                f"{s / 60:g}min" if s >= 60 and s % 6 == 0 else f"{s:g}s")
        return f"{self.amount:g} {self.unit}"

    @property
    def is_time(self) -> bool:
        return self.unit == "seconds"


def parse_budget(budget: str | Budget, *, clock: Callable[[], float] | None = None) -> Budget:
    """``"30min"``, ``"1.5h"``, ``"90s"``, ``"2000 steps"``, ``"3 epochs"`` → :class:`Budget`."""
    if isinstance(budget, Budget):
        return budget if clock is None else Budget(budget.amount, budget.unit, clock)
    hint = ("expected a string like '30min', '2h', '90s', '2000 steps' or '3 epochs'")
    if isinstance(budget, (bool, int, float)):
        raise TypeError(f"budget: a bare number {budget!r} has no unit; {hint}")
    if not isinstance(budget, str):
        raise TypeError(f"budget: {hint}, got {type(budget).__name__}")
    m = _PATTERN.match(budget)
    if m is None:
        raise ValueError(f"budget: could not read {budget!r}; {hint}")
    amount, unit = float(m.group(1)), m.group(2).lower()
    kw = {} if clock is None else {"clock": clock}
    if unit in _UNITS:
        seconds = amount * _UNITS[unit]
        if seconds <= 0:
            raise ValueError(f"budget: {budget!r} is no time at all; {hint}")
        return Budget(seconds, "seconds", **kw)
    if unit in ("step", "steps", "epoch", "epochs"):
        if amount != int(amount) or amount < 1:
            raise ValueError(f"budget: {budget!r}: expected a whole number of {unit} >= 1")
        return Budget(amount, "steps" if unit.startswith("step") else "epochs", **kw)
    raise ValueError(f"budget: unknown unit {m.group(2)!r} in {budget!r}; {hint}")


def split_steps(total: int) -> tuple[int, int]:
    """``total`` training steps → (stage I, recovery), ``STAGE1_SHARE`` of them in stage I (each >= 1)."""
    if total < 2:
        raise ValueError(f"budget: {total} training steps cannot be split between stage I and recovery; "
                         "give at least 2 steps")
    first = min(total - 1, max(1, round(STAGE1_SHARE * total)))
    return first, total - first


class BudgetTracker:
    """The run's clock against its budget: when it started, the deadline (time budgets), where each stage
    began and ended (``marks``), and the record that lands in the report."""

    def __init__(self, budget: Budget):
        self.budget = budget
        self.clock = budget.clock
        self.start = self.clock()
        self.deadline = self.start + budget.amount if budget.is_time else math.inf
        self.marks: list[tuple[str, float]] = [("start", self.start)]
        self.record: dict[str, Any] = {"budget": str(budget), "unit": budget.unit, "amount": budget.amount}

    def now(self) -> float:
        return self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        """Seconds left before the deadline (inf for step and epoch budgets)."""
        return self.deadline - self.clock()

    def mark(self, name: str) -> None:
        self.marks.append((name, self.clock()))

    def stage_seconds(self) -> dict[str, float]:
        """Seconds between consecutive marks, named by the mark that ends them (``"sparsify"``: the span
        that ended at the mark ``sparsify``)."""
        return {name: t - prev for (_, prev), (name, t) in zip(self.marks, self.marks[1:])}

    def finish(self) -> dict[str, Any]:
        self.mark("report")
        spent = self.elapsed()
        self.record.update(seconds=self.stage_seconds(), spent_s=spent)
        if self.budget.is_time:
            self.record["spent_fraction"] = spent / self.budget.amount
        return self.record


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h01m`` (``?`` when not finite)."""
    from compresskit.train.progress import _duration

    return _duration(seconds)


class Deadline(Callback):
    """Ends a training stage when ``clock()`` reaches ``deadline``; shows the budget left in the progress
    lines (``budget left 12m03s``)."""

    def __init__(self, tracker: BudgetTracker, deadline: float):
        self.tracker, self.deadline = tracker, deadline
        self.stopped_at: int | None = None

    def on_step_end(self, trainer: Any) -> None:
        if self.tracker.clock() >= self.deadline and not trainer.should_stop:
            trainer.should_stop = True
            self.stopped_at = trainer.step

    def progress_fields(self, trainer: Any) -> dict[str, Any]:
        if not self.tracker.budget.is_time:
            return {}
        return {"budget left": duration(self.tracker.left())}


def budget_lines(record: dict[str, Any]) -> list[str]:
    """The report's lines about the budget: spent per stage, steps and learning rate of each stage,
    which weights were returned."""
    lines = []
    seconds = record.get("seconds") or {}
    spent = record.get("spent_s")
    head = f"budget {record.get('budget')}" if record.get("budget") else "no budget (the config's steps)"
    if spent is not None:
        head += f": spent {duration(spent)}"
        if record.get("spent_fraction") is not None:
            head += f" ({record['spent_fraction']:.0%})"
    if seconds:
        head += " — " + ", ".join(f"{k} {duration(v)}" for k, v in seconds.items())
    lines.append(head)
    if record.get("holdout"):
        lines.append(f"validation: {record['holdout']}")
    for stage in ("sparsify", "recover"):
        rec = record.get(stage)
        if not rec:
            continue
        probe = rec.get("lr_probe")
        how = f"lr {rec['lr']:.3g}" + (f" (probe: {probe['why']})" if probe else " (given)")
        text = f"{stage}: {rec.get('steps_done', rec.get('steps'))}/{rec.get('steps')} steps, {how}"
        pace = rec.get("pace") or {}
        if pace.get("shortened_to") is not None:
            text += (f"; shortened to {pace['shortened_to']} steps (the loop ran at "
                     f"{pace['seconds_per_step']:.3g} s/step)")
        best = rec.get("best")
        if best and best.get("best_step") is not None:
            text += (f"; returned the best weights, step {best['best_step']} ({best['monitor']} "
                     f"{best['best']:.4g}; last {best['last']:.4g})")
            if best.get("stopped_early_at") is not None:
                text += f", stopped early at step {best['stopped_early_at']} (no improvement)"
        lines.append(text)
    return lines


class Pace(Callback):
    """Fits a training stage into the seconds it was given, from its own measured pace.

    The step time a stage is planned with comes from a bare probe; the real loop also runs its callbacks,
    checkpoints and validations, which can make it much slower. After ``check_at`` steps the time per
    step so far (from the end of the first step) plus ``extra_per_step`` (validations, amortised) gives
    the steps that fit before ``end`` (the clock's seconds); when that is fewer than
    planned, the stage is shortened: it stops there, a cosine schedule is re-aimed to reach its end
    there, and every callback with ``rescale_steps(new, old)`` (the zeroing ramp, best-weight keeping)
    is told. A stage never grows: what it leaves goes to the next stage or is given back."""

    def __init__(self, tracker: BudgetTracker, end: float, steps: int, check_at: int | None = None,
                 extra_per_step: float = 0.0):
        self.tracker, self.end, self.steps = tracker, end, steps
        self.check_at = check_at if check_at is not None else max(3, steps // 20)
        self.extra = extra_per_step  # what the loop spends per step besides steps (validations, amortised)
        self.limit = steps
        self.started: float | None = None
        self.start_step = 0
        self.stopped_at: int | None = None
        self.record: dict[str, Any] = {}

    def on_train_start(self, trainer: Any) -> None:
        self.start_step = trainer.step

    def on_step_end(self, trainer: Any) -> None:
        done = trainer.step - self.start_step
        if done == 1:  # timed from the end of the first step: set-up and first-step costs are not a pace
            self.started = self.tracker.clock()
        if done == self.check_at and self.started is not None and 1 < self.check_at < self.steps:
            now = self.tracker.clock()
            per_step = (now - self.started) / (done - 1)
            fit = (trainer.step + int(max(0.0, self.end - now) / (per_step + self.extra)) if per_step > 0
                   else self.steps)
            self.record = {"check_step": trainer.step, "seconds_per_step": per_step, "fits": fit}
            if fit < self.steps:
                self._shorten(trainer, max(trainer.step + 1, fit))
        if trainer.step >= self.limit and not trainer.should_stop:
            trainer.should_stop = True
            self.stopped_at = trainer.step

    def _shorten(self, trainer: Any, new: int) -> None:
        import torch

        old, self.limit = self.steps, new
        self.record["shortened_to"] = new
        sched = getattr(trainer, "scheduler", None)
        if isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR):
            sched.T_max = max(1, new)
        for cb in getattr(trainer, "callbacks", []):
            rescale = getattr(cb, "rescale_steps", None)
            if callable(rescale):
                rescale(new, old)

    def state_dict(self) -> dict[str, Any]:
        return {"limit": self.limit, "record": self.record, "stopped_at": self.stopped_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.limit, self.record, self.stopped_at = state["limit"], state["record"], state["stopped_at"]
