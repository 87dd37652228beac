"""``compress()``: trace → sparsify (OBProx-SG) → densities → plan widths → shrink → fine-tune → report.

The pipeline of the ST-MFNet Mini and CDFI papers for any ``nn.Module``. Every stage writes an atomic
checkpoint into ``config.out_dir`` (``sparsified.pt``, ``plan.json``, ``shrunk.pt``, ``finetuned.pt``)
stamped with a fingerprint of the settings it depends on; a rerun with the same settings skips finished
stages and continues an interrupted training stage from its last checkpoint (``ck.train``'s resume). A
stage whose settings changed is redone, and so is everything after it.

``CompressResult.save(path)`` writes one file from which :func:`load` rebuilds the small model alone:
for a model built by ``ck.create_model`` the file holds its registered name, factory kwargs, example input
shapes and the kept widths per channel group; :func:`load` creates the full model, traces it and applies
the same shrink surgery, then loads the weights. Any other model is stored as a pickled module (its class
must be importable when loading).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compresskit.config import CompressConfig
from compresskit.io import atomic_torch_save, atomic_write_json
from compresskit.report import (
    CompressReport,
    LayerRecord,
    Metric,
    ModelStats,
    count_macs,
    count_params,
    evaluate,
    measure_latency,
    normalize_metrics,
)
from compresskit.train.batch import to_device

__all__ = ["compress", "CompressResult", "load"]

FILE_FORMAT = "compresskit.compressed/1"
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

    def save(self, path: str | os.PathLike) -> Path:
        """Write the small model to one file (atomically); :func:`load` rebuilds it from that file alone."""
        payload: dict[str, Any] = {
            "format": FILE_FORMAT,
            "state_dict": self.model.state_dict(),
            "shapes": {k: list(v.shape) for k, v in self.model.state_dict().items()},
            "registered": self.rebuild,
            "report": self.report.to_dict(),
        }
        if self.rebuild is None:
            payload["module"] = self.model
        return atomic_torch_save(payload, path)


def load(path: str | os.PathLike) -> nn.Module:
    """Rebuild the small model saved by :meth:`CompressResult.save`; its outputs equal the saved model's.

    A registered model is recreated with ``ck.create_model(name, **kwargs)``, traced on zero inputs of
    the stored shapes and shrunk to the stored widths; otherwise the pickled module is unpickled, which
    runs code from the file: load only files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load: {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a pickled module needs the full unpickler
        try:
            data = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise ValueError(f"load: {str(path)!r} could not be read as a torch file: {e}") from e
    if not isinstance(data, Mapping) or data.get("format") != FILE_FORMAT:
        raise ValueError(f"load: {str(path)!r} is not a file written by CompressResult.save "
                         f"(expected format {FILE_FORMAT!r})")
    if data.get("registered") is not None:
        model = _rebuild_registered(data["registered"], data["shapes"])
    elif isinstance(data.get("module"), nn.Module):
        model = data["module"]
    else:
        raise ValueError(f"load: {str(path)!r} holds neither a registered model spec nor a module")
    from compresskit.registry import load_state_dict_strict

    load_state_dict_strict(model, data["state_dict"])
    return model.eval()


def _rebuild_registered(spec: Mapping[str, Any], shapes: Mapping[str, list[int]]) -> nn.Module:
    from compresskit.graph.trace import trace
    from compresskit.registry import create_model
    from compresskit.shrink.surgery import shrink

    full = create_model(spec["name"], **spec["kwargs"])
    inputs = tuple(torch.zeros(shape, dtype=getattr(torch, dtype)) for shape, dtype in spec["inputs"])
    graph = trace(full, inputs)
    sizes = {str(g.id): g for g in graph.groups}
    keep = {}
    for gid, width in spec["widths"].items():
        if gid not in sizes:
            raise ValueError(f"load: model {spec['name']!r} traced without channel group {gid}; the file was "
                             "written by a different version of the model or of compresskit")
        if width < sizes[gid].size:
            keep[sizes[gid].id] = torch.arange(width)
    model = shrink(full, graph, keep=keep) if keep else full
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    if got != {k: list(v) for k, v in shapes.items()}:
        diff = sorted(k for k in set(got) | set(shapes) if got.get(k) != list(shapes.get(k, [])))
        raise ValueError(f"load: rebuilding {spec['name']!r} gave different shapes for {diff[:5]}; the file "
                         "was written by a different version of the model or of compresskit")
    return model


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
    from compresskit.registry import model_info, registered_name

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
            import json

            old = json.loads(stamp.read_text()) if stamp.is_file() else None
            if not self.resume or old != fingerprint:
                shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(fingerprint, stamp)
        return folder


# ------------------------------------------------------------------------------------------- training
def _as_text(obj: Any) -> str:
    """Plain text of a string or a rich renderable (a table)."""
    if isinstance(obj, str):
        return obj
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(obj)
    return console.file.getvalue()


def _console(enabled: bool):
    from rich.console import Console

    return Console(stderr=True, quiet=not enabled)


# ------------------------------------------------------------------------------------------- compress
def compress(
    model: nn.Module,
    train_loader: Iterable,
    loss_fn: LossFn | None = None,
    example_inputs: Any = None,
    config: CompressConfig | Mapping[str, Any] | None = None,
    teacher: nn.Module | None = None,
    val_loader: Iterable | None = None,
    metrics: Mapping[str, Metric] | list[Metric] | Metric | None = None,
    *,
    inputs_fn: Callable[[Any], tuple] | None = None,
    stop_after: str | None = None,
) -> CompressResult:
    """Compress ``model`` the way the ST-MFNet Mini / CDFI papers did; ``model`` itself is left unchanged.

    1. trace the channel groups (``ck.trace``) on ``example_inputs`` (default: from the first batch);
    2. sparsify a copy with OBProx-SG (``ck.train`` with ``ck.OBProxSG``) for ``config.sparsify.steps``;
    3. read per-layer densities and plan widths back to front (``ck.plan_widths``);
    4. shrink into a smaller dense model (``ck.shrink``, ``init`` inherit or reinit);
    5. fine-tune it for ``config.recover.steps``: distilled from ``teacher`` when given (``ck.distill``,
       ``α·loss(S, GT) + L(S, T)``), else trained on ``loss_fn``;
    6. measure parameters, MACs, CPU latency and ``metrics`` on ``val_loader`` before and after.

    ``loss_fn(output, batch)`` receives the whole batch; default: the registered model's loss, else
    L1 between the output and ``batch[-1]``. ``metrics``: ``{name: fn(output, batch)}`` (default, with a
    ``val_loader``: the loss). The report records which loss and inputs were used. ``inputs_fn(batch)``
    overrides how a batch becomes the model's inputs; ``stop_after`` ("sparsify", "plan", "shrink") ends
    the run early with that stage's model (the CLI's stage commands).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if isinstance(train_loader, (torch.Tensor, str, bytes)) or not isinstance(train_loader, Iterable):
        raise TypeError("train_loader: expected an iterable of batches (input_1, ..., input_n, target), "
                        f"got {type(train_loader).__name__}")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher: expected an nn.Module or None, got {type(teacher).__name__}")
    if val_loader is not None and not isinstance(val_loader, Iterable):
        raise TypeError(f"val_loader: expected batches or None, got {type(val_loader).__name__}")
    if config is None:
        config = CompressConfig()
    elif isinstance(config, Mapping):
        config = CompressConfig.model_validate(dict(config))
    elif not isinstance(config, CompressConfig):
        raise TypeError(f"config: expected a CompressConfig or a mapping of its fields, "
                        f"got {type(config).__name__}")
    metrics = normalize_metrics(metrics)
    if stop_after is not None and stop_after not in _STOPS:
        raise ValueError(f"stop_after: expected one of {_STOPS} or None, got {stop_after!r}")

    from compresskit.config import DistillConfig, TrainConfig
    from compresskit.graph.trace import trace
    from compresskit.shrink.plan import plan_widths
    from compresskit.shrink.surgery import shrink
    from compresskit.sparsify.density import layer_densities
    from compresskit.sparsify.obproxsg import OBProxSG, l1_param_groups
    from compresskit.train.loop import train

    if teacher is not None:
        from compresskit.distill.registry import list_losses

        if config.recover.distill_loss not in list_losses():
            raise ValueError(f"config.recover.distill_loss: unknown loss {config.recover.distill_loss!r}; registered losses: "
                             f"{', '.join(list_losses())}")
    console = _console(config.progress)
    r = _resolve(model, train_loader, loss_fn, example_inputs, inputs_fn)
    if val_loader is not None and not metrics:
        metrics = {"loss": r.loss_fn}
    out_dir = Path(config.out_dir) if config.out_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        config.dump(out_dir / "config.json")
        atomic_write_json({"loss": r.loss_how, "inputs": r.inputs_how,
                           "example_input_shapes": [list(t.shape) for t in r.example_inputs]},
                          out_dir / "resolved.json")
    stages = _Stages(out_dir, config.resume)
    timings: dict[str, float] = {}
    device = str(next(model.parameters(), torch.zeros(())).device)
    name = r.registered[0] if r.registered else type(model).__name__

    def stats(m: nn.Module) -> ModelStats:
        lat = (measure_latency(m, r.example_inputs, repeats=config.latency_repeats)["median_ms"]
               if config.measure_latency else None)
        s = ModelStats(count_params(m), count_macs(m, r.example_inputs), lat)
        if val_loader is not None and metrics:
            s.metrics = evaluate(m, val_loader, metrics, r.inputs_fn, config.eval_batches)
        return s

    def finish(final: nn.Module, plan: Any, stage: str) -> CompressResult:
        return _finish(model=model, final=final, plan=plan, stage=stage, r=r, name=name, before=before,
                       after=stats(final), densities=densities, widths=widths, timings=timings, config=config,
                       out_dir=out_dir, console=console, notes=notes)

    densities: dict[str, float] = {}
    widths: dict[str, list[int]] = {}
    notes: list[str] = []

    # 0. trace and measure the original
    t0 = time.perf_counter()
    console.rule(f"[bold]compress {name}")
    console.print(f"loss: {r.loss_how}\ninputs: {r.inputs_how}")
    work = copy.deepcopy(model)
    graph = trace(work, r.example_inputs)
    widths = {str(g.id): [int(g.size), int(g.size)] for g in graph.groups}  # [before, after] per group
    before = stats(model)
    timings["trace+measure"] = time.perf_counter() - t0

    # 1. sparsify
    t0 = time.perf_counter()
    fp_sparse = {"model": _checksum(model), "loss": r.loss_how, "inputs": r.inputs_how,
                 "sparsify": config.sparsify.model_dump(mode="json"), "seed": config.seed}
    done = stages.load("sparsified.pt", fp_sparse)
    if done is not None:
        console.print("[green]sparsify[/]: loaded sparsified.pt")
        work.load_state_dict(done["state_dict"])
    elif config.sparsify.steps > 0:
        console.print(f"[bold]1/4 sparsify[/]: OBProx-SG, λ={config.sparsify.lambda_}, {config.sparsify.steps} steps")
        torch.manual_seed(config.seed)
        every = config.sparsify.l1_on == "all"
        groups = l1_param_groups(work, config.sparsify.lambda_, include_biases=every, include_norms=every)
        opt = OBProxSG(groups, lr=config.sparsify.lr,
                       lambda_=config.sparsify.lambda_, eps=config.sparsify.eps, n_prox_steps=config.sparsify.n_prox_steps,
                       n_orthant_steps=config.sparsify.n_orthant_steps)
        tcfg = TrainConfig(steps=config.sparsify.steps, lr=config.sparsify.lr, seed=config.seed, device=device,
                           checkpoint_every=config.checkpoint_every, progress=config.progress)
        train(work, train_loader, r.loss_fn, optimizer=opt, config=tcfg, inputs_fn=r.inputs_fn,
              out_dir=stages.train_dir("sparsify", fp_sparse), resume=config.resume)
        stages.save("sparsified.pt", fp_sparse, state_dict=work.state_dict())
    timings["sparsify"] = time.perf_counter() - t0
    if stop_after == "sparsify":
        densities = layer_densities(work)
        return finish(work, None, "sparsified")

    # 2. densities and plan
    t0 = time.perf_counter()
    densities = layer_densities(work)
    plan = plan_widths(graph, densities, rule=config.plan.rule, coupling=config.plan.coupling,
                       min_width=config.plan.min_width, divisor=config.plan.round_to)
    widths = {str(g.id): [int(g.size), int(plan.widths.get(g.id, g.size))] for g in graph.groups}
    if out_dir is not None:
        atomic_write_json({"widths": widths, "densities": densities, "explain": _as_text(plan.explain())},
                          out_dir / "plan.json")
    timings["plan"] = time.perf_counter() - t0
    notes.extend(_dense_warning(plan, densities, config))
    if stop_after == "plan":
        return finish(work, plan, "planned")

    # 3. shrink
    t0 = time.perf_counter()
    fp_shrink = {"upstream": fp_sparse, "widths": widths,
                 "shrink": config.shrink.model_dump(mode="json"), "seed": config.seed}
    torch.manual_seed(config.seed)
    small = shrink(work, graph, plan=plan, init=config.shrink.init)
    done = stages.load("shrunk.pt", fp_shrink)
    if done is not None:
        small.load_state_dict(done["state_dict"])
    else:
        stages.save("shrunk.pt", fp_shrink, state_dict=small.state_dict())
    console.print(f"[bold]2/4 plan + 3/4 shrink[/]: {count_params(model):,} → {count_params(small):,} params")
    timings["shrink"] = time.perf_counter() - t0
    if stop_after == "shrink":
        return finish(small, plan, "shrunk")

    # 4. fine-tune / distill
    t0 = time.perf_counter()
    fp_tune = {"upstream": fp_shrink, "teacher": _checksum(teacher),
               "recover": config.recover.model_dump(mode="json"), "seed": config.seed}
    done = stages.load("finetuned.pt", fp_tune)
    if done is not None:
        console.print("[green]fine-tune[/]: loaded finetuned.pt")
        small.load_state_dict(done["state_dict"])
    elif config.recover.steps > 0:
        torch.manual_seed(config.seed)
        folder = stages.train_dir("finetune", fp_tune)
        common = dict(steps=config.recover.steps, lr=config.recover.lr, seed=config.seed, device=device,
                      checkpoint_every=config.checkpoint_every, progress=config.progress)
        if teacher is not None:
            from compresskit.distill.engine import OutputLoss, distill

            console.print(f"[bold]4/4 distill[/] from the teacher: {config.recover.steps} steps, "
                          f"{config.recover.alpha}·loss(S, batch) + {config.recover.distill_loss}(S, T)")
            student_term = _BatchLoss(r.loss_fn, r.inputs_fn)
            terms = [OutputLoss(student_term, config.recover.alpha, "target", name="student"),
                     OutputLoss(config.recover.distill_loss, 1.0, "teacher", name="distill")]
            distill(small, teacher, train_loader, config=DistillConfig(**common, alpha=config.recover.alpha),
                    losses=terms, inputs_fn=student_term.inputs_fn, out_dir=folder, resume=config.resume)
        else:
            console.print(f"[bold]4/4 fine-tune[/]: {config.recover.steps} steps")
            train(small, train_loader, r.loss_fn, config=TrainConfig(**common), inputs_fn=r.inputs_fn,
                  out_dir=folder, resume=config.resume)
        stages.save("finetuned.pt", fp_tune, state_dict=small.state_dict())
    timings["finetune"] = time.perf_counter() - t0

    return finish(small, plan, "compressed")


_STOPS = ("sparsify", "plan", "shrink")


def _dense_warning(plan: Any, densities: Mapping[str, float], config: CompressConfig) -> list[str]:
    """A note (and a warning) when the plan keeps almost every channel: λ was too weak to sparsify."""
    kept = plan.kept_fraction()
    if kept < 0.95 or not densities:
        return []
    mean = sum(densities.values()) / len(densities)
    budget = config.sparsify.lr * config.sparsify.lambda_ * config.sparsify.steps
    note = (f"the plan keeps {kept:.0%} of the prunable channels: the sparsified weights are still dense "
            f"(mean density {mean:.2f}). OBProx-SG moves each weight by about lr·λ per step towards zero, "
            f"{budget:.2g} in total here; raise lambda_ or sparsify_steps (or lr).")
    warnings.warn(note, stacklevel=3)
    return [note]


def _finish(*, model: nn.Module, final: nn.Module, plan: Any, stage: str, r: _Resolved, name: str,
            before: ModelStats, after: ModelStats, densities: Mapping[str, float],
            widths: Mapping[str, list[int]], timings: dict[str, float], config: CompressConfig,
            out_dir: Path | None, console: Any, notes: list[str]) -> CompressResult:
    """Build the report and result of the stage reached; write them into ``out_dir``."""
    final.train(model.training)  # returned in the mode the original was given in
    final_modules = dict(final.named_modules())
    layers = []
    for mod_name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if not isinstance(w, torch.Tensor) or w.dim() < 2:
            continue
        small_mod = final_modules.get(mod_name)
        sw = getattr(small_mod, "weight", None)
        layers.append(LayerRecord(
            name=mod_name, type=type(mod).__name__, density=densities.get(mod_name),
            shape_before=list(w.shape), shape_after=None if sw is None else list(sw.shape),
            params_before=sum(p.numel() for p in mod.parameters(recurse=False)),
            params_after=None if small_mod is None
            else sum(p.numel() for p in small_mod.parameters(recurse=False))))
    changed = {k: v for k, v in widths.items() if v[0] != v[1]}
    report = CompressReport(
        model=name, loss=r.loss_how, inputs=r.inputs_how, before=before, after=after, layers=layers,
        widths=changed if plan is not None else {}, plan=_as_text(plan.explain()) if plan is not None else "",
        stages=timings, config=config.model_dump(mode="json"),
        example_input_shapes=[list(t.shape) for t in r.example_inputs], notes=list(notes))
    rebuild = None
    if r.registered is not None:
        # every group's width: a loaded model compressed again is rebuilt from the full-size one
        shrunk = stage in ("shrunk", "compressed")
        rebuild = {"name": r.registered[0], "kwargs": r.registered[1],
                   "inputs": [(list(t.shape), str(t.dtype).removeprefix("torch.")) for t in r.example_inputs],
                   "widths": {k: v[1] if shrunk else v[0] for k, v in widths.items()}}
    result = CompressResult(final, plan, report, rebuild)
    if out_dir is not None:
        suffix = "" if stage == "compressed" else f"_{stage}"
        report.save(out_dir / f"report{suffix}.json")
        result.save(out_dir / f"{stage}.model.pt" if suffix else out_dir / "compressed.pt")
        with contextlib.suppress(ImportError):  # matplotlib is optional
            report.plot(out_dir)
    if config.progress:
        report.print(console)
    return result


class _BatchLoss:
    """``loss_fn(output, batch)`` as a distillation term ``fn(output, target)``.

    The distiller hands a term only the target; the whole batch is the one its ``inputs_fn`` saw last
    (every forward reads its inputs from the batch whose loss follows), so it is remembered there.
    """

    def __init__(self, loss_fn: LossFn, inputs_fn: Callable[[Any], tuple]):
        self.loss_fn, self._inputs_fn, self.batch = loss_fn, inputs_fn, None
        self.__name__ = _describe(loss_fn)

    def inputs_fn(self, batch: Any) -> tuple:
        self.batch = batch
        return self._inputs_fn(batch)

    def __call__(self, output: Any, target: Any) -> torch.Tensor:
        return self.loss_fn(output, self.batch)
