"""The :class:`~compresskit.report.CompressReport` of a finished (or stopped) ``compress`` run, built from
the stages' :class:`~compresskit.stages.State`: the model counts before and after, every layer's shape,
target vs achieved, the notes the stages left, and what the budget bought."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compresskit.report import CompressReport, LayerRecord, ModelStats

__all__ = ["build_report"]


def build_report(state: Any, *, name: str, loss_how: str, inputs_how: str,
                 example_input_shapes: list[Any]) -> CompressReport:
    """The report of the stage ``state.art.reached``: ``state.stats`` of the final model, every layer's
    shape, the target summary, notes, and the budget's record (``state.inputs.budget.finish()``)."""
    from compresskit.stages import _widths

    model, final, stage, plan = state.inputs.model, state.art.final, state.art.reached, state.art.plan
    after = state.stats(final)
    final_modules = dict(final.named_modules())
    layers = []
    for mod_name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if not isinstance(w, torch.Tensor) or w.dim() < 2:
            continue
        small_mod = final_modules.get(mod_name)
        sw = getattr(small_mod, "weight", None)
        layers.append(LayerRecord(
            name=mod_name, type=type(mod).__name__, density=state.art.densities.get(mod_name),
            shape_before=list(w.shape), shape_after=None if sw is None else list(sw.shape),
            params_before=sum(p.numel() for p in mod.parameters(recurse=False)),
            params_after=None if small_mod is None
            else sum(p.numel() for p in small_mod.parameters(recurse=False))))
    widths = _widths(state)
    changed = {k: v for k, v in widths.items() if v[0] != v[1]}
    notes = list(state.art.notes)
    if state.inputs.val_loader is None and state.inputs.holdout is not None and state.inputs.metrics:
        used = len(state.inputs.holdout.val_batches)
        if state.inputs.config.eval_batches is not None:
            used = min(used, state.inputs.config.eval_batches)
        notes.append(f"metrics on {used} held-out batches "
                     f"({state.inputs.holdout.describe()}; no val_loader was given)")
    summary = _target_summary(state, after, final if stage in ("shrunk", "recovered") else None)
    note = _latency_note(state, after) if stage in ("shrunk", "recovered") else None
    if note:
        notes.append(note)
    for part in summary.get("terms") or [summary]:
        got = part.get("achieved")
        if got is not None and got < part["ratio"] * 0.97 and state.inputs.config.plan.rule == "target":
            why = ("measured latency varies from run to run and the plan could not cut more time"
                   if part["metric"] == "latency" else "the surgery counted differently from the plan")
            notes.append(f"target {part['ratio']:g}x {part['metric']} not reached: achieved {got:.3g}x "
                         f"({why}; see report.planning)")
    removed = state.art.records.get("plan", {}).get("removed_importance")
    if removed is not None and removed > 0.1 and state.inputs.config.plan.rule == "target":
        notes.append(f"the removed units held {removed:.0%} of the prunable l1 mass: sparsification "
                     f"did not empty them within {state.inputs.config.sparsify.steps} steps, so recovery has "
                     "more to win back (raise sparsify.steps)")
    budget: dict[str, Any] = {}
    if state.inputs.budget is None and state.art.records.get("learning_rates"):  # steps given, lr="auto"
        budget = {"budget": None, **state.art.records["learning_rates"]}
    if state.inputs.budget is not None:
        budget = state.inputs.budget.finish()
        sp = budget.get("sparsify", {})
        if sp.get("steps") is not None:
            given = f"within {state.inputs.config.sparsify.steps} steps"
            notes = [n.replace(given, f"within {sp['steps']} steps") for n in notes]
    report = CompressReport(
        model=name, loss=loss_how, inputs=inputs_how, before=state.art.before, after=after, layers=layers,
        widths=changed if plan is not None else {}, plan=plan.explain_text() if plan is not None else "",
        stages=state.art.timings, config=state.inputs.config.model_dump(mode="json"),
        example_input_shapes=example_input_shapes, notes=notes, target=summary,
        calibration=state.art.records.get("sparsify", {}), planning=state.art.records.get("plan", {}),
        budget=budget, op_times=state.art.records.get("op_times", {}))
    return report


def _target_summary(state: Any, after: ModelStats, final: nn.Module | None = None) -> dict[str, Any]:
    """Target vs achieved (the achieved ratio of each measure of the target, measured on the final model);
    the first part's values at the top, every part in ``terms``."""
    from compresskit.stages import _measure

    before, plan = state.art.before, state.art.plan
    known = {"params": (before.params, after.params), "macs": (before.macs, after.macs),
             "latency": (before.latency_ms, after.latency_ms)}
    tried = (state.art.records.get("plan", {}).get("verification") or []) if final is not None else []
    predicted = {t["metric"]: t["full"] / t["predicted"] for t in (plan.terms if plan is not None else [])
                 if t.get("predicted")}
    if plan is not None and plan.predicted and not predicted:  # a plan from before several measures
        predicted[state.inputs.target.metric] = plan.full_cost / plan.predicted
    terms = []
    for t in state.inputs.target.terms:
        if final is None:  # not shrunk yet: nothing achieved
            got = (None, None)
        elif t.metric in known:
            got = known[t.metric]
        else:
            source = state.art.work if state.art.dropped else state.inputs.model
            got = (_measure(state, source, t.metric), _measure(state, final, t.metric))
        achieved = got[0] / got[1] if got[0] is not None and got[1] else None
        if t.metric == "latency" and achieved is None and tried:
            last = tried[-1].get("terms", {}).get("latency", tried[-1])
            achieved = last.get("ratio")
        terms.append({"target": str(t), "metric": t.metric, "ratio": t.ratio, "achieved": achieved,
                      "predicted": predicted.get(t.metric), "met": None if achieved is None
                      else achieved >= t.ratio * (1 - 0.05 if t.metric == "latency" else 1 - 1e-9)})
    out = {"target": str(state.inputs.target), **{k: terms[0][k] for k in ("metric", "ratio", "achieved",
                                                                     "predicted")}}
    if len(terms) > 1:
        out["terms"] = terms
    return out


def _latency_note(state: Any, after: ModelStats) -> str | None:
    """Say so when the measured speed-up falls well short of the MACs reduction, and why."""
    b = state.art.before
    if b.latency_ms is None or after.latency_ms is None or not after.macs or not after.latency_ms:
        return None
    mac_gain, lat_gain = b.macs / after.macs, b.latency_ms / after.latency_ms
    if mac_gain < 1.2 or lat_gain >= 0.8 * mac_gain:
        return None
    table = state.art.costs.get("latency")
    if table is not None and hasattr(table, "fixed"):
        share, what = float(table.fixed()) / max(float(table.full()), 1e-300), "of the measured time"
    else:
        macs = state.art.costs["macs"]
        share, what = macs.fixed() / max(macs.full(), 1e-300), "of the MACs"
    bound = f", which alone caps the speed-up at {1 / share:.2g}x" if share > 0.02 else ""
    head = (f"latency fell {lat_gain:.2f}x while MACs fell {mac_gain:.2f}x: {share:.0%} {what} is in layers "
            f"the plan could not touch (frozen channel groups, ops without prunable channels){bound}; ")
    measured = _op_time_note(state, after, mac_gain)
    if measured:
        return head + measured + " (a '2x latency' target plans on measured time)."
    return (head + "element-wise, memory-bound and custom ops take time but count no MACs, and small layers "
            "are bound by per-op overhead rather than arithmetic (a '2x latency' target plans on measured "
            "time).")


def _op_time_note(state: Any, after: ModelStats, mac_gain: float) -> str | None:
    """Time per op kind of the original and the compressed model, profiled in the eager layout the report
    measured (``compresskit.deploy.profile``), kept in ``state.art.records["op_times"]``; None when the state
    has no models to profile or profiling fails."""
    given = getattr(state, "inputs", None)
    model, final = getattr(given, "model", None), getattr(state.art, "final", None)
    inputs = getattr(given, "example_inputs", None)
    if not isinstance(model, nn.Module) or not isinstance(final, nn.Module) or inputs is None:
        return None
    from compresskit.deploy.profile import kept_time_note, time_by_op_kind

    layout = after.latency_runtime if after.latency_runtime in ("eager", "channels_last") else "eager"
    try:
        before_t, after_t = time_by_op_kind(model, inputs, layout), time_by_op_kind(final, inputs, layout)
    except Exception:  # a profile is a diagnosis: never fail the run for it
        return None
    state.art.records["op_times"] = {"before": before_t.to_dict(), "after": after_t.to_dict()}
    text = kept_time_note(before_t, after_t, mac_gain)
    if after.latency_runtime not in (None, "eager", "channels_last"):
        text += f" (profiled in eager {layout}; {after.latency_runtime} is timed whole)"
    return text
