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
import hashlib
import json
import shutil
import statistics
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compresskit.config import CompressConfig
from compresskit.io import atomic_torch_save, atomic_write_json
from compresskit.report import (
    ModelStats,
    count_macs,
    count_params,
    evaluate,
    frozen_group_notes,
)
from compresskit.target import Target

__all__ = ["State", "Stage", "STAGES", "TraceStage", "SparsifyStage", "PlanStage", "ShrinkStage",
           "RecoverStage"]


# ------------------------------------------------------------------------------------------ checkpoints
def _checksum(module: nn.Module | None) -> str | None:
    """Fingerprint of a module's weights (shapes and bytes): checkpoints of another model are not reused."""
    if module is None:
        return None
    h = hashlib.sha1()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _input_signature(inputs: Any) -> list[Any]:
    """Shapes and dtypes of the example inputs (a run at another resolution redoes every stage); other
    values by type and repr."""
    items = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    return [[list(x.shape), str(x.dtype)] if isinstance(x, torch.Tensor) else [type(x).__name__, repr(x)]
            for x in items]


class _Stages:
    """Stage markers in ``out_dir``; a marker counts only when its fingerprint matches this run."""

    def __init__(self, out_dir: Path | None, resume: bool):
        self.out_dir = out_dir
        self.resume = resume

    def path(self, name: str) -> Path | None:
        return None if self.out_dir is None else self.out_dir / name

    def load(self, name: str, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
        path = self.path(name)
        if path is None or not self.resume or not path.is_file():
            return None
        data = torch.load(path, map_location="cpu", weights_only=True)
        return data if data.get("fingerprint") == fingerprint else None

    def save(self, name: str, fingerprint: dict[str, Any], **data: Any) -> None:
        path = self.path(name)
        if path is not None:
            atomic_torch_save({"fingerprint": fingerprint, **data}, path)

    def train_dir(self, name: str, fingerprint: dict[str, Any]) -> Path | None:
        """Checkpoint folder of a training stage; emptied when it belongs to other settings (or no resume)."""
        if self.out_dir is None:
            return None
        folder = self.out_dir / name
        stamp = folder / "fingerprint.json"
        if folder.exists():
            old = json.loads(stamp.read_text()) if stamp.is_file() else None
            if not self.resume or old != fingerprint:
                shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(fingerprint, stamp)
        return folder


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
    # filled by the stages
    work: nn.Module | None = None  # the copy that is sparsified
    graph: Any = None
    cost: Any = None  # the target's CostModel
    costs: dict[str, Any] = field(default_factory=dict)  # "params", "macs" (always), "latency" if built
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
        if self.val_loader is not None and self.metrics:
            s.metrics = evaluate(m, self.val_loader, self.metrics, self.inputs_fn, cfg.eval_batches)
        return s

    def round_to(self) -> int:
        r = self.config.plan.round_to
        return (8 if self.device.startswith("cuda") else 1) if r == "auto" else int(r)


class Stage:
    """One step of ``compress``: ``fingerprint(state)``, ``run(state) -> payload | None``,
    ``restore(state, payload)``; ``artifact`` is the checkpoint file (None: always run)."""

    name = ""
    artifact: str | None = None

    def fingerprint(self, state: State) -> dict[str, Any]:
        raise NotImplementedError

    def run(self, state: State) -> dict[str, Any] | None:
        raise NotImplementedError

    def restore(self, state: State, payload: dict[str, Any]) -> None:
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------- trace
class TraceStage(Stage):
    """Trace the channel groups on a copy, build the cost models, measure the original, check the target."""

    name = "trace"

    def fingerprint(self, state: State) -> dict[str, Any]:
        return {"model": _checksum(state.model), "loss": state.loss_how, "inputs": state.inputs_how,
                "seed": state.config.seed, "example_inputs": _input_signature(state.example_inputs)}

    def run(self, state: State) -> None:
        from compresskit.graph.trace import trace
        from compresskit.shrink.cost import cost_model, macs_cost, params_cost

        state.work = copy.deepcopy(state.model)
        state.graph = trace(state.work, state.example_inputs)
        state.notes.extend(frozen_group_notes(state.graph))  # channels compression cannot touch, and why
        _check_second_batch(state)
        state.costs["params"] = params_cost(state.work, state.graph)
        state.costs["macs"] = macs_cost(state.work, state.graph, state.example_inputs)
        metric = state.target.metric
        if metric not in state.costs:
            cache = state.config.out_dir / "latency" if state.config.out_dir is not None else None
            kw = {}
            if metric == "latency":  # plan on the eager layout that runs the original fastest
                from compresskit.deploy.runtime import available_runtimes, measure_runtimes

                eager = [r for r in available_runtimes(state.example_inputs, onnx=False)]
                times = measure_runtimes(state.work, state.example_inputs, eager,
                                         repeats=state.config.plan.latency_repeats)
                state.latency_runtime = times.best or "eager"
                if state.latency_runtime != "eager":
                    kw["layout"] = state.latency_runtime
            state.costs[metric] = cost_model(metric, state.work, state.graph, state.example_inputs,
                                             cache_dir=cache, **kw)
        state.cost = state.costs[metric]
        state.before = state.stats(state.model)
        if state.config.plan.rule == "target" or _needs_target_plan(state):
            _check_reachable(state)
        return None


def _check_second_batch(state: State) -> None:
    """The traced graph must agree with eager execution on the loader's second batch (data-dependent
    control flow would make the channel graph wrong for other inputs): ValueError before any training."""
    from compresskit.checks import check_trace_matches_eager
    from compresskit.train.batch import to_device

    it = iter(state.train_loader)
    try:
        next(it)
        batch = next(it)
    except StopIteration:  # one batch: nothing else to compare with
        return
    tensors = [x for x in state.example_inputs if isinstance(x, torch.Tensor)]
    device = tensors[0].device if tensors else torch.device("cpu")
    inputs = tuple(to_device(tuple(state.inputs_fn(batch)), device))
    check_trace_matches_eager(state.work, state.graph, inputs)


def _needs_target_plan(state: State) -> bool:
    """Whether stage I steers by the target's plan (progressive zeroing, or OBProx-SG with auto-λ)."""
    sp = state.config.sparsify
    return sp.steps > 0 and (sp.method == "progressive" or sp.lambda_ == "auto")


def _check_reachable(state: State) -> None:
    """Fail before any training when the target cannot be met (ValueError naming ``target``)."""
    from compresskit.shrink.plan import plan_for_target

    ones = {g.id: torch.ones(g.size, dtype=torch.float64) for g in state.graph.prunable_groups}
    plan_for_target(state.graph, state.cost, ones, state.target, min_width=state.config.plan.min_width,
                    round_to=state.round_to())


def target_widths(state: State) -> Callable[[nn.Module], dict[int, int]]:
    """``fn(model)``: the target plan's widths ``{group id: units}`` for the model's current weights."""
    from compresskit.shrink.importance import get_importance
    from compresskit.shrink.plan import plan_for_target

    importance = get_importance(state.config.plan.importance, state.model)

    def widths(model: nn.Module) -> dict[int, int]:
        plan = plan_for_target(state.graph, state.cost, importance(model, state.graph), state.target,
                               min_width=state.config.plan.min_width, round_to=state.round_to())
        return dict(plan.widths)

    return widths


# -------------------------------------------------------------------------------------------- sparsify
class SparsifyStage(Stage):
    """Stage I: the configured :class:`~compresskit.sparsify.auto.Sparsifier` trains the copy."""

    name = "sparsify"
    artifact = "sparsified.pt"

    def fingerprint(self, state: State) -> dict[str, Any]:
        fp = {"upstream": state.fingerprints["trace"],
              "sparsify": state.config.sparsify.model_dump(mode="json")}
        if _needs_target_plan(state):  # stage I aims at the units the target's plan removes
            fp.update(target=str(state.target), plan=state.config.plan.model_dump(mode="json"),
                      round_to=state.round_to())
        return fp

    def run(self, state: State) -> dict[str, Any]:
        from compresskit.sparsify.auto import SparsifyContext, get_sparsifier

        cfg = state.config
        if cfg.sparsify.steps > 0:
            how = (f"OBProx-SG, λ={cfg.sparsify.lambda_}" if cfg.sparsify.method == "obproxsg"
                   else "the units the plan removes go to zero progressively")
            state.console.print(f"[bold]1/4 sparsify[/]: {how}, {cfg.sparsify.steps} steps")
        ctx = SparsifyContext(
            train_loader=state.train_loader, loss_fn=state.loss_fn, inputs_fn=state.inputs_fn,
            graph=state.graph,
            widths_fn=target_widths(state),
            device=state.device, seed=cfg.seed, checkpoint_every=cfg.checkpoint_every, progress=cfg.progress,
            out_dir=state.store.train_dir("sparsify", self.fingerprint(state)), resume=cfg.resume,
            batch_shapes=cfg.batch_shapes)
        record = get_sparsifier(cfg.sparsify).run(state.work, ctx)
        state.records["sparsify"] = record
        return {"state_dict": state.work.state_dict(), "record": json.dumps(record)}

    def restore(self, state: State, payload: dict[str, Any]) -> None:
        state.console.print("[green]sparsify[/]: loaded sparsified.pt")
        state.work.load_state_dict(payload["state_dict"])
        state.records["sparsify"] = json.loads(payload.get("record", "{}"))


# ------------------------------------------------------------------------------------------------ plan
class PlanStage(Stage):
    """Stage II: the widths that meet the target (verified by shrinking and counting), or a density rule."""

    name = "plan"
    artifact = "plan.pt"

    def fingerprint(self, state: State) -> dict[str, Any]:
        return {"upstream": state.fingerprints["sparsify"], "target": str(state.target),
                "plan": state.config.plan.model_dump(mode="json"), "round_to": state.round_to()}

    def run(self, state: State) -> dict[str, Any]:
        from compresskit.shrink.importance import get_importance
        from compresskit.sparsify.density import layer_densities

        cfg = state.config.plan
        state.densities = layer_densities(state.work)
        state.importance = get_importance(cfg.importance, state.model)(state.work, state.graph)
        if cfg.rule == "target":
            state.plan, record = _target_plan(state)
        else:
            from compresskit.shrink.plan import plan_widths

            state.plan = plan_widths(state.graph, state.densities, rule=cfg.rule, coupling=cfg.coupling,
                                     min_width=cfg.min_width, divisor=state.round_to())
            record = {"rule": cfg.rule}
            state.notes.extend(_dense_warning(state))
        record["removed_importance"] = _removed_share(state)
        state.records["plan"] = record
        self._write_json(state)
        return {"plan": json.dumps(state.plan.to_dict()), "record": json.dumps(record)}

    def restore(self, state: State, payload: dict[str, Any]) -> None:
        from compresskit.shrink.importance import get_importance
        from compresskit.shrink.plan import WidthPlan
        from compresskit.sparsify.density import layer_densities

        state.densities = layer_densities(state.work)
        state.importance = get_importance(state.config.plan.importance, state.model)(state.work, state.graph)
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


def _widths(state: State) -> dict[str, list[int]]:
    """``{group id: [width before, width after]}`` for every group."""
    plan = state.plan
    return {str(g.id): [int(g.size), int(plan.widths.get(g.id, g.size) if plan is not None else g.size)]
            for g in state.graph.groups}


def _removed_share(state: State) -> float:
    """Share of the prunable groups' l1 mass (after sparsification) in the units the plan removes (0: only
    zeros go)."""
    from compresskit.shrink.importance import removal_order
    from compresskit.shrink.select import unit_l1_mass

    total = removed = 0.0
    for gid, scores in state.importance.items():
        mass = unit_l1_mass(state.work, state.graph.group(gid))
        total += float(mass.sum())
        drop = state.plan.sizes[gid] - state.plan.widths.get(gid, state.plan.sizes[gid])
        if drop > 0:
            removed += float(mass[removal_order(scores)[:drop]].sum())
    return removed / total if total > 0 else 0.0


def _shrunk(state: State, plan: Any, init: str = "inherit") -> nn.Module:
    from compresskit.shrink.importance import keep_from_importance
    from compresskit.shrink.surgery import shrink

    keep = keep_from_importance(state.importance, plan.widths, plan.sizes)
    return shrink(state.work, state.graph, keep=keep, init=init) if keep else copy.deepcopy(state.work)


def _measure(state: State, model: nn.Module) -> float:
    metric = state.target.metric
    if metric == "params":
        return float(count_params(model))
    if metric == "macs":
        return float(count_macs(model, state.example_inputs))
    return _latency_ms(state, model)


def _latency_ms(state: State, model: nn.Module) -> float:
    """Median ms of ``model`` in the runtime the latency target plans on (``state.latency_runtime``)."""
    from compresskit._modes import eval_mode
    from compresskit.deploy.runtime import prepare, time_call

    with eval_mode(model):
        fn = prepare(model, state.example_inputs, state.latency_runtime or "eager")
        times = time_call(fn, state.device, repeats=state.config.plan.latency_repeats)
    return float(statistics.median(times))


def _target_plan(state: State) -> tuple[Any, dict[str, Any]]:
    """Plan for the target, then shrink and count (or time) it; scale the budget and replan if off.

    Parameters and conv/linear MACs are predicted exactly, so one pass usually does; matmuls between
    activations (attention) and measured latency are where the correction earns its keep.
    """
    from compresskit.shrink.plan import plan_for_target

    cfg = state.config.plan
    target, cost = state.target, state.cost
    kw = dict(min_width=cfg.min_width, round_to=state.round_to())
    if target.metric == "latency":
        full_measured = _latency_ms(state, state.work)
    else:
        full_measured = float(cost.full())
    goal = full_measured / target.ratio
    budget = float(cost.full()) / target.ratio
    tol = 0.05 if target.metric == "latency" else 0.0
    attempts: list[dict[str, Any]] = []
    best = None
    lo, hi = 0.0, float(cost.full())  # budgets known to fit / not to fit the measured goal
    for _ in range((4 if target.metric == "latency" else 8) if cfg.verify else 1):
        plan = plan_for_target(state.graph, cost, state.importance, target, budget=budget, **kw)
        if not cfg.verify:
            break
        achieved = _measure(state, _shrunk(state, plan))
        attempts.append({"budget": budget, "predicted": plan.predicted, "measured": achieved,
                         "ratio": full_measured / achieved if achieved else None})
        fits = achieved <= goal * (1 + tol)
        score = (not fits, abs(achieved - goal))
        if best is None or score < best[0]:
            best = (score, plan)
        if fits and achieved >= goal * 0.9:
            break
        if fits:
            lo = max(lo, budget)
        else:
            hi = min(hi, budget)
        guess = budget * goal / max(achieved, 1e-300)  # the prediction's error, assumed proportional
        budget = guess if lo < guess < hi else (lo + hi) / 2  # else bisect between the known budgets
        if hi - lo < 1e-6 * hi:
            break
    if best is not None:
        plan = best[1]
    record = {"rule": "target", "target": str(target), "full": full_measured, "goal": goal,
              "predicted": plan.predicted, "verification": attempts, "round_to": kw["round_to"],
              "min_width": cfg.min_width, "importance": cfg.importance,
              "runtime": state.latency_runtime if target.metric == "latency" else None}
    return plan, record


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
        return {"upstream": state.fingerprints["shrink"], "teacher": _checksum(self.teacher(state)),
                "recover": state.config.recover.model_dump(mode="json")}

    def run(self, state: State) -> dict[str, Any] | None:
        from compresskit.config import DistillConfig, TrainConfig
        from compresskit.train.loop import train

        cfg, rc = state.config, state.config.recover
        if rc.steps == 0:
            return None
        torch.manual_seed(cfg.seed)
        folder = state.store.train_dir("finetune", self.fingerprint(state))
        common = dict(steps=rc.steps, lr=rc.lr, seed=cfg.seed, device=state.device, scheduler=rc.scheduler,
                      scheduler_interval="step", checkpoint_every=cfg.checkpoint_every, progress=cfg.progress,
                      batch_shapes=cfg.batch_shapes)
        if rc.val_every is not None:
            common["val_every"] = rc.val_every
        teacher = self.teacher(state)
        val = state.val_loader if rc.early_stop_patience is not None else None
        if teacher is not None:
            from compresskit.distill.engine import FeatureLoss, OutputLoss, distill

            which = "given" if state.teacher is not None else "original"
            state.console.print(f"[bold]4/4 distill[/] from the {which} teacher: {rc.steps} steps, "
                                f"{rc.alpha}·loss(S, batch) + {rc.distill_loss}(S, T)")
            terms: list[Any] = [OutputLoss(state.loss_fn, rc.alpha, "batch", name="student"),
                                OutputLoss(rc.distill_loss, 1.0, "teacher", name="distill")]
            extra: dict[str, Any] = {}
            if isinstance(rc.features, list):
                terms += [FeatureLoss(p.student, p.teacher, p.loss, p.weight * rc.feature_weight)
                          for p in rc.features]
            elif rc.features == "auto":
                extra["features"] = "auto"
            if rc.early_stop_patience is not None:
                extra["early_stop_patience"] = rc.early_stop_patience
            distill(state.small, teacher, state.train_loader,
                    config=DistillConfig(**common, alpha=rc.alpha, feature_weight=rc.feature_weight, **extra),
                    losses=terms, inputs_fn=state.inputs_fn, val_loader=val,
                    metrics=state.metrics or None, out_dir=folder, resume=cfg.resume)
        else:
            state.console.print(f"[bold]4/4 fine-tune[/]: {rc.steps} steps")
            train(state.small, state.train_loader, state.loss_fn, config=TrainConfig(**common),
                  inputs_fn=state.inputs_fn, val_loader=val, metrics=state.metrics or None, out_dir=folder,
                  resume=cfg.resume, stage="fine-tune")
        return {"state_dict": state.small.state_dict()}

    def restore(self, state: State, payload: dict[str, Any]) -> None:
        state.console.print("[green]recover[/]: loaded finetuned.pt")
        state.small.load_state_dict(payload["state_dict"])


STAGES: tuple[Stage, ...] = (TraceStage(), SparsifyStage(), PlanStage(), ShrinkStage(), RecoverStage())
#: what ``stop_after`` may name, and the model the run returns then
STOPS = {"sparsify": "sparsified", "plan": "planned", "shrink": "shrunk"}


def run_stages(state: State, stop_after: str | None = None) -> State:
    """Run (or restore) every stage in order, until ``stop_after``; times each into ``state.timings``."""
    for stage in STAGES:
        t0 = time.perf_counter()
        fp = state.fingerprints[stage.name] = stage.fingerprint(state)
        done = state.store.load(stage.artifact, fp) if stage.artifact else None
        if done is not None:
            stage.restore(state, done)
        else:
            payload = stage.run(state)
            if payload is not None and stage.artifact:
                state.store.save(stage.artifact, fp, **payload)
        state.timings[stage.name] = time.perf_counter() - t0
        state.reached = {"trace": "traced", "sparsify": "sparsified", "plan": "planned", "shrink": "shrunk",
                         "recover": "compressed"}[stage.name]
        if stage.name == stop_after:
            break
    state.final = state.small if state.small is not None else state.work
    return state

