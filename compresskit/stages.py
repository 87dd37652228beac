"""The stages of :func:`compresskit.compress`: trace → sparsify → plan → shrink → recover.

Each stage is an object with a ``name``, an ``artifact`` (its checkpoint file in ``out_dir``, or None),
``fingerprint(state)`` (everything its result depends on, the upstream stage's fingerprint included),
``run(state)`` (does the work, returns what to checkpoint) and ``restore(state, payload)`` (puts a
checkpointed result back). The :class:`State` they share holds the run's frozen :class:`RunInputs`
(``state.inputs``: model, config, target, data, loss, teacher...) and the :class:`Artifacts` the stages
fill in (``state.art``: graph, sparsified copy, importance, plan, small model, records and notes).
``compress`` is a loop over them: a stage whose artifact carries the same fingerprint is restored instead
of run, so a rerun with the same settings skips finished stages, and a changed setting redoes its stage
and every later one.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compresskit import pipeline
from compresskit._modes import eval_mode
from compresskit.config import CompressConfig
from compresskit.io import atomic_write_json
from compresskit.measure.counts import count_params
from compresskit.measure.macs import count_macs
from compresskit.pipeline import Stage, StageStore, checksum
from compresskit.report import ModelStats, evaluate, frozen_group_notes
from compresskit.target import Target

__all__ = ["State", "RunInputs", "Artifacts", "Stage", "STAGES", "TraceStage", "SparsifyStage", "PlanStage",
           "ShrinkStage", "RecoverStage"]


# ------------------------------------------------------------------------------------------ checkpoints
_checksum = checksum


def _input_signature(inputs: Any) -> list[Any]:
    """Shapes and dtypes of the example inputs (a run at another resolution redoes every stage); other
    values by type and repr."""
    items = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    return [[list(x.shape), str(x.dtype)] if isinstance(x, torch.Tensor) else [type(x).__name__, repr(x)]
            for x in items]


_Stages = StageStore  # the fingerprinted store now lives in compresskit.pipeline


# ----------------------------------------------------------------------------------------------- state
@dataclass(frozen=True)
class RunInputs:
    """What a run is given, fixed before the first stage: the model, the settings, the data and the tools
    every stage reads (none writes them)."""

    model: nn.Module  # the original, never modified
    config: CompressConfig
    target: Target
    train_loader: Iterable
    loss_fn: Callable
    inputs_fn: Callable[[Any], tuple]
    loss_how: str
    inputs_how: str
    example_inputs: tuple
    store: _Stages
    console: Any
    teacher: nn.Module | None = None
    val_loader: Iterable | None = None
    metrics: dict[str, Callable] = field(default_factory=dict)
    device: str = "cpu"
    #: the run's budget and clock (compresskit.budget.BudgetTracker); None: the config's steps as given
    budget: Any = None
    #: the held-out part of the training data (compresskit.training.validation.HeldOut), when one was taken
    holdout: Any = None

    def round_to(self) -> int:
        r = self.config.plan.round_to
        return (8 if self.device.startswith("cuda") else 1) if r == "auto" else int(r)


@dataclass
class Artifacts:
    """What the stages make, each filling in its own part (trace: ``work``, ``graph``, the costs, ``before``;
    sparsify: the sparsified ``work``; plan: ``importance``, ``plan``, ``densities``; shrink and recover:
    ``small``); ``records``, ``notes``, ``timings`` and ``fingerprints`` collect per stage for the report."""

    work: nn.Module | None = None  # the copy that is sparsified
    graph: Any = None
    cost: Any = None  # the CostModel of the target's (first) measure
    costs: dict[str, Any] = field(default_factory=dict)  # "params", "macs" (always), the target's others
    unused: dict[str, int] = field(default_factory=dict)  # parameters forward never reads: name -> count
    dropped: dict[str, int] = field(default_factory=dict)  # what drop_unused removed (unused_summary)
    strategy: Any = None  # the Importance object (a data-driven one keeps its statistics here)
    before: ModelStats | None = None
    importance: dict[int, torch.Tensor] = field(default_factory=dict)
    plan: Any = None
    small: nn.Module | None = None
    final: nn.Module | None = None
    reached: str = "traced"
    fingerprints: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)  # per stage, for the report
    densities: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    latency_runtime: str | None = None  # a latency target's runtime (compresskit.deploy.runtime)
    min_keep: tuple[float, str] | None = None  # the run's width floor and why (State.plan_limits)


@dataclass
class State:
    """What a stage's ``run``/``restore`` get: the run's frozen ``inputs`` and the ``art`` (artifacts) the
    stages fill in."""

    inputs: RunInputs
    art: Artifacts = field(default_factory=Artifacts)

    def stats(self, m: nn.Module) -> ModelStats:
        inp = self.inputs
        cfg = inp.config
        s = ModelStats(count_params(m), count_macs(m, inp.example_inputs))
        if cfg.measure_latency:  # every runtime; the fastest (or the latency target's) is latency_ms
            from compresskit.deploy.runtime import measure_runtimes

            times = measure_runtimes(m, inp.example_inputs, cfg.latency_runtimes,
                                     repeats=cfg.latency_repeats)
            s.latency_by_runtime = times.ms
            runtime = self.art.latency_runtime
            s.latency_runtime = runtime if runtime in times.ms else times.best
            s.latency_ms = times.ms.get(s.latency_runtime) if s.latency_runtime else None
        val = inp.val_loader
        if val is None and inp.holdout is not None:  # no val_loader: the held-out training batches
            val = inp.holdout.val_batches
        if val is not None and inp.metrics:
            s.metrics = evaluate(m, val, inp.metrics, inp.inputs_fn, cfg.eval_batches)
        return s

    def round_to(self) -> int:
        return self.inputs.round_to()

    def plan_limits(self) -> dict[str, Any]:
        """``min_width``, ``round_to`` and ``min_keep``: the limits every target plan of the run obeys.
        ``min_keep="auto"`` is resolved once per run (every unit alike, ``resolve_min_keep``), so stage I's
        calibrations and the final plan obey the same floor."""
        cfg = self.inputs.config.plan
        if self.art.min_keep is None:
            if cfg.min_keep == "auto":
                from compresskit.plan.planner import resolve_min_keep

                self.art.min_keep = resolve_min_keep(self.art.graph, self.target_costs(), self.inputs.target,
                                                     min_width=cfg.min_width, round_to=self.round_to())
            else:
                self.art.min_keep = (float(cfg.min_keep), "given (plan.min_keep)")
        return {"min_width": cfg.min_width, "round_to": self.round_to(), "min_keep": self.art.min_keep[0]}

    def target_costs(self) -> dict[str, Any]:
        """``{metric: CostModel}`` of every measure the target names."""
        return {m: self.art.costs[m] for m in self.inputs.target.metrics}

    def importance_strategy(self) -> Any:
        """The configured :class:`~compresskit.plan.importance.Importance`, built once per run."""
        if self.art.strategy is None:
            from compresskit.plan.importance import get_importance

            self.art.strategy = get_importance(self.inputs.config.plan.importance, self.inputs.model)
        return self.art.strategy


# ----------------------------------------------------------------------------------------------- trace
class TraceStage(Stage):
    """Find the parameters forward never reads (and drop them when asked), trace the channel groups on a
    copy, build the cost models, measure the original, check the target."""

    name = "trace"

    def fingerprint(self, state: State) -> dict[str, Any]:
        inp = state.inputs
        fp = {"model": _checksum(inp.model), "loss": inp.loss_how, "inputs": inp.inputs_how,
              "seed": inp.config.seed, "example_inputs": _input_signature(inp.example_inputs)}
        if state.inputs.config.shrink.drop_unused:
            fp["drop_unused"] = True
        return fp

    def run(self, state: State) -> None:
        from compresskit.graph.modes import cover_train_mode
        from compresskit.graph.trace import data_branch_notes, trace
        from compresskit.plan.cost import cost_model, macs_cost, params_cost
        from compresskit.surgery.unused import drop_unused, unused_parameters

        state.art.work = copy.deepcopy(state.inputs.model)
        state.art.unused = unused_parameters(state.art.work, state.inputs.example_inputs)
        if state.art.unused and state.inputs.config.shrink.drop_unused:
            state.art.dropped = drop_unused(state.art.work, state.art.unused)
        state.art.notes.extend(_unused_notes(state))
        state.art.graph = trace(state.art.work, state.inputs.example_inputs)
        art = state.art
        art.notes.extend(frozen_group_notes(art.graph))  # channels compression cannot touch, and why
        art.notes.extend(data_branch_notes(art.graph))  # Python decisions on tensor values it followed
        art.notes.extend(cover_train_mode(art.work, art.graph, state.inputs.example_inputs))  # train-only
        _check_second_batch(state)
        state.art.costs["params"] = params_cost(state.art.work, state.art.graph)
        state.art.costs["macs"] = macs_cost(state.art.work, state.art.graph, state.inputs.example_inputs)
        for metric in state.inputs.target.metrics:
            if metric not in state.art.costs:
                out_dir = state.inputs.config.out_dir
                cache = out_dir / metric if out_dir is not None else None
                kw = {}
                if metric == "latency":  # plan on the eager layout that runs the original fastest
                    state.art.latency_runtime = _fastest_layout(state)
                    if state.art.latency_runtime != "eager":
                        kw["layout"] = state.art.latency_runtime
                state.art.costs[metric] = cost_model(metric, state.art.work, state.art.graph,
                                                     state.inputs.example_inputs,
                                                 cache_dir=cache, **kw)
        state.art.cost = state.art.costs[state.inputs.target.metric]
        state.art.before = state.stats(state.art.work if state.art.dropped else state.inputs.model)
        if state.inputs.config.plan.rule == "target" or _needs_target_plan(state):
            _check_reachable(state)
        return None


def _fastest_layout(state: State) -> str:
    """The eager layout (``"eager"`` NCHW or ``"channels_last"``) that runs the original fastest: the
    runtime a latency target's table, verification and report are measured in."""
    from compresskit.deploy.runtime import available_runtimes, measure_runtimes

    times = measure_runtimes(state.art.work, state.inputs.example_inputs,
                             available_runtimes(state.inputs.example_inputs, onnx=False),
                             repeats=state.inputs.config.plan.latency_repeats)
    return times.best or "eager"


def _unused_notes(state: State) -> list[str]:
    """A report note naming the parameters forward never reads (kept, or dropped)."""
    from compresskit.surgery.unused import unused_summary

    if not state.art.unused:
        return []
    summary = state.art.dropped or unused_summary(state.art.work, state.art.unused)
    total = sum(p.numel() for p in state.inputs.model.parameters())
    listed = "; ".join(f"{name}: {n:,} params" for name, n in list(summary.items())[:6])
    more = f" (+{len(summary) - 6} more)" if len(summary) > 6 else ""
    count = sum(state.art.unused.values())
    what = (f"{count:,} parameters ({count / max(total, 1):.0%}) are never used by forward() on the example "
            f"inputs: {listed}{more}")
    if state.art.dropped:
        return [f"{what}; removed (drop_unused=True): the counts before and after leave them out"]
    return [f"{what}; kept, and counted (drop_unused=True removes them)"]


def _check_second_batch(state: State) -> None:
    """Before any training: ``loss_fn(output, batch)`` runs on the first batch (a loss of the wrong
    signature fails here, naming loss_fn), and the traced graph agrees with eager execution on the loader's
    second batch (data-dependent control flow would make the channel graph wrong for other inputs).
    The loader is iterated once for both, as before the loss check existed (its shuffling RNG included)."""
    from compresskit.checks import check_loss, check_trace_matches_eager
    from compresskit.training.batch import to_device

    tensors = [x for x in state.inputs.example_inputs if isinstance(x, torch.Tensor)]
    device = tensors[0].device if tensors else torch.device("cpu")
    it = iter(state.inputs.train_loader)
    inp = state.inputs
    check_loss(state.art.work, inp.loss_fn, inp.inputs_fn, to_device(next(it), device), inp.loss_how)
    batch = next(it, None)
    if batch is None and state.inputs.holdout is not None and state.inputs.holdout.val_batches:
        batch = state.inputs.holdout.val_batches[0]  # the split left one training batch: a held-out one
    if batch is None:  # one batch in all: nothing else to compare with
        return
    inputs = tuple(to_device(tuple(state.inputs.inputs_fn(batch)), device))
    check_trace_matches_eager(state.art.work, state.art.graph, inputs)


def _needs_target_plan(state: State) -> bool:
    """Whether stage I steers by the target's plan (progressive zeroing, OBProx-SG with auto-λ, or a
    registered sparsifier whose ``uses_plan`` is not False)."""
    from compresskit.sparsify.auto import get_sparsifier, uses_plan

    return state.inputs.config.sparsify.steps > 0 and uses_plan(get_sparsifier(state.inputs.config.sparsify))


def _check_reachable(state: State) -> None:
    """Fail before any training when a part of the target cannot be met (ValueError naming ``target``);
    parameters forward never reads are named first, with their share and what they cap the ratio at."""
    from compresskit.plan.planner import plan_for_target

    try:
        limits = state.plan_limits()  # resolving "auto" plans with every unit alike: that is the check
        if state.inputs.config.plan.min_keep != "auto":
            ones = {g.id: torch.ones(g.size, dtype=torch.float64) for g in state.art.graph.prunable_groups}
            plan_for_target(state.art.graph, state.target_costs(), ones, state.inputs.target, **limits)
    except ValueError as err:
        why = _unused_cap(state)
        if why is None:
            raise
        raise ValueError(f"target: {state.inputs.target} is unreachable: {why}. Details: {err}") from None


def _unused_cap(state: State) -> str | None:
    """Why parameters forward never reads make a part of the target unreachable (their share of its
    measure, the ratio they cap it at, whether ``drop_unused`` would do), or None when they do not."""
    from compresskit.plan.metric import get_metric
    from compresskit.plan.planner import allowed_widths
    from compresskit.surgery.unused import drop_unused, unused_summary

    if not state.art.unused or state.art.dropped:
        return None
    cfg = state.inputs.config.plan
    # plan_limits() ran first (_check_reachable): a given floor is recorded; an "auto" one that could not
    # be resolved is no floor (it gives way)
    floor = state.art.min_keep[0] if state.art.min_keep else 0.0
    smallest = {g.id: allowed_widths(g.size, g.channels_per_unit, cfg.min_width, state.round_to(),
                                     floor)[-1] for g in state.art.graph.prunable_groups}
    summary = unused_summary(state.art.work, state.art.unused)
    without_them = None
    for part in state.inputs.target.terms:
        metric = get_metric(part.metric)
        if metric.tolerance:  # a measured time: unread parameters cost none of it
            continue
        cost = state.art.costs[part.metric]
        full, floor = float(cost.full()), float(cost(smallest))
        if floor <= full / part.ratio * (1 + 1e-9):
            continue  # this part is reachable
        if part.metric == "params":
            unused = float(sum(state.art.unused.values()))
        else:  # what the measure loses when they go (a memory measure: their bytes; MACs: nothing)
            if without_them is None:
                without_them = copy.deepcopy(state.art.work)
                drop_unused(without_them, state.art.unused)
            unused = (metric.measure(state.art.work, state.inputs.example_inputs)
                      - metric.measure(without_them, state.inputs.example_inputs))
        if not unused > 0:
            continue
        shown = list(summary.items())[:4]
        if part.metric == "params":
            names, share = ", ".join(f"{n}: {c:,} params ({c / full:.0%})" for n, c in shown), ""
        else:
            names = ", ".join(f"{n}: {c:,} params" for n, c in shown)
            share = f" ({unused / full:.0%} of the {part.metric})"
        more = f" (+{len(summary) - 4} more)" if len(summary) > 4 else ""
        rest = (full - unused) / max(floor - unused, 1e-300)
        fix = (f"pass `drop_unused=True` to remove them (then up to {rest:.3g}x of the rest)"
               if rest >= part.ratio else
               f"`drop_unused=True` removes them, but the rest reaches only {rest:.3g}x; ask for less too")
        return (f"{names}{more}{share} {'is' if len(summary) == 1 else 'are'} never used by forward(); with "
                f"every prunable group at its smallest width they cap the ratio at "
                f"{full / max(floor, 1e-300):.3g}x (asked: {part}); {fix}")
    return None


def target_widths(state: State) -> Callable[[nn.Module], dict[int, int]]:
    """``fn(model)``: the target plan's widths ``{group id: units}`` for the model's current weights."""
    from compresskit.plan.planner import plan_for_target

    importance = state.importance_strategy()

    def widths(model: nn.Module) -> dict[int, int]:
        plan = plan_for_target(state.art.graph, state.target_costs(), importance(model, state.art.graph),
                               state.inputs.target, **state.plan_limits())
        return dict(plan.widths)

    return widths


def _strategy_fingerprint(state: State) -> dict[str, Any]:
    """The plan config with the importance's own ``fingerprint()`` in place of its name (and the
    fingerprints of registered measures the target names)."""
    from compresskit.plan.importance import importance_fingerprint
    from compresskit.plan.metric import BUILTIN_METRICS, get_metric

    plan = state.inputs.config.plan.model_dump(mode="json")
    plan["importance"] = importance_fingerprint(state.importance_strategy())
    if plan.get("min_keep") == 0:  # no floor plans as before the setting existed: those runs resume
        del plan["min_keep"]
    added = [m for m in state.inputs.target.metrics if m not in BUILTIN_METRICS]
    if added:  # a registered measure: its cost model and measurement are part of the plan
        plan["metrics"] = [get_metric(m).fingerprint() for m in added]
    return plan


def _data_driven(importance: Any) -> bool:
    return callable(getattr(importance, "estimate", None)) and callable(getattr(importance, "has_data", None))


def _estimate(state: State, model: nn.Module) -> None:
    """Give a data-driven importance its statistics from a few training batches (no weight changes)."""
    from compresskit.training.batch import to_device

    device = next(model.parameters(), torch.zeros(())).device

    def loss_of(m: nn.Module, batch: Any) -> torch.Tensor:
        batch = to_device(batch, device)
        return state.inputs.loss_fn(m(*state.inputs.inputs_fn(batch)), batch)

    with torch.enable_grad(), eval_mode(model):  # no running statistics change
        state.importance_strategy().estimate(model, state.inputs.train_loader, loss_of, graph=state.art.graph)


# -------------------------------------------------------------------------------------------- sparsify
class SparsifyStage(Stage):
    """Stage I: the configured :class:`~compresskit.sparsify.auto.Sparsifier` trains the copy."""

    name = "sparsify"
    artifact = "sparsified.pt"

    def fingerprint(self, state: State) -> dict[str, Any]:
        from compresskit.sparsify.auto import get_sparsifier

        fp = {"upstream": state.art.fingerprints["trace"],
              "sparsify": get_sparsifier(state.inputs.config.sparsify).fingerprint()}
        if state.inputs.budget is not None:  # the budget decides the steps (and the data: a held-out split)
            fp["budget"] = str(state.inputs.budget.budget)
            fp["holdout"] = state.inputs.holdout.indices if state.inputs.holdout is not None else None
        if _needs_target_plan(state):  # stage I aims at the units the target's plan removes
            fp.update(target=str(state.inputs.target), plan=_strategy_fingerprint(state),
                      round_to=state.round_to())
        return fp

    def run(self, state: State) -> dict[str, Any]:
        from compresskit.autorecipe import finish_sparsify, plan_sparsify
        from compresskit.sparsify.auto import SparsifyContext, get_sparsifier

        cfg = state.inputs.config
        if state.inputs.budget is not None:
            state.inputs.budget.mark("trace")
        plan = plan_sparsify(state)  # steps, lr and validation from the budget and a probe
        sp = cfg.sparsify if plan is None else cfg.sparsify.model_copy(update={"steps": plan.steps,
                                                                              "lr": plan.lr})
        if sp.steps > 0:
            how = (f"OBProx-SG, λ={sp.lambda_}" if sp.method == "obproxsg"
                   else _sparsifier_how(sp))
            state.inputs.console.print(f"[bold]1/4 sparsify[/]: {how}, {sp.steps} steps, lr {sp.lr:.3g}"
                                       + _budget_left(state))
        resolved = {"steps": sp.steps, "lr": sp.lr}
        ctx = SparsifyContext(
            train_loader=state.inputs.train_loader, loss_fn=state.inputs.loss_fn,
            inputs_fn=state.inputs.inputs_fn,
            graph=state.art.graph,
            widths_fn=target_widths(state),
            train=run_train_config(state, val_every=plan.val_every if plan is not None else None),
            out_dir=state.inputs.store.train_dir("sparsify", {**self.fingerprint(state),
                                                              "resolved": resolved}),
            resume=cfg.resume,
            callbacks=[*_importance_callbacks(state, sp.steps),
                       *(plan.callbacks if plan is not None else [])],
            scores_fn=_scores_fn(state),
            val_loader=plan.val_loader if plan is not None else None)
        record = get_sparsifier(sp).run(state.art.work, ctx)
        kept: dict[str, Any] = {}
        if plan is not None:  # kept with the stage's artifact: a resumed run reports it too
            kept["budget"] = json.dumps(finish_sparsify(state, plan))
        if state.inputs.budget is not None:
            state.inputs.budget.mark("sparsify")
        state.art.records["sparsify"] = record
        return {"state_dict": state.art.work.state_dict(), "record": json.dumps(record),
                **_importance_payload(state), **kept}

    def restore(self, state: State, payload: dict[str, Any]) -> None:
        state.inputs.console.print("[green]sparsify[/]: loaded sparsified.pt")
        state.art.work.load_state_dict(payload["state_dict"])
        state.art.records["sparsify"] = json.loads(payload.get("record", "{}"))
        if payload.get("budget"):
            _keep_stage_record(state, "sparsify", json.loads(payload["budget"]))
        if payload.get("importance") is not None:
            state.importance_strategy().load_state_dict(payload["importance"])


def _sparsifier_how(config: Any) -> str:
    """How stage I trains, for the progress line (the progressive default, or a registered sparsifier)."""
    from compresskit.sparsify.auto import get_sparsifier

    if config.method == "progressive":
        return "the units the plan removes go to zero progressively"
    sparsifier = get_sparsifier(config)
    return f"sparsifier {getattr(sparsifier, 'name', None) or type(sparsifier).__name__}"


def _importance_callbacks(state: State, steps: int) -> list[Any]:
    """A data-driven importance watches stage I's gradients (after a first estimate from a few batches
    when stage I steers by the plan from its first step)."""
    importance = state.importance_strategy()
    if not _data_driven(importance) or steps <= 0:
        return []
    if _needs_target_plan(state) and not importance.has_data():
        _estimate(state, state.art.work)  # scores for the first plan, before any step
    return [importance.callback(state.art.work, state.art.graph)]


def _scores_fn(state: State) -> Callable[[nn.Module], dict[int, torch.Tensor]]:
    """``fn(model)``: the importance of every unit for the current weights (which units stage I zeroes)."""
    importance = state.importance_strategy()
    return lambda model: importance(model, state.art.graph)


def _importance_payload(state: State) -> dict[str, Any]:
    """A data-driven importance's statistics, kept with stage I's artifact (a restored run plans alike)."""
    importance = state.importance_strategy()
    if not (_data_driven(importance) and importance.has_data()):
        return {}
    return {"importance": importance.state_dict()}


# ------------------------------------------------------------------------------------------------ plan
class PlanStage(Stage):
    """Stage II: the widths that meet the target (verified by shrinking and counting), or a density rule."""

    name = "plan"
    artifact = "plan.pt"

    def fingerprint(self, state: State) -> dict[str, Any]:
        return {"upstream": state.art.fingerprints["sparsify"], "target": str(state.inputs.target),
                "plan": _strategy_fingerprint(state), "round_to": state.round_to()}

    def run(self, state: State) -> dict[str, Any]:
        from compresskit.measure.density import layer_densities

        cfg = state.inputs.config.plan
        state.art.densities = layer_densities(state.art.work)
        state.art.importance = _scores(state)
        if cfg.rule == "target":
            state.art.plan, record = _target_plan(state)
        else:
            from compresskit.plan.planner import plan_widths

            state.art.plan = plan_widths(state.art.graph, state.art.densities, rule=cfg.rule,
                                         coupling=cfg.coupling,
                                     min_width=cfg.min_width, divisor=state.round_to())
            record = {"rule": cfg.rule}
            state.art.notes.extend(_dense_warning(state))
        record["removed_importance"] = _removed_share(state)
        if state.art.unused:
            record["unused_parameters"] = dict(state.art.dropped) or _unused_by_module(state)
            record["unused_dropped"] = bool(state.art.dropped)
        state.art.records["plan"] = record
        self._write_json(state)
        return {"plan": json.dumps(state.art.plan.to_dict()), "record": json.dumps(record),
                "scores": {str(k): v for k, v in state.art.importance.items()}}

    def restore(self, state: State, payload: dict[str, Any]) -> None:
        from compresskit.measure.density import layer_densities
        from compresskit.plan.planner import WidthPlan

        state.art.densities = layer_densities(state.art.work)
        state.art.importance = _scores(state) if payload.get("scores") is None else {
            int(k): v for k, v in payload["scores"].items()}
        state.art.plan = WidthPlan.from_dict(json.loads(payload["plan"]))
        state.art.records["plan"] = json.loads(payload["record"])
        if state.inputs.config.plan.rule != "target":
            state.art.notes.extend(_dense_warning(state))
        self._write_json(state)

    @staticmethod
    def _write_json(state: State) -> None:
        if state.inputs.config.out_dir is not None:
            atomic_write_json({"widths": _widths(state), "densities": state.art.densities,
                               "explain": state.art.plan.explain_text(), "record": state.art.records["plan"]},
                              Path(state.inputs.config.out_dir) / "plan.json")


def _scores(state: State) -> dict[int, torch.Tensor]:
    """The importance of every unit for the sparsified weights (a data-driven importance that saw no
    training first gathers its statistics from a few batches)."""
    importance = state.importance_strategy()
    if _data_driven(importance) and not importance.has_data():
        _estimate(state, state.art.work)
    return importance(state.art.work, state.art.graph)


def _unused_by_module(state: State) -> dict[str, int]:
    from compresskit.surgery.unused import unused_summary

    return unused_summary(state.art.work, state.art.unused)


def _widths(state: State) -> dict[str, list[int]]:
    """``{group id: [width before, width after]}`` for every group."""
    plan = state.art.plan
    return {str(g.id): [int(g.size), int(plan.widths.get(g.id, g.size) if plan is not None else g.size)]
            for g in state.art.graph.groups}


def _removed_share(state: State) -> float:
    """Share of the prunable groups' l1 mass (after sparsification) in the units the plan removes (0: only
    zeros go)."""
    from compresskit.measure.mass import unit_l1_mass
    from compresskit.plan.importance import removal_order

    total = removed = 0.0
    for gid, scores in state.art.importance.items():
        mass = unit_l1_mass(state.art.work, state.art.graph.group(gid))
        total += float(mass.sum())
        drop = state.art.plan.sizes[gid] - state.art.plan.widths.get(gid, state.art.plan.sizes[gid])
        if drop > 0:
            removed += float(mass[removal_order(scores)[:drop]].sum())
    return removed / total if total > 0 else 0.0


def _shrunk(state: State, plan: Any, init: str = "inherit") -> nn.Module:
    from compresskit.plan.importance import keep_from_importance
    from compresskit.surgery.surgery import shrink

    keep = keep_from_importance(state.art.importance, plan.widths, plan.sizes)
    work = state.art.work
    return shrink(work, state.art.graph, keep=keep, init=init) if keep else copy.deepcopy(work)


def _measure(state: State, model: nn.Module, metric: str | None = None) -> float:
    """The registered measurement of ``metric`` (default: the target's first) on ``model``."""
    from compresskit.plan.verify import measure_cost

    return measure_cost(model, metric or state.inputs.target.metric, state.inputs.example_inputs,
                        repeats=state.inputs.config.plan.latency_repeats, layout=state.art.latency_runtime)


def _target_plan(state: State) -> tuple[Any, dict[str, Any]]:
    """Plan for the target, verified by shrinking and measuring (``plan.verify.verify_plan``)."""
    from compresskit.plan.verify import verify_plan

    cfg = state.inputs.config.plan
    plan, checked = verify_plan(state.art.graph, state.target_costs(), state.art.importance,
                                state.inputs.target,
                                model=state.art.work, build=lambda p: _shrunk(state, p),
                                measure=lambda m, metric: _measure(state, m, metric), verify=cfg.verify,
                                **state.plan_limits())
    if checked.get("stopped"):
        state.art.notes.append(f"plan: {checked['stopped']}")
    record = {"rule": "target", "target": str(state.inputs.target), **checked, "round_to": state.round_to(),
              "min_width": cfg.min_width, "min_keep": state.art.min_keep[0],
              "min_keep_why": state.art.min_keep[1], "importance": _importance_name(state),
              "runtime": state.art.latency_runtime if "latency" in state.inputs.target.metrics else None}
    return plan, record


def _importance_name(state: State) -> str:
    from compresskit.config import _strategy_name

    return str(_strategy_name(state.inputs.config.plan.importance))


def _dense_warning(state: State) -> list[str]:
    """A note (and a warning) when a density-rule plan keeps almost every channel: λ was too weak."""
    kept = state.art.plan.kept_fraction()
    if kept < 0.95 or not state.art.densities:
        return []
    mean = sum(state.art.densities.values()) / len(state.art.densities)
    cfg = state.inputs.config.sparsify
    note = (f"the plan keeps {kept:.0%} of the prunable channels: the sparsified weights are still dense "
            f"(mean density {mean:.2f}). OBProx-SG moves each weight by about lr·λ per step towards zero; "
            f"use a target (plan.rule='target'), or raise lambda_ or sparsify.steps (lambda_={cfg.lambda_}).")
    warnings.warn(note, stacklevel=4)
    return [note]


# ---------------------------------------------------------------------------------------------- shrink
class ShrinkStage(Stage):
    """Stage III: the surgery: keep the highest-importance units of every group at its planned width."""

    name = "shrink"
    artifact = "shrunk.pt"

    def fingerprint(self, state: State) -> dict[str, Any]:
        return {"upstream": state.art.fingerprints["plan"], "widths": _widths(state),
                "shrink": state.inputs.config.shrink.model_dump(mode="json")}

    def _build(self, state: State) -> None:
        torch.manual_seed(state.inputs.config.seed)
        state.art.small = _shrunk(state, state.art.plan, state.inputs.config.shrink.init)

    def run(self, state: State) -> dict[str, Any]:
        self._build(state)
        state.inputs.console.print(f"[bold]2/4 plan + 3/4 shrink[/]: {count_params(state.inputs.model):,} → "
                                   f"{count_params(state.art.small):,} params")
        return {"state_dict": state.art.small.state_dict()}

    def restore(self, state: State, payload: dict[str, Any]) -> None:
        self._build(state)
        state.art.small.load_state_dict(payload["state_dict"])


# --------------------------------------------------------------------------------------------- recover
class RecoverStage(Stage):
    """Stage IV: distil the small model from the teacher (default: the original, frozen), or fine-tune."""

    name = "recover"
    artifact = "recovered.pt"
    old_artifacts = ("finetuned.pt",)  # before the stage names were one vocabulary

    def teacher(self, state: State) -> nn.Module | None:
        if state.inputs.teacher is not None:
            return state.inputs.teacher
        return state.inputs.model if state.inputs.config.recover.teacher == "original" else None

    def fingerprint(self, state: State) -> dict[str, Any]:
        fp = {"upstream": state.art.fingerprints["shrink"], "teacher": _checksum(self.teacher(state)),
              "recover": state.inputs.config.recover.fingerprint()}
        if state.inputs.budget is not None:
            fp["budget"] = str(state.inputs.budget.budget)
        return fp

    def run(self, state: State) -> dict[str, Any] | None:
        from compresskit.autorecipe import finish_recover, plan_recover
        from compresskit.config import DistillConfig
        from compresskit.training.loop import train

        cfg, rc = state.inputs.config, state.inputs.config.recover
        if state.inputs.budget is not None:
            state.inputs.budget.mark("plan+shrink")
        if rc.steps == 0 and state.inputs.budget is None:
            return None
        teacher = self.teacher(state)
        plan = plan_recover(state, teacher)  # steps, lr and validation from the budget and a probe
        if plan is not None:
            rc = rc.model_copy(update={"steps": plan.steps, "lr": plan.lr})
        torch.manual_seed(cfg.seed)
        folder = state.inputs.store.train_dir("recover", {**self.fingerprint(state),
                                                          "resolved": {"steps": rc.steps, "lr": rc.lr}},
                                              old_names=("finetune",))  # the folder's name before
        resolved: dict[str, Any] = {}
        val = state.inputs.val_loader if rc.early_stop_patience is not None else None
        callbacks: list[Any] = []
        metrics = state.inputs.metrics or None
        if plan is not None and plan.val_every is not None:
            resolved["val_every"] = plan.val_every
            val = plan.val_loader
            metrics = {**(state.inputs.metrics or {}), "task_loss": state.inputs.loss_fn}
        if plan is not None:
            callbacks = plan.callbacks
        if teacher is not None:
            from compresskit.distillation.engine import FeatureLoss, OutputLoss, distill

            which = "given" if state.inputs.teacher is not None else "original"
            state.inputs.console.print(f"[bold]4/4 recover[/]: distil from the {which} teacher, {rc.steps} "
                                       f"steps, lr {rc.lr:.3g}, {rc.alpha}·loss(S, batch) + "
                                       f"{rc.distill_loss}(S, T)"
                                       + (f" + {rc.feature_weight}·features" if rc.features else "")
                                       + _budget_left(state))
            terms: list[Any] = [OutputLoss(state.inputs.loss_fn, rc.alpha, "batch", name="student"),
                                OutputLoss(rc.distill_loss, 1.0, "teacher", name="distill")]
            if isinstance(rc.features, list):  # as terms; "auto" pairs are found by distill()
                terms += [FeatureLoss(p.student, p.teacher, p.loss, p.weight * rc.feature_weight)
                          for p in rc.features]
                resolved["features"] = []
            distill(state.art.small, teacher, state.inputs.train_loader,
                    config=rc.train_config(run_train_config(state), DistillConfig, **resolved),
                    losses=terms, inputs_fn=state.inputs.inputs_fn, val_loader=val,
                    metrics=metrics, out_dir=folder, resume=cfg.resume, callbacks=callbacks)
        else:
            state.inputs.console.print(f"[bold]4/4 recover[/]: fine-tune, {rc.steps} steps, lr {rc.lr:.3g}"
                                       + _budget_left(state))
            train(state.art.small, state.inputs.train_loader, state.inputs.loss_fn,
                  config=rc.train_config(run_train_config(state), **resolved),
                  inputs_fn=state.inputs.inputs_fn, val_loader=val, metrics=metrics, out_dir=folder,
                  resume=cfg.resume, stage="fine-tune", callbacks=callbacks)
        kept: dict[str, Any] = {}
        if plan is not None:  # kept with the stage's artifact: a resumed run reports it too
            kept["budget"] = json.dumps(finish_recover(state, plan))
        if state.inputs.budget is not None:
            state.inputs.budget.mark("recover")
        return {"state_dict": state.art.small.state_dict(), **kept}

    def restore(self, state: State, payload: dict[str, Any]) -> None:
        state.inputs.console.print("[green]recover[/]: loaded its checkpoint")
        state.art.small.load_state_dict(payload["state_dict"])
        if payload.get("budget"):
            _keep_stage_record(state, "recover", json.loads(payload["budget"]))


def run_train_config(state: State, **values: Any) -> Any:
    """The run-wide training settings (:data:`compresskit.config.RUN_WIDE`: seed, device, checkpoint
    cadence, progress, batch checks), merged here once for every training stage, and ``values``; a stage's
    :meth:`~compresskit.config.StageTrainConfig.train_config` puts its own settings over them."""
    from compresskit.config import RUN_WIDE, TrainConfig

    cfg = state.inputs.config
    run = {k: getattr(cfg, k) for k in RUN_WIDE if k != "device"}
    return TrainConfig(**run, device=state.inputs.device, **values)


def _keep_stage_record(state: State, stage: str, record: dict[str, Any]) -> None:
    """A restored stage's steps and learning-rate record, back where the report reads it."""
    from compresskit.autorecipe import keep_record

    keep_record(state, stage, record)


def _budget_left(state: State) -> str:
    """``" (budget left 12m03s)"`` for a time budget, else ``""``."""
    b = state.inputs.budget
    if b is None or not b.budget.is_time:
        return ""
    from compresskit.budget import duration

    return f" (budget left {duration(b.left())} of {b.budget})"


STAGES: tuple[Stage, ...] = (TraceStage(), SparsifyStage(), PlanStage(), ShrinkStage(), RecoverStage())
#: what ``stop_after`` may name, and the model the run returns then
STOPS = {"sparsify": "sparsified", "plan": "planned", "shrink": "shrunk", "recover": "recovered"}


def run_stages(state: State, stop_after: str | None = None) -> State:
    """Run (or restore) every stage in order, until ``stop_after``; times each into ``state.art.timings``."""
    reached = {"trace": "traced", "sparsify": "sparsified", "plan": "planned", "shrink": "shrunk",
               "recover": "recovered"}
    pipeline.run_stages(STAGES, state, state.inputs.store, fingerprints=state.art.fingerprints,
                        timings=state.art.timings,
                        stop_after=stop_after,
                        on_stage=lambda stage, _: setattr(state.art, "reached", reached[stage.name]))
    state.art.final = state.art.small if state.art.small is not None else state.art.work
    return state
