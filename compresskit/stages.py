"""The stages of :func:`compresskit.compress`: trace → sparsify → plan → shrink → recover.

Each stage is an object with a ``name``, an ``artifact`` (its checkpoint file in ``out_dir``, or None),
``fingerprint(state)`` (everything its result depends on, the upstream stage's fingerprint included),
``run(state)`` (does the work on the shared :class:`State`, returns what to checkpoint) and
``restore(state, payload)`` (puts a checkpointed result back). ``compress`` is a loop over them: a stage
whose artifact carries the same fingerprint is restored instead of run, so a rerun with the same
settings skips finished stages, and a changed setting redoes its stage and every later one.
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

__all__ = ["State", "Stage", "STAGES", "TraceStage", "SparsifyStage", "PlanStage", "ShrinkStage",
           "RecoverStage"]


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
@dataclass
class State:
    """Everything the stages share; each stage reads what earlier ones left and adds its own part."""

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
    # filled by the stages
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

    def stats(self, m: nn.Module) -> ModelStats:
        cfg = self.config
        s = ModelStats(count_params(m), count_macs(m, self.example_inputs))
        if cfg.measure_latency:  # every runtime; the fastest (or the latency target's) is latency_ms
            from compresskit.deploy.runtime import measure_runtimes

            times = measure_runtimes(m, self.example_inputs, cfg.latency_runtimes,
                                     repeats=cfg.latency_repeats)
            s.latency_by_runtime = times.ms
            s.latency_runtime = self.latency_runtime if self.latency_runtime in times.ms else times.best
            s.latency_ms = times.ms.get(s.latency_runtime) if s.latency_runtime else None
        val = self.val_loader
        if val is None and self.holdout is not None:  # no val_loader: the held-out training batches
            val = self.holdout.val_batches
        if val is not None and self.metrics:
            s.metrics = evaluate(m, val, self.metrics, self.inputs_fn, cfg.eval_batches)
        return s

    def round_to(self) -> int:
        r = self.config.plan.round_to
        return (8 if self.device.startswith("cuda") else 1) if r == "auto" else int(r)

    def target_costs(self) -> dict[str, Any]:
        """``{metric: CostModel}`` of every measure the target names."""
        return {m: self.costs[m] for m in self.target.metrics}

    def importance_strategy(self) -> Any:
        """The configured :class:`~compresskit.plan.importance.Importance`, built once per run."""
        if self.strategy is None:
            from compresskit.plan.importance import get_importance

            self.strategy = get_importance(self.config.plan.importance, self.model)
        return self.strategy


# ----------------------------------------------------------------------------------------------- trace
class TraceStage(Stage):
    """Find the parameters forward never reads (and drop them when asked), trace the channel groups on a
    copy, build the cost models, measure the original, check the target."""

    name = "trace"

    def fingerprint(self, state: State) -> dict[str, Any]:
        fp = {"model": _checksum(state.model), "loss": state.loss_how, "inputs": state.inputs_how,
              "seed": state.config.seed, "example_inputs": _input_signature(state.example_inputs)}
        if state.config.shrink.drop_unused:
            fp["drop_unused"] = True
        return fp

    def run(self, state: State) -> None:
        from compresskit.graph.modes import cover_train_mode
        from compresskit.graph.trace import data_branch_notes, trace
        from compresskit.plan.cost import cost_model, macs_cost, params_cost
        from compresskit.surgery.unused import drop_unused, unused_parameters

        state.work = copy.deepcopy(state.model)
        state.unused = unused_parameters(state.work, state.example_inputs)
        if state.unused and state.config.shrink.drop_unused:
            state.dropped = drop_unused(state.work, state.unused)
        state.notes.extend(_unused_notes(state))
        state.graph = trace(state.work, state.example_inputs)
        state.notes.extend(frozen_group_notes(state.graph))  # channels compression cannot touch, and why
        state.notes.extend(data_branch_notes(state.graph))  # Python decisions on tensor values it followed
        state.notes.extend(cover_train_mode(state.work, state.graph, state.example_inputs))  # train-only code
        _check_second_batch(state)
        state.costs["params"] = params_cost(state.work, state.graph)
        state.costs["macs"] = macs_cost(state.work, state.graph, state.example_inputs)
        for metric in state.target.metrics:
            if metric not in state.costs:
                cache = state.config.out_dir / metric if state.config.out_dir is not None else None
                kw = {}
                if metric == "latency":  # plan on the eager layout that runs the original fastest
                    state.latency_runtime = _fastest_layout(state)
                    if state.latency_runtime != "eager":
                        kw["layout"] = state.latency_runtime
                state.costs[metric] = cost_model(metric, state.work, state.graph, state.example_inputs,
                                                 cache_dir=cache, **kw)
        state.cost = state.costs[state.target.metric]
        state.before = state.stats(state.work if state.dropped else state.model)
        if state.config.plan.rule == "target" or _needs_target_plan(state):
            _check_reachable(state)
        return None


def _fastest_layout(state: State) -> str:
    """The eager layout (``"eager"`` NCHW or ``"channels_last"``) that runs the original fastest: the
    runtime a latency target's table, verification and report are measured in."""
    from compresskit.deploy.runtime import available_runtimes, measure_runtimes

    times = measure_runtimes(state.work, state.example_inputs,
                             available_runtimes(state.example_inputs, onnx=False),
                             repeats=state.config.plan.latency_repeats)
    return times.best or "eager"


def _unused_notes(state: State) -> list[str]:
    """A report note naming the parameters forward never reads (kept, or dropped)."""
    from compresskit.surgery.unused import unused_summary

    if not state.unused:
        return []
    summary = state.dropped or unused_summary(state.work, state.unused)
    total = sum(p.numel() for p in state.model.parameters())
    listed = "; ".join(f"{name}: {n:,} params" for name, n in list(summary.items())[:6])
    more = f" (+{len(summary) - 6} more)" if len(summary) > 6 else ""
    count = sum(state.unused.values())
    what = (f"{count:,} parameters ({count / max(total, 1):.0%}) are never used by forward() on the example "
            f"inputs: {listed}{more}")
    if state.dropped:
        return [f"{what}; removed (drop_unused=True): the counts before and after leave them out"]
    return [f"{what}; kept, and counted (drop_unused=True removes them)"]


def _check_second_batch(state: State) -> None:
    """Before any training: ``loss_fn(output, batch)`` runs on the first batch (a loss of the wrong
    signature fails here, naming loss_fn), and the traced graph agrees with eager execution on the loader's
    second batch (data-dependent control flow would make the channel graph wrong for other inputs).
    The loader is iterated once for both, as before the loss check existed (its shuffling RNG included)."""
    from compresskit.checks import check_loss, check_trace_matches_eager
    from compresskit.training.batch import to_device

    tensors = [x for x in state.example_inputs if isinstance(x, torch.Tensor)]
    device = tensors[0].device if tensors else torch.device("cpu")
    it = iter(state.train_loader)
    check_loss(state.work, state.loss_fn, state.inputs_fn, to_device(next(it), device), state.loss_how)
    batch = next(it, None)
    if batch is None and state.holdout is not None and state.holdout.val_batches:
        batch = state.holdout.val_batches[0]  # the split left one training batch: check on a held-out one
    if batch is None:  # one batch in all: nothing else to compare with
        return
    inputs = tuple(to_device(tuple(state.inputs_fn(batch)), device))
    check_trace_matches_eager(state.work, state.graph, inputs)


def _needs_target_plan(state: State) -> bool:
    """Whether stage I steers by the target's plan (progressive zeroing, OBProx-SG with auto-λ, or a
    registered sparsifier whose ``uses_plan`` is not False)."""
    from compresskit.sparsify.auto import get_sparsifier, uses_plan

    return state.config.sparsify.steps > 0 and uses_plan(get_sparsifier(state.config.sparsify))


def _check_reachable(state: State) -> None:
    """Fail before any training when a part of the target cannot be met (ValueError naming ``target``);
    parameters forward never reads are named first, with their share and what they cap the ratio at."""
    from compresskit.plan.planner import plan_for_target

    ones = {g.id: torch.ones(g.size, dtype=torch.float64) for g in state.graph.prunable_groups}
    try:
        plan_for_target(state.graph, state.target_costs(), ones, state.target,
                        min_width=state.config.plan.min_width, round_to=state.round_to())
    except ValueError as err:
        why = _unused_cap(state)
        if why is None:
            raise
        raise ValueError(f"target: {state.target} is unreachable: {why}. Details: {err}") from None


def _unused_cap(state: State) -> str | None:
    """Why parameters forward never reads make a part of the target unreachable (their share of its
    measure, the ratio they cap it at, whether ``drop_unused`` would do), or None when they do not."""
    from compresskit.plan.metric import get_metric
    from compresskit.plan.planner import allowed_widths
    from compresskit.surgery.unused import drop_unused, unused_summary

    if not state.unused or state.dropped:
        return None
    smallest = {g.id: allowed_widths(g.size, g.channels_per_unit, state.config.plan.min_width,
                                     state.round_to())[-1] for g in state.graph.prunable_groups}
    summary = unused_summary(state.work, state.unused)
    without_them = None
    for part in state.target.terms:
        metric = get_metric(part.metric)
        if metric.tolerance:  # a measured time: unread parameters cost none of it
            continue
        cost = state.costs[part.metric]
        full, floor = float(cost.full()), float(cost(smallest))
        if floor <= full / part.ratio * (1 + 1e-9):
            continue  # this part is reachable
        if part.metric == "params":
            unused = float(sum(state.unused.values()))
        else:  # what the measure loses when they go (a memory measure: their bytes; MACs: nothing)
            if without_them is None:
                without_them = copy.deepcopy(state.work)
                drop_unused(without_them, state.unused)
            unused = (metric.measure(state.work, state.example_inputs)
                      - metric.measure(without_them, state.example_inputs))
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
        plan = plan_for_target(state.graph, state.target_costs(), importance(model, state.graph),
                               state.target, min_width=state.config.plan.min_width, round_to=state.round_to())
        return dict(plan.widths)

    return widths


def _strategy_fingerprint(state: State) -> dict[str, Any]:
    """The plan config with the importance's own ``fingerprint()`` in place of its name (and the
    fingerprints of registered measures the target names)."""
    from compresskit.plan.importance import importance_fingerprint
    from compresskit.plan.metric import BUILTIN_METRICS, get_metric

    plan = state.config.plan.model_dump(mode="json")
    plan["importance"] = importance_fingerprint(state.importance_strategy())
    added = [m for m in state.target.metrics if m not in BUILTIN_METRICS]
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
        return state.loss_fn(m(*state.inputs_fn(batch)), batch)

    with torch.enable_grad(), eval_mode(model):  # no running statistics change
        state.importance_strategy().estimate(model, state.train_loader, loss_of, graph=state.graph)


# -------------------------------------------------------------------------------------------- sparsify
class SparsifyStage(Stage):
    """Stage I: the configured :class:`~compresskit.sparsify.auto.Sparsifier` trains the copy."""

    name = "sparsify"
    artifact = "sparsified.pt"

    def fingerprint(self, state: State) -> dict[str, Any]:
        from compresskit.sparsify.auto import get_sparsifier

        fp = {"upstream": state.fingerprints["trace"],
              "sparsify": get_sparsifier(state.config.sparsify).fingerprint()}
        if state.budget is not None:  # the budget decides the steps (and the data: a held-out split)
            fp["budget"] = str(state.budget.budget)
            fp["holdout"] = state.holdout.indices if state.holdout is not None else None
        if _needs_target_plan(state):  # stage I aims at the units the target's plan removes
            fp.update(target=str(state.target), plan=_strategy_fingerprint(state), round_to=state.round_to())
        return fp

    def run(self, state: State) -> dict[str, Any]:
        from compresskit.autorecipe import finish_sparsify, plan_sparsify
        from compresskit.sparsify.auto import SparsifyContext, get_sparsifier

        cfg = state.config
        if state.budget is not None:
            state.budget.mark("trace")
        plan = plan_sparsify(state)  # steps, lr and validation from the budget and a probe
        sp = cfg.sparsify if plan is None else cfg.sparsify.model_copy(update={"steps": plan.steps,
                                                                              "lr": plan.lr})
        if sp.steps > 0:
            how = (f"OBProx-SG, λ={sp.lambda_}" if sp.method == "obproxsg"
                   else _sparsifier_how(sp))
            state.console.print(f"[bold]1/4 sparsify[/]: {how}, {sp.steps} steps, lr {sp.lr:.3g}"
                                + _budget_left(state))
        resolved = {"steps": sp.steps, "lr": sp.lr}
        ctx = SparsifyContext(
            train_loader=state.train_loader, loss_fn=state.loss_fn, inputs_fn=state.inputs_fn,
            graph=state.graph,
            widths_fn=target_widths(state),
            train=run_train_config(state, val_every=plan.val_every if plan is not None else None),
            out_dir=state.store.train_dir("sparsify", {**self.fingerprint(state), "resolved": resolved}),
            resume=cfg.resume,
            callbacks=[*_importance_callbacks(state, sp.steps),
                       *(plan.callbacks if plan is not None else [])],
            scores_fn=_scores_fn(state),
            val_loader=plan.val_loader if plan is not None else None)
        record = get_sparsifier(sp).run(state.work, ctx)
        kept: dict[str, Any] = {}
        if plan is not None:  # kept with the stage's artifact: a resumed run reports it too
            kept["budget"] = json.dumps(finish_sparsify(state, plan))
        if state.budget is not None:
            state.budget.mark("sparsify")
        state.records["sparsify"] = record
        return {"state_dict": state.work.state_dict(), "record": json.dumps(record),
                **_importance_payload(state), **kept}

    def restore(self, state: State, payload: dict[str, Any]) -> None:
        state.console.print("[green]sparsify[/]: loaded sparsified.pt")
        state.work.load_state_dict(payload["state_dict"])
        state.records["sparsify"] = json.loads(payload.get("record", "{}"))
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
        _estimate(state, state.work)  # scores for the first plan, before any step
    return [importance.callback(state.work, state.graph)]


def _scores_fn(state: State) -> Callable[[nn.Module], dict[int, torch.Tensor]]:
    """``fn(model)``: the importance of every unit for the current weights (which units stage I zeroes)."""
    importance = state.importance_strategy()
    return lambda model: importance(model, state.graph)


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
        return {"upstream": state.fingerprints["sparsify"], "target": str(state.target),
                "plan": _strategy_fingerprint(state), "round_to": state.round_to()}

    def run(self, state: State) -> dict[str, Any]:
        from compresskit.measure.density import layer_densities

        cfg = state.config.plan
        state.densities = layer_densities(state.work)
        state.importance = _scores(state)
        if cfg.rule == "target":
            state.plan, record = _target_plan(state)
        else:
            from compresskit.plan.planner import plan_widths

            state.plan = plan_widths(state.graph, state.densities, rule=cfg.rule, coupling=cfg.coupling,
                                     min_width=cfg.min_width, divisor=state.round_to())
            record = {"rule": cfg.rule}
            state.notes.extend(_dense_warning(state))
        record["removed_importance"] = _removed_share(state)
        if state.unused:
            record["unused_parameters"] = dict(state.dropped) or _unused_by_module(state)
            record["unused_dropped"] = bool(state.dropped)
        state.records["plan"] = record
        self._write_json(state)
        return {"plan": json.dumps(state.plan.to_dict()), "record": json.dumps(record),
                "scores": {str(k): v for k, v in state.importance.items()}}

    def restore(self, state: State, payload: dict[str, Any]) -> None:
        from compresskit.measure.density import layer_densities
        from compresskit.plan.planner import WidthPlan

        state.densities = layer_densities(state.work)
        state.importance = _scores(state) if payload.get("scores") is None else {
            int(k): v for k, v in payload["scores"].items()}
        state.plan = WidthPlan.from_dict(json.loads(payload["plan"]))
        state.records["plan"] = json.loads(payload["record"])
        if state.config.plan.rule != "target":
            state.notes.extend(_dense_warning(state))
        self._write_json(state)

    @staticmethod
    def _write_json(state: State) -> None:
        if state.config.out_dir is not None:
            atomic_write_json({"widths": _widths(state), "densities": state.densities,
                               "explain": state.plan.explain_text(), "record": state.records["plan"]},
                              Path(state.config.out_dir) / "plan.json")


def _scores(state: State) -> dict[int, torch.Tensor]:
    """The importance of every unit for the sparsified weights (a data-driven importance that saw no
    training first gathers its statistics from a few batches)."""
    importance = state.importance_strategy()
    if _data_driven(importance) and not importance.has_data():
        _estimate(state, state.work)
    return importance(state.work, state.graph)


def _unused_by_module(state: State) -> dict[str, int]:
    from compresskit.surgery.unused import unused_summary

    return unused_summary(state.work, state.unused)


def _widths(state: State) -> dict[str, list[int]]:
    """``{group id: [width before, width after]}`` for every group."""
    plan = state.plan
    return {str(g.id): [int(g.size), int(plan.widths.get(g.id, g.size) if plan is not None else g.size)]
            for g in state.graph.groups}


def _removed_share(state: State) -> float:
    """Share of the prunable groups' l1 mass (after sparsification) in the units the plan removes (0: only
    zeros go)."""
    from compresskit.measure.mass import unit_l1_mass
    from compresskit.plan.importance import removal_order

    total = removed = 0.0
    for gid, scores in state.importance.items():
        mass = unit_l1_mass(state.work, state.graph.group(gid))
        total += float(mass.sum())
        drop = state.plan.sizes[gid] - state.plan.widths.get(gid, state.plan.sizes[gid])
        if drop > 0:
            removed += float(mass[removal_order(scores)[:drop]].sum())
    return removed / total if total > 0 else 0.0


def _shrunk(state: State, plan: Any, init: str = "inherit") -> nn.Module:
    from compresskit.plan.importance import keep_from_importance
    from compresskit.surgery.surgery import shrink

    keep = keep_from_importance(state.importance, plan.widths, plan.sizes)
    return shrink(state.work, state.graph, keep=keep, init=init) if keep else copy.deepcopy(state.work)


def _measure(state: State, model: nn.Module, metric: str | None = None) -> float:
    """The registered measurement of ``metric`` (default: the target's first) on ``model``."""
    from compresskit.plan.verify import measure_cost

    return measure_cost(model, metric or state.target.metric, state.example_inputs,
                        repeats=state.config.plan.latency_repeats, layout=state.latency_runtime)


def _target_plan(state: State) -> tuple[Any, dict[str, Any]]:
    """Plan for the target, verified by shrinking and measuring (``plan.verify.verify_plan``)."""
    from compresskit.plan.verify import verify_plan

    cfg = state.config.plan
    plan, checked = verify_plan(state.graph, state.target_costs(), state.importance, state.target,
                                model=state.work, build=lambda p: _shrunk(state, p),
                                measure=lambda m, metric: _measure(state, m, metric), verify=cfg.verify,
                                min_width=cfg.min_width, round_to=state.round_to())
    record = {"rule": "target", "target": str(state.target), **checked, "round_to": state.round_to(),
              "min_width": cfg.min_width, "importance": _importance_name(state),
              "runtime": state.latency_runtime if "latency" in state.target.metrics else None}
    return plan, record


def _importance_name(state: State) -> str:
    from compresskit.config import _strategy_name

    return str(_strategy_name(state.config.plan.importance))


def _dense_warning(state: State) -> list[str]:
    """A note (and a warning) when a density-rule plan keeps almost every channel: λ was too weak."""
    kept = state.plan.kept_fraction()
    if kept < 0.95 or not state.densities:
        return []
    mean = sum(state.densities.values()) / len(state.densities)
    cfg = state.config.sparsify
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
        return {"upstream": state.fingerprints["plan"], "widths": _widths(state),
                "shrink": state.config.shrink.model_dump(mode="json")}

    def _build(self, state: State) -> None:
        torch.manual_seed(state.config.seed)
        state.small = _shrunk(state, state.plan, state.config.shrink.init)

    def run(self, state: State) -> dict[str, Any]:
        self._build(state)
        state.console.print(f"[bold]2/4 plan + 3/4 shrink[/]: {count_params(state.model):,} → "
                            f"{count_params(state.small):,} params")
        return {"state_dict": state.small.state_dict()}

    def restore(self, state: State, payload: dict[str, Any]) -> None:
        self._build(state)
        state.small.load_state_dict(payload["state_dict"])


# --------------------------------------------------------------------------------------------- recover
class RecoverStage(Stage):
    """Stage IV: distil the small model from the teacher (default: the original, frozen), or fine-tune."""

    name = "recover"
    artifact = "finetuned.pt"

    def teacher(self, state: State) -> nn.Module | None:
        if state.teacher is not None:
            return state.teacher
        return state.model if state.config.recover.teacher == "original" else None

    def fingerprint(self, state: State) -> dict[str, Any]:
        fp = {"upstream": state.fingerprints["shrink"], "teacher": _checksum(self.teacher(state)),
              "recover": state.config.recover.fingerprint()}
        if state.budget is not None:
            fp["budget"] = str(state.budget.budget)
        return fp

    def run(self, state: State) -> dict[str, Any] | None:
        from compresskit.autorecipe import finish_recover, plan_recover
        from compresskit.config import DistillConfig
        from compresskit.training.loop import train

        cfg, rc = state.config, state.config.recover
        if state.budget is not None:
            state.budget.mark("plan+shrink")
        if rc.steps == 0 and state.budget is None:
            return None
        teacher = self.teacher(state)
        plan = plan_recover(state, teacher)  # steps, lr and validation from the budget and a probe
        if plan is not None:
            rc = rc.model_copy(update={"steps": plan.steps, "lr": plan.lr})
        torch.manual_seed(cfg.seed)
        folder = state.store.train_dir("finetune", {**self.fingerprint(state),
                                                    "resolved": {"steps": rc.steps, "lr": rc.lr}})
        resolved: dict[str, Any] = {}
        val = state.val_loader if rc.early_stop_patience is not None else None
        callbacks: list[Any] = []
        metrics = state.metrics or None
        if plan is not None and plan.val_every is not None:
            resolved["val_every"] = plan.val_every
            val = plan.val_loader
            metrics = {**(state.metrics or {}), "task_loss": state.loss_fn}
        if plan is not None:
            callbacks = plan.callbacks
        if teacher is not None:
            from compresskit.distillation.engine import FeatureLoss, OutputLoss, distill

            which = "given" if state.teacher is not None else "original"
            state.console.print(f"[bold]4/4 distill[/] from the {which} teacher: {rc.steps} steps, lr "
                                f"{rc.lr:.3g}, {rc.alpha}·loss(S, batch) + {rc.distill_loss}(S, T)"
                                + (f" + {rc.feature_weight}·features" if rc.features else "")
                                + _budget_left(state))
            terms: list[Any] = [OutputLoss(state.loss_fn, rc.alpha, "batch", name="student"),
                                OutputLoss(rc.distill_loss, 1.0, "teacher", name="distill")]
            if isinstance(rc.features, list):  # as terms; "auto" pairs are found by distill()
                terms += [FeatureLoss(p.student, p.teacher, p.loss, p.weight * rc.feature_weight)
                          for p in rc.features]
                resolved["features"] = []
            distill(state.small, teacher, state.train_loader,
                    config=rc.train_config(run_train_config(state), DistillConfig, **resolved),
                    losses=terms, inputs_fn=state.inputs_fn, val_loader=val,
                    metrics=metrics, out_dir=folder, resume=cfg.resume, callbacks=callbacks)
        else:
            state.console.print(f"[bold]4/4 fine-tune[/]: {rc.steps} steps, lr {rc.lr:.3g}"
                                + _budget_left(state))
            train(state.small, state.train_loader, state.loss_fn,
                  config=rc.train_config(run_train_config(state), **resolved),
                  inputs_fn=state.inputs_fn, val_loader=val, metrics=metrics, out_dir=folder,
                  resume=cfg.resume, stage="fine-tune", callbacks=callbacks)
        kept: dict[str, Any] = {}
        if plan is not None:  # kept with the stage's artifact: a resumed run reports it too
            kept["budget"] = json.dumps(finish_recover(state, plan))
        if state.budget is not None:
            state.budget.mark("recover")
        return {"state_dict": state.small.state_dict(), **kept}

    def restore(self, state: State, payload: dict[str, Any]) -> None:
        state.console.print("[green]recover[/]: loaded finetuned.pt")
        state.small.load_state_dict(payload["state_dict"])
        if payload.get("budget"):
            _keep_stage_record(state, "recover", json.loads(payload["budget"]))


def run_train_config(state: State, **values: Any) -> Any:
    """The run-wide training settings (:data:`compresskit.config.RUN_WIDE`: seed, device, checkpoint
    cadence, progress, batch checks), merged here once for every training stage, and ``values``; a stage's
    :meth:`~compresskit.config.StageTrainConfig.train_config` puts its own settings over them."""
    from compresskit.config import RUN_WIDE, TrainConfig

    cfg = state.config
    run = {k: getattr(cfg, k) for k in RUN_WIDE if k != "device"}
    return TrainConfig(**run, device=state.device, **values)


def _keep_stage_record(state: State, stage: str, record: dict[str, Any]) -> None:
    """A restored stage's steps and learning-rate record, back where the report reads it."""
    from compresskit.autorecipe import keep_record

    keep_record(state, stage, record)


def _budget_left(state: State) -> str:
    """``" (budget left 12m03s)"`` for a time budget, else ``""``."""
    b = state.budget
    if b is None or not b.budget.is_time:
        return ""
    from compresskit.budget import duration

    return f" (budget left {duration(b.left())} of {b.budget})"


STAGES: tuple[Stage, ...] = (TraceStage(), SparsifyStage(), PlanStage(), ShrinkStage(), RecoverStage())
#: what ``stop_after`` may name, and the model the run returns then
STOPS = {"sparsify": "sparsified", "plan": "planned", "shrink": "shrunk"}


def run_stages(state: State, stop_after: str | None = None) -> State:
    """Run (or restore) every stage in order, until ``stop_after``; times each into ``state.timings``."""
    reached = {"trace": "traced", "sparsify": "sparsified", "plan": "planned", "shrink": "shrunk",
               "recover": "compressed"}
    pipeline.run_stages(STAGES, state, state.store, fingerprints=state.fingerprints, timings=state.timings,
                        stop_after=stop_after,
                        on_stage=lambda stage, _: setattr(state, "reached", reached[stage.name]))
    state.final = state.small if state.small is not None else state.work
    return state
