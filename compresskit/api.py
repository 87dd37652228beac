"""``compress(model, loader, target="4x params")``: trace → sparsify → plan → shrink → recover → report.

The stages are objects in :mod:`compresskit.stages`; ``compress`` checks its arguments, resolves the loss,
inputs and target, and runs them in a loop. Every stage writes an atomic checkpoint into
``config.out_dir`` (``sparsified.pt``, ``plan.pt``, ``shrunk.pt``, ``recovered.pt``) stamped with a
fingerprint of the settings it depends on; a rerun with the same settings skips finished stages and
continues an interrupted training stage from its last checkpoint (``ck.train``'s resume). A stage whose
settings changed is redone, and so is everything after it.

``CompressResult.save(path)`` writes one file from which :func:`load` rebuilds the small model alone:
for a model built by ``ck.create_model`` the file holds its registered name, factory kwargs, example input
shapes and the kept widths per channel group; :func:`load` creates the full model, traces it and applies
the same shrink surgery, then loads the weights. Any other model is stored as a checked ``torch.export``
program, so no class and no unpickling is needed (``compresskit.saving``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compresskit._modes import copy_modes
from compresskit.config import CompressConfig
from compresskit.io import atomic_write_json, remove_stale_temps
from compresskit.report import (
    CompressReport,
    Metric,
    normalize_metrics,
)
from compresskit.target import Target
from compresskit.training.batch import to_device

__all__ = ["compress", "CompressResult", "load"]

LossFn = Callable[[Any, Any], torch.Tensor]


# ------------------------------------------------------------------------------------------------ result
@dataclass
class CompressResult:
    """The small model, the width plan that made it, and the report of the run."""

    model: nn.Module
    plan: Any  # WidthPlan
    report: CompressReport
    #: ``{"name", "kwargs", "inputs", "widths"}`` when the model can be rebuilt from the registry, else None
    rebuild: dict[str, Any] | None = None
    input_dtypes: list[str] | None = None  #: the example inputs' dtypes ("int64"), for CompressResult.save

    def save(self, path: str | os.PathLike, *, model_name: str | None = None,
             model_kwargs: Mapping[str, Any] | None = None, allow_pickle: bool = False) -> Path:
        """Write the small model to one file (atomically); :func:`load` rebuilds it from that file alone,
        without the model's class and without unpickling (``compresskit.saving``). The file is written
        only once it is shown to load that way and reproduce the model's outputs; else ``SaveError``
        says why. ``model_name``/``model_kwargs``: the registered factory of the original architecture
        (a rebuild recipe, for a model not built by ``ck.create_model``); ``allow_pickle``: write a
        pickle-only file (``load(path, trusted=True)``) rather than fail."""
        from compresskit.saving import save_result

        return save_result(self, path, model_name=model_name, model_kwargs=model_kwargs,
                           allow_pickle=allow_pickle)

    def export(self, path: str | os.PathLike, example_inputs: Any = None, **kw: Any) -> Any:
        """Write the small model as an ONNX file (``path`` ends in ``.onnx``), dynamic in batch and spatial
        sizes where the model allows, checked in ONNX Runtime against PyTorch on the example inputs and
        on a second size (``compresskit.deploy.onnx.export_onnx``; ``kw``: ``rtol``, ``atol``,
        ``dynamic``). ``example_inputs``: default, random inputs of the shapes ``compress`` recorded.
        Needs ``pip install 'compresskit[onnx]'``. Returns the check's record (``.summary()``)."""
        from compresskit.deploy.onnx import export_onnx

        if example_inputs is None:
            example_inputs = example_inputs_of(self)
        return export_onnx(self.model, example_inputs, path, **kw)


def example_inputs_of(result: CompressResult) -> tuple:
    """Inputs of the shapes and dtypes ``compress`` recorded: uniform [0, 1) floats, zero integers."""
    from compresskit.saving import _example_input, _input_specs, _to_device

    param = next((p for p in result.model.parameters() if p.is_floating_point()), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    return tuple(_to_device(_example_input(s, d, dtype, gen), device) for s, d in _input_specs(result))


def load(path: str | os.PathLike, *, trusted: bool = False) -> nn.Module:
    """Rebuild the small model saved by :meth:`CompressResult.save`; its outputs equal the saved model's.

    Nothing from the file is executed: a registered model is recreated with ``ck.create_model`` and shrunk
    to the stored widths, any other model is rebuilt from its checked ``torch.export`` program. Only
    ``trusted=True`` unpickles (the original class, or an old-format file): load only files you trust.
    See ``compresskit.saving``.
    """
    from compresskit.saving import load_model

    return load_model(path, trusted=trusted)


# ------------------------------------------------------------------------------------------ defaults
def _default_inputs(batch: Any) -> tuple:
    """The model's positional inputs from a batch ``(input_1, ..., input_n, target)``: all but the last."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError("train_loader: expected batches (input_1, ..., input_n, target) as tuples or lists "
                         f"of at least 2 items, got {type(batch).__name__}; pass inputs_fn= to adapt")
    return tuple(batch[:-1])


def l1_to_last(output: Any, batch: Any) -> torch.Tensor:
    """Default loss of a plain model: mean |output − batch[-1]|."""
    target = batch[-1]
    if not isinstance(output, torch.Tensor) or output.shape != target.shape:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"loss_fn: the default loss compares the model output {got} with the batch's last "
                         f"element {tuple(target.shape)}; they differ, so pass loss_fn=fn(output, batch)")
    return F.l1_loss(output, target)


def _describe(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module and module != "builtins" else name


@dataclass
class _Resolved:
    inputs_fn: Callable[[Any], tuple]
    inputs_how: str
    loss_fn: LossFn
    loss_how: str
    example_inputs: tuple
    registered: tuple[str, dict[str, Any]] | None


def _resolve(model: nn.Module, train_loader: Iterable, loss_fn: LossFn | None, example_inputs: Any,
             inputs_fn: Callable[[Any], tuple] | None) -> _Resolved:
    from compresskit.models import model_info, registered_name

    registered = registered_name(model)
    info = model_info(registered[0]) if registered else None
    if inputs_fn is not None:
        if not callable(inputs_fn):
            raise TypeError("inputs_fn: expected a callable fn(batch) -> tuple, "
                            f"got {type(inputs_fn).__name__}")
        inputs_how = f"inputs_fn {_describe(inputs_fn)} (given)"
    elif info is not None and info.inputs_from_batch is not None:
        inputs_fn, inputs_how = info.inputs_from_batch, f"inputs_from_batch of registered model {info.name!r}"
    else:
        inputs_fn, inputs_how = _default_inputs, "batch[:-1] (every element but the last)"
    if example_inputs is None:
        try:
            first = next(iter(train_loader))
        except StopIteration:
            raise ValueError("train_loader: yielded no batches") from None
        example_inputs = tuple(inputs_fn(first))
        inputs_how += "; example inputs from the first batch"
    else:
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        if not isinstance(example_inputs, (tuple, list)):
            raise TypeError("example_inputs: expected a tensor or a tuple of the model's positional inputs, "
                            f"got {type(example_inputs).__name__}")
        example_inputs = tuple(example_inputs)
        inputs_how += "; example inputs given"
    device = next(model.parameters(), torch.zeros(())).device
    example_inputs = tuple(to_device(example_inputs, device))
    if loss_fn is not None:
        if not callable(loss_fn):
            raise TypeError(f"loss_fn: expected a callable loss_fn(output, batch) -> scalar tensor, "
                            f"got {type(loss_fn).__name__}")
        loss_how = f"{_describe(loss_fn)} (given)"
    elif info is not None and info.default_loss is not None:
        loss_fn = info.default_loss
        loss_how = f"{_describe(loss_fn)} (default loss of registered model {info.name!r}, task {info.task})"
    else:
        loss_fn, loss_how = l1_to_last, "L1(output, batch[-1]) (default for a model without registered loss)"
    return _Resolved(inputs_fn, inputs_how, loss_fn, loss_how, example_inputs, registered)


# ------------------------------------------------------------------------------------------ helpers
def _console(enabled: bool):
    from rich.console import Console

    return Console(stderr=True, quiet=not enabled)


def _config_of(config: Any) -> CompressConfig:
    if config is None:
        return CompressConfig()
    if isinstance(config, Mapping):
        return CompressConfig.model_validate(dict(config))
    if isinstance(config, CompressConfig):
        return config
    raise TypeError("config: expected a CompressConfig or a mapping of its fields, "
                    f"got {type(config).__name__}")


# ------------------------------------------------------------------------------------------- compress
def compress(
    model: nn.Module,
    train_loader: Iterable,
    loss_fn: LossFn | None = None,
    example_inputs: Any = None,
    target: str | Target | None = None,
    config: CompressConfig | Mapping[str, Any] | None = None,
    teacher: nn.Module | None = None,
    val_loader: Iterable | None = None,
    metrics: Mapping[str, Metric] | list[Metric] | Metric | None = None,
    *,
    budget: str | Any | None = None,
    inputs_fn: Callable[[Any], tuple] | None = None,
    stop_after: str | None = None,
    drop_unused: bool | None = None,
) -> CompressResult:
    """Compress ``model`` until it meets ``target``; ``model`` itself is left unchanged.

    ``target``: ``"4x params"``, ``"50% macs"`` (keep half), ``"2x latency"`` (measured on the device the
    model is on) or a ``ck.Target``; None takes ``config.target``, else
    :data:`~compresskit.target.DEFAULT_TARGET` (``"2x macs"``). The stages (``compresskit.stages``):

    1. **trace** a copy's channel groups on ``example_inputs`` (default: from the first batch), build the
       target's cost model and fail at once (ValueError naming ``target``) if it cannot be reached;
    2. **sparsify** the copy toward the target (``config.sparsify``): by default the units the plan
       removes are scaled to exactly zero on a schedule while the copy trains (``method="progressive"``);
       a numeric ``lambda_`` (or ``method="obproxsg"``) runs the papers' l1 training with OBProx-SG;
    3. **plan** the widths that meet the target, ranking every unit of every group by importance per unit
       of cost, then shrink and count (or time) to verify (``config.plan``);
    4. **shrink** into a smaller dense model keeping the most important units (``config.shrink``);
    5. **recover** the quality by distilling from ``teacher`` (default: the original model, frozen) or
       fine-tuning (``config.recover``);
    6. **report** target vs achieved, parameters, MACs, latency and ``metrics`` on ``val_loader`` (without
       one: on the training batches a budget run holds out; with neither, ``metrics`` is a ValueError).

    ``budget``: what the run may spend, ``"30min"``, ``"2h"``, ``"2000 steps"`` or ``"3 epochs"``
    (or ``config.budget``); without one, and without steps in ``config.sparsify``/``config.recover``,
    :data:`~compresskit.budget.DEFAULT_BUDGET`. The library splits it between stage I and recovery,
    picks each stage's learning rate by a short probe, holds out ``config.holdout`` of the training data
    when there is no ``val_loader``, validates on it, returns the best weights and stops a stage early
    when it stops improving (``compresskit.autorecipe``); ``report.budget`` says how it was spent.

    ``loss_fn(output, batch)`` receives the whole batch; default: the registered model's loss, else
    L1 between the output and ``batch[-1]``. ``inputs_fn(batch)`` overrides how a batch becomes the
    model's inputs; ``stop_after`` ("sparsify", "plan", "shrink"; "recover" runs
    every stage) ends the run early with that stage's model (the CLI's stage commands).

    Parameters that ``forward`` never reads on the example inputs (a training-only block) are named in
    the report; they stay in the result and count, unless ``drop_unused=True`` (or
    ``config.shrink.drop_unused``) removes them from the result and from the counts. ``target`` may name
    several measures that must all hold (``"5x params & 2x latency"``); the report shows each.
    """
    from compresskit.stages import STOPS, RunInputs, State, _Stages, run_stages
    from compresskit.target import as_target

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    from compresskit.checks import check_module_usable

    check_module_usable(model, "model")
    if isinstance(train_loader, (torch.Tensor, str, bytes)) or not isinstance(train_loader, Iterable):
        raise TypeError("train_loader: expected an iterable of batches (input_1, ..., input_n, target), "
                        f"got {type(train_loader).__name__}")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher: expected an nn.Module or None, got {type(teacher).__name__}")
    if teacher is not None:
        check_module_usable(teacher, "teacher")
    if val_loader is not None and not isinstance(val_loader, Iterable):
        raise TypeError(f"val_loader: expected batches or None, got {type(val_loader).__name__}")
    from compresskit.training.data import require_reiterable

    require_reiterable(train_loader, "train_loader")
    if val_loader is not None:
        require_reiterable(val_loader, "val_loader")
    config = _config_of(config)
    if drop_unused is not None:
        if not isinstance(drop_unused, bool):
            raise TypeError(f"drop_unused: expected True, False or None (config.shrink.drop_unused), "
                            f"got {type(drop_unused).__name__}")
        config = config.model_copy(deep=True)
        config.shrink.drop_unused = drop_unused
    goal = as_target(target if target is not None else config.target)
    metrics = normalize_metrics(metrics)
    if stop_after is not None and stop_after not in STOPS:
        raise ValueError(f"stop_after: expected one of {tuple(STOPS)} or None, got {stop_after!r}")
    from compresskit.losses import list_losses

    if config.recover.distill_loss not in list_losses():  # with or without a teacher: a typo fails now
        raise ValueError(f"config.recover.distill_loss: unknown loss {config.recover.distill_loss!r}; "
                         f"registered losses: {', '.join(list_losses())}")
    tracker = _budget_of(budget, config)  # the clock starts here: everything below counts
    console = _console(config.progress)
    r = _resolve(model, train_loader, loss_fn, example_inputs, inputs_fn)
    held = None
    if tracker is not None and val_loader is None:
        held = _hold_out(train_loader, config, tracker)
        if held is not None:
            train_loader = held.train_loader
    if metrics and val_loader is None and held is None:
        why = ("this run holds nothing out: the train_loader cannot be split deterministically"
               if tracker is not None and config.holdout > 0 else
               "only a run with a budget holds part of the training batches out (config.holdout)")
        raise ValueError(f"metrics: {sorted(metrics)} need batches to evaluate on, but there is no "
                         f"val_loader and {why}. Pass val_loader= (batches the model never trains on), "
                         "or a budget= (a fraction config.holdout of the training batches is then held "
                         "out and the metrics evaluated there), or leave metrics out")
    from compresskit.checks import check_integer_inputs

    check_integer_inputs(model, r.example_inputs)  # uint8 frames into float convs: say how to convert
    if val_loader is not None and not metrics:
        metrics = {"loss": r.loss_fn}
    out_dir = Path(config.out_dir) if config.out_dir is not None else None
    lock = None
    try:  # from the moment the folder is claimed, any exit gives it back
        if out_dir is not None:
            if out_dir.exists() and not out_dir.is_dir():
                raise ValueError(f"config.out_dir: {str(out_dir)!r} is a file; expected a folder for the "
                                 "stage checkpoints and results (a new or existing folder)")
            out_dir.mkdir(parents=True, exist_ok=True)
            lock = _claim_out_dir(out_dir, config, goal)  # one live run per folder, one target per folder
            remove_stale_temps(out_dir, depth=1)  # left by a killed run (stage folders included)
            config.dump(out_dir / "config.json")
            atomic_write_json({"loss": r.loss_how, "inputs": r.inputs_how, "target": str(goal),
                               "budget": str(tracker.budget) if tracker is not None else None,
                               "example_input_shapes": [_shape_of(t) for t in r.example_inputs]},
                              out_dir / "resolved.json")
        name = r.registered[0] if r.registered else type(model).__name__
        console.rule(f"[bold]compress {name}[/] to {goal}"
                     + (f", budget {tracker.budget}" if tracker else ""))
        console.print(f"loss: {r.loss_how}\ninputs: {r.inputs_how}")
        state = State(RunInputs(
            model=model, config=config, target=goal, train_loader=train_loader, loss_fn=r.loss_fn,
            inputs_fn=r.inputs_fn, loss_how=r.loss_how, inputs_how=r.inputs_how,
            example_inputs=r.example_inputs, store=_Stages(out_dir, config.resume), console=console,
            teacher=teacher, val_loader=val_loader, metrics=metrics,
            device=str(next(model.parameters(), torch.zeros(())).device), budget=tracker, holdout=held))
        run_stages(state, stop_after)
        return _finish(state, r, name, out_dir)
    finally:
        if lock is not None:
            lock.release()


def _hold_out(train_loader: Iterable, config: CompressConfig, tracker: Any) -> Any:
    """``config.holdout`` of the training batches held out for validation (None when it is 0 or the loader
    cannot be split deterministically); what was held out, or why nothing was, goes into the budget's
    record."""
    if config.holdout <= 0:
        return None
    from compresskit.training.validation import hold_out

    held = hold_out(train_loader, config.holdout, seed=config.seed)
    if held is not None:
        tracker.record["holdout"] = held.describe()
        tracker.record["holdout_indices"] = held.indices
    else:
        tracker.record["holdout"] = ("none: the train_loader cannot be split deterministically (a custom "
                                     "sampler, an iterable dataset, or under two batches); pass "
                                     "val_loader= to validate and keep the best weights")
    return held


def _budget_of(budget: Any, config: CompressConfig) -> Any:
    """The run's :class:`~compresskit.budget.BudgetTracker` (its clock starts now), or None when the config
    gives the steps and no budget is asked for."""
    from compresskit.budget import DEFAULT_BUDGET, BudgetTracker, parse_budget

    given = [f"{section}.steps" for section in ("sparsify", "recover")
             if "steps" in getattr(config, section).model_fields_set]
    if budget is not None and config.budget is not None and str(parse_budget(budget)) != str(
            parse_budget(config.budget)):
        raise ValueError(f"budget: {budget!r} differs from config.budget={config.budget!r}; give one of them")
    wanted = budget if budget is not None else config.budget
    if wanted is not None and given:
        raise ValueError(f"budget: {str(wanted)!r} decides the steps, but {' and '.join(given)} "
                         "are also set in config; drop the steps or the budget")
    if wanted is None:
        if given:
            return None
        wanted = DEFAULT_BUDGET
    return BudgetTracker(parse_budget(wanted))


def _save_into(result: CompressResult, path: Path) -> None:
    """``result.save(path)``; when no safe file reproduces the model (or saving fails unexpectedly), a
    pickle-only one (with a warning and a report note) rather than an error that would lose the run; when
    even that fails, a warning and a report note, and no model file."""
    import warnings

    from compresskit.saving import SaveError

    try:
        result.save(path)
        return
    except SaveError as e:
        why = str(e)
    except Exception as e:  # noqa: BLE001 - a bug or an odd model must not lose a finished run
        why = f"saving failed unexpectedly ({type(e).__name__}: {e})"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*holds only a pickled module")  # said below
            result.save(path, allow_pickle=True)
        note = f"{path.name} holds a pickled module that only ck.load(path, trusted=True) opens: {why}"
    except Exception as e:  # noqa: BLE001
        note = (f"{path.name} was not written: {why}; the pickle fallback failed too ({type(e).__name__}: "
                f"{e}). The compressed model is in the returned result (result.model); save it yourself")
    result.report.notes.append(note)
    warnings.warn(f"compress: {note}", stacklevel=3)


def _finish(state: Any, r: _Resolved, name: str, out_dir: Path | None) -> CompressResult:
    """Build the report (:func:`compresskit.report_builder.build_report`) and result of the stage reached;
    write them into ``out_dir``."""
    from compresskit.report_builder import build_report
    from compresskit.stages import _widths

    final, stage, plan = state.art.final, state.art.reached, state.art.plan
    copy_modes(state.inputs.model, final)  # each module returned in the mode the original's namesake had
    report = build_report(state, name=name, loss_how=r.loss_how, inputs_how=r.inputs_how,
                          example_input_shapes=[_shape_of(t) for t in r.example_inputs])
    budget = report.budget
    widths = _widths(state)
    rebuild = None
    if r.registered is not None:
        # every group's width: a loaded model compressed again is rebuilt from the full-size one
        shrunk = stage in ("shrunk", "recovered")
        rebuild = {"name": r.registered[0], "kwargs": r.registered[1],
                   "inputs": [(_shape_of(t), _dtype_of(t)) for t in r.example_inputs],
                   "widths": {k: v[1] if shrunk else v[0] for k, v in widths.items()}}
        if state.art.dropped:  # ck.load removes the same parameters from the rebuilt model
            rebuild["dropped"] = sorted(state.art.unused)
    result = CompressResult(final, plan, report, rebuild,
                            [_dtype_of(t) for t in r.example_inputs])
    if out_dir is not None:
        suffix = "" if stage == "recovered" else f"_{stage}"
        report.save(out_dir / f"report{suffix}.json")  # first: the run's record survives a failed save
        n_notes = len(report.notes)
        _save_into(result, out_dir / f"{stage}.model.pt" if suffix else out_dir / "compressed.pt")
        if len(report.notes) != n_notes:  # the save added a note: record it too
            report.save(out_dir / f"report{suffix}.json")
        with contextlib.suppress(ImportError):  # matplotlib is optional
            report.plot(out_dir)
        curves = {k: budget[k]["best"] for k in ("sparsify", "recover") if budget.get(k, {}).get("best")}
        if curves:
            from compresskit.training.validation import plot_validation

            plot_validation(curves, out_dir / "validation.png")  # None without matplotlib
    if state.inputs.config.progress:
        report.print(state.inputs.console)
    return result


def _shape_of(x: Any) -> Any:
    """``list(x.shape)`` of a tensor; dicts, tuples and lists of tensors (dict inputs) item by item."""
    if isinstance(x, torch.Tensor):
        return list(x.shape)
    if isinstance(x, Mapping):
        return {str(k): _shape_of(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return [_shape_of(v) for v in x]
    return type(x).__name__


def _dtype_of(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return str(x.dtype).removeprefix("torch.")
    if isinstance(x, Mapping):
        return {str(k): _dtype_of(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return [_dtype_of(v) for v in x]
    return type(x).__name__


def _claim_out_dir(out_dir: Path, config: CompressConfig, goal: Any) -> Any:
    """Lock ``out_dir`` (:mod:`compresskit.lock`), then refuse a target other than the one the folder's
    earlier run had, unless ``resume=False``: its compressed.pt and report would be replaced unasked."""
    import json

    from compresskit.lock import FolderLock

    lock = FolderLock(out_dir).acquire(config.wait_for_lock, "compress")
    try:
        before = json.loads((out_dir / "resolved.json").read_text()).get("target")
    except (OSError, ValueError, AttributeError):
        before = None
    if config.resume and before is not None and before != str(goal):
        lock.release()
        raise ValueError(
            f"target: {str(out_dir)!r} holds a run for target {before!r}, this run asks for {str(goal)!r}; "
            "its results (compressed.pt, report.json) would be replaced. Use another out_dir, or "
            "resume=False (config.resume) to start afresh in this one")
    return lock
