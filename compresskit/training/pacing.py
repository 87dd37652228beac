"""The time keepers of a budgeted stage (:mod:`compresskit.budget`): :class:`Deadline` ends it at its
deadline, :class:`Pace` shortens it when its measured pace does not fit the seconds it was given."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from compresskit.budget import duration
from compresskit.training.loop import Callback

if TYPE_CHECKING:  # pragma: no cover
    from compresskit.budget import BudgetTracker

__all__ = ["Deadline", "Pace"]


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
