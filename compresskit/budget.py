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
:class:`~compresskit.training.pacing.Deadline` callback ends a stage at its deadline in any case, so the run
finishes on time even when the step time changes. ``Budget.clock`` is injectable (a fake clock in the tests).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Budget", "parse_budget", "BudgetTracker", "STAGE1_SHARE", "DEFAULT_BUDGET",
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
    if not math.isfinite(seconds):
        return "?"
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


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
