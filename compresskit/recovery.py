"""``recover(model, loader, teacher=..., budget=...)``: recovery alone, with ``compress``'s budget defaults.

For a model made small elsewhere (another pruning tool, a hand-thinned network): the same recovery stage
``compress`` runs after its shrink (:class:`compresskit.stages.RecoverStage`): the same held-out split
(``config.holdout`` of the training batches when there is no ``val_loader``), learning-rate probe,
``alpha``·loss(S, batch) + distillation from ``teacher``, validation, best weights and early stop
(:mod:`compresskit.autorecipe`), but the whole budget goes to recovery: there is no stage I to share
it with (a step budget's ``STAGE1_SHARE`` is not taken off; a time budget's deadline is the budget).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

__all__ = ["recover", "RecoverResult"]


@dataclass
class RecoverResult:
    """The recovered model (a copy; the input model is left unchanged) and how the budget was spent
    (``record``: the budget tracker's record, with a ``"recover"`` entry as in ``report.budget``)."""

    model: nn.Module
    record: dict[str, Any]


def recover(model: nn.Module, train_loader: Iterable, teacher: nn.Module | None = None, *,
            budget: str | Any, loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
            inputs_fn: Callable[[Any], tuple] | None = None,
            config: Any = None, val_loader: Iterable | None = None) -> RecoverResult:
    """Train a copy of ``model`` for ``budget`` (``"30min"``, ``"2000 steps"``, ``"3 epochs"``) by
    distilling from ``teacher`` (None: from ``model`` itself as given, frozen, like ``compress``'s default
    teacher; ``config.recover.teacher="none"`` fine-tunes on ``loss_fn`` alone) with the settings
    ``compress`` uses for its recovery stage (``config.recover``; learning rate ``"auto"`` by default).
    ``loss_fn``/``inputs_fn`` default as in :func:`compress`. With ``config.out_dir``
    the run checkpoints there and resumes."""
    from compresskit.api import _config_of, _console, _hold_out, _resolve
    from compresskit.budget import BudgetTracker, parse_budget
    from compresskit.checks import check_module_usable
    from compresskit.pipeline import StageStore, checksum
    from compresskit.stages import RecoverStage, RunInputs, State
    from compresskit.target import Target
    from compresskit.training.data import require_reiterable

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    check_module_usable(model, "model")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher: expected an nn.Module or None, got {type(teacher).__name__}")
    if budget is None:
        raise ValueError("budget: recover() needs a budget ('30min', '2000 steps', '3 epochs'); it decides "
                         "the steps")
    require_reiterable(train_loader, "train_loader")
    config = _config_of(config)
    given = [f"recover.{k}" for k in ("steps",) if k in config.recover.model_fields_set]
    if given:
        raise ValueError(f"budget: {str(budget)!r} decides the steps, but {given[0]} is also set in config; "
                         "drop one of them")
    tracker = BudgetTracker(parse_budget(budget))  # the clock starts here
    r = _resolve(model, train_loader, loss_fn, None, inputs_fn)
    held = _hold_out(train_loader, config, tracker) if val_loader is None else None
    if held is not None:
        train_loader = held.train_loader
    # recovery takes the whole budget: stage I planned no steps (autorecipe.plan_recover reads this)
    if not tracker.budget.is_time:
        from compresskit.autorecipe import _total_steps

        total = _total_steps(SimpleNamespace(train_loader=train_loader, budget=tracker))
        tracker.record["planned_steps"] = [0, total]
    small = copy.deepcopy(model)
    state = State(RunInputs(
        model=model, config=config, target=Target(metric="params", ratio=2.0), train_loader=train_loader,
        loss_fn=r.loss_fn, inputs_fn=r.inputs_fn, loss_how=r.loss_how, inputs_how=r.inputs_how,
        example_inputs=r.example_inputs, store=StageStore(config.out_dir, config.resume),
        console=_console(config.progress), teacher=teacher, val_loader=val_loader,
        device=str(next(model.parameters(), torch.zeros(())).device), budget=tracker, holdout=held))
    state.art.small = small
    state.art.fingerprints["shrink"] = {"model": checksum(model)}
    if config.out_dir is not None:
        from pathlib import Path

        Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    tracker.mark("trace")  # nothing before recovery: no time is reserved for a report
    RecoverStage().run(state)
    return RecoverResult(small, tracker.finish())
